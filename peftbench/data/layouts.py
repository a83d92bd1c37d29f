"""One converter per release layout: find it in extracted archives / folders, turn it into split -> image/label pairs.

A layout is detected from the content (folder names), so archives can be given in any order and any number.
Each converter returns {split: [(image, label), ...]} with split "train", "val", "test" or "test:<set>", paths
absolute. Files that must change (TIF -> PNG, JPEG masks -> binary PNG, colour -> class-index masks, tiles) are
written under <prepared folder>/converted/<layout>/; everything else is used where it was extracted.

Mask policy: lossless binary masks (PNG, TIF) are used as shipped and validated; masks that cannot be clean
(JPEG: Kvasir-SEG) are thresholded at 128, as PraNet's and PySODMetrics' loaders do; `--binarize` thresholds all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import UserError
from ..scoring.labels import IGNORE_LABEL
from .cards import DatasetCard
from .files import BINARY_THRESHOLD, IMAGE_SUFFIXES, WIDE_GRAY_MODES, foreground, open_image, read_image, wide_mask
from .validate import Problem

Pair = tuple[Path, Path]
Splits = dict[str, list[Pair]]
MOSTLY_NODATA = 0.5  # Massachusetts Roads: tiles at least this white are listed in prepared.json

# Trans10K-v1 (TransLab, Segment_Transparent_Objects/segmentron/data/dataloader/trans10k.py): RGB masks,
# background black, "things" red (255, 0, 0), "stuff" white; the loader maps the channel mean 0 / 85 / 255 to 0 / 1 / 2.
TRANS10K_V1_MEANS = {0: 0, 85: 1, 255: 2}


def voc_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map that Trans2Seg (segmentron/utils/visualize.py) uses to draw class-index masks."""
    colours = []
    for j in range(n):
        lab, rgb, i = j, [0, 0, 0], 0
        while lab:
            for c in range(3):
                rgb[c] |= ((lab >> c) & 1) << (7 - i)
            i, lab = i + 1, lab >> 3
        colours.append(tuple(rgb))
    return colours


@dataclass
class Context:
    """What a converter needs besides the matched folders; converters add notes and bad pairs to it."""

    card: DatasetCard
    out: Path  # the prepared folder
    params: dict  # the card's [[sources]] entry for this layout (split fractions)
    binarize: bool = False
    tile: int | None = None
    notes: dict = field(default_factory=dict)
    bad: list[Problem] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.card.split_seed

    def converted(self, layout: str, split: str, kind: str, name: str) -> Path:
        path = self.out / "converted" / layout / split.replace(":", "_") / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Layout:
    """detect(folder) -> True where this layout's root is; convert(roots, ctx) -> splits."""

    detect: Callable[[Path], bool]
    convert: Callable[[list[Path], Context], Splits]


LAYOUTS: dict[str, Layout] = {}


def layout(name: str, detect: Callable[[Path], bool]):
    def register(convert: Callable[[list[Path], Context], Splits]):
        LAYOUTS[name] = Layout(detect, convert)
        return convert
    return register


# ---------------------------------------------------------------------------------------------- helpers


def child(folder: Path, *names: str) -> Path | None:
    """The first sub-folder of `folder` whose name matches one of `names`, case-insensitively."""
    if not folder.is_dir():
        return None
    wanted = [n.lower() for n in names]
    found = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    return next((found[n] for n in wanted if n in found), None)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def pair_by_stem(images: Path, masks: Path, ctx: Context, key: str, mask_suffix: str = "",
                 keep: Callable[[Path], bool] = lambda p: True, shared_masks: bool = False) -> list[Pair]:
    """Images paired with masks named <image stem><mask_suffix>.<any ext>. An image without a mask, or a mask
    without an image, is a bad pair (an error, or left out and listed with --skip-bad), never dropped silently;
    `shared_masks`: one mask folder serves several image folders (CAMO), so its other masks are only counted."""
    every_image = image_files(images)
    by_stem = {p.stem: p for p in every_image if keep(p)}
    mask_by_stem = {p.stem.removesuffix(mask_suffix): p for p in image_files(masks) if p.stem.endswith(mask_suffix)}
    common = sorted(set(by_stem) & set(mask_by_stem))
    # a mask of an image `keep` leaves out (COD10K's NonCAM) has its image: it is not lonely
    lonely_images = sorted(set(by_stem) - set(mask_by_stem))
    lonely_masks = sorted(set(mask_by_stem) - {p.stem for p in every_image})
    ctx.bad += [Problem(key, str(by_stem[s]), "", f"image without a mask (no {s}{mask_suffix}.* in {masks})")
                for s in lonely_images]
    if shared_masks:
        ctx.notes.setdefault("masks_of_other_splits", {})[key] = len(lonely_masks)
    else:
        ctx.bad += [Problem(key, "", str(mask_by_stem[s]), f"mask without an image (no {s}.* in {images})")
                    for s in lonely_masks]
    if not common:
        raise UserError(f"{images} and {masks}: no image has a mask named <stem>{mask_suffix}.*; "
                        "is the archive complete?")
    return [(by_stem[s], mask_by_stem[s]) for s in common]


def carve(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(rest, carved): ceil(fraction * n) pairs drawn with a seeded permutation of the name-sorted list."""
    ordered = sorted(pairs)
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[: math.ceil(fraction * len(ordered))].tolist())
    return ([p for i, p in enumerate(ordered) if i not in chosen], [p for i, p in enumerate(ordered) if i in chosen])


def carve_val(splits: Splits, ctx: Context, layout_name: str) -> Splits:
    """Carve val from train with the source's val_fraction where the release has no validation split."""
    if "val" in splits:
        return splits
    fraction = float(ctx.params.get("val_fraction", 0.1))
    splits["train"], splits["val"] = carve(splits["train"], fraction, ctx.seed)
    ctx.notes.setdefault("carved", {})[layout_name] = {
        "recipe": f"val = {fraction:g} of train (ceil), seeded permutation of the name-sorted pairs",
        "seed": ctx.seed, "train": len(splits["train"]), "val": len(splits["val"])}
    return splits


def _parallel(fn: Callable, items: list) -> list:
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def guarded(fn: Callable[[Pair], object], ctx: Context, split: str) -> Callable[[Pair], object]:
    """`fn` on one pair, except that a file it cannot read or convert (truncated, corrupt, not an image) makes the
    pair a bad pair (ctx.bad: an error naming the file, or left out and listed with --skip-bad) and gives None,
    instead of a traceback. Every converter reads its files through this."""
    def safe(pair: Pair):
        try:
            return fn(pair)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # what PIL raises on bad data
            ctx.bad.append(Problem(split, str(pair[0]), str(pair[1]), f"unreadable or corrupt file ({err})"))
            return None
    return safe


def save(image: Image.Image, dst: Path) -> Path:
    """Written under a temporary name first: a file left by an interrupted prepare is never taken as complete."""
    tmp = dst.with_name(f".{dst.stem}.tmp{dst.suffix}")
    image.save(tmp)
    os.replace(tmp, dst)
    return dst


def write_binary_mask(src: Path, dst: Path) -> Path:
    """(H, W) 0/255 PNG from any mask by files.foreground (0/1 masks as they are, others thresholded at 128: JPEG
    masks carry compression noise around edges); 16-bit and float masks by their values (files.wide_mask), colour
    masks by their luma."""
    if not dst.is_file():
        with open_image(src) as im:
            mask = foreground(wide_mask(np.asarray(im)) if im.mode in WIDE_GRAY_MODES else np.asarray(im.convert("L")))
        save(Image.fromarray((mask * 255).astype(np.uint8)), dst)
    return dst


def write_rgb_png(src: Path, dst: Path) -> Path:
    """The image as the model sees it (files.read_image), as an 8-bit RGB PNG."""
    if not dst.is_file():
        save(read_image(src), dst)  # decoded: a truncated file fails here, not when it is written
    return dst


def binary_pairs(pairs: list[Pair], ctx: Context, layout_name: str, split: str, must_convert: bool = False,
                 images_to_png: bool = False) -> list[Pair]:
    """Pairs with masks thresholded to 0/255 PNG when needed (lossy masks) or asked (--binarize), images
    re-encoded to PNG when the source format is not worth keeping (TIF)."""
    def convert(pair: Pair) -> Pair:
        image, mask = pair
        if images_to_png:
            image = write_rgb_png(image, ctx.converted(layout_name, split, "images", image.stem + ".png"))
        if must_convert or ctx.binarize:
            mask = write_binary_mask(mask, ctx.converted(layout_name, split, "masks", mask.stem + ".png"))
        return image, mask
    if must_convert or ctx.binarize:
        ctx.notes.setdefault("binarized", {})[f"{layout_name}/{split}"] = f"masks thresholded at >= {BINARY_THRESHOLD}"
    return [p for p in _parallel(guarded(convert, ctx, split), pairs) if p is not None]


def merge(*parts: Splits) -> Splits:
    merged: Splits = {}
    for part in parts:
        for split, pairs in part.items():
            merged.setdefault(split, []).extend(pairs)
    return merged


def find_roots(folders: list[Path], layouts: list[str]) -> dict[str, list[Path]]:
    """layout -> folders where it was detected. A match inside another layout's match is dropped (SINet's
    TestDataset/CHAMELEON is part of the SINet packaging, not a separate CHAMELEON release)."""
    found: list[tuple[str, Path]] = []
    for top in folders:
        for folder, dirs, _ in os.walk(top, followlinks=True):
            here = Path(folder)
            matched = [name for name in layouts if LAYOUTS[name].detect(here)]
            found.extend((name, here) for name in matched)
            if matched:
                dirs.clear()
            dirs.sort()
    roots: dict[str, list[Path]] = {}
    for name, path in found:
        if not any(other != path and path.is_relative_to(other) for _, other in found):
            roots.setdefault(name, []).append(path)
    return roots


# ---------------------------------------------------------------------------------------------- Conv-LoRA archives


def _is_convlora(d: Path) -> bool:
    return (d / "train.csv").is_file() and (d / "val.csv").is_file()


@layout("convlora", _is_convlora)
def convert_convlora(roots: list[Path], ctx: Context) -> Splits:
    """The Conv-LoRA authors' prebuilt archives: <name>/{train,val,test*}.csv with image,label paths relative to the
    CSV's folder (and a leading pandas index column). Test CSVs map to the card's test sets via `test_csvs`."""
    if len(roots) != 1:
        raise UserError(f"found {len(roots)} Conv-LoRA folders with train.csv ({', '.join(map(str, roots))}); give one")
    root = roots[0]
    test_csvs = ctx.params.get("test_csvs") or {"test": "test.csv"}

    def read(csv: Path) -> list[Pair]:
        frame = pd.read_csv(csv)
        if not {"image", "label"} <= set(frame.columns):
            raise UserError(f"{csv}: needs columns image, label; found {list(frame.columns)}")
        return [(root / str(i), root / str(m)) for i, m in zip(frame["image"], frame["label"])]

    splits = {"train": read(root / "train.csv"), "val": read(root / "val.csv")}
    missing = []
    for test_set, csv_name in test_csvs.items():
        if (root / csv_name).is_file():
            splits["test" if test_set == "test" else f"test:{test_set}"] = read(root / csv_name)
        else:
            missing.append(f"{test_set} ({csv_name})")
    if len(missing) == len(test_csvs):
        raise UserError(f"{root}: none of the test CSVs {', '.join(test_csvs.values())} is there")
    unused = sorted(p.name for p in root.glob("test*.csv") if p.name not in test_csvs.values())
    ctx.notes.update({"root": str(root), "missing_test_csvs": missing, "unused_csvs": unused})
    return splits


# ---------------------------------------------------------------------------------------------- polyp


def _is_kvasir(d: Path) -> bool:
    return d.name.lower().startswith("kvasir") and child(d, "images") is not None and child(d, "masks") is not None


def _split_polyp(pairs: list[Pair], ctx: Context, name: str, test_set: str) -> Splits:
    """Appendix B: each polyp dataset 90 % train / 10 % test (seeded), then val carved from train."""
    fraction = float(ctx.params.get("test_fraction", 0.1))
    train, test = carve(pairs, fraction, ctx.seed)
    ctx.notes.setdefault("carved", {})[f"{name} test"] = {
        "recipe": f"test = {fraction:g} of all images (ceil), seeded permutation of the name-sorted pairs",
        "seed": ctx.seed, "test": len(test)}
    return carve_val({"train": train, f"test:{test_set}": test}, ctx, name)


@layout("kvasir_seg", _is_kvasir)
def convert_kvasir(roots: list[Path], ctx: Context) -> Splits:
    """Kvasir-SEG (datasets.simula.no): Kvasir-SEG/images/*.jpg + masks/*.jpg (JPEG masks -> thresholded PNG)."""
    root = roots[0]
    pairs = pair_by_stem(child(root, "images"), child(root, "masks"), ctx, "kvasir_seg")
    pairs = binary_pairs(pairs, ctx, "kvasir_seg", "all", must_convert=True)
    return _split_polyp(pairs, ctx, "kvasir_seg", "kvasir")


def _is_cvc(d: Path) -> bool:
    return child(d, "Original") is not None and child(d, "Ground Truth", "GroundTruth") is not None


@layout("cvc_clinicdb", _is_cvc)
def convert_cvc(roots: list[Path], ctx: Context) -> Splits:
    """CVC-ClinicDB: Original/<n>.tif + "Ground Truth"/<n>.tif (the release), or the same folders with PNGs (the
    Kaggle copy ships both under PNG/ and TIF/: PNG is used). TIFs are re-encoded to PNG."""
    root = max(roots, key=lambda r: any(p.suffix.lower() == ".png" for p in image_files(child(r, "Original"))))
    if len(roots) > 1:
        ctx.notes["cvc_variants_ignored"] = [str(r) for r in roots if r != root]
    pairs = pair_by_stem(child(root, "Original"), child(root, "Ground Truth", "GroundTruth"), ctx, "cvc_clinicdb")
    tif = pairs[0][0].suffix.lower() in (".tif", ".tiff")
    pairs = binary_pairs(pairs, ctx, "cvc_clinicdb", "all", must_convert=tif, images_to_png=tif)
    return _split_polyp(pairs, ctx, "cvc_clinicdb", "cvc")


# ---------------------------------------------------------------------------------------------- ISIC 2017

ISIC_FOLDERS = {  # official Part 1 folder -> (split, role)
    "ISIC-2017_Training_Data": ("train", "images"), "ISIC-2017_Training_Part1_GroundTruth": ("train", "masks"),
    "ISIC-2017_Validation_Data": ("val", "images"), "ISIC-2017_Validation_Part1_GroundTruth": ("val", "masks"),
    "ISIC-2017_Test_v2_Data": ("test", "images"), "ISIC-2017_Test_v2_Part1_GroundTruth": ("test", "masks"),
}


def _is_isic(d: Path) -> bool:
    # The folder holding the files: an archive extracted to raw/<slot>/<archive stem>/ nests one of the same name.
    return d.name in ISIC_FOLDERS and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())


@layout("isic2017", _is_isic)
def convert_isic(roots: list[Path], ctx: Context) -> Splits:
    """ISIC 2017 Part 1 (six zips): ISIC_<id>.jpg in *_Data (the *_superpixels.png files there are not images),
    ISIC_<id>_segmentation.png in *_Part1_GroundTruth. Official train 2000 / val 150 / test 600."""
    folders = {ISIC_FOLDERS[r.name]: r for r in roots}
    missing = [name for name, key in ISIC_FOLDERS.items() if key not in folders]
    if missing:
        raise UserError(f"ISIC 2017: folders {', '.join(missing)} not found; give all six Part 1 archives with --from")
    return {split: pair_by_stem(folders[(split, "images")], folders[(split, "masks")], ctx, f"isic2017/{split}",
                                mask_suffix="_segmentation", keep=lambda p: not p.stem.endswith("_superpixels"))
            for split in ("train", "val", "test")}


# ---------------------------------------------------------------------------------------------- COD


def _is_cod10k(d: Path) -> bool:
    return any(child(child(d, s) or d / "-", "GT_Object") is not None for s in ("Train", "Test"))


@layout("cod10k", _is_cod10k)
def convert_cod10k(roots: list[Path], ctx: Context) -> Splits:
    """COD10K-v3: {Train,Test}/Image/*.jpg + GT_Object/*.png. Only camouflaged images (names with -CAM-; the
    paper's 3,040 train / 2,026 test) are kept: NonCAM images have no object."""
    root, splits = roots[0], {}
    for folder, split in (("Train", "train"), ("Test", "test:cod10k")):
        sub = child(root, folder)
        if sub is not None and child(sub, "Image", "Images") is not None:
            splits[split] = binary_pairs(
                pair_by_stem(child(sub, "Image", "Images"), child(sub, "GT_Object"), ctx, f"cod10k/{split}",
                             keep=lambda p: "-NonCAM-" not in p.name), ctx, "cod10k", split)
    return carve_val(splits, ctx, "cod10k") if "train" in splits else splits


def _is_camo(d: Path) -> bool:
    images = child(d, "Images")
    return images is not None and child(images, "Train", "Test") is not None and child(d, "GT") is not None


@layout("camo", _is_camo)
def convert_camo(roots: list[Path], ctx: Context) -> Splits:
    """CAMO-V.1.0-CVPR19: Images/{Train,Test}/*.jpg, one GT/ folder for both (1,000 train / 250 test)."""
    root, splits = roots[0], {}
    for folder, split in (("Train", "train"), ("Test", "test:camo")):
        if child(child(root, "Images"), folder) is not None:
            pairs = pair_by_stem(child(child(root, "Images"), folder), child(root, "GT"), ctx, f"camo/{split}",
                                 shared_masks=True)
            splits[split] = binary_pairs(pairs, ctx, "camo", split)
    return carve_val(splits, ctx, "camo") if "train" in splits else splits


def _is_chameleon(d: Path) -> bool:
    return "chameleon" in d.name.lower() and child(d, "Image", "Images", "Imgs") is not None and child(d, "GT")


@layout("chameleon", _is_chameleon)
def convert_chameleon(roots: list[Path], ctx: Context) -> Splits:
    """CHAMELEON (76 test images): Image(s)/*.jpg + GT/*.png."""
    root = roots[0]
    pairs = pair_by_stem(child(root, "Image", "Images", "Imgs"), child(root, "GT"), ctx, "chameleon")
    return {"test:chameleon": binary_pairs(pairs, ctx, "chameleon", "test:chameleon")}


def _is_sinet(d: Path) -> bool:
    return child(d, "TrainDataset") is not None and child(d, "TestDataset") is not None


@layout("sinet_cod", _is_sinet)
def convert_sinet(roots: list[Path], ctx: Context) -> Splits:
    """SINet's packaging: TrainDataset/{Imgs,GT} (COD10K 3,040 + CAMO 1,000) and TestDataset/<set>/{Imgs,GT};
    test folders map to the card's test sets by name (CAMO -> camo, COD10K -> cod10k, CHAMELEON -> chameleon)."""
    root = roots[0]
    train = child(root, "TrainDataset")
    splits = {"train": binary_pairs(pair_by_stem(child(train, "Imgs", "Image", "images"), child(train, "GT", "masks"),
                                                 ctx, "sinet/train"), ctx, "sinet_cod", "train")}
    wanted = {t.lower(): t for t in ctx.card.test_names}
    for folder in sorted(p for p in child(root, "TestDataset").iterdir() if p.is_dir()):
        test_set = wanted.get(folder.name.lower())
        if test_set is None:
            ctx.notes.setdefault("test_folders_ignored", []).append(folder.name)
            continue
        pairs = pair_by_stem(child(folder, "Imgs", "Image", "images"), child(folder, "GT", "masks"), ctx,
                             f"sinet/{test_set}")
        splits[f"test:{test_set}"] = binary_pairs(pairs, ctx, "sinet_cod", f"test:{test_set}")
    return carve_val(splits, ctx, "sinet_cod")


# ---------------------------------------------------------------------------------------------- SBU


def _is_sbu(d: Path) -> bool:
    return child(d, "ShadowImages") is not None and child(d, "ShadowMasks") is not None


@layout("sbu", _is_sbu)
def convert_sbu(roots: list[Path], ctx: Context) -> Splits:
    """SBU-shadow: SBUTrain4KRecoveredSmall/ and SBU-Test/, each ShadowImages/*.jpg + ShadowMasks/*.png
    (4,085 train / 638 test); val carved from train."""
    splits: Splits = {}
    for root in roots:
        split = "test" if "test" in root.name.lower() else "train"
        if split in splits:
            raise UserError(f"SBU: two {split} folders ({root}); give one copy of the release")
        pairs = pair_by_stem(child(root, "ShadowImages"), child(root, "ShadowMasks"), ctx, f"sbu/{split}")
        splits[split] = binary_pairs(pairs, ctx, "sbu", split)
    return carve_val(splits, ctx, "sbu")


# ---------------------------------------------------------------------------------------------- leaf


def _is_leaf(d: Path) -> bool:
    return child(d, "train_images") is not None and child(d, "train_masks") is not None


@layout("leaf", _is_leaf)
def convert_leaf(roots: list[Path], ctx: Context) -> Splits:
    """Kaggle "Leaf Disease Segmentation with train/valid split" (sovitrath): orig_data/{train,valid}_{images,masks}
    (498 / 90: the paper's train / test); aug_data/ (offline augmentations of train) is not used."""
    originals = [r for r in roots if "aug" not in r.name.lower()]
    root = (originals or roots)[0]
    ctx.notes["folders_ignored"] = [str(r) for r in roots if r != root]
    splits = {"train": pair_by_stem(child(root, "train_images"), child(root, "train_masks"), ctx, "leaf/train"),
              "test": pair_by_stem(child(root, "valid_images"), child(root, "valid_masks"), ctx, "leaf/test")}
    splits = {split: binary_pairs(pairs, ctx, "leaf", split) for split, pairs in splits.items()}
    return carve_val(splits, ctx, "leaf")


# ---------------------------------------------------------------------------------------------- Massachusetts Roads


def _is_road(d: Path) -> bool:
    return child(d, "train") is not None and child(d, "train_labels") is not None


def _nodata_fraction(image: Image.Image) -> float:
    """Share of pixels that are pure white: the no-data fill of tiles at the edge of the aerial mosaic."""
    rgb = np.asarray(image.convert("RGB"))
    return float((rgb == 255).all(axis=-1).mean())


def _road_tiles(pair: Pair, ctx: Context, split: str, size: int) -> tuple[list[Pair], int]:
    """Non-overlapping size x size crops of one tile (remainder at the right / bottom edge dropped), written as PNG;
    crops that are entirely no-data are skipped. Returns (crops, skipped)."""
    image, label = (open_image(p) for p in pair)
    crops, skipped = [], 0
    for top in range(0, image.height - size + 1, size):
        for left in range(0, image.width - size + 1, size):
            box = (left, top, left + size, top + size)
            crop = image.crop(box).convert("RGB")
            if _nodata_fraction(crop) == 1.0:
                skipped += 1
                continue
            name = f"{pair[0].stem}_{top}_{left}.png"
            crops.append((save(crop, ctx.converted("road", split, "images", name)),
                          save(label.crop(box).convert("L"), ctx.converted("road", split, "masks", name))))
    return crops, skipped


@layout("road", _is_road)
def convert_road(roots: list[Path], ctx: Context) -> Splits:
    """Massachusetts Roads (Kaggle copy, tiff/): {train,val,test}/*.tiff + {split}_labels/*.tif, 1500 x 1500 tiles
    (1,108 / 14 / 49 in the release; the paper reports 1,107 / 13 / 48).

    Whole tiles are kept by default (the paper's counts are tile counts; the harness resizes each to 1024 px).
    Tiles whose no-data (pure white) share is >= 50 % are listed in prepared.json, not dropped: the paper's counts
    leave no room for dropping them. `--tile N` cuts N x N non-overlapping crops instead (all splits, so test
    metrics become per-crop averages) and skips crops that are entirely no-data."""
    root, splits, sizes, nodata = roots[0], {}, {}, {}
    for folder, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if child(root, folder) is None:
            continue
        pairs = pair_by_stem(child(root, folder), child(root, f"{folder}_labels"), ctx, f"road/{split}")

        def inspect(pair: Pair) -> tuple[Pair, tuple[int, int], float]:
            with open_image(pair[0]) as im:
                return pair, im.size, _nodata_fraction(im)
        inspected = [found for found in _parallel(guarded(inspect, ctx, split), pairs) if found is not None]
        pairs = [pair for pair, _, _ in inspected]
        for pair, size, fraction in inspected:
            sizes[str(size)] = sizes.get(str(size), 0) + 1
            if fraction >= MOSTLY_NODATA:
                nodata.setdefault(split, []).append({"image": pair[0].name, "nodata_fraction": round(fraction, 3)})
        if ctx.tile:
            results = [r for r in _parallel(guarded(lambda pair, s=split: _road_tiles(pair, ctx, s, ctx.tile), ctx,
                                                    split), pairs) if r is not None]
            pairs = [crop for crops, _ in results for crop in crops]
            ctx.notes.setdefault("tiling", {})[split] = {"crops": len(pairs), "all_nodata_skipped": sum(
                s for _, s in results)}
        splits[split] = binary_pairs(pairs, ctx, "road", split)
    ctx.notes["tile_sizes"] = sizes  # (width, height) -> count; the release is 1500 x 1500 throughout
    ctx.notes["mostly_nodata_tiles"] = {"threshold": MOSTLY_NODATA, "kept": not ctx.tile, "tiles": nodata}
    if ctx.tile:
        ctx.notes["tiling"]["size"] = ctx.tile
    return splits


# ---------------------------------------------------------------------------------------------- Trans10K


def _index_mask(pair: Pair, ctx: Context, layout_name: str, split: str, to_index: Callable) -> Pair | None:
    """Write the class-index PNG ((H, W) uint8, mode L, as the loader reads it); None (pair noted as bad) when the
    mask holds colours outside the mapping."""
    image, mask = pair
    with open_image(mask) as im:
        index, unknown = to_index(im)
    if unknown:
        ctx.bad.append(Problem(split, str(image), str(mask), f"mask colours outside the class mapping: {unknown[:5]}"))
        return None
    return image, save(Image.fromarray(index), ctx.converted(layout_name, split, "masks", mask.stem + ".png"))


def trans10k_v1_index(im: Image.Image) -> tuple[np.ndarray, list]:
    """RGB(A) mask -> 0 background / 1 things / 2 stuff via the channel mean, as TransLab's loader."""
    mean = np.asarray(im.convert("RGB")).astype(np.float32).mean(-1)
    index = np.full(mean.shape, IGNORE_LABEL, np.uint8)
    for value, cls in TRANS10K_V1_MEANS.items():
        index[mean == value] = cls
    unknown = sorted(set(np.unique(mean[index == IGNORE_LABEL]).round(1).tolist()))
    return index, unknown


def trans10k_v2_index(im: Image.Image, num_classes: int = 12) -> tuple[np.ndarray, list]:
    """Class-index mask from Trans10K-v2's masks_12: palette ("P") or grey ("L") PNGs whose indices are the class
    ids (Trans2Seg reads them with convert("P")); masks drawn in colour with Trans2Seg's VOC palette are inverted."""
    if im.mode in ("P", "L", "I", "I;16"):
        index = np.asarray(im).astype(np.int64)
    else:
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
        if (rgb == rgb[..., :1]).all():
            index = rgb[..., 0]
        else:
            codes = rgb @ np.array([65536, 256, 1])
            lookup = {r * 65536 + g * 256 + b: i for i, (r, g, b) in enumerate(voc_palette(num_classes))}
            index = np.vectorize(lambda c: lookup.get(c, -1), otypes=[np.int64])(codes)
            unknown = sorted({tuple(rgb[y, x]) for y, x in zip(*np.nonzero(index < 0))})
            if unknown:
                return index.astype(np.uint8), [list(map(int, c)) for c in unknown]
    bad = sorted(int(v) for v in np.unique(index) if v >= num_classes and v != IGNORE_LABEL)
    return index.astype(np.uint8), bad


def _trans10k_split(images: Path, masks: Path, ctx: Context, layout_name: str, split: str,
                    to_index: Callable) -> list[Pair]:
    pairs = pair_by_stem(images, masks, ctx, f"{layout_name}/{split}", mask_suffix="_mask")
    index = guarded(lambda pair: _index_mask(pair, ctx, layout_name, split, to_index), ctx, split)
    return [p for p in _parallel(index, pairs) if p]


def _is_trans10k_v1(d: Path) -> bool:
    return any(child(child(d, split) or d / "-", sub) is not None
               for split, sub in (("train", "masks"), ("validation", "easy"), ("test", "easy")))


@layout("trans10k_v1", _is_trans10k_v1)
def convert_trans10k_v1(roots: list[Path], ctx: Context) -> Splits:
    """Trans10K (v1; train.zip, validation.zip, test.zip, each found on its own): train/{images,masks},
    {validation,test}/{easy,hard}/{images,masks}; <id>.jpg with <id>_mask.png colour masks -> 0/1/2.
    Val = validation easy + hard; test sets easy and hard (5,000 / 1,000 / 4,428)."""
    splits: Splits = {}
    for root in roots:
        train = child(root, "train")
        if train is not None and child(train, "masks") is not None:
            splits.setdefault("train", []).extend(_trans10k_split(
                child(train, "images"), child(train, "masks"), ctx, "trans10k_v1", "train", trans10k_v1_index))
        for folder, split in (("validation", "val"), ("test", "test")):
            for level in ("easy", "hard"):
                sub = child(child(root, folder) or root / "-", level)
                if sub is not None:
                    key = "val" if split == "val" else f"test:{level}"
                    splits.setdefault(key, []).extend(_trans10k_split(
                        child(sub, "images"), child(sub, "masks"), ctx, "trans10k_v1", f"{split}_{level}",
                        trans10k_v1_index))
    return splits


def _is_trans10k_v2(d: Path) -> bool:
    return any(child(child(d, s) or d / "-", "masks_12") is not None for s in ("train", "validation", "test"))


@layout("trans10k_v2", _is_trans10k_v2)
def convert_trans10k_v2(roots: list[Path], ctx: Context) -> Splits:
    """Trans10K-v2 (Trans2Seg): {train,validation,test}/{images,masks_12}, <id>.jpg with <id>_mask.png
    (5,000 / 1,000 / 4,428); the split folders may come in one archive or several."""
    splits: Splits = {}
    for root in roots:
        for folder, split in (("train", "train"), ("validation", "val"), ("test", "test")):
            sub = child(root, folder)
            if sub is not None and child(sub, "masks_12") is not None:
                splits.setdefault(split, []).extend(_trans10k_split(
                    child(sub, "images"), child(sub, "masks_12"), ctx, "trans10k_v2", split,
                    lambda im: trans10k_v2_index(im, ctx.card.num_classes)))
    return splits
