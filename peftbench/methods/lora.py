"""LoRA (Hu et al., 2021) on SAM's fused qkv projection, as the Conv-LoRA harness applies it.

One A (r x C) and one B (3C x r) per wrapped Linear, so the rank-r update covers q, k and v together.
A is kaiming-uniform (a=sqrt(5)), B is zero, so the adapter starts as the identity; scaling = alpha / r.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Method, merge_wrappers, replace_targets
from .registry import register_family


class LoRALinear(nn.Module):
    """`y = W x + b + scaling * B A x` around a frozen `nn.Linear`.

    Shapes: x (..., in) -> y (..., out); A (r, in); B (out, r).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain frozen Linear with W + scaling * B A."""
        with torch.no_grad():
            self.base.weight += self.delta_weight()
        return self.base


@register_family
class LoRA(Method):
    family = "lora"
    mergeable = True

    def attach(self, model: nn.Module) -> nn.Module:
        rank, alpha = int(self.hparams.get("rank", 3)), float(self.hparams.get("alpha", 32))
        replace_targets(model, self.targets or ["qkv"], self.scope, lambda m: LoRALinear(m, rank, alpha))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, LoRALinear)
