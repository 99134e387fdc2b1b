"""Built-in routers (``duma``, ``always-fast``, ``always-slow``, ``rules``, ``classifier``) and
the ``duma router`` commands (``train``, ``calibrate``, ``score``).

This module is imported when the CLI starts: the router classes live in
:mod:`duma.plugins.builtin_routers` and are imported inside the hooks and commands.
"""

from __future__ import annotations

import json
from pathlib import Path
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


_OPTION_HELP = "Router option KEY VALUE (repeatable), over config agent.router_options; e.g. -o path model.npz"


@duma.hookimpl
def register_commands(cli: Any) -> None:
    @cli.group(name="router")
    def router_group() -> None:
        """Train, calibrate and try the fast/slow routers."""

    @router_group.command(name="train")
    @click.argument("data", type=click.Path(dir_okay=False))
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  help="Model file to write (default: DUMA_HOME/routers/classifier.npz, which the "
                       "classifier router then reads instead of the shipped model).")
    @click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
                  help="Share of turns held out to measure accuracy.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split.")
    def router_train(data: str, out: str | None, holdout: float, seed: int) -> None:
        """Train the 'classifier' router on labelled turns.

        DATA is JSON Lines, a JSON list or Parquet: {"text": ..., "slow": true|false} (or
        "label": 0|1) per item; configs/examples/routers/labelled_turns.jsonl is a sample.
        Fits a scikit-learn logistic regression over hashed word and character n-grams and
        prints JSON with train and held-out accuracy.

        \b
        Example:
          duma router train configs/examples/routers/labelled_turns.jsonl --out router.npz
          duma -S agent.router=classifier -S agent.router_options.path=router.npz chat
        """
        from duma.errors import DumaError
        from duma.plugins.builtin_routers import default_model_path, read_labelled_turns, train_classifier

        turns = read_labelled_turns(data)
        if len({turn.is_slow for turn in turns}) < 2:
            kind = "slow" if turns[0].is_slow else "fast"
            raise DumaError(f"{data}: every labelled turn is {kind}", "label turns of both kinds to train a classifier")
        report = train_classifier(turns, out or default_model_path(), holdout=holdout, seed=seed)
        click.echo(json.dumps(report.model_dump(), indent=2))

    @router_group.command(name="calibrate")
    @click.argument("data", type=click.Path(dir_okay=False))
    @click.option("--router", "router_name", default=None, help="Router to calibrate (default: config agent.router).")
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), required=True,
                  help="Share of turns that should go to the slow mind, e.g. 0.3.")
    @click.option("-o", "--option", "options", type=(str, str), multiple=True, help=_OPTION_HELP)
    @click.option("--save", is_flag=True,
                  help="Write agent.router and agent.router_options (with the threshold) into the config "
                       "file of --config or DUMA_CONFIG, changing only those lines.")
    @pass_state
    def router_calibrate(state: CliState, data: str, router_name: str | None, slow_share: float,
                         options: tuple[tuple[str, str], ...], save: bool) -> None:
        """Pick the threshold that sends a chosen share of turns to the slow mind.

        As RouteLLM does: score representative turns (DATA: items with "text" in JSON Lines,
        a JSON list or Parquet, or a .txt file with one turn per line, such as
        configs/examples/routers/turns.txt) and take the (1 - share) quantile of the scores.
        Prints JSON {router, threshold, slow_share_achieved, n, ...}, then on stderr the -S
        flags and YAML lines that use the threshold.

        \b
        Example:
          duma --config duma.yaml router calibrate configs/examples/routers/turns.txt \\
              --router classifier --slow-share 0.3 --save
        """
        from duma.errors import ConfigError
        from duma.plugins.builtin_routers import calibrate_router, calibrated_settings, read_turn_texts

        if save and not state.config_path:
            raise ConfigError("--save needs the config file to write",
                              "give it with 'duma --config FILE router calibrate ...' or DUMA_CONFIG; "
                              "an empty file is fine")
        if save and not Path(state.config_path).is_file():
            raise ConfigError(f"--save: config file {state.config_path} does not exist",
                              f"create it first (an empty file is fine: touch {state.config_path})")
        router = _make_router(state, router_name, options)
        result = calibrate_router(router, read_turn_texts(data), slow_share)
        used = {key: value for key, value in router.options.items() if key != "threshold"}
        # Distinct scores land within half a turn of the target; further off means ties at the cut.
        if abs(result.slow_share_achieved - slow_share) > 0.5 / result.n + 1e-9:
            click.echo(f"duma: warning: {result.slow_share_achieved:.3f} of the turns reach the threshold, not "
                       f"{slow_share:g}: many turns share one score and the cut falls among them", err=True)
        if save:
            from duma.plugins.builtin_routers import save_router_settings

            _, kept = save_router_settings(state.config_path, router.name, used, result.threshold)
            click.echo(json.dumps({**result.model_dump(), "saved": state.config_path}, indent=2))
            layout = ("other lines and comments unchanged" if kept
                      else "rewritten by pyyaml: the file's comments and layout were not kept")
            click.echo(f"saved agent.router and agent.router_options into {state.config_path} ({layout})", err=True)
            return
        click.echo(json.dumps(result.model_dump(), indent=2))
        settings = calibrated_settings({}, router.name, used, result.threshold)
        flag_keys = [key for key in dict(options) if key != "threshold" and key in settings.options]
        flags = settings.flags([*flag_keys, "threshold"])
        click.echo(f"use it: duma {flags} chat", err=True)
        click.echo("or in the config file (or rerun with --config FILE ... --save to write it there):", err=True)
        click.echo("\n".join(settings.yaml_lines()), err=True)

    @router_group.command(name="score")
    @click.argument("texts", nargs=-1, required=True)
    @click.option("--router", "router_name", default=None, help="Router to use (default: config agent.router).")
    @click.option("-o", "--option", "options", type=(str, str), multiple=True, help=_OPTION_HELP)
    @pass_state
    def router_score(state: CliState, texts: tuple[str, ...], router_name: str | None,
                     options: tuple[tuple[str, str], ...]) -> None:
        """Show a router's score and decision for each TEXT, one JSON object a line:
        {router, text, score, threshold, slow, reason}.

        The 'duma' router (the default) has no score: the fast mind's Invoke[...] decides
        each turn as it replies, so the command stops with an error; pick a scoring router
        (--router rules or classifier) or watch the fast mind with 'duma chat --show-slow'.
        """
        from duma import RouteInput
        from duma.errors import DumaError

        router = _make_router(state, router_name, options)
        if router.defers_to_fast_mind:
            source = "--router" if router_name else "config agent.router"
            raise DumaError(
                f"router '{router.name}' ({source}) has no score: the fast mind's Invoke[...] decides each turn "
                "while it replies",
                "score with 'duma router score --router classifier TEXT' or --router rules; "
                "'duma chat --show-slow' shows the fast mind deciding",
            )
        for text in texts:
            decision = router.route(RouteInput(text=text))
            click.echo(json.dumps({"router": router.name, "text": text, "score": decision.score,
                                   "threshold": router.threshold, "slow": decision.slow,
                                   "reason": _reason(router, text, decision)}, ensure_ascii=False))


def _reason(router: Any, text: str, decision: Any) -> str:
    """Why the router decided so, in words."""
    from duma.plugins.builtin_routers import AlwaysFastRouter, AlwaysSlowRouter, ClassifierRouter, RulesRouter

    mind = "slow" if decision.slow else "fast"
    if isinstance(router, AlwaysFastRouter):
        return "always-fast sends every turn to the fast mind"
    if isinstance(router, AlwaysSlowRouter):
        return "always-slow sends every turn to the slow mind"
    if isinstance(router, RulesRouter):
        rule = router.matching_rule(text)
        return f"matched the rule {rule}: slow mind" if rule else "no rule matched: fast mind"
    comparison = ">=" if decision.slow else "<"
    what = "P(slow)" if isinstance(router, ClassifierRouter) else "score"
    reason = f"{what} {decision.score:.4g} {comparison} threshold {router.threshold:g}: {mind} mind"
    if isinstance(router, ClassifierRouter):
        reason += f" (model {router.path})"
    return reason
