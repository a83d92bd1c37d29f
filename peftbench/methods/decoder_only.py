"""Decoder-only fine-tuning: no adapter in the encoder; only the mask decoder trains (paper Table 1, 3.51 M on vit_h)."""

from torch import nn

from .base import Method
from .registry import register_family


@register_family
class DecoderOnly(Method):
    family = "decoder_only"
    merge_kind = "exact"  # nothing to fold: inference runs the plain SAM
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        return model
