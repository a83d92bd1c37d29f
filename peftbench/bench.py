"""`peftbench bench`: training-step and inference speed and peak memory per method, on random inputs.

Speed does not depend on weight values, so SAM is randomly initialised (no checkpoint) and fed random images and
masks (no dataset). Every method is timed with the trainer's own step (`Optimization`, `training_loss`): warm-up
iterations, device synchronisation, a fixed number of iterations per repeat, the median over repeats. LoRA and
decoder-only (the frozen base SAM plus the trained decoder) are always measured too, so ratios come from one run.
Several settings (precisions, attention implementations, checkpointing on/off) can be timed in the same run: every
method runs under every combination, and each row is also compared with the same method under the first setting.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from .backbone.sam import SAM_SPECS, build_sam
from .backbone.segmenter import SamSegmenter
from .data.cards import DatasetCard
from .methods import MethodSpec, resolve_methods
from .store.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from .store.environment import environment
from .training.config import StepConfig
from .training.device import autocast, resolve_device, resolve_precision
from .training.speed import checkpoint_blocks, embedding_cache, encoder_is_frozen, use_sdpa
from .training.train import optimization_for, train_step

BINARY = DatasetCard(name="random", kind="binary", source="bench", description="random inputs", num_classes=1,
                     metrics=["iou"], select_metric="iou")
REFERENCES = ("lora", "decoder_only")  # ratio denominators: LoRA's training step, the base SAM's inference


@dataclass(frozen=True)
class Setting:
    """How a subject runs: autocast precision, attention implementation, activation checkpointing."""

    precision: str = "fp32"
    attention: str = "original"  # or "sdpa"
    checkpointing: bool = False


@dataclass
class BenchOptions:
    sam: str = "tiny"
    methods: str = "all"
    batch: int = 4
    image_size: int | None = None  # default: the architecture's own (1024 for vit_b/l/h, 64 for tiny)
    precisions: tuple[str, ...] = ("auto",)  # every combination of these three is timed; the first is the reference
    attentions: tuple[str, ...] = ("original",)
    checkpointing: tuple[bool, ...] = (False,)
    device: str = "auto"
    warmup: int = 2
    iters: int = 5
    repeats: int = 3
    out: Path = Path("results/bench")  # not benchmarks/results/: a run must not overwrite the committed figures
    seed: int = 0
    one_at_a_time: bool = False
    optimizer_kernel: str = "fused"  # see device.OPTIMIZER_KERNELS

    def settings(self, device: torch.device) -> list[Setting]:
        precisions = dict.fromkeys(resolve_precision(p, device) for p in self.precisions)
        return [Setting(*combo) for combo in itertools.product(precisions, self.attentions, self.checkpointing)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device, resident: int) -> float | None:
    """Peak CUDA memory above what was allocated when the measurement started, plus `resident` bytes."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device) + resident) / 2**20


class Subject:
    """One method attached to a randomly initialised SAM, with the trainer's optimizers and random inputs."""

    def __init__(self, spec: MethodSpec, opts: BenchOptions, device: torch.device, setting: Setting) -> None:
        torch.manual_seed(opts.seed)
        with torch.device(device):
            self.model = SamSegmenter(build_sam(opts.sam, opts.image_size), num_classes=1)
            self.method = spec.build()
            self.method.attach(self.model)
        if setting.attention == "sdpa":
            use_sdpa(self.model)
        if setting.checkpointing:
            checkpoint_blocks(self.model)
        self.spec, self.device, self.setting = spec, device, setting
        size = self.model.img_size
        self.x = torch.randn(opts.batch, 3, size, size, device=device)
        self.y = (torch.rand(opts.batch, size, size, device=device) > 0.5).float()
        self.config = StepConfig(lr=1e-4, group_optim=spec.train.get("group_optim", {}), epochs=30,
                                 precision=setting.precision, optimizer_kernel=opts.optimizer_kernel)
        self.groups = self.method.parameter_groups(self.model)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        # Methods with a schedule (NAS-LoRA, resolved for the paper's 30 epochs) also have a search-phase iteration,
        # architecture step(s) + weight step, and its architecture step(s) are timed alone too (the paper's Table 5
        # reports weight and architecture updates apart).
        self.optimization, _ = optimization_for(self.method, self.groups, self.config, steps_per_epoch=1,
                                                device=device)
        every = [list(self.groups)]
        self.plans = {"train": self.method.step_plan(0, 0) or every, "search": self.method.step_plan(29, 0) or every}
        self.plans["arch"] = [active for active in self.plans["search"] if "weights" not in active]
        self.embedding_cache = None  # (cache_for, release) of speed.embedding_cache once a cached step ran

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])

    def train_step(self, plan: list[list[str]], embedding_context=None) -> None:
        """The trainer's step (train.train_step) on the subject's batch."""
        keys = torch.arange(len(self.x))
        train_step(self.model, self.method, self.optimization, [(self.x, self.y, keys)], plan, BINARY, self.config,
                   self.device, embedding_context=embedding_context, read_losses=False)

    def cached_train_step(self) -> None:
        """A training step with the image embeddings already cached (the encoder is frozen), as the trainer's."""
        if self.embedding_cache is None:
            self.embedding_cache = embedding_cache(self.model)
        cache_for, _ = self.embedding_cache
        self.train_step(self.plans["train"], cache_for("bench"))

    def release_embedding_cache(self) -> None:
        """Back to the real encoder (inference times it)."""
        if self.embedding_cache is not None:
            self.embedding_cache[1]()
            self.embedding_cache = None

    @torch.no_grad()
    def infer(self) -> None:
        self.model.eval()
        with autocast(self.device, self.setting.precision):
            self.model.probabilities(self.x)


def time_round_robin(subjects: list[Subject], task, device: torch.device, opts: BenchOptions) -> list[tuple]:
    """Median ms per call of `task(subject)` for every subject, repeats interleaved across subjects so that
    drift of the machine (clock, cache, other load) spreads over all methods instead of biasing one.
    Returns (ms, peak MiB) per subject."""
    for subject in subjects:
        for _ in range(opts.warmup):
            task(subject)
    runs: list[list[float]] = [[] for _ in subjects]
    peaks: list[float | None] = [None] * len(subjects)
    for _ in range(opts.repeats):
        for i, subject in enumerate(subjects):
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(opts.iters):
                task(subject)
            _sync(device)
            runs[i].append((time.perf_counter() - start) * 1000 / opts.iters)
            peaks[i] = _peak_mib(device, subject.weight_bytes())
    return [(statistics.median(r), p) for r, p in zip(runs, peaks)]


def measure(subjects: list[Subject], opts: BenchOptions, device: torch.device, log=None) -> list[dict]:
    """Every figure of the table for `subjects`, each phase timed round robin across them."""
    def timed(group: list[Subject], task) -> dict[Subject, tuple]:
        return dict(zip(group, time_round_robin(group, task, device, opts)))

    if log:
        log("timing training steps")
    train = timed(subjects, lambda s: s.train_step(s.plans["train"]))
    # Methods that leave the encoder frozen (decoder-only) train on cached embeddings from the second epoch on.
    cached = timed([s for s in subjects if encoder_is_frozen(s.model)], Subject.cached_train_step)
    search = timed([s for s in subjects if s.plans["search"] != s.plans["train"]],
                   lambda s: s.train_step(s.plans["search"]))
    arch = timed([s for s in subjects if s.plans["arch"]], lambda s: s.train_step(s.plans["arch"]))
    if log:
        log("timing inference")
    for subject in cached:  # inference runs the real encoder
        subject.release_embedding_cache()
    unmerged = timed(subjects, Subject.infer)
    mergeable = [s for s in subjects if s.spec.merge_kind != "none"]
    for subject in mergeable:
        subject.method.merge(subject.model)
    merged = timed(mergeable, Subject.infer)

    rows = []
    for s in subjects:
        exact = s.spec.merge_kind == "exact"
        row = {"method": s.spec.name, **asdict(s.setting), "merge": s.spec.merge_kind, "trainable": s.trainable,
               "train_ms": train[s][0], "train_peak_mib": train[s][1],
               "train_cached_ms": cached[s][0] if s in cached else None,
               "search_ms": search[s][0] if s in search else None, "arch_ms": arch[s][0] if s in arch else None,
               "infer_unmerged_ms": unmerged[s][0], "infer_peak_mib": unmerged[s][1],
               "infer_merged_ms": merged[s][0] if s in merged else None}
        # The deployable model: merged where the merge is exact, otherwise the adapter runs.
        row["infer_ms"] = row["infer_merged_ms"] if exact else row["infer_unmerged_ms"]
        row["train_img_per_s"] = opts.batch * 1000 / row["train_ms"]
        row["infer_img_per_s"] = opts.batch * 1000 / row["infer_ms"]
        rows.append(row)
    return rows


def run_bench(opts: BenchOptions, on_method=None) -> tuple[pd.DataFrame, dict]:
    """Time every method of `opts.methods` (plus the references); returns (table, metadata).

    All models (every method under every setting) stay resident and every phase is timed round robin;
    `one_at_a_time` builds, times and frees one model after the other instead (for GPUs that cannot hold them all,
    e.g. vit_h on 16 GB).
    """
    device = resolve_device(opts.device)
    settings = opts.settings(device)
    specs = resolve_methods(opts.methods)
    missing = [r for r in REFERENCES if r not in {s.name for s in specs}]
    specs = (resolve_methods(",".join(missing)) if missing else []) + specs
    pairs = [(spec, setting) for setting in settings for spec in specs]

    def build(spec: MethodSpec, setting: Setting) -> Subject:
        if on_method:
            on_method(f"building {spec.name}" + (f" ({_label(setting)})" if len(settings) > 1 else ""))
        return Subject(spec, opts, device, setting)

    if opts.one_at_a_time:
        rows = []
        for pair in pairs:
            rows += measure([build(*pair)], opts, device, on_method)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    else:
        rows = measure([build(*pair) for pair in pairs], opts, device, on_method)
    table = pd.DataFrame(rows)
    keys = list(asdict(settings[0]))
    lora = _lookup(table, keys, table["method"] == "lora", "train_ms")  # LoRA under the row's setting
    table["train_vs_lora"] = table["train_ms"] / lora
    table["search_vs_lora"] = table["search_ms"] / lora
    table["infer_vs_base"] = table["infer_ms"] / _lookup(table, keys, table["method"] == "decoder_only", "infer_ms")
    if len(settings) > 1:  # each method against itself under the first setting
        first = (table[keys] == pd.Series(asdict(settings[0]))).all(axis=1)
        for column in ("train_ms", "infer_ms"):
            table[column.replace("_ms", "_vs_first_setting")] = table[column] / _lookup(table, ["method"], first, column)
    meta = {
        "settings": {**{k: v for k, v in asdict(opts).items() if k != "out"},
                     "image_size": opts.image_size or SAM_SPECS[opts.sam].img_size,
                     "timed_settings": [asdict(setting) for setting in settings],
                     "weights": "random initialisation (speed does not depend on values)", "inputs": "random",
                     "order": "one method at a time" if opts.one_at_a_time else
                     "repeats interleaved across methods (round robin)"},
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "torch_threads": torch.get_num_threads()},
        "environment": environment(),
    }
    return table, meta


def _lookup(table: pd.DataFrame, on: list[str], rows: pd.Series, column: str) -> pd.Series:
    """For every row of `table`, `column` of the row among `rows` that matches it on the columns `on`."""
    return pd.Series(table[on].merge(table.loc[rows, [*on, column]], on=on, how="left")[column].to_numpy(),
                     index=table.index)


def _label(setting: Setting) -> str:
    return f"{setting.precision}, {setting.attention} attention, checkpointing {'on' if setting.checkpointing else 'off'}"


def write_bench(table: pd.DataFrame, meta: dict, out: Path) -> list[Path]:
    s, d = meta["settings"], meta["device"]
    variants = {k: list(dict.fromkeys(v[k] for v in s["timed_settings"]))
                for k in ("precision", "attention", "checkpointing")}
    extras = "".join([
        "_" + "+".join(variants["precision"]),
        "" if variants["attention"] == ["original"] else "_" + "+".join(variants["attention"]),
        "" if variants["checkpointing"] == [False] else
        "_" + "+".join("ckpt" if c else "plain" for c in variants["checkpointing"]),
        "" if s["optimizer_kernel"] == "fused" else f"_{s['optimizer_kernel']}"])
    stem = Path(out) / f"bench_{s['sam']}_{s['image_size']}px_b{s['batch']}{extras}_{d['type']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    note = ("CPU run at a small image size: absolute times are not the paper's; compare ratios only."
            if d["type"] == "cpu" else f"Device: {d['name']}.")
    header = (f"# peftbench bench: SAM {s['sam']}, {s['image_size']} px, batch {s['batch']}, "
              f"{'; '.join(_label(Setting(**v)) for v in s['timed_settings'])}, optimizer kernel {s['optimizer_kernel']}, "
              f"{d['name']}\n\nms per training step (forward, loss, backward, optimizer) and per inference batch; "
              f"median of {s['repeats']} repeats ({s['order']}) of {s['iters']} iterations after "
              f"{s['warmup']} warm-up. Peak memory (CUDA only): the model's weights plus the peak above them. "
              f"search_ms: one iteration of the architecture-search phase (architecture step + weight step); "
              f"arch_ms: its architecture step alone (train_ms is the weight step). "
              f"train_cached_ms: a step on cached image embeddings (frozen encoder, from the 2nd epoch on). "
              f"infer_ms: merged model where the merge is exact, else unmerged. Ratios: to LoRA's training step "
              f"and to the base SAM's (decoder-only) inference under the same setting, and (*_vs_first_setting) to "
              f"the same method under the first setting, all from this run. {note}\n\n")
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".json")]
    write_text_atomic(paths[0], header + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    write_csv_atomic(paths[1], table)
    write_json_atomic(paths[2], {**meta, "rows": json.loads(table.to_json(orient="records"))})
    return paths
