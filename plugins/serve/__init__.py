"""``duma serve``: the agent over the OpenAI API (FastAPI under uvicorn) with a web chat page.

The app lives in :mod:`duma.plugins.serve.app` (``duma.serve.create_app`` for services that
mount it); this module only adds the command, so ``duma --help`` imports neither FastAPI nor
torch.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from duma import hookimpl, pass_state
from duma.errors import DumaError

if TYPE_CHECKING:
    from duma.cli import CliState

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command(name="serve")
@click.option("--host", metavar="ADDRESS", help="Address to bind (default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8000; 0: any free port).")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Accept this Bearer key (repeatable; also DUMA_API_KEY). No key at all: no auth.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), help="File with one accepted key per line.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let browser pages from this origin call the API (repeatable; default: CORS off).")
@click.option("--max-concurrent", type=click.IntRange(min=1), help="Turns generating at once (default 4).")
@click.option("--max-queue", type=click.IntRange(min=0), help="Requests waiting for a turn before 429 (default 256).")
@click.option("-m", "--model", "model_ref", help="Model for both minds (as in duma chat).")
@click.option("--backend", help="Inference backend for that model.")
@pass_state
def serve_command(state: CliState, host: str | None, port: int | None, api_keys: tuple[str, ...],
                  api_key_file: str | None, cors_origins: tuple[str, ...], max_concurrent: int | None,
                  max_queue: int | None, model_ref: str | None, backend: str | None) -> None:
    """Serve the agent over an OpenAI-compatible API, with a chat page at /.

    Models: duma (the configured router), duma/ROUTER (any router), fast and slow (the bare
    minds). Flags override the config's serve section; SIGTERM lets running replies finish.
    """
    flags = {"host": host, "port": port, "api_key_file": api_key_file, "max_concurrent": max_concurrent,
             "max_queue": max_queue, "cors_origins": list(cors_origins) or None}
    serve = {key: value for key, value in flags.items() if value is not None}
    config = state.config_with({"serve": serve} if serve else {}, model=model_ref, backend=backend)
    settings = config.serve

    from duma.agents import Agent
    from duma.plugins.serve.app import create_app
    from duma.plugins.serve.limits import read_api_keys

    keys = read_api_keys(api_keys, settings.api_key_file)
    if not keys and settings.host not in LOOPBACK:
        click.echo(f"warning: serving on {settings.host} without an API key: anyone who can reach it can use it "
                   "(set --api-key or DUMA_API_KEY)", err=True)
    agent = Agent.from_config(config, log=config.logging.enabled)
    app = create_app(agent, settings, api_keys=keys)
    run_server(app, settings.host, settings.port, settings.drain_timeout_s, config.log_level)


def run_server(app: Any, host: str, port: int, drain_timeout_s: float, log_level: str) -> None:
    """Run under uvicorn until SIGINT/SIGTERM; print one ready line once the port is bound and
    the minds are loaded. A model that fails to load stops the server with a one-line error."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           access_log=log_level in ("debug", "info"),
                                           timeout_graceful_shutdown=int(max(1, drain_timeout_s))))
    state = app.state.duma
    state.start_loading()

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if not server.started:
            return
        bound = server.servers[0].sockets[0].getsockname()
        url = f"http://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}"
        if not state.loaded.is_set():
            click.echo(f"duma serve: listening on {url}; /health answers 503 until the minds are loaded")
        state.loaded.wait()
        if state.load_error is not None:
            server.should_exit = True
            return
        click.echo(f"duma serve: ready on {url} (models: {', '.join(state.model_names())}; chat page at /)")

    threading.Thread(target=announce, name="duma-serve-ready", daemon=True).start()
    # uvicorn drains on SIGTERM, then raises the signal again: a drained server exits 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if state.load_error is not None:
        raise DumaError(f"the models failed to load: {state.load_error}", "check the config's model and backend")


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(serve_command)
