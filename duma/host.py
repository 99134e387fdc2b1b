"""The plugin host: loads plugins from the ``duma`` entry-point group (built-in and third
party alike), isolates their failures, and keeps the registry of components they register.

Isolation: a plugin that fails to import, implements an unknown hook or raises inside a hook
is reported once, as a warning naming the plugin and the error, and everything else keeps
working. ``DUMA_STRICT_PLUGINS=1`` turns those warnings into errors. ``DUMA_PLUGINS=a,b``
loads only those third-party plugins (``DUMA_PLUGINS=`` none); built-ins always load.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from duma import hookspecs
from duma.errors import PluginError, first_line

ENTRY_POINT_GROUP = "duma"
BUILTIN_DISTRIBUTION = "duma"
SOURCE_BUILTIN = "built-in"
SOURCE_ENTRY_POINT = "entry point"
SOURCE_REGISTERED = "registered"


@dataclass
class PluginInfo:
    """What the host knows about one loaded (or failed) plugin."""

    name: str
    version: str | None
    source: str  # "built-in", "entry point" or "registered" (register_plugin)
    module: Any = None
    error: str | None = None
    distribution: str | None = None


@dataclass
class Component:
    """A registered component and the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str


class RegistrationError(PluginError):
    """Raised by the host itself while plugins register (a name clash); never isolated."""


@dataclass
class _State:
    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    components: dict[str, dict[str, Component]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


_state: _State | None = None
_lock = threading.RLock()


def strict() -> bool:
    """True when ``DUMA_STRICT_PLUGINS`` asks for plugin problems to be errors."""
    return os.environ.get("DUMA_STRICT_PLUGINS", "").strip().lower() not in ("", "0", "false", "no", "off")


def warn(message: str, consequence: str = "other plugins keep working") -> None:
    """Report a plugin problem once per process; in strict mode raise :class:`PluginError`."""
    if strict():
        raise PluginError(message, "fix or uninstall the plugin, or unset DUMA_STRICT_PLUGINS to only warn")
    warned = _state.warned if _state is not None else set()
    if message not in warned:
        warned.add(message)
        if _debug() and sys.exc_info()[0] is not None:
            traceback.print_exc()  # plugin authors want to see where their code failed
        print(f"duma: warning: {message}; {consequence}", file=sys.stderr)


def _debug() -> bool:
    return os.environ.get("DUMA_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _selected_third_party() -> set[str] | None:
    """``DUMA_PLUGINS=a,b`` loads only those third-party plugins; ``DUMA_PLUGINS=`` none."""
    if "DUMA_PLUGINS" not in os.environ:
        return None
    return {_normalise(p) for p in os.environ["DUMA_PLUGINS"].split(",") if p.strip()}


def _normalise(name: str) -> str:
    # Entry-point and distribution names are compared like pip does: case and -_. ignored.
    return name.strip().lower().replace("-", "_").replace(".", "_")


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every selected plugin loaded."""
    global _state
    with _lock:
        if _state is None:
            pm = pluggy.PluginManager("duma")
            pm.add_hookspecs(hookspecs)
            _state = _State(pm=pm)
            try:
                _load_entry_points(_state)
            except BaseException:
                _state = None  # strict mode: do not keep a half-loaded host around
                raise
        return _state.pm


def _distribution_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _entry_points() -> list[metadata.EntryPoint]:
    """The ``duma`` entry points, built-ins first, then third party, each sorted by name."""
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))

    def key(ep: metadata.EntryPoint) -> tuple[bool, str]:
        return (_normalise(_distribution_name(ep) or "") != BUILTIN_DISTRIBUTION, ep.name)

    return sorted(eps, key=key)


def _load_entry_points(state: _State) -> None:
    selected = _selected_third_party()
    seen_selected: set[str] = set()
    for ep in _entry_points():
        dist_name = _distribution_name(ep)
        builtin = dist_name is not None and _normalise(dist_name) == BUILTIN_DISTRIBUTION
        name = ep.name
        if selected is not None:
            matches = {_normalise(name), _normalise(dist_name or "")} & selected
            seen_selected |= matches  # naming a built-in is allowed (it loads anyway)
            if not builtin and not matches:
                continue
        if name in state.plugins:
            other = state.plugins[name]
            if other.distribution != dist_name:
                warn(f"plugin '{name}' from {dist_name} has the same name as the one from "
                     f"{other.distribution}; only the first is loaded", "rename one entry point")
            continue  # otherwise: the same distribution seen twice on sys.path
        info = PluginInfo(
            name=name,
            version=ep.dist.version if getattr(ep, "dist", None) is not None else None,
            source=SOURCE_BUILTIN if builtin else SOURCE_ENTRY_POINT,
            distribution=dist_name,
        )
        state.plugins[name] = info
        try:
            module = ep.load()
            state.pm.register(module, name=name)
        except (Exception, SystemExit) as exc:  # any failure of a plugin's own code is isolated
            info.error = first_line(exc, with_type=True)
            warn(f"plugin '{name}' failed to load ({info.error})")
            continue
        info.module = module
        _check_hooks(name, module)
    if selected is not None:
        for missing in sorted(selected - seen_selected):
            warn(f"DUMA_PLUGINS names '{missing}', which is not an installed duma plugin",
                 "see 'duma plugins' for what is installed")


def _check_hooks(name: str, module: Any) -> None:
    """Warn about hook implementations duma never calls (usually a typo in the name)."""
    assert _state is not None
    for caller in _state.pm.get_hookcallers(module) or []:
        if caller.spec is None:
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("register_")))
            warn(f"plugin '{name}' implements '{caller.name}', which is not a duma hook "
                 f"(hooks: {known})", "that function is never called")


def register_plugin(module: Any, name: str, version: str | None = None) -> None:
    """Register a plugin object directly (used by tests and embedding applications).

    Unlike entry-point plugins, a problem here is the caller's own: a hook name that duma
    does not know raises :class:`PluginError` right away.
    """
    pm = plugin_manager()
    assert _state is not None
    with _lock:
        if pm.get_plugin(name) is not None or name in _state.plugins:
            raise PluginError(f"a plugin named '{name}' is already registered",
                              "pick another name or unregister_plugin() it first")
        pm.register(module, name=name)
        unknown = [c.name for c in pm.get_hookcallers(module) or [] if c.spec is None]
        if unknown:
            pm.unregister(module)
            raise PluginError(f"plugin '{name}' implements unknown hooks: {', '.join(unknown)}",
                              "see duma.hookspecs for the hook names")
        _state.plugins[name] = PluginInfo(name, version, SOURCE_REGISTERED, module)
        _state.components.clear()  # re-collect with the new plugin


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin` (or any loaded one)."""
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
    """Every plugin the host knows, including those that failed to load (``error`` set)."""
    plugin_manager()
    assert _state is not None
    return list(_state.plugins.values())


def hooks_of(name: str) -> list[str]:
    """Names of the duma hooks plugin ``name`` implements (empty if it failed to load)."""
    pm = plugin_manager()
    module = pm.get_plugin(name)
    if module is None:
        return []
    return sorted(caller.name for caller in pm.get_hookcallers(module) or [])


def hook_implementations(hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
    """``(plugin name, function)`` for each implementation of a hook, in load order."""
    pm = plugin_manager()
    return [(impl.plugin_name, impl.function) for impl in getattr(pm.hook, hook_name).get_hookimpls()]


def run_isolated(plugin: str, hook_name: str, function: Callable[..., Any], **kwargs: Any) -> bool:
    """Call one hook implementation; a failure becomes one warning naming the plugin.

    Returns False when it raised. :class:`RegistrationError` (a name clash) is never isolated.
    """
    try:
        function(**kwargs)
        return True
    except RegistrationError:
        raise
    except (Exception, SystemExit) as exc:
        warn(f"plugin '{plugin}' raised in {hook_name} ({first_line(exc, with_type=True)})", "its part was skipped")
        return False


def call_hook_isolated(hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of a hook, one plugin at a time, so that one that raises
    is reported (once) and the others still run."""
    for plugin, function in hook_implementations(hook_name):
        run_isolated(plugin, hook_name, function, **kwargs)


def _check_component(kind: str, obj: Any) -> None:
    """The contracts hookspecs.py documents that the host can check cheaply."""
    if kind == "backend":
        from duma.backend import Backend

        if not (isinstance(obj, type) and issubclass(obj, Backend)):
            raise TypeError(f"a backend must be a subclass of duma.backend.Backend, got {obj!r}")
    elif kind == "tool":
        from langchain_core.tools import BaseTool

        if not (isinstance(obj, BaseTool) or callable(obj)):
            raise TypeError("a tool must be a langchain-core BaseTool (e.g. from @tool) or a factory "
                            f"that builds one from the agent's configuration, got {obj!r}")


def _collect(kind: str) -> dict[str, Component]:
    plugin_manager()
    assert _state is not None
    with _lock:
        if kind in _state.components:
            return _state.components[kind]
        found: dict[str, Component] = {}
        hook_name = hookspecs.COMPONENT_HOOKS[kind]
        label = kind.replace("_", " ")
        for plugin, function in hook_implementations(hook_name):
            # A plugin's registrations count only if its hook returns normally.
            staged: dict[str, Component] = {}

            def register(obj: Any, name: str | None = None, *, _plugin: str = plugin,
                         _staged: dict[str, Component] = staged) -> None:
                cname = name or getattr(obj, "name", None)
                if not isinstance(cname, str) or not cname:
                    raise ValueError(f"registered a {label} without a name; give it a 'name' "
                                     "attribute or pass name=...")
                _check_component(kind, obj)
                if cname in found:
                    raise RegistrationError(
                        f"{label} '{cname}' is registered by both plugin "
                        f"'{found[cname].plugin}' and plugin '{_plugin}'",
                        "uninstall one of them or limit plugins with DUMA_PLUGINS",
                    )
                _staged[cname] = Component(kind, cname, obj, _plugin)

            if run_isolated(plugin, hook_name, function, register=register):
                found.update(staged)
        _state.components[kind] = found
        return found


def components(kind: str) -> dict[str, Component]:
    """All components of a kind (``backend``, ``tool``, ...) by name."""
    if kind not in hookspecs.COMPONENT_HOOKS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(hookspecs.COMPONENT_HOOKS)}")
    return dict(_collect(kind))


def get(kind: str, name: str) -> Any:
    """The component object registered under ``name``; a one-line error lists the known ones."""
    if kind not in hookspecs.COMPONENT_HOOKS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(hookspecs.COMPONENT_HOOKS)}")
    found = _collect(kind)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        label = kind.replace("_", " ")
        raise PluginError(
            f"unknown {label} '{name}'",
            f"known {label}s: {known}; see 'duma plugins' for what is installed",
        )
    return found[name].obj
