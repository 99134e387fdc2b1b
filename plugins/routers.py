"""Built-in routers (``duma``, ``always-fast``, ``always-slow``, ``rules``, ``classifier``) and
the ``duma router`` commands (``train``, ``calibrate``, ``score``).

This module is imported when the CLI starts: the router classes live in
:mod:`duma.plugins.builtin_routers` and are imported inside the hooks and commands.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

import duma
from duma import pass_state

if TYPE_CHECKING:
    from duma.cli import CliState


@duma.hookimpl
def register_routers(register: Any) -> None:
    from duma.plugins.builtin_routers import BUILTIN_ROUTERS

    for router_cls in BUILTIN_ROUTERS:
        register(router_cls)


def __getattr__(name: str) -> Any:
    # The router classes and helpers load lazily: ``from duma.plugins.routers import RulesRouter``.
    import duma.plugins.builtin_routers as builtin

    if hasattr(builtin, name):
        return getattr(builtin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _router_options(state: CliState, router: str, options: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Options from config ``agent.router_options`` when it configures this router, then ``-o``."""
    from duma.config import set_path

    merged: dict[str, Any] = {}
    if state.config.agent.router == router:
        merged.update(state.config.agent.router_options)
    for key, value in options:
        set_path(merged, key, value)
    return merged


def _make_router(state: CliState, name: str | None, options: tuple[tuple[str, str], ...]) -> Any:
    from duma import host

    name = name or state.config.agent.router
    router_cls = host.get("router", name)
    return router_cls(_router_options(state, name, options))


def _write_router_settings(path: str, router: str, options: dict[str, Any], threshold: float) -> None:
    """Merge ``agent.router`` and ``agent.router_options`` (with the threshold) into a YAML file."""
    from pathlib import Path

    import yaml

    from duma.config import read_yaml

    target = Path(path)
    data = read_yaml(target) if target.exists() else {}
    agent = data.setdefault("agent", {})
    if not isinstance(agent, dict):
        raise click.ClickException(f"{path}: 'agent' is not a mapping")
    previous = agent.get("router_options") if agent.get("router") == router else None
    router_options = dict(previous or {})
    router_options.update({k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})
    router_options["threshold"] = threshold
    agent["router"] = router
    agent["router_options"] = router_options
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


_OPTION_HELP = "Router option KEY VALUE (repeatable), over config agent.router_options; e.g. -o path model.npz"


@duma.hookimpl
def register_commands(cli: Any) -> None:
    @cli.group(name="router")
    def router_group() -> None:
        """Train, calibrate and try the fast/slow routers."""

    @router_group.command(name="train")
    @click.argument("data", type=click.Path(dir_okay=False))
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  help="Model file to write (default: DUMA_HOME/routers/classifier.npz).")
    @click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
                  help="Share of turns held out to measure accuracy.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split.")
    def router_train(data: str, out: str | None, holdout: float, seed: int) -> None:
        """Train the 'classifier' router on labelled turns.

        DATA is JSON Lines, a JSON list or Parquet: {"text": ..., "slow": true|false} (or
        "label": 0|1) per item. Fits a scikit-learn logistic regression over hashed word and
        character n-grams and prints JSON with train and held-out accuracy; use the model with
        agent.router: classifier and agent.router_options.path.
        """
        from duma.plugins.builtin_routers import default_model_path, read_labelled_turns, train_classifier

        turns = read_labelled_turns(data)
        report = train_classifier(turns, out or default_model_path(), holdout=holdout, seed=seed)
        click.echo(json.dumps(report.model_dump(), indent=2))

    @router_group.command(name="calibrate")
    @click.argument("data", type=click.Path(dir_okay=False))
    @click.option("--router", "router_name", default=None, help="Router to calibrate (default: config agent.router).")
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), required=True,
                  help="Share of turns that should go to the slow mind, e.g. 0.3.")
    @click.option("-o", "--option", "options", type=(str, str), multiple=True, help=_OPTION_HELP)
    @click.option("--write", "write_path", type=click.Path(dir_okay=False), default=None,
                  help="Also write agent.router and agent.router_options (with the threshold) into this "
                       "YAML config file, merging with what is there (comments are not kept).")
    @pass_state
    def router_calibrate(state: CliState, data: str, router_name: str | None, slow_share: float,
                         options: tuple[tuple[str, str], ...], write_path: str | None) -> None:
        """Pick the threshold that sends a chosen share of turns to the slow mind.

        As RouteLLM does: score representative turns (DATA: items with "text" in JSON Lines,
        a JSON list or Parquet, or a .txt file with one turn per line) and take the
        (1 - share) quantile of the scores. Prints JSON {threshold, slow_share_achieved, n, ...}.
        """
        from duma.plugins.builtin_routers import calibrate_router, read_turn_texts

        router = _make_router(state, router_name, options)
        result = calibrate_router(router, read_turn_texts(data), slow_share)
        if write_path:
            used = {k: v for k, v in router.options.items() if k != "threshold"}
            _write_router_settings(write_path, router.name, used, result.threshold)
        click.echo(json.dumps({**result.model_dump(), **({"written": write_path} if write_path else {})}, indent=2))

    @router_group.command(name="score")
    @click.argument("texts", nargs=-1, required=True)
    @click.option("--router", "router_name", default=None, help="Router to use (default: config agent.router).")
    @click.option("-o", "--option", "options", type=(str, str), multiple=True, help=_OPTION_HELP)
    @pass_state
    def router_score(state: CliState, texts: tuple[str, ...], router_name: str | None,
                     options: tuple[tuple[str, str], ...]) -> None:
        """Show a router's score and decision for each TEXT (one JSON object a line)."""
        from duma import RouteInput

        router = _make_router(state, router_name, options)
        for text in texts:
            decision = router.route(RouteInput(text=text))
            click.echo(json.dumps({"text": text, "score": decision.score, "slow": decision.slow,
                                   "threshold": None if router.defers_to_fast_mind else router.threshold},
                                  ensure_ascii=False))
