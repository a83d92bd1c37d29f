"""The results folder's layout, defined once: every per-run file is <out>/<kind>/<dataset>/<method>/seed<k><suffix>."""

from __future__ import annotations

from pathlib import Path


def run_file(out: Path, kind: str, dataset: str, method: str, seed: int, suffix: str) -> Path:
    """<out>/<kind>/<dataset>/<method>/seed<seed><suffix>; `out` may be relative (Path() for the part inside it).
    Kinds (docs/reference.md#results-layout): runs (records), adapters (kept trained states), locks (claims of runs
    in progress), checkpoints (mid-run states), logs (a run's output), failed (a failed run's status and log)."""
    return Path(out) / kind / dataset / method / f"seed{seed}{suffix}"
