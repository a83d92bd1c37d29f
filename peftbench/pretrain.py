"""Pretrain the tiny SAM on the generic corpus (`data/corpus.py`), so adapters downstream adapt a foundation model.

The whole SAM trains end to end (image encoder, prompt encoder's "no mask" embedding, mask decoder) from its fixed
random initialisation (`load_sam("tiny_random")`) for prompt-free foreground segmentation, through the same
`SamSegmenter(sam, 1)` path the adapters use downstream. Loss BCE + Dice (the paper's binary loss), AdamW with a
linear warm-up and cosine decay, gradient clipping 1.0, random flips and 90° rotations. The training images are a
pool drawn once from the corpus; validation uses a disjoint corpus seed and scores the mean per-image foreground
IoU at p > 0.5. With a fixed thread count the run is deterministic from its seed.

The saved file is a plain `Sam` state dict in the released layout: the trained prompt-free mask token and its
hypernetwork MLP go to slot 0, which is the slot `SamSegmenter` copies from, so downstream runs start from exactly
the pretrained segmenter.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from segment_anything.modeling import Sam

from .backbone.sam import load_sam
from .backbone.segmenter import SamSegmenter, normalise
from .data.corpus import iter_corpus
from .store.atomic import atomic_output, write_text_atomic
from .store.hashing import file_sha256
from .training.losses import bce_dice

VAL_SEED_OFFSET = 1_000_003  # validation corpus seed = training seed + this: disjoint streams


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    steps: int = 8000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    train_images: int = 32000  # pool drawn once; each image is seen ~16 times under 8 flip/rotation variants
    val_images: int = 512
    evaluations: int = 8  # validation scores during training (the last one at the end)
    threads: int = 1
    device: str = "cpu"


def corpus_tensors(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 images and (N, S, S) bool foregrounds: the first `count` images of corpus `seed`."""
    images, masks = [], []
    for item, _ in zip(iter_corpus(size, seed), range(count)):
        images.append(item.image)
        masks.append(item.foreground)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(masks))


@torch.no_grad()
def foreground_iou(model: SamSegmenter, images: torch.Tensor, masks: torch.Tensor, batch: int = 128) -> float:
    """Mean per-image IoU (percent) of p > 0.5 against the foreground; images (N, 3, S, S) uint8, masks (N, S, S).
    An image where both prediction and mask are empty counts as 1."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch):
        pred = model.probabilities(normalise(images[start:start + batch].to(device))).cpu() > 0.5
        gt = masks[start:start + batch]
        inter = (pred & gt).flatten(1).sum(1)
        union = (pred | gt).flatten(1).sum(1)
        scores.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter, dtype=torch.float)))
    model.train(was_training)
    return 100.0 * torch.cat(scores).float().mean().item()


def _augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One random flip/rotation (of the 8) for the whole batch: cheap, and the batch order is random anyway."""
    k, flip = torch.randint(4, (1,), generator=generator).item(), torch.randint(2, (1,), generator=generator).item()
    images, masks = images.rot90(k, (-2, -1)), masks.rot90(k, (-2, -1))
    return (images.flip(-1), masks.flip(-1)) if flip else (images, masks)


def _schedule(config: PretrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _to_sam_layout(segmenter: SamSegmenter, sam: Sam, tokens: torch.nn.Embedding, mlps: torch.nn.ModuleList) -> Sam:
    """Put the segmenter's trained single mask token back into slot 0 of SAM's own token table and restore the
    released decoder layout (the hypernetwork MLP 0 was trained in place)."""
    decoder = sam.mask_decoder
    with torch.no_grad():
        tokens.weight[0] = segmenter.mask_decoder.mask_tokens.weight[0]
    decoder.mask_tokens, decoder.output_hypernetworks_mlps = tokens, mlps
    decoder.num_mask_tokens = len(mlps)
    return sam


def pretrain(config: PretrainConfig, console: Console | None = None) -> tuple[dict, dict]:
    """Train the tiny SAM. Returns (Sam state dict, summary with validation IoUs, timing and the config)."""
    console = console or Console()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _pretrain(config, console)
    finally:
        torch.set_num_threads(threads_before)


def _pretrain(config: PretrainConfig, console: Console) -> tuple[dict, dict]:
    start = time.perf_counter()
    device = torch.device(config.device)
    sam = load_sam("tiny_random")
    size = sam.image_encoder.img_size
    tokens, mlps = sam.mask_decoder.mask_tokens, sam.mask_decoder.output_hypernetworks_mlps
    model = SamSegmenter(sam, 1).to(device)
    unused = set(model.mask_decoder.iou_prediction_head.parameters())  # prompt-free training never reads it
    params = [p for p in model.parameters() if p not in unused]
    for p in params:
        p.requires_grad_(True)

    console.print(f"pretrain-tiny: drawing {config.train_images} training and {config.val_images} validation "
                  f"images ({size} px)")
    val_images, val_masks = corpus_tensors(config.val_images, size, config.seed + VAL_SEED_OFFSET)
    random_iou = foreground_iou(model, val_images, val_masks)
    train_images, train_masks = corpus_tensors(config.train_images, size, config.seed)
    data_s = time.perf_counter() - start
    console.print(f"corpus ready in {data_s:.0f} s; validation IoU of the random init: {random_iou:.1f}")

    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
                                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    evaluate_at = {round(config.steps * (i + 1) / config.evaluations) for i in range(config.evaluations)}
    curve, order, cursor = [], torch.randperm(len(train_images), generator=generator), 0
    model.train()
    columns = [TextColumn("pretrain-tiny"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("steps", total=config.steps, loss="-")
        for step in range(1, config.steps + 1):
            if cursor + config.batch_size > len(order):  # new epoch over the pool
                order, cursor = torch.randperm(len(train_images), generator=generator), 0
            batch = order[cursor:cursor + config.batch_size]
            cursor += config.batch_size
            images, masks = _augment(train_images[batch], train_masks[batch], generator)
            logits = model(normalise(images.to(device)))["mask_logits"][:, 0]
            loss = bce_dice(logits, masks.to(device).float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.update(task, advance=1, loss=f"{loss.item():.3f}")
            if step in evaluate_at:
                iou = foreground_iou(model, val_images, val_masks)
                curve.append({"step": step, "val_iou": iou, "train_loss": loss.item(),
                              "elapsed_s": time.perf_counter() - start})
                progress.console.print(f"step {step}: validation IoU {iou:.1f} (random init {random_iou:.1f})")

    state = {k: v.detach().cpu().clone() for k, v in _to_sam_layout(model, sam, tokens, mlps).state_dict().items()}
    summary = {
        "config": asdict(config),
        "val_iou": curve[-1]["val_iou"], "val_iou_random_init": random_iou,
        "val_metric": "mean per-image foreground IoU (%) at p > 0.5, prompt-free SamSegmenter(sam, 1)",
        "val_corpus_seed": config.seed + VAL_SEED_OFFSET, "train_corpus_seed": config.seed,
        "curve": curve, "corpus_s": data_s, "wall_s": time.perf_counter() - start,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch threads {config.threads}",
        "torch": torch.__version__, "numpy": np.__version__, "sam": "tiny",
    }
    return state, summary


def save_pretrained(state: dict, summary: dict, out: Path) -> Path:
    """Write the state dict to `out` and its summary (with the file's sha256) to `out` with suffix .json."""
    with atomic_output(out, "wb") as f:
        torch.save(state, f)
    summary = {**summary, "weights_file": out.name, "sha256": file_sha256(out)}
    meta = out.with_suffix(".json")
    write_text_atomic(meta, json.dumps(summary, indent=2) + "\n")
    return meta
