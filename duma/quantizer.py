"""The quantizer interface, and the one way a quantization runs (``duma quantize`` and the
backends that convert a model on first use both call :func:`quantize_model`).

A quantizer plugin subclasses :class:`Quantizer` and writes a smaller copy of a float model.
The host does everything around it, the same for every method: it resolves the model
reference (``embedded``, an HF folder, a ``.gguf`` file, an adapter folder), merges an adapter
into its base on request, checks ``--bits``, options and calibration data before any heavy
work, has the quantizer write into a temporary path that is renamed into place only when
everything succeeded, measures size and perplexity before and after, and writes
``duma-quantized.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from duma.errors import ConfigError, DumaError, first_line, validation_problems
from duma.paths import temporary_path

MANIFEST = "duma-quantized.json"
# The held-out text perplexity is measured on when no --ppl-text is given (shipped with duma).
DEFAULT_PPL_TEXT = Path(__file__).with_name("heldout.txt")
DEFAULT_PPL_TOKENS = 512
CALIBRATION_SAMPLES = 128

Progress = Callable[[str], None]


class QuantizeError(DumaError):
    """A quantization that cannot run as asked (bad input, unsupported model or method)."""


class NoQuantizerOptions(BaseModel):
    """A quantizer that takes no ``-o`` options."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class QuantizeSource:
    """What a quantizer reads: the float model (an HF folder), the adapter if one was given,
    and a scratch folder for intermediate files (removed after the run)."""

    reference: str
    base_folder: Path
    adapter: Path | None
    scratch: Path
    progress: Progress = field(default=lambda text: None)
    _merged: Path | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The base model's ``config.json``."""
        return json.loads((self.base_folder / "config.json").read_text(encoding="utf-8"))

    def merged_folder(self) -> Path:
        """An HF folder with the adapter folded into the base weights (the base folder itself
        when there is no adapter): each mind becomes a model of its own. Made once, float32."""
        if self.adapter is None:
            return self.base_folder
        if self._merged is None:
            from duma.models import save_merged

            self.progress(f"merging adapter {self.adapter.name} into its base")
            self._merged = save_merged(self.base_folder, self.adapter, self.scratch / "merged")
        return self._merged


class Quantizer(ABC):
    """Writes a smaller copy of a model. Registered through ``register_quantizers``.

    Class attributes say what the method takes; the host checks them before any work:
    ``bits`` (the accepted ``--bits``, the first is the default), ``output`` (a ``file`` or a
    ``folder``; a file output's ``suffix``), ``calibration`` (whether the method calibrates on
    sample texts; then ``--calibration`` is read into at most ``CALIBRATION_SAMPLES`` texts),
    ``architectures`` (``config.json`` model types it handles; empty: any), and ``Options``
    (the pydantic model of its ``-o KEY VALUE`` settings, validated into ``self.options``).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    bits: ClassVar[tuple[int, ...]]
    output: ClassVar[Literal["file", "folder"]] = "folder"
    suffix: ClassVar[str | None] = None
    calibration: ClassVar[bool] = False
    architectures: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoQuantizerOptions
    # ``load_model(folder, device) -> torch model``: set (a classmethod) by a quantizer whose
    # output transformers cannot load by itself; duma's loader calls it for folders whose
    # ``duma-quantized.json`` names this method.
    load_model: ClassVar[Callable[[Path, str], Any] | None] = None

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> BaseModel:
        try:
            return cls.Options.model_validate(options)
        except ValidationError as exc:
            allowed = ", ".join(sorted(cls.Options.model_fields)) or "none"
            key, problem = validation_problems(exc)[0]
            raise ConfigError(f"-o {key}: {problem}", f"method '{cls.name}' takes: {allowed}") from None

    def check(self, source: QuantizeSource, bits: int) -> None:
        """Refuse what this method cannot do with a one-line :class:`QuantizeError`, before
        any heavy work. The default checks ``architectures``."""
        model_type = source.config.get("model_type", "?")
        if self.architectures and model_type not in self.architectures:
            raise QuantizeError(f"{source.base_folder / 'config.json'}: method '{self.name}' cannot handle "
                                f"model type '{model_type}'", f"it handles: {', '.join(self.architectures)}")

    @abstractmethod
    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        """Write the quantized model to ``out`` (a temporary path the host renames into place
        on success; a file or a folder as ``output`` says). Report phases through
        ``source.progress``. Returns facts for the manifest (e.g. ``{"type": "Q4_1"}``)."""

    def logits_function(self, out: Path, source: QuantizeSource) -> Callable[[Sequence[int]], Any]:
        """A function from token ids to their logits (``[n, vocab]``, torch or numpy), running
        the quantized model at ``out``: what perplexity is measured with. The default loads an
        HF folder with transformers."""
        return hf_logits_function(out)

    def close_logits(self) -> None:
        """Release what :meth:`logits_function` loaded (optional)."""


def hf_logits_function(folder: Path, **load_kwargs: Any) -> Callable[[Sequence[int]], Any]:
    """Logits of an HF model folder (or a GGUF file with ``gguf_file=``), float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from duma.models import _quiet_loading

    with _quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **load_kwargs)
    model.eval()

    def logits(ids: Sequence[int]) -> Any:
        with torch.inference_mode():
            return model(torch.tensor([list(ids)], dtype=torch.long)).logits[0].float()

    return logits


class QuantizeReport(BaseModel):
    """What a quantization did (also written as ``duma-quantized.json``)."""

    source: str
    adapter: str | None = None
    method: str
    bits: int
    output: str
    options: dict[str, Any] = {}
    size_before_bytes: int
    size_after_bytes: int
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    perplexity_text: str | None = None
    perplexity_tokens: int | None = None
    seconds: float
    details: dict[str, Any] = {}

    @property
    def size_ratio(self) -> float:
        return self.size_after_bytes / self.size_before_bytes if self.size_before_bytes else 0.0


def model_size_bytes(path: Path) -> int:
    """Bytes of a model's weights: a file's size, or a folder's weight files (tokenizer and
    config files are not counted)."""
    if path.is_file():
        return path.stat().st_size
    weights = (".safetensors", ".bin", ".gguf", ".onnx", ".data", ".onnx_data", ".pt", ".onnx_adapter")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(weights))


def calibration_texts(path: Path, tokenizer: Any, limit: int = CALIBRATION_SAMPLES) -> list[str]:
    """Up to ``limit`` texts from a file any duma data source reads (conversations rendered
    as the model sees them, through the one renderer)."""
    from duma.data import Conversation, detect_source, flat_text, iter_records
    from duma.rendering import render_text

    if not path.exists():
        raise QuantizeError(f"--calibration {path}: no such file", "give a data file duma reads (duma data stats FILE)")
    if path.is_file() and not path.read_bytes().strip():
        raise QuantizeError(f"--calibration {path}: no usable text (the file is empty)", "give a file with some records")
    texts: list[str] = []
    for record in iter_records(detect_source(path), path):
        if isinstance(record, Conversation):
            text = render_text(tokenizer, record.messages, add_generation_prompt=False)
        else:
            text = flat_text(record)
        if text.strip():
            texts.append(text)
        if len(texts) >= limit:
            break
    if not texts:
        raise QuantizeError(f"--calibration {path}: no usable text in it", "give a file with some records")
    return texts


def perplexity_of(logits: Callable[[Sequence[int]], Any], ids: Sequence[int]) -> float:
    """exp(mean NLL) of ``ids`` scored in one pass (every token after the first)."""
    import torch

    out = logits(ids)
    out = torch.as_tensor(out, dtype=torch.float32)[: len(ids) - 1]
    targets = torch.tensor(list(ids[1:]), dtype=torch.long)
    nll = -torch.log_softmax(out, dim=-1).gather(1, targets.unsqueeze(1)).mean()
    return math.exp(float(nll))


def get_quantizer(method: str, options: dict[str, Any] | None = None) -> Quantizer:
    from duma import host

    return host.get("quantizer", method)(options)


def quantize_model(model: str, method: str, out: str | Path, *, adapter: str | None = None,
                   bits: int | None = None, calibration: str | Path | None = None,
                   options: dict[str, Any] | None = None, overwrite: bool = False,
                   ppl_text: str | Path | None = DEFAULT_PPL_TEXT, ppl_tokens: int = DEFAULT_PPL_TOKENS,
                   progress: Progress | None = None) -> QuantizeReport:
    """Quantize ``model`` (with ``adapter`` merged in, or as the method handles it) with the
    quantizer ``method`` into ``out``. ``ppl_text=None`` skips the perplexity figures.

    Nothing is left at ``out`` unless everything succeeded; an existing ``out`` is refused
    unless ``overwrite``, and then replaced only at the end.
    """
    from duma.models import load_tokenizer, remove_stale_conversions, resolve_model_path, split_adapter

    progress = progress or (lambda text: None)
    quantizer = get_quantizer(method, options)
    cls = type(quantizer)
    bits = cls.bits[0] if bits is None else bits
    if bits not in cls.bits:
        raise QuantizeError(f"--bits {bits}: method '{method}' does not support it",
                            f"use --bits {' or '.join(str(b) for b in cls.bits)}")
    out = Path(out).expanduser()
    if cls.output == "file" and cls.suffix and out.suffix.lower() != cls.suffix:
        raise QuantizeError(f"--out {out}: method '{method}' writes a {cls.suffix} file",
                            f"name the output ...{cls.suffix}")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise QuantizeError(f"--out {out} already exists", "choose another path or pass --overwrite to replace it")
    if calibration is not None and not cls.calibration:
        raise QuantizeError(f"--calibration: method '{method}' takes no calibration data", "leave it out")
    if calibration is None and cls.calibration:
        raise QuantizeError(f"method '{method}' calibrates on sample texts: --calibration is required",
                            f"give a data file, e.g. --calibration data.jsonl ({CALIBRATION_SAMPLES} texts are used)")
    text_ids: list[int] | None = None
    base_ref, adapter_ref = split_adapter(model, adapter)
    if adapter_ref is not None and not (Path(adapter_ref).expanduser() / "adapter_config.json").is_file():
        raise QuantizeError(f"--adapter {adapter_ref}: no adapter_config.json there", "give a peft adapter folder")
    base_folder = resolve_model_path(base_ref)
    tokenizer = load_tokenizer(adapter_ref or base_ref)
    calibration_data = calibration_texts(Path(calibration), tokenizer) if calibration is not None else None
    if ppl_text is not None:
        from duma.plugins.evaluation.perplexity import read_text

        text_ids = tokenizer(read_text(ppl_text), add_special_tokens=False)["input_ids"][:ppl_tokens]
        if len(text_ids) < 2:
            raise QuantizeError(f"--ppl-text {ppl_text} has fewer than 2 tokens", "give a longer text")

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out)
    remove_stale_conversions(out.parent)  # scratch and temporary outputs of killed runs
    scratch = temporary_path(out.parent / f"{out.name}.scratch")
    scratch.mkdir()
    source = QuantizeSource(reference=model, base_folder=base_folder,
                            adapter=Path(adapter_ref).expanduser() if adapter_ref else None,
                            scratch=scratch, progress=progress)
    from duma.models import _quiet_loading

    try:
        with _quiet_loading():  # the method's own loading bars would bury the phases
            return _write_quantized(quantizer, source, tmp, out, bits, calibration_data, text_ids,
                                    ppl_text, started)
    except DumaError:
        raise
    except Exception as exc:
        raise QuantizeError(f"quantizing {model} with '{method}' failed: {first_line(exc, with_type=True)}",
                            "see DUMA_DEBUG=1 for the traceback; nothing was written") from exc
    finally:
        _remove(tmp)
        shutil.rmtree(scratch, ignore_errors=True)


def _write_quantized(quantizer: Quantizer, source: QuantizeSource, tmp: Path, out: Path, bits: int,
                     calibration: list[str] | None, text_ids: list[int] | None, ppl_text: str | Path | None,
                     started: float) -> QuantizeReport:
    """Quantize into ``tmp``, measure, write the manifest, then move the output into place."""
    cls = type(quantizer)
    progress = source.progress
    quantizer.check(source, bits)
    progress(f"quantizing with '{cls.name}'")
    details = quantizer.quantize(source, tmp, bits, calibration) or {}
    if not tmp.exists():
        raise QuantizeError(f"method '{cls.name}' wrote nothing", "report this to the plugin's authors")
    ppl_before = ppl_after = None
    if text_ids is not None:
        progress("measuring perplexity before and after")
        ppl_before = perplexity_of(hf_logits_function(source.merged_folder()), text_ids)
        try:
            ppl_after = perplexity_of(quantizer.logits_function(tmp, source), text_ids)
        finally:
            quantizer.close_logits()
    report = QuantizeReport(
        source=source.reference, adapter=str(source.adapter) if source.adapter else None, method=cls.name,
        bits=bits, output=str(out), options=quantizer.options.model_dump(mode="json"),
        size_before_bytes=model_size_bytes(source.merged_folder()), size_after_bytes=model_size_bytes(tmp),
        perplexity_before=ppl_before, perplexity_after=ppl_after,
        perplexity_text=str(ppl_text) if text_ids is not None else None,
        perplexity_tokens=len(text_ids) if text_ids is not None else None,
        seconds=round(time.perf_counter() - started, 2), details=details)
    manifest = json.dumps(report.model_dump(mode="json"), indent=2) + "\n"
    if cls.output == "folder":
        (tmp / MANIFEST).write_text(manifest, encoding="utf-8")
    _move_into_place(tmp, out)
    if cls.output == "file":
        from duma.paths import write_atomically

        write_atomically(manifest_path(out), lambda p: p.write_text(manifest, encoding="utf-8"))
    return report


_convert_lock = threading.Lock()


def convert_once(model: str, method: str, target: Path, *, backend: str, title: str, adapter: str | None = None,
                 bits: int | None = None, options: dict[str, Any] | None = None) -> Path:
    """``target``, quantizing ``model`` into it with ``method`` unless it exists: what ``backend``
    runs on first use (under ``title``'s progress line, no perplexity). One thread and one
    process converts; the others wait for it and take its result. A failure is a
    :class:`~duma.errors.ModelLoadError`, since the caller was loading a model."""
    from rich.console import Console

    from duma.errors import ModelLoadError
    from duma.models import conversion_progress, remove_stale_conversions
    from duma.paths import file_lock

    if target.exists():
        return target
    with _convert_lock, file_lock(target.parent / f".{target.name}.lock"):
        if target.exists():  # another thread or process converted it meanwhile
            return target
        remove_stale_conversions(target.parent)
        try:
            with conversion_progress(Console(stderr=True), title=title) as phase:
                quantize_model(model, method, target, adapter=adapter, bits=bits, options=options, ppl_text=None,
                               progress=phase)
        except DumaError as exc:
            if target.exists():  # finished by a process that took no lock
                return target
            label = model if adapter is None else f"{model} with adapter {Path(adapter).name}"
            raise ModelLoadError(f"cannot convert {label} for {backend}: {exc.message}", exc.hint) from None
    return target


def manifest_path(out: Path) -> Path:
    """Where ``duma-quantized.json`` goes: inside a folder output, beside a file output
    (``model.gguf`` -> ``model.gguf.duma-quantized.json``)."""
    return out / MANIFEST if out.is_dir() else out.with_name(out.name + "." + MANIFEST)


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = manifest_path(out)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` (``--overwrite``) is moved aside first
    and deleted only once the new one is in place."""
    old = None
    if out.exists() or out.is_symlink():
        old = temporary_path(out)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        _remove(old)
