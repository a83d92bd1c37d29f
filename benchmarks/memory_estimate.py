"""Peak training memory per method, estimated on any machine: the training step run on fake tensors.

    python benchmarks/memory_estimate.py --sam vit_h --methods lora,nas_pc_lora --batch 4 --precision fp16

Under `FakeTensorMode` every operation computes only shapes and dtypes, so two training steps of vit_h at 1024 px
(the trainer's step: forward, loss, backward, optimizer) take seconds on a CPU. A dispatch mode adds up the bytes
of every storage while it is alive: weights, inputs, activations, gradients and optimizer state. Each method is
estimated with and without activation checkpointing of the encoder blocks. Methods whose construction or step
depends on tensor values (Conv-LoRA's routing, trunc_normal_ initialisers, LoRA-with-bottleneck device moves) cannot
run on fake tensors; their rows say so.

Not counted: the CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation (measured peaks on a GPU come out
higher by roughly 0.5-2 GB). fp16 is estimated with bf16 autocast (the same bytes: the loss scaler needs real values).
Writes (by default) results/bench/memory_<sam>_<size>px_b<batch>_<precision>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import weakref
from pathlib import Path

import pandas as pd
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from peftbench.bench import BenchOptions, Setting, Subject
from peftbench.methods import resolve_methods
from peftbench.store.environment import environment


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages that are alive, and their peak, for tensors tracked or made by an operation."""

    def __init__(self) -> None:
        super().__init__()
        self.storages = WeakIdKeyDictionary()
        self.current = self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self.storages:
            return
        size = storage.nbytes()
        self.current += size
        self.peak = max(self.peak, self.current)
        self.storages[storage] = weakref.ref(storage, lambda _, size=size: self._free(size))

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


def estimate(spec, opts: BenchOptions, setting: Setting, fake: bool = True) -> dict:
    """Weights + inputs and the peak over two training steps (the second has the optimizer state), in bytes."""
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else torch.device("cpu"):
        subject = Subject(spec, opts, torch.device("cpu"), setting)
        live = LiveBytes()
        for tensor in [*subject.model.parameters(), *subject.model.buffers(), subject.x, subject.y]:
            live.track(tensor)
        resident = live.current
        with live:
            for _ in range(2):
                subject.train_step(subject.plans["train"])
    return {"resident": resident, "peak": live.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="vit_h")
    parser.add_argument("--methods", default="lora")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    autocast = "bf16" if args.precision == "fp16" else args.precision  # same bytes; no loss scaler on fake values
    rows = []
    for spec in resolve_methods(args.methods):
        for checkpointing in (False, True):
            opts = BenchOptions(sam=args.sam, batch=args.batch, image_size=args.image_size)
            row = {"method": spec.name, "checkpointing": checkpointing}
            try:
                found = estimate(spec, opts, Setting(autocast, checkpointing=checkpointing))
                row.update(weights_and_inputs_gib=found["resident"] / 2**30, peak_gib=found["peak"] / 2**30)
            except (RuntimeError, DataDependentOutputException) as err:
                # Routing on values (Conv-LoRA) or initialisers that read values (trunc_normal_: Mona, SAM-Adapter)
                # cannot run on fake tensors.
                row["not_estimated"] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
            rows.append(row)
    table = pd.DataFrame(rows)
    stem = Path(args.out) / f"memory_{args.sam}_{args.image_size}px_b{args.batch}_{args.precision}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# Estimated peak training memory: SAM {args.sam}, {args.image_size} px, batch {args.batch}, "
            f"{args.precision}\n\nFake-tensor estimate (benchmarks/memory_estimate.py): live storages over two "
            f"training steps; CUDA context, workspaces and fragmentation not included.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        {"settings": {**vars(args), "autocast": autocast}, "rows": rows, "environment": environment()}, indent=1))
    print(text + f"\n-> {stem}.md")


if __name__ == "__main__":
    main()
