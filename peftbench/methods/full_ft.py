"""Full fine-tuning: the non-PEFT reference row. Every parameter of the image encoder and the mask decoder trains.

The prompt encoder stays frozen (no prompts are given, only its "no mask" embedding is used), and so does the
decoder's IoU head, which no loss reaches. The trained model is the plain SAM architecture (merge is trivial).
"""

from torch import nn

from .base import Method
from .registry import register_family


@register_family
class FullFineTuning(Method):
    family = "full_ft"
    merge_kind = "exact"
    group = "Non-PEFT"
    encoder_trainable = r".*"
    identity_at_init = True
    needs_sam = True

    def attach(self, model: nn.Module) -> nn.Module:
        model.image_encoder.requires_grad_(True)
        return model
