"""How CPU runs share a machine: the cores this process may use, torch threads per run, runs in parallel.

A run whose torch threads outnumber the cores it really gets makes its threads wait on each other at every
parallel region while another process holds a core; with OpenMP's default spin-waiting they burn that core too.
Measured on the 2-core machine: one competing CPU-bound process made a 2-thread tiny-SAM step 3.7x slower than a
1-thread one. So (benchmarks/cpu_policy.py measures the effect):
  - the cores are those the scheduler gives this process (affinity mask, cgroup CPU quota), not os.cpu_count();
  - the tiny SAM is overhead-bound (small matrices, many small kernels): single-threaded runs in parallel, one per
    core, use the machine better than one run on every core and leave a busy core to its owner;
  - SAM ViT-B/L/H: one run at a time using every core (large matmuls scale across threads; parallel runs would
    multiply the memory of a model that may already fill it);
  - OpenMP threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE, set in peftbench/__init__.py
    before torch loads; a value already in the environment wins).
`--cpu-workers` and `--threads-per-run` override; both are recorded in every run's config as speed settings.
"""

from __future__ import annotations

import os
from pathlib import Path

NARROW_MODELS = ("tiny", "tiny_random")  # overhead-bound on a CPU: one thread per run, runs in parallel
CGROUP = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota (containers, Slurm)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    """Whole cores of this process's cgroup CPU quota (v2 cpu.max or v1 cfs quota/period); None without one."""
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int((CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, quota // period) if quota > 0 else None


def cpu_policy(sam: str, cores: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(runs in parallel, torch threads per run) for CPU runs of SAM `sam` on `cores` cores; either may be given."""
    if workers is None and threads is None:
        return (cores, 1) if sam in NARROW_MODELS else (1, cores)
    if workers is None:
        workers = max(1, cores // threads)
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads
