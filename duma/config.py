"""The configuration of the whole system, read from one YAML file (``--config PATH`` or
``DUMA_CONFIG``), then environment variables (``DUMA_<SECTION>__<KEY>=value``, ``__``
between levels), then CLI flags. Unknown keys and bad values are errors naming the key path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duma.errors import ConfigError
from duma.types import GenerationOptions, ModelSpec

ENV_PREFIX = "DUMA_"
ENV_NESTING = "__"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MindConfig(ModelSpec):
    """A model spec for one of the agent's minds, plus its system prompt."""

    system_prompt: str | None = Field(None, description="Overrides the built-in prompt.")


class AgentConfig(Strict):
    """The DUMA agent: a fast mind that talks and a slow mind that thinks with tools."""

    fast: MindConfig | None = Field(None, description="Fast mind; default: the top-level model.")
    slow: MindConfig | None = Field(None, description="Slow mind; default: the top-level model.")
    router: str = Field("duma", description="Name of a registered router.")
    router_options: dict[str, Any] = Field(default_factory=dict)
    tools: list[str] | None = Field(None, description="Tool names; None = all registered.")
    max_slow_steps: int = Field(6, ge=1, le=100)
    slow_timeout_s: float = Field(60.0, gt=0)
    tool_timeout_s: float = Field(10.0, gt=0)
    knowledge_dir: Path | None = Field(None, description="Folder of .txt/.md files to search.")
    memory_turns: int = Field(20, ge=1, description="Turns of dialogue memory kept in prompts.")


class LoggingConfig(Strict):
    enabled: bool = Field(True, description="Log every turn to the SQLite database.")
    database: Path | None = Field(None, description="Default: DUMA_HOME/logs.db")


class ChatConfig(Strict):
    system: str | None = None
    stream: bool = True
    markdown: bool = True


class DumaConfig(Strict):
    """Everything duma reads from its configuration file."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="Default model for chat.")
    chat: ChatConfig = Field(default_factory=ChatConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    def mind(self, which: Literal["fast", "slow"]) -> MindConfig:
        """The model spec of a mind: its own section, or the top-level ``model``."""
        own = getattr(self.agent, which)
        return own if own is not None else MindConfig(**self.model.model_dump())


def format_validation_error(exc: ValidationError, source: str | None = None) -> str:
    """One line per problem: ``source: key.path: message``; the first problem first."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        where = f"{source}: " if source else ""
        lines.append(f"{where}{path}: {msg}")
    return "; ".join(lines)


def validate_model(model: type[BaseModel], data: Any, source: str | None = None) -> Any:
    """Validate ``data`` against ``model``; a :class:`ConfigError` names the key paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source), _allowed_hint(model, exc)) from None


def _allowed_hint(model: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        sub: Any = model
        for part in parent:
            field = getattr(sub, "model_fields", {}).get(part)
            if field is None:
                break
            sub = field.annotation
        keys = sorted(getattr(sub, "model_fields", {}))
        if keys:
            return "allowed keys: " + ", ".join(keys)
    return "see 'duma config schema' for what is allowed"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist", "check the path given to --config or DUMA_CONFIG")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}", "fix the syntax at that line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys", "see 'duma config show' for the layout")
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; values given as strings are parsed as YAML scalars."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            pass
    node[keys[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``DUMA_AGENT__ROUTER=rules`` -> ``{"agent": {"router": "rules"}}``; variables without
    ``__`` (DUMA_HOME, DUMA_CONFIG, DUMA_PLUGINS...) are not configuration keys."""
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and ENV_NESTING in name:
            dotted = name[len(ENV_PREFIX):].lower().replace(ENV_NESTING, ".")
            set_path(out, dotted, value)
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> DumaConfig:
    """Layered configuration: YAML file, then environment, then ``overrides`` (CLI flags)."""
    environ = dict(os.environ) if environ is None else environ
    path = path or environ.get("DUMA_CONFIG") or None
    data: dict[str, Any] = read_yaml(Path(path)) if path else {}
    source = str(path) if path else None
    data = merge(data, env_overrides(environ))
    if overrides:
        data = merge(data, overrides)
    return validate_model(DumaConfig, data, source)


def config_from(value: str | Path | dict[str, Any] | DumaConfig | None) -> DumaConfig:
    """Accept a config object, a dict, a YAML path or None (defaults + environment)."""
    if isinstance(value, DumaConfig):
        return value
    if isinstance(value, dict):
        return load_config(None, overrides=value)
    return load_config(value)


__all__ = [
    "AgentConfig",
    "ChatConfig",
    "DumaConfig",
    "GenerationOptions",
    "LoggingConfig",
    "MindConfig",
    "ModelSpec",
    "config_from",
    "load_config",
    "validate_model",
]
