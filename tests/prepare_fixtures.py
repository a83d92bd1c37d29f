"""Tiny copies (3-10 images of 24-40 px per split) of every real dataset, in its official release layout and as the
Conv-LoRA authors' archive, written as the archives `peftbench prepare` is given.

Each builder returns (inputs for --from, expected counts per split). Binary masks are 0/255 with a filled
rectangle; multi-class masks hold every class of the dataset so class-index mappings can be checked.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 32, 24  # (width, height) of every tiny image


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def write_image(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _rng(path.name).integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)  # < 200: no no-data white
    Image.fromarray(pixels).save(path)
    return path


def binary_mask(size: tuple[int, int] = (W, H)) -> np.ndarray:
    """(H, W) uint8: 255 inside a rectangle, 0 elsewhere."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
    return mask


def write_mask(path: Path, mask: np.ndarray | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(binary_mask() if mask is None else mask, mode).save(path)
    return path


def write_pairs(images: Path, masks: Path, stems: list[str], image_ext: str = ".jpg", mask_ext: str = ".png",
                mask_suffix: str = "") -> None:
    for stem in stems:
        write_image(images / f"{stem}{image_ext}")
        write_mask(masks / f"{stem}{mask_suffix}{mask_ext}")


def zip_folder(folder: Path, archive: Path) -> Path:
    """archive.zip holding `folder` itself (its name as the top-level entry), as the releases are packed."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent))
    return archive


def _stems(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


# ---------------------------------------------------------------------------------------------- Conv-LoRA archives


CONVLORA = {  # card name -> (archive name, {csv: pairs})
    "polyp": ("polyp", {"train.csv": 5, "val.csv": 3, "test_Kvasir.csv": 3, "test_CVC-ClinicDB.csv": 4}),
    "isic2017": ("isic2017", {"train.csv": 5, "val.csv": 3, "test.csv": 4}),
    "cod": ("camo_sem_seg", {"train.csv": 5, "val.csv": 3, "test_CAMO.csv": 4}),
    "sbu": ("SBU-shadow", {"train.csv": 5, "val.csv": 3, "test.csv": 4}),
    "leaf": ("leaf_disease_segmentation", {"train.csv": 5, "val.csv": 3, "test.csv": 4}),
    "road": ("road_segmentation", {"train.csv": 5, "val.csv": 3, "test.csv": 4}),
}


def convlora_archive(card: str, work: Path) -> tuple[list[Path], dict[str, int]]:
    """<name>.zip with <name>/{split}/{images,masks}/ and the CSVs (leading pandas index column, as the authors')."""
    name, csvs = CONVLORA[card]
    root = work / "convlora_src" / name / name
    counts = {}
    for csv, n in csvs.items():
        split = csv.removesuffix(".csv")
        rows = []
        for stem in _stems(split[:6], n):
            write_image(root / split / "images" / f"{stem}.jpg")
            write_mask(root / split / "masks" / f"{stem}.png")
            rows.append(f"{len(rows)},{split}/images/{stem}.jpg,{split}/masks/{stem}.png")
        (root / csv).write_text(",image,label\n" + "\n".join(rows) + "\n")
        tests = {"test_Kvasir": "test:kvasir", "test_CVC-ClinicDB": "test:cvc", "test_CAMO": "test:camo"}
        key = tests.get(split, split)
        counts[key] = n
    return [zip_folder(root, work / "convlora" / card / f"{name}.zip")], counts


# ---------------------------------------------------------------------------------------------- official releases


def polyp(work: Path) -> tuple[list[Path], dict[str, int]]:
    """Kvasir-SEG (10 pairs, JPEG masks) + CVC-ClinicDB (6 pairs, TIF): test = ceil(10 %) of each (1 + 1),
    val = ceil(20 %) of each remaining train (2 + 1)."""
    kvasir = work / "src" / "kvasir" / "Kvasir-SEG"
    write_pairs(kvasir / "images", kvasir / "masks", _stems("cju", 10), mask_ext=".jpg")
    cvc = work / "src" / "cvc" / "CVC-ClinicDB"
    for i in range(1, 7):
        write_image(cvc / "Original" / f"{i}.tif")
        write_mask(cvc / "Ground Truth" / f"{i}.tif")
    return ([zip_folder(kvasir, work / "official" / "kvasir-seg.zip"), zip_folder(cvc, work / "official" / "cvc.zip")],
            {"train": 7 + 4, "val": 2 + 1, "test:kvasir": 1, "test:cvc": 1})


def isic2017(work: Path) -> tuple[list[Path], dict[str, int]]:
    """Six zips; the *_superpixels.png files in the data folders must not become images."""
    archives, counts = [], {}
    for split, folder, n in (("train", "Training", 5), ("val", "Validation", 3), ("test", "Test_v2", 4)):
        data = work / "src" / f"isic_{split}" / f"ISIC-2017_{folder}_Data"
        truth = work / "src" / f"isic_{split}_gt" / f"ISIC-2017_{folder}_Part1_GroundTruth"
        for stem in _stems(f"ISIC_{split[:2]}", n):
            write_image(data / f"{stem}.jpg")
            write_mask(data / f"{stem}_superpixels.png", np.full((H, W), 7, np.uint8))
            write_mask(truth / f"{stem}_segmentation.png")
        archives += [zip_folder(data, work / "official" / f"{data.name}.zip"),
                     zip_folder(truth, work / "official" / f"{truth.name}.zip")]
        counts[split] = n
    return archives, counts


def cod(work: Path) -> tuple[list[Path], dict[str, int]]:
    """COD10K-v3 (5 CAM + 1 NonCAM, dropped), CAMO (one GT folder), CHAMELEON; val = ceil(10 %) of each train."""
    cod10k = work / "src" / "cod10k" / "COD10K-v3"
    write_pairs(cod10k / "Train" / "Image", cod10k / "Train" / "GT_Object",
                [f"COD10K-CAM-1-Aquatic-{i}" for i in range(5)] + ["COD10K-NonCAM-5-Background-1"])
    write_pairs(cod10k / "Test" / "Image", cod10k / "Test" / "GT_Object", [f"COD10K-CAM-2-Sky-{i}" for i in range(3)])
    camo = work / "src" / "camo" / "CAMO-V.1.0-CVPR19"
    write_pairs(camo / "Images" / "Train", camo / "GT", _stems("camourflage_0", 4))
    write_pairs(camo / "Images" / "Test", camo / "GT", _stems("camourflage_1", 3))
    chameleon = work / "src" / "chameleon" / "CHAMELEON"
    write_pairs(chameleon / "Image", chameleon / "GT", _stems("animal-", 3))
    archives = [zip_folder(cod10k, work / "official" / "COD10K-v3.zip"),
                zip_folder(camo, work / "official" / "CAMO-V.1.0-CVPR19.zip"),
                zip_folder(chameleon, work / "official" / "CHAMELEON.zip")]
    return archives, {"train": 4 + 3, "val": 1 + 1, "test:camo": 3, "test:cod10k": 3, "test:chameleon": 3}


def sinet_cod(work: Path) -> tuple[list[Path], dict[str, int]]:
    """SINet's TrainDataset + TestDataset packaging, given as a folder."""
    root = work / "src" / "sinet" / "SINet_data"
    write_pairs(root / "TrainDataset" / "Imgs", root / "TrainDataset" / "GT", _stems("train", 10))
    for test_set in ("CAMO", "COD10K", "CHAMELEON"):
        write_pairs(root / "TestDataset" / test_set / "Imgs", root / "TestDataset" / test_set / "GT",
                    _stems(test_set, 3))
    return [root], {"train": 9, "val": 1, "test:camo": 3, "test:cod10k": 3, "test:chameleon": 3}


def sbu(work: Path) -> tuple[list[Path], dict[str, int]]:
    root = work / "src" / "sbu" / "SBU-shadow"
    train, test = root / "SBUTrain4KRecoveredSmall", root / "SBU-Test"
    write_pairs(train / "ShadowImages", train / "ShadowMasks", _stems("lssd", 10))
    write_pairs(test / "ShadowImages", test / "ShadowMasks", _stems("test", 4))
    return [zip_folder(root, work / "official" / "SBU-shadow.zip")], {"train": 9, "val": 1, "test": 4}


def leaf(work: Path) -> tuple[list[Path], dict[str, int]]:
    """Kaggle layout; aug_data/ (augmented copies) must be ignored."""
    root = work / "src" / "leaf" / "leaf_disease_segmentation"
    for data, n in (("orig_data", 10), ("aug_data", 2)):
        write_pairs(root / data / "train_images", root / data / "train_masks", _stems(f"{data}_tr", n))
        write_pairs(root / data / "valid_images", root / data / "valid_masks", _stems(f"{data}_va", 4))
    return [zip_folder(root, work / "official" / "leaf-disease-segmentation.zip")], {"train": 9, "val": 1, "test": 4}


def road(work: Path) -> tuple[list[Path], dict[str, int]]:
    """tiff/{split}, tiff/{split}_labels with 40 x 40 tiles; train tile 0 is 3/4 no-data white."""
    root = work / "src" / "road" / "tiff"
    counts = {"train": 5, "val": 3, "test": 3}
    for split, n in counts.items():
        for stem in _stems(f"{split}_", n):
            write_image(root / split / f"{stem}.tiff", (40, 40))
            write_mask(root / f"{split}_labels" / f"{stem}.tif", binary_mask((40, 40)))
    white = np.asarray(Image.open(root / "train" / "train_000.tiff")).copy()
    white[10:] = 255
    Image.fromarray(white).save(root / "train" / "train_000.tiff")
    return [zip_folder(root, work / "official" / "massachusetts-roads.zip")], counts


TRANS10K_V1_COLOURS = [(0, 0, 0), (255, 0, 0), (255, 255, 255)]  # background, things, stuff


def class_stripes(num_classes: int) -> np.ndarray:
    """(H, W) uint8: vertical stripes of classes 0 .. K-1 (every class present)."""
    return (np.arange(W)[None, :].repeat(H, 0) * num_classes // W).astype(np.uint8)


def trans10k_v1(work: Path) -> tuple[list[Path], dict[str, int]]:
    """train.zip, validation.zip, test.zip as released: RGB masks, black / red / white."""
    colour = np.array(TRANS10K_V1_COLOURS, np.uint8)[class_stripes(3)]
    archives, counts = [], {}
    for folder, parts in (("train", [("", 4)]), ("validation", [("easy", 2), ("hard", 2)]),
                          ("test", [("easy", 3), ("hard", 2)])):
        root = work / "src" / f"t1_{folder}" / folder
        for level, n in parts:
            base = root / level if level else root
            for stem in _stems(f"{folder[:2]}{level}", n):
                write_image(base / "images" / f"{stem}.jpg")
                write_mask(base / "masks" / f"{stem}_mask.png", colour)
            key = {"train": "train", "validation": "val"}.get(folder, f"test:{level}")
            counts[key] = counts.get(key, 0) + n
        archives.append(zip_folder(root, work / "official" / f"{folder}.zip"))
    return archives, counts


def trans10k_v2(work: Path) -> tuple[list[Path], dict[str, int]]:
    """Trans10K_cls12 folder: palette ("P") masks whose indices are the 12 class ids."""
    root = work / "src" / "t2" / "Trans10K_cls12"
    palette = [c for i in range(256) for c in ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256)]
    counts = {"train": 4, "val": 3, "test": 3}
    for folder, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        for stem in _stems(folder[:2], counts[split]):
            write_image(root / folder / "images" / f"{stem}.jpg")
            mask = Image.fromarray(class_stripes(12), "P")
            mask.putpalette(palette)
            (root / folder / "masks_12").mkdir(parents=True, exist_ok=True)
            mask.save(root / folder / "masks_12" / f"{stem}_mask.png")
    return [zip_folder(root, work / "official" / "Trans10K_cls12.zip")], counts


OFFICIAL = {"polyp": polyp, "isic2017": isic2017, "cod": cod, "sbu": sbu, "leaf": leaf, "road": road,
            "trans10k_v1": trans10k_v1, "trans10k_v2": trans10k_v2}


def build(kind: str, card: str, work: Path) -> tuple[list[Path], dict[str, int]]:
    """kind "official" or "convlora"; a fresh work folder per call (archives are cheap to rebuild)."""
    work = work / f"{kind}_{card}"
    shutil.rmtree(work, ignore_errors=True)
    return OFFICIAL[card](work) if kind == "official" else convlora_archive(card, work)
