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

from duma.errors import ConfigError, format_validation_error
from duma.models import EMBEDDED, shipped_mind_adapter
from duma.types import GenerationOptions, ModelSpec

ENV_PREFIX = "DUMA_"
ENV_NESTING = "__"


class Strict(BaseModel):
    """A configuration section: an unknown key is an error naming it, and assigned values are
    validated like read ones (duma's and the trainers' run configs)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MindConfig(ModelSpec):
    """A model spec for one of the agent's minds, plus its system prompt."""

    system_prompt: str | None = Field(None, description="Overrides the built-in prompt.")


class AgentConfig(Strict):
    """The DUMA agent: a fast mind that talks and a slow mind that thinks with tools."""

    fast: MindConfig | None = Field(None, description="Fast mind; default: the top-level model.")
    slow: MindConfig | None = Field(None, description="Slow mind; default: the top-level model.")
    trained_minds: bool = Field(
        True, description="A mind that runs the embedded model with no adapter of its own gets duma's "
        "shipped DUMA adapter for it (false: the untrained model).")
    mode: Literal["auto", "duma", "plain"] = Field(
        "auto", description="'duma': the fast/slow protocol; 'plain': chat with the model as it is (its own "
        "chat template, no slow mind); 'auto': 'duma' when the minds are configured (agent.fast/slow, a "
        "router other than 'duma', or the shipped minds on the embedded model), else 'plain'.")
    router: str = Field("duma", description="Name of a registered router.")
    router_options: dict[str, Any] = Field(default_factory=dict)
    tools: list[str] | None = Field(None, description="Tool names; None = all registered.")
    max_slow_steps: int = Field(6, ge=1, le=100)
    slow_step_max_tokens: int = Field(
        160, ge=8, le=4096, description="Cap on tokens the slow mind writes per Reason/Act step.")
    keep_promises: bool = Field(
        True, description="Run the slow mind when the fast mind's reply promises to look something up "
        "or work it out, even if it wrote Invoke[False] (the user was told an answer is coming).")
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


class ServeConfig(Strict):
    """``duma serve``: the OpenAI-compatible server (its flags override these keys)."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, ge=0, le=65535, description="0: any free port (printed when ready).")
    api_key_file: Path | None = Field(None, description="File with one accepted API key per line; keys are "
                                      "also read from --api-key and DUMA_API_KEY. None at all: no auth.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from "
                                    "a browser (CORS); empty: CORS off.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    max_messages: int = Field(256, ge=1, description="Most messages one request may carry.")
    max_tokens: int = Field(4096, ge=1, description="Most tokens a request may ask to generate.")
    max_concurrent: int = Field(4, ge=1, description="Turns generating at once (the models serialise their own "
                                "calls; more only interleaves them).")
    max_queue: int = Field(256, ge=0, description="Requests waiting for a turn; beyond it: 429 with Retry-After.")
    drain_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM, how long in-flight requests may finish.")


class DumaConfig(Strict):
    """Everything duma reads from its configuration file."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="Default model for chat.")
    chat: ChatConfig = Field(default_factory=ChatConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    def runs_minds(self) -> bool:
        """Whether turns follow the fast/slow protocol (see ``agent.mode``): a model that was
        not trained as a mind chats plainly instead of answering with protocol fragments."""
        if self.agent.mode != "auto":
            return self.agent.mode == "duma"
        if self.agent.fast is not None or self.agent.slow is not None or self.agent.router != "duma":
            return True
        shipped = shipped_mind_adapter("fast")
        return shipped is not None and self.mind("fast").adapter == str(shipped)

    def mind(self, which: Literal["fast", "slow"]) -> MindConfig:
        """The model spec of a mind: its own section, or the top-level ``model``."""
        own = getattr(self.agent, which)
        spec = own if own is not None else MindConfig(**self.model.model_dump())
        if self.agent.trained_minds and spec.model == EMBEDDED and spec.adapter is None:
            shipped = shipped_mind_adapter(which)
            if shipped is not None:
                spec = spec.model_copy(update={"adapter": str(shipped)})
        return spec


KeyPath = tuple[str, ...]
Origins = dict[KeyPath, str]
"""Where each configured key path came from: ``cfg.yaml:3``, ``environment DUMA_X__Y``..."""


def _origin_of(loc: tuple[Any, ...], origins: Origins | None) -> str | None:
    """The source of the longest configured prefix of an error location."""
    if not origins:
        return None
    parts = tuple(str(p) for p in loc)
    for n in range(len(parts), 0, -1):
        if parts[:n] in origins:
            return origins[parts[:n]]
    # An unknown section set only through deeper keys (DUMA_NOSUCH__KEY): name one of them.
    below = sorted(key for key in origins if key[: len(parts)] == parts)
    return origins[below[0]] if below and parts else None


def validate_model(model: type[BaseModel], data: Any, source: str | None = None,
                   origins: Origins | None = None) -> Any:
    """Validate ``data`` against ``model``; a :class:`ConfigError` names the key paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source, origin=lambda loc: _origin_of(loc, origins)),
                          _allowed_hint(model, exc)) from None


def _allowed_hint(model: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["type"] == "extra_forbidden":
        keys = sorted(getattr(_submodel(model, err["loc"][:-1]), "model_fields", {}))
        if keys:
            return "allowed keys: " + ", ".join(keys)
    return "see 'duma config schema' for what is allowed"


def _submodel(model: Any, path: tuple[Any, ...]) -> Any:
    """The pydantic model class at ``path`` (``X | None`` unwrapped), or None."""
    sub: Any = model
    for part in path:
        fields = getattr(sub, "model_fields", None)
        if not fields or part not in fields:
            return None
        sub = _unwrap_optional(fields[part].annotation)
    return sub


def _unwrap_optional(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    return read_yaml_with_lines(path)[0]


def read_yaml_with_lines(path: Path) -> tuple[dict[str, Any], Origins]:
    """A YAML mapping and ``path:line`` for every key path in it; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist", "check the path given to --config or DUMA_CONFIG")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder", "give the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", "check the file's permissions and encoding") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}", "fix the syntax at that line") from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys", "see 'duma config show' for the layout")
    origins: Origins = {}
    _node_lines(node, (), str(path), origins)
    return data, origins


def _node_lines(node: Any, prefix: KeyPath, path: str, origins: Origins) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = prefix + (str(key_node.value),)
        origins[key] = f"{path}:{key_node.start_mark.line + 1}"
        _node_lines(value_node, key, path, origins)


def _parse_scalar(value: str) -> Any:
    """Environment and flag values are YAML scalars: ``6``, ``true``, ``[a, b]``, ``null``."""
    if value == "":
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def set_path(data: dict[str, Any], dotted: str, value: Any, *, parse: bool = True) -> None:
    """Set ``a.b.c`` in nested dicts; with ``parse``, string values are read as YAML scalars
    (``load_config`` reads unparsed strings itself: as text where the key takes text)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = _parse_scalar(value) if parse and isinstance(value, str) else value


def _top_level_scalar_keys() -> set[str]:
    """Top-level keys that are not sections (``log_level``): ``DUMA_LOG_LEVEL`` sets them."""
    return {name for name, f in DumaConfig.model_fields.items()
            if not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))}


def _env_key(name: str) -> str | None:
    if not name.startswith(ENV_PREFIX):
        return None
    rest = name[len(ENV_PREFIX):].lower()
    if ENV_NESTING in rest:
        return rest.replace(ENV_NESTING, ".")
    return rest if rest in _top_level_scalar_keys() else None


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``DUMA_AGENT__ROUTER=rules`` -> ``{"agent": {"router": "rules"}}``; ``DUMA_LOG_LEVEL``
    sets the top-level ``log_level``. Other variables without ``__`` (DUMA_HOME, DUMA_CONFIG,
    DUMA_PLUGINS...) are not configuration keys."""
    out: dict[str, Any] = {}
    for name, value in (dict(os.environ) if environ is None else environ).items():
        dotted = _env_key(name)
        if dotted:
            set_path(out, dotted, value)
    return out


def _env_layer(environ: dict[str, str]) -> tuple[dict[str, Any], Origins, dict[KeyPath, str]]:
    out: dict[str, Any] = {}
    origins: Origins = {}
    raw: dict[KeyPath, str] = {}
    for name in sorted(environ):
        dotted = _env_key(name)
        if dotted:
            set_path(out, dotted, environ[name], parse=False)
            origins[tuple(dotted.split("."))] = f"environment {name}"
            raw[tuple(dotted.split("."))] = environ[name]
    return out, origins, raw


def _leaf_paths(data: Any, prefix: KeyPath = ()) -> list[KeyPath]:
    if isinstance(data, dict) and data:
        return [p for k, v in data.items() for p in _leaf_paths(v, prefix + (str(k),))]
    return [prefix] if prefix else []


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dicts; ``override`` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_text_values(data: dict[str, Any], exc: ValidationError, raw: dict[KeyPath, str]) -> bool:
    """Values typed as text (environment variables, ``-S key=value``) are used as text where
    the key takes text; where validation rejects them, read them as YAML (``6``, ``true``,
    ``null``, ``[a, b]``, ``{k: v}``) and, for lists, also as ``a,b``. Returns True when
    something changed and validation is worth retrying."""
    changed = False
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        text = raw.pop(loc, None)
        if text is None:
            continue
        value = _parse_scalar(text)
        if err["type"] == "list_type" and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if value == text:
            continue
        node = data
        for key in loc[:-1]:
            node = node[key]
        node[loc[-1]] = value
        changed = True
    return changed


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    *,
    overrides_source: str = "command line",
) -> DumaConfig:
    """Layered configuration: YAML file, then environment, then ``overrides`` (CLI flags).

    Errors name where the bad value came from: ``cfg.yaml:3``, ``environment
    DUMA_AGENT__MAX_SLOW_STEPS`` or ``overrides_source``, then the key path.
    """
    environ = dict(os.environ) if environ is None else environ
    path = path or environ.get("DUMA_CONFIG") or None
    data: dict[str, Any] = {}
    origins: Origins = {}
    if path:
        data, origins = read_yaml_with_lines(Path(path))
    env_data, env_origins, raw = _env_layer(environ)
    data = merge(data, env_data)
    origins.update(env_origins)
    if overrides:
        data = merge(data, overrides)
        for key in _leaf_paths(overrides):
            origins[key] = overrides_source
            raw.pop(key, None)
            value = _get_path(overrides, key)
            if isinstance(value, str):
                raw[key] = value
    while True:
        try:
            return DumaConfig.model_validate(data)
        except ValidationError as exc:
            if not _read_text_values(data, exc, raw):
                break
    return validate_model(DumaConfig, data, str(path) if path else None, origins)


def _get_path(data: dict[str, Any], key: KeyPath) -> Any:
    node: Any = data
    for part in key:
        node = node[part]
    return node


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
    "ServeConfig",
    "config_from",
    "load_config",
    "validate_model",
]
