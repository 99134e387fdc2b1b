"""The built-in routers, the classifier's training and RouteLLM-style calibration."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duma import host
from duma.errors import ConfigError, DumaError
from duma.routing import RouteInput, Router

SLOW_TEMPLATES = [
    "What is {a}% of {b}?", "Calculate {a} * {b}", "How many days between 2024-0{m}-1{d} and 2024-1{m}-0{d}?",
    "Convert {a} km to miles", "what day of the week is 2025-0{m}-1{d}", "what's {a} plus {b} divided by {c}",
    "How much is {a} euros times {c}?", "Can you compute the average of {a}, {b} and {c}?",
    "If I save {a} a month, how much will I have after {c} months?", "convert {a} fahrenheit to celsius please",
]
FAST_TEMPLATES = [
    "Hello, how are you?", "Thanks a lot!", "Tell me a joke about {w}", "Good morning", "What's your name?",
    "I love {w}", "Can you write a short poem about {w}?", "Bye, see you later", "That's great, thank you",
    "Who are you?", "Say something nice about {w}", "What do you think about {w}?",
]
WORDS = ["cats", "the sea", "autumn", "coffee", "music", "trains", "mountains", "friendship"]


def synthetic_turns(n: int, seed: int) -> list[dict]:
    """Labelled turns: arithmetic/date/conversion questions are slow, small talk is fast."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        slow = i % 2 == 0
        template = rng.choice(SLOW_TEMPLATES if slow else FAST_TEMPLATES)
        text = template.format(a=rng.randint(2, 999), b=rng.randint(100, 9999), c=rng.randint(2, 30),
                               m=rng.randint(1, 9), d=rng.randint(0, 9), w=rng.choice(WORDS))
        rows.append({"text": text, "slow": slow} if i % 3 else {"text": text, "label": int(slow)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make(name: str, options: dict | None = None) -> Router:
    return host.get("router", name)(options or {})


def test_all_builtin_routers_are_registered():
    registered = host.components("router")
    for name in ("duma", "always-fast", "always-slow", "rules", "classifier"):
        assert registered[name].plugin == "routers"
        assert issubclass(registered[name].obj, Router)


def test_duma_router_defers_to_the_fast_mind():
    router = make("duma", {"threshold": 0.9, "whatever": 1})  # options of other routers are ignored
    assert router.defers_to_fast_mind
    assert router.route(RouteInput(text="What is 2+2?")).model_dump() == {"slow": None, "score": None}
    with pytest.raises(DumaError, match="has no score"):
        router.score(RouteInput(text="What is 2+2?"))


def test_constant_routers():
    fast, slow = make("always-fast"), make("always-slow")
    assert not fast.defers_to_fast_mind and not slow.defers_to_fast_mind
    assert fast.route(RouteInput(text="What is 17% of 2,340?")).model_dump() == {"slow": False, "score": 0.0}
    assert slow.route(RouteInput(text="hello")).model_dump() == {"slow": True, "score": 1.0}


@pytest.mark.parametrize(
    "text, slow",
    [
        ("What is 17% of 2,340?", True),
        ("calculate 12 * 7", True),
        ("How many days until 2025-01-01?", True),
        ("what day of the week is March 3, 2025?", True),
        ("convert 5 km to miles", True),
        ("Please compute the square root of 2", True),
        ("3 + 4", True),
        ("30天后是几号？", True),
        ("帮我计算一下", True),
        ("Hello! How are you today?", False),
        ("Tell me a story about a dragon.", False),
        ("Thanks, that was helpful.", False),
        ("你好", False),
    ],
)
def test_rules_router_defaults(text, slow):
    decision = make("rules").route(RouteInput(text=text))
    assert decision.slow is slow
    assert decision.score == (1.0 if slow else 0.0)


def test_rules_router_configured_rules_replace_the_defaults():
    router = make("rules", {"patterns": [r"\border\s+#?\d+"], "keywords": ["refund", "Warranty"]})
    assert router.route(RouteInput(text="Where is ORDER 1234?")).slow is True
    assert router.route(RouteInput(text="how do I get a REFUND")).slow is True
    assert router.route(RouteInput(text="is my warranty still valid?")).slow is True
    assert router.route(RouteInput(text="refunded")).slow is False  # keywords are whole words
    assert router.route(RouteInput(text="What is 17% of 2,340?")).slow is False  # defaults replaced
    with_defaults = make("rules", {"keywords": ["refund"], "include_defaults": True})
    assert with_defaults.route(RouteInput(text="What is 17% of 2,340?")).slow is True


def test_rules_router_reports_bad_options():
    with pytest.raises(ConfigError, match=r"agent\.router_options\.patterns\[1\]: invalid regular expression"):
        make("rules", {"patterns": ["ok", "(unclosed"]})
    with pytest.raises(ConfigError, match=r"agent\.router_options\.pattern: unknown key"):
        make("rules", {"pattern": ["x"]})
    with pytest.raises(ConfigError, match=r"agent\.router_options\.threshold: must be a number") as caught:
        make("rules", {"threshold": "high"})
    assert "\n" not in str(caught.value) and "include_defaults, keywords, patterns, threshold" in caught.value.hint


def test_classifier_trains_and_beats_chance_on_held_out(tmp_path):
    from duma.plugins.builtin_routers import LabelledTurn, TextClassifier, train_classifier

    train = [LabelledTurn.model_validate(r) for r in synthetic_turns(240, seed=1)]
    report = train_classifier(train, tmp_path / "model.npz", holdout=0.25, n_features=2**16)
    assert report.n == 240 and report.n_heldout == 60
    assert report.train_accuracy >= 0.95
    assert report.heldout_accuracy is not None and report.heldout_accuracy >= 0.8

    # Fresh turns generated with another seed: well above chance (0.5).
    fresh = synthetic_turns(100, seed=2)
    router = make("classifier", {"path": str(report.out)})
    correct = sum(router.route(RouteInput(text=r["text"])).slow is bool(r.get("slow", r.get("label"))) for r in fresh)
    assert correct / len(fresh) >= 0.8
    assert 0.0 <= router.score(RouteInput(text="hello")) <= 1.0
    assert TextClassifier.load(report.out).training["heldout_accuracy"] == report.heldout_accuracy


def test_classifier_file_is_settings_and_coefficients_without_pickle(tmp_path):
    import numpy as np
    import sklearn

    from duma.plugins.builtin_routers import MODEL_VERSION, LabelledTurn, TextClassifier

    turns = [LabelledTurn.model_validate(r) for r in synthetic_turns(80, seed=4)]
    model = TextClassifier.fit([t.text for t in turns], [int(t.is_slow) for t in turns], n_features=2**12)
    path = model.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["coef", "intercept", "meta"]
        assert data["coef"].dtype == np.float32 and data["coef"].shape == (2 * 2**12,)
        meta = json.loads(str(data["meta"]))
    assert meta["version"] == MODEL_VERSION == 2 and meta["sklearn_version"] == sklearn.__version__
    assert meta["hashing"]["n_features"] == 2**12
    texts = ["What is 17% of 230?", "hello there"]
    assert np.allclose(TextClassifier.load(path).predict_proba(texts), model.predict_proba(texts), atol=1e-5)


def test_classifier_of_the_first_format_says_to_retrain(tmp_path):
    import numpy as np

    path = tmp_path / "old.npz"
    meta = {"format": "duma-router-classifier", "version": 1, "dim": 8}
    with path.open("wb") as f:
        np.savez_compressed(f, weights=np.zeros(8, np.float32), bias=np.float64(0), meta=np.asarray(json.dumps(meta)))
    with pytest.raises(DumaError, match="format version 1") as caught:
        make("classifier", {"path": str(path)})
    assert "duma router train" in caught.value.hint and "\n" not in str(caught.value)


def test_classifier_caches_per_file_and_reloads_a_changed_file(tmp_path):
    from duma.plugins.builtin_routers import LabelledTurn, load_classifier, train_classifier

    turns = [LabelledTurn.model_validate(r) for r in synthetic_turns(60, seed=5)]
    path = tmp_path / "model.npz"
    train_classifier(turns, path, n_features=2**10)
    first = load_classifier(path)
    assert load_classifier(path) is first
    train_classifier(turns, path, seed=1, n_features=2**10)
    assert load_classifier(path) is not first


def test_classifier_router_missing_model_says_to_train(tmp_path):
    with pytest.raises(DumaError, match="duma router train"):
        make("classifier", {"path": str(tmp_path / "missing.npz")})
    with pytest.raises(DumaError, match="duma router train"):
        make("classifier")  # default path under DUMA_HOME, not trained yet
    (tmp_path / "junk.npz").write_text("not a model")
    with pytest.raises(DumaError, match="not a duma router classifier"):
        make("classifier", {"path": str(tmp_path / "junk.npz")})


# --- calibration --------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.5, 0.95, 1.0])
def test_calibration_reaches_the_target_share(distribution, share):
    import numpy as np

    from duma.plugins.builtin_routers import achieved_share, calibrate_threshold

    rng = np.random.default_rng(0)
    scores = (rng.uniform(size=10_000) if distribution == "uniform" else rng.normal(size=10_000)).tolist()
    threshold = calibrate_threshold(scores, share)
    assert abs(achieved_share(scores, threshold) - share) <= 0.01


def test_calibration_with_ties_reports_the_achieved_share():
    from duma.plugins.builtin_routers import achieved_share, calibrate_threshold

    scores = [0.0] * 60 + [1.0] * 40  # a rules router: only two distinct scores
    threshold = calibrate_threshold(scores, 0.3)
    assert threshold == 1.0 and achieved_share(scores, threshold) == 0.4  # nearest reachable share
    threshold = calibrate_threshold(scores, 0.1)
    assert threshold > 1.0 and achieved_share(scores, threshold) == 0.0
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.3)
    with pytest.raises(ValueError):
        calibrate_threshold([0.1, 0.2], 1.5)


# --- CLI ----------------------------------------------------------------------------------


@pytest.fixture
def runner_cli():
    from duma.cli import cli, load_plugin_commands

    load_plugin_commands()
    return cli


def test_cli_train_calibrate_and_score(runner_cli, tmp_path):
    data = write_jsonl(tmp_path / "turns.jsonl", synthetic_turns(200, seed=3))
    model = tmp_path / "router.npz"
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "train", str(data), "--out", str(model)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == 200 and report["heldout_accuracy"] >= 0.8 and model.is_file()

    config = tmp_path / "duma.yaml"
    result = runner.invoke(runner_cli, [
        "router", "calibrate", str(data), "--router", "classifier", "-o", "path", str(model),
        "--slow-share", "0.3", "--write", str(config),
    ])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.output)
    assert calibration["n"] == 200 and abs(calibration["slow_share_achieved"] - 0.3) <= 0.01
    written = yaml.safe_load(config.read_text())
    assert written["agent"]["router"] == "classifier"
    assert written["agent"]["router_options"] == {"path": str(model), "threshold": calibration["threshold"]}

    # The written file is a valid duma config, and the router reads its options from it.
    result = runner.invoke(runner_cli, ["--config", str(config), "router", "score", "What is 12% of 400?", "hi!"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["threshold"] == calibration["threshold"]
    assert lines[0]["score"] > lines[1]["score"]


def test_cli_calibrate_rules_and_errors(runner_cli, tmp_path):
    turns = tmp_path / "turns.txt"
    turns.write_text("What is 2+2?\nhello\nhow are you\nconvert 3 km to miles\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "rules", "--slow-share", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["slow_share_achieved"] == 0.5

    result = runner.invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "duma", "--slow-share", "0.5"])
    assert isinstance(result.exception, DumaError) and "no score to calibrate" in str(result.exception)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "slow": true}\n{"text": "no label"}\n', encoding="utf-8")
    result = runner.invoke(runner_cli, ["router", "train", str(bad), "--out", str(tmp_path / "m.npz")])
    assert isinstance(result.exception, DumaError)
    assert str(result.exception).startswith(f"{bad}:2: ") and '"label": 0|1' in str(result.exception)

    not_text = tmp_path / "turns.json"
    not_text.write_text('[{"text": "hi"},\n {"text": 3}]', encoding="utf-8")
    result = runner.invoke(runner_cli, ["router", "calibrate", str(not_text), "--router", "rules", "--slow-share", "0.5"])
    assert isinstance(result.exception, DumaError) and str(result.exception).startswith(f"{not_text}:2: text: ")


def test_labelled_turns_read_json_lists_and_slow_or_fast_words(tmp_path):
    from duma.plugins.builtin_routers import read_labelled_turns, read_turn_texts

    path = tmp_path / "turns.json"
    path.write_text(json.dumps([{"text": "2+2?", "slow": "slow"}, {"text": "hi", "label": 0, "id": 7}]), encoding="utf-8")
    assert [t.is_slow for t in read_labelled_turns(path)] == [True, False]
    assert read_turn_texts(path) == ["2+2?", "hi"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DumaError, match="has no labelled turns"):
        read_labelled_turns(empty)
