"""Log-probabilities of label tokens under a causal LM, shared by the methods that score
whole sequences (DPO's policy and reference, and any later preference method)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from duma.rendering import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, segments: Sequence[Sequence[int]] | None = None,
                   *, average: bool = False) -> torch.Tensor:
    """Summed log-probabilities of the label tokens (labels != -100), shifted as for a causal
    LM (the logits at t score the label at t+1), computed in float32.

    Without ``segments``: one sum per row, shape ``(rows,)``. With ``segments`` (per row, the
    lengths of the samples packed into it, as :attr:`Sample.segments`; empty for a row of
    one sample): one sum per sample, rows in order, so a packed row gives one value per
    packed sample. The first token of a packed sample is not scored there: it would be
    predicted from the previous sample. ``average``: the mean per label token instead
    (0 where there is none).
    """
    import torch

    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    # log_softmax(x)[y] = x[y] - logsumexp(x), without a second (rows, len, vocab) tensor.
    token_logps = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    token_logps = token_logps.masked_fill(~mask, 0.0)
    if segments is None:
        sums, counts = token_logps.sum(-1), mask.sum(-1)
    else:
        # Shifted position t scores token t+1: it belongs to the segment holding t+1.
        owner = torch.full(targets.shape, -1, dtype=torch.long, device=labels.device)
        n_segments = 0
        for row, lengths in enumerate(segments):
            start = 0
            for length in (lengths or [labels.shape[1]]):
                # Positions start..start+length-2 score tokens start+1..start+length-1.
                owner[row, start:start + length - 1] = n_segments
                start += length
                n_segments += 1
        scored = mask & (owner >= 0)
        index = owner.clamp(min=0)[scored]
        sums = token_logps.new_zeros(n_segments).index_add_(0, index, token_logps[scored])
        counts = index.new_zeros(n_segments).index_add_(0, index, torch.ones_like(index))
    if average:
        return sums / counts.clamp(min=1)
    return sums
