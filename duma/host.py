"""The plugin host: loads plugins from the ``duma`` entry-point group (built-in and third
party alike), isolates their failures, and keeps the registry of components they register.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from duma import hookspecs
from duma.errors import DumaError, PluginError

ENTRY_POINT_GROUP = "duma"
BUILTIN_DISTRIBUTION = "duma"


@dataclass
class PluginInfo:
    """What the host knows about one loaded (or failed) plugin."""

    name: str
    version: str | None
    source: str  # "built-in" or "entry point"
    module: Any = None
    error: str | None = None


@dataclass
class Component:
    """A registered component and the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str


@dataclass
class _State:
    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    components: dict[str, dict[str, Component]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


_state: _State | None = None
_lock = threading.RLock()


def strict() -> bool:
    return os.environ.get("DUMA_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def warn(message: str) -> None:
    """Report a plugin problem once per process (an error in strict mode)."""
    assert _state is not None
    if strict():
        raise PluginError(message, "unset DUMA_STRICT_PLUGINS to only warn")
    if message not in _state.warned:
        _state.warned.add(message)
        print(f"duma: warning: {message}", file=sys.stderr)


def _selected_third_party() -> set[str] | None:
    """``DUMA_PLUGINS=a,b`` loads only those third-party plugins; ``DUMA_PLUGINS=`` none."""
    if "DUMA_PLUGINS" not in os.environ:
        return None
    return {p.strip() for p in os.environ["DUMA_PLUGINS"].split(",") if p.strip()}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every selected plugin loaded."""
    global _state
    with _lock:
        if _state is None:
            pm = pluggy.PluginManager("duma")
            pm.add_hookspecs(hookspecs)
            _state = _State(pm=pm)
            _load_entry_points(_state)
        return _state.pm


def _load_entry_points(state: _State) -> None:
    selected = _selected_third_party()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        builtin = dist is not None and dist.metadata["Name"] == BUILTIN_DISTRIBUTION
        name = ep.name
        if not builtin and selected is not None and name not in selected:
            continue
        if name in state.plugins:
            continue  # the same distribution seen twice on sys.path
        info = PluginInfo(
            name=name,
            version=dist.version if dist else None,
            source="built-in" if builtin else "entry point",
        )
        state.plugins[name] = info
        try:
            info.module = ep.load()
            state.pm.register(info.module, name=name)
        except DumaError:
            raise
        except Exception as exc:  # any failure of a plugin's own code is isolated
            info.error = _describe(exc)
            warn(f"plugin '{name}' failed to load ({info.error}); other plugins keep working")


def register_plugin(module: Any, name: str, version: str | None = None) -> None:
    """Register a plugin object directly (used by tests and embedding applications)."""
    pm = plugin_manager()
    assert _state is not None
    with _lock:
        pm.register(module, name=name)
        _state.plugins[name] = PluginInfo(name, version, "registered", module)
        _state.components.clear()  # re-collect with the new plugin


def unregister_plugin(name: str) -> None:
    pm = plugin_manager()
    assert _state is not None
    with _lock:
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
        _state.plugins.pop(name, None)
        _state.components.clear()


def reset() -> None:
    """Forget all loaded plugins (tests use this after changing DUMA_PLUGINS)."""
    global _state
    with _lock:
        _state = None


def plugins() -> list[PluginInfo]:
    plugin_manager()
    assert _state is not None
    return list(_state.plugins.values())


def call_hook_isolated(hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of a hook, one plugin at a time, so that one that raises
    is reported (once) and the others still run."""
    pm = plugin_manager()
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(**kwargs)
        except DumaError:
            raise
        except Exception as exc:
            warn(f"plugin '{impl.plugin_name}' raised in {hook_name} ({_describe(exc)}); skipped")


def _collect(kind: str) -> dict[str, Component]:
    pm = plugin_manager()
    assert _state is not None
    with _lock:
        if kind in _state.components:
            return _state.components[kind]
        found: dict[str, Component] = {}
        hook_name = hookspecs.COMPONENT_HOOKS[kind]
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            plugin = impl.plugin_name

            def register(obj: Any, name: str | None = None, *, _plugin: str = plugin) -> None:
                cname = name or getattr(obj, "name", None)
                if not isinstance(cname, str) or not cname:
                    raise PluginError(
                        f"plugin '{_plugin}' registered a {kind} without a name",
                        "give the component a 'name' attribute or pass name=...",
                    )
                if cname in found and found[cname].plugin != _plugin:
                    raise PluginError(
                        f"{kind} '{cname}' is registered by both plugin "
                        f"'{found[cname].plugin}' and plugin '{_plugin}'",
                        "uninstall one of them or limit plugins with DUMA_PLUGINS",
                    )
                found[cname] = Component(kind, cname, obj, _plugin)

            try:
                impl.function(register=register)
            except DumaError:
                raise
            except Exception as exc:
                warn(f"plugin '{plugin}' raised in {hook_name} ({_describe(exc)}); skipped")
        _state.components[kind] = found
        return found


def components(kind: str) -> dict[str, Component]:
    """All components of a kind (``backend``, ``tool``, ...) by name."""
    if kind not in hookspecs.COMPONENT_HOOKS:
        raise ValueError(f"unknown component kind {kind!r}")
    return dict(_collect(kind))


def get(kind: str, name: str) -> Any:
    """The component object registered under ``name``; a one-line error lists the known ones."""
    found = _collect(kind)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        label = kind.replace("_", " ")
        raise DumaError(
            f"unknown {label} '{name}'",
            f"known {label}s: {known}; see 'duma plugins' for what is installed",
        )
    return found[name].obj
