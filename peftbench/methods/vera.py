"""VeRA (Kopiczko et al., 2024) as Hugging Face peft implements it.

One frozen pair of random matrices shared by every adapted layer: A (r, in_max), B (out_max, r), drawn from
one CPU generator seeded with `projection_seed` (A first, then B), kaiming-uniform with gain sqrt(2) on fan_in;
in_max / out_max are the largest sizes over the adapted layers and each layer uses the top-left slice.
Per layer only two vectors train: lambda_d (r,) = 0.1 and lambda_b (out,) = 0, so VeRA starts as the identity.
  y = W x + b + lambda_b * (B_s (lambda_d * (A_s x)))          merge: W += diag(lambda_b) B_s diag(lambda_d) A_s
Placement: the fused attn.qkv of every block, as LoRA, with peft's default r = 256: 32 x (3,840 + 256) = 131,072
on vit_h. The paper's Table 1 prints 0.32 M, which leaves out the 3.51 M mask decoder every method here trains
(ours: 3.64 M with it); its VeRA placement is not stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Method, TargetedConfig, find_targets, merge_wrappers, replace_module
from .registry import register_family


class VeRAProjection(nn.Module):
    """The shared frozen random pair, held once and referenced by every VeRALinear."""

    def __init__(self, rank: int, in_max: int, out_max: int, seed: int, device: torch.device) -> None:
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def kaiming(shape: tuple[int, int]) -> torch.Tensor:
            bound = math.sqrt(6.0 / shape[1])  # gain sqrt(2), fan_in = shape[1]
            return torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=gen).to(device)

        self.register_buffer("A", kaiming((rank, in_max)))
        self.register_buffer("B", kaiming((out_max, rank)))


class VeRALinear(nn.Module):
    """VeRA around a frozen Linear. x (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, projection: VeRAProjection, d_initial: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.projection = projection
        rank, device = projection.A.shape[0], base.weight.device
        self.lambda_d = nn.Parameter(torch.full((rank,), d_initial, device=device))
        self.lambda_b = nn.Parameter(torch.zeros(base.out_features, device=device))

    def _slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projection.A[:, : self.base.in_features], self.projection.B[: self.base.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._slices()
        return self.base(x) + self.lambda_b * ((self.lambda_d * (x @ a.T)) @ b.T)

    def merged(self) -> nn.Linear:
        a, b = self._slices()
        with torch.no_grad():
            self.base.weight += (self.lambda_b[:, None] * b) @ (self.lambda_d[:, None] * a)
        return self.base


@dataclass(frozen=True)
class VeRAConfig(TargetedConfig):
    """Rank of the shared random pair, the initial lambda_d and the seed the pair is drawn from (peft's defaults)."""

    rank: int = 256
    d_initial: float = 0.1
    projection_seed: int = 0


@register_family
class VeRA(Method):
    family = "vera"
    config_class = VeRAConfig
    merge_kind = "exact"
    lineage = "lora"
    encoder_trainable = r".*\.lambda_[bd]"
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        names = find_targets(model, list(c.targets), c.scope)
        layers = [model.get_submodule(n) for n in names]
        projection = VeRAProjection(
            rank=c.rank, in_max=max(m.in_features for m in layers), out_max=max(m.out_features for m in layers),
            seed=c.projection_seed, device=layers[0].weight.device,
        )
        for name, layer in zip(names, layers):
            replace_module(model, name, VeRALinear(layer, projection, c.d_initial))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, VeRALinear)
