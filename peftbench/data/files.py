"""File-backed datasets: a CSV manifest (image,label[,split]) or a folder in one of the layouts below.

Accepted layouts (paths inside CSVs are relative to the CSV's folder):
  1. `manifest.csv` or any CSV path with columns image, label, split (train/val/test).
  2. The Conv-LoRA layout: `train.csv`, `val.csv` and one or more `test*.csv` (columns image, label);
     `test_Kvasir.csv` becomes the test set "Kvasir", `test.csv` the test set "test".
  3. `train/`, `val/`, `test/` folders, each with `images/` and `masks/` paired by file stem.
The task is declared: binary by default, multi-class with `--classes K` (see cards.card_for_path); masks are read by
`read_label` and every one is checked against the task before training (data/validate.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _read_csv(path: Path, need_split: bool) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from None
    needed = {"image", "label"} | ({"split"} if need_split else set())
    if not needed <= set(df.columns):
        raise UserError(f"{path}: needs columns {sorted(needed)}, found {list(df.columns)}")
    base = path.parent
    df = df.assign(image=[str(base / p) for p in df["image"]], label=[str(base / p) for p in df["label"]])
    return df


def _paired_folder(split_dir: Path) -> pd.DataFrame:
    images = {p.stem: p for p in sorted((split_dir / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem.removesuffix("_mask"): p for p in sorted((split_dir / "masks").iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES}
    common = sorted(set(images) & set(masks))
    return pd.DataFrame({"image": [str(images[k]) for k in common], "label": [str(masks[k]) for k in common]})


def read_manifest(path: Path) -> dict[str, pd.DataFrame]:
    """Split name -> DataFrame(image, label) with absolute paths. Test splits are named 'test' or 'test:<name>'."""
    path = Path(path)
    if path.is_file():
        df = _read_csv(path, need_split=True)
        splits = {s: g[["image", "label"]].reset_index(drop=True) for s, g in df.groupby("split")}
        splits = {("test" if s == "test" else s): g for s, g in splits.items()}
    elif (path / "manifest.csv").is_file():
        return read_manifest(path / "manifest.csv")
    elif (path / "train.csv").is_file():
        splits = {"train": _read_csv(path / "train.csv", False)}
        if (path / "val.csv").is_file():
            splits["val"] = _read_csv(path / "val.csv", False)
        for test in sorted(path.glob("test*.csv")):
            name = test.stem.removeprefix("test").lstrip("_") or "test"
            splits["test" if name == "test" else f"test:{name}"] = _read_csv(test, False)
    elif (path / "train" / "images").is_dir():
        splits = {s: _paired_folder(path / s) for s in ("train", "val", "test") if (path / s / "images").is_dir()}
    else:
        raise UserError(
            f"{path}: no manifest.csv, train.csv or train/images found; give a CSV with image,label,split columns"
        )
    splits = {k: v for k, v in splits.items() if len(v)}
    missing = [s for s in ("train", "val") if s not in splits]
    if missing or not any(s.startswith("test") for s in splits):
        raise UserError(f"{path}: empty or missing splits ({', '.join(missing) or 'test'}); each of train, val and test needs samples")
    for split, df in splits.items():
        absent = [p for p in list(df["image"]) + list(df["label"]) if not Path(p).is_file()]
        if absent:
            raise UserError(f"{path}: {len(absent)} files listed for split {split} do not exist, e.g. {absent[0]}")
    return splits


def read_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 values of a mask file: grayscale values, or a palette image's indices (the class ids of
    Trans10K-v2 / VOC-style masks, not the palette colours' brightness). An RGB(A) mask is read only when its colour
    channels agree (a gray mask saved as RGB) and its alpha channel, if any, is opaque everywhere; otherwise a
    ValueError says what was found (a mask drawn in the alpha channel, a colour-coded mask) and what to do."""
    with Image.open(path) as im:
        if im.mode == "P":
            return np.asarray(im)
        if im.mode in ("1", "L", "I;16", "I", "F"):
            return np.asarray(im.convert("L"))
        rgba = np.asarray(im.convert("RGBA"))
    if (rgba[..., 3] != 255).any():
        raise ValueError("mask has a transparent alpha channel (the mask drawn in alpha?); save it as a "
                         "single-channel PNG with the mask as gray values")
    if not ((rgba[..., 0] == rgba[..., 1]) & (rgba[..., 1] == rgba[..., 2])).all():
        raise ValueError("colour mask (its R, G, B channels differ); save class ids or 0/255 as a single-channel "
                         "PNG (a palette PNG is read by its indices)")
    return rgba[..., 0].copy()
