"""The ``search_knowledge`` tool: BM25 (Okapi) over a folder of ``.md``/``.txt`` files.

Files are split into paragraph chunks (a Markdown heading travels with the paragraph under
it, so a chunk names its topic). Tokens are lower-cased English words and numbers, and
single CJK characters plus CJK character bigrams (Chinese has no spaces between words).
The index of a folder is built on first use and rebuilt when any file's size or mtime
changes, a file appears or a file goes away.

The registered tool reads the folder from config ``agent.knowledge_dir`` (through
:func:`duma.config.load_config`) when it runs; an agent built from an explicit config should
use :func:`make_knowledge_tool` with its own folder instead.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.tools import BaseTool

from duma.plugins.tools.common import ToolException, make_tool

KNOWLEDGE_SUFFIXES = (".md", ".txt", ".markdown")
DEFAULT_TOP_K = 3
MAX_CHUNK_CHARS = 1200  # longer paragraphs are split at line or sentence ends
MAX_SHOWN_CHARS = 700  # what one hit shows the slow mind
MAX_FILE_BYTES = 5_000_000
MAX_FILES = 10_000
RELATIVE_CUTOFF = 0.3  # hits scoring under this share of the best hit are not shown

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_CJK_RUN = re.compile(rf"^[{_CJK}]+$")
STOPWORDS = frozenset(
    """a an and are as at be but by can do does for from has have how i if in is it its of on or
    our so that the their there these this to was we what when where which who why will with
    you your me my about into than then them they he she his her not no yes""".split()
)


def tokenize(text: str) -> list[str]:
    """English words/numbers (lower-case, stop words dropped, plurals folded) and CJK unigrams
    + bigrams."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group(0)
        if _CJK_RUN.match(word):
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


class BM25:
    """BM25 Okapi with the non-negative idf ``log(1 + (N - n + 0.5) / (n + 0.5))``."""

    def __init__(self, documents: list[list[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.term_counts = [Counter(doc) for doc in documents]
        self.lengths = [len(doc) for doc in documents]
        self.average_length = (sum(self.lengths) / len(documents)) if documents else 0.0
        document_frequency: Counter[str] = Counter()
        for counts in self.term_counts:
            document_frequency.update(counts.keys())
        n = len(documents)
        self.idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in document_frequency.items()}

    def scores(self, query: list[str]) -> list[float]:
        out = []
        for counts, length in zip(self.term_counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / (self.average_length or 1.0))
            score = 0.0
            for term in query:
                tf = counts.get(term, 0)
                if tf:
                    score += self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
            out.append(score)
        return out


@dataclass
class KnowledgeIndex:
    folder: Path
    signature: tuple[tuple[str, int, int], ...]
    chunks: list[Chunk] = field(default_factory=list)
    bm25: BM25 | None = None

    def search(self, query: str, k: int = DEFAULT_TOP_K) -> list[tuple[Chunk, float]]:
        """The best ``k`` chunks with their scores, best first."""
        terms = tokenize(query)
        if not terms or self.bm25 is None:
            return []
        scores = self.bm25.scores(terms)
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
        index = KnowledgeIndex(root, signature, chunks, BM25([tokenize(c.text) for c in chunks]) if chunks else None)
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


def configured_knowledge_dir() -> Path | None:
    """``agent.knowledge_dir`` from the configuration file and environment."""
    from duma.config import load_config
    from duma.errors import DumaError

    try:
        return load_config().agent.knowledge_dir
    except DumaError as exc:  # a broken config file should read as an observation, not a crash
        raise ToolException(f"cannot read the configuration: {exc}") from None


def search_knowledge(query: str) -> str:
    """Search the configured knowledge base for passages about the query."""
    folder = configured_knowledge_dir()
    if folder is None:
        return NO_FOLDER_MESSAGE
    return search_folder(folder, query)


def make_knowledge_tool(folder: str | Path | None, k: int = DEFAULT_TOP_K) -> BaseTool:
    """A ``search_knowledge`` tool bound to ``folder`` (None: it says no knowledge base is set)."""

    def search_knowledge(query: str) -> str:
        """Search the knowledge base for passages about the query."""
        if folder is None:
            return NO_FOLDER_MESSAGE
        return search_folder(folder, query, k)

    return make_tool(search_knowledge, "search_knowledge", _DESCRIPTION)


search_knowledge_tool = make_tool(search_knowledge, "search_knowledge", _DESCRIPTION)
