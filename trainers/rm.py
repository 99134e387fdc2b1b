"""``rm``: a Bradley-Terry reward model on preference records (a context, a chosen and a
rejected reply): loss -logsigmoid(r_chosen - r_rejected - margin), plus optional reward
centring (TRL's ``center_rewards_coefficient`` * (r_chosen + r_rejected)^2).

The model is transformers' ``AutoModelForSequenceClassification`` with one label, loaded from
the causal LM folder (the backbone's weights, a fresh bias-free ``score`` head): its reward is
the head applied to the hidden state of the last non-pad token of each sequence. It is chosen
over a hand-made wrapper because the result is a plain HF folder (``architectures:
[...ForSequenceClassification]``, ``num_labels: 1``, ``pad_token_id``) that transformers, TRL
and peft load as they are, without duma. With a ``lora:`` section the backbone is frozen, LoRA
adapters and the (fully trained) head are saved as a peft ``SEQ_CLS`` adapter.

Pairs are rendered exactly as ``dpo`` renders them ([context + chosen], [context + rejected]
through the one renderer); only the token ids count, no labels.

Reloading: ``load_reward_model(folder).score([[*messages, {"role": "assistant", "content":
reply}], ...])`` returns one reward per conversation; ``duma eval rm FOLDER PAIRS.jsonl``
reports held-out pair accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from duma.config import Strict
from duma.errors import DumaError, ModelLoadError
from duma.trainers.base import Trainer, collate
from duma.trainers.config import RunConfig
from duma.trainers.dpo import PreferencePair, preference_pairs
from duma.trainers.lora import LoraSettings, save_adapter

if TYPE_CHECKING:
    import torch

    from duma.data import PreferenceRecord
    from duma.types import Message

REWARD_FILE = "duma_reward_model.json"  # marks a folder written by the rm trainer


class RMSettings(Strict):
    margin: float = Field(0.0, description="Margin the chosen reward must beat the rejected one by: "
                          "loss -logsigmoid(r_chosen - r_rejected - margin).")
    center_rewards_coefficient: float = Field(
        0.0, ge=0, description="Weight of the reward-centring penalty mean((r_chosen + r_rejected)^2) "
        "(TRL's; keeps rewards near zero mean).")


class RMConfig(RunConfig):
    """Run config of the ``rm`` trainer; ``data.source`` reads preference records.
    ``training.batch_size`` counts pairs (each a chosen and a rejected sequence)."""

    method: Literal["rm"] = "rm"
    rm: RMSettings = Field(default_factory=RMSettings)
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters and the head (backbone frozen).")

    @model_validator(mode="after")
    def _no_packing(self) -> RMConfig:
        if self.training.packing:
            raise ValueError("training.packing: rm scores each reply as a row of its own; set packing false")
        return self


def reward_losses(chosen: torch.Tensor, rejected: torch.Tensor, settings: RMSettings) -> torch.Tensor:
    """The loss of each pair from its chosen and rejected rewards (the batch loss is the mean)."""
    import torch.nn.functional as F

    losses = -F.logsigmoid(chosen - rejected - settings.margin)
    if settings.center_rewards_coefficient:
        losses = losses + settings.center_rewards_coefficient * (chosen + rejected) ** 2
    return losses


def load_reward_backbone(folder: Path | str, pad_token_id: int, dtype: str = "float32") -> Any:
    """A one-label sequence classifier from an HF folder: a causal LM's backbone gets a fresh
    head; a saved reward model loads whole. ``pad_token_id`` tells it where sequences end."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from duma import models

    models.name_accelerator()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=1, pad_token_id=pad_token_id, dtype=getattr(torch, dtype))
    except Exception as exc:
        from duma.errors import first_line

        raise ModelLoadError(f"cannot load {folder} as a reward model: {first_line(exc, with_type=True)}",
                             "give a causal LM whose architecture transformers can put a "
                             "sequence-classification head on (Llama, Qwen, Mistral...)") from None


class RMTrainer(Trainer):
    """Reward model: the backbone plus a scalar head, trained on preference pairs."""

    name = "rm"
    config_class = RMConfig
    description = "Bradley-Terry reward model on preference pairs (full or LoRA)"
    repack = False
    result_kind = "reward model"

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.settings: RMSettings = config.rm  # type: ignore[attr-defined]
        self.lora: LoraSettings | None = config.lora  # type: ignore[attr-defined]

    # --- data

    def build_samples(self, tokenizer: Any) -> list[PreferencePair]:  # type: ignore[override]
        return preference_pairs(self, tokenizer)

    def collate(self, rows: Sequence[PreferencePair], pad_id: int) -> dict[str, Any]:  # type: ignore[override]
        """The chosen rows, then the rejected rows; no labels (the head would add a loss)."""
        batch = collate([p.chosen for p in rows] + [p.rejected for p in rows], pad_id)
        batch.pop("labels")
        return batch

    # --- model

    def resolve_start(self) -> None:
        super().resolve_start()
        if self.start_adapter is not None:
            raise DumaError(f"model {self.config.model} is an adapter folder: a reward model starts from a "
                            "base model", "set model: to the adapter's base (e.g. embedded)")

    def load_model(self) -> Any:
        assert self.model_folder is not None
        return load_reward_backbone(self.model_folder, self.tokenizer.pad_token_id)

    def prepare_model(self, model: Any) -> Any:
        if self.lora is None:
            return model
        assert self.model_folder is not None
        return apply_reward_lora(model, self.lora, self.model_folder)

    # --- the loss

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        rewards = engine(**batch).logits.squeeze(-1).float()
        n = rewards.shape[0] // 2
        chosen, rejected = rewards[:n], rewards[n:]
        loss = reward_losses(chosen, rejected, self.settings).mean()
        chosen, rejected = chosen.detach(), rejected.detach()
        return loss, {"accuracy": float((chosen > rejected).float().mean()),
                      "margin": float((chosen - rejected).mean()),
                      "rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean())}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0] // 2)  # eval loss and metrics: means over pairs

    # --- result

    def save_final(self, model: Any, folder: Path) -> None:
        assert self.model_folder is not None
        if self.lora is None:
            super().save_final(model, folder)
        else:
            save_adapter(model, self.tokenizer, folder, self.base_model, self.model_folder)
        marker = {"kind": "reward_model", "adapter": self.lora is not None, "pad_token_id": self.tokenizer.pad_token_id,
                  "base_model": self.base_model, "base_folder": str(self.model_folder.resolve())}
        (folder / REWARD_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def apply_reward_lora(model: Any, settings: LoraSettings, base_folder: Path) -> Any:
    """LoRA on a sequence classifier: peft's ``SEQ_CLS`` task trains and saves the ``score``
    head in full (a fresh head has nothing to adapt)."""
    from peft import LoraConfig, get_peft_model

    from duma import models

    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=settings.target_modules, task_type="SEQ_CLS")
    with models.quiet_peft():
        peft_model = get_peft_model(model, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_folder).resolve())
    return peft_model


# ----------------------------------------------------------------------------- reloading and scoring

class RewardModel:
    """A trained reward model in eval mode: ``score`` gives one reward per conversation."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def score(self, conversations: Sequence[Sequence[Message | dict[str, Any]]], batch_size: int = 16) -> list[float]:
        """Rewards of conversations that end with the reply to score, rendered as in training."""
        import torch

        from duma.rendering import render_training
        from duma.trainers.base import Sample

        pad_id = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(conversations), batch_size):
                rows = []
                for messages in conversations[start:start + batch_size]:
                    r = render_training(self.tokenizer, messages, max_length=self.max_length, last_turn_only=True)
                    rows.append(Sample(r.input_ids, r.labels, []))
                batch = collate(rows, pad_id)
                batch.pop("labels")
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                out += self.model(**batch).logits.squeeze(-1).float().tolist()
        return out

    def score_pairs(self, records: Iterable[PreferenceRecord], batch_size: int = 16) -> list[tuple[float, float]]:
        """(chosen, rejected) rewards of preference records."""
        records = list(records)
        convs = [[*r.messages, {"role": "assistant", "content": reply}] for r in records
                 for reply in (r.chosen, r.rejected)]
        scores = self.score(convs, batch_size)
        return list(zip(scores[0::2], scores[1::2]))


def load_reward_model(folder: Path | str, device: str = "cpu", max_length: int | None = None) -> RewardModel:
    """The reward model an ``rm`` run wrote into ``folder`` (a full model or a LoRA adapter
    over its base), with its tokenizer."""
    from duma.models import attach_adapter, load_tokenizer, pick_device
    from duma.trainers.base import quiet_libraries, resolve_model_folder

    folder = Path(folder)
    marker_file = folder / REWARD_FILE
    if not marker_file.is_file():
        raise ModelLoadError(f"{folder} is not a reward model folder (no {REWARD_FILE})",
                             "give the output_dir of a 'duma train' run with method: rm")
    marker = json.loads(marker_file.read_text(encoding="utf-8"))
    with quiet_libraries(True):
        tokenizer = load_tokenizer(str(folder))
        pad_id = marker.get("pad_token_id", tokenizer.pad_token_id)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = pad_id
        if marker.get("adapter"):
            base = Path(marker.get("base_folder") or "")
            if not (base / "config.json").is_file():
                base = resolve_model_folder(marker["base_model"])
            model = attach_adapter(load_reward_backbone(base, pad_id), str(folder)).merge_and_unload()
        else:
            model = load_reward_backbone(folder, pad_id)
    model.to(pick_device(device)).eval()
    return RewardModel(model, tokenizer, max_length)


class PairAccuracy(BaseModel):
    """What ``duma eval rm`` reports."""

    model: str
    file: str
    pairs: int
    accuracy: float = Field(description="Share of pairs whose chosen reply gets the higher reward.")
    mean_margin: float = Field(description="Mean of r_chosen - r_rejected.")
    mean_chosen: float
    mean_rejected: float


def pair_accuracy(folder: Path | str, pairs_file: Path | str, source: str = "preference", *,
                  limit: int | None = None, device: str = "cpu", batch_size: int = 16) -> PairAccuracy:
    """Held-out pair accuracy and mean margin of a reward model folder on a preference file."""
    import itertools

    from duma.data import PreferenceRecord, iter_records

    records = list(itertools.islice(iter_records(source, Path(pairs_file)), limit))
    if not records:
        raise DumaError(f"{pairs_file} holds no records", "give a file of preference pairs")
    if not all(isinstance(r, PreferenceRecord) for r in records):
        raise DumaError(f"data source '{source}' does not give preference records", "use --source preference")
    scores = load_reward_model(folder, device=device).score_pairs(records, batch_size)  # type: ignore[arg-type]
    n = len(scores)
    return PairAccuracy(model=str(folder), file=str(pairs_file), pairs=n,
                        accuracy=sum(c > r for c, r in scores) / n,
                        mean_margin=sum(c - r for c, r in scores) / n,
                        mean_chosen=sum(c for c, _ in scores) / n, mean_rejected=sum(r for _, r in scores) / n)
