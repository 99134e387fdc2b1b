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


def test_classifier_router_missing_model_says_to_train(tmp_path, monkeypatch):
    import duma.plugins.builtin_routers as builtin

    with pytest.raises(DumaError, match="duma router train"):
        make("classifier", {"path": str(tmp_path / "missing.npz")})
    monkeypatch.setattr(builtin, "SHIPPED_MODEL_PATH", tmp_path / "not-shipped.npz")
    with pytest.raises(DumaError) as caught:
        make("classifier")  # neither a trained model in DUMA_HOME nor a shipped one
    assert f"'duma router train DATA --out {builtin.default_model_path()}'" in caught.value.hint
    (tmp_path / "junk.npz").write_text("not a model")
    with pytest.raises(DumaError, match="not a duma router classifier"):
        make("classifier", {"path": str(tmp_path / "junk.npz")})


def test_classifier_router_without_options_uses_the_shipped_model():
    """What `duma chat --router classifier` builds on a fresh install."""
    from duma.plugins.builtin_routers import SHIPPED_MODEL_PATH, TextClassifier

    router = make("classifier")
    assert router.path == SHIPPED_MODEL_PATH and SHIPPED_MODEL_PATH.stat().st_size < 100_000
    assert router.route(RouteInput(text="What is 17% of 2,340?")).slow is True
    assert router.route(RouteInput(text="Hello, how are you?")).slow is False
    assert router.route(RouteInput(text="2024年2月1日到2024年10月1日有多少天？")).slow is True
    assert router.route(RouteInput(text="你好！")).slow is False
    assert TextClassifier.load(SHIPPED_MODEL_PATH).training["heldout_accuracy"] >= 0.95


def test_classifier_router_prefers_the_model_trained_into_duma_home():
    from duma.plugins.builtin_routers import LabelledTurn, default_model_path, train_classifier

    turns = [LabelledTurn.model_validate(r) for r in synthetic_turns(40, seed=6)]
    train_classifier(turns, default_model_path(), n_features=2**10)
    assert make("classifier").path == default_model_path()


def test_the_shipped_model_is_package_data():
    import tomllib

    from duma.plugins.builtin_routers import SHIPPED_MODEL_PATH

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = pyproject["tool"]["setuptools"]
    assert "duma.plugins" in setuptools["packages"]
    assert setuptools["package-dir"]["duma.plugins"] == SHIPPED_MODEL_PATH.parent.name
    assert SHIPPED_MODEL_PATH.name in setuptools["package-data"]["duma.plugins"]


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


CONFIG_WITH_COMMENTS = """\
# my assistant
model: {backend: transformers, model: embedded}   # the small one
agent:
  # the router decides when the slow mind runs
  router: rules   # try classifier later
  max_slow_steps: 6
  router_options:
    keywords: [refund]   # shop words
    threshold: 0.5

logging:
  enabled: true   # keep the log
"""


def test_cli_train_calibrate_save_and_score(runner_cli, tmp_path):
    data = write_jsonl(tmp_path / "turns.jsonl", synthetic_turns(200, seed=3))
    model = tmp_path / "router.npz"
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "train", str(data), "--out", str(model)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == 200 and report["heldout_accuracy"] >= 0.8 and model.is_file()

    config = tmp_path / "duma.yaml"
    config.write_text(CONFIG_WITH_COMMENTS, encoding="utf-8")
    result = runner.invoke(runner_cli, [
        "--config", str(config), "router", "calibrate", str(data), "--router", "classifier",
        "-o", "path", str(model), "--slow-share", "0.3", "--save",
    ])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    assert calibration["n"] == 200 and abs(calibration["slow_share_achieved"] - 0.3) <= 0.01
    assert calibration["saved"] == str(config)
    assert f"into {config} (other lines and comments unchanged)" in result.stderr
    written = yaml.safe_load(config.read_text())
    assert written["agent"] == {"router": "classifier", "max_slow_steps": 6,
                                "router_options": {"path": str(model), "threshold": calibration["threshold"]}}
    assert written["model"] == {"backend": "transformers", "model": "embedded"}
    text = config.read_text()
    for kept in ("# my assistant", "# the small one", "# the router decides", "# try classifier later",
                 "enabled: true   # keep the log"):
        assert kept in text
    assert "refund" not in text  # the rules router's options do not apply to the classifier

    # The saved file is a valid duma config, and the router reads its options from it.
    result = runner.invoke(runner_cli, ["--config", str(config), "router", "score", "What is 12% of 400?", "hi!"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["threshold"] == calibration["threshold"]
    assert lines[0]["score"] > lines[1]["score"]
    assert str(model) in lines[0]["reason"]


def test_cli_calibrate_says_how_to_use_the_threshold(runner_cli, tmp_path):
    turns = tmp_path / "turns.txt"
    turns.write_text("What is 2+2?\nhello\nhow are you\nconvert 3 km to miles\n", encoding="utf-8")
    result = CliRunner().invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "rules",
                                             "-o", "include_defaults", "true", "--slow-share", "0.5"])
    assert result.exit_code == 0, result.output
    threshold = json.loads(result.stdout)["threshold"]
    assert (f"duma -S agent.router=rules -S agent.router_options.include_defaults=true "
            f"-S agent.router_options.threshold={threshold} chat") in result.stderr
    assert (f"agent:\n  router: rules\n  router_options:\n    include_defaults: true\n"
            f"    threshold: {threshold}\n") in result.stderr
    # The flags printed work as printed.
    from duma.cli import parse_settings
    from duma.config import load_config

    flags = result.stderr.split("duma ", 1)[1].split(" chat")[0].split()
    settings = [flags[i + 1] for i in range(0, len(flags), 2)]
    agent = load_config(None, parse_settings(settings)).agent
    assert make(agent.router, agent.router_options).threshold == threshold


def test_cli_calibrate_save_needs_an_existing_config_file(runner_cli, tmp_path):
    turns = tmp_path / "turns.txt"
    turns.write_text("What is 2+2?\nhello\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "rules",
                                        "--slow-share", "0.5", "--save"])
    assert isinstance(result.exception, ConfigError) and "--save needs the config file" in str(result.exception)
    assert "--config" in result.exception.hint and "\n" not in str(result.exception)
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(runner_cli, ["--config", str(missing), "router", "calibrate", str(turns),
                                        "--router", "rules", "--slow-share", "0.5", "--save"])
    assert isinstance(result.exception, ConfigError) and f"touch {missing}" in result.exception.hint
    assert not missing.exists()
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    result = runner.invoke(runner_cli, ["--config", str(empty), "router", "calibrate", str(turns),
                                        "--router", "rules", "--slow-share", "0.5", "--save"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load(empty.read_text())
    assert saved["agent"]["router"] == "rules" and saved["agent"]["router_options"] == {"threshold": 1.0}


@pytest.mark.parametrize(
    "before, after",
    [
        # Same router: only the threshold line changes; its comment and the other options stay.
        ("agent:\n  router: classifier  # mine\n  router_options:\n    path: m.npz  # model\n"
         "    threshold: 0.5  # old\nlogging: {enabled: true}\n",
         "agent:\n  router: classifier  # mine\n  router_options:\n    path: m.npz  # model\n"
         "    threshold: 0.75  # old\nlogging: {enabled: true}\n"),
        # No agent section: one is appended.
        ("# top\nlogging: {enabled: true}\n",
         "# top\nlogging: {enabled: true}\nagent:\n  router: classifier\n  router_options:\n"
         "    threshold: 0.75\n"),
        # Four-space indents and no router_options yet.
        ("agent:\n    max_slow_steps: 3  # few\n",
         "agent:\n    max_slow_steps: 3  # few\n    router: classifier\n    router_options:\n"
         "      threshold: 0.75\n"),
        # router_options in flow style: rewritten as lines.
        ("agent:\n  router: classifier\n  router_options: {path: m.npz}  # flow\n",
         "agent:\n  router: classifier\n  router_options:\n    path: m.npz\n    threshold: 0.75\n"),
    ],
)
def test_save_router_settings_changes_only_its_lines(tmp_path, before, after):
    from duma.plugins.builtin_routers import save_router_settings

    path = tmp_path / "duma.yaml"
    path.write_text(before, encoding="utf-8")
    _, kept = save_router_settings(path, "classifier", {}, 0.75)
    assert kept and path.read_text(encoding="utf-8") == after
    assert [p.name for p in tmp_path.iterdir()] == ["duma.yaml"]  # no temporary file left


def test_save_router_settings_falls_back_to_pyyaml_for_a_flow_style_agent(tmp_path):
    from duma.plugins.builtin_routers import save_router_settings

    path = tmp_path / "duma.yaml"
    path.write_text("# gone\nagent: {router: duma, max_slow_steps: 2}\n", encoding="utf-8")
    _, kept = save_router_settings(path, "rules", {"keywords": ["refund"]}, 1.0)
    assert not kept and "# gone" not in path.read_text()
    assert yaml.safe_load(path.read_text()) == {"agent": {"router": "rules", "max_slow_steps": 2,
                                                          "router_options": {"keywords": ["refund"], "threshold": 1.0}}}


def test_cli_score_explains_every_router(runner_cli, tmp_path):
    runner = CliRunner()
    reasons = {}
    for router in ("always-fast", "always-slow", "rules", "classifier"):
        result = runner.invoke(runner_cli, ["router", "score", "--router", router, "What is 17% of 2,340?"])
        assert result.exit_code == 0, result.output
        line = json.loads(result.output)
        assert line["router"] == router and line["slow"] is (router != "always-fast")
        reasons[router] = line["reason"]
    assert reasons["always-fast"] == "always-fast sends every turn to the fast mind"
    assert reasons["always-slow"] == "always-slow sends every turn to the slow mind"
    assert reasons["rules"].startswith("matched the rule ") and reasons["rules"].endswith(": slow mind")
    assert reasons["classifier"].startswith("P(slow) ") and ">= threshold 0.5: slow mind (model " in reasons["classifier"]


def test_cli_score_on_the_duma_router_explains_it_has_no_score(runner_cli):
    result = CliRunner().invoke(runner_cli, ["router", "score", "What is 2+2?"])  # duma is the default
    assert result.exit_code == 1 and result.stdout == ""
    message = str(result.exception)
    assert isinstance(result.exception, DumaError) and "\n" not in message
    assert message.startswith("router 'duma' (config agent.router) has no score: the fast mind's Invoke[...] decides")
    assert "--router classifier" in result.exception.hint


def test_cli_trains_on_the_sample_and_calibrates_on_the_sample_turns(runner_cli, tmp_path):
    examples = Path(__file__).parents[1] / "configs" / "examples" / "routers"
    labelled = [json.loads(line) for line in (examples / "labelled_turns.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(labelled) >= 36 and {row["slow"] for row in labelled} == {True, False}
    assert any("\u4e00" <= ch <= "\u9fff" for row in labelled for ch in row["text"])  # some Chinese turns
    model = tmp_path / "sample.npz"
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "train", str(examples / "labelled_turns.jsonl"), "--out", str(model)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == len(labelled)
    result = runner.invoke(runner_cli, ["router", "calibrate", str(examples / "turns.txt"), "--router", "classifier",
                                        "-o", "path", str(model), "--slow-share", "0.4"])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    assert abs(calibration["slow_share_achieved"] - 0.4) <= 0.05
    router = make("classifier", {"path": str(model)})
    assert router.score(RouteInput(text="Convert 30 km to miles.")) > router.score(RouteInput(text="Good night!"))


def test_cli_calibrate_rules_and_errors(runner_cli, tmp_path):
    turns = tmp_path / "turns.txt"
    turns.write_text("What is 2+2?\nhello\nhow are you\nconvert 3 km to miles\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "rules", "--slow-share", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["slow_share_achieved"] == 0.5

    result = runner.invoke(runner_cli, ["router", "calibrate", str(turns), "--router", "rules", "--slow-share", "0.25"])
    assert json.loads(result.stdout)["slow_share_achieved"] == 0.5  # the rules give 0 or 1: ties
    assert "duma: warning: 0.500 of the turns reach the threshold, not 0.25" in result.stderr

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
