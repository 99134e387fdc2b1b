"""``lora``: peft LoRA fine-tuning on conversations; the result is an adapter folder whose
``adapter_config.json`` points at the base model. ``merge_adapter`` folds one into its base
(``duma export --merge``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from duma import models
from duma.config import Strict
from duma.trainers.base import Trainer, load_causal_lm, resolve_model_folder
from duma.trainers.config import RunConfig, TrainingConfig

ADAPTER_BASE_FILE = "duma_adapter.json"  # the base model reference as the run config gave it


class LoraSettings(Strict):
    """BELLE's LoRA recipe by default."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class LoraTrainingConfig(TrainingConfig):
    lr: float = Field(3e-4, gt=0)


class LoraRunConfig(RunConfig):
    """Run config of the ``lora`` trainer."""

    method: Literal["lora"] = "lora"
    training: LoraTrainingConfig = Field(default_factory=LoraTrainingConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)


def apply_lora(model: Any, settings: LoraSettings, base_folder: Path, start: Path | None = None) -> Any:
    """``model`` wrapped with fresh LoRA adapters (the base frozen), or with the adapter
    folder ``start``, trainable (its own rank and modules then apply, not ``settings``); the
    adapter config names ``base_folder`` as its base."""
    from peft import LoraConfig, get_peft_model

    if start is not None:
        peft_model = models.attach_adapter(model, str(start), trainable=True)
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_folder).resolve())
        return peft_model
    peft_cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          target_modules=settings.target_modules, task_type="CAUSAL_LM")
    with models.quiet_peft():
        peft_model = get_peft_model(model, peft_cfg)
    # Where to find the base again: a folder path everyone can load.
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_folder).resolve())
    return peft_model


def save_adapter(model: Any, tokenizer: Any, folder: Path, base_model: str, base_folder: Path) -> None:
    """Write the adapter, the tokenizer and the base model reference (``base_model`` as the
    run config gave it) into ``folder``."""
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / ADAPTER_BASE_FILE).write_text(json.dumps(
        {"base_model": base_model, "base_folder": str(Path(base_folder).resolve())}))


class LoraPolicyTrainer(Trainer):
    """A method whose policy is the whole model or, with the run config's optional ``lora:``
    section, a LoRA adapter on it (dpo, kto, grpo, ppo): the set-up and the saved result."""

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.lora: LoraSettings | None = getattr(config, "lora", None)
        self.result_kind = "adapter" if self.lora else "model"

    def load_model(self) -> Any:
        if self.lora is None:
            return super().load_model()
        assert self.model_folder is not None
        return load_causal_lm(self.model_folder)  # a starting adapter goes on in prepare_model

    def prepare_model(self, model: Any) -> Any:
        if self.lora is None:
            return model
        assert self.model_folder is not None
        return apply_lora(model, self.lora, self.model_folder, self.start_adapter)

    def save_final(self, model: Any, folder: Path) -> None:
        if self.lora is None:
            super().save_final(model, folder)
            return
        assert self.model_folder is not None
        save_adapter(model, self.tokenizer, folder, self.base_model, self.model_folder)


class LoraTrainer(Trainer):
    """LoRA adapters on the attention and MLP projections; the base stays frozen."""

    name = "lora"
    config_class = LoraRunConfig
    description = "peft LoRA adapter on conversations"
    result_kind = "adapter"

    def load_model(self) -> Any:
        assert self.model_folder is not None
        return load_causal_lm(self.model_folder)  # a starting adapter goes on in prepare_model

    def prepare_model(self, model: Any) -> Any:
        assert self.model_folder is not None
        return apply_lora(model, self.config.lora, self.model_folder,  # type: ignore[attr-defined]
                          self.start_adapter)

    def save_final(self, model: Any, folder: Path) -> None:
        assert self.model_folder is not None
        save_adapter(model, self.tokenizer, folder, self.base_model, self.model_folder)


def merge_adapter(adapter: Path, out: Path) -> Path:
    """Fold a LoRA adapter into its base model and write a plain HF model folder."""
    from duma.errors import DumaError

    adapter = Path(adapter)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise DumaError(f"{adapter} is not an adapter folder (no adapter_config.json)",
                        "give the output_dir of a lora run")
    meta_file = adapter / ADAPTER_BASE_FILE
    # A lora run records the base as the run config named it and the folder it loaded; a
    # shipped adapter only the reference (``duma minds ship``).
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    ref = meta.get("base_model") or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if meta.get("base_folder") and (Path(meta["base_folder"]) / "config.json").is_file():
        base_folder = Path(meta["base_folder"])
    elif ref:
        base_folder = resolve_model_folder(ref)
    else:
        raise DumaError(f"{cfg_file} names no base model", "set base_model_name_or_path")
    return models.save_merged(base_folder, adapter, Path(out))
