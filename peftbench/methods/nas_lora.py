"""NAS-LoRA and NAS-PC-LoRA (the paper, sections 3.2-3.4): LoRA with a searchable cell on its rank-r bottleneck.

Cell (Eq. 2): z' = sum_o softmax(alpha)_o * op_o(z) on the bottleneck laid out as its spatial map (an attention
window in windowed blocks, the whole map in global blocks). Candidate operations as PC-DARTS (Xu et al., ICLR
2020; official code operations.py, genotypes.py) defines them, built for the cell's channels with
BatchNorm(affine=False) as during a PC-DARTS search:
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
methods/nas_lora.toml). Before the architecture start only the weights step; from then on every `weight_steps`
weight steps are preceded by `arch_steps` architecture steps on the same training batch (`step_plan`), or
both step together when `simultaneous` (Table 9's "update simultaneously").

The schedule rule, the same for every dataset and --epochs (`schedule`):
  - Start: `arch_start` is a fraction of the run's epochs. The paper starts architecture updates at epoch 10 of
    ISIC 2017's 30 (section 4.1, Table 9), so the default is 10/30 and Table 9's variants are 0/30 and 20/30; the
    start epoch is round(arch_start * epochs), halves rounded up. (An absolute epoch 10 would never start on SBU's
    10 epochs, or with --epochs <= 10.) A schedule that would take no architecture step is an error, not a LoRA run
    with a frozen uniform mixture.
  - Budget: the paper's search on ISIC 2017 takes ARCH_REFERENCE_STEPS = 10,000 architecture steps (2,000 training
    images / batch 4 = 500 steps per epoch, epochs 10-29) at Adam lr 6e-4. Adam moves each alpha by about lr per
    step whatever the gradient's scale, so the search's reach is lr x steps. The architecture learning rate is
    scaled by 10,000 / (the run's planned architecture steps): on ISIC at the paper's settings the factor is 1, on a
    short run (the 64-image synthetic cards: 128 steps) the search still gets the paper's reach instead of 1% of it.
Validation selects among the epochs after the start only (`selectable`): an earlier checkpoint would be LoRA with a
uniform mixture, not a searched model. The record stores the resolved start, the planned and taken architecture
steps, the learning rate used, and whether the search engaged: took steps and moved the operation distribution at
least SEARCH_MOVED from uniform.

Merging (Eq. 5-7) is approximate, not exact: the convolutions and pools mix neighbouring tokens, so they cannot
be folded into a per-token weight. `merge()` folds exactly what is per-token linear (the skip connection's
weight, the zero operation and the pass-through channels) and drops the spatial operations; the harness tests the
exact (unmerged) model unless asked otherwise and records how far the merged one is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from .base import Method, merge_wrappers, replace_targets
from .lora import LoRAConfig, LoRALinear, from_map, to_map
from .registry import register_family

# The paper's architecture-search budget: ISIC 2017, 2,000 training images at batch 4 for 20 search epochs.
ARCH_REFERENCE_STEPS = 500 * 20
# A search "engaged" when it took architecture steps and moved the mean operation distribution this far from uniform
# (max |p - 1/K|); below it the NAS-LoRA result is LoRA with a fixed uniform mixture, and the tables say so.
SEARCH_MOVED = 0.01

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


@dataclass(frozen=True)
class NASLoRAConfig(LoRAConfig):
    """LoRA's, plus the cell (searched share of the rank, candidate operations, encoder blocks) and the stage-wise
    schedule: the architecture start as a fraction of the epochs, `arch_steps` architecture steps before every
    `weight_steps` weight steps, or both together when `simultaneous` (see the module doc)."""

    channel_ratio: float = 1.0
    operations: tuple[str, ...] = OPERATIONS
    blocks: str | tuple[int, ...] = "all"
    arch_start: str = "10/30"
    weight_steps: int = 1
    arch_steps: int = 1
    simultaneous: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.channel_ratio <= 1:
            raise ValueError(f"channel_ratio {self.channel_ratio} must be in [0, 1]")
        unknown = [o for o in self.operations if o not in OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"operations {list(self.operations)}: choose among {', '.join(OPERATIONS)}")
        try:
            fraction = Fraction(self.arch_start)
        except ValueError:
            raise ValueError(f"arch_start {self.arch_start!r} is not a fraction such as \"10/30\"") from None
        if not 0 <= fraction < 1:
            raise ValueError(f"arch_start {self.arch_start} must be a fraction of the epochs in [0, 1)")
        if self.weight_steps < 1 or self.arch_steps < 1:
            raise ValueError("weight_steps and arch_steps must be at least 1")


@register_family
class NASLoRA(Method):
    family = "nas_lora"
    config_class = NASLoRAConfig
    merge_kind = "approximate"
    lineage = "lora"
    encoder_trainable = r".*\.(lora_[AB]|bottleneck\..*)"
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        searched = round(c.channel_ratio * c.rank)
        replace_targets(model, list(c.targets), c.scope,
                        lambda m: LoRALinear(m, c.rank, c.alpha, NASCell(c.rank, searched, c.operations)),
                        blocks=c.blocks if isinstance(c.blocks, str) else list(c.blocks))
        return model

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        arch = [m.alpha for m in model.modules() if isinstance(m, NASCell)]
        ids = {id(p) for p in arch}
        return {"weights": [p for p in model.parameters() if p.requires_grad and id(p) not in ids], "arch": arch}

    def start_epoch(self, epochs: int) -> int:
        """The first epoch with architecture updates: round(arch_start * epochs), halves up (see the module doc)."""
        return math.floor(Fraction(self.config.arch_start) * epochs + Fraction(1, 2))

    def check_schedule(self, epochs: int) -> str | None:
        start = self.start_epoch(epochs)
        if start >= epochs:
            return (f"the architecture search would take no step (it starts at epoch {start + 1} = "
                    f"{self.config.arch_start} of {epochs} epochs); give more --epochs")
        return None

    def schedule(self, epochs: int, steps_per_epoch: int) -> dict:
        problem = self.check_schedule(epochs)
        if problem:
            raise ValueError(problem)
        self.arch_start_epoch = self.start_epoch(epochs)
        c = self.config
        per_epoch = steps_per_epoch if c.simultaneous else c.arch_steps * -(-steps_per_epoch // c.weight_steps)
        planned = (epochs - self.arch_start_epoch) * per_epoch
        reference = ARCH_REFERENCE_STEPS
        return {"arch_start": c.arch_start, "arch_start_epoch": self.arch_start_epoch,
                "search_epochs": epochs - self.arch_start_epoch, "arch_steps_planned": planned,
                "arch_reference_steps": reference, "lr_scale": {"arch": reference / planned}}

    def step_plan(self, epoch: int, step: int) -> list[list[str]]:
        if not hasattr(self, "arch_start_epoch"):
            raise RuntimeError("NAS-LoRA's schedule() must resolve the architecture start before step_plan()")
        if epoch < self.arch_start_epoch:
            return [["weights"]]
        if self.config.simultaneous:
            return [["weights", "arch"]]
        plan = [["arch"]] * self.config.arch_steps if step % self.config.weight_steps == 0 else []
        return plan + [["weights"]]

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.arch_start_epoch

    def milestones(self) -> dict[str, int]:
        return {"architecture updates start": self.arch_start_epoch}

    def statistics(self, model: nn.Module, steps: dict[str, int]) -> dict:
        """The learned operation distribution (Fig. C2): softmax(alpha) averaged over all cells, and per cell; how
        far it left uniform (max |p - 1/K| of the mean, mean entropy of the cells in nats against ln K) and whether
        the search engaged (`steps`: optimizer steps taken per group)."""
        cells = [m for m in model.modules() if isinstance(m, NASCell)]
        weights = torch.stack([c.weights().detach().float().cpu() for c in cells])
        mean = weights.mean(0)
        deviation = (mean - 1 / len(mean)).abs().max().item()
        taken = steps.get("arch", 0)
        return {"operations": list(cells[0].operations), "distribution": mean.tolist(), "per_cell": weights.tolist(),
                "architecture_steps": taken, "max_abs_deviation": deviation,
                "entropy": float(-(weights * weights.clamp_min(1e-12).log()).sum(1).mean()),
                "entropy_uniform": math.log(len(mean)),
                "search_engaged": taken > 0 and deviation >= SEARCH_MOVED}

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, LoRALinear)  # folds each cell's per_token_linear(), drops its spatial part
