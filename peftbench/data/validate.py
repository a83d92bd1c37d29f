"""Checks every image/label pair of a split before anything trains on it.

What is checked, per pair:
- the image opens and is complete. Fast mode (default) reads the header and checks that JPEG / PNG files end with
  their end marker (a truncated download or copy loses it), which costs two small reads; `full_decode=True` decodes
  every image, which also catches corrupt data in the middle of a file and truncated TIFFs (`prepare` does this).
  Images that `files.read_image` does not read as stored (16-bit, float, alpha, CMYK) are decoded in either mode:
  what its rule would read as something degenerate (near-black 12-bit data, floats outside [0, 1], one flat
  colour) is a problem naming the file.
- the label decodes (always fully: its values are needed) to the image's size;
- the label values fit the task as the loader reads them (`files.read_label`: gray values, palette indices; masks
  in an alpha channel or in colour are refused): binary labels within {0, 255} or {0, 1}
  (anything else, e.g. anti-aliased edges, would be thresholded silently), multi-class labels < num_classes or 255.
Files are checked in a thread pool: PIL releases the GIL while decoding.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console

from ..errors import UserError
from ..scoring.labels import IGNORE_LABEL
from .cards import DatasetCard
from .files import BINARY_THRESHOLD, ImageRuleError, foreground, read_image, read_label, read_manifest, reads_as_stored

PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"


@dataclass
class Problem:
    split: str
    image: str
    label: str
    problem: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.split}: {Path(self.image).name} / {Path(self.label).name}: {self.problem}"


def _ends_cleanly(path: str) -> bool:
    """False when a JPEG or PNG lacks its end marker (truncated). Other formats: True (not checkable cheaply)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        return True
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read()
    # JPEGs may carry a few padding bytes after the EOI marker, so look in the last 64 bytes.
    return PNG_END in tail[-12:] if suffix == ".png" else JPEG_END in tail


def _image_size(path: str, full_decode: bool) -> tuple[tuple[int, int] | None, str]:
    """((width, height), "") or (None, reason). An image that `read_image` would not read as stored (16-bit, float,
    alpha, CMYK...) or one only tifffile reads is decoded in any mode, so what the rule refuses is found here."""
    try:
        with Image.open(path) as im:
            size, as_stored = im.size, reads_as_stored(im)
    except (OSError, ValueError, Image.DecompressionBombError):
        size, as_stored = None, False  # perhaps a TIFF only tifffile reads: read_image tries it
    try:
        if full_decode or not as_stored:
            size = read_image(path).size
    except ImageRuleError as err:
        return None, str(err)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"unreadable image ({err})"
    if not full_decode and not _ends_cleanly(path):
        return None, "truncated image (no end marker)"
    return size, ""


def _label_values(path: str) -> tuple[tuple[int, int] | None, np.ndarray | None, str]:
    try:
        label = read_label(path)
    except (OSError, Image.DecompressionBombError) as err:
        return None, None, f"unreadable label ({err})"
    except ValueError as err:  # what read_label refuses: a mask in the alpha channel, a colour mask
        return None, None, str(err)
    return (label.shape[1], label.shape[0]), np.unique(label), ""


def _value_problem(values: np.ndarray, kind: str, num_classes: int, binarize: bool = False) -> str:
    found = set(values.tolist())
    if kind == "binary":
        if found <= {0, 255} or found <= {0, 1} or binarize:
            return ""
        shown = sorted(found - {0, 255})
        return (f"label has {len(shown)} values besides 0/255 (e.g. {shown[:5]}): an anti-aliased or lossy (JPEG) "
                "mask in a binary task; --binarize thresholds masks at 128 (prepare --binarize for a registered "
                "dataset), or --classes K if these are class ids")
    bad = sorted(v for v in found if v >= num_classes and v != IGNORE_LABEL)
    return f"label values {bad[:5]} >= num_classes {num_classes} (only 255 = ignore is allowed)" if bad else ""


def _check_pair(image: str, label: str, split: str, kind: str, num_classes: int,
                full_decode: bool, binarize: bool) -> tuple[Problem | None, bool]:
    """(the pair's problem or None, whether its label has any foreground (files.foreground: as the loader
    thresholds it) / non-background pixel)."""
    image_size, reason = _image_size(image, full_decode)
    if reason:
        return Problem(split, image, label, reason), False
    label_size, values, reason = _label_values(label)
    if reason:
        return Problem(split, image, label, reason), False
    if label_size != image_size:
        return Problem(split, image, label, f"label size {label_size} != image size {image_size} (width, height)"), \
            False
    reason = _value_problem(values, kind, num_classes, binarize)
    found = foreground(values).any() if kind == "binary" else bool(set(values.tolist()) - {0, IGNORE_LABEL})
    return (Problem(split, image, label, reason) if reason else None), bool(found)


def validate_pairs(frame: pd.DataFrame, kind: str, num_classes: int, split: str, full_decode: bool = False,
                   workers: int | None = None, foreground: list[bool] | None = None,
                   binarize: bool = False) -> list[Problem]:
    """Problems of one split's pairs (frame columns image, label: paths), in the frame's order; [] when clean.

    kind: "binary" or "multiclass"; num_classes: K for multi-class (ignored for binary). `foreground`, if given,
    gets one flag per good pair: whether its label has any foreground (binary) or non-background class.
    `binarize`: binary masks may hold any values (files.foreground thresholds them at 128)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda pair: _check_pair(*pair, split, kind, num_classes, full_decode, binarize),
                              zip(frame["image"].astype(str), frame["label"].astype(str))))
    if foreground is not None:
        foreground += [has for problem, has in found if problem is None]
    return [problem for problem, _ in found if problem is not None]


def drop_images(frame: pd.DataFrame, images: list[str]) -> pd.DataFrame:
    """The frame without the rows whose image path is one of `images` (paths compared normalised)."""
    bad = {os.path.normpath(i) for i in images}
    return frame[~frame["image"].astype(str).map(os.path.normpath).isin(bad)].reset_index(drop=True)


def screen_card(card: DatasetCard, skip_bad: bool, console: Console) -> None:
    """Check every pair of a file-backed dataset before any run trains on it. Problems are printed with their
    file names; then either a UserError stops the grid, or (`skip_bad`) the pairs are listed in `card.excluded`,
    which the loader drops and every run's config and record keep."""
    if card.source != "files":  # synthetic data, or prepared (prepare decoded and checked every pair)
        return
    splits = read_manifest(Path(card.path))
    found: list[bool] = []
    with console.status(f"checking the image/label pairs of {card.name}"):
        problems = [p for split, frame in splits.items()
                    for p in validate_pairs(frame, card.kind, card.num_classes, split,
                                            foreground=found if split == "train" else None,
                                            binarize=card.binarize)]
    for problem in problems:
        console.print(str(problem), markup=False, highlight=False)
    if problems and not skip_bad:
        raise UserError(f"--datasets {card.name}: {len(problems)} bad image/label pairs (listed above); fix them or "
                        "pass --skip-bad to leave them out")
    if not any(found):
        what = "foreground pixel" if card.kind == "binary" else "pixel of a class other than 0 (background)"
        rule = f" (as --binarize reads them: 1 in a 0/1 mask, else >= {BINARY_THRESHOLD})" if card.binarize else ""
        raise UserError(f"--datasets {card.path}: none of the {len(found)} training masks has a {what}{rule}: "
                        "nothing to learn; check the mask folder and its values")
    card.excluded = [{**p.as_dict(), "image": os.path.relpath(p.image, card.base_dir),
                      "label": os.path.relpath(p.label, card.base_dir)} for p in problems]
