"""Deterministic synthetic segmentation tasks, sized for the CPU.

Each generator maps (numpy Generator, size) to an RGB image (S, S, 3) uint8 and a label map (S, S) uint8
(0/1 for binary tasks, class ids for multi-class). Textures are smoothed noise so that the task needs context,
not a colour threshold.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import bezier_curve, disk, ellipse, polygon
from skimage.filters import gaussian
from skimage.morphology import dilation
from skimage.morphology import disk as disk_footprint


def _texture(rng: np.random.Generator, size: int, colour, spread: float, sigma: float) -> np.ndarray:
    """(S, S, 3) float texture: a base colour plus spatially smoothed noise."""
    noise = gaussian(rng.normal(size=(size, size, 3)), sigma=sigma, channel_axis=-1)
    noise /= noise.std() + 1e-8
    return np.asarray(colour, dtype=np.float64)[None, None] + spread * noise


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def leaf(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Small brown lesion spots on a textured green leaf over a textured soil background; label = lesions."""
    image = _texture(rng, size, (110, 90, 70), 25, 2.0)
    rr, cc = ellipse(size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4), size * rng.uniform(0.3, 0.42),
                     size * rng.uniform(0.18, 0.3), shape=(size, size), rotation=rng.uniform(0, np.pi))
    leaf_mask = np.zeros((size, size), bool)
    leaf_mask[rr, cc] = True
    image[leaf_mask] = _texture(rng, size, (60, 140, 50), 18, 1.0)[leaf_mask]
    label = np.zeros((size, size), np.uint8)
    inside = np.argwhere(leaf_mask)
    for _ in range(rng.integers(2, 7)):
        r, c = inside[rng.integers(len(inside))]
        spot = np.zeros_like(leaf_mask)
        spot[disk((r, c), rng.uniform(2, size / 10), shape=(size, size))] = True
        label[spot & leaf_mask] = 1
    lesion = label.astype(bool)
    image[lesion] = _texture(rng, size, (120, 95, 40), 15, 0.7)[lesion]
    return _to_uint8(gaussian(image, sigma=0.5, channel_axis=-1, preserve_range=True)), label


def road(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Thin connected curvilinear roads on a textured terrain; label = road pixels."""
    image = _texture(rng, size, (95, 110, 80), 30, 1.5)
    centre = np.zeros((size, size), bool)
    junction = rng.integers(size // 4, 3 * size // 4, size=2)
    for _ in range(rng.integers(2, 4)):  # every road leaves the image border and passes the junction
        edge = rng.integers(0, size, size=2)
        edge[rng.integers(2)] = rng.choice([0, size - 1])
        ctrl = rng.integers(0, size, size=2)
        rr, cc = bezier_curve(*edge, *ctrl, *junction, weight=1.0, shape=(size, size))
        centre[rr, cc] = True
    label = dilation(centre, disk_footprint(int(rng.integers(0, 2)) + 1)).astype(np.uint8)
    roads = label.astype(bool)
    image[roads] = _texture(rng, size, (150, 150, 145), 12, 0.7)[roads]
    return _to_uint8(gaussian(image, sigma=0.6, channel_axis=-1, preserve_range=True)), label


def shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class: background 0, discs 1, squares 2, triangles 3, each with its own tint and texture scale."""
    image = _texture(rng, size, (120, 120, 120), 25, 1.0)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, 4))
        r, c = rng.integers(size // 8, size - size // 8, size=2)
        half = rng.uniform(size / 9, size / 5)
        if cls == 1:
            rr, cc = disk((r, c), half, shape=(size, size))
        elif cls == 2:
            rr, cc = polygon([r - half, r - half, r + half, r + half], [c - half, c + half, c + half, c - half], (size, size))
        else:
            rr, cc = polygon([r - half, r + half, r + half], [c, c - half, c + half], (size, size))
        region = np.zeros((size, size), bool)
        region[rr, cc] = True
        label[region] = cls
        tint = [(190, 100, 100), (100, 190, 100), (100, 100, 190)][cls - 1]
        image[region] = _texture(rng, size, tint, 30, [0.4, 1.2, 2.5][cls - 1])[region]
    return _to_uint8(image), label


GENERATORS = {"leaf": leaf, "road": road, "shapes": shapes}


def generate(name: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, S, S, 3) images and (count, S, S) labels from generator `name`, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    pairs = [GENERATORS[name](rng, size) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
