"""Speed-ups that leave results unchanged up to float precision, each behind a run flag.

- `cache_embeddings`: when no image-encoder parameter trains (decoder-only), the frozen encoder's output for an
  input (image index and flip) never changes, so it is computed once and reused in later epochs.
- `use_sdpa`: SAM's attention through `scaled_dot_product_attention`, the decomposed relative-position term
  passed as the additive mask (fused kernels on GPUs).
- `checkpoint_blocks`: activation checkpointing of the encoder blocks, trading recomputation for memory
  (vit_h at 1024 px, batch 4 on a 16 GB GPU).
SDPA and checkpointing replace the `forward` of SAM's module instances, so parameter names, adapters that
wrap `qkv` (LoRA family) and blocks wrapped by adapters (VPT, Mona) keep working unchanged.
"""

from __future__ import annotations

import types
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn
from torch.utils.checkpoint import checkpoint


class CachedEncoder(nn.Module):
    """A frozen image encoder whose outputs are stored per input key while `keys` are set.

    images (B, 3, S, S) -> embeddings (B, C, h, w). Stored on the CPU in the dtype computed (exact reuse).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.store: dict[tuple, torch.Tensor] = {}
        self.keys: list[tuple] | None = None

    @contextmanager
    def reusing(self, keys: list[tuple]):
        self.keys = keys
        try:
            yield
        finally:
            self.keys = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.keys is None:
            return self.encoder(images)
        todo = [i for i, k in enumerate(self.keys) if k not in self.store]
        if todo:
            with torch.no_grad():
                fresh = self.encoder(images[todo])
            for i, emb in zip(todo, fresh):
                self.store[self.keys[i]] = emb.cpu()
        return torch.stack([self.store[k] for k in self.keys]).to(images.device, non_blocking=True)


def encoder_is_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in model.image_encoder.parameters())


def embedding_cache(model: nn.Module, enabled: bool = True):
    """Cache `model`'s image embeddings when its encoder is frozen. Returns `cache_for(split)`: for a batch's input keys
    (see SegmentationDataset), the context under which the model reuses stored embeddings (a no-op without cache),
    and `release()`, which puts the real encoder back (inference must time it)."""
    cache = None
    if enabled and encoder_is_frozen(model):
        cache = model.image_encoder = CachedEncoder(model.image_encoder)

    def cache_for(split: str):
        def context(keys):
            if cache is None or keys is None:
                return nullcontext()
            return cache.reusing([(split, int(k)) for k in keys])
        return context

    def release() -> None:
        if cache is not None:
            model.image_encoder = cache.encoder
    return cache_for, release


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention.forward of segment_anything with the same maths through F.scaled_dot_product_attention."""
    b, h, w, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nH, L, d)
    mask = None
    if self.use_rel_pos:
        rh, rw = get_rel_pos(h, h, self.rel_pos_h), get_rel_pos(w, w, self.rel_pos_w)
        r_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def use_sdpa(model: nn.Module) -> int:
    """Route every SAM Attention of `model` through SDPA; returns how many were switched."""
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    for attn in attentions:
        attn.forward = types.MethodType(_sdpa_forward, attn)
    return len(attentions)


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing for every encoder block (SAM's, or an adapter's wrapper of one)."""
    blocks = next(m for n, m in model.image_encoder.named_modules() if n.split(".")[-1] == "blocks")
    for block in blocks:
        block.forward = types.MethodType(_checkpointed(block.forward), block)
    return len(blocks)


def _checkpointed(plain):
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Note: modules with running statistics (NAS-LoRA's BatchNorm) update them again during recomputation.
        return checkpoint(plain, x, use_reentrant=False) if torch.is_grad_enabled() else plain(x)
    return forward
