"""Masks of a trained run on new images (`peftbench predict`), computed as the trainer computes test predictions
(inference.py: decoding, resizing, thresholding). One PNG per image: binary 0/255, multi-class the class index
(8-bit, so K <= 255 classes). Class 0 is the background of every card: overlays and figures leave it uncoloured.
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

from .backbone.segmenter import SamSegmenter
from .data.files import IMAGE_SUFFIXES
from .data.layouts import image_files
from .errors import UserError
from .report.colours import overlay_image
from .store.atomic import atomic_output
from .training.device import resolve_device
from .training.inference import decode, predict_masks
from .training.runs import Trust, check_plugin, load_run, run_record


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
    record = run_record(record_file)
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
