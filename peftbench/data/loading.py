"""Samples of a dataset card as tensors: resized to the model's input size, ImageNet-normalised, flipped in training.

As in the Conv-LoRA harness: images bicubic-resized to (S, S) without keeping the aspect ratio, labels
nearest-resized; metrics are computed at this resolution (recorded as `resolution` next to every metric).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..segmenter import IMAGENET_MEAN, IMAGENET_STD
from .cards import DatasetCard
from .files import IGNORE_LABEL, read_manifest
from .synthetic import generate

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


@lru_cache(maxsize=16)
def _synthetic_split(generator: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return generate(generator, count, size, seed)


class SegmentationDataset(Dataset):
    """Items: image (3, S, S) float normalised; label (S, S): float 0/1 (binary) or long class ids (multi-class).

    `samples` is either a pair of arrays (images (N, H, W, 3) uint8, labels (N, H, W) uint8) or a
    DataFrame with image and label paths.
    """

    def __init__(self, samples, kind: str, size: int, train: bool, keys: bool = False) -> None:
        self.samples, self.kind, self.size, self.train, self.keys = samples, kind, size, train, keys
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples[0]) if isinstance(self.samples, tuple) else len(self.samples)

    def _raw(self, i: int) -> tuple[Image.Image, Image.Image]:
        if isinstance(self.samples, tuple):
            return Image.fromarray(self.samples[0][i]), Image.fromarray(self.samples[1][i])
        row = self.samples.iloc[i]
        return Image.open(row["image"]).convert("RGB"), Image.open(row["label"]).convert("L")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        """(x, y), or (x, y, key) with `keys`: key = 2 i + flipped identifies the exact input image."""
        image, label = self._raw(i)
        image = image.resize((self.size, self.size), Image.BICUBIC)
        label = np.asarray(label.resize((self.size, self.size), Image.NEAREST))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = (x - self.mean) / self.std
        if self.kind == "binary":
            y = torch.from_numpy((label > (127 if label.max() > 1 else 0)).astype(np.float32))
        else:
            y = torch.from_numpy(label.astype(np.int64))
        flipped = bool(self.train and torch.rand(()) < 0.5)  # random horizontal flip, p = 0.5
        if flipped:
            x, y = x.flip(-1), y.flip(-1)
        return (x, y, 2 * i + flipped) if self.keys else (x, y)


def build_splits(card: DatasetCard, size: int, keys: bool = False) -> dict[str, SegmentationDataset]:
    """Split name -> dataset. Test splits are 'test' or 'test:<name>' (several test sets, e.g. Kvasir and CVC).
    With `keys`, items carry a key of the exact input (index and flip), for caching frozen embeddings."""
    if card.source == "synthetic":
        raw = {split: _synthetic_split(card.generator, count, card.size, card.seed * 10 + SPLIT_OFFSETS[split])
               for split, count in card.splits.items()}
    else:
        raw = read_manifest(card.path)
    return {split: SegmentationDataset(s, card.kind, size, train=split == "train", keys=keys)
            for split, s in raw.items()}


__all__ = ["IGNORE_LABEL", "SegmentationDataset", "build_splits"]
