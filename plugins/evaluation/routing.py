"""Routing metrics (RouteLLM's PGR, APGR and CPT) for fast/slow routing.

Input: one record per turn, ``{"id", "fast_score", "slow_score", "router_score"}`` and
optionally ``fast_latency_s`` and ``slow_latency_s``: the quality (0-1) of the fast mind's
answer and of the slow mind's answer to that turn, and the router's score (higher = send to
the slow mind).

Definitions (N turns, f_i and s_i the fast and slow quality of turn i):

- ``Q_fast`` = mean f_i, ``Q_slow`` = mean s_i, ``gap`` = Q_slow - Q_fast.
- Route the top k turns by descending ``router_score`` to the slow mind, k = 0..N, share =
  k/N. ``Q(share)`` = (sum of s_i over routed turns + sum of f_i over the others) / N.
- ``PGR(share)`` = (Q(share) - Q_fast) / gap, so PGR(0) = 0 and PGR(1) = 1.
- Ties: turns with equal router scores cannot be ordered, so when k cuts through a tie group
  of m turns taking j of them, Q counts each of the group's turns as routed with weight j/m
  (the exact expectation over the orders within the group). A constant router is therefore
  exactly the random router: PGR(k/N) = k/N.
- ``APGR`` = the trapezoidal area under PGR over share in [0, 1] at the points k/N. Random
  routing scores 0.5, a perfect router more, an inverted one less.
- ``CPT(x)`` = the smallest share k/N whose PGR reaches x (``cpt50``: x = 0.5, ``cpt80``:
  x = 0.8).
- With ``gap <= 0`` the slow mind is no better than the fast one: PGR is undefined and
  ``apgr``/``cpt50``/``cpt80`` are None, with ``problem`` saying why.

At a calibrated threshold (``slow_share``, RouteLLM's calibration: the threshold is the
score quantile that sends that share of these turns to the slow mind, as ``duma router
calibrate`` does), the report gives the share reached, the quality and, when every record
has both latencies, the mean latency (slow latency for routed turns, fast for the others).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from duma.data import read_validated
from duma.errors import DumaError
from duma.paths import write_atomically


class RoutingRecord(BaseModel):
    """One turn of a routing file."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    id: str | int
    fast_score: float
    slow_score: float
    router_score: float
    fast_latency_s: float | None = Field(None, ge=0)
    slow_latency_s: float | None = Field(None, ge=0)


class CurvePoint(BaseModel):
    share: float
    pgr: float | None = Field(None, description="None when the gap is <= 0.")
    quality: float


class AtThreshold(BaseModel):
    slow_share_target: float
    threshold: float
    slow_share: float = Field(description="Share of turns at or above the threshold.")
    quality: float
    pgr: float | None = None
    mean_latency_s: float | None = None


class RoutingReport(BaseModel):
    """What ``duma eval routing`` writes."""

    n: int
    quality_fast_only: float
    quality_slow_only: float
    gap: float
    apgr: float | None = None
    cpt50: float | None = None
    cpt80: float | None = None
    problem: str | None = Field(None, description="Why PGR metrics are None (gap <= 0).")
    latency_fast_only_s: float | None = None
    latency_slow_only_s: float | None = None
    at_threshold: AtThreshold | None = None
    curve: list[CurvePoint] = Field(default_factory=list)


def read_routing_records(path: str | Path) -> list[RoutingRecord]:
    """Records of a routing file (JSONL, a JSON list or Parquet); errors name ``file:line``
    and the field."""
    hint = "each item needs an id and the finite numbers fast_score, slow_score and router_score"
    records = [record for _, record in read_validated(path, RoutingRecord, hint=hint)]
    if not records:
        raise DumaError(f"routing file {path} has no records",
                        "write one {\"id\", \"fast_score\", \"slow_score\", \"router_score\"} object per line")
    return records


def routed_gains(records: Sequence[RoutingRecord]) -> list[float]:
    """``G(k)`` for k = 0..N: the expected sum of (slow - fast) quality over the k turns with
    the highest router scores, ties averaged within their group (see the module docstring)."""
    groups: dict[float, list[float]] = {}
    for r in records:
        groups.setdefault(float(r.router_score), []).append(r.slow_score - r.fast_score)
    gains = [0.0]
    total = 0.0
    for score in sorted(groups, reverse=True):
        diffs = groups[score]
        group_sum = math.fsum(diffs)
        m = len(diffs)
        for j in range(1, m + 1):
            gains.append(total + group_sum * j / m)
        total += group_sum
    return gains


def pgr_curve(records: Sequence[RoutingRecord]) -> tuple[list[float], list[float], list[float]]:
    """``(shares, qualities, pgrs)`` at k = 0..N; ``pgrs`` is empty when the gap is <= 0."""
    n = len(records)
    q_fast = math.fsum(r.fast_score for r in records) / n
    gains = routed_gains(records)
    total = gains[-1]
    shares = [k / n for k in range(n + 1)]
    qualities = [q_fast + g / n for g in gains]
    pgrs = [g / total for g in gains] if total > 0 else []
    return shares, qualities, pgrs


def trapezoid_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    return math.fsum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def cost_to_reach(shares: Sequence[float], pgrs: Sequence[float], target: float) -> float:
    """The smallest share whose PGR reaches ``target`` (a float tolerance of 1e-12)."""
    for share, pgr in zip(shares, pgrs):
        if pgr >= target - 1e-12:
            return share
    return 1.0


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def routing_metrics(records: Sequence[RoutingRecord], slow_share: float | None = 0.5) -> RoutingReport:
    """Every metric of the module docstring for these turns."""
    if not records:
        raise DumaError("no routing records to score", "give at least one turn")
    n = len(records)
    q_fast = _mean([r.fast_score for r in records])
    q_slow = _mean([r.slow_score for r in records])
    gap = q_slow - q_fast
    shares, qualities, pgrs = pgr_curve(records)
    report = RoutingReport(n=n, quality_fast_only=q_fast, quality_slow_only=q_slow, gap=gap)
    if pgrs:
        report.apgr = trapezoid_area(shares, pgrs)
        report.cpt50 = cost_to_reach(shares, pgrs, 0.5)
        report.cpt80 = cost_to_reach(shares, pgrs, 0.8)
    else:
        report.problem = (f"the slow mind is not better than the fast one (gap {gap:.4f} <= 0): "
                          "PGR, APGR and CPT are undefined")
    report.curve = [CurvePoint(share=s, pgr=pgrs[k] if pgrs else None, quality=q)
                    for k, (s, q) in enumerate(zip(shares, qualities))]
    has_latency = all(r.fast_latency_s is not None and r.slow_latency_s is not None for r in records)
    if has_latency:
        report.latency_fast_only_s = _mean([r.fast_latency_s for r in records])  # type: ignore[misc]
        report.latency_slow_only_s = _mean([r.slow_latency_s for r in records])  # type: ignore[misc]
    if slow_share is not None:
        report.at_threshold = _at_threshold(records, slow_share, q_fast, gap, has_latency)
    return report


def _at_threshold(records: Sequence[RoutingRecord], slow_share: float, q_fast: float, gap: float,
                  has_latency: bool) -> AtThreshold:
    from duma.plugins.builtin_routers import calibrate_threshold

    threshold = calibrate_threshold([r.router_score for r in records], slow_share)
    slow = [r.router_score >= threshold for r in records]
    quality = _mean([r.slow_score if s else r.fast_score for r, s in zip(records, slow)])
    result = AtThreshold(slow_share_target=slow_share, threshold=threshold, slow_share=sum(slow) / len(records),
                         quality=quality, pgr=(quality - q_fast) / gap if gap > 0 else None)
    if has_latency:
        result.mean_latency_s = _mean([r.slow_latency_s if s else r.fast_latency_s  # type: ignore[misc]
                                       for r, s in zip(records, slow)])
    return result


def plot_pgr_curve(report: RoutingReport, path: str | Path, title: str = "") -> None:
    """PGR against the share of turns sent to the slow mind, with random routing beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    shares = [p.share for p in report.curve]
    if report.problem is None:
        label = f"router (APGR {report.apgr:.3f})" if report.apgr is not None else "router"
        ax.plot(shares, [p.pgr for p in report.curve], marker="o", markersize=3, label=label)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random (APGR 0.500)")
        for name, value in (("CPT50", report.cpt50), ("CPT80", report.cpt80)):
            if value is not None:
                ax.axvline(value, linestyle=":", color="#C44E52", alpha=0.6)
                ax.annotate(f"{name} {value:.2f}", (value, 0.02), rotation=90, fontsize=8)
        ax.set_ylabel("PGR (share of the quality gap recovered)")
    else:
        ax.plot(shares, [p.quality for p in report.curve], marker="o", markersize=3, label="router")
        ax.plot([0, 1], [report.quality_fast_only, report.quality_slow_only], linestyle="--", color="grey",
                label="random")
        ax.set_ylabel("quality")
        ax.text(0.02, 0.95, "gap <= 0: PGR undefined", transform=ax.transAxes, fontsize=8, va="top")
    ax.set_xlabel("share of turns sent to the slow mind")
    ax.set_xlim(0, 1)
    ax.set_title(title or f"routing: {report.n} turns")
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(str(tmp), dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_routing_report(report: RoutingReport, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``routing.json`` (the report with its curve) and ``routing.png`` in ``out_dir``."""
    out = Path(out_dir)
    text = json.dumps(report.model_dump(mode="json"), indent=2) + "\n"
    paths = {"json": out / "routing.json", "chart": out / "routing.png"}
    write_atomically(paths["json"], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    plot_pgr_curve(report, paths["chart"], title=title)
    return paths
