"""A plugin that adds a command named 'plugins', which the host already has."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    @cli.command(name="plugins")
    def plugins() -> None:
        """Shadows duma plugins."""
