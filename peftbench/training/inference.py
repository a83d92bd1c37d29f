"""A trained model's masks on images, computed as the trainer computes test predictions: what `peftbench predict`
and the report's predictions figure share.

Each image is decoded to RGB by files.read_image (the loaders' rule for every mode), bicubic-resized to the model's
S x S input without keeping its aspect ratio and ImageNet-normalised (data/loading.py); the model's probabilities are
resized back to the image's own size (bilinear) and thresholded as the trainer scores them (train._score): binary
p > 0.5, multi-class argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..backbone.segmenter import SamSegmenter, at_size, normalise
from ..data.files import ImageRuleError, read_image

# What PIL and tifffile raise on a file that is not a readable image (truncated, corrupt, another format).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def mask_at(probs: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """(H, W) uint8 mask from (S, S) or (K, S, S) model-size probabilities: binary 255 where the resized foreground
    probability is > 0.5, else 0; multi-class the argmax class of the resized scores."""
    resized = at_size(probs, size)
    if probs.dim() == 2:
        return (resized[0] > 0.5).numpy().astype(np.uint8) * 255
    return resized.argmax(0).numpy().astype(np.uint8)


def model_input(images: list[Image.Image], size: int) -> torch.Tensor:
    """(B, 3, S, S) ImageNet-normalised batch of RGB images, each bicubic-resized to S x S as the loaders do."""
    arrays = [np.asarray(image.resize((size, size), Image.BICUBIC)) for image in images]
    return normalise(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@torch.no_grad()
def predict_masks(model: SamSegmenter, images: list[Image.Image], device: torch.device) -> list[np.ndarray]:
    """Each RGB image's (H, W) mask at its own size (see mask_at), all images in one forward pass; fp32, the
    probabilities resized on the CPU as the trainer resizes them."""
    probs = model.probabilities(model_input(images, model.img_size).to(device)).float().cpu()
    return [mask_at(p, (image.height, image.width)) for p, image in zip(probs, images)]


def decode(path: str | Path) -> tuple[Image.Image | None, str]:
    """(the image at `path` as RGB, "") or (None, why it cannot be read): read as the loaders read images
    (files.read_image: every mode by one rule, what it would misread refused, TIFFs PIL cannot read by tifffile)."""
    try:
        return read_image(path), ""
    except ImageRuleError as err:
        return None, str(err)
    except DECODE_ERRORS as err:
        return None, f"unreadable image ({err})"
