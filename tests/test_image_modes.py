"""Images and masks of every mode are read by one rule (files.read_image / read_label, docs/datasets.md), what the
rule would misread is refused by name, and binary masks are thresholded once (files.foreground) for training,
validation and the empty-mask check."""

import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from peftbench.cli import main
from peftbench.data import build_splits
from peftbench.data.cards import resolve_dataset
from peftbench.data.files import ImageRuleError, foreground, read_image, read_label
from peftbench.store.records import record_and_problem, record_paths

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)  # the 8-bit content every mode below stores
GRAY = RGB[..., 0]
ALPHA = RNG.integers(0, 256, GRAY.shape, dtype=np.uint8)
RUN = ["--methods", "decoder_only", "--sam", "tiny_random", "--epochs", "1", "--seeds", "0", "--device", "cpu"]


def write_png16(path, samples: np.ndarray) -> None:
    """A 16-bit RGB (H, W, 3) or RGBA (H, W, 4) PNG, which Pillow cannot write."""
    height, width, channels = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def palette_image() -> Image.Image:
    """RGB as a palette image: pixel i has index i, palette colour i is RGB's i-th pixel."""
    image = Image.fromarray(np.arange(GRAY.size, dtype=np.uint8).reshape(GRAY.shape), "P")
    image.putpalette(RGB.reshape(-1).tolist())
    return image


def write(tmp_path, mode: str):
    """A file of `mode` holding RGB (or GRAY) and the (H, W, 3) uint8 the documented rule reads from it."""
    gray3, wide = np.repeat(GRAY[..., None], 3, -1), GRAY.astype(np.uint16)
    cmyk = np.dstack([RGB, ALPHA])
    files = {
        "L": (lambda p: Image.fromarray(GRAY).save(p), "png", gray3),
        "1": (lambda p: Image.fromarray(GRAY > 127).save(p), "png", np.repeat((GRAY > 127)[..., None] * 255, 3, -1)),
        "P": (lambda p: palette_image().save(p), "png", RGB),
        "P with transparency": (lambda p: palette_image().save(p, transparency=0), "png", RGB),  # alpha dropped
        "LA": (lambda p: Image.fromarray(np.dstack([GRAY, ALPHA]), "LA").save(p), "png", gray3),
        "RGBA": (lambda p: Image.fromarray(np.dstack([RGB, ALPHA])).save(p), "png", RGB),
        "CMYK": (lambda p: Image.fromarray(cmyk, "CMYK").save(p), "tif",  # Pillow: (255 - C) (255 - K) / 255
                 np.rint((255 - RGB.astype(int)) * (255 - ALPHA[..., None].astype(int)) / 255).astype(np.uint8)),
        "I;16 (v * 257)": (lambda p: Image.fromarray(wide * 257).save(p), "png", gray3),
        "I;16 (v * 256)": (lambda p: Image.fromarray(wide * 256 + 255).save(p), "png", gray3),
        "I;16 TIFF": (lambda p: tifffile.imwrite(p, wide * 257), "tif", gray3),
        "I (32-bit)": (lambda p: tifffile.imwrite(p, wide.astype(np.uint32) * 257), "tif", gray3),
        "F": (lambda p: tifffile.imwrite(p, GRAY.astype(np.float32) / 255), "tif", gray3),
        "RGB 16-bit PNG": (lambda p: write_png16(p, RGB.astype(np.uint16) * 257), "png", RGB),
        "RGBA 16-bit PNG": (lambda p: write_png16(p, np.dstack([RGB, ALPHA]).astype(np.uint16) * 257), "png", RGB),
        "RGB 16-bit TIFF": (lambda p: tifffile.imwrite(p, RGB.astype(np.uint16) * 257, photometric="rgb"), "tif", RGB),
        "RGB float TIFF": (lambda p: tifffile.imwrite(p, RGB.astype(np.float32) / 255, photometric="rgb"), "tif",
                           RGB),  # Pillow cannot read it: tifffile
        "RGB": (lambda p: Image.fromarray(RGB).save(p), "png", RGB),
    }
    save, suffix, expected = files[mode]
    path = tmp_path / f"image.{suffix}"
    save(path)
    return path, expected


@pytest.mark.parametrize("mode", ["L", "1", "P", "P with transparency", "LA", "RGBA", "CMYK", "I;16 (v * 257)", "I;16 (v * 256)",
                                  "I;16 TIFF", "I (32-bit)", "F", "RGB 16-bit PNG", "RGBA 16-bit PNG",
                                  "RGB 16-bit TIFF", "RGB float TIFF", "RGB"])
def test_every_mode_maps_to_rgb_as_documented(tmp_path, mode):
    path, expected = write(tmp_path, mode)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (GRAY.shape[1], GRAY.shape[0])
    np.testing.assert_array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("samples, message", [
    (GRAY.astype(np.uint16) * 16, "all below 4096 .* near-black"),  # 12-bit data in a 16-bit PNG
    (np.full(GRAY.shape, 40000, np.uint16) + (GRAY > 127), "one flat value"),  # differs only in the low byte
    (GRAY.astype(np.float32) / 100, r"float image with values outside \[0, 1\]"),
    (GRAY.astype(np.int16) - 128, "outside 0..65535"),
    (np.dstack([np.zeros_like(RGB), ALPHA]), "RGBA image that becomes one flat colour"),  # drawn in alpha only
])
def test_what_the_rule_would_misread_is_refused(tmp_path, samples, message):
    path = tmp_path / ("image.png" if samples.dtype in (np.uint8, np.uint16) else "image.tif")
    Image.fromarray(samples).save(path) if path.suffix == ".png" else tifffile.imwrite(path, samples)
    with pytest.raises(ImageRuleError, match=message):
        read_image(path)


@pytest.mark.parametrize("values, read", [((0, 65535), (0, 255)), ((0, 1), (0, 1)), ((0, 3, 7), (0, 3, 7)),
                                          ((0, 255), (0, 255))])
def test_16_bit_masks_are_read_by_their_values(tmp_path, values, read):
    mask = np.asarray(values, np.uint16)[RNG.integers(0, len(values), GRAY.shape)]
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").mode == "I;16"
    np.testing.assert_array_equal(read_label(tmp_path / "mask.png"), np.asarray(read, np.uint8)[np.searchsorted(
        values, mask)])


def test_masks_that_no_reading_keeps_right_are_refused(tmp_path):
    Image.fromarray(GRAY.astype(np.uint16) * 200).save(tmp_path / "wide.png")  # neither ids nor 0/65535
    tifffile.imwrite(tmp_path / "soft.tif", GRAY.astype(np.float32) / 255)  # fractional
    write_png16(tmp_path / "colour16.png", np.repeat(GRAY[..., None], 3, -1).astype(np.uint16))
    for name, message in [("wide.png", "beyond 0..255"), ("soft.tif", "fractional"), ("colour16.png", "16-bit colour")]:
        with pytest.raises(ValueError, match=message):
            read_label(tmp_path / name)


def test_foreground_rule():
    assert foreground(np.array([0, 1])).tolist() == [False, True]
    assert foreground(np.array([0, 1, 127, 128, 255])).tolist() == [False, False, False, True, True]
    assert not foreground(np.array([0, 3])).any()  # --binarize: 3 < 128


def write_dataset(folder, sixteen_bit: bool, mask_values=(0, 255), size: int = 32) -> str:
    """A CSV dataset of 6 pairs (4 train, 1 val, 1 test): blob masks, images darker inside the blob; with
    `sixteen_bit` the same images as 16-bit gray PNGs (v * 257). Returns the CSV path."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(6):
        cy, cx = rng.integers(8, size - 8, 2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 30
        gray = np.where(blob, 60, 200).astype(np.uint8) + rng.integers(0, 40, blob.shape, dtype=np.uint8)
        Image.fromarray(gray.astype(np.uint16) * 257 if sixteen_bit else gray).save(folder / f"{i}.png")
        Image.fromarray(np.where(blob, mask_values[1], mask_values[0]).astype(np.uint8)).save(folder / f"{i}_m.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(6)], "label": [f"{i}_m.png" for i in range(6)],
                  "split": ["train"] * 4 + ["val", "test"]}).to_csv(folder / "m.csv", index=False)
    return str(folder / "m.csv")


def test_a_16_bit_dataset_trains_on_the_data_of_its_8_bit_equivalent(tmp_path):
    eight, sixteen = write_dataset(tmp_path / "eight", False), write_dataset(tmp_path / "sixteen", True)
    ours = build_splits(resolve_dataset(sixteen), 16)
    for split, theirs in build_splits(resolve_dataset(eight), 16).items():
        assert all(torch.equal(x, y) for i in range(len(theirs)) for x, y in zip(ours[split][i], theirs[i]))
    for csv in (eight, sixteen):
        assert main(["run", "--datasets", csv, *RUN, "--out", str(tmp_path / "out")]) == 0
    metrics = [record_and_problem(path)[0]["metrics"]["test"] for path in record_paths(tmp_path / "out")]
    assert len(metrics) == 2 and metrics[0] == metrics[1]


def test_masks_that_binarize_would_empty_are_a_one_line_error(tmp_path, capsys):
    csv = write_dataset(tmp_path / "data", False, mask_values=(0, 3))
    assert main(["run", "--datasets", csv, "--binarize", *RUN, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert csv in err and "none of the 4 training masks has a foreground pixel" in err and ">= 128" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_an_image_the_rule_would_misread_stops_the_grid_naming_the_file(tmp_path, capsys):
    csv = write_dataset(tmp_path / "data", False)
    Image.fromarray(np.asarray(Image.open(tmp_path / "data" / "2.png")).astype(np.uint16) * 16).save(
        tmp_path / "data" / "2.png")  # 12-bit data in a 16-bit PNG
    assert main(["run", "--datasets", csv, *RUN, "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert "2.png / 2_m.png: 16-bit image whose values are all below 4096" in out
    assert "1 bad image/label pairs" in err and "\n" not in err.strip()
