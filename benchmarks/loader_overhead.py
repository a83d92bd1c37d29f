"""Does the input pipeline stall training? Step time with the real DataLoader against the same batches in memory.

    python benchmarks/loader_overhead.py --dataset synth_leaf --method lora --epochs 3

Both loops run the trainer's own step (`Optimization`, `training_loss`) on the same model; the in-memory loop
replays the batches the loader produced in the first epoch. Epoch 1 of the loader loop fills the decoded-image
cache and is not timed. Prints and writes (benchmarks/results/loader_<dataset>_<method>.json) the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from peftbench.data import resolve_dataset
from peftbench.data.loading import build_splits
from peftbench.methods import get_method
from peftbench.records import environment
from peftbench.runner import GridOptions, resolve_config
from peftbench.train import Optimization, build_model, resolve_device, seed_everything, training_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth_leaf")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    card, spec = resolve_dataset(args.dataset, None), get_method(args.method)
    config = resolve_config(spec, card, 0, GridOptions(device=args.device))
    device = resolve_device(config["device"])
    seed_everything(0)
    model, method = build_model(config, card, spec)
    model.to(device).train()
    data = build_splits(card, model.img_size)["train"]
    loader = DataLoader(data, batch_size=config["batch_size"], shuffle=True, num_workers=config["num_workers"],
                        pin_memory=device.type == "cuda", persistent_workers=config["num_workers"] > 0)
    groups = method.parameter_groups(model)
    optimization = Optimization(groups, config, total_steps=10**6, device=device)
    every = list(groups)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimization.backward(training_loss(model, method, x.to(device, non_blocking=True),
                                            y.to(device, non_blocking=True), card, config, device))
        optimization.step(every)

    def timed(batches) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, count = time.perf_counter(), 0
        for x, y in batches:
            step(x, y)
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000 / count

    in_memory = [(x.to(device), y.to(device)) for x, y in loader]  # epoch 1: fills the cache, not timed
    loader_ms, memory_ms = [], []
    for _ in range(args.epochs):  # interleaved, so drift hits both loops alike
        loader_ms.append(timed(loader))
        memory_ms.append(timed(in_memory))
    result = {
        "dataset": card.name, "method": spec.name, "device": device.type, "batch": config["batch_size"],
        "workers": config["num_workers"], "loader_ms_per_step": statistics.median(loader_ms),
        "in_memory_ms_per_step": statistics.median(memory_ms), "environment": environment(),
    }
    result["ratio"] = result["loader_ms_per_step"] / result["in_memory_ms_per_step"]
    out = Path(args.out) / f"loader_{card.name}_{spec.name}_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{card.name} / {spec.name} on {device.type}: loader {result['loader_ms_per_step']:.2f} ms/step, "
          f"in memory {result['in_memory_ms_per_step']:.2f} ms/step, ratio {result['ratio']:.3f} -> {out}")


if __name__ == "__main__":
    main()
