"""The built-in routers and the math behind ``duma router train`` / ``calibrate``.

Imported only from inside the hooks of :mod:`duma.plugins.routers` (pydantic, numpy and
scikit-learn are too slow for CLI start-up). Routers:

- ``duma``: defers to the fast mind's own ``Invoke[...]`` (DUMA's design); it has no score.
- ``always-fast`` / ``always-slow``: constant decisions, for baselines and debugging.
- ``rules``: regular expressions and keywords; options ``patterns``, ``keywords``,
  ``include_defaults``, ``threshold``.
- ``classifier``: scikit-learn logistic regression over hashed word and character n-grams,
  trained by ``duma router train``; options ``path``, ``threshold``. Without ``path`` it
  reads ``DUMA_HOME/routers/classifier.npz``, else the model shipped in the package
  (:data:`SHIPPED_MODEL_PATH`, trained on the minds' routing data).

Calibration follows RouteLLM: the threshold is the score quantile that sends a chosen share
of representative turns to the slow mind (:func:`calibrate_threshold`).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from duma import RouteDecision, RouteInput, Router
from duma.data import read_validated
from duma.errors import ConfigError, DumaError, first_line, format_validation_error
from duma.paths import write_atomically

if TYPE_CHECKING:
    import numpy as np
    from sklearn.pipeline import FeatureUnion

OPTIONS_KEY = "agent.router_options"


def parse_router_options(model: type[BaseModel], options: dict[str, Any] | None, router: str) -> Any:
    """Validate router options; errors name ``agent.router_options.<key>``."""
    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        allowed = ", ".join(sorted(model.model_fields))
        raise ConfigError(format_validation_error(exc, prefix=OPTIONS_KEY), f"router '{router}' takes: {allowed}") from None


class ThresholdOptions(BaseModel):
    """The option every scoring router takes; each router's own options extend it."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, description="Scores at or above it go to the slow mind.")


# --- constant routers ---------------------------------------------------------------------


class DumaRouter(Router):
    """DUMA's own routing: the fast mind drafts a reply and writes Invoke[True|False]."""

    name: ClassVar[str] = "duma"
    defers_to_fast_mind: ClassVar[bool] = True

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__({})  # options belong to other routers; nothing to configure here

    def score(self, turn: RouteInput) -> float:
        # The decision is made by the fast mind's reply, which does not exist yet: callers
        # check ``defers_to_fast_mind`` and use ``route()``, whose score is None.
        raise DumaError(
            f"router '{self.name}' has no score: the fast mind's Invoke[...] decides each turn",
            "use route(), or a scoring router such as 'classifier' or 'rules'",
        )

    def route(self, turn: RouteInput) -> RouteDecision:
        return RouteDecision(slow=None, score=None)


class AlwaysFastRouter(Router):
    """Never wakes the slow mind (the fast mind alone; a latency baseline)."""

    name: ClassVar[str] = "always-fast"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__({})

    def score(self, turn: RouteInput) -> float:
        return 0.0

    def route(self, turn: RouteInput) -> RouteDecision:
        return RouteDecision(slow=False, score=0.0)


class AlwaysSlowRouter(Router):
    """Wakes the slow mind on every turn (a quality baseline; handy to debug tools)."""

    name: ClassVar[str] = "always-slow"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__({})

    def score(self, turn: RouteInput) -> float:
        return 1.0

    def route(self, turn: RouteInput) -> RouteDecision:
        return RouteDecision(slow=True, score=1.0)


# --- rules --------------------------------------------------------------------------------

# Turns that need a tool or a lookup: arithmetic, percentages, dates, unit conversions.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"\d\s*%",  # 17%, 5 %
    r"\d[\d,.]*\s*(?:\*\*|[-+*/×÷^x])\s*[\d(]",  # 3 + 4, 12*7, 2^10, 3 x 4
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",  # 2024-03-01
    r"\b\d{1,2}[/.]\d{1,2}[/.]\d{4}\b",  # 01/03/2024
    r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?\b",
    r"\b\d+(?:[.,]\d+)?\s*(?:km|mi|miles?|kg|lbs?|pounds?|°\s*[cf]|celsius|fahrenheit|feet|ft|inch(?:es)?"
    r"|cm|mm|lit(?:re|er)s?|gallons?|oz|ounces?|mph|km/h|[kmgt]i?b|bytes?)\b.*\b(?:to|in|into)\b",
    r"\d+\s*(?:天|周|个月|年)(?:后|前|以后|之后|以前)",  # 30天后
)
DEFAULT_KEYWORDS: tuple[str, ...] = (
    "calculate", "compute", "how many days", "how many weeks", "how many hours", "how long until",
    "how long ago", "days until", "days between", "days since", "what day", "which day",
    "day of the week", "what date", "what's the date", "today's date", "convert", "conversion",
    "percent", "percentage", "square root", "average of", "sum of", "multiplied", "divided by",
    "how much is", "look up", "search", "find out", "according to", "documentation",
    "计算", "多少天", "几天", "星期几", "周几", "换算", "转换", "百分之", "查一下", "搜索",
)


def _keyword_pattern(keyword: str) -> str:
    """Whole words for English keywords; plain substrings for CJK ones (no spaces to mark words)."""
    body = r"\s+".join(re.escape(part) for part in keyword.split())
    start = r"(?<!\w)" if keyword[:1].isascii() and keyword[:1].isalnum() else ""
    end = r"(?!\w)" if keyword[-1:].isascii() and keyword[-1:].isalnum() else ""
    return start + body + end


class RulesOptions(ThresholdOptions):
    patterns: list[str] | None = Field(None, description="Regular expressions (case-insensitive).")
    keywords: list[str] | None = Field(None, description="Words or phrases (case-insensitive).")
    include_defaults: bool = Field(False, description="Also use the built-in rules when giving your own.")


class RulesRouter(Router):
    """Score 1 when any pattern or keyword matches the user's message, else 0. Without
    configured rules, built-in ones catch arithmetic, percentages, dates and conversions."""

    name: ClassVar[str] = "rules"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        parsed: RulesOptions = parse_router_options(RulesOptions, options, self.name)
        super().__init__(parsed.model_dump(exclude_unset=True))
        patterns, keywords = list(parsed.patterns or []), list(parsed.keywords or [])
        own_rules = bool(patterns or keywords)
        compiled: list[re.Pattern[str]] = []
        for i, pattern in enumerate(patterns):
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise ConfigError(
                    f"{OPTIONS_KEY}.patterns[{i}]: invalid regular expression {pattern!r}: {exc}",
                    "fix the pattern (Python 're' syntax)",
                ) from None
        for i, keyword in enumerate(keywords):
            if not keyword.strip():
                raise ConfigError(f"{OPTIONS_KEY}.keywords[{i}]: empty keyword", "remove it")
            compiled.append(re.compile(_keyword_pattern(keyword.strip()), re.IGNORECASE))
        if not own_rules or parsed.include_defaults:
            compiled += [re.compile(p, re.IGNORECASE) for p in DEFAULT_PATTERNS]
            compiled += [re.compile(_keyword_pattern(k), re.IGNORECASE) for k in DEFAULT_KEYWORDS]
        self.rules = compiled

    def matching_rule(self, text: str) -> str | None:
        """The first rule that matches (for explanations), or None."""
        for rule in self.rules:
            if rule.search(text):
                return rule.pattern
        return None

    def score(self, turn: RouteInput) -> float:
        return 1.0 if self.matching_rule(turn.text) is not None else 0.0


# --- classifier ---------------------------------------------------------------------------

MODEL_FORMAT = "duma-router-classifier"
MODEL_VERSION = 2
DEFAULT_FEATURES = 2**18
# Words and single punctuation marks: "%", "+" and "?" say a lot about a turn.
WORD_TOKEN_PATTERN = r"[^\W_]+|[^\w\s]"
DIGIT = re.compile(r"\d")
RETRAIN_HINT = "train one with 'duma router train DATA --out PATH'"
# Trained on the minds' routing data, reproduced by:
#   duma minds generate --out /tmp/router-data --seed 0
#   duma router train /tmp/router-data/router_train.jsonl --out plugins/router_classifier.npz
SHIPPED_MODEL_PATH = Path(__file__).with_name("router_classifier.npz")


def default_model_path() -> Path:
    """Where ``duma router train`` writes by default (and the classifier router reads first)."""
    from duma.paths import duma_home

    return duma_home() / "routers" / "classifier.npz"


def default_classifier_path() -> Path:
    """The model the classifier router reads without ``path``: the user's trained one in
    DUMA_HOME, else the shipped one."""
    trained = default_model_path()
    if trained.is_file() or not SHIPPED_MODEL_PATH.is_file():
        return trained
    return SHIPPED_MODEL_PATH


def fold_text(text: str) -> str:
    """Lower case with digits folded to 0, so that all numbers look alike ("17%" and "23%"
    share features), and whitespace collapsed and padded so character n-grams see word edges."""
    words = DIGIT.sub("0", text.lower()).split()
    return f" {' '.join(words)} "


class HashingSettings(BaseModel):
    """What rebuilds the (stateless) feature hashing of a saved classifier."""

    model_config = ConfigDict(extra="forbid")

    n_features: int = Field(DEFAULT_FEATURES, ge=2, description="Hash buckets per n-gram kind.")
    word_ngram_range: tuple[int, int] = (1, 2)
    char_ngram_range: tuple[int, int] = (2, 4)
    word_token_pattern: str = WORD_TOKEN_PATTERN


def make_vectorizer(settings: HashingSettings) -> FeatureUnion:
    """Hashed word 1-2-grams and character 2-4-grams with signed hashing, each block L2-normed."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.pipeline import FeatureUnion

    shared: dict[str, Any] = {"n_features": settings.n_features, "preprocessor": fold_text,
                              "alternate_sign": True, "norm": "l2"}
    return FeatureUnion([
        ("words", HashingVectorizer(analyzer="word", ngram_range=settings.word_ngram_range,
                                    token_pattern=settings.word_token_pattern, **shared)),
        ("chars", HashingVectorizer(analyzer="char", ngram_range=settings.char_ngram_range, **shared)),
    ])


class SavedClassifier(BaseModel):
    """The JSON metadata of a saved classifier (``meta`` in the ``.npz``)."""

    model_config = ConfigDict(extra="forbid")

    format: str
    version: int
    hashing: HashingSettings
    sklearn_version: str
    training: dict[str, Any] = Field(default_factory=dict)


class TextClassifier:
    """Logistic regression over hashed n-grams; ``predict_proba`` is P(turn needs the slow mind).

    Saved as the hashing settings plus the coefficients, never as a pickle: the vectorizer
    has no fitted state, so it is rebuilt from its settings on load."""

    def __init__(self, hashing: HashingSettings, coef: np.ndarray, intercept: float,
                 training: dict[str, Any] | None = None) -> None:
        self.hashing = hashing
        self.vectorizer = make_vectorizer(hashing)
        self.coef = coef
        self.intercept = float(intercept)
        self.training = dict(training or {})

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        # The binary LogisticRegression.predict_proba, from the saved coefficients.
        from scipy.special import expit

        return expit(self.vectorizer.transform(list(texts)) @ self.coef + self.intercept)

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], *, n_features: int = DEFAULT_FEATURES,
            inverse_regularization: float = 10.0) -> TextClassifier:
        """L2-regularised logistic regression (lbfgs); ``inverse_regularization`` is sklearn's ``C``."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        hashing = HashingSettings(n_features=n_features)
        x = make_vectorizer(hashing).transform(list(texts))
        y = np.asarray(labels, dtype=int)
        if len(set(y.tolist())) < 2:
            raise DumaError("the labelled turns are all slow or all fast", "label turns of both kinds")
        model = LogisticRegression(C=inverse_regularization, max_iter=1000).fit(x, y)
        training = {"C": inverse_regularization, "n_train": len(y)}
        return cls(hashing, model.coef_[0].astype(np.float32), float(model.intercept_[0]), training)

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` file: float32 coefficients, the intercept and JSON metadata (no pickle)."""
        import numpy as np
        import sklearn

        meta = SavedClassifier(format=MODEL_FORMAT, version=MODEL_VERSION, hashing=self.hashing,
                               sklearn_version=sklearn.__version__, training=self.training)

        def write(target: Path) -> None:
            with target.open("wb") as f:  # a file object keeps np.savez from appending ".npz"
                np.savez_compressed(f, coef=self.coef.astype(np.float32), intercept=np.float64(self.intercept),
                                    meta=np.asarray(meta.model_dump_json()))

        return write_atomically(path, write)

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        import numpy as np

        path = Path(path)
        if not zipfile.is_zipfile(path):
            raise DumaError(f"{path} is not a duma router classifier (not an .npz archive)", RETRAIN_HINT)
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, KeyError, ValueError) as exc:
            raise DumaError(f"{path} is not a duma router classifier ({first_line(exc, with_type=True)})",
                            RETRAIN_HINT) from None
        if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
            raise DumaError(f"{path} is not a duma router classifier", RETRAIN_HINT)
        if raw.get("version") != MODEL_VERSION:
            raise DumaError(f"{path} is a router classifier of format version {raw.get('version')}, "
                            f"this duma reads version {MODEL_VERSION}", "retrain it with 'duma router train'")
        try:
            meta = SavedClassifier.model_validate(raw)
        except ValidationError as exc:
            raise DumaError(f"{path}: {format_validation_error(exc, prefix='meta')}", RETRAIN_HINT) from None
        coef, intercept = arrays.get("coef"), arrays.get("intercept")
        if coef is None or intercept is None or coef.shape != (2 * meta.hashing.n_features,):
            raise DumaError(f"{path}: the coefficients are missing or do not match the hashing settings",
                            RETRAIN_HINT)
        return cls(meta.hashing, coef.astype(np.float32), float(intercept), meta.training)


_model_cache: dict[Path, tuple[int, TextClassifier]] = {}
_model_lock = threading.Lock()


def load_classifier(path: str | Path) -> TextClassifier:
    """Load a trained classifier, cached per file (reloaded when the file changes)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DumaError(
            f"router classifier model {path} does not exist",
            f"train it with 'duma router train DATA --out {path}' (DATA: labelled turns such as "
            "configs/examples/routers/labelled_turns.jsonl), or set agent.router_options.path to a trained model",
        )
    mtime = resolved.stat().st_mtime_ns
    with _model_lock:
        cached = _model_cache.get(resolved)
        if cached and cached[0] == mtime:
            return cached[1]
        model = TextClassifier.load(resolved)
        _model_cache[resolved] = (mtime, model)
        return model


class ClassifierOptions(ThresholdOptions):
    path: Path | None = Field(None, description="Model from 'duma router train' (default: "
                                                "DUMA_HOME/routers/classifier.npz, else the shipped model).")


class ClassifierRouter(Router):
    """A learned scorer: P(slow) from a logistic regression over hashed word/char n-grams."""

    name: ClassVar[str] = "classifier"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        parsed: ClassifierOptions = parse_router_options(ClassifierOptions, options, self.name)
        super().__init__(parsed.model_dump(exclude_unset=True))
        self.path = parsed.path or default_classifier_path()
        self.model = load_classifier(self.path)

    def score(self, turn: RouteInput) -> float:
        return float(self.model.predict_proba([turn.text])[0])

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Many turns at once (used by calibration)."""
        return [float(p) for p in self.model.predict_proba(list(texts))]


BUILTIN_ROUTERS: tuple[type[Router], ...] = (
    DumaRouter, AlwaysFastRouter, AlwaysSlowRouter, RulesRouter, ClassifierRouter,
)


# --- training data and calibration --------------------------------------------------------


LABELLED_TURN_HINT = '{"text": "...", "slow": true|false} (or "label": 0|1) per item'
TURN_TEXT_HINT = '{"text": "..."} per item, or a .txt file with one turn per line'


class LabelledTurn(BaseModel):
    """One training example: ``{"text": ..., "slow": true}`` or ``{"text": ..., "label": 1}``."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1)
    slow: bool | None = None
    label: int | None = None

    @field_validator("slow", mode="before")
    @classmethod
    def _accept_slow_or_fast_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("slow", "fast"):
            return value.strip().lower() == "slow"
        return value

    @model_validator(mode="after")
    def _needs_a_label(self) -> LabelledTurn:
        if self.slow is None and self.label not in (0, 1):
            raise ValueError('needs "slow": true|false or "label": 0|1')
        return self

    @property
    def is_slow(self) -> bool:
        return bool(self.slow) if self.slow is not None else bool(self.label)


class TurnText(BaseModel):
    """One representative turn for calibration; other keys (labels, ids) are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: str


def read_labelled_turns(path: str | Path) -> list[LabelledTurn]:
    """Training turns from a JSON Lines, JSON list or Parquet file."""
    turns = [turn for _, turn in read_validated(path, LabelledTurn, hint=LABELLED_TURN_HINT)]
    if not turns:
        raise DumaError(f"{path} has no labelled turns", LABELLED_TURN_HINT)
    return turns


def read_turn_texts(path: str | Path) -> list[str]:
    """Representative turns for calibration: ``text`` items (JSON Lines, JSON list, Parquet),
    or plain lines in a ``.txt`` file."""
    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = [turn.text for _, turn in read_validated(path, TurnText, hint=TURN_TEXT_HINT)]
    if not texts:
        raise DumaError(f"{path} has no turns", TURN_TEXT_HINT)
    return texts


def calibrate_threshold(scores: Sequence[float], slow_share: float) -> float:
    """The threshold that sends ``slow_share`` of these turns to the slow mind
    (``score >= threshold``), as RouteLLM calibrates: the (1 - share) quantile of the scores.

    We take the order statistic (the k-th highest score, k = round(share * n)) so that
    distinct scores give exactly k slow turns. With ties at the cut, every tied turn goes the
    same way; the threshold is then whichever side of the tie lands nearer the target (see
    :func:`achieved_share` for the share actually reached).
    """
    if not 0.0 <= slow_share <= 1.0:
        raise ValueError(f"slow_share must be between 0 and 1, got {slow_share}")
    values = sorted(float(s) for s in scores)
    n = len(values)
    if n == 0:
        raise ValueError("no scores to calibrate on")
    if any(math.isnan(v) for v in values):
        raise ValueError("scores contain NaN")
    target = round(slow_share * n)
    if target == 0:
        return math.nextafter(values[-1], math.inf)  # above every score: nothing goes slow
    candidate = values[n - target]  # the target-th highest score
    above = math.nextafter(candidate, math.inf)
    count_at = n - bisect.bisect_left(values, candidate)  # scores >= candidate
    count_above = n - bisect.bisect_left(values, above)  # scores > candidate
    return candidate if abs(count_at - target) <= abs(count_above - target) else above


def achieved_share(scores: Sequence[float], threshold: float) -> float:
    """The share of turns whose score is at or above the threshold."""
    if not scores:
        return 0.0
    return sum(1 for s in scores if s >= threshold) / len(scores)


def score_texts(router: Router, texts: Sequence[str]) -> list[float]:
    """Score many turns, in one batch when the router can."""
    batch = getattr(router, "score_texts", None)
    if callable(batch):
        return list(batch(texts))
    return [float(router.score(RouteInput(text=t))) for t in texts]


class CalibrationResult(BaseModel):
    router: str
    threshold: float
    slow_share_target: float
    slow_share_achieved: float
    n: int


def calibrate_router(router: Router, texts: Sequence[str], slow_share: float) -> CalibrationResult:
    if router.defers_to_fast_mind:
        raise DumaError(
            f"router '{router.name}' leaves the decision to the fast mind's Invoke[...]; it has no score to calibrate",
            "calibrate a scoring router such as 'classifier' or 'rules'",
        )
    scores = score_texts(router, texts)
    threshold = calibrate_threshold(scores, slow_share)
    return CalibrationResult(
        router=router.name, threshold=threshold, slow_share_target=slow_share,
        slow_share_achieved=achieved_share(scores, threshold), n=len(scores),
    )


class TrainingReport(BaseModel):
    out: str
    n: int
    n_train: int
    n_heldout: int
    slow_share: float
    train_accuracy: float
    heldout_accuracy: float | None


def train_classifier(
    turns: Sequence[LabelledTurn], out: str | Path, *, holdout: float = 0.2, seed: int = 0,
    n_features: int = DEFAULT_FEATURES,
) -> TrainingReport:
    """Fit on a shuffled split, report train and held-out accuracy, then refit on all turns
    (more data for the saved model) and save it."""
    import numpy as np

    texts = [t.text for t in turns]
    labels = np.asarray([int(t.is_slow) for t in turns])
    order = np.random.default_rng(seed).permutation(len(turns))
    n_heldout = int(round(len(turns) * holdout)) if len(turns) >= 5 else 0
    heldout_idx, train_idx = order[:n_heldout], order[n_heldout:]

    def accuracy(model: TextClassifier, idx: np.ndarray) -> float:
        predictions = model.predict_proba([texts[i] for i in idx]) >= 0.5
        return float((predictions == labels[idx].astype(bool)).mean())

    split_model = TextClassifier.fit([texts[i] for i in train_idx], labels[train_idx], n_features=n_features)
    train_accuracy = accuracy(split_model, train_idx)
    heldout_accuracy = accuracy(split_model, heldout_idx) if n_heldout else None
    final = split_model if not n_heldout else TextClassifier.fit(texts, labels, n_features=n_features)
    final.training.update({"train_accuracy": train_accuracy, "heldout_accuracy": heldout_accuracy, "seed": seed})
    path = final.save(out)
    return TrainingReport(
        out=str(path), n=len(turns), n_train=len(train_idx), n_heldout=n_heldout,
        slow_share=float(labels.mean()), train_accuracy=train_accuracy, heldout_accuracy=heldout_accuracy,
    )


# --- saving a calibrated router into a config file ----------------------------------------


class RouterSettings(BaseModel):
    """``agent.router`` and ``agent.router_options`` as ``duma router calibrate`` sets them."""

    router: str
    options: dict[str, Any]

    def flags(self, keys: Sequence[str]) -> str:
        """``-S`` flags for the router and the given option keys (values as YAML text), quoted
        for a POSIX shell."""
        import shlex

        settings = [f"agent.router={self.router}"]
        settings += [f"agent.router_options.{key}={_inline_yaml(self.options[key])}" for key in keys]
        return " ".join(f"-S {shlex.quote(setting)}" for setting in settings)

    def yaml_lines(self) -> list[str]:
        """The ``agent:`` block to paste into a config file."""
        return ["agent:", f"  router: {_inline_yaml(self.router)}", "  router_options:",
                *_block_yaml(self.options, "    ")]


def _inline_yaml(value: Any) -> str:
    """One value as YAML on one line (flow style for lists and mappings)."""
    import yaml

    # Dumped inside a list so that scalars get no document end marker ("...").
    return yaml.safe_dump([value], default_flow_style=True, allow_unicode=True, width=1_000_000).strip()[1:-1]


def _block_yaml(mapping: dict[str, Any], indent: str) -> list[str]:
    import yaml

    text = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return [indent + line for line in text.splitlines()]


def calibrated_settings(config_data: dict[str, Any], router: str, options: dict[str, Any],
                        threshold: float) -> RouterSettings:
    """The router settings after calibration: the options already in the config when it
    configures the same router, then ``options``, then the threshold."""
    agent = config_data.get("agent") or {}
    previous = agent.get("router_options") if isinstance(agent, dict) and agent.get("router") == router else None
    merged = dict(previous) if isinstance(previous, dict) else {}
    merged.update({key: str(value) if isinstance(value, Path) else value for key, value in options.items()})
    merged["threshold"] = threshold
    return RouterSettings(router=router, options=merged)


_COMMENT = re.compile(r"\s+#.*$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block_end(lines: list[str], start: int, parent_indent: int) -> int:
    """The index after the block of lines more indented than ``parent_indent`` from ``start``."""
    end = start
    for i in range(start, len(lines)):
        if _is_content(lines[i]) and _indent_of(lines[i]) <= parent_indent:
            break
        end = i + 1
    # Comments and blank lines at the end belong to what follows.
    while end > start and not _is_content(lines[end - 1]):
        end -= 1
    return end


def _find_key(lines: list[str], start: int, end: int, indent: int, key: str) -> int | None:
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}\s*:(\s|$)")
    return next((i for i in range(start, end) if pattern.match(lines[i])), None)


def _set_key(lines: list[str], start: int, end: int, indent: int, key: str, value: Any) -> int:
    """Set ``key: value`` among the lines ``start:end`` at ``indent``, keeping its comment;
    returns the change in the number of lines."""
    at = _find_key(lines, start, end, indent, key)
    new = f"{' ' * indent}{key}: {_inline_yaml(value)}"
    if at is None:
        lines.insert(end, new)
        return 1
    comment = _COMMENT.search(lines[at].split(":", 1)[1])
    value_end = _block_end(lines, at + 1, indent)  # a block value on the lines below
    lines[at:value_end] = [new + (comment.group(0) if comment else "")]
    return 1 - (value_end - at)


def edit_router_lines(text: str, settings: RouterSettings, replace_options: bool) -> str | None:
    """``text`` with ``agent.router`` and ``agent.router_options`` set, other lines (comments
    included) untouched; None when the file's layout is beyond these line edits (flow style)."""
    lines = text.splitlines()
    agent_at = next((i for i, line in enumerate(lines) if re.match(r"^agent\s*:", line)), None)
    if agent_at is None:
        return "\n".join([*lines, *settings.yaml_lines()]) + "\n"
    if _COMMENT.sub("", lines[agent_at]).split(":", 1)[1].strip():
        return None  # agent: {...} on one line
    end = _block_end(lines, agent_at + 1, 0)
    children = [lines[i] for i in range(agent_at + 1, end) if _is_content(lines[i])]
    indent = _indent_of(children[0]) if children else 2
    end += _set_key(lines, agent_at + 1, end, indent, "router", settings.router)
    options_at = _find_key(lines, agent_at + 1, end, indent, "router_options")
    inline = options_at is not None and _COMMENT.sub("", lines[options_at]).split(":", 1)[1].strip()
    if options_at is None or replace_options or inline:
        # A fresh block: another router's options do not apply, and {...} is rewritten as lines.
        if options_at is not None:
            del lines[options_at:_block_end(lines, options_at + 1, indent)]
            end = _block_end(lines, agent_at + 1, 0)
        lines[end:end] = [f"{' ' * indent}router_options:", *_block_yaml(settings.options, " " * (indent + 2))]
        return "\n".join(lines) + "\n"
    options_end = _block_end(lines, options_at + 1, indent)
    option_lines = [lines[i] for i in range(options_at + 1, options_end) if _is_content(lines[i])]
    option_indent = _indent_of(option_lines[0]) if option_lines else indent + 2
    for key, value in settings.options.items():
        options_end += _set_key(lines, options_at + 1, options_end, option_indent, key, value)
    return "\n".join(lines) + "\n"


def save_router_settings(path: str | Path, router: str, options: dict[str, Any],
                         threshold: float) -> tuple[RouterSettings, bool]:
    """Write the calibrated router into a YAML config file. Returns the settings written and
    whether the file's comments and layout were kept (line edits); when the layout is beyond
    them, the file is rewritten by pyyaml, which drops comments."""
    import yaml

    from duma.config import read_yaml

    path = Path(path)
    data = read_yaml(path)
    text = path.read_text(encoding="utf-8")
    agent = data.get("agent") or {}
    if not isinstance(agent, dict):
        raise ConfigError(f"{path}: agent is not a mapping", "fix the config file, then rerun with --save")
    settings = calibrated_settings(data, router, options, threshold)
    expected = {**data, "agent": {**agent, "router": settings.router, "router_options": settings.options}}
    replace_options = agent.get("router") != router
    edited = edit_router_lines(text, settings, replace_options)
    kept = edited is not None and yaml.safe_load(edited) == expected
    if not kept:
        edited = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
    write_atomically(path, lambda tmp: tmp.write_text(edited, encoding="utf-8"))
    return settings, kept
