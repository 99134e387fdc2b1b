"""A langchain-core tool: its name is what the slow mind writes in ``Act[word_count(...)]``."""

from __future__ import annotations

from langchain_core.tools import tool


@tool
def word_count(text: str) -> str:
    """Count the words in a text (words are separated by white space)."""
    return str(len(text.split()))
