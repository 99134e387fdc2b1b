"""Scores of a judged evaluation, as BELLE computes them, with bootstrap confidence intervals;
written as Markdown, JSON and a bar chart.

- per class: the mean judge score of the class's scored items;
- ``macro``: the mean of the class means (every class weighs the same);
- ``score_wo_others``: the same over classes other than math and code (BELLE's
  "Score_w/o_others").

Items whose judge reply could not be read, or whose judge failed, are left out of the means
and counted. Confidence intervals come from a seeded stratified bootstrap: items are
resampled with replacement within each class, the statistic recomputed, and the 2.5th and
97.5th percentiles reported (95%).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from duma.judge import NO_REFERENCE_PREFIX, UNPARSED_PREFIX
from duma.paths import write_atomically
from duma.plugins.evaluation.dataset import normalise_class

# The classes of BELLE's eval set; others are scored under their own name and listed.
KNOWN_CLASSES = ("open qa", "brainstorming", "rewrite", "generation", "math", "classification",
                 "closed qa", "summarization", "code", "extract", "translation")
OTHERS_LEFT_OUT = ("math", "code")


class ScoredItem(BaseModel):
    """What scoring needs of one judged item."""

    id: str
    klass: str
    score: float | None = None
    error: str | None = None


class Interval(BaseModel):
    low: float
    high: float


class ClassScore(BaseModel):
    klass: str
    n: int = Field(description="Items in the class.")
    n_scored: int = Field(description="Items with a judge score (the mean is over these).")
    n_unparsed: int = 0
    n_no_reference: int = Field(0, description="Items a rule judge cannot score (no std_answer).")
    n_failed: int = Field(0, description="Items whose answer or judge failed after retries.")
    mean: float | None = None
    ci95: Interval | None = None


class EvalReport(BaseModel):
    """The result of ``duma eval run`` (``report.json``)."""

    set: str | None = None
    model: str | None = None
    judge: str | None = None
    n: int
    n_scored: int
    n_unparsed: int
    n_no_reference: int = 0
    n_failed: int
    classes: list[ClassScore]
    macro: float | None = Field(None, description="Mean of the class means.")
    macro_ci95: Interval | None = None
    score_wo_others: float | None = Field(None, description="Macro mean without math and code.")
    score_wo_others_ci95: Interval | None = None
    unknown_classes: list[str] = Field(default_factory=list, description="Classes not in BELLE's set.")
    bootstrap: int = 0
    seed: int = 0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_items(items: Sequence[ScoredItem], *, bootstrap: int = 1000, seed: int = 0,
                set_name: str | None = None, model: str | None = None, judge: str | None = None) -> EvalReport:
    """Per-class means, macro average and score without math and code, with seeded
    bootstrap 95% intervals (``bootstrap=0`` skips them)."""
    import numpy as np

    by_class: dict[str, list[ScoredItem]] = {}
    for item in items:
        by_class.setdefault(normalise_class(item.klass), []).append(item)
    rng = np.random.default_rng(seed)
    classes: list[ClassScore] = []
    # Bootstrap replicates of each class mean (NaN where a class has no scored item).
    replicates: dict[str, np.ndarray] = {}
    for klass in sorted(by_class):
        group = by_class[klass]
        scores = np.array([i.score for i in group if i.score is not None], dtype=float)
        unparsed = sum(1 for i in group if i.score is None and (i.error or "").startswith(UNPARSED_PREFIX))
        no_reference = sum(1 for i in group if i.score is None and (i.error or "").startswith(NO_REFERENCE_PREFIX))
        ci = None
        if bootstrap and scores.size:
            picks = rng.integers(0, scores.size, size=(bootstrap, scores.size))
            replicates[klass] = scores[picks].mean(axis=1)
            low, high = np.percentile(replicates[klass], [2.5, 97.5])
            ci = Interval(low=float(low), high=float(high))
        classes.append(ClassScore(
            klass=klass, n=len(group), n_scored=int(scores.size), n_unparsed=unparsed,
            n_no_reference=no_reference, n_failed=len(group) - int(scores.size) - unparsed - no_reference,
            mean=float(scores.mean()) if scores.size else None, ci95=ci,
        ))

    def macro_of(names: list[str]) -> tuple[float | None, Interval | None]:
        means = [c.mean for c in classes if c.klass in names and c.mean is not None]
        value = _mean(means)  # type: ignore[arg-type]
        reps = [replicates[n] for n in names if n in replicates]
        if value is None or not reps:
            return value, None
        low, high = np.percentile(np.mean(reps, axis=0), [2.5, 97.5])
        return value, Interval(low=float(low), high=float(high))

    all_names = [c.klass for c in classes]
    macro, macro_ci = macro_of(all_names)
    wo, wo_ci = macro_of([n for n in all_names if n not in OTHERS_LEFT_OUT])
    n_scored = sum(c.n_scored for c in classes)
    return EvalReport(
        set=set_name, model=model, judge=judge, n=len(items), n_scored=n_scored,
        n_unparsed=sum(c.n_unparsed for c in classes), n_no_reference=sum(c.n_no_reference for c in classes),
        n_failed=sum(c.n_failed for c in classes),
        classes=classes, macro=macro, macro_ci95=macro_ci, score_wo_others=wo, score_wo_others_ci95=wo_ci,
        unknown_classes=[n for n in all_names if n not in KNOWN_CLASSES], bootstrap=bootstrap, seed=seed,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_ci(ci: Interval | None) -> str:
    return "-" if ci is None else f"{ci.low:.3f}-{ci.high:.3f}"


def render_markdown(report: EvalReport) -> str:
    lines = ["# duma eval report", ""]
    for label, value in (("set", report.set), ("model", report.model), ("judge", report.judge)):
        if value:
            lines.append(f"- {label}: `{value}`")
    lines += [
        f"- items: {report.n} (scored {report.n_scored}, judge reply unparsed {report.n_unparsed}, "
        f"no reference for the judge {report.n_no_reference}, failed {report.n_failed})",
        f"- **macro average: {_fmt(report.macro)}** (95% CI {_fmt_ci(report.macro_ci95)})",
        f"- score without math and code: {_fmt(report.score_wo_others)} (95% CI {_fmt_ci(report.score_wo_others_ci95)})",
        f"- bootstrap: {report.bootstrap} resamples, seed {report.seed}",
        "",
        "| class | n | scored | unparsed | no reference | failed | mean | 95% CI |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in report.classes:
        mark = " (unknown)" if c.klass in report.unknown_classes else ""
        lines.append(f"| {c.klass}{mark} | {c.n} | {c.n_scored} | {c.n_unparsed} | {c.n_no_reference} | {c.n_failed} | "
                     f"{_fmt(c.mean)} | {_fmt_ci(c.ci95)} |")
    if report.unknown_classes:
        lines += ["", "Classes not in BELLE's set (scored under their own name): "
                  + ", ".join(report.unknown_classes)]
    return "\n".join(lines) + "\n"


def plot_class_scores(report: EvalReport, path: str | Path) -> None:
    """A bar chart of the class means with their 95% intervals, and the macro average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.klass for c in report.classes]
    means = [c.mean if c.mean is not None else 0.0 for c in report.classes]
    lows = [max(0.0, m - c.ci95.low) if c.ci95 else 0.0 for m, c in zip(means, report.classes)]
    highs = [max(0.0, c.ci95.high - m) if c.ci95 else 0.0 for m, c in zip(means, report.classes)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=3, color="#4C72B0")
    if report.macro is not None:
        ax.axhline(report.macro, color="#C44E52", linestyle="--", label=f"macro {report.macro:.3f}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean judge score (0-1)")
    ax.set_title(f"duma eval: {report.model or 'model'} judged by {report.judge or 'judge'}")
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(str(tmp), dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``scores.png`` in ``out_dir``."""
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "scores.png"}
    text = json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    markdown = render_markdown(report)
    write_atomically(paths["json"], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_atomically(paths["markdown"], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    plot_class_scores(report, paths["chart"])
    return paths
