"""Put trained mind adapters into the package (``duma minds ship``): the adapters that
``duma chat`` and ``Agent.from_config()`` use by default on the embedded model.

The weights are stored as float16 (half the bytes; peft loads them back as float32), with
only what loading needs: ``adapter_config.json``, ``adapter_model.safetensors`` and
``duma_adapter.json`` (base model ``embedded``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from duma.errors import DumaError

SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "duma_adapter.json")


def default_target() -> Path:
    """Where ``duma chat`` looks for the shipped minds (``duma.models.shipped_minds_folder``)."""
    from duma.models import shipped_minds_folder

    folder = shipped_minds_folder()
    if folder is None:
        raise DumaError("the duma.agents package is not installed", "reinstall duma")
    return folder


def ship_adapter(adapter: Path, target: Path) -> dict[str, Any]:
    """Copy one trained adapter folder to ``target`` in float16, atomically; returns its
    size and checksum."""
    import torch
    from safetensors.torch import load_file, save_file

    adapter = Path(adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise DumaError(f"{adapter} has no {name}", "give the output_dir of a finished lora run")
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "embedded"  # not the trainer's local cache path
    if isinstance(config.get("target_modules"), list):  # peft saves a set: keep the file stable
        config["target_modules"] = sorted(config["target_modules"])
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v)
               for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}
    tmp = target.with_name(f".{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (tmp / "duma_adapter.json").write_text(json.dumps({"base_model": "embedded"}) + "\n", encoding="utf-8")
    for item in tmp.iterdir():
        item.chmod(0o644)  # package data: readable by everyone (safetensors writes 0600)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    data = (target / "adapter_model.safetensors").read_bytes()
    return {"folder": str(target), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16],
            "parameters": sum(t.numel() for t in tensors.values())}
