"""File-backed datasets: a CSV manifest (image,label[,split]) or a folder in one of the layouts below.

Accepted layouts (paths inside CSVs are relative to the CSV's folder):
  1. `manifest.csv` or any CSV path with columns image, label, split (train/val/test).
  2. The Conv-LoRA layout: `train.csv`, `val.csv` and one or more `test*.csv` (columns image, label);
     `test_Kvasir.csv` becomes the test set "Kvasir", `test.csv` the test set "test".
  3. `train/`, `val/`, `test/` folders, each with `images/` and `masks/` paired by file stem.
The task is declared: binary by default, multi-class with `--classes K` (see cards.card_for_path); masks are read by
`read_label` and every one is checked against the task before training (data/validate.py).

Every image the harness reads (training, validation, `prepare`, `predict`) goes through `read_image`, one rule from
a file's mode to the model's 8-bit RGB (docs/datasets.md has the table):
- 8-bit modes by Pillow's own conversion: RGB as stored, L and 1 replicated, P by its palette's colours, CMYK by
  Pillow's formula (no colour profile), alpha (RGBA, LA, PA) dropped: the stored colours, as OpenCV's imread and
  Pillow's convert("RGB") give them; compositing would invent a background colour.
- 16-bit samples (gray, RGB(A), also 32-bit integers within 0..65535) by their high byte, v >> 8: what Pillow
  itself gives for 16-bit RGB, and exact for 8-bit data widened either way (v * 257 or v * 256). No per-image
  stretch: that would change the data from one image to the next.
- float samples in [0, 1] as round(255 v), exact for 8-bit data stored as v / 255.
What this rule would turn into something degenerate is refused (ImageRuleError, naming what was found): a 16-bit
image whose values all lie below 2**12 (12-bit data, near-black read by its high byte), float values outside
[0, 1], integers outside 0..65535, an image that becomes one flat colour only through the conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
BINARY_THRESHOLD = 128  # binary masks that are not 0/1 or 0/255 (--binarize): foreground >= 128
EXACT_MODES = ("1", "L", "P", "RGB")  # 8-bit modes read as stored (P by its palette), nothing to refuse
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # one 16/32-bit integer or float sample per pixel
SIXTEEN_BIT = "peftbench_16_bit_samples"  # image.info flag: Pillow read 16-bit colour samples as their high byte
DARK_HIGH_BYTE = 16  # 16-bit images whose values are all < 16 * 256 = 2**12 would be near-black


class ImageRuleError(ValueError):
    """A file that the reading rule would turn into something degenerate; the message says what was found."""


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


def _sixteen_bit_colour(image: Image.Image) -> bool:
    """Whether Pillow decodes this not yet loaded image from 16-bit colour samples (PNG RGB;16B, TIFF RGB;16L...),
    which it keeps by their high byte. Known from the decoder's raw mode only before load() clears the tiles."""
    rawmodes = [tile.args if isinstance(tile.args, str) else tile.args[0] for tile in image.tile if tile.args]
    return image.mode not in WIDE_GRAY_MODES and any(";16" in str(raw) for raw in rawmodes)


def reads_as_stored(image: Image.Image) -> bool:
    """Whether `read_image` reads this not yet loaded image as stored (so a header check suffices to validate it):
    an 8-bit mode that the rule cannot refuse."""
    return image.mode in EXACT_MODES and not _sixteen_bit_colour(image)


def _from_tifffile(path: Path) -> Image.Image:
    """A TIFF Pillow cannot read, read with tifffile: as an exact Pillow image when Pillow has its mode (8-bit
    gray / RGB / RGBA, 16-bit or 32-bit integer or float gray), else (16-bit or float colour) mapped to RGB by the
    sample rule (`to_8bit`) first."""
    import tifffile  # installed with scikit-image

    array = np.asarray(tifffile.imread(path))
    array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    if array.ndim == 2:  # in a dtype Pillow holds exactly: uint8 L, bool 1, uint16 I;16, other integers I, floats F
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype not in (np.uint8, np.uint16, bool):
            array = array.astype(np.int64).clip(-2**31, 2**31 - 1).astype(np.int32)
        return Image.fromarray(array)
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise ValueError(f"array of shape {array.shape}: not a gray, gray + alpha, RGB or RGBA image")
    samples = to_8bit(array)
    return Image.fromarray(samples[..., [0, 0, 0]] if samples.shape[-1] == 2 else samples[..., :3])


def open_image(path: str | Path) -> Image.Image:
    """An image or mask file as Pillow opens it, decoded (so a truncated file fails here); a TIFF Pillow cannot read
    (CVC-ClinicDB's declare PhotometricInterpretation 1, min-is-black, with 3 samples per pixel) is read with
    tifffile instead (`_from_tifffile`). 16-bit colour samples are flagged in `info[SIXTEEN_BIT]`."""
    path = Path(path)
    try:
        image = Image.open(path)
        sixteen_bit = _sixteen_bit_colour(image)
        image.load()
    except (OSError, ValueError) as err:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
        try:
            return _from_tifffile(path)
        except ImageRuleError:
            raise
        except Exception as tiff_err:  # noqa: BLE001 - tifffile's own errors: report PIL's and tifffile's
            raise OSError(f"{err}; tifffile: {tiff_err}") from None
    if sixteen_bit:
        image.info[SIXTEEN_BIT] = True
    return image


def _refuse_dark(high_byte_max: int) -> None:
    if high_byte_max < DARK_HIGH_BYTE:
        raise ImageRuleError(
            f"16-bit image whose values are all below {DARK_HIGH_BYTE * 256} (12-bit data?): read by its high byte "
            f"it would be near-black (at most {high_byte_max}/255); rescale it to 0..65535 or save it as 8-bit")


def to_8bit(samples: np.ndarray) -> np.ndarray:
    """uint8 samples of the same shape by the sample rule (module docstring): uint8 as they are, bool 0/255,
    integers within 0..65535 by their high byte (v >> 8), floats in [0, 1] as round(255 v). ImageRuleError for
    what would be degenerate: other ranges, 16-bit data below 2**12, values that all map to one."""
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype == bool:
        return samples.astype(np.uint8) * 255
    lo, hi = samples.min(), samples.max()
    if samples.dtype.kind == "f":
        if not (0 <= lo and hi <= 1):  # also NaN
            raise ImageRuleError(f"float image with values outside [0, 1] (min {lo:g}, max {hi:g}): only [0, 1] "
                                 "is read (as round(255 v)); scale it to [0, 1] or save it as 8-bit")
        out = np.rint(samples * 255).astype(np.uint8)
    else:
        if lo < 0 or hi > 65535:
            raise ImageRuleError(f"{samples.dtype} image with values outside 0..65535 (min {lo}, max {hi}): only "
                                 "8-bit and 16-bit ranges are read; save it as 8-bit or 16-bit")
        out = (samples >> 8).astype(np.uint8)
        _refuse_dark(int(hi) >> 8)
    if lo != hi and out.min() == out.max():
        raise ImageRuleError(f"{samples.dtype} image with values {lo:g}..{hi:g}: it would be read as one flat value "
                             f"({out.min()}/255)")
    return out


def _is_flat(image: Image.Image) -> bool:
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(lo == hi for lo, hi in bands)


def rgb_image(image: Image.Image) -> Image.Image:
    """The RGB image the model sees of a decoded image, by the rule of the module docstring; ImageRuleError where
    it would be degenerate. An 8-bit RGB image comes back as it is (not copied: 256 MB at 8000 x 8000)."""
    if image.mode in WIDE_GRAY_MODES:
        return Image.fromarray(to_8bit(np.asarray(image))).convert("RGB")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if image.info.get(SIXTEEN_BIT):
        _refuse_dark(max(hi for _, hi in rgb.getextrema()))
    if image.mode not in EXACT_MODES and _is_flat(rgb) and not _is_flat(image):
        raise ImageRuleError(f"{image.mode} image that becomes one flat colour {rgb.getpixel((0, 0))} as RGB: what "
                             "varies is dropped by the conversion (alpha?); save what the model should see as RGB")
    return rgb


def read_image(path: str | Path) -> Image.Image:
    """The RGB image (mode "RGB", the file's size) the model sees of the image file at `path` (see `rgb_image`)."""
    with open_image(path) as image:  # leaving the block closes the file, not the decoded image
        return rgb_image(image)


def wide_mask(values: np.ndarray) -> np.ndarray:
    """(H, W) uint8 of a 16/32-bit integer or float mask: whole values 0..255 as they are (class ids, 0/1, 0/255),
    a 16-bit binary mask 0/65535 as 0/255; ValueError for anything else (no scaling could keep class ids)."""
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise ValueError("float mask with fractional values: save class ids or 0/255 as an 8-bit PNG")
    lo, hi = values.min(), values.max()
    if 0 <= lo and hi <= 255:
        return values.astype(np.uint8)
    if ((values == 0) | (values == 65535)).all():
        return (values > 0).astype(np.uint8) * 255
    raise ValueError(f"mask values {lo:g}..{hi:g} beyond 0..255 that are not a 16-bit 0/65535 mask: save class "
                     "ids or 0/255 as an 8-bit PNG")


def read_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 values of a mask file: grayscale values, or a palette image's indices (the class ids of
    Trans10K-v2 / VOC-style masks, not the palette colours' brightness); 16/32-bit and float masks by their values
    (`wide_mask`: 0..255, or 0/65535 as 0/255), never clipped. An 8-bit RGB(A) mask is read only when its colour
    channels agree (a gray mask saved as RGB) and its alpha channel, if any, is opaque everywhere; otherwise a
    ValueError says what was found (a mask drawn in the alpha channel, a colour-coded mask, 16-bit colour) and what
    to do."""
    with open_image(path) as im:
        if im.mode == "P":
            return np.asarray(im)
        if im.mode == "L":
            return np.asarray(im)
        if im.mode == "1":
            return np.asarray(im.convert("L"))
        if im.mode in WIDE_GRAY_MODES:
            return wide_mask(np.asarray(im))
        if im.info.get(SIXTEEN_BIT):
            raise ValueError("16-bit colour mask (Pillow keeps only the high byte of each sample): save it as a "
                             "single-channel PNG")
        rgba = np.asarray(im.convert("RGBA"))
    if (rgba[..., 3] != 255).any():
        raise ValueError("mask has a transparent alpha channel (the mask drawn in alpha?); save it as a "
                         "single-channel PNG with the mask as gray values")
    if not ((rgba[..., 0] == rgba[..., 1]) & (rgba[..., 1] == rgba[..., 2])).all():
        raise ValueError("colour mask (its R, G, B channels differ); save class ids or 0/255 as a single-channel "
                         "PNG (a palette PNG is read by its indices)")
    return rgba[..., 0].copy()


def foreground(label: np.ndarray) -> np.ndarray:
    """Bool foreground of a binary task's mask values (read_label's, any shape): a mask whose values are all <= 1
    is 0/1 (foreground 1); any other is thresholded at BINARY_THRESHOLD (0/255 masks: 255; with --binarize,
    anti-aliased or lossy masks: >= 128, as `prepare --binarize` and PraNet's loaders). The rule of the loader, the
    validator's empty-mask check and prepare's binarised masks; the test metrics' (train._score) is the same."""
    return label > 0 if label.max() <= 1 else label >= BINARY_THRESHOLD
