"""ScaledLoRA: LoRA whose update is multiplied by one learnable scalar g per adapted layer (a worked plug-in family).

  y = W x + b + g * (alpha / r) * B A x        g starts at `gate_init`; B starts at 0, so the adapter is the identity
Not part of peftbench: `python run_all.py --methods docs/examples/scaled_lora.toml` imports it from this folder.
The walk-through is in docs/contributing.md.
"""

from dataclasses import dataclass

import torch
from torch import nn

from peftbench.methods import Method
from peftbench.methods.base import merge_wrappers, replace_targets
from peftbench.methods.lora import LoRAConfig, LoRALinear


class Gate(nn.Module):
    """The scalar g on LoRA's rank-r bottleneck. `per_token_linear` lets LoRALinear.merged() fold it exactly."""

    def __init__(self, rank: int, init: float) -> None:
        super().__init__()
        self.rank = rank
        self.g = nn.Parameter(torch.tensor(float(init)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.g * z

    def per_token_linear(self) -> torch.Tensor:
        return self.g.expand(self.rank)


@dataclass(frozen=True)
class ScaledLoRAConfig(LoRAConfig):  # rank, alpha, targets and scope from LoRA; one field more
    gate_init: float = 1.0


class ScaledLoRA(Method):
    family = "scaled_lora"
    config_class = ScaledLoRAConfig
    merge_kind = "exact"  # g * B A is a weight matrix like B A
    lineage = "lora"  # reported with the LoRA family
    encoder_trainable = r".*\.(lora_[AB]|bottleneck\.g)"  # what the registry tests expect to train in the encoder
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        replace_targets(model, list(c.targets), c.scope,
                        lambda m: LoRALinear(m, c.rank, c.alpha, bottleneck=Gate(c.rank, c.gate_init)))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_wrappers(model, LoRALinear)
