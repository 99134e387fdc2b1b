"""The ``search_knowledge`` tool: BM25 (:mod:`bm25s`) over a folder of ``.md``/``.txt`` files.

Files are split into paragraph chunks (a Markdown heading travels with the paragraph under
it, so a chunk names its topic). Tokens are lower-cased English words and numbers (stop words
dropped, plurals folded), Chinese words as :mod:`jieba` segments them (in search mode, so
``保修期`` also yields ``保修``), and Japanese kana as characters plus character bigrams. The
index of a folder is built on first use and rebuilt when any file's size or mtime changes, a
file appears or a file goes away.

Each agent gets its own tool, bound to its ``agent.knowledge_dir``: the plugin registers
:func:`knowledge_tool_from_config`, which the host calls with the agent's configuration.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool

from duma.plugins.tools.common import ToolException, make_tool

if TYPE_CHECKING:
    import duma

KNOWLEDGE_TOOL_NAME = "search_knowledge"
KNOWLEDGE_SUFFIXES = (".md", ".txt", ".markdown")
DEFAULT_TOP_K = 3
MAX_CHUNK_CHARS = 1200  # longer paragraphs are split at line or sentence ends
MAX_SHOWN_CHARS = 700  # what one hit shows the slow mind
MAX_FILE_BYTES = 5_000_000
MAX_FILES = 10_000
RELATIVE_CUTOFF = 0.3  # hits scoring under this share of the best hit are not shown
BM25_K1 = 1.5
BM25_B = 0.75

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = r"\u3040-\u30ff"
_TOKEN = re.compile(rf"(?P<han>[{_HAN}]+)|(?P<kana>[{_KANA}]+)|[^\W_{_HAN}{_KANA}]+(?:['’][^\W_{_HAN}{_KANA}]+)?")
STOPWORDS = frozenset(
    """a an and are as at be but by can do does for from has have how i if in is it its of on or
    our so that the their there these this to was we what when where which who why will with
    you your me my about into than then them they he she his her not no yes""".split()
)
# Particles, pronouns and question words: every Chinese question has some, no passage is about them.
CHINESE_STOPWORDS = frozenset(
    """的 了 吗 呢 吧 啊 呀 是 在 和 与 或 我 你 您 他 她 它 我们 你们 他们 这 那 这个 那个 什么 怎么
    怎么样 如何 哪 哪里 哪儿 多少 多久 几 请问""".split()
)


@functools.cache
def _chinese_segmenter() -> Any:
    """jieba, loaded on first Chinese text, with its "Building prefix dict" log lines silenced."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokenize(text: str) -> list[str]:
    """English words/numbers (lower-case, stop words dropped, plurals folded), Chinese words
    (jieba, search mode) and kana unigrams + bigrams."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group(0)
        if match.group("han"):
            tokens.extend(w for w in _chinese_segmenter().cut_for_search(word) if w not in CHINESE_STOPWORDS)
        elif match.group("kana"):
            tokens.extend(word)
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        elif word not in STOPWORDS:
            tokens.append(_light_stem(word))
    return tokens


def _light_stem(word: str) -> str:
    """Fold possessives and plurals so that "kettles" and "kettle's" find "kettle"."""
    word = re.sub(r"['’]s$", "", word)
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass
class Chunk:
    source: str  # file path relative to the knowledge folder
    text: str


def _split_long(paragraph: str) -> list[str]:
    if len(paragraph) <= MAX_CHUNK_CHARS:
        return [paragraph]
    pieces = re.split(r"(?<=[.!?。！？])\s+|\n", paragraph)
    out, current = [], ""
    for piece in pieces:
        if current and len(current) + len(piece) + 1 > MAX_CHUNK_CHARS:
            out.append(current)
            current = ""
        current = f"{current} {piece}".strip()
    if current:
        out.append(current)
    return out


def _looks_like_plain_heading(lines: list[str]) -> bool:
    """A short single line without end punctuation, as plain-text files write headings."""
    line = lines[0].strip()
    return len(lines) == 1 and 0 < len(line) <= 60 and line[-1] not in ".!?:;,。！？：；，)"


def split_chunks(text: str, source: str) -> list[Chunk]:
    """Paragraph chunks; a heading is prefixed to the paragraphs under it."""
    chunks: list[Chunk] = []
    heading = ""
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        lines = block.split("\n")
        if lines[0].lstrip().startswith("#") or _looks_like_plain_heading(lines):
            heading = lines[0].lstrip("# ").strip()
            lines = lines[1:]
            if not lines:
                continue  # a heading on its own: it will prefix the next paragraph
        body = "\n".join(lines).strip()
        for piece in _split_long(body):
            chunks.append(Chunk(source, f"{heading}: {piece}" if heading else piece))
    return chunks


def build_bm25(documents: list[list[str]]) -> Any:
    """A :class:`bm25s.BM25` index (Lucene's BM25, non-negative idf) of tokenised documents."""
    import bm25s

    index = bm25s.BM25(k1=BM25_K1, b=BM25_B)
    index.index(documents, show_progress=False)
    return index


@dataclass
class KnowledgeIndex:
    folder: Path
    signature: tuple[tuple[str, int, int], ...]
    chunks: list[Chunk] = field(default_factory=list)
    bm25: Any = None  # bm25s.BM25, None when there are no chunks

    def search(self, query: str, k: int = DEFAULT_TOP_K) -> list[tuple[Chunk, float]]:
        """The best ``k`` chunks with their scores, best first."""
        terms = tokenize(query)
        if not terms or self.bm25 is None:
            return []
        scores = [float(s) for s in self.bm25.get_scores(terms)]
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        best = scores[ranked[0]] if ranked else 0.0
        # Passages far below the best one are noise from common words; leave them out.
        return [(self.chunks[i], scores[i]) for i in ranked[:k] if scores[i] > 0 and scores[i] >= RELATIVE_CUTOFF * best]


def _knowledge_files(folder: Path) -> list[Path]:
    """The .md/.txt files under ``folder`` (hidden ones skipped), at most ``MAX_FILES``."""
    found = []
    for p in folder.rglob("*"):
        if p.suffix.lower() in KNOWLEDGE_SUFFIXES and p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts
        ):
            found.append(p)
            if len(found) >= MAX_FILES:  # a knowledge_dir pointed at a home folder stays bounded
                break
    return sorted(found)


def _signature(folder: Path, files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in files:
        st = p.stat()
        out.append((p.relative_to(folder).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


_cache: dict[Path, KnowledgeIndex] = {}
_cache_lock = threading.Lock()


def load_index(folder: str | Path) -> KnowledgeIndex:
    """The BM25 index of a folder, cached per folder and rebuilt when its files change."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ToolException(f"the knowledge folder {str(folder)!r} does not exist or is not a folder")
    files = _knowledge_files(root)
    signature = _signature(root, files)
    with _cache_lock:
        cached = _cache.get(root)
        if cached is not None and cached.signature == signature:
            return cached
        chunks: list[Chunk] = []
        for path in files:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            chunks.extend(split_chunks(text, path.relative_to(root).as_posix()))
        index = KnowledgeIndex(root, signature, chunks, build_bm25([tokenize(c.text) for c in chunks]) if chunks else None)
        _cache[root] = index
        return index


def _shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    # Square brackets would be read as the end of Obs[...] by the protocol: show parentheses.
    text = " ".join(text.split()).replace("[", "(").replace("]", ")")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def search_folder(folder: str | Path, query: str, k: int = DEFAULT_TOP_K) -> str:
    """The top-k passages for ``query`` as ``[file] text`` lines, best first."""
    if not isinstance(query, str) or not query.strip():
        raise ToolException("give a search query, e.g. search_knowledge(refund policy)")
    index = load_index(folder)
    if not index.chunks:
        return f"The knowledge folder {str(folder)!r} has no .md or .txt files."
    hits = index.search(query, k)
    if not hits:
        return f"No passage in the knowledge base matches {query!r}."
    return "\n".join(f"[{chunk.source}] {_shorten(chunk.text)}" for chunk, _ in hits)


NO_FOLDER_MESSAGE = (
    "No knowledge base is configured (set agent.knowledge_dir to a folder of .md/.txt files), "
    "so there is nothing to search."
)
_DESCRIPTION = ("Search the user's documents.\n"
                "Answers the best-matching passages of the knowledge base with their file names.")


def make_knowledge_tool(folder: str | Path | None, k: int = DEFAULT_TOP_K) -> BaseTool:
    """A ``search_knowledge`` tool bound to ``folder`` (None: it says no knowledge base is set)."""

    def search_knowledge(query: str) -> str:
        """Search the knowledge base for passages about the query."""
        if folder is None:
            return NO_FOLDER_MESSAGE
        return search_folder(folder, query, k)

    return make_tool(search_knowledge, KNOWLEDGE_TOOL_NAME, _DESCRIPTION)


def knowledge_tool_from_config(config: duma.DumaConfig) -> BaseTool:
    """The ``search_knowledge`` tool of one agent: it searches the agent's ``agent.knowledge_dir``."""
    return make_knowledge_tool(config.agent.knowledge_dir)
