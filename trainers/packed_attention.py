"""Attention for packed rows that costs what the samples cost: each packed sample attends
causally within itself, computed sample by sample, instead of over the whole row under a
block-diagonal mask (which spends ``max_length**2`` work per row, most of it masked out: the
varlen idea of flash-attention, on any device).

Registered with transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` as
``duma_packed``; every other call (a padded batch with its mask, decoding with a cache) goes to
the stock ``sdpa`` functions unchanged, so a model set to it also generates as before.
"""

from __future__ import annotations

from typing import Any

NAME = "duma_packed"


def _segments(positions: Any) -> list[tuple[int, int]]:
    """(start, end) of each sample of one row: positions restart at 0 where a sample starts."""
    starts = (positions == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], int(positions.shape[0])]
    return list(zip(starts, ends))


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention per packed sample; the stock sdpa path for anything else."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    positions = kwargs.get("position_ids")
    packed = (attention_mask is None and positions is not None and query.shape[2] == key.shape[2] > 1
              and bool((positions[:, 1:] == 0).any()))
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows = []
    for i in range(query.shape[0]):
        parts = [torch.nn.functional.scaled_dot_product_attention(
            query[i:i + 1, :, s:e], key[i:i + 1, :, s:e], value[i:i + 1, :, s:e],
            dropout_p=dropout if module.training else 0.0, is_causal=True, scale=scaling)
            for s, e in _segments(positions[i])]
        rows.append(torch.cat(parts, dim=2))
    out = torch.cat(rows, dim=0)  # (batch, heads, length, head_dim)
    return out.transpose(1, 2).contiguous(), None


def packed_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for a packed batch (the attention above keeps the samples apart); the stock sdpa
    mask otherwise (a 2D padding mask, or a cache)."""
    from transformers.masking_utils import sdpa_mask

    q_length = kwargs.get("q_length")
    kv_length = kwargs.get("kv_length")
    if kwargs.get("attention_mask") is None and q_length is not None and q_length == kv_length \
            and not kwargs.get("kv_offset") and not kwargs.get("q_offset"):
        return None
    return sdpa_mask(*args, **kwargs)


def use_packed_attention(model: Any) -> str:
    """Switch ``model`` to the packed attention; returns the implementation it had (to restore
    before saving)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, packed_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    return previous
