"""BitFit (Ben Zaken et al., 2022): every bias of the image encoder trains, nothing else in it.

As the reference selects parameters by name ("bias" in the name): the patch-embedding, qkv, proj, MLP and
LayerNorm biases, including the neck's LayerNorm2d biases (LayerNorm weights stay frozen).
452,352 parameters on vit_h (3.96 M with the decoder, as the paper's Table 1). No new modules, so the trained
model is the plain SAM architecture: merge is exact and trivial.
"""

from dataclasses import dataclass

from torch import nn

from .base import Method, MethodConfig
from .registry import register_family


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """The module whose biases train (every bias under it)."""

    scope: str = "image_encoder"


@register_family
class BitFit(Method):
    family = "bitfit"
    config_class = BitFitConfig
    merge_kind = "exact"
    encoder_trainable = r".*bias"
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        for name, p in model.get_submodule(self.config.scope).named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
        return model
