"""LoRA+ (Hayou, Ghosh and Yu, ICML 2024): LoRA whose B matrices learn `lr_ratio` times faster than its A matrices.

The model is LoRA's (same placement, rank, alpha, initialisation and exact merge); only the optimizer differs:
every B is its own parameter group ("lora_B") at `lr_ratio` x the card's learning rate, everything else (A, the
mask decoder) at the card's rate, as the authors' `create_loraplus_optimizer` builds it. Their recommended ratio is
2^4 = 16. Weight decay and the linear schedule are the harness's, as for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .lora import LoRA, LoRAConfig, LoRALinear
from .registry import register_family


@dataclass(frozen=True)
class LoRAPlusConfig(LoRAConfig):
    lr_ratio: float = 16  # learning rate of B / learning rate of A

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_ratio <= 0:
            raise ValueError(f"lr_ratio must be positive, not {self.lr_ratio}")


@register_family
class LoRAPlus(LoRA):
    family = "lora_plus"
    config_class = LoRAPlusConfig

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        b = [m.lora_B for m in model.modules() if isinstance(m, LoRALinear)]
        ids = {id(p) for p in b}
        return {"weights": [p for p in model.parameters() if p.requires_grad and id(p) not in ids], "lora_B": b}

    def lr_multipliers(self) -> dict[str, float]:
        return {"lora_B": float(self.config.lr_ratio)}
