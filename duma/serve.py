"""The OpenAI-compatible server as an app a service mounts in its own ASGI app::

    from duma.serve import create_app
    app.mount("/duma", create_app(agent))

The server itself is the built-in ``serve`` plugin (:mod:`duma.plugins.serve.app`).
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`duma.plugins.serve.app.create_app` (imported here on first use: FastAPI loads
    only when a server is built)."""
    from duma.plugins.serve.app import create_app as build

    return build(*args, **kwargs)


__all__ = ["create_app"]
