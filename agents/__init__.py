"""The DUMA agent: a fast mind that talks and a slow mind that thinks with tools.

``from duma.agents import Agent, Reply``. Imports no torch: models load on the first turn.
"""

from __future__ import annotations

from .agent import Agent, Reply

__all__ = ["Agent", "Reply"]
