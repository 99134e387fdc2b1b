"""The ``duma`` command. The host keeps only ``plugins`` and ``config``; every other command
comes from a plugin's ``register_commands`` hook (built-in ones included).

Nothing heavy is imported here: ``duma --help`` must stay fast and torch-free.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import click

from duma import __version__, host
from duma.errors import DumaError, PluginError, first_line


class CliState:
    """Shared by all commands through ``ctx.obj``: global options and the loaded config."""

    def __init__(self, config_path: str | None, debug: bool, overrides: dict[str, Any] | None = None):
        self.config_path = config_path
        self.debug = debug
        self.overrides: dict[str, Any] = overrides or {}
        self._config = None

    @property
    def config(self):  # -> DumaConfig (imported lazily)
        if self._config is None:
            from duma.config import load_config

            self._config = load_config(self.config_path, self.overrides)
        return self._config

    def config_with(self, flag_overrides: dict[str, Any] | None = None, *, model: str | None = None,
                    backend: str | None = None):  # -> DumaConfig
        """The configuration with one command's own flags applied last: the one way a
        command applies ``-m/--model`` and ``--backend`` (they set ``model.model`` and
        ``model.backend``) and any other flag that maps onto a config key."""
        from duma.config import load_config, merge

        overrides = dict(flag_overrides or {})
        model_flags = {key: value for key, value in (("model", model), ("backend", backend)) if value}
        if model_flags:
            overrides = merge(overrides, {"model": model_flags})
        if not overrides:
            return self.config
        return load_config(self.config_path, merge(self.overrides, overrides))


pass_state = click.make_pass_decorator(CliState, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="duma")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DUMA_CONFIG",
              help="YAML configuration file (or DUMA_CONFIG).")
@click.option("-S", "--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set a configuration key, e.g. -S agent.router=rules (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, settings: tuple[str, ...], debug: bool) -> None:
    """duma: fast/slow conversational agents on open LLMs."""
    ctx.obj = CliState(config_path, debug, parse_settings(settings))


def parse_settings(settings: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("agent.router=rules", ...)`` -> nested overrides. Values stay text here;
    ``load_config`` reads them as YAML where the key does not take text (``6``, ``[a, b]``)."""
    overrides: dict[str, Any] = {}
    if not settings:
        return overrides
    from duma.config import set_path  # pydantic and yaml load only when needed

    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise click.BadParameter(f"'{item}' is not KEY=VALUE (e.g. agent.router=rules)",
                                     param_hint="'-S' / '--set'")
        set_path(overrides, key, value, parse=False)
    return overrides


def plugin_rows() -> list[dict[str, Any]]:
    """One row per plugin: name, version, source, hooks implemented, components by kind."""
    from duma.hookspecs import COMPONENT_HOOKS

    by_plugin: dict[str, dict[str, list[str]]] = {}
    for kind in COMPONENT_HOOKS:
        for comp in host.components(kind).values():
            by_plugin.setdefault(comp.plugin, {}).setdefault(kind, []).append(comp.name)
    rows = []
    for info in host.plugins():
        row: dict[str, Any] = {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "hooks": host.hooks_of(info.name),
            "components": {k: sorted(v) for k, v in sorted(by_plugin.get(info.name, {}).items())},
        }
        if info.error:
            row["error"] = info.error
        rows.append(row)
    return rows


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins_command(as_json: bool) -> None:
    """List plugins: version, source, hooks implemented and components registered."""
    rows = plugin_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="duma plugins")
    for col in ("name", "version", "source", "hooks", "components"):
        table.add_column(col, overflow="fold")
    for r in rows:
        comps = "\n".join(f"{k}: {', '.join(v)}" for k, v in r["components"].items())
        if r.get("error"):
            comps = f"[red]failed: {escape(r['error'])}[/red]"
        table.add_row(escape(r["name"]), escape(r["version"] or ""), r["source"], "\n".join(r["hooks"]), comps)
    Console().print(table)


@cli.group(name="config")
def config_group() -> None:
    """Show the effective configuration or its schema."""


@config_group.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
@pass_state
def config_show(state: CliState, as_json: bool) -> None:
    """Print the effective configuration (file, then environment, then flags)."""
    data = state.config.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@config_group.command(name="schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration file."""
    from duma.config import DumaConfig

    click.echo(json.dumps(DumaConfig.model_json_schema(), indent=2))


_commands_loaded = False


def load_plugin_commands() -> click.Group:
    """Let plugins add their commands (once per process). A plugin that raises is skipped
    with a warning; two plugins adding the same command name is an error naming both."""
    global _commands_loaded
    if _commands_loaded:
        return cli
    _commands_loaded = True
    owners = {name: "duma (core)" for name in cli.commands}
    for plugin, function in host.hook_implementations("register_commands"):
        before = dict(cli.commands)
        if not host.run_isolated(plugin, "register_commands", function, cli=cli):
            # Keep nothing half-registered by a plugin whose hook failed.
            cli.commands.clear()
            cli.commands.update(before)
            continue
        for name, command in cli.commands.items():
            if name in before and before[name] is not command:
                raise PluginError(
                    f"command '{name}' is registered by both {_owner_label(owners[name])} and plugin '{plugin}'",
                    "uninstall one of them or limit plugins with DUMA_PLUGINS",
                )
            owners.setdefault(name, plugin)
    return cli


def _owner_label(owner: str) -> str:
    return owner if owner == "duma (core)" else f"plugin '{owner}'"


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("DUMA_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the CLI, turning errors into one line + exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = _debug_requested(args)
    if debug:
        os.environ["DUMA_DEBUG"] = "1"  # so plugin warnings (duma.host) show tracebacks too
    try:
        load_plugin_commands()
        cli.main(args=args, prog_name="duma", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except DumaError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the last line of defence: one line, never a deep traceback
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {first_line(exc, with_type=True)} (run with --debug for the traceback)", err=True)
        sys.exit(1)
