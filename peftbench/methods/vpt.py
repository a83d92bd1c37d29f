"""VPT-deep (Jia et al., 2022) inside SAM's windowed ViT: new learnable prompt tokens in every encoder block.

As VPT's own windowed (Swin) implementation and the SAM ports of it do:
- block i owns P prompts (P, C); they enter the block like tokens (through norm1 and qkv) and are joined to the
  keys/values of every attention window in windowed blocks, of the whole map in global blocks;
- relative position terms apply to patch tokens only (prompts have no position);
- the prompt outputs are dropped after the block (deep prompts are replaced at the next block), so the prompts'
  own queries and MLP are not computed: skipping them changes no output;
- prompts are parameters shared by all samples, so nothing ever flows between the samples of a batch (the
  window-major expansion bug of VPT's official Swin code, KMnP/vpt swin_transformer.py, cannot occur);
- init uniform(-v, v) with v = sqrt(6 / (3 p^2 + C)) (VPT's "xavier" init, p = patch size).
12 tokens per block: 32 x 12 x 1280 = 491,520 on vit_h, the paper's 0.49 M (Table 1: 4.00 M with the decoder).
Not mergeable: the prompts lengthen every attention sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn

from .base import Method, MethodConfig, replace_module
from .registry import register_family
from .vit import attention_branch, attention_with_extra_keys


class PromptedBlock(nn.Module):
    """A frozen SAM block whose attention also attends to `num_tokens` learnable prompts. x: (B, H, W, C)."""

    def __init__(self, block: Block, num_tokens: int, patch_size: int) -> None:
        super().__init__()
        self.block = block
        dim = block.norm1.normalized_shape[0]
        bound = math.sqrt(6.0 / (3 * patch_size**2 + dim))
        self.prompts = nn.Parameter(torch.empty(num_tokens, dim, device=block.norm1.weight.device))
        nn.init.uniform_(self.prompts, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        prompts = block.norm1(self.prompts)
        x = x + attention_branch(block, x, lambda t: attention_with_extra_keys(block.attn, t, prompts))
        return x + block.mlp(block.norm2(x))


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    num_tokens: int = 12  # prompt tokens per block


@register_family
class VPT(Method):
    family = "vpt"
    config_class = VPTConfig
    merge_kind = "none"
    encoder_trainable = r"blocks\.\d+\.prompts"
    needs_sam = True

    def attach(self, model: nn.Module) -> nn.Module:
        encoder = model.image_encoder
        patch = encoder.patch_embed.proj.kernel_size[0]
        for i, block in enumerate(encoder.blocks):
            replace_module(encoder.blocks, str(i), PromptedBlock(block, self.config.num_tokens, patch))
        return model
