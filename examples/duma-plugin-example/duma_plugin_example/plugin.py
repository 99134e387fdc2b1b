"""The hook implementations duma loads through the ``duma`` entry point.

duma imports this module when its CLI starts, so it stays light: the tool and the backend
live in their own modules, imported only when duma asks for that kind of component.
"""

from __future__ import annotations

from typing import Any

import click

from duma import hookimpl


@hookimpl
def register_tools(register: Any) -> None:
    from duma_plugin_example.tools import word_count

    register(word_count)


@hookimpl
def register_backends(register: Any) -> None:
    from duma_plugin_example.echo import EchoBackend

    register(EchoBackend)


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command(name="hello")
    @click.option("--name", default="world", show_default=True, help="Who to greet.")
    def hello(name: str) -> None:
        """Say hello (a command added by duma-plugin-example)."""
        click.echo(f"Hello, {name}! (from duma-plugin-example)")
