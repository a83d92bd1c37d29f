"""SSF (Lian et al., NeurIPS 2022, "Scaling & Shifting Your Features"): a per-channel scale and shift after each
linear layer of every image-encoder block, as the official code (dongzelian/SSF) places them after a ViT block's
qkv, proj, fc1 and fc2 (SAM's attn.qkv, attn.proj, mlp.lin1, mlp.lin2).

  y = gamma * (W x + b) + beta        gamma, beta (out,); init gamma ~ N(1, 0.02), beta ~ N(0, 0.02) as the official
                                      `init_ssf_scale_shift` (so SSF does not start exactly as the identity)
Merge is exact (the paper's re-parameterisation): W' = diag(gamma) W, b' = gamma * b + beta, a plain Linear.
Parameters on vit_h: 32 x 2 x (3,840 + 1,280 + 5,120 + 1,280) = 737,280 (4.24 M with the decoder). The official SSF
also scales and shifts after the LayerNorms and the patch embedding; here only the linear layers, as specified for
this harness (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Method, TargetedConfig, merge_wrappers, replace_targets
from .registry import register_family

BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")


class ScaleShiftLinear(nn.Module):
    """`y = gamma * (W x + b) + beta` around a frozen `nn.Linear`. x (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if base.bias is None:
            raise ValueError("SSF's exact merge folds the shift into the bias: the wrapped Linear needs one")
        self.base = base
        self.base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.ssf_scale = nn.Parameter(torch.empty(base.out_features, **factory))
        self.ssf_shift = nn.Parameter(torch.empty(base.out_features, **factory))
        nn.init.normal_(self.ssf_scale, mean=1.0, std=0.02)
        nn.init.normal_(self.ssf_shift, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.ssf_scale + self.ssf_shift

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight.mul_(self.ssf_scale.unsqueeze(1))
            self.base.bias.mul_(self.ssf_scale).add_(self.ssf_shift)
        return self.base


@dataclass(frozen=True)
class SSFConfig(TargetedConfig):
    targets: tuple[str, ...] = BLOCK_LINEARS


@register_family
class SSF(Method):
    family = "ssf"
    config_class = SSFConfig
    merge_kind = "exact"
    encoder_trainable = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.lin[12])\.ssf_(scale|shift)"

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        replace_targets(model, list(c.targets), c.scope, ScaleShiftLinear)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, ScaleShiftLinear)
