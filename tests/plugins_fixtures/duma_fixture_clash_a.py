"""One of two plugins that both register a backend named 'clash'."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_backends(register: Any) -> None:
    from duma.testing import ScriptedBackend

    class ClashBackend(ScriptedBackend):
        name = "clash"

    register(ClashBackend)
