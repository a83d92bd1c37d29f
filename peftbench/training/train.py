"""Train and test one (method, dataset, seed) run, as the Conv-LoRA harness does.

AdamW (betas 0.9/0.999, eps 1e-6, weight decay 1e-4 except on biases, norms and other 1-D parameters), batch 4
(accumulated from micro-batches, 1 image each on CUDA as in that harness), linear decay of the learning rate to 0
over all steps, gradient-norm clipping at 1.0, random horizontal flip, fp32 on the CPU and, on CUDA, bf16 autocast
where the GPU computes in bf16 natively (A100, H100), else fp16 with loss scaling (V100, the paper's; or --precision
fp32/fp16/bf16: device.resolve_precision). After every epoch the validation split is scored;
the weights with the best validation score are the ones tested (the test split never selects anything), among the
epochs the method allows (NAS-LoRA: those after its search started, so the tested model is a searched one).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..backbone.sam import load_sam, official_param_count, random_sam
from ..backbone.segmenter import SamSegmenter, at_size
from ..data import DatasetCard, build_splits
from ..data.files import foreground
from ..methods import Method, MethodSpec
from ..methods.base import trainable_state
from ..scoring.metrics import BinaryMeter, MulticlassMeter, provenance, spec
from ..store.records import config_hash
from ..store.resume import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig, StepConfig
from .device import OPTIMIZER_KERNELS, autocast, resolve_device
from .losses import balanced_bce, bce_dice, multiclass_loss, structure_loss
from .speed import checkpoint_blocks, embedding_cache, use_sdpa

StepCallback = Callable[[int, int, int, float, list], None]  # (epoch, step, steps_per_epoch, loss, groups stepped)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, card: DatasetCard, method_spec: MethodSpec):
    """SAM -> segmenter -> method attached. Returns (model, method)."""
    pretrained = method_spec.backbone == "pretrained"
    sam = load_sam(config.sam, config.checkpoint) if pretrained else random_sam(config.sam)
    model = SamSegmenter(sam, card.num_classes)
    method = method_spec.build()
    method.attach(model)
    return model, method


def count_params(model: torch.nn.Module, sam_name: str) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    official = official_param_count(sam_name)
    return {"trainable": trainable, "total": total, "sam_total": official, "ratio_percent": 100.0 * trainable / official}


def _optimizer(params: list[torch.nn.Parameter], own: dict, config: StepConfig,
               lr_scale: float) -> torch.optim.Optimizer:
    """The harness's AdamW (no weight decay on 1-D parameters), or what a method's TOML gives its group
    (`[train.group_optim.<group>]`: optimizer, lr, weight_decay, betas); the learning rate times `lr_scale` (the
    method's schedule, e.g. NAS-LoRA's search budget, and its `lr_multipliers`, e.g. LoRA+'s B at 16x)."""
    wd = own.get("weight_decay", config.weight_decay)
    kwargs = {"lr": own.get("lr", config.lr) * lr_scale, "betas": tuple(own.get("betas", (0.9, 0.999))),
              "eps": 1e-6, **OPTIMIZER_KERNELS[config.optimizer_kernel]}
    if own.get("optimizer", "adamw") == "adam":  # L2 weight decay on every parameter, as PC-DARTS' architect
        return torch.optim.Adam(params, weight_decay=wd, **kwargs)
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
                              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], **kwargs)


def _constant(step: int) -> float:
    return 1.0


class Optimization:
    """One optimizer and learning-rate schedule per parameter group, and the fp16 loss scaler.

    A step updates the groups given to it; `set_trainable` first switches gradients off for the others, so a
    step of one group (NAS-LoRA's architecture step) neither computes nor applies gradients of the rest.
    """

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], config: StepConfig, total_steps: int,
                 device: torch.device, lr_scale: dict[str, float] | None = None) -> None:
        self.groups, self.grad_clip = groups, config.grad_clip
        own, lr_scale = config.group_optim, lr_scale or {}
        unknown = set(lr_scale) - set(groups)
        if unknown:
            raise ValueError(f"learning-rate factors for groups {sorted(unknown)} the method does not have "
                             f"({', '.join(groups)})")
        self.optimizers = {name: _optimizer(params, own.get(name, {}), config, lr_scale.get(name, 1.0))
                           for name, params in groups.items()}

        def linear(step: int) -> float:
            return max(0.0, 1 - step / max(1, total_steps))

        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, _constant if own.get(name, {}).get("schedule") == "constant" else linear)
            for name, opt in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    def state_dict(self) -> dict:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()}, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])

    def set_trainable(self, active: list[str]) -> None:
        for name, params in self.groups.items():
            for p in params:
                p.requires_grad_(name in active)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, active: list[str], before_update: Callable[[], None] | None = None) -> None:
        """Unscale and clip the gradients of the `active` groups, call `before_update` (gradients in place), update
        those groups, clear every gradient."""
        for name in active:
            self.scaler.unscale_(self.optimizers[name])
        torch.nn.utils.clip_grad_norm_([p for n in active for p in self.groups[n]], self.grad_clip)
        if before_update is not None:
            before_update()
        for name in active:
            self.scaler.step(self.optimizers[name])
        scale = self.scaler.get_scale()
        self.scaler.update()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if self.scaler.get_scale() >= scale:  # fp16 overflow skipped this step: do not advance the schedule either
            for name in active:
                self.schedulers[name].step()


def optimization_for(method: Method, groups: dict[str, list[torch.nn.Parameter]], config: StepConfig,
                     steps_per_epoch: int, device: torch.device) -> tuple[Optimization, dict]:
    """The method's optimizers for a run of config.epochs: its schedule resolved (e.g. NAS-LoRA's architecture
    start and budget) and each group's learning rate scaled by the schedule and by the method's `lr_multipliers`.
    Returns (optimization, the schedule as the record stores it, with the learning rate each group starts at)."""
    epochs = config.epochs
    schedule = method.schedule(epochs, steps_per_epoch)
    factors = dict(schedule.get("lr_scale", {}))
    for name, multiple in method.lr_multipliers().items():
        factors[name] = factors.get(name, 1.0) * multiple
    optimization = Optimization(groups, config, steps_per_epoch * epochs, device, factors)
    schedule["lr"] = {name: opt.param_groups[0]["lr"] for name, opt in optimization.optimizers.items()}
    return optimization, schedule


def training_loss(model: SamSegmenter, method: Method, x: torch.Tensor, y: torch.Tensor, card: DatasetCard,
                  config: StepConfig, device: torch.device) -> torch.Tensor:
    """Task loss plus the method's extra loss, under the run's precision."""
    with autocast(device, config.precision):
        loss = task_loss(model(x), y, card, config)
        extra = method.extra_loss(model)
    return loss if extra is None else loss + extra


@dataclass
class StepPass:
    """One optimizer step of a step plan: the groups it updated, its micro-batches' losses (unless unread), the
    micro-batches and images it saw and its duration."""

    active: list[str]
    losses: list[float]
    micro_batches: int
    images: int
    seconds: float
    lrs: dict[str, float]  # the learning rate each active group stepped with


def train_step(model: SamSegmenter, method: Method, optimization: Optimization, batch: list[tuple],
               plan: list[list[str]], card: DatasetCard, config: StepConfig, device: torch.device,
               step: int = 0, total_steps: int = 1, embedding_context: Callable | None = None,
               on_pass: Callable[[StepPass], None] | None = None, read_losses: bool = True) -> list[StepPass]:
    """The training step, the same for the trainer, `peftbench bench` and the loader benchmark.

    `batch`: the micro-batches (x, y, keys) of one optimizer step, gradients accumulated over them; `plan`: the
    optimizer steps taken on it, each the groups it updates (every step of a plan sees the same images); `step`:
    the batch's index over the run, of `total_steps` (for `Method.after_backward`); `embedding_context(keys)`: the
    embedding-cache context of a micro-batch (speed.CachedEncoder), or None; `on_pass(p)`: called after each
    optimizer step. The losses are read once per optimizer step, before it: a NaN or infinite one raises
    FloatingPointError and nothing is updated (training on would produce garbage). `read_losses=False` leaves them
    unread (`peftbench bench` and the memory estimate on fake tensors, which have no values)."""
    model.train()
    passes = []
    for active in plan:
        optimization.set_trainable(active)
        start, losses, images = time.perf_counter(), [], 0
        for x, y, keys in batch:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with embedding_context(keys) if embedding_context else nullcontext():
                loss = training_loss(model, method, x, y, card, config, device)
            optimization.backward(loss / len(batch))
            losses.append(loss.detach().float())
            images += len(x)
        losses = torch.stack(losses).tolist() if read_losses else []
        bad = [value for value in losses if not np.isfinite(value)]
        if bad:
            raise FloatingPointError(f"training loss is {bad[0]}")
        lrs = {name: optimization.optimizers[name].param_groups[0]["lr"] for name in active}
        optimization.step(active, lambda: method.after_backward(model, step, total_steps))
        if device.type == "cuda":
            torch.cuda.synchronize()
        passes.append(StepPass(active, losses, len(batch), images, time.perf_counter() - start, lrs))
        if on_pass:
            on_pass(passes[-1])
    optimization.set_trainable(list(optimization.groups))
    return passes


BINARY_LOSSES = {"bce_dice": bce_dice, "structure_loss": structure_loss, "balanced_bce": balanced_bce}


def task_loss(out: dict, label: torch.Tensor, card: DatasetCard, config: StepConfig) -> torch.Tensor:
    if card.kind == "binary":
        return BINARY_LOSSES[card.loss](out["mask_logits"][:, 0].float(), label)
    return multiclass_loss({k: v.float() for k, v in out.items()}, label, config.w_seg, config.w_cls)


RESOLUTIONS = {"original": "the label's original resolution (prediction bilinear-resized to it)",
               "input": "the {size}x{size} model input (label nearest-resized)"}


def meter_for(card: DatasetCard, names: list[str]) -> BinaryMeter | MulticlassMeter:
    """A meter computing (at least) the metrics `names` of the card's kind and protocol."""
    if card.kind == "binary":
        return BinaryMeter(card.f_beta2, sod=tuple(names))
    return MulticlassMeter(card.num_classes, card.multiclass_protocol, card.class_names)


def _score(meter: BinaryMeter | MulticlassMeter, probs: torch.Tensor, label: np.ndarray) -> None:
    """probs: (S, S) foreground probability or (K, S, S) class scores at the model's resolution; label: (H, W)
    0/1, 0/255 or class ids. The prediction is resized (bilinear) to the label's size, as the polyp, COD and ISIC
    toolboxes do (a no-op when the label is the model-sized one); `peftbench predict` resizes with the same at_size."""
    resized = at_size(probs, label.shape)
    if isinstance(meter, BinaryMeter):
        meter.update(resized[0].clamp(0, 1).numpy(), foreground(label))
    else:
        meter.update(resized.argmax(0).numpy(), label.astype(np.int64))


@torch.no_grad()
def evaluate(model: SamSegmenter, loader: DataLoader, card: DatasetCard, device: torch.device,
             precision: str = "fp32", embedding_context: Callable = lambda keys: nullcontext(),
             resolution: str = "original", names: list[str] | None = None) -> tuple[dict, dict, float]:
    """Returns (every metric of the card, per-image rows, images per second). Loaders yield (x, y, keys) with
    key = 2 * index + flipped (see SegmentationDataset); `embedding_context(keys)`: the embedding-cache context for a batch
    (see speed.CachedEncoder). Only the forward pass is timed. Scoring happens at each label's original size, or
    with `resolution="input"` against the nearest-resized label the model trains on (the Conv-LoRA harness)."""
    model.eval()
    names = names or card.all_metrics
    meter = meter_for(card, names)
    images, elapsed = 0, 0.0
    for x, y, keys in loader:
        x = x.to(device, non_blocking=True)
        start = time.perf_counter()
        with autocast(device, precision), embedding_context(keys):
            probs = model.probabilities(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        images += len(x)
        for p, label, key in zip(probs.float().cpu(), y.numpy(), keys.tolist()):
            _score(meter, p, loader.dataset.original_label(key // 2) if resolution == "original" else label)
    results = meter.results()
    wanted = names + [k for k in results if k.startswith("iou_")]
    return {m: results[m] for m in dict.fromkeys(wanted)}, meter.rows, images / max(elapsed, 1e-9)


@torch.no_grad()
def _outputs(model: SamSegmenter, x: torch.Tensor, device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    model.eval()
    with autocast(device, precision):
        out = {**model(x), "probabilities": model.probabilities(x)}
    return {k: v.float() for k, v in out.items()}


def merge_gap(model: SamSegmenter, method: Method, probe: torch.Tensor, device: torch.device,
              precision: str = "fp32") -> dict:
    """Merge `method` into `model` in place; returns the max abs change of every output on the `probe` images."""
    before = _outputs(model, probe, device, precision)
    method.merge(model)
    after = _outputs(model, probe, device, precision)
    return {f"max_abs_diff_{k}": (after[k] - before[k]).abs().max().item() for k in before}


def _peak_memory_mib(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "cuda_max_allocated"}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mib": peak_kib / 1024, "memory_kind": "process_peak_rss"}


def training_speed(history: list[dict], counts: dict) -> dict:
    """Training throughput as the paper's Table 5 reports it: iter/s of weight passes (forward + backward of one
    micro-batch, with its share of the optimizer step) and min/epoch of weight-only epochs; a search (NAS-LoRA's
    architecture passes) gets its own iter/s and the min/epoch of the epochs that search. A figure a run has no
    passes or epochs for is absent."""
    def per_epoch(search: bool) -> dict:
        times = [h["train_s"] for h in history if (h.get("arch_steps", 0) > 0) == search]
        return {f"train_min_per_epoch{'_search' if search else ''}": float(np.mean(times)) / 60} if times else {}

    speed = {"train_images_per_s": counts["train_images"] / max(sum(h["train_s"] for h in history), 1e-9),
             **per_epoch(False), **per_epoch(True)}
    if counts["weight_passes"]:
        speed["train_iter_per_s"] = counts["weight_passes"] / max(counts["weight_s"], 1e-9)
    if counts["arch_passes"]:
        speed["arch_iter_per_s"] = counts["arch_passes"] / max(counts["arch_s"], 1e-9)
    return speed


@dataclass
class TrainState:
    """Where a run stands after an epoch: all a killed run needs (with the weights, optimizers and random states
    saved beside it, see `save`) to continue after its last finished epoch.

    `counts`: weight passes and architecture passes (NAS-LoRA's search) counted and timed apart, as the paper's
    Table 5 reports them, the training images seen and the optimizer steps taken per parameter group."""

    FIELDS = ("history", "best_score", "best_state", "best_epoch", "stale", "counts")  # what a checkpoint keeps

    groups: list[str]
    history: list[dict] = field(default_factory=list)
    best_score: float | None = None
    best_state: dict | None = None
    best_epoch: int = -1
    stale: int = 0  # epochs since the selection metric last improved (early stopping after `patience`)
    counts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = self.counts or {"weight_passes": 0, "weight_s": 0.0, "arch_passes": 0, "arch_s": 0.0,
                                      "train_images": 0, "steps": dict.fromkeys(self.groups, 0)}

    def count(self, p: StepPass) -> None:
        kind = "weight" if "weights" in p.active else "arch"  # a simultaneous step is one weight pass
        self.counts[f"{kind}_s"] += p.seconds
        self.counts[f"{kind}_passes"] += p.micro_batches
        self.counts["train_images"] += p.images if "weights" in p.active else 0
        for name in p.active:
            self.counts["steps"][name] += 1

    def select(self, epoch: int, score: float, higher_is_better: bool, model: torch.nn.Module) -> None:
        """Keep the weights after `epoch` if they score best so far on validation (call only for selectable
        epochs)."""
        if self.best_score is None or (score > self.best_score if higher_is_better else score < self.best_score):
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = trainable_state(model)
        else:
            self.stale += 1

    def save(self, path: Path, config: RunConfig, model: torch.nn.Module, optimization: Optimization,
             loader_gen: torch.Generator, lock: Path | None) -> None:
        save_checkpoint(path, {"config_hash": config_hash(config), "model": trainable_state(model),
                               "optimization": optimization.state_dict(), "rng": rng_state(loader_gen),
                               **{name: getattr(self, name) for name in self.FIELDS}}, lock)

    def resume(self, path: Path, config: RunConfig, model: torch.nn.Module, optimization: Optimization,
               loader_gen: torch.Generator) -> None:
        """Continue from the checkpoint at `path` if it belongs to this config (else start over)."""
        saved = load_checkpoint(path, config_hash(config))
        if saved:
            model.load_state_dict(saved["model"], strict=False)
            optimization.load_state_dict(saved["optimization"])
            set_rng_state(saved["rng"], loader_gen)
            for name in self.FIELDS:
                setattr(self, name, saved[name])


def _loaders(card: DatasetCard, config: RunConfig, img_size: int, device: torch.device) -> tuple:
    """(the splits, the training loader of micro-batches, {split: evaluation loader}, the data-order generator)."""
    splits = build_splits(card, img_size, keys=True)
    loader_gen = torch.Generator().manual_seed(config.seed)
    workers = config.num_workers
    # Persistent workers keep their decoded-image caches across epochs.
    loader_args = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    train_loader = splits["train"].loader(config.micro_batch_size, shuffle=True, generator=loader_gen,
                                          **loader_args)
    evals = {split: data.loader(config.batch_size, **loader_args) for split, data in splits.items()
             if split != "train"}
    return splits, train_loader, evals, loader_gen


def _batches(loader: DataLoader, accumulate: int):
    """Micro-batches grouped by optimizer step (the last group may be shorter)."""
    chunk = []
    for item in loader:
        chunk.append(item)
        if len(chunk) == accumulate:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TrainLog(Protocol):
    """Where a run reports as it trains (an experiment tracker's run, trackers.RunLog)."""

    def config(self, config: dict, params: dict) -> None: ...
    def step(self, step: int, values: dict[str, float]) -> None: ...
    def epoch(self, epoch: int, values: dict[str, float]) -> None: ...


class NoLog:
    """The TrainLog of a run without a tracker."""

    def config(self, config: dict, params: dict) -> None:
        pass

    def step(self, step: int, values: dict[str, float]) -> None:
        pass

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        pass


def _log_pass(log: TrainLog, step: int, p: StepPass) -> None:
    """One optimizer step's loss (architecture steps apart) and learning rates."""
    loss = float(np.mean(p.losses))
    log.step(step, {("train/loss" if "weights" in p.active else "train/arch_loss"): loss,
                    **{f"lr/{name}": lr for name, lr in p.lrs.items()}})


def train_run(config: RunConfig, card: DatasetCard, method_spec: MethodSpec, on_step: StepCallback | None = None,
              checkpoint: Path | None = None, lock: Path | None = None, checkpoint_interval_s: float = 0.0,
              log: TrainLog | None = None) -> dict:
    """Train, select on validation, test. Returns the record fields metrics, per_image, params, timing, history,
    and `trained_state`: the trainable parameters and buffers of the tested weights, before any merge.

    With `checkpoint`, the state after an epoch is saved there (at most every `checkpoint_interval_s` seconds, so
    sub-second CPU epochs do not spend their time writing) and a run finding one continues from it. `log`: an
    experiment tracker's run, told the config, every step's loss and learning rates and every epoch's validation.
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model, method = build_model(config, card, method_spec)
    model.to(device)
    params = count_params(model, config.sam)
    log = log or NoLog()
    log.config(config.as_dict(), params)
    if config.attention == "sdpa":
        use_sdpa(model)
    if config.checkpointing:
        checkpoint_blocks(model)
    cache_for, release_cache = embedding_cache(model, config.cache_embeddings)  # decoder-only: embed each input once
    splits, train_loader, eval_loaders, loader_gen = _loaders(card, config, model.img_size, device)

    # Gradient accumulation: micro-batches of `micro_batch_size` images, one optimizer step per `batch_size` images
    # (the Conv-LoRA harness trains with per-GPU batch 1 x 4 accumulation; its Table 5 "iter" is one micro-batch).
    accumulate = config.batch_size // config.micro_batch_size
    steps_per_epoch = -(-len(train_loader) // accumulate)
    groups = method.parameter_groups(model)
    optimization, schedule = optimization_for(method, groups, config, steps_per_epoch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    select = spec(card.select_metric, card.kind, card.multiclass_protocol)
    state = TrainState(list(groups))
    if checkpoint:
        state.resume(checkpoint, config, model, optimization, loader_gen)
    last_save = time.monotonic()
    for epoch in range(len(state.history), config.epochs):
        if state.stale >= config.patience:
            break
        epoch_start, passes = time.perf_counter(), []
        for step, batch in enumerate(_batches(train_loader, accumulate)):
            def done(p: StepPass, epoch: int = epoch, step: int = step, passes: list = passes) -> None:
                state.count(p)
                passes.append(p)
                if on_step:
                    on_step(epoch, step, steps_per_epoch, p.losses[-1], p.active)
                _log_pass(log, epoch * steps_per_epoch + step, p)

            try:
                train_step(model, method, optimization, batch, method.step_plan(epoch, step) or [list(groups)], card,
                           config, device, epoch * steps_per_epoch + step, steps_per_epoch * config.epochs,
                           cache_for("train"), done)
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} at epoch {epoch + 1}, step {step + 1} ({method_spec.name} on "
                                         f"{card.name}, seed {config.seed})") from None
        val_metrics, _, _ = evaluate(model, eval_loaders["val"], card, device, config.precision, cache_for("val"),
                                     config.eval_resolution, names=[card.select_metric])
        losses = [loss for p in passes for loss in p.losses]
        state.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val": val_metrics,
                              "train_s": time.perf_counter() - epoch_start,
                              "train_passes": sum(p.micro_batches for p in passes),
                              "arch_steps": sum("arch" in p.active for p in passes)})
        log.epoch(epoch, {f"val/{card.select_metric}": val_metrics[card.select_metric],
                          "train/epoch_loss": state.history[-1]["train_loss"]})
        if method.selectable(epoch):  # not NAS-LoRA before its search: that is not yet the method it is named after
            state.select(epoch, val_metrics[card.select_metric], select.higher_is_better, model)
        if checkpoint and time.monotonic() - last_save >= checkpoint_interval_s:
            last_save = time.monotonic()
            state.save(checkpoint, config, model, optimization, loader_gen, lock)
    model.load_state_dict(state.best_state, strict=False)
    statistics = method.statistics(model, state.counts["steps"])  # of the selected (tested) weights, before any merge
    release_cache()  # the test measures the real model's inference: no cached embeddings
    tested = test_run(model, method, splits, eval_loaders, card, config, device)
    inference = tested.pop("timing")
    return {
        **tested, "params": params,
        "timing": {**training_speed(state.history, state.counts), **inference, **_peak_memory_mib(device)},
        "excluded_pairs": len(card.excluded),  # bad pairs left out with --skip-bad (listed in config.dataset)
        "selection": {"metric": card.select_metric, "split": "val", "best_epoch": state.best_epoch,
                      "best_score": state.best_score,
                      "first_selectable_epoch": next(e for e in range(config.epochs) if method.selectable(e))},
        "history": state.history, "milestones": method.milestones(), "statistics": statistics, "schedule": schedule,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "trained_state": state.best_state,
    }


def test_run(model: SamSegmenter, method: Method, splits: dict, eval_loaders: dict, card: DatasetCard,
             config: RunConfig, device: torch.device) -> dict:
    """Test the selected weights on every test set: merged where the merge is exact (unless --inference unmerged);
    an approximate merge is tested both ways and the gap recorded. Returns the record fields metrics, per_image,
    merge, metric_definitions and timing (inference)."""
    def test() -> tuple[dict, dict, float]:
        metrics, per_image, ips = {}, {}, []
        for split in sorted(s for s in splits if s.startswith("test")):
            name = split.partition(":")[2] or "test"
            metrics[name], per_image[name], split_ips = evaluate(
                model, eval_loaders[split], card, device, config.precision, resolution=config.eval_resolution)
            ips.append(split_ips)
        return metrics, per_image, float(np.mean(ips))

    probe = next(iter(eval_loaders[min(s for s in splits if s.startswith("test"))]))[0].to(device)
    merge = {"kind": method.merge_kind, "inference": config.inference}
    if method.merge_kind == "exact" and config.inference != "unmerged":
        merge.update(merge_gap(model, method, probe, device, config.precision))
        metrics, per_image, infer_ips = test()
        inference_model = "merged"
    else:
        metrics, per_image, infer_ips = test()
        inference_model = "unmerged"
        if method.merge_kind == "approximate" and config.inference != "unmerged":
            # The merge is not exact: evaluate both models and keep the gap in the record.
            merge.update(merge_gap(model, method, probe, device, config.precision))
            merged_metrics, merged_per_image, merged_ips = test()
            merge.update(metrics=merged_metrics, infer_img_per_s=merged_ips, metric_delta={
                t: {m: merged_metrics[t][m] - v for m, v in values.items()} for t, values in metrics.items()})
            if config.inference == "merged":
                metrics, per_image, infer_ips, inference_model = merged_metrics, merged_per_image, merged_ips, "merged"
    merge["evaluated_model"] = inference_model
    return {
        "metrics": metrics, "per_image": per_image, "merge": merge,
        "metric_definitions": provenance(list(metrics[next(iter(metrics))]), card.kind, card.multiclass_protocol,
                                         RESOLUTIONS[config.eval_resolution].format(size=model.img_size),
                                         card.f_beta2),
        "timing": {"infer_img_per_s": infer_ips, "inference_model": inference_model},
    }
