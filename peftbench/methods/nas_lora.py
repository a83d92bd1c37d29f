"""NAS-LoRA and NAS-PC-LoRA (the paper, sections 3.2-3.4): LoRA with a searchable cell on its rank-r bottleneck.

Cell (Eq. 2): z' = sum_o softmax(alpha)_o * op_o(z) on the bottleneck laid out as its spatial map (an attention
window in windowed blocks, the whole map in global blocks). Candidate operations as PC-DARTS defines them
(methods.md section 6), built for the cell's channels with BatchNorm(affine=False) as during a PC-DARTS search:
  sep_conv_3x3 / sep_conv_5x5   [ReLU, depthwise kxk, 1x1, BN] twice
  dil_conv_3x3 / dil_conv_5x5   ReLU, depthwise kxk dilation 2, 1x1, BN
  avg_pool_3x3 / max_pool_3x3   3x3 stride 1 (average without the padding), then BN
  skip_connect                  identity
  none                          zero
alpha: one vector per cell, 0.001 * N(0, 1) (section 4.1).
Partial connection (Eq. 3, NAS-PC-LoRA): a fixed binary channel mask M picks the first round(ratio * r) channels
for the mixture, the others pass straight through: z' = M * cell(M * z) + (1 - M) * z. An all-zero mask is LoRA.
The cell has no parameters of its own beyond the depthwise/pointwise convs and alpha, so vit_h counts are
4.0088 M (NAS-LoRA, 3/3) and 4.0046 M (NAS-PC-LoRA, 2/3); the paper prints 4.016 M and 4.009 M.

Stage-wise optimisation (Alg. 1): alpha is its own parameter group ("arch") with its own optimizer (see
methods/nas_lora.toml). Before `arch_start_epoch` only the weights step; from then on every `weight_steps`
weight steps are preceded by `arch_steps` architecture steps on the same training batch (`step_plan`), or
both step together when `simultaneous` (Table 9's "update simultaneously").

Merging (Eq. 5-7) is approximate, not exact: the convolutions and pools mix neighbouring tokens, so they cannot
be folded into a per-token weight. `merge()` folds exactly what is per-token linear (the skip connection's
weight, the zero operation and the pass-through channels) and drops the spatial operations; the harness tests the
exact (unmerged) model unless asked otherwise and records how far the merged one is.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Method, merge_wrappers, replace_targets
from .lora import LoRALinear, from_map, rank_alpha, to_map
from .registry import register_family

OPERATIONS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
              "avg_pool_3x3", "max_pool_3x3", "skip_connect", "none")


def _relu_conv_bn(c: int, kernel: int, dilation: int) -> list[nn.Module]:
    pad = dilation * (kernel - 1) // 2
    return [nn.ReLU(), nn.Conv2d(c, c, kernel, padding=pad, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False)]


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def build_operation(name: str, c: int) -> nn.Module:
    """One PC-DARTS candidate operation on c channels, (N, c, h, w) -> (N, c, h, w)."""
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return nn.Sequential(*_relu_conv_bn(c, k, 1), *_relu_conv_bn(c, k, 1))
    if name.startswith("dil_conv_"):
        return nn.Sequential(*_relu_conv_bn(c, int(name[-1]), 2))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False))
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return nn.Identity()
    if name == "none":
        return Zero()
    raise ValueError(f"unknown operation {name!r}; candidates: {', '.join(OPERATIONS)}")


class NASCell(nn.Module):
    """z (N, h, w, r) -> (N, h, w, r): softmax(alpha)-weighted candidate operations on the first `searched`
    channels, the other channels passed through unchanged."""

    def __init__(self, rank: int, searched: int, operations: tuple[str, ...]) -> None:
        super().__init__()
        self.operations = tuple(operations)
        self.rank, self.searched = rank, searched
        self.ops = nn.ModuleList(build_operation(name, searched) for name in operations) if searched else None
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(operations)))

    def weights(self) -> torch.Tensor:
        return self.alpha.softmax(dim=0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.searched:
            return z
        maps = to_map(z)
        picked, passed = maps[:, : self.searched], maps[:, self.searched:]
        mixed = sum(w * op(picked) for w, op in zip(self.weights(), self.ops))
        return from_map(torch.cat([mixed.to(maps.dtype), passed], dim=1), z)

    def per_token_linear(self) -> torch.Tensor:
        """(r,) diagonal of the part of the cell that acts on each token alone: the skip connection's weight on
        the searched channels (the zero operation adds nothing), 1 on the pass-through channels."""
        diag = torch.ones(self.rank, device=self.alpha.device)
        ops = self.operations
        diag[: self.searched] = self.weights()[ops.index("skip_connect")] if "skip_connect" in ops else 0.0
        return diag


@register_family
class NASLoRA(Method):
    family = "nas_lora"
    merge_kind = "approximate"

    def attach(self, model: nn.Module) -> nn.Module:
        rank, alpha = rank_alpha(self.hparams)
        operations = tuple(self.hparams.get("operations", OPERATIONS))
        searched = round(float(self.hparams.get("channel_ratio", 1.0)) * rank)
        replace_targets(model, self.targets or ["qkv"], self.scope,
                        lambda m: LoRALinear(m, rank, alpha, NASCell(rank, searched, operations)),
                        blocks=self.hparams.get("blocks", "all"))
        return model

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        arch = [m.alpha for m in model.modules() if isinstance(m, NASCell)]
        ids = {id(p) for p in arch}
        return {"weights": [p for p in model.parameters() if p.requires_grad and id(p) not in ids], "arch": arch}

    def step_plan(self, epoch: int, step: int) -> list[list[str]]:
        if epoch < int(self.hparams.get("arch_start_epoch", 10)):
            return [["weights"]]
        if self.hparams.get("simultaneous", False):
            return [["weights", "arch"]]
        plan = [["arch"]] * int(self.hparams.get("arch_steps", 1)) if step % int(self.hparams.get("weight_steps", 1)) == 0 else []
        return plan + [["weights"]]

    def milestones(self) -> dict[str, int]:
        return {"architecture updates start": int(self.hparams.get("arch_start_epoch", 10))}

    def statistics(self, model: nn.Module) -> dict:
        """The learned operation distribution (Fig. C2): softmax(alpha) averaged over all cells, and per cell."""
        cells = [m for m in model.modules() if isinstance(m, NASCell)]
        weights = torch.stack([c.weights().detach().float().cpu() for c in cells])
        return {"operations": list(cells[0].operations), "distribution": weights.mean(0).tolist(),
                "per_cell": weights.tolist()}

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, LoRALinear)  # folds each cell's per_token_linear(), drops its spatial part
