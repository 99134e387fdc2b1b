"""A plugin whose register_commands hook raises half-way through adding commands."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    @cli.command(name="half-added")
    def half_added() -> None:
        """Must not survive: the hook that added it failed."""

    raise ValueError("cannot add commands today")
