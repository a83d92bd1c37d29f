"""SAM turned into a prompt-free semantic segmenter, as the Conv-LoRA harness and the NAS-LoRA paper do.

- Image encoder and prompt encoder frozen; no prompts: the decoder sees the learned "no mask" dense embedding and
  no sparse tokens.
- Mask decoder trained except its IoU head (kept, frozen, unused). `num_mask_tokens` new mask tokens are copied from
  SAM's single-mask token 0, and only the first hypernetwork MLP is kept, shared by all tokens.
- Binary tasks: one mask token, one logit map. Multi-class tasks: one token per class and a classification branch
  (K classes + "no object") on the mask tokens; the semantic map is class probabilities times mask probabilities
  (Mask2Former semantic inference).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> ImageNet-normalised float: what the segmenter takes (loaders and pretraining alike)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def at_size(probs: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(S, S) foreground probability or (K, S, S) class scores at the model's resolution -> (1 or K, H, W) at
    `size` = (H, W), resized bilinearly as the polyp, COD and ISIC toolboxes resize predictions (a no-op at S x S)."""
    return F.interpolate(probs.reshape(1, -1, *probs.shape[-2:]), size=tuple(size), mode="bilinear",
                         align_corners=False)[0]


class SamSegmenter(nn.Module):
    """A frozen SAM encoder with a trainable, prompt-free mask decoder.

    Arguments:
      sam: a `segment_anything` Sam (official or tiny), consumed: its parts are re-used, not copied.
      num_classes: 1 for binary segmentation, K >= 2 for multi-class (background is one of the K classes).
    """

    def __init__(self, sam: Sam, num_classes: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_encoder = sam.image_encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = self.image_encoder.img_size

        decoder = self.mask_decoder
        dim = decoder.transformer_dim
        num_tokens = 1 if num_classes == 1 else num_classes
        single_mask_token = decoder.mask_tokens.weight[:1].detach()
        decoder.mask_tokens = nn.Embedding(num_tokens, dim, device=single_mask_token.device)
        with torch.no_grad():
            decoder.mask_tokens.weight.copy_(single_mask_token.expand(num_tokens, -1))
        decoder.num_mask_tokens = num_tokens
        decoder.output_hypernetworks_mlps = decoder.output_hypernetworks_mlps[:1]
        self.class_head = nn.Linear(dim, num_classes + 1) if num_classes > 1 else None

        for p in self.image_encoder.parameters():
            p.requires_grad_(False)
        for p in self.prompt_encoder.parameters():
            p.requires_grad_(False)
        for p in decoder.iou_prediction_head.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Arguments:
          images: (B, 3, S, S) ImageNet-normalised images, S = the encoder's img_size.

        Returns a dict with
          "mask_logits": (B, T, S, S) per-token mask logits upsampled to the input size (T = 1 or K),
          "class_logits": (B, K, K+1) per-token class logits (multi-class only).
        """
        embeddings = self.image_encoder(images)  # (B, D, h, w)
        decoder = self.mask_decoder
        b = images.shape[0]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = embeddings + dense
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)

        hs, src = decoder.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]  # (B, T, D)
        _, d, h, w = embeddings.shape
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, d, h, w))  # (B, D/8, 4h, 4w)
        hyper = decoder.output_hypernetworks_mlps[0](mask_tokens_out)  # (B, T, D/8)
        low_res = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[-2:])
        out = {"mask_logits": F.interpolate(low_res, size=images.shape[-2:], mode="bilinear", align_corners=False)}
        if self.class_head is not None:
            out["class_logits"] = self.class_head(mask_tokens_out)
        return out

    @staticmethod
    def semantic_probs(out: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, S, S) class scores: softmax class probabilities (no-object dropped) times sigmoid masks."""
        classes = out["class_logits"].softmax(-1)[..., :-1]  # (B, T, K)
        masks = out["mask_logits"].sigmoid()  # (B, T, S, S)
        return torch.einsum("btk,bthw->bkhw", classes, masks)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Binary: (B, S, S) foreground probability. Multi-class: (B, K, S, S) normalised class scores."""
        out = self(images)
        if self.class_head is None:
            return out["mask_logits"][:, 0].sigmoid()
        scores = self.semantic_probs(out)
        return scores / scores.sum(1, keepdim=True).clamp_min(1e-12)
