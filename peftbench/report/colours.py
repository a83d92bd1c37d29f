"""Class colours of masks in figures and overlays: class 0 (the background of every card) uncoloured."""

from __future__ import annotations

import numpy as np
from PIL import Image

OVERLAY_ALPHA = 0.5  # weight of the class colour where an overlay marks a class
IGNORE_COLOUR = (255, 255, 255)  # multi-class labels' 255 ("ignore") in figures


def class_colours(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 palette of class ids: 0 black, 1..K-1 matplotlib's tab20 (its ten dark colours, then the
    light ones; "turbo" samples past 20 classes), 255 (ignore) white. Binary masks are classes 0 and 1."""
    from matplotlib import colormaps  # here: predict needs matplotlib only for overlays

    tab20 = colormaps["tab20"].colors
    colours = tab20[0::2] + tab20[1::2] if num_classes <= 20 else colormaps["turbo"](np.linspace(0, 1, num_classes))
    palette = np.zeros((256, 3), np.uint8)
    palette[1:num_classes] = (np.asarray(colours)[1:num_classes, :3] * 255).round()
    palette[255] = IGNORE_COLOUR
    return palette


def overlay_image(image: Image.Image, classes: np.ndarray, num_classes: int) -> Image.Image:
    """The RGB image with every pixel of a class other than 0 blended with its class colour; classes: (H, W) ids."""
    rgb = np.asarray(image, np.float32)
    tinted = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * class_colours(num_classes)[classes]
    return Image.fromarray(np.where((classes > 0)[..., None], tinted, rgb).round().astype(np.uint8))
