"""File-backed datasets: a CSV manifest (image,label[,split]) or a folder in one of the layouts below.

Accepted layouts (paths inside CSVs are relative to the CSV's folder):
  1. `manifest.csv` or any CSV path with columns image, label, split (train/val/test).
  2. The Conv-LoRA layout: `train.csv`, `val.csv` and one or more `test*.csv` (columns image, label);
     `test_Kvasir.csv` becomes the test set "Kvasir", `test.csv` the test set "test".
  3. `train/`, `val/`, `test/` folders, each with `images/` and `masks/` paired by file stem.
The task is inferred from the training masks: values within {0, 255} or {0, 1} -> binary; otherwise
multi-class with K = max value + 1 (255 is treated as "ignore" when other values exceed 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import UserError
from .cards import BINARY_METRICS, MULTICLASS_METRICS, DatasetCard

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
IGNORE_LABEL = 255


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


def infer_task(label_paths: list[str]) -> tuple[str, int]:
    """('binary', 1) or ('multiclass', K) from the values found in the label images."""
    values: set[int] = set()
    for p in label_paths:
        values |= set(np.unique(np.asarray(Image.open(p).convert("L"))).tolist())
    if values <= {0, 255} or values <= {0, 1}:
        return "binary", 1
    return "multiclass", max(values - {IGNORE_LABEL}) + 1


def card_for_path(path: Path) -> DatasetCard:
    splits = read_manifest(path)
    kind, num_classes = infer_task(list(splits["train"]["label"]))
    binary = kind == "binary"
    return DatasetCard(
        name=Path(path).stem if Path(path).is_file() else Path(path).name,
        kind=kind, source="files", num_classes=num_classes, path=str(Path(path).resolve()),
        description=f"ad-hoc dataset from {path}",
        metrics=list(BINARY_METRICS if binary else MULTICLASS_METRICS),
        select_metric="iou" if binary else "miou",
    )
