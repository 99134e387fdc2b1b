"""Every hook duma calls. Plugins implement them with ``@duma.hookimpl``.

The ``register_*`` hooks receive a ``register`` callback (simonw/llm's convention). Each
component has a ``name``: ``register(component)`` uses ``component.name``, and
``register(component, name="other")`` overrides it. Two plugins registering the same name
for the same kind is an error naming both.

duma calls a ``register_*`` hook lazily, the first time that kind of component is needed
(``duma plugins`` calls all of them). A hook that raises is reported as one warning naming
the plugin; the other plugins' components stay available (``DUMA_STRICT_PLUGINS=1`` makes
it an error). Hook modules are imported when the CLI starts, so import heavy libraries
(torch, transformers, langchain) inside the functions, not at module top level.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("duma")
hookimpl = pluggy.HookimplMarker("duma")

Register = Callable[..., None]


@hookspec
def register_data_sources(register: Register) -> None:
    """Register training-data readers.

    ``register(source_cls)``: a class with a ``name`` (e.g. ``"belle"``) that reads files
    into validated records. Called when ``duma data`` or ``duma train`` looks up a source.
    """


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainers.

    ``register(trainer_cls)``: a class with a ``name`` (e.g. ``"sft"``) and its own pydantic
    config. Called when ``duma train`` resolves the ``method`` of a run config.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register inference backends.

    ``register(backend_cls)``: a :class:`duma.backend.Backend` subclass with a ``name``
    (e.g. ``"transformers"``). Called when a model spec names its ``backend``.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizers.

    ``register(quantizer_cls)``: a :class:`duma.quantizer.Quantizer` subclass with a ``name``
    (e.g. ``"gguf"``) that writes a smaller copy of a model. Called when ``duma quantize``
    (or a backend converting a model on first use) looks up a method.
    """


@hookspec
def register_routers(register: Register) -> None:
    """Register fast/slow routers.

    ``register(router_cls)``: a class with a ``name`` (e.g. ``"rules"``) that scores a turn
    and decides whether the slow mind runs. Called when the agent is built.
    """


@hookspec
def register_tools(register: Register) -> None:
    """Register tools for the slow mind.

    ``register(tool)``: a langchain-core ``BaseTool`` (e.g. from ``@tool``); its ``name`` is
    what the slow mind writes in ``Act[name(args)]``. A tool that depends on the agent's
    configuration registers a factory instead: ``register(factory, name="search_knowledge")``,
    where ``factory(config: DumaConfig) -> BaseTool`` is called once for each agent that is
    built. Called when the agent is built.
    """


@hookspec
def register_judges(register: Register) -> None:
    """Register answer judges for evaluation.

    ``register(judge_cls)``: a class with a ``name`` (e.g. ``"exact"``) that scores an answer
    0-1. Called by ``duma eval``.
    """


@hookspec
def register_rewards(register: Register) -> None:
    """Register verifiable rewards for reinforcement learning (the ``grpo`` trainer).

    ``register(reward_cls)``: a class with a ``name`` (e.g. ``"exact"``), constructed without
    arguments, whose ``score(prompt_messages, completion, answer) -> float`` scores one sampled
    completion: ``prompt_messages`` the prompt as ``{"role", "content"}`` dicts, ``completion``
    the decoded text, ``answer`` the record's reference answer (or None). Keep it pure and fast:
    it runs for every completion of every step. Called when a ``grpo`` run resolves
    ``grpo.rewards``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add CLI commands.

    Receives the root ``click.Group``; add commands with ``@cli.command()`` or
    ``cli.add_command(...)``. Called once when the ``duma`` CLI starts.
    """


# The register_* hooks and the component kind each one registers.
COMPONENT_HOOKS: dict[str, str] = {
    "data_source": "register_data_sources",
    "trainer": "register_trainers",
    "backend": "register_backends",
    "quantizer": "register_quantizers",
    "router": "register_routers",
    "tool": "register_tools",
    "judge": "register_judges",
    "reward": "register_rewards",
}
