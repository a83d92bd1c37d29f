"""Masks of a trained run on new images (`peftbench predict`), computed as the trainer computes test predictions.

Each image is decoded to RGB by files.read_image (the loaders' rule for every mode), bicubic-resized to the model's
S x S input without keeping its aspect ratio and ImageNet-normalised (data/loading.py); the model's probabilities are
resized back to the image's own size (bilinear) and thresholded as the trainer scores them (train._score): binary
p > 0.5, multi-class argmax. One PNG per image: binary 0/255, multi-class the class index (8-bit, so K <= 255
classes). Class 0 is the background of every card: overlays and figures leave it uncoloured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data.files import IMAGE_SUFFIXES, ImageRuleError, read_image
from .data.layouts import image_files
from .device import resolve_device
from .errors import UserError
from .records import atomic_output
from .runs import Trust, check_plugin, load_run, read_run
from .segmenter import SamSegmenter, at_size, normalise

OVERLAY_ALPHA = 0.5  # weight of the class colour where an overlay marks a class
IGNORE_COLOUR = (255, 255, 255)  # multi-class labels' 255 ("ignore") in figures
# What PIL and tifffile raise on a file that is not a readable image (truncated, corrupt, another format).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def mask_at(probs: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """(H, W) uint8 mask from (S, S) or (K, S, S) model-size probabilities: binary 255 where the resized foreground
    probability is > 0.5, else 0; multi-class the argmax class of the resized scores."""
    resized = at_size(probs, size)
    if probs.dim() == 2:
        return (resized[0] > 0.5).numpy().astype(np.uint8) * 255
    return resized.argmax(0).numpy().astype(np.uint8)


def model_input(images: list[Image.Image], size: int) -> torch.Tensor:
    """(B, 3, S, S) ImageNet-normalised batch of RGB images, each bicubic-resized to S x S as the loaders do."""
    arrays = [np.asarray(image.resize((size, size), Image.BICUBIC)) for image in images]
    return normalise(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@torch.no_grad()
def predict_masks(model: SamSegmenter, images: list[Image.Image], device: torch.device) -> list[np.ndarray]:
    """Each RGB image's (H, W) mask at its own size (see mask_at), all images in one forward pass; fp32, the
    probabilities resized on the CPU as the trainer resizes them."""
    probs = model.probabilities(model_input(images, model.img_size).to(device)).float().cpu()
    return [mask_at(p, (image.height, image.width)) for p, image in zip(probs, images)]


def class_colours(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 palette of class ids: 0 black, 1..K-1 matplotlib's tab20 (its ten dark colours, then the
    light ones; "turbo" samples past 20 classes), 255 (ignore) white. Binary masks are classes 0 and 1."""
    from matplotlib import colormaps  # here: train.py imports this module (at_size) and needs no matplotlib

    tab20 = colormaps["tab20"].colors
    colours = tab20[0::2] + tab20[1::2] if num_classes <= 20 else colormaps["turbo"](np.linspace(0, 1, num_classes))
    palette = np.zeros((256, 3), np.uint8)
    palette[1:num_classes] = (np.asarray(colours)[1:num_classes, :3] * 255).round()
    palette[255] = IGNORE_COLOUR
    return palette


def overlay_image(image: Image.Image, classes: np.ndarray, num_classes: int) -> Image.Image:
    """The RGB image with every pixel of a class other than 0 blended with its class colour; classes: (H, W) ids."""
    rgb = np.asarray(image, np.float32)
    tinted = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * class_colours(num_classes)[classes]
    return Image.fromarray(np.where((classes > 0)[..., None], tinted, rgb).round().astype(np.uint8))


def decode(path: str | Path) -> tuple[Image.Image | None, str]:
    """(the image at `path` as RGB, "") or (None, why it cannot be read): read as the loaders read images
    (files.read_image: every mode by one rule, what it would misread refused, TIFFs PIL cannot read by tifffile)."""
    try:
        return read_image(path), ""
    except ImageRuleError as err:
        return None, str(err)
    except DECODE_ERRORS as err:
        return None, f"unreadable image ({err})"


def image_paths(images: Sequence[str | Path]) -> list[Path]:
    """The image files to predict: files as given, a folder's image files (IMAGE_SUFFIXES) sorted; each file once."""
    paths: dict[Path, Path] = {}
    for item in map(Path, images):
        if item.is_dir():
            found = image_files(item)
            if not found:
                raise UserError(f"{item}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        elif item.is_file():
            found = [item]
        else:
            raise UserError(f"{item}: no such file or folder")
        paths.update({p.resolve(): p for p in found if p.resolve() not in paths})
    if not paths:
        raise UserError("no images given")
    return list(paths.values())


def output_names(path: Path, with_overlay: bool) -> list[str]:
    return [f"{path.stem}.png"] + ([f"{path.stem}_overlay.png"] if with_overlay else [])


def check_outputs(paths: list[Path], out: Path, with_overlay: bool) -> None:
    """A one-line UserError when two images would be written to the same file (same stem) or an output would
    replace an input image."""
    claimed: dict[str, Path] = {}
    inputs = {p.resolve() for p in paths}
    for path in paths:
        for name in output_names(path, with_overlay):
            if name in claimed:
                raise UserError(f"{claimed[name]} and {path}: both would be written as {out / name}; predict them "
                                "into separate --out folders")
            if (out / name).resolve() in inputs:
                raise UserError(f"{out / name}: is an input image and would be overwritten; choose another --out")
            claimed[name] = path


def unreadable(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, reason) for each image that does not decode, found before any model loads. Decoded in threads (PIL
    releases the GIL while decoding); each image is decoded again when its batch comes, so memory stays one batch."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(lambda p: decode(p)[1], paths))
    return [(p, why) for p, why in zip(paths, reasons) if why]


def write_png(image: Image.Image, path: Path) -> Path:
    """`image` as PNG at `path`, atomically: a crash never leaves half a file."""
    with atomic_output(path, "wb") as f:
        image.save(f, format="PNG")
    return path


def write_batch(model: SamSegmenter, paths: list[Path], out: Path, with_overlay: bool,
                device: torch.device) -> list[Path]:
    """Masks (and overlays) of `paths`, one forward pass; returns the files written."""
    images = []
    for path in paths:
        image, why = decode(path)
        if image is None:  # it decoded a moment ago: changed since
            raise UserError(f"{path}: {why}")
        images.append(image)
    written = []
    for path, image, mask in zip(paths, images, predict_masks(model, images, device)):
        names = output_names(path, with_overlay)
        written.append(write_png(Image.fromarray(mask), out / names[0]))
        if with_overlay:
            classes = (mask > 0).astype(np.uint8) if model.num_classes == 1 else mask
            written.append(write_png(overlay_image(image, classes, max(model.num_classes, 2)), out / names[1]))
    return written


def predict(record_file: str | Path, images: Sequence[str | Path], out: Path, device: str = "auto",
            batch_size: int = 8, overlay: bool = False, skip_bad: bool = False,
            console: Console | None = None, trust_plugins: Trust = ()) -> dict:
    """Masks of the run at `record_file` (its tested model, see runs.load_run) for `images` (files and/or folders),
    written to `out` as <stem>.png at each image's own size (binary 0/255, multi-class class ids), with `overlay`
    also <stem>_overlay.png (the image with each class in colour). `batch_size` images per forward pass.

    Every image is decoded first, before the model loads: an unreadable one is a one-line UserError naming it, or
    with `skip_bad` is skipped, printed and listed. `trust_plugins`: see runs.check_plugin.
    Returns {"written": [paths], "skipped": [(path, reason)]}.
    """
    console = console or Console()
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be at least 1")
    target = resolve_device(device)
    record = read_run(record_file)
    check_plugin(record["config"]["method"]["family"], str(record_file), trust_plugins)  # before any work
    num_classes = record["config"]["dataset"].get("num_classes", 1)
    if num_classes > 255:
        raise UserError(f"{record_file}: {num_classes} classes do not fit the 8-bit PNG masks (255 at most)")
    out, paths = Path(out), image_paths(images)
    check_outputs(paths, out, overlay)
    bad = unreadable(paths)
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"{bad[0][0]}: {bad[0][1]}{more}; fix or remove it, or pass --skip-bad to skip it")
    for path, why in bad:
        console.print(f"skipped {path}: {why}", markup=False, highlight=False)
    skipped = {p for p, _ in bad}
    paths = [p for p in paths if p not in skipped]
    model = load_run(record_file, device=target, trust_plugins=trust_plugins)
    written: list[Path] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("predict", total=len(paths))
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            written += write_batch(model, chunk, out, overlay, target)
            progress.advance(bar, len(chunk))
    return {"written": written, "skipped": bad}
