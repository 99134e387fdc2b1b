"""The run configuration shared by every trainer: one YAML holds model, method, data and
training keys (LLaMA-Factory style). Each trainer module subclasses :class:`RunConfig` with
its own ``method`` literal and extra sections (``lora:``, ``vocab:``), so a key that the chosen
trainer does not know is an error naming the key and what is allowed.

No torch here: this module is imported when the CLI validates a config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from duma.config import Strict


class DataConfig(Strict):
    """Where the training data comes from and how samples are cut."""

    source: str = Field("belle", description="Name of a registered data source (belle, alpaca, text...).")
    files: list[Path] = Field(min_length=1, description="Input files, read in order.")
    eval_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Share of samples held out for eval loss.")
    max_length: int = Field(512, ge=8, description="Tokens per sample (or per packed block).")
    overlong: Literal["truncate", "skip"] = Field("truncate", description="What to do with longer samples.")
    last_turn_only: bool = Field(False, description="Loss on the last assistant turn only.")
    skip_invalid: bool = Field(False, description="Skip records that do not validate (else stop).")
    rejects_path: Path | None = Field(None, description="Write skipped invalid records here.")
    limit: int | None = Field(None, ge=1, description="Read at most this many records.")


class TrainingConfig(Strict):
    """Optimisation and engine keys (DeepSpeed underneath)."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(4, ge=1, description="Micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a share of lr.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 disables.")
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state offload to CPU.")
    offload_params: bool = Field(False, description="ZeRO-3 parameter offload to CPU.")
    bf16: bool = False
    seed: int = 42
    packing: bool = Field(False, description="Pack samples into max_length rows (else pad batches).")
    isolate_packed: bool = Field(
        True, description="Packed samples do not attend to each other (positions restart, block-diagonal "
        "mask); false: each packed row is one causal sequence.")
    group_by_length: bool = Field(False, description="Batch samples of similar length (padding only).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps; 0 = only at the end.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept.")
    log_every: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0, description="Eval every N steps; 0 = only at the end.")
    progress: bool = Field(True, description="Show a progress bar.")
    threads: int | None = Field(
        None, ge=1, description="CPU threads for this run (default: torch's). Two runs with 1 thread "
        "each beat one after the other on a 2-core machine.")

    @model_validator(mode="after")
    def _check_offload(self) -> "TrainingConfig":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.packing and self.group_by_length:
            raise ValueError("packing and group_by_length exclude each other")
        return self


# Keys that change neither the data order nor the maths: a resumed run may change them.
_HASH_EXEMPT = {"training": {"save_every", "keep_last", "log_every", "eval_every", "progress", "threads"}}


class RunConfig(Strict):
    """One training run. ``model``: ``tiny`` (a tiny random model, for trials), ``embedded``
    or an HF model folder."""

    method: str
    model: str = "embedded"
    output_dir: Path
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def config_hash(self) -> str:
        """Identifies the run in its output folder (bookkeeping keys left out)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data.pop("output_dir", None)
        for section, keys in _HASH_EXEMPT.items():
            for key in keys:
                data.get(section, {}).pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
