"""LoRA (Hu et al., 2021) on SAM's fused qkv projection, as the Conv-LoRA harness applies it.

One A (r x C) and one B (3C x r) per wrapped Linear, so the rank-r update covers q, k and v together.
A is kaiming-uniform (a=sqrt(5)), B is zero, so the adapter starts as the identity; scaling = alpha / r.
`LoRALinear` optionally runs a module on the rank-r bottleneck between A and B (Conv-LoRA's experts, NAS-LoRA's
cell): those families are LoRA plus a bottleneck module, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Method, TargetedConfig, merge_wrappers, replace_targets
from .registry import register_family


class LoRALinear(nn.Module):
    """`y = W x + b + scaling * B g(A x)` around a frozen `nn.Linear`; g is the bottleneck module or identity.

    Shapes: x (..., in) -> y (..., out); A (r, in); B (out, r). In SAM's attention x is (B', h, w, in), so the
    bottleneck sees (B', h, w, r): the spatial map of an attention window, or of the whole image in global blocks.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, bottleneck: nn.Module | None = None) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.bottleneck = bottleneck
        if bottleneck is not None and any(t.device != base.weight.device
                                          for t in [*bottleneck.parameters(), *bottleneck.buffers()]):
            bottleneck.to(base.weight.device)  # only when elsewhere: a no-op move fails on fake tensors

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.lora_A.T
        if self.bottleneck is not None:
            z = self.bottleneck(z)
        return self.base(x) + (z @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain frozen Linear with W + scaling * B diag(d) A: d = 1 without a bottleneck (exact), else the
        bottleneck's per-token linear part `per_token_linear()` (its spatial part is dropped)."""
        if self.bottleneck is not None and not hasattr(self.bottleneck, "per_token_linear"):
            raise NotImplementedError("this LoRA bottleneck module does not fold into a per-token weight")
        with torch.no_grad():
            if self.bottleneck is None:
                self.base.weight += self.delta_weight()
            else:
                self.base.weight += self.scaling * (self.lora_B * self.bottleneck.per_token_linear()) @ self.lora_A
        return self.base


def to_map(z: torch.Tensor) -> torch.Tensor:
    """Bottleneck tokens (N, h, w, r), or (N, L, r) with L a square, -> channels-first maps (N, r, h, w)."""
    if z.ndim == 3:
        side = math.isqrt(z.shape[1])
        if side * side != z.shape[1]:
            raise ValueError(f"cannot lay {z.shape[1]} tokens out on a square map")
        z = z.reshape(z.shape[0], side, side, z.shape[2])
    return z.permute(0, 3, 1, 2)


def from_map(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_map`: (N, r, h, w) -> the shape of `like`."""
    return maps.permute(0, 2, 3, 1).reshape(like.shape)


@dataclass(frozen=True)
class LoRAConfig(TargetedConfig):
    """Rank r of A (r x in) and B (out x r); the update is scaled by alpha / r."""

    rank: int = 3
    alpha: float = 32

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, not {self.rank}")


@register_family
class LoRA(Method):
    family = "lora"
    config_class = LoRAConfig
    merge_kind = "exact"
    lineage = "lora"
    encoder_trainable = r".*\.lora_[AB]"
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        replace_targets(model, list(c.targets), c.scope, lambda m: LoRALinear(m, c.rank, c.alpha))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, LoRALinear)
