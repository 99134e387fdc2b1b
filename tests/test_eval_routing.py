"""Routing metrics (PGR, APGR, CPT) against values worked out by hand, and `duma eval routing`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duma.cli import cli, load_plugin_commands
from duma.errors import DumaError
from duma.plugins.evaluation.routing import RoutingRecord, read_routing_records, routing_metrics

DATA = Path(__file__).parent / "data" / "eval"


def records(fast: list[float], slow: list[float], router: list[float]) -> list[RoutingRecord]:
    return [RoutingRecord(id=i, fast_score=f, slow_score=s, router_score=r)
            for i, (f, s, r) in enumerate(zip(fast, slow, router))]


# Four turns; the fast mind gets all wrong, the slow mind gets the first two right:
# gains d = slow - fast = [1, 1, 0, 0], sum 2, Q_fast = 0, Q_slow = 0.5, gap = 0.5.
FAST = [0.0, 0.0, 0.0, 0.0]
SLOW = [1.0, 1.0, 0.0, 0.0]


def test_perfect_router():
    # Routed by descending score: turns 0, 1, 2, 3. G(k) = 0, 1, 2, 2, 2 -> PGR 0, .5, 1, 1, 1.
    # APGR = 1/4 * [(0+.5)/2 + (.5+1)/2 + (1+1)/2 + (1+1)/2] = 1/4 * 3 = 0.75.
    report = routing_metrics(records(FAST, SLOW, [0.9, 0.8, 0.2, 0.1]))
    assert [p.pgr for p in report.curve] == pytest.approx([0, 0.5, 1, 1, 1])
    assert report.apgr == pytest.approx(0.75)
    assert report.cpt50 == pytest.approx(0.25) and report.cpt80 == pytest.approx(0.5)
    assert report.quality_fast_only == 0 and report.quality_slow_only == 0.5 and report.gap == 0.5


def test_constant_router_is_random_exactly():
    # One tie group of 4 with sum 2: G(k) = 2k/4, PGR(k/4) = k/4, APGR = 1/2 exactly.
    report = routing_metrics(records(FAST, SLOW, [0.3, 0.3, 0.3, 0.3]))
    assert [p.pgr for p in report.curve] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0], abs=1e-15)
    assert report.apgr == pytest.approx(0.5, abs=1e-15)
    assert report.cpt50 == 0.5 and report.cpt80 == 1.0  # PGR(0.75) = 0.75 < 0.8


def test_inverted_router():
    # Routed 3, 2, 1, 0: G(k) = 0, 0, 0, 1, 2 -> PGR 0, 0, 0, .5, 1.
    # APGR = 1/4 * [0 + 0 + .25 + .75] = 0.25 (= 1 - the perfect router's 0.75).
    report = routing_metrics(records(FAST, SLOW, [0.1, 0.2, 0.8, 0.9]))
    assert report.apgr == pytest.approx(0.25)
    assert report.cpt50 == pytest.approx(0.75) and report.cpt80 == pytest.approx(1.0)


def test_random_routing_averages_to_one_half_over_many_tie_patterns():
    # Random routers (constant score) on a skewed set: still 0.5, whatever the gains.
    report = routing_metrics(records([0.2, 0.9, 0.0, 0.4, 0.1], [1.0, 0.3, 0.7, 0.4, 0.9], [7.0] * 5))
    assert report.apgr == pytest.approx(0.5, abs=1e-12)


def test_no_gap_gives_none_and_a_problem():
    report = routing_metrics(records([1.0, 0.5], [0.5, 0.5], [0.9, 0.1]))
    assert report.gap < 0 and report.apgr is None and report.cpt50 is None and report.cpt80 is None
    assert "not better" in report.problem
    assert report.quality_fast_only == 0.75


# tests/data/eval/routing_small.jsonl, by hand (N = 5):
#   id  fast slow router  d=slow-fast  fast_lat slow_lat
#   a   0    1    0.9     1            1        4
#   b   0    0.5  0.8     0.5          1        3
#   c   0    1    0.5     1            2        5      } a tie: any order of c and d is as
#   d   0.5  0.5  0.5     0            1        3      } likely, each counts 1/2 at k = 3
#   e   1    0.5  0.2     -0.5         1        2
# Q_fast = 1.5/5 = 0.3, Q_slow = 3.5/5 = 0.7, gap = 0.4 (sum d = 2).
# G(k) = 0, 1, 1.5, 1.5 + (1+0)/2 = 2, 2.5, 2 -> PGR = G/2 = 0, .5, .75, 1, 1.25, 1.
# APGR = 1/5 * [.25 + .625 + .875 + 1.125 + 1.125] = 4/5 = 0.8
# (breaking the tie by file order instead would give 0.85).
# CPT50 = 1/5 = 0.2 (PGR .5 at k = 1); CPT80 = 3/5 = 0.6 (PGR 1 at k = 3).
# --slow-share 0.4: 2 of 5 turns; the 2nd highest score is 0.8, so a and b go slow:
# quality = (1 + .5 + 0 + .5 + 1)/5 = 0.6, PGR = (0.6 - 0.3)/0.4 = 0.75,
# latency = (4 + 3 + 2 + 1 + 1)/5 = 2.2; fast only (1+1+2+1+1)/5 = 1.2; slow only 17/5 = 3.4.
def test_hand_file_through_the_cli(tmp_path):
    load_plugin_commands()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["eval", "routing", str(DATA / "routing_small.jsonl"),
                                      "--slow-share", "0.4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n"] == 5
    assert data["quality_fast_only"] == pytest.approx(0.3) and data["quality_slow_only"] == pytest.approx(0.7)
    assert data["apgr"] == pytest.approx(0.8)
    assert data["cpt50"] == pytest.approx(0.2) and data["cpt80"] == pytest.approx(0.6)
    at = data["at_threshold"]
    assert at["threshold"] == 0.8 and at["slow_share"] == pytest.approx(0.4)
    assert at["quality"] == pytest.approx(0.6) and at["pgr"] == pytest.approx(0.75)
    assert at["mean_latency_s"] == pytest.approx(2.2)
    assert data["latency_fast_only_s"] == pytest.approx(1.2) and data["latency_slow_only_s"] == pytest.approx(3.4)
    full = json.loads((out / "routing.json").read_text())
    assert [p["pgr"] for p in full["curve"]] == pytest.approx([0, 0.5, 0.75, 1.0, 1.25, 1.0])
    assert (out / "routing.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_is_none_without_latencies(tmp_path):
    report = routing_metrics(records(FAST, SLOW, [0.9, 0.8, 0.2, 0.1]), slow_share=0.5)
    assert report.latency_fast_only_s is None and report.at_threshold.mean_latency_s is None
    assert report.at_threshold.slow_share == 0.5 and report.at_threshold.pgr == pytest.approx(1.0)


def test_bad_routing_file_is_one_line_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "fast_score": 0, "slow_score": 1, "router_score": 0.5}\n'
                   '{"id": 2, "fast_score": "high", "slow_score": 1, "router_score": 0.5}\n')
    with pytest.raises(DumaError, match=r"bad.jsonl:2: fast_score: .*\(each item needs an id and the finite numbers"):
        read_routing_records(bad)
    infinite = tmp_path / "infinite.jsonl"
    infinite.write_text('{"id": 1, "fast_score": 0, "slow_score": Infinity, "router_score": 0.5}\n')
    with pytest.raises(DumaError, match=r"infinite.jsonl:1: slow_score: .*finite"):
        read_routing_records(infinite)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DumaError, match="no records"):
        read_routing_records(empty)


def test_gap_warning_through_the_cli(tmp_path):
    load_plugin_commands()
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps({"id": i, "fast_score": 1, "slow_score": 1, "router_score": i}) + "\n"
                            for i in range(3)))
    result = CliRunner().invoke(cli, ["eval", "routing", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0
    assert "not better" in result.stderr
    assert json.loads(result.stdout)["apgr"] is None
    assert (tmp_path / "o" / "routing.png").exists()


def test_without_out_the_report_and_curve_go_to_the_default_folder_and_the_output_says_where(tmp_path, monkeypatch):
    load_plugin_commands()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["eval", "routing", str(DATA / "routing_small.jsonl"), "--slow-share", "0.4"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["apgr"] == pytest.approx(0.8)
    out = Path("eval-results") / "routing"
    assert result.stderr.strip() == f"wrote {out / 'routing.json'} and {out / 'routing.png'}"
    assert json.loads((tmp_path / out / "routing.json").read_text())["n"] == 5
    assert (tmp_path / out / "routing.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["routing.json", "routing.png"]  # no temp files


def test_the_readme_example_runs_on_the_shipped_sample(tmp_path):
    load_plugin_commands()
    repo = Path(__file__).parents[1]
    readme = (repo / "README.md").read_text(encoding="utf-8")
    example = "duma eval routing configs/examples/routers/routing.jsonl --slow-share 0.3"
    assert example in readme
    args = example.split()[1:] + ["--out", str(tmp_path / "o")]
    args[2] = str(repo / args[2])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and report["apgr"] > 0.5 and report["at_threshold"]["mean_latency_s"] is not None
    assert (tmp_path / "o" / "routing.png").is_file()
