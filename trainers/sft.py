"""``sft``: full fine-tuning on conversations (loss on assistant turns, via the one renderer)."""

from __future__ import annotations

from typing import Literal

from duma.trainers.base import Trainer
from duma.trainers.config import RunConfig


class SFTConfig(RunConfig):
    """Run config of the ``sft`` trainer (BELLE's full fine-tune uses lr 8e-6)."""

    method: Literal["sft"] = "sft"


class SFTTrainer(Trainer):
    """Full-parameter supervised fine-tuning on conversations."""

    name = "sft"
    config_class = SFTConfig
    description = "full fine-tune on conversations"
