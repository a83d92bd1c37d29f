"""A procedurally generated "segment anything" corpus for pretraining the tiny SAM.

Every image holds several objects of generic kinds (ellipses, polygons, irregular blobs, stars, rings, thin
curves), each filled with its own texture (smoothed noise at several scales, stripes, checker, gradients) and
colour, at varied scales, partly occluding one another, on a background drawn from the same texture families.
Nothing here imitates the downstream synthetic domains (`synthetic.py`): the corpus only teaches "which pixels
belong to some object" and "where one object ends". All randomness comes from one numpy Generator, so a corpus
is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from skimage.draw import bezier_curve, ellipse, polygon
from skimage.filters import gaussian
from skimage.morphology import dilation
from skimage.morphology import disk as disk_footprint

MAX_OBJECTS = 7


@dataclass(frozen=True)
class CorpusImage:
    """image (S, S, 3) uint8; foreground (S, S) bool, the union of the objects; instances (N, S, S) bool, the
    visible (not occluded) part of each object, in drawing order (later objects lie on top)."""

    image: np.ndarray
    foreground: np.ndarray
    instances: np.ndarray


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float64) / size


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float in about [0, 255]: one random texture family, one or two random colours."""
    a, b = _colour(rng), _colour(rng)
    rows, cols = _grid(size)
    kind = rng.integers(5)
    if kind == 0:  # smoothed noise, fine to coarse
        noise = gaussian(rng.normal(size=(size, size, 3)), sigma=rng.uniform(0.5, 6), channel_axis=-1)
        return a + rng.uniform(5, 50) * noise / (noise.std() + 1e-8)
    if kind == 1:  # gradient between two colours at a random angle
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * rows + np.sin(angle) * cols
        t = (t - t.min()) / (np.ptp(t) + 1e-8)
        return a + t[..., None] * (b - a)
    if kind == 2:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
        t = np.cos(angle) * rows + np.sin(angle) * cols
        return np.where((np.sin(2 * np.pi * t / period) > 0)[..., None], a, b)
    if kind == 3:  # checker
        cell = rng.uniform(0.05, 0.25)
        return np.where(((rows // cell + cols // cell) % 2 == 0)[..., None], a, b)
    # flat colour with pixel noise
    return a + rng.uniform(0, 20) * rng.normal(size=(size, size, 3))


def _shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) bool mask of one object of a random kind, scale and place (it may leave the image)."""
    mask = np.zeros((size, size), bool)
    r, c = rng.uniform(-0.1, 1.1, size=2) * size
    radius = size * rng.uniform(0.06, 0.3)
    kind = rng.integers(6)
    if kind == 0:  # ellipse
        rr, cc = ellipse(r, c, radius, radius * rng.uniform(0.3, 1), shape=mask.shape, rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
    elif kind in (1, 2):  # polygon (convex-ish) or star (alternating radii)
        n = int(rng.integers(3, 9)) * (1 if kind == 1 else 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == 1 else np.linspace(0, 2 * np.pi, n, endpoint=False)
        radii = radius * (rng.uniform(0.6, 1, n) if kind == 1 else np.where(np.arange(n) % 2, rng.uniform(0.3, 0.6), 1))
        rr, cc = polygon(r + radii * np.sin(angles), c + radii * np.cos(angles), shape=mask.shape)
        mask[rr, cc] = True
    elif kind == 3:  # irregular blob: thresholded smooth noise inside a disc
        rows, cols = np.mgrid[0:size, 0:size]
        dist = np.hypot(rows - r, cols - c) / radius
        noise = gaussian(rng.normal(size=(size, size)), sigma=size / 16)
        mask = dist + 0.6 * noise / (noise.std() + 1e-8) < 1
    elif kind == 4:  # ring
        rows, cols = np.mgrid[0:size, 0:size]
        dist = np.hypot(rows - r, cols - c)
        mask = (dist < radius) & (dist > radius * rng.uniform(0.4, 0.8))
    else:  # thin curve, 1-3 px wide
        ends = rng.uniform(0, size - 1, size=(3, 2)).astype(int)
        rr, cc = bezier_curve(*ends[0], *ends[1], *ends[2], weight=rng.uniform(0.5, 2), shape=mask.shape)
        mask[rr, cc] = True
        mask = dilation(mask, disk_footprint(int(rng.integers(0, 2))))
    return mask


def corpus_image(rng: np.random.Generator, size: int) -> CorpusImage:
    """One corpus image with 1..MAX_OBJECTS visible objects."""
    image = _texture(rng, size)
    instances: list[np.ndarray] = []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        mask = _shape(rng, size)
        if mask.sum() < 4:
            continue
        image[mask] = _texture(rng, size)[mask]
        instances = [m & ~mask for m in instances] + [mask]  # occlusion: later objects hide earlier ones
    instances = [m for m in instances if m.any()]
    if not instances:  # every shape missed the image: retry, so no image is all background
        return corpus_image(rng, size)
    # A slight blur, as a camera's, so boundaries are not always one-pixel steps.
    blurred = gaussian(image, sigma=rng.uniform(0, 0.8), channel_axis=-1, preserve_range=True)
    stack = np.stack(instances)
    return CorpusImage(np.clip(blurred, 0, 255).astype(np.uint8), stack.any(0), stack)


def iter_corpus(size: int, seed: int) -> Iterator[CorpusImage]:
    """An endless stream of corpus images, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    while True:
        yield corpus_image(rng, size)


def generate_corpus(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(count, S, S, 3) uint8 images, (count, S, S) bool foregrounds and per-image (N_i, S, S) instance masks:
    the first `count` images of `iter_corpus(size, seed)`."""
    items = [item for item, _ in zip(iter_corpus(size, seed), range(count))]
    return (np.stack([i.image for i in items]), np.stack([i.foreground for i in items]),
            [i.instances for i in items])
