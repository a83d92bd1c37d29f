"""Does the input pipeline stall training? Step time with the real DataLoader against the same batches in memory.

    python benchmarks/loader_overhead.py --dataset synth_leaf --method lora --epochs 10
    python benchmarks/loader_overhead.py --dataset synth_leaf --method decoder_only --as-files 512

Both loops run the trainer's step (`Optimization`, `training_loss`, and for frozen encoders the embedding cache)
on the same model; the in-memory loop replays batches the loader produced. Untimed warm-up epochs first fill the
decoded-image cache (and, for frozen encoders, the embedding cache for every image and flip), as the trainer's
first epochs do. `--as-files PX` writes the dataset as PNG files of PX x PX pixels in the folder layout and loads
those, so the loader decodes and resizes real files. Each loader step (fetch + step) is paired with a step on an
in-memory batch, alternating which runs first, so drift of the machine hits both alike. Prints and writes the
ratio of the summed step times (by default results/bench/loader_<dataset>_<method>[_files<PX>]_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from peftbench.data import resolve_dataset
from peftbench.data.loading import build_splits
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import get_method
from peftbench.store.environment import environment
from peftbench.training.device import resolve_device
from peftbench.training.speed import CachedEncoder, embedding_cache
from peftbench.training.train import build_model, optimization_for, seed_everything, train_step


def write_as_files(card, size: int, folder: Path) -> Path:
    """The card's splits as train/val/test folders of images/ and masks/ PNGs, resized to `size` px."""
    for split, data in build_splits(card, card.size).items():
        images, labels = data.samples
        name = "test" if split.startswith("test") else split
        for sub in ("images", "masks"):
            (folder / name / sub).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            stem = f"{split.replace(':', '_')}_{i:04d}"
            Image.fromarray(image).resize((size, size), Image.BICUBIC).save(folder / name / "images" / f"{stem}.png")
            Image.fromarray(label * (255 // max(1, label.max()))).resize((size, size), Image.NEAREST).save(
                folder / name / "masks" / f"{stem}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth_leaf")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs of each loop")
    parser.add_argument("--as-files", type=int, default=None, metavar="PX",
                        help="a synthetic dataset written as PX x PX PNG files and loaded from them")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    card, spec = resolve_dataset(args.dataset, args.data_root), get_method(args.method)
    with tempfile.TemporaryDirectory() as tmp:
        if args.as_files:
            if card.kind != "binary" or card.source != "synthetic":
                parser.error("--as-files writes binary synthetic datasets only")
            card = resolve_dataset(str(write_as_files(card, args.as_files, Path(tmp))))
        result = measure(card, spec, args)
    suffix = f"_files{args.as_files}" if args.as_files else ""
    out = Path(args.out) / f"loader_{args.dataset}_{spec.name}{suffix}_{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{args.dataset}{suffix} / {spec.name} on {result['device']}: loader {result['loader_ms_per_step']:.2f} "
          f"ms/step, in memory {result['in_memory_ms_per_step']:.2f} ms/step, ratio {result['ratio']:.3f}; waiting for "
          f"the loader {result['fetch_ms_per_step']:.3f} ms/step ({100 * result['fetch_share']:.1f}%) -> {out}")


def measure(card, spec, args) -> dict:
    config = resolve_config(spec, card, 0, GridOptions(device=args.device))
    device = resolve_device(config.device)
    seed_everything(0)
    model, method = build_model(config, card, spec)
    model.to(device).train()
    cache_for, _ = embedding_cache(model, config.cache_embeddings)
    cached = cache_for("train")
    data = build_splits(card, model.img_size, keys=True)["train"]
    workers = config.num_workers
    loader = data.loader(config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                         num_workers=workers, pin_memory=device.type == "cuda",
                         persistent_workers=workers > 0)
    groups = method.parameter_groups(model)
    optimization, _ = optimization_for(method, groups, config, len(loader), device)
    epochs_done = [0]

    def step(x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor, index: int) -> None:
        """The trainer's step on one batch, with the method's step plan of the same epoch of a run (capped at the
        run's last epoch: NAS-LoRA's search phase once its start is passed)."""
        epoch_index = min(epochs_done[0], config.epochs - 1)
        plan = method.step_plan(epoch_index, index) or [list(groups)]
        train_step(model, method, optimization, [(x, y, keys)], plan, card, config, device, embedding_context=cached)

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def epoch(timed: bool) -> None:
        """One loader epoch; when timed, each loader step (fetch + step) is paired with a step on an in-memory
        batch, the two in alternating order, so that machine drift hits both alike."""
        batches = iter(loader)
        for i, memory_batch in enumerate(in_memory):
            if not timed:
                step(*next(batches), i)
                continue
            for source in ("loader", "memory") if i % 2 else ("memory", "loader"):
                start = sync()
                batch = next(batches) if source == "loader" else memory_batch
                fetched = time.perf_counter()
                step(*batch, i)
                times[source].append((sync() - start) * 1000)
                if source == "loader":
                    times["fetch"].append((fetched - start) * 1000)
        epochs_done[0] += 1

    in_memory = [tuple(t.to(device) for t in batch) for batch in loader]  # fills the decoded-image cache
    store = model.image_encoder.store if isinstance(model.image_encoder, CachedEncoder) else None
    times: dict[str, list[float]] = {"loader": [], "memory": [], "fetch": []}
    warmup = 1
    while warmup < 2 or (store is not None and len(store) < 2 * len(data) and warmup < 20):
        epoch(timed=False)  # every image and flip embedded once, as in the trainer's later epochs
        warmup += 1
    for _ in range(args.epochs):
        epoch(timed=True)
    loader_ms, memory_ms = (np.array(times[k]) for k in ("loader", "memory"))
    result = {
        "dataset": card.name, "method": spec.name, "device": device.type, "batch": config.batch_size,
        "workers": workers, "train_images": len(data), "image_files": card.source != "synthetic",
        "embedding_cache": store is not None, "warmup_epochs": warmup, "timed_epochs": args.epochs,
        "paired_steps": len(loader_ms), "loader_ms_per_step": loader_ms.mean(), "in_memory_ms_per_step": memory_ms.mean(),
        "ratio": loader_ms.sum() / memory_ms.sum(), "median_step_ratio": float(np.median(loader_ms / memory_ms)),
        # The time spent waiting for the loader's next batch, directly (the paired ratio carries the machine's noise).
        "fetch_ms_per_step": float(np.mean(times["fetch"])), "fetch_share": float(np.sum(times["fetch"]) / loader_ms.sum()),
        "environment": environment(),
    }
    return result


if __name__ == "__main__":
    main()
