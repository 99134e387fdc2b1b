"""Training throughput: ``duma train sft`` against a plain PyTorch loop and TRL's SFTTrainer on
the same model, data, batch and sequence length, in one process; and effective tokens/s
(non-padding tokens) with packing against padded batches on variable-length conversations.
The data is BELLE's eval set (1,000 questions with reference answers, 9 to 1,708 characters:
a realistic spread of lengths) read from ``../shared/data/belle``, else the tiny example file.

    .venv/bin/python bench/train_throughput.py [--model tiny|embedded|FOLDER] [--steps 30] [--data FILE]

Then DPO: duma's dpo trainer against TRL's DPOTrainer (TRL is a bench-only install, never a
duma dependency) on the same tiny model, pairs and batch.

Prints one JSON object. Goals: duma >= 0.95 of the plain loop; packing >= 1.5x padding; DPO
duma >= TRL.
Times exclude start-up: the sum of the per-step times after ``--warmup-steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
BELLE_EVAL = REPO.parent / "shared" / "data" / "belle" / "eval_set.json"


def realistic_data(work: Path) -> Path:
    """BELLE's eval set as belle conversations (question -> reference answer), or the tiny
    example file when the shared data is not beside the repository."""
    if not BELLE_EVAL.exists():
        return TINY_DATA
    out = work / "belle_eval_conversations.jsonl"
    with open(BELLE_EVAL, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(line for line in src if line.strip()):
            item = json.loads(line)
            if not (item["question"].strip() and item["std_answer"].strip()):
                continue  # a few items have no reference answer
            dst.write(json.dumps({"id": i, "conversations": [{"from": "human", "value": item["question"]},
                                                             {"from": "assistant", "value": item["std_answer"]}]},
                                 ensure_ascii=False) + "\n")
    return out


def model_folder(ref: str, work: Path, hidden: int, layers: int) -> Path:
    if ref == "tiny":
        from duma.testing import make_tiny_model

        return make_tiny_model(work / "bench-model", hidden=hidden, layers=layers)
    from duma.trainers.base import resolve_model_folder

    return resolve_model_folder(ref)


def run_config(folder: Path, out: Path, args: argparse.Namespace, packing: bool) -> dict:
    return {
        "method": "sft", "model": str(folder), "output_dir": str(out),
        "data": {"source": "belle", "files": [str(args.data)], "max_length": args.max_length},
        "training": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": 1e-4, "warmup_ratio": 0.0,
                     "schedule": "constant", "zero_stage": args.zero_stage, "packing": packing,
                     "isolate_packed": not args.shared_attention,
                     "progress": False, "seed": 0},
    }


def rate(tokens: list[int], seconds: list[float], skip: int) -> float:
    return sum(tokens[skip:]) / sum(seconds[skip:])


def bench_duma(cfg: dict, skip: int) -> tuple[float, object, list[float]]:
    """tokens/s of the engine loop, from the run's own JSONL log (and the step times)."""
    from duma.trainers import runner
    from duma.trainers.base import read_log

    trainer = runner.build_trainer(data=cfg)
    trainer.prepare()
    trainer.run()
    steps = [r for r in read_log(Path(cfg["output_dir"]) / "train_log.jsonl") if r["event"] == "step"]
    tokens = [r["tokens"] for r in steps]
    seconds = [r["tokens"] / r["tokens_per_s"] for r in steps]
    return rate(tokens, seconds, skip), trainer, seconds


def bench_plain(trainer, folder: Path, args: argparse.Namespace) -> tuple[float, list[float]]:
    """The same batches in a plain PyTorch loop: forward, backward, clip, AdamW step."""
    import torch

    from duma.trainers.base import collate, epoch_order, load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(folder)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = trainer.train_rows
    batches = epoch_order(len(rows), [len(r) for r in rows], 0, 0, args.batch_size, False)
    pad = trainer.tokenizer.pad_token_id
    tokens, seconds = [], []
    for step in range(args.steps):
        picked = [rows[i] for i in batches[step % len(batches)]]
        began = time.perf_counter()
        loss = model(**collate(picked, pad)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - began)
        tokens.append(sum(len(r) for r in picked))
    return rate(tokens, seconds, args.warmup_steps), seconds


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def bench_trl(trainer, folder: Path, args: argparse.Namespace, work: Path) -> tuple[float | None, str | None]:
    """TRL's SFTTrainer on the same pre-tokenized rows (padding to the longest in a batch)."""
    try:  # TRL and datasets are not duma dependencies: without them the comparison is left out
        import trl
        from datasets import Dataset
    except ImportError as exc:
        return None, f"trl not installed ({exc})"
    from transformers import TrainerCallback

    from duma.trainers.base import load_causal_lm

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.began = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.began)

    ds = Dataset.from_dict({"input_ids": [r.input_ids for r in trainer.train_rows]})
    cfg = trl.SFTConfig(output_dir=str(work / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                        learning_rate=1e-4, lr_scheduler_type="constant", max_length=args.max_length,
                        packing=False, padding_free=False, report_to=[], save_strategy="no", logging_steps=10**6,
                        use_cpu=True, dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
                        seed=0, disable_tqdm=True,
                        # Like the other two: fp32, no activation checkpointing (TRL's defaults
                        # turn on bf16 autocast and checkpointing, both slow on CPU).
                        bf16=False, fp16=False, gradient_checkpointing=False)
    t = trl.SFTTrainer(model=load_causal_lm(folder), args=cfg, train_dataset=ds,
                       processing_class=trainer.tokenizer, callbacks=[StepTimer()])
    t.train()
    tokens = t.state.num_input_tokens_seen
    # Tokens per step are not logged per step: spread them evenly (same batch size each step).
    per_step = tokens / len(times)
    return per_step * (len(times) - args.warmup_steps) / sum(times[args.warmup_steps:]), None


PREFERENCE_DATA = REPO / "configs" / "examples" / "data" / "preference_tiny.jsonl"


def bench_dpo(folder: Path, args: argparse.Namespace, work: Path) -> dict:
    """duma's dpo trainer against TRL's DPOTrainer: same model, preference pairs, batch, beta and
    sigmoid loss, reference log-probs computed before training in both (not timed); the figure
    is pairs per second over the steps after the warm-up, median step time, alternating rounds."""
    from duma.data import iter_records

    records = [r for r in iter_records("preference", [PREFERENCE_DATA])]
    steps = args.dpo_steps
    duma_times: list[float] = []
    trl_times: list[float] = []
    note = None
    for r in range(args.repeats):
        cfg = {"method": "dpo", "model": str(folder), "output_dir": str(work / f"dpo{r}"),
               "data": {"source": "preference", "files": [str(PREFERENCE_DATA)], "max_length": args.max_length},
               "dpo": {"beta": 0.1, "loss_type": "sigmoid"},
               "training": {"max_steps": steps, "batch_size": args.batch_size, "lr": 1e-5, "warmup_ratio": 0.0,
                            "schedule": "constant", "progress": False, "seed": 0}}
        _, _, seconds = bench_duma(cfg, 0)
        duma_times += seconds[args.warmup_steps:]
        try:
            trl_times += trl_dpo_step_times(folder, records, args, work / f"trl-dpo{r}", steps)
        except ImportError as exc:
            note = f"trl not installed ({exc})"
            break
    duma_step = median(duma_times)
    out = {"steps": steps, "pairs_per_step": args.batch_size, "duma_pairs_per_s": round(args.batch_size / duma_step, 2)}
    if trl_times:
        trl_step = median(trl_times)
        out |= {"trl_pairs_per_s": round(args.batch_size / trl_step, 2), "duma_vs_trl": round(trl_step / duma_step, 3)}
    else:
        out["trl_note"] = note
    return out


def trl_dpo_step_times(folder: Path, records: list, args: argparse.Namespace, out: Path, steps: int) -> list[float]:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from duma.trainers.base import load_causal_lm

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.began = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.began)

    ds = Dataset.from_list([{"prompt": [m.model_dump() for m in rec.messages],
                             "chosen": [{"role": "assistant", "content": rec.chosen}],
                             "rejected": [{"role": "assistant", "content": rec.rejected}]} for rec in records])
    cfg = trl.DPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=args.batch_size,
                        learning_rate=1e-5, lr_scheduler_type="constant", beta=0.1, loss_type="sigmoid",
                        max_length=args.max_length, precompute_ref_log_probs=True, report_to=[],
                        save_strategy="no", logging_steps=10**6, use_cpu=True, dataloader_num_workers=0, seed=0,
                        disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False)
    trainer = trl.DPOTrainer(model=load_causal_lm(folder), args=cfg, train_dataset=ds,
                             processing_class=AutoTokenizer.from_pretrained(folder), callbacks=[StepTimer()])
    trainer.train()
    return times[args.warmup_steps:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny (random, --hidden/--layers), embedded or a folder")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--data", type=Path, default=None, help="belle JSONL (default: BELLE's eval set)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="rounds per contender; the best counts")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--dpo-steps", type=int, default=12, help="steps of each DPO run (0: no DPO comparison)")
    p.add_argument("--shared-attention", action="store_true",
                   help="packed samples attend to each other (training.isolate_packed false)")
    args = p.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions"))
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("DUMA_HOME", str(work / "home"))
        folder = model_folder(args.model, work, args.hidden, args.layers)
        args.data = args.data or realistic_data(work)
        # Other processes share the CPU: alternate the contenders and keep each one's best round.
        padded = plain = packed = 0.0
        ratios: list[float] = []
        trainer = None
        for r in range(args.repeats):
            if r % 2 and trainer is not None:  # odd rounds run the plain loop first (order effects)
                rate_plain, plain_s = bench_plain(trainer, folder, args)
            rate_pad, trainer, duma_s = bench_duma(run_config(folder, work / f"pad{r}", args, packing=False),
                                                   args.warmup_steps)
            if not r % 2:
                rate_plain, plain_s = bench_plain(trainer, folder, args)
            rate_pack, _, _ = bench_duma(run_config(folder, work / f"pack{r}", args, packing=True), args.warmup_steps)
            padded, plain, packed = max(padded, rate_pad), max(plain, rate_plain), max(packed, rate_pack)
            ratios += [p / d for p, d in zip(plain_s[args.warmup_steps:], duma_s[args.warmup_steps:])]
        trl_rate, trl_note = (None, "skipped (--skip-trl)") if args.skip_trl else bench_trl(trainer, folder, args, work)
        dpo = bench_dpo(folder, args, work) if args.dpo_steps and not args.skip_trl else None
        result = {
            "model": args.model if args.model != "tiny" else f"tiny random llama (hidden {args.hidden}, {args.layers} layers)",
            "parameters": sum(p.numel() for p in trainer.engine.module.parameters()),
            "data": str(args.data if args.data.parent != work else BELLE_EVAL),
            "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "zero_stage": args.zero_stage, "torch_threads": torch.get_num_threads(),
            "duma_tokens_per_s": round(padded, 1),
            "plain_loop_tokens_per_s": round(plain, 1),
            "duma_vs_plain": round(padded / plain, 3),
            # The two runs take the same batches in the same order: the median of the per-step
            # time ratios is robust to bursts of load from other processes.
            "duma_vs_plain_median_step": round(median(ratios), 3),
            "repeats": args.repeats, "load_average": os.getloadavg()[0],
            "trl_tokens_per_s": None if trl_rate is None else round(trl_rate, 1),
            "duma_vs_trl": None if trl_rate is None else round(padded / trl_rate, 3),
            "trl_note": trl_note,
            "effective_tokens_per_s_padding": round(padded, 1),
            "effective_tokens_per_s_packing": round(packed, 1),
            "packing_vs_padding": round(packed / padded, 3),
            "dpo": dpo,
            "goals": {"duma_vs_plain": ">= 0.95", "packing_vs_padding": ">= 1.5", "dpo duma_vs_trl": ">= 1.0"},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
