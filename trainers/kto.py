"""``kto``: Kahneman-Tversky Optimization on unpaired examples: a context and one reply labelled
desirable or undesirable (``duma logs export --format kto``, data source ``unpaired``). The
policy is the whole model or, with a ``lora:`` section, a LoRA adapter.

Each example is rendered with the one renderer as [context + completion], the loss falling on
the completion only. With r = policy - reference log-prob of the completion, the loss of an
example is ``desirable_weight * (1 - sigmoid(beta * (r - z0)))`` if it is desirable, else
``undesirable_weight * (1 - sigmoid(beta * (z0 - r)))``; a micro-batch's loss is their mean.

z0, the KL reference point, is estimated per micro-batch as in the KTO paper (and TRL): each
row's context is paired with the completion of the row before it in the batch (mismatched
pairs), z0 = max(0, mean of their r), detached (and averaged over processes).

The reference is the starting model, as in ``dpo``: the log-probs of every example and of every
mismatched pair the run's micro-batches will form (the data order is seeded, so those are known
before the first step) are computed once, from the engine, and cached in memory and in
``output_dir/reference_logps.pt`` (a resumed run reads them back).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from duma.config import Strict
from duma.errors import DumaError
from duma.rendering import IGNORE_INDEX
from duma.trainers.base import PhaseBar, Sample, collate, epoch_order
from duma.trainers.config import RunConfig
from duma.trainers.dpo import REFERENCE_FILE, REFERENCE_KEY
from duma.trainers.lora import LoraPolicyTrainer, LoraSettings

if TYPE_CHECKING:
    import torch

KL_KEY = "kl"  # the batch key of the mismatched pairs (a batch of their own)
LABEL_KEY = "desirable"  # the batch key of the labels (bool, one per example)
_NOT_MODEL_INPUTS = ("labels", REFERENCE_KEY, KL_KEY, LABEL_KEY)

Pair = tuple[int, int]  # (id of the example giving the context, id of the one giving the completion)


class KTOSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (KL weight).")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable examples' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable examples' losses "
                                      "(raise the rarer kind's weight when the labels are unbalanced).")


class KTOConfig(RunConfig):
    """Run config of the ``kto`` trainer; ``data.source`` reads unpaired records."""

    method: Literal["kto"] = "kto"
    kto: KTOSettings = Field(default_factory=KTOSettings)
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter as the policy (base frozen).")

    @model_validator(mode="after")
    def _check_batches(self) -> KTOConfig:
        if self.training.packing:
            raise ValueError("training.packing: kto scores each completion as a row of its own; set packing false")
        if self.training.batch_size < 2:
            # With one row, the mismatched pair is the example itself: z0 would be its own reward.
            raise ValueError("training.batch_size: kto needs at least 2 (the KL reference point pairs each "
                             "context with another example's completion in the micro-batch)")
        return self


@dataclass
class UnpairedExample:
    """One row of a KTO run: the example's [context + completion] and what a mismatched pair
    takes from it (its context's length, its completion's tokens)."""

    sample: Sample  # fitted to data.max_length
    context_len: int  # sample.input_ids[:context_len] is the rendered context
    completion: tuple[list[int], list[int]]  # the ids and labels after the context, not truncated
    desirable: bool
    ids: list[int]

    def __len__(self) -> int:
        return len(self.sample)


def mismatched_pairs(rows: Sequence[UnpairedExample]) -> list[Pair]:
    """Each row's context with the completion of the row before it (the first row's with the
    last row's): the KTO paper's shift. A batch of one row pairs the example with itself."""
    return [(row.ids[0], rows[k - 1].ids[0]) for k, row in enumerate(rows)]


def kto_losses(logratios: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor | float,
               settings: KTOSettings) -> torch.Tensor:
    """The loss of each example from its log-ratio (policy - reference log-prob of the
    completion), its label and the reference point ``z0``."""
    import torch

    gain = 1 - torch.sigmoid(settings.beta * (logratios - z0))
    loss = 1 - torch.sigmoid(settings.beta * (z0 - logratios))
    return torch.where(desirable, settings.desirable_weight * gain, settings.undesirable_weight * loss)


class KTOTrainer(LoraPolicyTrainer):
    """Unpaired preference tuning against the frozen starting model."""

    name = "kto"
    config_class = KTOConfig
    description = "KTO on desirable/undesirable replies (full or LoRA policy)"
    repack = False

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.settings: KTOSettings = config.kto  # type: ignore[attr-defined]
        self.examples: dict[int, UnpairedExample] = {}
        self.reference: dict[Pair, float] = {}

    # --- data

    def build_samples(self, tokenizer: Any) -> list[UnpairedExample]:  # type: ignore[override]
        from duma.data import UnpairedRecord
        from duma.rendering import render_training

        examples: list[UnpairedExample] = []
        for record in self.records():
            if not isinstance(record, UnpairedRecord):
                raise DumaError(f"data source '{self.config.data.source}' gives {type(record).__name__} records; "
                                "method 'kto' trains on unpaired examples (a completion labelled true or false)",
                                "use data.source: unpaired ('duma logs export --format kto' writes them)")
            r = render_training(tokenizer, [*record.messages, {"role": "assistant", "content": record.completion}],
                                last_turn_only=True)
            fitted = self.fit_to_length((r.input_ids, r.labels))
            if fitted is None:
                continue
            ((ids, labels),) = fitted
            # The completion's labels begin right after the context (earlier replies are masked).
            start = next(i for i, label in enumerate(r.labels) if label != IGNORE_INDEX)
            n = len(examples)
            examples.append(UnpairedExample(Sample(ids, labels, [n]), start, (r.input_ids[start:], r.labels[start:]),
                                            record.label, [n]))
        desirable = sum(e.desirable for e in examples)
        self.data_counts.extra.update({"desirable": desirable, "undesirable": len(examples) - desirable})
        self.examples = {e.ids[0]: e for e in examples}
        return examples

    def pair_sample(self, context_id: int, completion_id: int) -> Sample:
        """[context of one example + completion of another], cut at ``data.max_length`` (a
        mismatched pair may be longer than either example)."""
        context = self.examples[context_id]
        if context_id == completion_id:
            return context.sample
        ids, labels = self.examples[completion_id].completion
        n, cut = self.config.data.max_length, context.context_len
        return Sample((context.sample.input_ids[:cut] + ids)[:n], ([IGNORE_INDEX] * cut + labels)[:n], [context_id])

    def collate(self, rows: Sequence[UnpairedExample], pad_id: int) -> dict[str, Any]:  # type: ignore[override]
        """The examples, their labels, their mismatched pairs (under ``kl``) and, once known,
        the reference log-probs of both."""
        import torch

        pairs = mismatched_pairs(rows)
        batch = collate([r.sample for r in rows], pad_id)
        kl = collate([self.pair_sample(*p) for p in pairs], pad_id)
        batch[LABEL_KEY] = torch.tensor([r.desirable for r in rows], dtype=torch.bool)
        own = [(r.ids[0], r.ids[0]) for r in rows]
        if all(p in self.reference for p in own + pairs):
            batch[REFERENCE_KEY] = torch.tensor([self.reference[p] for p in own], dtype=torch.float32)
            kl[REFERENCE_KEY] = torch.tensor([self.reference[p] for p in pairs], dtype=torch.float32)
        batch[KL_KEY] = kl
        return batch

    # --- model and reference

    def on_engine_ready(self, engine: Any, bar: PhaseBar) -> None:
        """The reference log-probs of every example and mismatched pair the run will score:
        from the cache when resuming, else computed now, from the starting weights."""
        path = self.out / REFERENCE_FILE
        needed = self.reference_pairs()
        reference = self.read_reference_cache(path, needed) if self.resume else None
        if reference is None:
            bar.update(info="reference log-probs")
            reference = self.compute_reference(engine, needed)
            if self.rank == 0:
                self.write_reference_cache(path, reference)
        self.reference = reference

    def planned_batches(self) -> Iterator[list[UnpairedExample]]:
        """Every micro-batch of the run, as the engine will take them (every process's, every
        step's, then the eval batches): the data order is seeded, so known in advance."""
        t = self.config.training
        spe, n = self.steps_per_epoch(), t.grad_accum * self.world
        lengths = [len(r) for r in self.train_rows]
        order: list[list[int]] = []
        current = -1
        for step in range(self.total_steps()):
            epoch, pos = divmod(step, spe)
            if epoch != current:
                order = epoch_order(len(self.train_rows), lengths, t.seed, epoch, t.batch_size, t.group_by_length)
                current = epoch
            for indices in order[pos * n:(pos + 1) * n]:
                yield [self.train_rows[i] for i in indices]  # type: ignore[misc]
        for i in range(0, len(self.eval_rows), t.batch_size):
            yield self.eval_rows[i:i + t.batch_size]  # type: ignore[misc]

    def reference_pairs(self) -> list[Pair]:
        """The (context, completion) pairs whose reference log-probs the run needs, sorted."""
        needed = {(r.ids[0], r.ids[0]) for r in [*self.train_rows, *self.eval_rows]}
        for rows in self.planned_batches():
            needed.update(mismatched_pairs(rows))
        return sorted(needed)

    def compute_reference(self, engine: Any, pairs: Sequence[Pair]) -> dict[Pair, float]:
        """The completion log-probs of ``pairs`` under the engine's current weights. Every
        process scores every pair (ZeRO-3 needs the same forward calls on all ranks)."""
        import torch

        from duma.trainers.logps import sequence_logps

        out: dict[Pair, float] = {}
        bs = self.config.training.batch_size
        engine.eval()
        with torch.no_grad():
            for i in range(0, len(pairs), bs):
                chunk = list(pairs[i:i + bs])
                batch = collate([self.pair_sample(*p) for p in chunk], self.tokenizer.pad_token_id)
                logps = sequence_logps(engine(**self._model_inputs(batch)).logits, batch["labels"])
                out.update(zip(chunk, logps.tolist()))
        engine.train()
        return out

    def read_reference_cache(self, path: Path, needed: Sequence[Pair]) -> dict[Pair, float] | None:
        """The cached reference log-probs, if the file belongs to this run and covers ``needed``."""
        import torch

        if not path.is_file():
            return None
        cache = torch.load(path, weights_only=True)
        if cache.get("config_hash") != self.config.config_hash() or "pairs" not in cache:
            return None
        reference = {(int(c), int(y)): float(v) for (c, y), v in zip(cache["pairs"].tolist(), cache["logps"].tolist())}
        return reference if all(p in reference for p in needed) else None

    def write_reference_cache(self, path: Path, reference: dict[Pair, float]) -> None:
        import torch

        from duma.paths import write_atomically

        pairs = sorted(reference)
        cache = {"config_hash": self.config.config_hash(),
                 "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
                 "logps": torch.tensor([reference[p] for p in pairs], dtype=torch.float32)}
        write_atomically(path, lambda tmp: torch.save(cache, tmp))

    # --- the loss

    @staticmethod
    def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        # No labels: the model would compute a language-model loss nobody uses.
        return {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        import torch

        from duma.trainers.logps import sequence_logps

        kl_batch = batch[KL_KEY]
        if REFERENCE_KEY not in batch:
            raise DumaError("kto: a micro-batch without reference log-probs (the data order differs from the "
                            "one planned before the first step)", "report this as a bug")
        logps = sequence_logps(engine(**self._model_inputs(batch)).logits, batch["labels"])
        with torch.no_grad():  # z0 is a constant of the loss: no graph for the mismatched pairs
            kl_logps = sequence_logps(engine(**self._model_inputs(kl_batch)).logits, kl_batch["labels"])
        logratios = logps - batch[REFERENCE_KEY].to(logps.device)
        kl = (kl_logps - kl_batch[REFERENCE_KEY].to(kl_logps.device)).mean().detach()
        if self.world > 1:  # one reference point for the global micro-batch, as TRL gathers it
            import torch.distributed as dist

            dist.all_reduce(kl)
            kl = kl / self.world
        z0 = kl.clamp(min=0)
        desirable = batch[LABEL_KEY].to(logps.device)
        loss = kto_losses(logratios, desirable, z0, self.settings).mean()
        rewards = (self.settings.beta * logratios).detach()

        def mean(values: torch.Tensor) -> float:
            return float(values.mean()) if values.numel() else 0.0  # 0: none of that kind in the batch

        return loss, {"rewards/desirable": mean(rewards[desirable]), "rewards/undesirable": mean(rewards[~desirable]),
                      "kl": float(z0)}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0])  # the eval loss is a mean over examples

    # --- result

