"""``vocab``: vocabulary expansion (BELLE-LLaMA-EXT). Train a BPE tokenizer on the corpus,
add the pieces (and merges) the base vocabulary lacks, resize the embeddings, then continue
pre-training on the corpus, by default updating only the embeddings. Reports tokens per line
before and after on held-out text (``vocab_report.json`` and the log)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from duma.config import Strict
from duma.errors import DumaError
from duma.trainers.base import Sample, load_padded_tokenizer
from duma.trainers.config import RunConfig, TrainingConfig
from duma.trainers.pt import PTTrainer, pack_blocks, pretraining_text

REPORT_FILE = "vocab_report.json"


class VocabSettings(Strict):
    vocab_size: int = Field(2000, ge=64, description="Size of the BPE tokenizer trained on the corpus.")
    min_frequency: int = Field(2, ge=1)
    heldout: Path | None = Field(None, description="Text file (one sample a line) for the tokens-per-line "
                                                   "report; default: the last 5% of the corpus.")
    embeddings_only: bool = Field(True, description="Train only the (new and old) embeddings.")


class VocabTrainingConfig(TrainingConfig):
    lr: float = Field(1e-3, gt=0)


class VocabConfig(RunConfig):
    """Run config of the ``vocab`` trainer; ``data`` is the (text) corpus."""

    method: Literal["vocab"] = "vocab"
    training: VocabTrainingConfig = Field(default_factory=VocabTrainingConfig)
    vocab: VocabSettings = Field(default_factory=VocabSettings)


def _merge_pair(m: Any) -> tuple[str, str]:
    return (m[0], m[1]) if isinstance(m, (list, tuple)) else tuple(m.split(" ", 1))  # type: ignore[return-value]


def extend_tokenizer(base: Any, texts: list[str], vocab_size: int, min_frequency: int) -> tuple[Any, list[str]]:
    """A copy of ``base`` (an HF fast BPE tokenizer) with the pieces and merges of a BPE
    tokenizer trained on ``texts`` that it lacks; returns it and the added pieces. New merges
    go after the base's, so text the base already handled tokenizes as before."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(base.backend_tokenizer.to_str())
    if spec["model"].get("type") != "BPE":
        raise DumaError("vocabulary expansion needs a BPE tokenizer", f"this base uses {spec['model'].get('type')}")
    fresh = Tokenizer(models.BPE())
    fresh.normalizer = base.backend_tokenizer.normalizer
    fresh.pre_tokenizer = base.backend_tokenizer.pre_tokenizer
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [])
    fresh.train_from_iterator(texts, trainer=trainer)
    fresh_spec = json.loads(fresh.to_str())

    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = spec["model"]["merges"]
    known_merges = {_merge_pair(m) for m in merges}
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    added: list[str] = []

    def add(piece: str) -> None:
        nonlocal next_id
        if piece not in vocab:
            vocab[piece] = next_id
            next_id += 1
            added.append(piece)

    for m in fresh_spec["model"]["merges"]:
        a, b = _merge_pair(m)
        if a + b in vocab:
            continue
        add(a)
        add(b)
        add(a + b)
        if (a, b) not in known_merges:
            merges.append([a, b] if isinstance(merges[0] if merges else [], list) else f"{a} {b}")
            known_merges.add((a, b))
    # Added (special) tokens keep their ids; they were counted in next_id above.
    extended = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(tokenizer_object=extended, **{
        k: getattr(base, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(base, k, None)})
    if getattr(base, "chat_template", None):
        fast.chat_template = base.chat_template
    return fast, added


def tokens_per_line(tokenizer: Any, lines: list[str]) -> float:
    if not lines:
        return 0.0
    return sum(len(tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines) / len(lines)


class VocabTrainer(PTTrainer):
    """Vocabulary expansion plus continued pre-training (embeddings only by default)."""

    name = "vocab"
    config_class = VocabConfig
    description = "BELLE-LLaMA-EXT vocabulary expansion + embedding training"

    def load_tokenizer(self) -> Any:
        base = load_padded_tokenizer(self.model_folder)
        cfg: VocabSettings = self.config.vocab  # type: ignore[attr-defined]
        self._texts = []
        for record in self.records():
            self._texts.append(pretraining_text(base, record))
        if cfg.heldout is not None:
            if not Path(cfg.heldout).is_file():
                raise DumaError(f"vocab.heldout file {cfg.heldout} does not exist", "check the path")
            heldout = [ln for ln in Path(cfg.heldout).read_text(encoding="utf-8").splitlines() if ln.strip()]
            corpus = self._texts
        else:
            cut = max(1, len(self._texts) // 20)
            heldout, corpus = self._texts[-cut:], self._texts[:-cut] or self._texts
        extended, added = extend_tokenizer(base, corpus, cfg.vocab_size, cfg.min_frequency)
        before, after = tokens_per_line(base, heldout), tokens_per_line(extended, heldout)
        self.report = {"base_vocab": len(base), "new_vocab": len(extended), "added_pieces": len(added),
                       "heldout_lines": len(heldout), "tokens_per_line_before": round(before, 3),
                       "tokens_per_line_after": round(after, 3)}
        self.data_counts.extra["vocab"] = self.report
        return extended

    def build_samples(self, tokenizer: Any) -> list[Sample]:
        tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in self._texts]
        return pack_blocks(tokens, tokenizer.eos_token_id, self.config.data.max_length)

    def load_model(self) -> Any:
        model = super().load_model()
        model.resize_token_embeddings(len(self.tokenizer))
        return model

    def prepare_model(self, model: Any) -> Any:
        if self.config.vocab.embeddings_only:  # type: ignore[attr-defined]
            keep = {id(model.get_input_embeddings().weight)}
            out_emb = model.get_output_embeddings()
            if out_emb is not None:
                keep.add(id(out_emb.weight))
            for p in model.parameters():
                p.requires_grad_(id(p) in keep)
        return model

    def save_final(self, model: Any, folder: Path) -> None:
        super().save_final(model, folder)
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2))
