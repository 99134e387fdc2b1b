"""``pt``: continued pre-training. Texts (or rendered conversations) are joined with EOS and
cut into fixed blocks of ``data.max_length`` tokens; the loss falls on every token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from duma.trainers.base import Sample, Trainer
from duma.trainers.config import RunConfig

if TYPE_CHECKING:
    from duma.data import Record


class PTConfig(RunConfig):
    """Run config of the ``pt`` trainer."""

    method: Literal["pt"] = "pt"


def pretraining_text(tokenizer: Any, record: Record) -> str:
    """The text a record adds to the pre-training corpus: a text record as-is, a conversation
    rendered with the chat template (the one renderer)."""
    from duma.data import Conversation, TextRecord

    if isinstance(record, TextRecord):
        return record.text
    if isinstance(record, Conversation):
        from duma.rendering import render_text

        return render_text(tokenizer, record.messages, add_generation_prompt=False)
    from duma.errors import DumaError

    raise DumaError(f"method pt cannot train on {type(record).__name__} records",
                    "use a text or conversation data source")


def pack_blocks(token_lists: list[list[int]], eos_id: int, block: int) -> list[Sample]:
    """Join documents with EOS and cut the stream into blocks of ``block`` tokens (the last,
    shorter block is kept). Each block lists the documents it holds."""
    rows: list[Sample] = []
    cur: list[int] = []
    cur_ids: list[int] = []
    for doc, ids in enumerate(token_lists):
        stream = ids + [eos_id]
        while stream:
            room = block - len(cur)
            cur += stream[:room]
            stream = stream[room:]
            if not cur_ids or cur_ids[-1] != doc:
                cur_ids.append(doc)
            if len(cur) == block:
                rows.append(Sample(cur, list(cur), cur_ids))
                cur, cur_ids = [], []
    if len(cur) > 1:
        rows.append(Sample(cur, list(cur), cur_ids))
    return rows


class PTTrainer(Trainer):
    """Continued pre-training with packing into fixed blocks separated by EOS."""

    name = "pt"
    config_class = PTConfig
    description = "continued pre-training, packed blocks"
    repack = False  # build_samples already cut fixed blocks

    def texts(self, tokenizer: Any) -> list[str]:
        out = []
        for record in self.records():
            out.append(pretraining_text(tokenizer, record))
        return out

    def build_samples(self, tokenizer: Any) -> list[Sample]:
        texts = self.texts(tokenizer)
        tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return pack_blocks(tokens, tokenizer.eos_token_id, self.config.data.max_length)
