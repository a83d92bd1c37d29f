"""Pieces of SAM's ViT block forward, for methods that change what happens inside a block (VPT, Mona).

`segment_anything.modeling.image_encoder.Block.forward` is
    x = x + unpartition(attn(partition(norm1(x))));  x = x + mlp(norm2(x))
`attention_branch` is its first residual branch with the attention call replaceable, so an adapted block
re-uses SAM's own modules and window helpers instead of a copy of the whole block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    add_decomposed_rel_pos,
    window_partition,
    window_unpartition,
)


def attention_branch(block: Block, x: torch.Tensor, attend: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """`unpartition(attend(partition(norm1(x))))` of a SAM block; x (B, H, W, C) -> (B, H, W, C).

    `attend` maps (B', h, w, C) windows (or the whole map in global blocks) to the same shape; default block.attn.
    """
    attend = attend or block.attn
    h = block.norm1(x)
    if block.window_size > 0:
        height, width = h.shape[1], h.shape[2]
        windows, pad_hw = window_partition(h, block.window_size)
        return window_unpartition(attend(windows), block.window_size, pad_hw, (height, width))
    return attend(h)


def attention_with_extra_keys(attn: Attention, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """SAM's Attention.forward with `extra` tokens joined to the keys and values of every sequence.

    x: (B', h, w, C) windows; extra: (P, C) tokens already normalised, shared by all sequences (they carry no
    sample information, so no batch mixing is possible). Relative position terms apply to the patch keys only.
    The extra tokens' own queries are not computed: the caller discards their outputs.
    Returns (B', h, w, C).
    """
    b, h, w, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, h * w, -1)
    extra_kv = attn.qkv(extra)[:, c:].reshape(-1, 2, heads, c // heads).permute(1, 2, 0, 3)  # (2, heads, P, hd)
    extra_k, extra_v = (t.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * heads, -1, c // heads) for t in extra_kv)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
    logits = torch.cat([(q * attn.scale) @ extra_k.transpose(-2, -1), logits], dim=-1).softmax(dim=-1)
    out = logits @ torch.cat([extra_v, v], dim=1)
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)
