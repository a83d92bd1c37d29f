"""A run's configuration, typed and frozen: what the trainer reads and what a record stores and hashes.

`StepConfig` is what one training step needs (the trainer, `peftbench bench`); `RunConfig` adds everything else that
determines a run's numbers. `RunConfig.as_dict()` is the record's `config` and the input of `records.config_hash`;
a RunConfig is also a read-only mapping of that dict, so the record functions take either.

The grid's options (GridOptions) are declared with `flag()` metadata: each field names its command-line
flag, how the flag's text is converted and its help, and `peftbench run` adds one argument per field (cli.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..store.names import safe_seeds

SamName = Literal["tiny", "tiny_random", "vit_b", "vit_l", "vit_h"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
DeviceType = Literal["cpu", "cuda"]
PrecisionChoice = Literal["auto", "fp32", "fp16", "bf16"]  # auto: see device.resolve_precision
Precision = Literal["fp32", "fp16", "bf16"]
Attention = Literal["original", "sdpa"]
OptimizerKernel = Literal["fused", "foreach", "loop"]  # see device.OPTIMIZER_KERNELS
Inference = Literal["auto", "merged", "unmerged"]  # auto: merge exact merges; merged: also approximate; unmerged: never
EvalResolution = Literal["original", "input"]  # test metrics at the label's original size or the model's input size
Tracker = Literal["tensorboard", "mlflow"]


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What a training step reads: the optimizer's settings, the schedule's length, the precision, the loss."""

    lr: float
    group_optim: dict  # a method's own optimizer per parameter group ([train.group_optim.<group>])
    epochs: int
    precision: Precision
    optimizer_kernel: OptimizerKernel = "fused"
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    w_seg: float = 1.0  # multi-class loss weights
    w_cls: float = 1.0


@dataclass(frozen=True, kw_only=True)
class RunConfig(StepConfig, Mapping):
    """Everything that determines a run's numbers (and, for the record, the speed settings that do not)."""

    method: dict  # MethodSpec.as_dict()
    dataset: dict  # DatasetCard.as_dict()
    seed: int
    sam: SamName
    sam_spec: dict  # sam.spec_dict of the architecture built
    checkpoint: str | None  # None for a random backbone
    checkpoint_sha256: str | None
    device: DeviceType
    augmentation: str
    batch_size: int = 4
    micro_batch_size: int
    num_workers: int
    patience: int = 10  # early stopping: epochs without a better validation score
    inference: Inference
    eval_resolution: EvalResolution
    # Speed settings (records.SPEED_SETTINGS: results equal up to float precision, outside the hash):
    attention: Attention
    checkpointing: bool
    cache_embeddings: bool
    cpu_workers: int | None
    threads_per_run: int | None

    def as_dict(self) -> dict:
        """The record's `config`: one key per field (what `records.config_hash` hashes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> RunConfig:
        """A record's `config` back as a RunConfig. Its keys must be exactly the fields (a default filled in would
        change its hash): a key missing or unknown is a one-line error."""
        names = {f.name for f in fields(cls)}
        problems = [f"{what} {', '.join(sorted(keys))}" for what, keys in
                    (("unknown key(s)", set(data) - names), ("no", names - set(data))) if keys]
        if problems:
            raise UserError(f"a run config with {' and '.join(problems)}")
        return cls(**data)

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


# --- Command-line options: how a flag's text becomes a typed value (each raises a one-line UserError) ---

def positive_int(flag: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise UserError(f"{flag} {value!r}: expected a positive integer")
    return n


def nonnegative_seconds(flag: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not x >= 0:
        raise UserError(f"{flag} {value!r}: expected a number of seconds >= 0")
    return x


def seed_list(flag: str, value: str) -> list[int]:
    """Comma-separated non-negative integers, a repeated one counted once (names.safe_seeds)."""
    try:
        parsed = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{flag} {value!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not parsed:
        raise UserError(f"{flag} is empty; give comma-separated integers, e.g. 0,1,2")
    return safe_seeds(parsed, f"{flag} {value!r}")


def text(flag: str, value: str) -> str:
    return value


def path(flag: str, value: str) -> Path:
    return Path(value)


@dataclass(frozen=True)
class Flag:
    """A GridOptions field's command-line flag: its name, its converter (`parse(flag, text)`) or `action`
    (argparse's store_true / store_false for a switch) and its help; a Literal field's values are its choices."""

    name: str
    help: str
    parse: Callable[[str, str], Any] = text
    action: str | None = None


def flag(name: str, help: str, parse: Callable[[str, str], Any] = text, action: str | None = None) -> dict:
    """A GridOptions field's metadata declaring its flag (see Flag)."""
    return {"flag": Flag(name, help, parse, action)}


@dataclass(frozen=True)
class GridOptions:
    """The grid's options, each declared with its `peftbench run` flag (flag()): the CLI adds one argument
    per field and fills this from them. A new option is a field here and, where the trainer reads it, a RunConfig
    field of the same name (runner.resolve_config copies it)."""

    sam: SamName = field(default="tiny", metadata=flag("--sam", "SAM architecture (default tiny)"))
    checkpoint: str | None = field(
        default=None, metadata=flag("--checkpoint", "official SAM checkpoint file (sam_vit_*.pth)"))
    device: DeviceChoice = field(
        default="auto", metadata=flag("--device", "where runs train (default auto: CUDA where there is one)"))
    epochs: int | None = field(
        default=None, metadata=flag("--epochs", "override every dataset's epochs", positive_int))
    batch_size: int = field(
        default=4, metadata=flag("--batch-size", "images per optimizer step (default 4)", positive_int))
    micro_batch_size: int | None = field(default=None, metadata=flag(
        "--micro-batch-size", "images per forward pass; gradients accumulate to --batch-size (default: 1 on CUDA, "
        "as the paper's harness, else the whole batch)", positive_int))
    precision: PrecisionChoice = field(default="auto", metadata=flag(
        "--precision", "autocast precision (default auto: on CUDA bf16 where native (A100, H100), else fp16 with "
        "loss scaling (V100); fp32 on the CPU)"))
    attention: Attention = field(default="original", metadata=flag(
        "--attention", "SAM attention as released, or through scaled_dot_product_attention (same results)"))
    checkpointing: bool = field(default=False, metadata=flag(
        "--checkpointing", "activation checkpointing of the encoder blocks", action="store_true"))
    cache_embeddings: bool = field(default=True, metadata=flag(
        "--no-embedding-cache", "recompute frozen image embeddings every epoch (decoder-only caches them by "
        "default)", action="store_false"))
    optimizer_kernel: OptimizerKernel = field(default="fused", metadata=flag(
        "--optimizer-kernel", "how Adam(W) updates: one fused kernel (default), one kernel per operation, or a loop "
        "over tensors (PyTorch's CPU default); same maths, results equal within float rounding"))
    inference: Inference = field(default="auto", metadata=flag(
        "--inference", "model tested: auto (default) merges where the merge is exact and tests the exact unmerged "
        "model otherwise; merged also tests approximate merges; unmerged never merges"))
    eval_resolution: EvalResolution = field(default="original", metadata=flag(
        "--eval-resolution", "test metrics at each label's original size (default) or at the model's input size, "
        "labels nearest-resized (the Conv-LoRA harness)"))
    out: Path = field(default=Path("results"), metadata=flag("--out", "output folder (default results)", path))
    replace: bool = field(default=False, metadata=flag(
        "--replace", "retrain runs whose finished record in --out was made with another config; the old records are "
        "moved to <out>/replaced/<time>/, never deleted (without it such a grid stops)", action="store_true"))
    checkpoint_interval_s: float = field(default=30.0, metadata=flag(
        "--checkpoint-interval", "seconds between mid-run checkpoints, written after an epoch (default 30; 0: every "
        "epoch)", nonnegative_seconds))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=flag(
        "--seeds", "comma-separated seeds (default 0,1,2)", seed_list))
    # CPU runs: runs in parallel and torch threads per run (the CLI resolves them with cpu.cpu_policy).
    cpu_workers: int | None = field(default=None, metadata=flag(
        "--cpu-workers", "CPU runs: how many run in parallel (default: one per available core for the tiny SAM, one "
        "for ViT-B/L/H; see peftbench/grid/cpu.py)", positive_int))
    threads_per_run: int | None = field(default=None, metadata=flag(
        "--threads-per-run", "CPU runs: torch threads of each run (default: 1 for the tiny SAM, every available core "
        "for ViT-B/L/H)", positive_int))
    save_adapters: bool = field(default=True, metadata=flag(
        "--no-save-adapters", "do not keep each tested model's trained state (<out>/adapters/...; needed by export, "
        "predict and load_run)", action="store_false"))
    tracker: Tracker | None = field(default=None, metadata=flag(
        "--tracker", "log every run as it trains to TensorBoard or MLflow (extras [tensorboard], [mlflow])"))
    tracker_uri: str | None = field(default=None, metadata=flag(
        "--tracker-uri", "TensorBoard log folder or MLflow tracking URI (default: a local store under --out)"))
