"""The grid: every (dataset, method, seed) trained in turn, records written atomically, finished runs skipped."""

from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data import DatasetCard
from .methods import MethodSpec
from .records import config_hash, environment, is_complete, record_path, write_json_atomic
from .report import build_report
from .resume import claim, release
from .sam import spec_dict
from .tables import write_tables
from .train import resolve_device, resolve_precision, train_run

DEFAULTS = {"batch_size": 4, "weight_decay": 1e-4, "grad_clip": 1.0, "patience": 10, "w_seg": 1.0, "w_cls": 1.0}


@lru_cache(maxsize=4)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class GridOptions:
    sam: str = "tiny"
    checkpoint: str | None = None
    device: str = "auto"
    epochs: int | None = None
    batch_size: int = DEFAULTS["batch_size"]
    micro_batch_size: int | None = None  # default: 1 on CUDA (as the Conv-LoRA harness), the whole batch on the CPU
    precision: str = "auto"  # auto: fp16 autocast on CUDA, fp32 on the CPU
    attention: str = "original"  # or "sdpa"
    checkpointing: bool = False
    cache_embeddings: bool = True
    inference: str = "auto"  # auto: merge exact merges; merged: also approximate ones; unmerged: never
    out: Path = Path("results")
    checkpoint_interval_s: float = 30.0  # mid-run checkpoints: after an epoch, at most this often
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


def resolve_config(method: MethodSpec, card: DatasetCard, seed: int, opts: GridOptions) -> dict:
    """Everything that determines a run's numbers; its hash decides whether a stored record is still valid."""
    device = resolve_device(opts.device)
    train = method.train
    return {
        **DEFAULTS,
        "method": method.as_dict(),
        "dataset": card.as_dict(),
        "seed": seed,
        "sam": opts.sam,
        "sam_spec": spec_dict(opts.sam),
        "checkpoint": opts.checkpoint,
        "checkpoint_sha256": file_sha256(opts.checkpoint) if opts.checkpoint else None,
        "device": device.type,
        "precision": resolve_precision(opts.precision, device),
        "epochs": opts.epochs or train.get("epochs", card.epochs),
        "lr": train.get("lr", card.lr),
        "group_optim": train.get("group_optim", {}),
        "batch_size": opts.batch_size,
        "micro_batch_size": opts.micro_batch_size or (1 if device.type == "cuda" else opts.batch_size),
        "num_workers": 4 if device.type == "cuda" else 0,
        "inference": opts.inference,
        # Speed settings (results equal up to float precision; kept in the config for the record):
        "attention": opts.attention, "checkpointing": opts.checkpointing, "cache_embeddings": opts.cache_embeddings,
    }


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def run_grid(methods: list[MethodSpec], cards: list[DatasetCard], opts: GridOptions, console: Console) -> dict:
    """Train every missing run, then render the tables. Returns counts of done, skipped and failed runs."""
    grid = [(c, m, s) for c in cards for m in methods for s in opts.seeds]
    summary = {"trained": 0, "skipped": 0, "claimed": 0, "failed": 0, "tables": []}
    env = environment()
    with _progress(console) as progress:
        overall = progress.add_task("grid", total=len(grid))
        for card, method, seed in grid:
            label = f"{card.name} / {method.name} / seed {seed}"
            config = resolve_config(method, card, seed, opts)
            path = record_path(opts.out, card.name, method.name, seed)
            lock = Path(opts.out) / "locks" / card.name / method.name / f"seed{seed}.lock"
            if is_complete(path, config) or not claim(lock):
                summary["skipped" if is_complete(path, config) else "claimed"] += 1
                progress.advance(overall)
                continue
            if is_complete(path, config):  # finished by another process between the check and the claim
                release(lock)
                summary["skipped"] += 1
                progress.advance(overall)
                continue
            checkpoint = Path(opts.out) / "checkpoints" / card.name / method.name / f"seed{seed}.pt"
            run_task = progress.add_task(label, total=None)

            def on_step(epoch: int, step: int, steps: int, loss: float, groups: list, task=run_task, label=label,
                        config=config) -> None:
                progress.update(task, total=steps * config["epochs"], completed=epoch * steps + step + 1,
                                description=f"{label} · epoch {epoch + 1}/{config['epochs']} · loss {loss:.3f}")

            start = time.time()
            try:
                result = train_run(config, card, method, on_step, checkpoint=checkpoint, lock=lock,
                                   checkpoint_interval_s=opts.checkpoint_interval_s)
            except (KeyboardInterrupt, SystemExit):
                release(lock)
                raise
            except Exception:  # one broken run must not lose the others; its traceback is kept
                log = Path(opts.out) / "failed" / card.name / method.name / f"seed{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(traceback.format_exc())
                console.print(f"[red]failed[/red] {label}: see {log}")
                summary["failed"] += 1
            else:
                record = {
                    "method": method.name, "dataset": card.name, "seed": seed, **result,
                    "config": config, "config_hash": config_hash(config), "environment": env,
                    "device": {"type": config["device"], "name": result.pop("device_name"),
                               "torch_threads": torch.get_num_threads()},
                    "wall_time_s": time.time() - start,
                }
                write_json_atomic(path, record)
                checkpoint.unlink(missing_ok=True)
                summary["trained"] += 1
            release(lock)
            progress.remove_task(run_task)
            progress.advance(overall)
    summary["tables"] = write_tables(opts.out) + build_report(opts.out)
    return summary
