"""Mona (Yin et al., CVPR 2025, "5%>100%"): two multi-cognitive visual adapters per encoder block.

As the official code's `Mona`/`MonaOp` (Leiyi-Hu/mona), placed in SAM's block as in its Swin backbone:
after the attention residual and after the MLP residual, on the full (unpartitioned) map.
  z = LN(x) * gamma + x * gammax            (scaled LayerNorm; gamma = 1e-6, gammax = 1)
  z = down(z)                               (C -> 64)
  z = z + (dw3(z) + dw5(z) + dw7(z)) / 3    (depthwise convs on the H x W map)
  z = z + conv1x1(z)
  out = x + up(dropout_0.1(GELU(z)))        (64 -> C)
Down/up projections are trunc-normal(std 0.02) with zero bias as the reference backbone's init; convs keep
PyTorch's default init, so Mona is near (not exactly) the identity at init.
Parameters: 179,968 per Mona at C = 1280, 64 Monas on vit_h = 11.52 M, 15.02 M with the decoder. The paper's
Table 1 prints 17.08 M; the reference module with its fixed 64-d bottleneck cannot reach that number, and we
keep the reference module. Not mergeable (LayerNorm, GELU and convolutions in a sequential residual adapter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block
from torch import nn

from .base import Method, MethodConfig, replace_module
from .registry import register_family
from .vit import attention_branch


class Mona(nn.Module):
    """x (B, H, W, C) -> (B, H, W, C), residual included."""

    def __init__(self, dim: int, bottleneck: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dw_convs = nn.ModuleList(nn.Conv2d(bottleneck, bottleneck, k, padding=k // 2, groups=bottleneck)
                                      for k in (3, 5, 7))
        self.projector = nn.Conv2d(bottleneck, bottleneck, 1)
        self.dropout = nn.Dropout(dropout)
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.down(self.norm(x) * self.gamma + x * self.gammax).permute(0, 3, 1, 2)  # (B, 64, H, W)
        z = z + sum(conv(z) for conv in self.dw_convs) / len(self.dw_convs)
        z = (z + self.projector(z)).permute(0, 2, 3, 1)
        return x + self.up(self.dropout(F.gelu(z)))


class MonaBlock(nn.Module):
    """A frozen SAM block with a Mona after each residual branch. x: (B, H, W, C)."""

    def __init__(self, block: Block, bottleneck: int) -> None:
        super().__init__()
        self.block = block
        dim = block.norm1.normalized_shape[0]
        device = block.norm1.weight.device
        self.mona_attn = Mona(dim, bottleneck).to(device)
        self.mona_mlp = Mona(dim, bottleneck).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mona_attn(x + attention_branch(self.block, x))
        return self.mona_mlp(x + self.block.mlp(self.block.norm2(x)))


@dataclass(frozen=True)
class MonaConfig(MethodConfig):
    bottleneck: int = 64  # width of each Mona's down/up projection


@register_family
class MonaAdapter(Method):
    family = "mona"
    config_class = MonaConfig
    merge_kind = "none"
    encoder_trainable = r"blocks\.\d+\.mona_(attn|mlp)\..*"
    needs_sam = True

    def attach(self, model: nn.Module) -> nn.Module:
        blocks = model.image_encoder.blocks
        for i, block in enumerate(blocks):
            replace_module(blocks, str(i), MonaBlock(block, self.config.bottleneck))
        return model
