"""The grid: plan every (dataset, method, seed), skip recorded runs, hand the rest to an executor (executors.py),
then summarise and render the tables."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..backbone.sam import spec_dict
from ..data import DatasetCard
from ..data.loading import AUGMENTATION
from ..errors import UserError
from ..methods import MethodSpec
from ..report import build_report
from ..store.atomic import remove_stale_temporaries
from ..store.environment import environment
from ..store.hashing import cached_file_sha256
from ..store.names import safe_name, safe_seeds
from ..store.records import config_differences, config_hash, is_complete, record_and_problem, record_path
from ..training.config import GridOptions, RunConfig
from ..training.device import resolve_device, resolve_precision
from ..training.runs import adapter_path
from .executors import Executor, LocalExecutor, RunTask

if TYPE_CHECKING:
    from .trackers import TrackerSpec


def resolve_config(method: MethodSpec, card: DatasetCard, seed: int, opts: GridOptions) -> RunConfig:
    """Everything that determines a run's numbers; its hash decides whether a stored record is still valid.
    `opts.device` "cpu" or "cuda" is taken as resolved (by an executor, for its workers); "auto" looks here."""
    device = resolve_device(opts.device) if opts.device == "auto" else torch.device(opts.device)
    train = method.train
    # A random backbone uses no weights: neither the checkpoint nor the shipped tiny weights are part of its config.
    checkpoint = opts.checkpoint if method.backbone == "pretrained" else None
    architecture = "tiny_random" if opts.sam == "tiny" and method.backbone == "random" else opts.sam
    epochs = opts.epochs or train.get("epochs", card.epochs)
    problem = method.build().check_schedule(epochs)
    if problem:  # e.g. a NAS search that would take no step: refuse rather than record a LoRA run under its name
        raise UserError(f"{method.name} on {card.name} with {epochs} epochs: {problem}")
    on_cpu = device.type == "cpu"
    copied = {f.name: getattr(opts, f.name) for f in fields(RunConfig) if f.name in _GRID_FIELDS}
    return RunConfig(**{
        **copied,  # sam, batch_size, inference, eval_resolution and the speed settings, as given
        "method": method.as_dict(),
        "dataset": card.as_dict(),
        "seed": seed,
        "sam_spec": spec_dict(architecture),
        "checkpoint": checkpoint,
        "checkpoint_sha256": cached_file_sha256(checkpoint) if checkpoint else None,
        "device": device.type,
        "precision": resolve_precision(opts.precision, device),
        "epochs": epochs,
        "augmentation": AUGMENTATION,
        "lr": train.get("lr", card.lr),
        "group_optim": train.get("group_optim", {}),
        "micro_batch_size": opts.micro_batch_size or (opts.batch_size if on_cpu else 1),
        "num_workers": 0 if on_cpu else 4,
        "cpu_workers": opts.cpu_workers if on_cpu else None,
        "threads_per_run": opts.threads_per_run if on_cpu else None,
    })


_GRID_FIELDS = {f.name for f in fields(GridOptions)}


def plan_grid(methods: list[MethodSpec], cards: list[DatasetCard], opts: GridOptions,
              tracker: TrackerSpec | None = None) -> list[RunTask]:
    """Every (dataset, method, seed) of the grid with its resolved config; `opts.device` already resolved."""
    env, out, cwd = environment(), Path(opts.out).resolve(), os.getcwd()
    return [RunTask(card, method, seed, resolve_config(method, card, seed, opts), out, cwd, env,
                    opts.checkpoint_interval_s, opts.save_adapters, tracker)
            for card in cards for method in methods for seed in opts.seeds]


class _GridProgress:
    """The grid's progress bars: one overall, one per run while it trains (with the executors that report steps)."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.overall, self.bars = progress, progress.add_task("grid", total=total), {}
        self.results: list[dict] = []

    def started(self, task: RunTask):
        bar = self.bars[task.label] = self.progress.add_task(task.label, total=None)
        epochs = task.config.epochs

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            self.progress.update(bar, total=steps * epochs, completed=epoch * steps + step + 1,
                                 description=f"{task.label} · epoch {epoch + 1}/{epochs} · loss {loss:.3f}")

        return on_step

    def finished(self, task: RunTask, result: dict) -> None:
        self.progress.remove_task(self.bars.pop(task.label))
        self.progress.advance(self.overall)
        if result["status"] == "failed":
            self.progress.console.print(f"[red]failed[/red] {task.label}: {result['error']} (log: {result['log']})")
        self.results.append(result)


def check_existing_records(tasks: list[RunTask], opts: GridOptions) -> None:
    """Before anything trains: an unusable record file stops the grid (it is never silently retrained over), and
    so does a finished record of another config, unless `opts.replace`: then it is moved to
    <out>/replaced/<time>/ (never deleted, its trained state with it) and its run is retrained."""
    loaded = [(t, path, *record_and_problem(path)) for t in tasks
              for path in [record_path(t.out, t.card.name, t.method.name, t.seed)]]
    unusable = [(path, why) for _, path, _, why in loaded if why]
    if unusable:
        more = f" (and {len(unusable) - 1} more)" if len(unusable) > 1 else ""
        raise UserError(f"{unusable[0][0]}: {unusable[0][1]}{more}; fix or move it away to retrain that run")
    other = [(t, path, r) for t, path, r, _ in loaded if r and r.get("config_hash") != config_hash(t.config)]
    if not other:
        return
    if not opts.replace:
        task, path, record = other[0]
        raise UserError(
            f"{len(other)} finished record(s) under {Path(opts.out) / 'runs'} were made with another config, e.g. "
            f"{path} ({config_differences(record.get('config', {}), task.config)}); give --out with a new folder to "
            "keep both, or --replace to retrain them (the old records are moved to a replaced/ folder)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for task, path, _ in other:  # task.out: the resolved --out, which `path` is under
        for old in (path, adapter_path(task.out, task.card.name, task.method.name, task.seed)):
            if old.exists():
                target = task.out / "replaced" / stamp / old.relative_to(task.out)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, target)


# The folders under --out that a grid writes its files in (see executors.py), each file atomically.
OUTPUT_FOLDERS = ("runs", "adapters", "checkpoints", "failed", "tables", "figures")


def checked_options(methods: list[MethodSpec], cards: list[DatasetCard], opts: GridOptions) -> GridOptions:
    """Before the first run: what names a run's files checked (cards and methods made in code, not read from a
    file, included), `opts` with its seeds non-negative integers without repeats."""
    for card in cards:
        safe_name(card.name, "a dataset card's name")
    for method in methods:
        safe_name(method.name, "a method's name")
    return replace(opts, seeds=safe_seeds(opts.seeds, "seeds"))


def run_grid(methods: list[MethodSpec], cards: list[DatasetCard], opts: GridOptions, console: Console,
             executor: Executor | None = None) -> dict:
    """Plan the grid, skip recorded runs, hand the others to `executor` (default: local, sequential, one process
    per run), then render the tables. Returns counts per status, the failed and interrupted runs' statuses and the
    tables."""
    opts = checked_options(methods, cards, opts)
    for folder in OUTPUT_FOLDERS:  # a killed earlier grid's temporaries, wherever this grid may not write again
        remove_stale_temporaries(Path(opts.out) / folder, recursive=True)
    executor = executor or LocalExecutor()
    tracker = None
    if opts.tracker:  # an optional dependency: imported only when asked for; unusable: an error before any training
        from .trackers import tracker_spec

        tracker = tracker_spec(opts.tracker, opts.tracker_uri, Path(opts.out))
    tasks = plan_grid(methods, cards, replace(opts, device=executor.device_type(opts.device)), tracker)
    check_existing_records(tasks, opts)
    pending = [t for t in tasks if not is_complete(record_path(t.out, t.card.name, t.method.name, t.seed), t.config)]
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console)
    with progress:
        monitor = _GridProgress(progress, len(tasks))
        progress.advance(monitor.overall, len(tasks) - len(pending))
        executor.run(pending, monitor)
    counts = Counter(r["status"] for r in monitor.results)
    summary = {"trained": counts["trained"], "skipped": len(tasks) - len(pending) + counts["skipped"],
               "claimed": counts["claimed"], "failed": counts["failed"], "interrupted": counts["interrupted"],
               "failed_runs": [r for r in monitor.results if r["status"] == "failed"],
               "interrupted_runs": [r for r in monitor.results if r["status"] == "interrupted"]}
    # Someone else's unusable record in the folder is named and left out; it never fails the grid's end.
    summary["tables"] = build_report(opts.out, warn=lambda text: console.print(
        f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True),
        dataset_roots=[card.base_dir for card in cards if card.path])
    if tracker:
        from .trackers import log_grid_artifacts

        log_grid_artifacts(tracker, summary["tables"])
    return summary
