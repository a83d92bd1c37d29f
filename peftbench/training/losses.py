"""Training losses of the paper (Eq. 4/8, Appendix A): segmentation = BCE + Dice; multi-class adds pixel-wise CE.

A binary card may instead ask for one of the Conv-LoRA harness's losses (autogluon, multimodal/.../optim/losses):
`structure_loss` (PraNet) or `balanced_bce` (its SBU loss).

Multi-class matching is fixed: mask token k predicts class k (one token per class), so no Hungarian matching is
needed. The class loss is the pixel-wise cross-entropy of the semantic map (class probabilities times mask
probabilities, normalised over classes), as Appendix A defines it, plus the cross-entropy of each token's class
logits (K classes + "no object") against its class if that class occurs in the image and "no object" otherwise,
as Mask2Former trains the classification branch under a fixed matching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbone.segmenter import SamSegmenter
from ..scoring.labels import IGNORE_LABEL


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice loss averaged over maps. logits, target: (N, H, W); valid: optional (N, H, W) mask."""
    prob = logits.sigmoid()
    if valid is not None:
        prob, target = prob * valid, target * valid
    inter = (prob * target).flatten(1).sum(1)
    total = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary loss. logits, target: (B, H, W)."""
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)


def structure_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PraNet's structure loss as the Conv-LoRA harness runs it: mean BCE (its pixel weighting is a no-op there,
    because of a legacy `reduce` argument) plus a boundary-weighted IoU loss, weight 1 + 5 |avgpool31(gt) - gt|.
    logits, target: (B, H, W)."""
    weight = 1 + 5 * (F.avg_pool2d(target[:, None], 31, stride=1, padding=15)[:, 0] - target).abs()
    prob = logits.sigmoid()
    inter = (weight * prob * target).flatten(1).sum(1)
    union = (weight * (prob + target)).flatten(1).sum(1) - inter
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - (inter + 1) / (union + 1)).mean()


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE (EVP, the Conv-LoRA harness's SBU loss): positives weighted N_neg / N_pos, the whole
    times N_pos / N, counts over the batch. logits, target: (B, H, W)."""
    positives = target.sum().clamp_min(1)
    negatives = target.numel() - target.sum()
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=negatives / positives)
    return loss * positives / target.numel()


def multiclass_loss(out: dict[str, torch.Tensor], label: torch.Tensor, w_seg: float, w_cls: float) -> torch.Tensor:
    """λ_seg (BCE + Dice of token k against class k) + λ_cls CE. out from SamSegmenter; label (B, H, W) ids."""
    logits = out["mask_logits"]  # (B, K, H, W)
    k = logits.shape[1]
    valid = (label != IGNORE_LABEL).unsqueeze(1).float()
    target = F.one_hot(label.clamp_max(k - 1), k).permute(0, 3, 1, 2).float()
    seg = (F.binary_cross_entropy_with_logits(logits, target, weight=valid.expand_as(target))
           + dice_loss(logits.flatten(0, 1), target.flatten(0, 1), valid.expand_as(target).flatten(0, 1)))
    scores = SamSegmenter.semantic_probs(out)
    log_p = (scores / scores.sum(1, keepdim=True).clamp_min(1e-8)).clamp_min(1e-8).log()
    pixel_ce = F.nll_loss(log_p, label, ignore_index=IGNORE_LABEL)
    present = (target * valid).flatten(2).sum(-1) > 0  # (B, K)
    token_class = torch.where(present, torch.arange(k, device=label.device), torch.full_like(present, k, dtype=torch.long))
    token_ce = F.cross_entropy(out["class_logits"].flatten(0, 1), token_class.flatten())
    return w_seg * seg + w_cls * (pixel_ce + token_ce)
