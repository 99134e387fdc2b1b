"""``dpo``: Direct Preference Optimization on preference records (a context, a chosen and a
rejected reply), with the sigmoid (DPO), IPO, hinge (RSO) and robust losses; the policy is
the whole model or, with a ``lora:`` section, a LoRA adapter.

Each pair is rendered with the one renderer as [context + chosen] and [context + rejected],
the loss falling on the reply only. The reference is the starting model: its log-probs are
computed once, from the engine before the first step, and cached in memory and in
``output_dir/reference_logps.pt`` (a resumed run reads them back). A policy started from
existing weights (a LoRA adapter included) thus has those weights, frozen, as reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from duma.config import Strict
from duma.errors import DumaError
from duma.trainers.base import PhaseBar, Sample, Trainer, collate
from duma.trainers.config import RunConfig
from duma.trainers.lora import LoraPolicyTrainer, LoraSettings

if TYPE_CHECKING:
    import torch

REFERENCE_FILE = "reference_logps.pt"
REFERENCE_KEY = "reference_logps"  # the batch key of the pairs' reference log-probs


class DPOSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (KL weight).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid: DPO; ipo: IPO (on per-token mean log-probs); hinge: RSO's hinge; "
        "robust: robust DPO (uses label_smoothing).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed share of flipped labels "
                                   "(conservative DPO for sigmoid, robust DPO for robust).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an added SFT loss on the chosen replies.")


class DPOConfig(RunConfig):
    """Run config of the ``dpo`` trainer; ``data.source`` reads preference records.
    ``training.batch_size`` counts pairs (each a chosen and a rejected sequence)."""

    method: Literal["dpo"] = "dpo"
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter as the policy (base frozen).")

    @model_validator(mode="after")
    def _no_packing(self) -> DPOConfig:
        if self.training.packing:
            raise ValueError("training.packing: dpo scores each reply as a row of its own; set packing false")
        return self


@dataclass
class PreferencePair:
    """One row of a DPO run: the chosen and the rejected sequence of a record, and the
    reference log-probs of their replies once computed."""

    chosen: Sample
    rejected: Sample
    ids: list[int]
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def preference_pairs(trainer: Trainer, tokenizer: Any) -> list[PreferencePair]:
    """A trainer's preference records as pairs of rows (dpo and rm train on the same ones):
    [context + chosen] and [context + rejected], rendered with the one renderer, the loss on
    the reply only, both sides fitted to ``data.max_length`` together."""
    from duma.data import PreferenceRecord
    from duma.rendering import render_training

    pairs: list[PreferencePair] = []
    for record in trainer.records():
        if not isinstance(record, PreferenceRecord):
            raise DumaError(f"data source '{trainer.config.data.source}' gives {type(record).__name__} records; "
                            f"method '{trainer.config.method}' trains on preference pairs",
                            "use data.source: preference")
        sides = [render_training(tokenizer, [*record.messages, {"role": "assistant", "content": reply}],
                                 last_turn_only=True) for reply in (record.chosen, record.rejected)]
        fitted = trainer.fit_to_length(*((r.input_ids, r.labels) for r in sides))
        if fitted is None:
            continue
        (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = fitted
        pair_id = len(pairs)
        pairs.append(PreferencePair(Sample(chosen_ids, chosen_labels, [pair_id]),
                                    Sample(rejected_ids, rejected_labels, [pair_id]), [pair_id]))
    return pairs


def preference_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                      reference_rejected: torch.Tensor, settings: DPOSettings) -> torch.Tensor:
    """The loss of each pair from the log-probs of its replies under policy and reference."""
    import torch.nn.functional as F

    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    beta, eps = settings.beta, settings.label_smoothing
    if settings.loss_type == "sigmoid":  # DPO; eps > 0: conservative DPO
        return -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    if settings.loss_type == "robust":  # unbiased under label noise eps
        return (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    if settings.loss_type == "hinge":
        return F.relu(1 - beta * logits)
    return (logits - 1 / (2 * beta)) ** 2  # ipo


class DPOTrainer(LoraPolicyTrainer):
    """Preference tuning against the frozen starting model."""

    name = "dpo"
    config_class = DPOConfig
    description = "DPO/IPO preference tuning (full or LoRA policy)"
    repack = False

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.settings: DPOSettings = config.dpo  # type: ignore[attr-defined]

    # --- data

    def build_samples(self, tokenizer: Any) -> list[PreferencePair]:  # type: ignore[override]
        return preference_pairs(self, tokenizer)

    def collate(self, rows: Sequence[PreferencePair], pad_id: int) -> dict[str, Any]:  # type: ignore[override]
        """The chosen rows, then the rejected rows, and (once known) their reference log-probs."""
        import torch

        batch = collate([p.chosen for p in rows] + [p.rejected for p in rows], pad_id)
        if all(p.reference is not None for p in rows):
            batch[REFERENCE_KEY] = torch.tensor([p.reference[0] for p in rows] + [p.reference[1] for p in rows],
                                                dtype=torch.float32)
        return batch

    # --- model and reference

    def on_engine_ready(self, engine: Any, bar: PhaseBar) -> None:
        """Attach the reference log-probs to every pair: from the cache when resuming, else
        computed now, from the starting weights."""
        pairs: list[PreferencePair] = [*self.train_rows, *self.eval_rows]  # type: ignore[list-item]
        path = self.out / REFERENCE_FILE
        reference = self.read_reference_cache(path, pairs) if self.resume else None
        if reference is None:
            bar.update(info="reference log-probs")
            reference = self.compute_reference(engine, pairs)
            if self.rank == 0:
                self.write_reference_cache(path, reference)
        for pair in pairs:
            pair.reference = reference[pair.ids[0]]

    def compute_reference(self, engine: Any, pairs: Sequence[PreferencePair]) -> dict[int, tuple[float, float]]:
        """The log-probs of each pair's replies under the engine's current weights. Every
        process scores every pair (ZeRO-3 needs the same forward calls on all ranks)."""
        import torch

        from duma.trainers.logps import sequence_logps

        out: dict[int, tuple[float, float]] = {}
        bs = self.config.training.batch_size
        engine.eval()
        with torch.no_grad():
            for i in range(0, len(pairs), bs):
                rows = pairs[i:i + bs]
                batch = self.collate(rows, self.tokenizer.pad_token_id)
                logps = sequence_logps(engine(**self._model_inputs(batch)).logits, batch["labels"])
                for k, pair in enumerate(rows):
                    out[pair.ids[0]] = (float(logps[k]), float(logps[len(rows) + k]))
        engine.train()
        return out

    def read_reference_cache(self, path: Path, pairs: Sequence[PreferencePair]
                             ) -> dict[int, tuple[float, float]] | None:
        """The cached reference log-probs, if the file belongs to this run and covers every pair."""
        import torch

        if not path.is_file():
            return None
        cache = torch.load(path, weights_only=True)
        if cache.get("config_hash") != self.config.config_hash():
            return None
        reference = {int(i): (float(c), float(r)) for i, (c, r) in zip(cache["ids"], cache["logps"].tolist())}
        return reference if all(p.ids[0] in reference for p in pairs) else None

    def write_reference_cache(self, path: Path, reference: dict[int, tuple[float, float]]) -> None:
        import torch

        from duma.paths import write_atomically

        ids = sorted(reference)
        cache = {"config_hash": self.config.config_hash(), "ids": torch.tensor(ids, dtype=torch.long),
                 "logps": torch.tensor([reference[i] for i in ids], dtype=torch.float32)}
        write_atomically(path, lambda tmp: torch.save(cache, tmp))

    # --- the loss

    @staticmethod
    def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        # No labels: the model would compute a language-model loss nobody uses.
        return {k: v for k, v in batch.items() if k not in ("labels", REFERENCE_KEY)}

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        from duma.rendering import IGNORE_INDEX
        from duma.trainers.logps import sequence_logps

        labels = batch["labels"]
        logps = sequence_logps(engine(**self._model_inputs(batch)).logits, labels)
        reference = batch[REFERENCE_KEY].to(logps.device)
        n = labels.shape[0] // 2
        policy_scores, reference_scores = logps, reference
        if self.settings.loss_type == "ipo":  # IPO compares per-token means (as TRL does)
            tokens = (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)
            policy_scores, reference_scores = logps / tokens, reference / tokens
        losses = preference_losses(policy_scores[:n], policy_scores[n:], reference_scores[:n], reference_scores[n:],
                                   self.settings)
        loss = losses.mean()
        rewards = (self.settings.beta * (policy_scores - reference_scores)).detach()
        chosen, rejected = rewards[:n], rewards[n:]
        metrics = {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
                   "rewards/accuracy": float((chosen > rejected).float().mean()),
                   "rewards/margin": float((chosen - rejected).mean()),
                   "logps/chosen": float(logps[:n].detach().mean()), "logps/rejected": float(logps[n:].detach().mean())}
        if self.settings.sft_weight:
            chosen_tokens = (labels[:n, 1:] != IGNORE_INDEX).sum().clamp(min=1)
            sft_loss = -logps[:n].sum() / chosen_tokens
            loss = loss + self.settings.sft_weight * sft_loss
            metrics["sft_loss"] = float(sft_loss.detach())
        return loss, metrics

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0] // 2)  # the eval loss is a mean over pairs

    # --- result

