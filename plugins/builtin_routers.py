"""The built-in routers and the math behind ``duma router train`` / ``calibrate``.

Imported only from inside the hooks of :mod:`duma.plugins.routers` (pydantic and numpy are
too slow for CLI start-up). Routers:

- ``duma``: defers to the fast mind's own ``Invoke[...]`` (DUMA's design).
- ``always-fast`` / ``always-slow``: constant decisions, for baselines and debugging.
- ``rules``: regular expressions and keywords; options ``patterns``, ``keywords``,
  ``include_defaults``, ``threshold``.
- ``classifier``: a hashed n-gram logistic-regression model trained by ``duma router train``;
  options ``path``, ``threshold``.

Calibration follows RouteLLM: the threshold is the score quantile that sends a chosen share
of representative turns to the slow mind (:func:`calibrate_threshold`).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from duma.errors import ConfigError, DumaError
from duma.routing import RouteDecision, RouteInput, Router

if TYPE_CHECKING:
    import numpy as np

OPTIONS_KEY = "agent.router_options"


def parse_router_options(model: type[BaseModel], options: dict[str, Any] | None, router: str) -> Any:
    """Validate router options; errors name ``agent.router_options.<key>``."""
    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join([OPTIONS_KEY, *(str(p) for p in err["loc"])])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {msg}")
        allowed = ", ".join(sorted(model.model_fields))
        raise ConfigError("; ".join(problems), f"router '{router}' takes: {allowed}") from None


class _Options(BaseModel):
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
        return 0.5  # unknown until the fast mind has spoken

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


class RulesOptions(_Options):
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
MODEL_VERSION = 1
DEFAULT_DIM = 2**18
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def default_model_path() -> Path:
    """Where ``duma router train`` writes and the classifier router reads, by default."""
    from duma.paths import duma_home

    return duma_home() / "routers" / "classifier.npz"


def text_features(text: str) -> list[str]:
    """Word unigrams and bigrams plus character 2-4-grams, digits folded to 0 so that all
    numbers look alike ("17%" and "23%" share features)."""
    folded = re.sub(r"\d", "0", text.lower())
    words = _WORD.findall(folded)
    features = [f"w:{w}" for w in words]
    features += [f"b:{a} {b}" for a, b in zip(words, words[1:])]
    padded = f" {' '.join(folded.split())} "
    for n in (2, 3, 4):
        features += [f"c{n}:{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
    return features


@dataclass
class SparseRows:
    """A CSR-like batch of hashed feature rows (COO triples), enough for logistic regression."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    n: int


def featurize(texts: Sequence[str], dim: int) -> SparseRows:
    """Hash features into ``dim`` buckets with a sign bit (the hashing trick); each row is
    L2-normalised so long and short turns weigh alike."""
    import numpy as np

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    hashed: dict[str, tuple[int, float]] = {}  # n-grams repeat a lot across turns
    for r, text in enumerate(texts):
        counts: dict[int, float] = {}
        for feature in text_features(text):
            found = hashed.get(feature)
            if found is None:
                h = zlib.crc32(feature.encode("utf-8"))  # stable across processes, unlike hash()
                found = hashed[feature] = (h % dim, 1.0 if (h >> 31) & 1 else -1.0)
            index, sign = found
            counts[index] = counts.get(index, 0.0) + sign
        norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
        for index, value in counts.items():
            if value:
                rows.append(r)
                cols.append(index)
                vals.append(value / norm)
    return SparseRows(
        np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
        np.asarray(vals, dtype=np.float64), len(texts),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class TextClassifier:
    """Logistic regression over hashed n-grams; ``predict_proba`` is P(turn needs the slow mind)."""

    def __init__(self, weights: np.ndarray, bias: float, meta: dict[str, Any] | None = None) -> None:
        self.weights = weights
        self.bias = float(bias)
        self.dim = int(weights.shape[0])
        self.meta = dict(meta or {})

    def decision(self, x: SparseRows) -> np.ndarray:
        import numpy as np

        return np.bincount(x.rows, weights=x.vals * self.weights[x.cols], minlength=x.n) + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return _sigmoid(self.decision(featurize(texts, self.dim)))

    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: Sequence[int], *, dim: int = DEFAULT_DIM, epochs: int = 300,
        learning_rate: float = 0.05, l2: float = 1e-5,
    ) -> TextClassifier:
        """Full-batch Adam on the L2-regularised logistic loss (small data: a few seconds)."""
        import numpy as np

        x = featurize(texts, dim)
        y = np.asarray(labels, dtype=np.float64)
        n = max(len(y), 1)
        # Only buckets that occur get gradient (the others stay exactly 0 under L2), so
        # optimise over those alone: much less work per step than over all ``dim`` buckets.
        active, cols = np.unique(x.cols, return_inverse=True)
        size = len(active)
        w = np.zeros(size)
        b = float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))) if len(y) else 0.0
        m_w, v_w, m_b, v_b = np.zeros(size), np.zeros(size), 0.0, 0.0
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in range(1, epochs + 1):
            z = np.bincount(x.rows, weights=x.vals * w[cols], minlength=x.n) + b
            error = _sigmoid(z) - y
            grad_w = np.bincount(cols, weights=x.vals * error[x.rows], minlength=size) / n + l2 * w
            grad_b = float(error.mean())
            m_w = beta1 * m_w + (1 - beta1) * grad_w
            v_w = beta2 * v_w + (1 - beta2) * grad_w**2
            m_b = beta1 * m_b + (1 - beta1) * grad_b
            v_b = beta2 * v_b + (1 - beta2) * grad_b**2
            correction1, correction2 = 1 - beta1**step, 1 - beta2**step
            w -= learning_rate * (m_w / correction1) / (np.sqrt(v_w / correction2) + eps)
            b -= learning_rate * (m_b / correction1) / (math.sqrt(v_b / correction2) + eps)
        meta = {"epochs": epochs, "learning_rate": learning_rate, "l2": l2, "n_train": len(y)}
        weights = np.zeros(dim, dtype=np.float32)
        weights[active] = w
        return cls(weights, b, meta)

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` file: float32 weights, the bias and JSON metadata (no pickle)."""
        import numpy as np

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "dim": self.dim, **self.meta}
        with path.open("wb") as f:  # a file object keeps np.savez from appending ".npz"
            np.savez_compressed(
                f, weights=self.weights.astype(np.float32), bias=np.float64(self.bias), meta=np.asarray(json.dumps(meta))
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        import numpy as np

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                weights, bias = data["weights"].astype(np.float32), float(data["bias"])
        except (OSError, KeyError, ValueError) as exc:
            raise DumaError(
                f"{path} is not a duma router classifier ({type(exc).__name__}: {exc})",
                "train one with 'duma router train DATA --out PATH'",
            ) from None
        if meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_VERSION:
            raise DumaError(f"{path} is not a duma router classifier (version {MODEL_VERSION})",
                            "train one with 'duma router train DATA --out PATH'")
        return cls(weights, bias, meta)


_model_cache: dict[Path, tuple[int, TextClassifier]] = {}
_model_lock = threading.Lock()


def load_classifier(path: str | Path) -> TextClassifier:
    """Load a trained classifier, cached per file (reloaded when the file changes)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DumaError(
            f"router classifier model {path} does not exist",
            "train one with 'duma router train DATA --out PATH' and set agent.router_options.path",
        )
    mtime = resolved.stat().st_mtime_ns
    with _model_lock:
        cached = _model_cache.get(resolved)
        if cached and cached[0] == mtime:
            return cached[1]
        model = TextClassifier.load(resolved)
        _model_cache[resolved] = (mtime, model)
        return model


class ClassifierOptions(_Options):
    path: Path | None = Field(None, description="Model from 'duma router train' (default: DUMA_HOME/routers/classifier.npz).")


class ClassifierRouter(Router):
    """A learned scorer: P(slow) from a logistic regression over hashed word/char n-grams."""

    name: ClassVar[str] = "classifier"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        parsed: ClassifierOptions = parse_router_options(ClassifierOptions, options, self.name)
        super().__init__(parsed.model_dump(exclude_unset=True))
        self.path = parsed.path or default_model_path()
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


class LabelledTurn(BaseModel):
    """One training example: ``{"text": ..., "slow": true}`` or ``{"text": ..., "label": 1}``."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1)
    slow: bool | None = None
    label: int | None = None

    @field_validator("slow", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("slow", "fast"):
            return value.strip().lower() == "slow"
        return value

    @property
    def is_slow(self) -> bool:
        return bool(self.slow) if self.slow is not None else bool(self.label)


def read_jsonl(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DumaError(f"{path} does not exist", "give a JSONL file, one JSON object per line")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DumaError(f"{path}:{number}: invalid JSON ({exc.msg})", "one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DumaError(f"{path}:{number}: expected a JSON object", 'e.g. {"text": "...", "slow": true}')
            yield number, obj


def read_labelled_turns(path: str | Path) -> list[LabelledTurn]:
    turns = []
    for number, obj in read_jsonl(path):
        try:
            turn = LabelledTurn.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise DumaError(f"{path}:{number}: {where}: {err['msg']}", '{"text": "...", "slow": true|false}') from None
        if turn.slow is None and turn.label not in (0, 1):
            raise DumaError(f"{path}:{number}: needs \"slow\": true|false or \"label\": 0|1", "label every turn")
        turns.append(turn)
    if not turns:
        raise DumaError(f"{path} has no labelled turns", '{"text": "...", "slow": true|false} per line')
    return turns


def read_turn_texts(path: str | Path) -> list[str]:
    """Representative turns for calibration: JSONL with ``text`` (or plain lines in a .txt)."""
    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = []
        for number, obj in read_jsonl(path):
            if not isinstance(obj.get("text"), str):
                raise DumaError(f"{path}:{number}: needs a \"text\" string", '{"text": "..."} per line')
            texts.append(obj["text"])
    if not texts:
        raise DumaError(f"{path} has no turns", '{"text": "..."} per line')
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
    epochs: int = 300, dim: int = DEFAULT_DIM,
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

    split_model = TextClassifier.fit([texts[i] for i in train_idx], labels[train_idx], dim=dim, epochs=epochs)
    train_accuracy = accuracy(split_model, train_idx)
    heldout_accuracy = accuracy(split_model, heldout_idx) if n_heldout else None
    final = split_model if not n_heldout else TextClassifier.fit(texts, labels, dim=dim, epochs=epochs)
    final.meta.update({"train_accuracy": train_accuracy, "heldout_accuracy": heldout_accuracy, "seed": seed})
    path = final.save(out)
    return TrainingReport(
        out=str(path), n=len(turns), n_train=len(train_idx), n_heldout=n_heldout,
        slow_share=float(labels.mean()), train_accuracy=train_accuracy, heldout_accuracy=heldout_accuracy,
    )
