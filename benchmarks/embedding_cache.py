"""How much does caching frozen image embeddings save? Decoder-only trained with and without the cache.

    python benchmarks/embedding_cache.py --dataset synth_leaf --epochs 12

Runs the trainer (`train_run`) twice on the same config, cache on and off, and compares the training time of
each epoch (`history[].train_s`). The first epochs fill the cache (each image and flip is embedded once), so the
figure that matters is the median epoch from `--from-epoch` on. What the cache removes is the encoder's forward
pass, so the speed-up follows the encoder's share of an uncached epoch: the benchmark also times that pass alone over
one epoch's images. Writes (by default) results/bench/embedding_cache_<dataset>_<sam>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from peftbench.data import resolve_dataset
from peftbench.data.loading import build_splits
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import get_method
from peftbench.store.environment import environment
from peftbench.training.config import RunConfig
from peftbench.training.device import resolve_device
from peftbench.training.train import build_model, train_run


def encoder_epoch_s(config: RunConfig, card, spec) -> float:
    """Seconds the frozen encoder's forward pass takes over one epoch of training batches (median of 3)."""
    device = resolve_device(config.device)
    model, _ = build_model(config, card, spec)
    encoder = model.image_encoder.to(device).eval()
    train = build_splits(card, model.img_size)["train"]
    batches = [x.to(device) for x, _ in train.loader(config.micro_batch_size, generator=torch.Generator().manual_seed(0))]
    runs = []
    with torch.no_grad():
        for _ in range(4):  # the first is a warm-up
            start = time.perf_counter()
            for x in batches:
                encoder(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
    return statistics.median(runs[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth_leaf")
    parser.add_argument("--method", default="decoder_only", help="a method whose image encoder stays frozen")
    parser.add_argument("--sam", default="tiny")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--from-epoch", type=int, default=4, help="first epoch (1-based) of the compared median")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    card, spec = resolve_dataset(args.dataset), get_method(args.method)
    opts = GridOptions(sam=args.sam, device=args.device, epochs=args.epochs)
    runs = {}
    for cached in (True, False):
        config = replace(resolve_config(spec, card, 0, replace(opts, cache_embeddings=cached)),
                         patience=args.epochs)  # every epoch runs in both
        start = time.perf_counter()
        result = train_run(config, card, spec)
        runs["cached" if cached else "uncached"] = {
            "epoch_train_s": [h["train_s"] for h in result["history"]], "run_s": time.perf_counter() - start,
            "test": result["metrics"]}
    # Embeddings computed in other batch compositions may differ in the last float bits, nothing more.
    gap = max(abs(value - runs["uncached"]["test"][test][name])
              for test, values in runs["cached"]["test"].items() for name, value in values.items())
    if gap > 1e-3:
        raise SystemExit(f"the cache changed a test metric by {gap:.3g}: a bug, not a speed-up")
    median = {k: statistics.median(r["epoch_train_s"][args.from_epoch - 1:]) for k, r in runs.items()}
    encoder_s = encoder_epoch_s(config, card, spec)
    result = {
        "dataset": card.name, "method": spec.name, "sam": args.sam, "device": config.device,
        "batch": config.batch_size, "train_images": card.splits.get("train"), "epochs": args.epochs,
        "compared_epochs": f"{args.from_epoch}-{args.epochs}", "runs": runs,
        "cached_epoch_s": median["cached"], "uncached_epoch_s": median["uncached"],
        "speedup": median["uncached"] / median["cached"],
        "encoder_forward_epoch_s": encoder_s,
        "encoder_forward_share": encoder_s / median["uncached"],
        "max_test_metric_difference": gap, "environment": environment(),
    }
    out = Path(args.out) / f"embedding_cache_{card.name}_{args.sam}_{config.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{card.name} / {spec.name} / SAM {args.sam} on {config.device}: epoch {median['uncached']:.3f} s "
          f"uncached, {median['cached']:.3f} s cached: {result['speedup']:.2f}x (the encoder's forward alone: "
          f"{encoder_s:.3f} s/epoch, {100 * result['encoder_forward_share']:.0f}% of an uncached epoch); "
          f"test metrics equal within {gap:.1g} -> {out}")


if __name__ == "__main__":
    main()
