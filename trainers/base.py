"""The engine loop every trainer shares: data loading, batching (padding, length grouping or
packing), a deterministic sampler, the DeepSpeed engine, the lr schedule, eval loss,
atomic checkpoints with exact resume, the JSONL log, the loss curve, one progress bar per
phase (data, model, train, eval, save) and, unless asked, silence from DeepSpeed and
transformers (their own logs, prints and progress bars).

A trainer subclasses :class:`Trainer` and overrides what its method decides: the rows
(``build_samples``), how a micro-batch of rows becomes model inputs (``collate``), the loss and
extra per-step metrics (``compute_loss``), the model wrapping (``prepare_model``) and the result
(``save_final``); the run loop, checkpoints, logging and resume stay here. Heavy libraries are
imported inside functions so that importing this module (``duma --help``, config validation)
stays torch-free.

Data order: every epoch shuffles the rows with ``Random(seed + epoch)``; optimizer step ``k``
of an epoch consumes micro-batches ``k*A*W .. (k+1)*A*W`` of that order (``A`` = grad_accum,
``W`` = processes; process ``r`` takes every ``W``-th). A checkpoint stores the global step,
so a resumed run replays exactly the micro-batches that an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from duma import models
from duma.errors import DumaError
from duma.paths import write_atomically
from duma.rendering import IGNORE_INDEX
from duma.trainers.config import DataConfig, RunConfig

if TYPE_CHECKING:
    from duma.data import Record

LOG_FILE = "train_log.jsonl"
RUN_FILE = "duma_run.json"
CURVE_FILE = "loss.png"
CHECKPOINTS = "checkpoints"
LAUNCHED_ENV = "DUMA_TRAIN_LAUNCHED"  # set by ``duma train --nproc``: the parent did the checks
# Test hook: seconds to sleep after each optimizer step (lets a test kill a run mid-way).
STEP_SLEEP_ENV = "DUMA_TRAIN_STEP_SLEEP"
# Set by ``duma train --nproc``: when the launching process started (the run's elapsed time).
STARTED_AT_ENV = "DUMA_TRAIN_STARTED_AT"


@dataclass
class Sample:
    """One training row: token ids, labels (-100 = no loss) and the sample ids inside it."""

    input_ids: list[int]
    labels: list[int]
    ids: list[int]
    # Lengths of the samples packed into this row, in order ([] or one entry: a single
    # sequence); their positions restart and they do not attend to each other.
    segments: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


class Row(Protocol):
    """What the run loop needs of a training row: a :class:`Sample`, or a trainer's own
    kind (a DPO pair); the trainer's ``collate`` turns rows into model inputs."""

    ids: list[int]

    def __len__(self) -> int: ...


@dataclass
class TrainingDataCounts:
    """What became of the data: records read and skipped, rows built (logged and summarised)."""

    records: int = 0
    invalid: int = 0
    truncated: int = 0
    skipped_overlong: int = 0
    skipped_all_masked: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    rejects: Path | None = None  # where the skipped invalid records were written
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The counts as the training log and the run summary show them."""
        return {"records": self.records, "invalid_skipped": self.invalid, "truncated": self.truncated,
                "skipped_overlong": self.skipped_overlong, "skipped_all_masked": self.skipped_all_masked,
                "train_rows": self.train_rows, "eval_rows": self.eval_rows,
                **({"rejects": str(self.rejects)} if self.rejects else {}), **self.extra}


# ----------------------------------------------------------------------------- data reading

def read_records(data_cfg: DataConfig, counts: TrainingDataCounts | None = None, *,
                 rejects_path: Path | None = None) -> Iterator[Record]:
    """Records from the configured source and files, in file order, at most ``data.limit``;
    invalid records stop the run, or with ``data.skip_invalid`` are counted, skipped and
    written to ``rejects_path`` (if given)."""
    check_data_files(data_cfg)
    from duma.data import ReadStats, iter_records

    read_stats = ReadStats()
    records = iter_records(data_cfg.source, [Path(p) for p in data_cfg.files], skip_invalid=data_cfg.skip_invalid,
                           rejects_path=rejects_path, stats=read_stats)
    try:
        yield from itertools.islice(records, data_cfg.limit)
    finally:
        if counts is not None:
            counts.invalid = read_stats.invalid
            counts.rejects = read_stats.rejects_path


def check_data_files(data_cfg: DataConfig) -> None:
    for path in data_cfg.files:
        if not Path(path).is_file():
            raise DumaError(f"data file {path} does not exist",
                            "check data.files in the run config (a relative path is read from the current "
                            "folder, else from the config file's folder)")


def default_rejects_path(data_cfg: DataConfig) -> Path:
    """``data.rejects_path``, else ``<first data file>.rejects.jsonl`` beside it (as ``duma data``
    commands do): never the working folder."""
    from duma.paths import path_beside

    return data_cfg.rejects_path or path_beside(Path(data_cfg.files[0]), "rejects.jsonl")


# ----------------------------------------------------------------------------- models

def resolve_model_folder(ref: str) -> Path:
    """An HF model folder for ``tiny``, ``embedded`` or a folder path (the one switch point to
    ``duma.models``)."""
    if ref == "tiny":
        from duma.paths import duma_home
        from duma.testing import make_tiny_model

        target = duma_home() / "train" / "tiny-model"
        if not (target / "duma-tiny.json").is_file():
            tmp = target.with_name(f".tiny-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            make_tiny_model(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        return target
    from duma.models import resolve_model_path

    return resolve_model_path(ref)


def load_padded_tokenizer(folder: Path) -> Any:
    """duma's tokenizer loader, plus a pad token (training batches need one)."""
    from duma.models import load_tokenizer

    tok = load_tokenizer(str(folder))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(folder: Path, adapter: Path | None = None) -> Any:
    """duma's model loader, in float32 on the CPU (the DeepSpeed engine places it), with an
    optional adapter merged into the weights."""
    from duma.models import load_model

    return load_model(str(folder), device="cpu", dtype="float32",
                      adapter=str(adapter) if adapter else None, merge_adapter=adapter is not None)


# ----------------------------------------------------------------------------- batching

def pack_rows(samples: Sequence[Sample], max_length: int) -> list[Sample]:
    """Greedy first-fit packing of whole samples into rows of at most ``max_length`` tokens
    (in a fixed order, so every process packs the same rows)."""
    rows: list[Sample] = []
    free: list[int] = []
    for s in sorted(samples, key=len, reverse=True):
        for i, room in enumerate(free):
            if len(s) <= room:
                row = rows[i]
                row.input_ids += s.input_ids
                row.labels += s.labels
                row.ids += s.ids
                row.segments.append(len(s))
                free[i] -= len(s)
                break
        else:
            rows.append(Sample(list(s.input_ids), list(s.labels), list(s.ids), [len(s)]))
            free.append(max_length - len(s))
    return rows


def epoch_order(n_rows: int, lengths: Sequence[int], seed: int, epoch: int, micro_batch: int,
                group_by_length: bool) -> list[list[int]]:
    """The micro-batches (row indices) of one epoch: shuffled with ``seed + epoch``; with
    ``group_by_length`` rows of similar length share a batch (less padding)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n_rows))
    rng.shuffle(order)
    if group_by_length:
        mega = micro_batch * 32
        grouped: list[int] = []
        for start in range(0, len(order), mega):
            grouped += sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches = [grouped[i:i + micro_batch] for i in range(0, len(grouped), micro_batch)]
        rng.shuffle(batches)
        return batches
    return [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]


def collate(rows: Sequence[Sample], pad_id: int, isolate_packed: bool = True) -> dict[str, Any]:
    """Model inputs for a micro-batch, padded on the right.

    Rows that pack several samples get ``position_ids`` restarting at each sample and no 2D
    attention mask: transformers then builds a block-diagonal causal mask from the positions,
    so packed samples do not attend to each other (padding forms a segment of its own and
    has no labels). ``use_cache=False``: a training forward keeps no KV cache (and with one,
    transformers would not look for packed sequences).
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "use_cache": False}
    if isolate_packed and any(len(r.segments) > 1 for r in rows):
        positions = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            row = [p for n in (r.segments or [len(r)]) for p in range(n)]
            row += range(width - len(row))
            positions[i] = torch.tensor(row)
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = mask
    return batch


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warm-up, then cosine/linear decay to
    ``min_ratio`` (or constant)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return min_ratio + (1 - min_ratio) * (1 - progress)

    return f


# ----------------------------------------------------------------------------- distributed

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """One process by default: set the launcher's variables when nobody launched us, then
    bring up a gloo process group (CPU) through DeepSpeed. Returns (rank, world size)."""
    import torch

    models.name_accelerator()
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                               "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    else:
        # A later run in the same process reuses the group, but DeepSpeed's engine still
        # reads these (and an embedding application may have cleared them).
        for var, value in (("RANK", dist.get_rank()), ("WORLD_SIZE", dist.get_world_size()),
                           ("LOCAL_RANK", dist.get_rank())):
            os.environ.setdefault(var, str(value))
    return dist.get_rank(), dist.get_world_size()


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout and sampling on the GPU draw from these
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Base trainer: subclasses set ``name``/``config_class`` and override the hooks."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[RunConfig]] = RunConfig
    description: ClassVar[str] = ""
    repack: ClassVar[bool] = True  # training.packing packs samples into rows
    result_kind: ClassVar[str] = "model"  # what save_final writes (the run summary names it)

    def __init__(self, config: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = True) -> None:
        """``quiet``: keep DeepSpeed's and transformers' own output off the terminal."""
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.quiet = quiet
        self.started_at = float(os.environ.get(STARTED_AT_ENV) or time.time())
        self._data_bar = PhaseBar()
        self.out = Path(config.output_dir)
        self.data_counts = TrainingDataCounts()
        self.rank = 0
        self.world = 1
        self.tokenizer: Any = None
        self.model_folder: Path | None = None
        # ``model:`` may name a LoRA adapter folder (a shipped mind, a lora run): training then
        # starts from base + adapter, and ``base_model`` is that adapter's base reference.
        self.base_model = config.model
        self.start_adapter: Path | None = None
        self.train_rows: list[Row] = []
        self.eval_rows: list[Row] = []
        self.eval_metrics: dict[str, float] = {}  # the extra metrics of the last evaluate()

    # --- checks that run before any training (and before DeepSpeed starts)

    def check_output_dir(self) -> None:
        """Refuse an output folder that holds another run unless --overwrite/--resume."""
        run_file = self.out / RUN_FILE
        if self.out.exists() and not self.out.is_dir():
            raise DumaError(f"output_dir {self.out} is a file", "choose a folder for output_dir")
        occupied = self.out.is_dir() and any(self.out.iterdir())
        if not occupied:
            if self.resume:
                raise DumaError(f"nothing to resume in {self.out}", "run without --resume to start")
            return
        if self.overwrite:
            return
        if not run_file.is_file():
            raise DumaError(f"output_dir {self.out} is not empty and holds no duma run",
                            "choose another output_dir or pass --overwrite")
        previous = json.loads(run_file.read_text()).get("config_hash")
        if previous != self.config.config_hash():
            raise DumaError(f"output_dir {self.out} holds another run (config hash {previous}, "
                            f"this one {self.config.config_hash()})",
                            "choose another output_dir, or pass --overwrite to replace it")
        if not self.resume:
            raise DumaError(f"output_dir {self.out} already holds this run",
                            "pass --resume to continue it or --overwrite to start over")

    def prepare(self) -> None:
        """Everything that can fail on bad input: output folder, model folder, tokenizer,
        data. Runs before DeepSpeed initialises."""
        models.name_accelerator()
        launched = os.environ.get(LAUNCHED_ENV) == "1"
        if not launched:
            self.check_output_dir()
        check_data_files(self.config.data)
        # A launched worker reads the data again; the launching process showed its bar.
        bars = RunProgress(self.config.training.progress and not launched and _is_first_process())
        with quiet_libraries(self.quiet), bars.phase("data", unit="records") as bar:
            self.resolve_start()
            self._data_bar = bar
            try:
                self.tokenizer = self.load_tokenizer()
                samples = self.build_samples(self.tokenizer)
            finally:
                self._data_bar = PhaseBar()
            if not samples:
                files = ", ".join(str(f) for f in self.config.data.files)
                raise DumaError(f"no usable training samples in {files} (data.max_length "
                                f"{self.config.data.max_length})",
                                "check that the files hold records of data.source and that they fit data.max_length")
            self.train_rows, self.eval_rows = self.split_and_batch(samples)
            bar.finish(f"{len(self.train_rows)} train rows, {len(self.eval_rows)} eval rows")

    def resolve_start(self) -> None:
        """The base model folder, and the adapter to start from when ``model:`` names one."""
        from duma.models import split_adapter

        self.base_model, adapter = split_adapter(self.config.model)
        self.start_adapter = Path(adapter) if adapter else None
        self.model_folder = resolve_model_folder(self.base_model)

    def records(self) -> Iterator[Record]:
        """The run's records, counted (and shown on the data bar). With ``data.skip_invalid``
        the invalid ones go to :func:`default_rejects_path`, written by one process only."""
        d = self.config.data
        writes_rejects = d.skip_invalid and os.environ.get(LAUNCHED_ENV) != "1" and _is_first_process()
        rejects = default_rejects_path(d) if writes_rejects else None
        for record in read_records(d, self.data_counts, rejects_path=rejects):
            self.data_counts.records += 1
            self._data_bar.advance()
            yield record

    def load_tokenizer(self) -> Any:
        assert self.model_folder is not None
        return load_padded_tokenizer(self.model_folder)

    def conversation_samples(self, tokenizer: Any) -> list[Sample]:
        """Render conversations with the one renderer; apply the overlong rule; drop samples
        with no trained token."""
        from duma.data import Conversation
        from duma.rendering import render_training

        d = self.config.data
        out: list[Sample] = []
        for record in self.records():
            if not isinstance(record, Conversation):
                raise DumaError(f"data source '{d.source}' gives {type(record).__name__} records; "
                                f"method '{self.config.method}' trains on conversations",
                                "use a conversation source (belle, alpaca, sharegpt, duma-logs) or method pt")
            r = render_training(tokenizer, record.messages, max_length=None, last_turn_only=d.last_turn_only)
            fitted = self.fit_to_length((r.input_ids, r.labels))
            if fitted is not None:
                ((ids, labels),) = fitted
                out.append(Sample(ids, labels, [len(out)]))
        return out

    def fit_to_length(self, *sequences: tuple[list[int], list[int]]) -> list[tuple[list[int], list[int]]] | None:
        """Apply ``data.overlong`` to sequences that train together (one sample, or the two
        sides of a pair): ``None`` (counted once) when one is too long and the rule skips, or
        when one has no trained token left; else the (ids, labels), truncated if needed."""
        d = self.config.data
        if any(len(ids) > d.max_length for ids, _ in sequences):
            if d.overlong == "skip":
                self.data_counts.skipped_overlong += 1
                return None
            self.data_counts.truncated += 1
        fitted = [(ids[: d.max_length], labels[: d.max_length]) for ids, labels in sequences]
        # The label of position t is predicted from position t-1: a row whose only
        # trained token is its first one trains nothing.
        if any(not any(x != IGNORE_INDEX for x in labels[1:]) for _, labels in fitted):
            self.data_counts.skipped_all_masked += 1
            return None
        return fitted

    def build_samples(self, tokenizer: Any) -> list[Row]:
        """The training rows before the eval split (and packing): samples of conversations."""
        return self.conversation_samples(tokenizer)

    def split_and_batch(self, samples: list[Row]) -> tuple[list[Row], list[Row]]:
        """Hold out ``eval_ratio`` of the samples (seeded), then pack the training rows if
        asked."""
        t, d = self.config.training, self.config.data
        eval_rows: list[Sample] = []
        if d.eval_ratio > 0 and len(samples) > 1:
            order = list(range(len(samples)))
            random.Random(t.seed).shuffle(order)
            n_eval = max(1, round(len(samples) * d.eval_ratio))
            held = set(order[:n_eval])
            eval_rows = [s for i, s in enumerate(samples) if i in held]
            samples = [s for i, s in enumerate(samples) if i not in held]
        if t.packing and self.repack:
            samples = pack_rows(samples, d.max_length)  # type: ignore[arg-type]  # packing trainers build Samples
        self.data_counts.train_rows, self.data_counts.eval_rows = len(samples), len(eval_rows)
        return samples, eval_rows

    # --- model hooks

    def load_model(self) -> Any:
        """The starting weights; a starting adapter is merged in (the whole model trains)."""
        assert self.model_folder is not None
        return load_causal_lm(self.model_folder, adapter=self.start_adapter)

    def prepare_model(self, model: Any) -> Any:
        """Wrap or freeze the model before the engine is built (LoRA, embeddings only)."""
        return model

    def save_final(self, model: Any, folder: Path) -> None:
        """Write the result (rank 0 only, parameters gathered)."""
        model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))

    def on_engine_ready(self, engine: Any, bar: PhaseBar) -> None:
        """Called once the engine holds the starting weights, before a resumed run loads its
        checkpoint (every process calls it)."""

    # --- method hooks: batches and the loss

    def collate(self, rows: Sequence[Row], pad_id: int) -> dict[str, Any]:
        """Model inputs (and whatever ``compute_loss`` needs) for a micro-batch of rows."""
        return collate(rows, pad_id, self.config.training.isolate_packed)  # type: ignore[arg-type]

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        """The loss tensor of a micro-batch (to back-propagate) and extra metrics, which the
        step log record and eval records carry (averaged over micro-batches and processes)."""
        return engine(**batch).loss, {}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        """What a batch's loss counts for in the eval mean (0: skip the batch): its trained
        tokens, so eval loss is the token-weighted mean."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    # --- the run

    def steps_per_epoch(self) -> int:
        t = self.config.training
        per_step = t.batch_size * t.grad_accum * self.world
        n_batches = math.ceil(len(self.train_rows) / t.batch_size)
        steps = n_batches // (t.grad_accum * self.world)
        if steps < 1:
            raise DumaError(f"{len(self.train_rows)} training rows are fewer than one optimizer step needs "
                            f"({per_step} = batch_size x grad_accum x processes)",
                            "add data or lower training.batch_size / grad_accum")
        return steps

    def total_steps(self) -> int:
        t = self.config.training
        return t.max_steps if t.max_steps else t.epochs * self.steps_per_epoch()

    def deepspeed_config(self) -> dict[str, Any]:
        t = self.config.training
        zero: dict[str, Any] = {"stage": t.zero_stage}
        if t.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if t.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
        return {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,
            "train_batch_size": t.batch_size * t.grad_accum * self.world,
            "gradient_clipping": t.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": t.bf16},
            # We hand DeepSpeed a torch AdamW: no fused/CPU Adam to JIT-compile.
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def run(self) -> dict[str, Any]:
        """Prepare (if not yet), train, checkpoint, save; returns a summary (rank 0)."""
        if self.tokenizer is None:
            self.prepare()
        with quiet_libraries(self.quiet, deepspeed=True):
            return self._run()

    def _run(self) -> dict[str, Any]:
        with _stdout_silenced(self.quiet):  # DeepSpeed prints when it builds or loads its comm op
            self.rank, self.world = init_distributed()
        import deepspeed
        import torch
        import torch.distributed as dist

        t = self.config.training
        total = self.total_steps()
        spe = self.steps_per_epoch()
        if self.rank == 0:
            self.start_output_dir()
        dist.barrier()

        bars = RunProgress(self.rank == 0 and t.progress)
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        torch.manual_seed(t.seed)
        with bars.phase("model") as bar:
            bar.update(info="loading")
            model = self.prepare_model(self.load_model())
            if t.packing and t.isolate_packed and hasattr(model, "set_attn_implementation"):
                from duma.trainers.packed_attention import use_packed_attention

                use_packed_attention(model)  # packed samples computed apart, not under an L x L mask
            params = [p for p in model.parameters() if p.requires_grad]
            n_all = sum(p.numel() for p in model.parameters())
            n_trained = sum(p.numel() for p in params)
            optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
            warmup = math.ceil(t.warmup_ratio * total)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(t.schedule, warmup, total, t.min_lr_ratio))
            with _stdout_silenced(self.quiet):
                engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                       config=self.deepspeed_config())
            self.engine = engine  # kept for callers that inspect the trained model
            if self.world == 1 and t.zero_stage == 0:
                # One process, no ZeRO: nothing to all-reduce; skip DeepSpeed's flatten/copy of
                # every gradient per step (a few % of a small model's step on CPU).
                engine.enable_backward_allreduce = False
            self.on_engine_ready(engine, bar)
            start = self._maybe_resume(engine) if self.resume else 0
            bar.finish(f"{_millions(n_all)} params ({_millions(n_trained)} trained), ZeRO {t.zero_stage}")
        log = _Log(self.out / LOG_FILE, self.rank == 0)
        if self.rank == 0:
            log.truncate_after(start)
            log.write({"event": "resume" if start else "start", "step": start, "total_steps": total,
                       "world_size": self.world, "config_hash": self.config.config_hash(),
                       "data": self.data_counts.summary()})
        pad_id = self.tokenizer.pad_token_id
        sleep_s = float(os.environ.get(STEP_SLEEP_ENV, "0") or 0)
        lengths = [len(r) for r in self.train_rows]
        orders: dict[int, list[list[int]]] = {}
        eval_loss = None
        final_loss: float | None = None
        run_tokens, run_seconds = 0, 0.0
        engine.train()
        with bars.phase("train", total, completed=start, eta=True) as bar:
            for step in range(start, total):
                epoch, pos = divmod(step, spe)
                if epoch not in orders:
                    orders = {epoch: epoch_order(len(self.train_rows), lengths, t.seed, epoch,
                                                 t.batch_size, t.group_by_length)}
                batches = orders[epoch]
                n = t.grad_accum * self.world
                step_batches = batches[pos * n:(pos + 1) * n]
                lr = scheduler.get_last_lr()[0]
                began = time.perf_counter()
                loss_sum = torch.zeros(1)
                metric_sums: dict[str, float] = {}
                for a in range(t.grad_accum):
                    rows = [self.train_rows[i] for i in step_batches[a * self.world + self.rank]]
                    loss, metrics = self.compute_loss(engine, self.collate(rows, pad_id))
                    engine.backward(loss)
                    engine.step()
                    loss_sum += loss.detach().float()
                    for key, value in metrics.items():
                        metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
                rank_losses = [loss_sum.item() / t.grad_accum]
                if self.world > 1:  # every process's loss, so the log shows that all of them ran
                    gathered = [torch.zeros(1) for _ in range(self.world)]
                    dist.all_gather(gathered, loss_sum)
                    rank_losses = [g.item() / t.grad_accum for g in gathered]
                step_loss = sum(rank_losses) / self.world
                step_metrics = self._mean_over_processes(metric_sums, t.grad_accum)
                elapsed = time.perf_counter() - began
                all_rows = [self.train_rows[i] for b in step_batches for i in b]
                tokens = sum(len(r) for r in all_rows)
                run_tokens, run_seconds, final_loss = run_tokens + tokens, run_seconds + elapsed, step_loss
                done = step + 1
                if sleep_s:
                    time.sleep(sleep_s)
                if t.eval_every and done % t.eval_every == 0 and done != total:
                    eval_loss = self.evaluate(engine, pad_id)
                    log.write({"event": "eval", "step": done, "eval_loss": eval_loss, **self._eval_fields()})
                if done % t.log_every == 0 or done == total:
                    log.write({"event": "step", "step": done, "epoch": epoch, "loss": step_loss, "lr": lr,
                               "tokens": tokens, "tokens_per_s": tokens / max(elapsed, 1e-9),
                               "samples": sorted(i for r in all_rows for i in r.ids),
                               **({"rank_losses": rank_losses} if self.world > 1 else {}), **step_metrics})
                bar.update(done, f"loss {step_loss:.4f}  {tokens / max(elapsed, 1e-9):.0f} tok/s")
                if t.save_every and done % t.save_every == 0 and done != total:
                    self._save_checkpoint(engine, done, epoch)
        if not self.eval_rows:
            eval_loss = None
        else:
            n_batches = math.ceil(len(self.eval_rows) / t.batch_size)
            with bars.phase("eval", n_batches) as bar:
                eval_loss = self.evaluate(engine, pad_id, bar)
                bar.finish(f"loss {eval_loss:.4f}")
            log.write({"event": "eval", "step": total, "eval_loss": eval_loss, **self._eval_fields()})
        with bars.phase("save", 2 if start < total else 1) as bar:
            if start < total:
                bar.update(info="checkpoint")
                self._save_checkpoint(engine, total, (total - 1) // spe)
                bar.advance()
            bar.update(info=self.result_kind)
            self._save_result(engine)
            bar.advance()
            bar.finish(f"{self.result_kind} written")
        if final_loss is None and self.rank == 0:  # resumed at the end: nothing ran here
            final_loss = next((r["loss"] for r in reversed(read_log(self.out / LOG_FILE))
                               if r.get("event") == "step"), None)
        summary = {"method": self.name, "result": self.result_kind, "steps": total, "resumed_from": start,
                   "final_loss": final_loss, "eval_loss": eval_loss,
                   "tokens_per_s": round(run_tokens / run_seconds, 1) if run_seconds else None,
                   "elapsed_s": round(time.time() - self.started_at, 1), "output_dir": str(self.out),
                   "world_size": self.world, "data": self.data_counts.summary()}
        if self.rank == 0:
            log.write({"event": "end", **summary})
            plot_loss_curve(self.out / LOG_FILE, self.out / CURVE_FILE)
        dist.barrier()
        return summary

    def _mean_over_processes(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Per-step metrics: each process's sums over its ``count`` micro-batches, averaged
        over micro-batches and processes (every process reports the same keys)."""
        if not sums:
            return {}
        keys = sorted(sums)
        if self.world > 1:
            import torch
            import torch.distributed as dist

            values = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(values)
            return {k: float(v) / (count * self.world) for k, v in zip(keys, values.tolist())}
        return {k: sums[k] / count for k in keys}

    def _eval_fields(self) -> dict[str, float]:
        return {f"eval_{key}": value for key, value in self.eval_metrics.items()}

    def evaluate(self, engine: Any, pad_id: int, bar: PhaseBar | None = None) -> float:
        """Mean loss on the eval rows, each batch weighted by :meth:`loss_weight` (trained
        tokens by default); the extra metrics, weighted alike, go to ``eval_metrics``. Every
        process runs every batch (ZeRO-3 needs the same forward calls on all ranks)."""
        import torch

        engine.eval()
        total_loss, total_weight = 0.0, 0
        metric_sums: dict[str, float] = {}
        bs = self.config.training.batch_size
        with torch.no_grad():
            for i in range(0, len(self.eval_rows), bs):
                batch = self.collate(self.eval_rows[i:i + bs], pad_id)
                weight = self.loss_weight(batch)
                if weight:
                    loss, metrics = self.compute_loss(engine, batch)
                    total_loss += float(loss) * weight
                    total_weight += weight
                    for key, value in metrics.items():
                        metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * weight
                if bar is not None:
                    bar.advance()
        engine.train()
        self.eval_metrics = {key: value / max(total_weight, 1) for key, value in metric_sums.items()}
        return total_loss / max(total_weight, 1)

    def start_output_dir(self) -> None:
        if self.overwrite and not self.resume and os.environ.get(LAUNCHED_ENV) != "1" and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        run = {"config_hash": self.config.config_hash(), "trainer": self.name,
               "config": self.config.model_dump(mode="json")}
        write_atomically(self.out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(run, indent=2), encoding="utf-8"))

    # --- checkpoints

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder is complete once renamed)."""
        root = self.out / CHECKPOINTS
        if not root.is_dir():
            return []
        done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / "meta.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def _save_checkpoint(self, engine: Any, step: int, epoch: int) -> None:
        """All processes write into a temporary folder; rank 0 renames it when complete."""
        import torch
        import torch.distributed as dist

        root = self.out / CHECKPOINTS
        tmp = root / f".tmp-step-{step}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(tmp), tag="state", client_state={"step": step})
        torch.save(_rng_state(), tmp / f"rng-{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            meta = {"step": step, "epoch": epoch, "position": step - epoch * self.steps_per_epoch(),
                    "world_size": self.world, "config_hash": self.config.config_hash(), "time": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta))
            final = root / f"step-{step}"
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.config.training.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            if (self.out / LOG_FILE).exists():
                plot_loss_curve(self.out / LOG_FILE, self.out / CURVE_FILE)  # a curve to look at mid-run
        dist.barrier()

    def _maybe_resume(self, engine: Any) -> int:
        import torch

        found = self.checkpoints()
        if not found:
            return 0
        last = found[-1]
        meta = json.loads((last / "meta.json").read_text())
        if meta["world_size"] != self.world:
            raise DumaError(f"checkpoint {last} was written by {meta['world_size']} processes, this run has {self.world}",
                            "resume with the same --nproc")
        engine.load_checkpoint(str(last), tag="state")
        rng = last / f"rng-{self.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=False))
        return int(meta["step"])

    def _save_result(self, engine: Any) -> None:
        """Gather the parameters (ZeRO-3) and write the final model folder atomically."""
        import deepspeed
        import torch.distributed as dist

        model = engine.module
        ctx = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
               if self.config.training.zero_stage == 3 else contextlib.nullcontext())
        with ctx:
            if self.rank == 0:
                tmp = self.out / ".tmp-result"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                self.save_final(model, tmp)
                for item in tmp.iterdir():
                    target = self.out / item.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    os.replace(item, target)
                tmp.rmdir()
        dist.barrier()


class _Log:
    """The JSONL training log (rank 0 writes; every line flushed, so a killed run keeps it)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop the lines of steps after ``step``: a resumed run redoes them, so the log
        keeps each step exactly once."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if rec.get("event") in ("step", "eval") and rec.get("step", 0) > step:
                continue
            kept.append(line)
        write_atomically(self.path, lambda tmp: tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            fh.flush()


class PhaseBar:
    """The bar of one phase of a run; without a rich progress behind it, it does nothing."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, completed: int | None = None, info: str | None = None) -> None:
        if self._progress is not None:
            fields = {} if info is None else {"info": info}
            self._progress.update(self._task, **({"completed": completed} if completed is not None else {}),
                                  **fields)

    def finish(self, info: str | None = None) -> None:
        """Show the phase as complete (a phase of unknown length ends at what it counted)."""
        if self._progress is not None:
            task = self._progress.tasks[self._task]
            total = task.total if task.total is not None else max(task.completed, 1)
            self._progress.update(self._task, total=total, completed=total,
                                  **({"info": info} if info is not None else {}))


class RunProgress:
    """One progress bar per phase of a run, on stderr (stdout keeps the summary), rank 0 only;
    none with ``training.progress: false``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, *, completed: int = 0, unit: str = "",
              eta: bool = False) -> Iterator[PhaseBar]:
        """A bar for ``name``: ``total`` steps, or of unknown length (counting ``unit`` if
        given); ``eta`` adds the time remaining."""
        if not self.enabled:
            yield PhaseBar()
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Short info texts: a line fits 80 columns (rich squeezes the bar of a longer one).
        columns: list[Any] = [TextColumn(f"{name:<5}"), BarColumn(bar_width=20)]
        if total is not None:
            columns.append(TextColumn("{task.completed}/{task.total}"))
        elif unit:
            columns.append(TextColumn("{task.completed} " + unit))
        columns.append(TimeElapsedColumn())
        if eta:
            columns.append(TimeRemainingColumn())
        columns.append(TextColumn("{task.fields[info]}"))
        progress = Progress(*columns, console=Console(stderr=True), transient=False)
        task = progress.add_task(name, total=total, completed=completed, info="")
        progress.start()
        try:
            yield PhaseBar(progress, task)
        finally:
            progress.stop()


def _is_first_process() -> bool:
    """Rank 0, as the launcher set it (before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k"


@contextlib.contextmanager
def quiet_libraries(quiet: bool, *, deepspeed: bool = False) -> Iterator[None]:
    """Keep transformers' (and, with ``deepspeed``, DeepSpeed's) own logs and progress bars
    ("Writing model shards") off the terminal for a while, and the deprecation warnings the
    libraries raise about each other; the run shows its own progress. ``deepspeed`` imports
    it: only where the run needs it anyway."""
    if not quiet:
        yield
        return
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logger, ds_level = None, logging.NOTSET
    if deepspeed:
        models.name_accelerator()
        from deepspeed.utils import logger as ds_logger

        ds_level = ds_logger.level
        ds_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if ds_logger is not None:
            ds_logger.setLevel(ds_level)


@contextlib.contextmanager
def _stdout_silenced(quiet: bool) -> Iterator[None]:
    """Drop what is printed to stdout meanwhile: DeepSpeed prints (not logs) when it loads an
    op, and a first build runs the compiler on file descriptor 1."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1: only Python's stdout to redirect
        saved = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    if saved is not None:
        os.dup2(devnull, 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        os.close(devnull)


def read_log(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Train (and eval) loss against step, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    steps = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("event") == "eval"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot(*zip(*steps), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
