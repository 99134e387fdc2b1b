"""A well-behaved plugin: a backend named 'fixture_good' and a 'fixture-good' command."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_backends(register: Any) -> None:
    from duma.testing import ScriptedBackend

    class FixtureGoodBackend(ScriptedBackend):
        name = "fixture_good"

    register(FixtureGoodBackend)


@hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.command(name="fixture-good")
    def fixture_good() -> None:
        """Print a marker."""
        click.echo("fixture-good ran")
