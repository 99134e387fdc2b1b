"""Helpers for testing duma and duma plugins: a tiny random chat model and a scripted backend.

``make_tiny_model(path)`` writes an HF model folder (a random 2-layer Llama and a small BPE
tokenizer with a ChatML chat template) that every duma backend and trainer loads like a real
model, in well under a second. ``ScriptedBackend`` replays fixed replies, for exact protocol
tests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from duma.backend import Backend, StopFilter
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. Paris is a city in Europe.",
    "Hello! How can I help you today? I am a helpful assistant.",
    "What is 17% of 2,340? It is 397.8. Invoke[True] Invoke[False] Response[ ]",
    "Reason[ ] Act[calculator(2+2)] Obs[4] Finish[done] SlowMind[ ] User[ ]",
    "Human: \nAssistant: \n Query 0: Answer 0: the quick brown fox jumps over the lazy dog",
    "0123456789 + - * / ( ) . , ; : ! ? ' \" = % $ # @ & [ ] { } < > _",
    "你好，今天天气很好。北京是中国的首都。",
]


def make_tiny_tokenizer(path: str | Path, vocab_size: int = 512):
    """Train a small byte-level BPE tokenizer with ChatML special tokens and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def make_tiny_model(path: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Write a tiny random Llama chat model (model + tokenizer) to ``path``; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    (path / "duma-tiny.json").write_text(json.dumps({"seed": seed, "layers": layers, "hidden": hidden}))
    return path


def run_cli(args: Sequence[str], input: str | None = None) -> tuple[int, str, str]:
    """Run the real ``duma`` entry point in-process (its one-line error handling and plugin
    commands included): ``(exit code, stdout, stderr)``."""
    from click.testing import CliRunner

    from duma.cli import main

    with CliRunner().isolation(input=input) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


class ScriptedBackend(Backend):
    """Replays scripted replies in order (cycling at the end), streaming them word by word.

    Construct it directly, or register it and put the replies in ``ModelSpec.model`` as a
    JSON list. ``calls`` records the messages of every call, for assertions.
    """

    name = "scripted"

    def __init__(self, spec: ModelSpec | None = None, replies: Sequence[str] | None = None,
                 delay_s: float = 0.0) -> None:
        spec = spec or ModelSpec(backend="scripted", model="[]")
        super().__init__(spec)
        if replies is None:
            try:
                replies = json.loads(spec.model)
            except ValueError:
                replies = [spec.model]
        self.replies = list(replies) or [""]
        self.delay_s = delay_s
        self.calls: list[list[Message]] = []
        self._lock = threading.Lock()

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        options = options or GenerationOptions()
        with self._lock:
            self.calls.append(list(messages))
            reply = self.replies[(len(self.calls) - 1) % len(self.replies)]
        start = time.perf_counter()
        words = reply.split(" ")
        stops = StopFilter(options.stop)
        first = None
        n = 0
        finish = "length" if len(words) > options.max_tokens else "stop"
        for i, word in enumerate(words[: options.max_tokens]):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            first = first if first is not None else time.perf_counter() - start
            n += 1
            text = stops.push(word if i == 0 else " " + word)
            if text:
                yield GenerationChunk(text=text)
            if stops.stopped:
                finish = "stop"
                break
        tail = stops.flush()
        if tail:
            yield GenerationChunk(text=tail)
        yield GenerationChunk(
            done=True,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=sum(len(m.content.split()) for m in messages), completion_tokens=n),
            timings=Timings(first_token_s=first, total_s=time.perf_counter() - start),
        )

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)
