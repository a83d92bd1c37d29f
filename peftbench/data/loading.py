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
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from ..backbone.segmenter import normalise
from .cards import DatasetCard
from .files import foreground, read_image, read_label, read_manifest
from .synthetic import generate
from .validate import drop_images

# In every run's config (so records trained with another augmentation stream are rerun, not mixed with these).
AUGMENTATION = "horizontal flip p=0.5 per training image, drawn with the shuffle from the run's seeded loader generator"
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

    def _raw_image(self, i: int) -> Image.Image:
        """The RGB image at its own size: generated, or read by files.read_image (the harness's one rule)."""
        if isinstance(self.samples, tuple):
            return Image.fromarray(self.samples[0][i])
        return read_image(self.samples.iloc[i]["image"])

    def original_label(self, i: int) -> np.ndarray:
        """(H, W) uint8 label as stored: 0/1 or 0/255 for binary tasks, class ids (255 = ignore) for multi-class."""
        if isinstance(self.samples, tuple):
            return self.samples[1][i]
        return read_label(self.samples.iloc[i]["label"])

    def _prepared(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) uint8 image (bicubic) and (S, S) uint8 label (nearest; binary: 0/1 by files.foreground), from
        the cache when there."""
        if i in self.cache:
            return self.cache[i]
        image = np.asarray(self._raw_image(i).resize((self.size, self.size), Image.BICUBIC))
        label = self.original_label(i)
        if self.kind == "binary":  # at the original resolution, as validation and the test metrics threshold it
            label = foreground(label).view(np.uint8)  # 0/1, no copy
        label = np.asarray(Image.fromarray(label).resize((self.size, self.size), Image.NEAREST))
        pair = (torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(label.astype(np.uint8)))
        if (len(self.cache) + 1) * 4 * self.size**2 <= self.cache_bytes:
            self.cache[i] = pair
        return pair

    def batch(self, items: list[tuple[int, bool]]) -> tuple[torch.Tensor, ...]:
        """items: (index, flipped) pairs. x (B, 3, S, S), y (B, S, S), and with `keys` key (B,) = 2 i + flipped,
        which identifies the exact input image. Equal to collating the items one by one, at a third of the cost."""
        images, labels, keys = [], [], []
        for i, flipped in items:
            image, label = self._prepared(i)
            images.append(image.flip(-1) if flipped else image)
            labels.append(label.flip(-1) if flipped else label)
            keys.append(2 * i + flipped)
        x = normalise(torch.stack(images))
        y = torch.stack(labels)
        y = y.float() if self.kind == "binary" else y.long()
        return (x, y, torch.tensor(keys)) if self.keys else (x, y)

    def __getitem__(self, index: int | list[tuple[int, bool]]) -> tuple:
        """Item i unflipped: (x, y), or (x, y, key) with `keys`; a list of (index, flipped) pairs: their `batch`."""
        if isinstance(index, list):
            return self.batch(index)
        x, y, *key = self.batch([(index, False)])
        return (x[0], y[0], int(key[0][0])) if key else (x[0], y[0])

    def loader(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
               **kwargs) -> DataLoader:
        """A DataLoader (kwargs: num_workers, pin_memory, ...) that reads whole batches (`batch`), shuffled by
        `generator` as DataLoader(self, batch_size, shuffle, generator) shuffles, each image of a training split
        flipped with p = 0.5 by a draw from the same generator (see FlipBatchSampler)."""
        items = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        batches = FlipBatchSampler(BatchSampler(items, batch_size, drop_last=False), self.train, generator)
        # `generator` drives the sampler alone: DataLoader would also draw worker seeds from it, once per epoch
        # without persistent workers and once per run with them, so the order would depend on the worker setting.
        return DataLoader(self, batch_size=None, sampler=batches, **kwargs)


class FlipBatchSampler(Sampler):
    """Batches of (index, flipped) pairs: the indices of `batches`, the random horizontal flips (p = 0.5, when
    `flip`) drawn from `generator` right after each batch's indices.

    The flips are drawn here, in the main process, from the run's seeded loader generator, never from the global
    RNG: a method's initialisation and its own random operations during training (Conv-LoRA's gate noise, Mona's
    dropout) advance the global RNG differently, and loader workers reseed theirs. So for one seed every method sees
    the same images in the same order with the same flips, which the paired tests of the report assume.
    """

    def __init__(self, batches: BatchSampler, flip: bool, generator: torch.Generator | None) -> None:
        if flip and generator is None:
            raise ValueError("random flips need a seeded generator (the run's loader generator)")
        self.batches, self.flip, self.generator = batches, flip, generator

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for indices in self.batches:
            flips = (torch.rand(len(indices), generator=self.generator) < 0.5).tolist() if self.flip \
                else [False] * len(indices)
            yield list(zip(indices, flips))


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


__all__ = ["SegmentationDataset", "build_splits"]
