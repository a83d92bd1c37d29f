"""Paired significance tests the tables mark their cells with, and which metrics are better lower. A leaf module
(numpy, scipy and the metric registry only), so every table can use it without importing another table's module."""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

from .metrics import METRICS

LOWER_IS_BETTER = {name for name, m in METRICS.items() if not m.higher_is_better} | {
    "mae", "mber", "train_min_per_epoch", "train_min_per_epoch_search", "peak_memory_mib"}


def paired_t_p(a: dict[int, float], b: dict[int, float], higher: bool) -> float | None:
    """One-sided p of 'a better than b' over the seeds both have (None with fewer than 2 common seeds)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diff = np.array([a[s] - b[s] for s in seeds]) * (1 if higher else -1)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] > 0 else 1.0
    return float(scipy_stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)


def paired_bootstrap_p(a: dict[int, np.ndarray], b: dict[int, np.ndarray], higher: bool, resamples: int = 10_000,
                       seed: int = 0) -> float | None:
    """One-sided p of 'a better than b': resample test images, compare means of per-image values (averaged over
    the seeds both have). None without common seeds or with different test sets."""
    seeds = sorted(set(a) & set(b))
    if not seeds or any(len(a[s]) != len(b[s]) for s in seeds):
        return None
    diff = (np.mean([a[s] for s in seeds], axis=0) - np.mean([b[s] for s in seeds], axis=0)) * (1 if higher else -1)
    diff = diff[np.isfinite(diff)]  # images a metric is undefined on (e.g. no foreground class) carry no evidence
    if not len(diff):
        return None
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float((np.sum(means <= 0) + 1) / (resamples + 1))
