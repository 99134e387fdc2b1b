"""The backend interface: what every inference backend plugin implements."""

from __future__ import annotations

import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.cells import cell_len

from duma.errors import ConfigError, format_validation_error
from duma.types import Completion, GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage


class BackendCapabilities(BaseModel):
    """What a backend can do beyond streaming text (one record per backend, per spec)."""

    model_config = ConfigDict(frozen=True)

    prefill: bool = Field(False, description="A trailing assistant message is continued: the reply "
                          "begins with its text, which is not repeated in the output.")
    adapters_per_call: bool = Field(False, description="One loaded base runs any peft adapter of it "
                                    "per call (stream(adapter=FOLDER)); minds on one base share its weights.")
    kv_reuse: bool = Field(False, description="The KV cache of a conversation is reused by its next turn.")
    exact_token_count: bool = Field(False, description="count_tokens uses the model's tokenizer.")
    constrained_decoding: bool = Field(False, description="options.constraint is enforced while decoding "
                                       "(tokens that would leave it are never picked); without it, callers "
                                       "check the text (generate_checked samples a mismatch once more).")


class NoBackendOptions(BaseModel):
    """A backend that takes no ``backend_options``."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC):
    """A loaded model that turns chat messages into text.

    A backend class is registered through ``register_backends``; duma constructs it with a
    :class:`ModelSpec` (loading weights in ``__init__``) and calls :meth:`stream` or
    :meth:`generate`. Implementations must be safe to call from several threads (serialising
    internally is fine).

    ``Options`` is the pydantic model of the backend's own settings (``spec.backend_options``,
    validated into ``self.backend_options``); ``capabilities`` says what it can do.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoBackendOptions
    capabilities: BackendCapabilities = BackendCapabilities()

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.capabilities = self.capabilities_for(spec)
        self.backend_options = self.parse_backend_options(spec)

    @classmethod
    def capabilities_for(cls, spec: ModelSpec) -> BackendCapabilities:
        """The capabilities of this backend loaded with ``spec`` (the class's, unless a
        setting such as a dtype changes them)."""
        return cls.capabilities

    @classmethod
    def parse_backend_options(cls, spec: ModelSpec) -> BaseModel:
        """``spec.backend_options`` validated by ``Options``; a bad one is a one-line
        :class:`ConfigError` naming the backend, the key and what is allowed."""
        try:
            return cls.Options.model_validate(spec.backend_options)
        except ValidationError as exc:
            allowed = ", ".join(sorted(cls.Options.model_fields)) or "none"
            raise ConfigError(format_validation_error(exc, prefix="backend_options"),
                              f"backend '{cls.name}' takes: {allowed}") from None

    @abstractmethod
    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        """Yield text deltas as they are decoded; the last chunk has ``done=True``, the
        finish reason, token counts and timings. Stop strings are never part of the text
        (:class:`StopFilter` does this). ``adapter`` names a peft adapter folder to run with
        (backends with ``capabilities.adapters_per_call``); ``cancel``, once set, ends the
        generation before its next token with ``finish_reason="cancelled"``."""

    def generate(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
                 adapter: str | None = None, cancel: threading.Event | None = None) -> Completion:
        """Generate a whole reply (drains :meth:`stream`)."""
        return collect_completion(self.stream(messages, options, adapter=adapter, cancel=cancel))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt length in tokens (used to trim long histories). Default: a rough estimate."""
        return sum(len(m.content) // 4 + 4 for m in messages)

    def prepare_constraint(self, pattern: str) -> None:
        """Get ready to hold generations to ``pattern`` (``options.constraint``), so the first
        call that uses it does not wait for its compilation. Default: nothing to prepare."""

    @property
    def context_length(self) -> int:
        """Maximum prompt + completion tokens the model accepts."""
        return 2048

    def close(self) -> None:
        """Release resources (optional)."""


class TokenizedBackend(Backend):
    """A backend that decodes token by token from prompts of its Hugging Face tokenizer
    (``self.tokenizer``), rendered by the one renderer shared with training: the in-process
    backends (transformers, onnxruntime, llama.cpp) all are."""

    tokenizer: Any

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The prompt token ids: exactly the training prefix of the next reply."""
        from duma.rendering import render_prompt_ids

        return render_prompt_ids(self.tokenizer, messages)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt_ids(messages))

    def prepare_constraint(self, pattern: str) -> None:
        # Backends that mask tokens with TokenConstraint (their end ids in ``_eos_ids``): build
        # llguidance's view of the vocabulary (about 1 s the first time) and compile the pattern.
        eos_ids = getattr(self, "_eos_ids", None)
        if self.capabilities.constrained_decoding and eos_ids is not None:
            _compiled_constraint(self.tokenizer, tuple(sorted(eos_ids)), pattern)

    def prompt_and_budget(self, messages: Sequence[Message], options: GenerationOptions,
                          context_hint: str = "") -> tuple[list[int], int]:
        """The prompt ids and how many tokens may follow them (``max_tokens`` within the
        context); an empty or too long prompt is a one-line error."""
        from duma.errors import DumaError

        prompt = self.prompt_ids(messages)
        if not prompt:
            raise DumaError("cannot generate from an empty prompt", "pass at least one message")
        limit = self.context_length
        if len(prompt) >= limit:
            raise DumaError(f"the prompt is {len(prompt)} tokens but the model accepts at most {limit}",
                            "shorten the conversation history or the system prompt" + context_hint)
        return prompt, min(options.max_tokens, limit - len(prompt))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two sequences share (what a kept KV cache can serve)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def eos_token_ids(configured: int | Sequence[int] | None, tokenizer: Any) -> set[int]:
    """The ids that end a reply: the model's configured EOS id(s) and the tokenizer's."""
    ids: set[int] = set()
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class TokenStreamer:
    """Turns the token ids a backend decodes into its stream: text through the incremental
    detokenizer and the stop filter, the end at EOS, a stop string, ``max_new`` tokens,
    ``cancel`` or a complete ``options.constraint``, and the last chunk with usage and timings.
    Every token-by-token backend feeds its tokens through one, so they end replies alike (and
    masks its logits with ``streamer.constraint``, which each pushed token advances)::

        streamer = TokenStreamer(tokenizer, prompt, options, max_new, eos_ids, cancel)
        for token in tokens:
            text = streamer.push(token)
            if text:
                yield GenerationChunk(text=text)
            if streamer.finished:
                break
        ...
        yield from streamer.close()
    """

    def __init__(self, tokenizer: Any, prompt: Sequence[int], options: GenerationOptions, max_new: int,
                 eos_ids: Container[int], cancel: threading.Event | None) -> None:
        self.start = time.perf_counter()
        self.first_token_s: float | None = None
        self.prompt_tokens = len(prompt)
        self.decoder = IncrementalDetokenizer(tokenizer, prompt[-4:])
        self.stops = StopFilter(options.stop)
        self.max_new = max_new
        self.eos_ids = eos_ids
        self.cancel = cancel
        self.generated: list[int] = []
        self.finish = "length"
        self.finished = False
        self.constraint = TokenConstraint(tokenizer, options.constraint, eos_ids) if options.constraint else None

    def push(self, token: int) -> str:
        """Take the next decoded token; returns the text that may be shown now. Afterwards
        ``finished`` says whether generation ends here."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.start
        self.generated.append(token)
        if token in self.eos_ids:
            self.finish, self.finished = "stop", True
            return ""
        if self.constraint is not None:
            self.constraint.advance(token)
        text = self.stops.push(self.decoder.push(token))
        if self.stops.stopped or (self.constraint is not None and self.constraint.complete):
            # Complete: only an end-of-reply token could follow, so none is decoded.
            self.finish, self.finished = "stop", True
        elif len(self.generated) >= self.max_new:
            self.finished = True
        elif self.cancel is not None and self.cancel.is_set():
            self.finish, self.finished = "cancelled", True
        return text

    def close(self) -> Iterator[GenerationChunk]:
        """The text still held back, then the last chunk."""
        tail = self.stops.push(self.decoder.flush()) + self.stops.flush()
        if tail:
            yield GenerationChunk(text=tail)
        yield GenerationChunk(
            done=True,
            finish_reason=self.finish,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=len(self.generated)),
            timings=Timings(first_token_s=self.first_token_s, total_s=time.perf_counter() - self.start),
        )


class AdapterView(Backend):
    """One adapter of a backend that switches adapters per call: what a mind holds when
    both minds share one base model. Everything but the adapter is the base backend's."""

    def __init__(self, base: Backend, adapter: str) -> None:
        # Not Backend.__init__: the base has loaded and validated everything already.
        self.spec = base.spec.model_copy(update={"adapter": adapter})
        self.base = base
        self.adapter = adapter
        self.name = base.name  # type: ignore[misc]  # the backend's name, per instance
        self.capabilities = base.capabilities
        self.backend_options = base.backend_options

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        return self.base.stream(messages, options, adapter=adapter or self.adapter, cancel=cancel)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self.base.count_tokens(messages)

    def prepare_constraint(self, pattern: str) -> None:
        self.base.prepare_constraint(pattern)

    @property
    def context_length(self) -> int:
        return self.base.context_length

    def __getattr__(self, name: str) -> Any:
        # The base's tokenizer, model, caches... (only reached for names not set here).
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, for backends that decode token
    by token.

    Decodes a window of recent ids twice (with and without the newest ones) and emits the
    difference, holding back while the text ends in an incomplete UTF-8 sequence (a
    multi-byte character split across tokens decodes to U+FFFD until its last byte arrives).
    A few prompt tokens seed the window so that tokenizers which drop a leading space at the
    start of a decode do not drop it from the reply.
    """

    def __init__(self, tokenizer: Any, context_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context_ids)
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an invalid byte sequence at the very end)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""


class StopFilter:
    """Holds back text that may be the start of a stop string and cuts at the first stop:
    every backend passes its decoded text through one, so stop strings never show."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, delta: str) -> str:
        """Add decoded text; return the part that is safe to show now."""
        if self.stopped or not delta:
            return ""
        self.text += delta
        if not self.stops:
            out = self.text[self.emitted:]
            self.emitted = len(self.text)
            return out
        # A stop can only begin in the not-yet-emitted tail (earlier text had no stop).
        search_from = max(0, self.emitted - self.longest + 1)
        cut = min((i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out = self.text[self.emitted:cut]
            self.emitted = cut
            return out
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out


class RepetitionGuard:
    """Spots a model caught in a loop: the end of its text is one stretch (at least 8 columns
    wide, at most 300 characters long) repeated ``max_repeats`` times in a row (a line
    written over and over, or "I checked: I checked: ..."). A wide character (Chinese,
    Japanese, Korean) takes two columns, so a loop of four such characters is caught;
    shorter repeats ("ha ha ha") are left alone."""

    MIN_WIDTH = 8
    MAX_PERIOD = 300

    def __init__(self, max_repeats: int | None) -> None:
        self.max_repeats = max_repeats
        self.text = ""

    def feed(self, delta: str) -> bool:
        """Add decoded text; True once the text has started looping."""
        if not self.max_repeats or not delta:
            return False
        self.text += delta
        return self._loop_period() is not None

    def loop_start(self) -> int:
        """Where the repeated part begins beyond its first occurrence (the text to keep)."""
        period = self._loop_period()
        k = self.max_repeats or 1
        return len(self.text) if period is None else len(self.text) - (k - 1) * period

    def _loop_period(self) -> int | None:
        k = self.max_repeats or 1
        tail = self.text[-k * self.MAX_PERIOD:]
        for period in range(1, len(tail) // k + 1):
            unit = tail[-period:]
            if not tail.endswith(unit * k) or cell_len(unit) < self.MIN_WIDTH:
                continue
            # A unit that is itself a short repeat ("----", "ha ha ") is a rule line or
            # laughter, not a loop.
            if unit.strip() and (unit + unit).find(unit, 1) == period:
                return period
        return None


def stream_guarded(backend: Backend, messages: Sequence[Message], options: GenerationOptions, *,
                   cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
    """``backend.stream`` with the repetition guard of ``options.max_repeats``: a looping
    generation ends early with ``finish_reason="length"``; the repeats beyond the first are
    not passed on where they can still be held back (the text of the current chunk)."""
    guard = RepetitionGuard(options.max_repeats)
    stream = backend.stream(messages, options, cancel=cancel)
    try:
        for chunk in stream:
            if chunk.text and guard.feed(chunk.text):
                keep = guard.loop_start() - (len(guard.text) - len(chunk.text))
                if keep > 0:
                    yield GenerationChunk(text=chunk.text[:keep])
                yield GenerationChunk(done=True, finish_reason="length")
                return
            yield chunk
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def match_constraint(pattern: str, text: str) -> str | None:
    """The part of ``text`` (surrounding whitespace aside) that a decoder held to ``pattern``
    could have written: the text up to where a match of the pattern at its start ends (such a
    decoder stops there). None when the text does not begin with a match."""
    body = text.strip()
    found = re.compile(pattern).match(body)
    return None if found is None else body[:found.end()]


# Temperature of the second try of a greedy generation that missed its constraint (greedy
# decoding would write the same text again).
RESAMPLE_TEMPERATURE = 0.7


def generate_checked(backend: Backend, messages: Sequence[Message], options: GenerationOptions, *,
                     cancel: threading.Event | None = None, until: float | None = None) -> Completion:
    """A whole generation through :func:`stream_guarded`, held to ``options.constraint``, for
    callers that show nothing before it is complete (the slow mind's steps).

    A backend with ``capabilities.constrained_decoding`` is called once. Otherwise a text that
    does not match the constraint (:func:`match_constraint`) is generated once more, sampled
    differently (the next seed; a greedy call at ``RESAMPLE_TEMPERATURE``), and the second text
    is kept, matching or not (the protocol's lenient parser reads it). A matching text is cut
    where the match ends, as a constrained decoder would have stopped there. ``until``: a
    ``time.monotonic()`` deadline; past it, as once ``cancel`` is set, the generation ends with
    ``finish_reason="cancelled"`` and is not tried again.
    """
    first = _drain(backend, messages, options, cancel, until)
    pattern = options.constraint
    if pattern is None or backend.capabilities.constrained_decoding or first.finish_reason == "cancelled":
        return first
    matched = match_constraint(pattern, first.text)
    if matched is not None:
        return first.model_copy(update={"text": matched, "finish_reason": "stop"})
    retry = options.model_copy(update={
        "seed": None if options.seed is None else options.seed + 1,
        "temperature": options.temperature or RESAMPLE_TEMPERATURE})
    second = _drain(backend, messages, retry, cancel, until)
    matched = match_constraint(pattern, second.text) if second.finish_reason != "cancelled" else None
    usage = Usage(prompt_tokens=first.usage.prompt_tokens + second.usage.prompt_tokens,
                  completion_tokens=first.usage.completion_tokens + second.usage.completion_tokens)
    timings = Timings(first_token_s=first.timings.first_token_s, total_s=first.timings.total_s + second.timings.total_s)
    update: dict[str, Any] = {"usage": usage, "timings": timings}
    if matched is not None:
        update.update(text=matched, finish_reason="stop")
    return second.model_copy(update=update)


def _drain(backend: Backend, messages: Sequence[Message], options: GenerationOptions,
           cancel: threading.Event | None, until: float | None) -> Completion:
    """One generation through :func:`stream_guarded`, collected; stopped (``"cancelled"``)
    once ``cancel`` is set or the ``until`` deadline has passed."""
    def stop() -> bool:
        return (until is not None and time.monotonic() >= until) or (cancel is not None and cancel.is_set())

    return collect_completion(stream_guarded(backend, messages, options, cancel=cancel), stop=stop)


def collect_completion(chunks: Iterator[GenerationChunk], stop: Callable[[], bool] | None = None) -> Completion:
    """A stream of chunks as one :class:`Completion` (the text, and the last chunk's finish
    reason, usage and timings). ``stop``, checked after each text chunk, ends the collection
    early with ``finish_reason="cancelled"``; the stream is closed either way."""
    parts: list[str] = []
    last = GenerationChunk(done=True)
    try:
        for chunk in chunks:
            parts.append(chunk.text)
            if chunk.done:
                last = chunk
            elif stop is not None and stop():
                last = GenerationChunk(done=True, finish_reason="cancelled", usage=last.usage)
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return Completion(text="".join(parts), finish_reason=last.finish_reason or "stop",
                      usage=last.usage or Usage(), timings=last.timings or Timings())


class Sampler:
    """Picks the next token from a torch logits vector, for backends that decode token by
    token: the tokens ``constraint`` rules out masked first, then argmax when greedy, else
    repetition penalty, temperature, top-k and top-p in the order transformers applies them,
    then a (seeded) draw. ``torch`` is passed in so this module stays importable without it."""

    def __init__(self, torch: Any, options: GenerationOptions, device: str,
                 constraint: TokenConstraint | None = None) -> None:
        self.torch = torch
        self.options = options
        self.constraint = constraint
        self.greedy = options.temperature == 0
        self.needs_history = options.repetition_penalty != 1.0
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if options.seed is not None:
                self.generator.manual_seed(options.seed)
            else:
                self.generator.seed()

    def pick(self, logits: Any, history: Any) -> Any:
        torch = self.torch
        opts = self.options
        if self.constraint is not None:
            logits = self._mask(logits)
        if self.needs_history and history is not None:
            logits = logits.float().clone()
            seen = logits.gather(0, history)
            seen = torch.where(seen < 0, seen * opts.repetition_penalty, seen / opts.repetition_penalty)
            logits.scatter_(0, history, seen)
        if self.greedy:
            return logits.argmax()
        logits = logits.float() / opts.temperature
        if opts.top_k > 0 and opts.top_k < logits.numel():
            kth = torch.topk(logits, opts.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if opts.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - opts.top_p)
            remove[-1] = False  # always keep the most likely token
            logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    def _mask(self, logits: Any) -> Any:
        """``logits`` with the tokens the constraint rules out at -inf. On the CPU in numpy: a
        one-thread pass, where torch's thread pool, contending with the model's own threads,
        took milliseconds per token."""
        allowed = self.constraint.allowed(logits.shape[-1])  # type: ignore[union-attr]
        if logits.device.type == "cpu":
            import numpy as np

            return self.torch.from_numpy(np.where(allowed, logits.float().numpy(), np.float32("-inf")))
        return logits.masked_fill(~self.torch.from_numpy(allowed).to(logits.device), float("-inf"))


class TokenConstraint:
    """A regular expression (``options.constraint``) as a mask over the vocabulary of a
    Hugging Face tokenizer, for backends that pick tokens themselves.

    llguidance (the library behind onnxruntime-genai's and vLLM's guidance) matches the pattern
    against the bytes of every token lazily: a mask takes about 10 us, up to about 1 ms where
    most tokens fit (free text). Its view of a vocabulary (about 1 s to build) and each compiled
    pattern are kept per tokenizer. ``allowed(vocab_size)``: the token ids that may come next
    (the end-of-reply ids where the pattern may end); ``advance(token)`` after every pick;
    ``complete`` once nothing but the end can follow. A matcher that fails (it cannot: only
    allowed tokens are picked) allows only the end, so a constraint never makes a reply hang.
    llguidance is imported on the first mask, not with this module.
    """

    def __init__(self, tokenizer: Any, pattern: str, eos_ids: Collection[int]) -> None:
        self.tokenizer = tokenizer
        self.pattern = pattern
        self.eos_ids = tuple(sorted(eos_ids))
        self._matcher: Any = None

    def allowed(self, vocab_size: int) -> Any:
        """A numpy bool array over ``vocab_size`` ids: True where the next token may be."""
        import numpy as np

        matcher = self._matcher_for()
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        mask = np.zeros(vocab_size, dtype=bool)
        n = min(vocab_size, bits.size)
        mask[:n] = bits[:n]
        if matcher.is_error() or not mask.any():
            mask[:] = False
            mask[[i for i in self.eos_ids if i < vocab_size]] = True
        return mask

    def advance(self, token: int) -> None:
        if self._matcher is not None and not self._matcher.is_error():
            self._matcher.consume_token(int(token))

    @property
    def complete(self) -> bool:
        """The pattern is matched to an end beyond which it allows nothing."""
        m = self._matcher
        return m is not None and not m.is_error() and m.is_stopped()

    def _matcher_for(self) -> Any:
        if self._matcher is None:
            self._matcher = _compiled_constraint(self.tokenizer, self.eos_ids, self.pattern).deep_copy()
        return self._matcher


# Per tokenizer: llguidance's view of its vocabulary per set of end ids, and recently compiled
# patterns (a template matcher each, copied per generation). The view covers the tokenizer's
# ids; logits beyond them (padded embeddings) are masked.
_CONSTRAINT_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_CONSTRAINT_LOCK = threading.Lock()
_PATTERNS_KEPT = 16


def _compiled_constraint(tokenizer: Any, eos_ids: tuple[int, ...], pattern: str) -> Any:
    """llguidance's matcher of ``pattern`` over ``tokenizer`` (compiled once, kept)."""
    from duma.errors import DumaError, first_line

    try:
        import llguidance
        import llguidance.hf
    except ImportError:
        raise DumaError("constrained decoding needs llguidance, which is not installed",
                        "pip install llguidance") from None
    with _CONSTRAINT_LOCK:
        cache = _CONSTRAINT_CACHE.setdefault(tokenizer, {"vocab": {}, "patterns": OrderedDict()})
        if eos_ids not in cache["vocab"]:
            try:
                cache["vocab"][eos_ids] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos_ids))
            except Exception as exc:  # a slow (Python) tokenizer, an unreadable vocabulary
                raise DumaError(f"constrained decoding cannot read this tokenizer: {first_line(exc, with_type=True)}",
                                "use a model with a fast (tokenizer.json) tokenizer") from None
        patterns: OrderedDict[Any, Any] = cache["patterns"]
        pkey = (eos_ids, pattern)
        if pkey in patterns:
            patterns.move_to_end(pkey)
            return patterns[pkey]
        matcher = llguidance.LLMatcher(cache["vocab"][eos_ids], llguidance.LLMatcher.grammar_from_regex(pattern),
                                       log_level=0)
        if matcher.is_error():
            raise DumaError(f"the constraint cannot be decoded: {first_line(matcher.get_error())}",
                            "write it with classes, groups, |, ?, * and + (no lookaround or backreferences)")
        patterns[pkey] = matcher
        while len(patterns) > _PATTERNS_KEPT:
            patterns.popitem(last=False)
        return matcher
