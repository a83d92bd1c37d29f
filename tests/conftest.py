import numpy as np
import pytest
import torch
from PIL import Image

from peftbench.backbone.sam import load_sam
from peftbench.backbone.segmenter import SamSegmenter


@pytest.fixture
def tiny_segmenter():
    def make(num_classes: int = 1) -> SamSegmenter:
        torch.manual_seed(0)
        return SamSegmenter(load_sam("tiny"), num_classes)

    return make


def write_pairs(folder, count: int, size: int = 20, values=(0, 255), seed: int = 0) -> list[tuple[str, str]]:
    """Write `count` random RGB images and label PNGs with the given label values; returns relative paths."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.jpg")
        Image.fromarray(rng.choice(values, (size, size)).astype(np.uint8)).save(folder / "gt" / f"{i}.png")
        pairs.append((f"img/{i}.jpg", f"gt/{i}.png"))
    return pairs
