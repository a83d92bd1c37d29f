"""Samples of a dataset card as tensors: resized to the model's input size, ImageNet-normalised, flipped in training.

As in the Conv-LoRA harness: images bicubic-resized to (S, S) without keeping the aspect ratio, labels
nearest-resized for the loss. Test metrics are computed against the label at its original resolution
(`original_label`), the prediction resized to it, as the ISIC, COD and polyp toolboxes do.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ..segmenter import normalise
from .cards import DatasetCard
from .files import IGNORE_LABEL, read_manifest
from .synthetic import generate
from .validate import drop_images

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
CACHE_BYTES = 2**30  # per split and per loader worker: 1024 px pairs are 4 MiB, so ~250 images


@lru_cache(maxsize=16)
def _synthetic_split(generator: str, count: int, size: int, seed: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    return generate(generator, count, size, seed, variant)


class SegmentationDataset(Dataset):
    """Items: image (3, S, S) float normalised; label (S, S): float 0/1 (binary) or long class ids (multi-class).

    `samples` is either a pair of arrays (images (N, H, W, 3) uint8, labels (N, H, W) uint8) or a
    DataFrame with image and label paths.
    """

    def __init__(self, samples, kind: str, size: int, train: bool, keys: bool = False,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.samples, self.kind, self.size, self.train, self.keys = samples, kind, size, train, keys
        # Decoded, resized and laid out uint8 pairs, kept while they fit the budget: each image is decoded, resized,
        # binarised and transposed once, so a cached item costs one normalisation (the loader never stalls a step).
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache_bytes = cache_bytes

    def __len__(self) -> int:
        return len(self.samples[0]) if isinstance(self.samples, tuple) else len(self.samples)

    def _raw(self, i: int) -> tuple[Image.Image, Image.Image]:
        if isinstance(self.samples, tuple):
            return Image.fromarray(self.samples[0][i]), Image.fromarray(self.samples[1][i])
        row = self.samples.iloc[i]
        return Image.open(row["image"]).convert("RGB"), Image.open(row["label"]).convert("L")

    def original_label(self, i: int) -> np.ndarray:
        """(H, W) uint8 label as stored: 0/1 or 0/255 for binary tasks, class ids (255 = ignore) for multi-class."""
        if isinstance(self.samples, tuple):
            return self.samples[1][i]
        return np.asarray(Image.open(self.samples.iloc[i]["label"]).convert("L"))

    def _prepared(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) uint8 image (bicubic) and (S, S) uint8 label (nearest; binary: 0/1), from the cache when there."""
        if i in self.cache:
            return self.cache[i]
        image, label = self._raw(i)
        image = np.asarray(image.resize((self.size, self.size), Image.BICUBIC))
        label = np.asarray(label.resize((self.size, self.size), Image.NEAREST))
        if self.kind == "binary":
            label = label > (127 if label.max() > 1 else 0)
        pair = (torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(label.astype(np.uint8)))
        if (len(self.cache) + 1) * 4 * self.size**2 <= self.cache_bytes:
            self.cache[i] = pair
        return pair

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        """x (B, 3, S, S), y (B, S, S), and with `keys` key (B,) = 2 i + flipped, which identifies the exact input
        image. Equal to collating the items one by one, at a third of the cost."""
        images, labels, keys = [], [], []
        for i in indices:
            image, label = self._prepared(i)
            flipped = bool(self.train and torch.rand(()) < 0.5)  # random horizontal flip, p = 0.5
            images.append(image.flip(-1) if flipped else image)
            labels.append(label.flip(-1) if flipped else label)
            keys.append(2 * i + flipped)
        x = normalise(torch.stack(images))
        y = torch.stack(labels)
        y = y.float() if self.kind == "binary" else y.long()
        return (x, y, torch.tensor(keys)) if self.keys else (x, y)

    def __getitem__(self, index: int | list[int]) -> tuple:
        """One item i: (x, y), or (x, y, key) with `keys`; a list of items: their `batch`."""
        if isinstance(index, list):
            return self.batch(index)
        x, y, *key = self.batch([index])
        return (x[0], y[0], int(key[0][0])) if key else (x[0], y[0])

    def loader(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
               **kwargs) -> DataLoader:
        """A DataLoader (kwargs: num_workers, pin_memory, ...) that reads whole batches (`batch`), in the order
        DataLoader(self, batch_size, shuffle, generator) would."""
        items = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        return DataLoader(self, batch_size=None, sampler=BatchSampler(items, batch_size, drop_last=False),
                          generator=generator, **kwargs)


def _synthetic_splits(card: DatasetCard) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split name -> generated arrays. Every split and test set has its own seed; test set t is drawn with
    variant t (e.g. "easy" / "hard"), train and val mix the variants."""
    def draw(count: int, offset: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
        return _synthetic_split(card.generator, count, card.size, card.seed * 10 + offset, variant)

    splits = {split: draw(card.splits[split], SPLIT_OFFSETS[split]) for split in ("train", "val")}
    for i, name in enumerate(card.test_names):
        key = "test" if name == "test" else f"test:{name}"
        splits[key] = draw(card.splits["test"], SPLIT_OFFSETS["test"] + i, "" if name == "test" else name)
    return splits


def _kept(card: DatasetCard, splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The manifest without the pairs `--skip-bad` excluded (card.excluded)."""
    bad = [os.path.join(card.base_dir, e["image"]) for e in card.excluded]
    return {split: drop_images(df, bad) for split, df in splits.items()}


def build_splits(card: DatasetCard, size: int, keys: bool = False) -> dict[str, SegmentationDataset]:
    """Split name -> dataset. Test splits are 'test' or 'test:<name>' (several test sets, e.g. Kvasir and CVC).
    With `keys`, items carry a key of the exact input (index and flip), for caching frozen embeddings."""
    raw = _synthetic_splits(card) if card.source == "synthetic" else _kept(card, read_manifest(card.path))
    return {split: SegmentationDataset(s, card.kind, size, train=split == "train", keys=keys)
            for split, s in raw.items()}


__all__ = ["IGNORE_LABEL", "SegmentationDataset", "build_splits"]
