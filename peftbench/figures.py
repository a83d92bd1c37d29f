"""Figures from run records: validation curves over seeds (the paper's Fig. C1) and the learned operation
distribution of searchable methods (Fig. C2). PNG and PDF under <out>/figures, the plotted numbers as CSV."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import EngFormatter

from .records import atomic_output, write_csv_atomic


def curves_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, method, seed, epoch): the validation value of the dataset's selection metric."""
    rows = [{"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "epoch": h["epoch"] + 1,
             "metric": r["selection"]["metric"], "value": h["val"][r["selection"]["metric"]]}
            for r in records for h in r["history"]]
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "epoch", "metric", "value"])


def operations_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, method, seed, operation): the mean softmax(alpha) weight over all cells."""
    rows = [{"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "operation": op, "proportion": p}
            for r in records if r.get("statistics") and "distribution" in r["statistics"]
            for op, p in zip(r["statistics"]["operations"], r["statistics"]["distribution"])]
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "operation", "proportion"])


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        with atomic_output(path, "wb") as f:
            fig.savefig(f, format=path.suffix[1:], bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def convergence_figure(records: list[dict], dataset: str, stem: Path) -> list[Path]:
    """Validation metric per epoch, mean ± std over seeds per method; schedule milestones as dashed lines."""
    df = curves_frame([r for r in records if r["dataset"] == dataset])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    marks: dict[tuple[str, int], list[str]] = {}
    for method, group in df.groupby("method", sort=False):
        stats = group.groupby("epoch")["value"].agg(["mean", "std"]).fillna(0.0)
        line, = ax.plot(stats.index, stats["mean"], label=method)
        # every plotted metric is a percentage: the band stops at its bounds (no IoU below 0)
        ax.fill_between(stats.index, (stats["mean"] - stats["std"]).clip(0, 100),
                        (stats["mean"] + stats["std"]).clip(0, 100), color=line.get_color(), alpha=0.2)
        milestones = next(r.get("milestones", {}) for r in records if r["method"] == method)
        for name, epoch in milestones.items():
            marks.setdefault((name, epoch), []).append(method)
    for style, ((name, epoch), methods) in zip(["--", ":", "-."] * 4, marks.items()):
        # 0-based epoch e is plotted as e + 1: the line sits just before the first epoch it concerns
        ax.axvline(epoch + 0.5, color="black", linestyle=style, linewidth=1, label=f"{name} ({', '.join(methods)})")
    seeds = [int(s) for s in sorted(df["seed"].unique())]
    ax.set(xlabel="epoch", ylabel=f"validation {df['metric'].iloc[0]} (%)",
           title=f"{dataset}: validation curve, mean ± std over seeds {seeds}")
    ax.legend(fontsize=7)
    return _save(fig, stem)


def operations_figure(df: pd.DataFrame, dataset: str, stem: Path) -> list[Path]:
    """Bars: proportion of each candidate operation (mean over cells, mean ± std over seeds) per method."""
    stats = (df[df["dataset"] == dataset].groupby(["operation", "method"], sort=False)["proportion"]
             .agg(["mean", "std"]).fillna(0.0).reset_index())
    means = stats.pivot(index="operation", columns="method", values="mean")
    errors = stats.pivot(index="operation", columns="method", values="std")
    order = list(dict.fromkeys(stats["operation"]))
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    means.loc[order].plot.bar(ax=ax, yerr=errors.loc[order], capsize=2, rot=30)
    ax.axhline(1 / len(order), color="black", linestyle="--", linewidth=1, label="uniform (α = 0)")
    ax.set(xlabel="", ylabel="proportion of softmax(α)", title=f"{dataset}: learned operation distribution")
    ax.legend(fontsize=7)
    return _save(fig, stem)


def pareto_figure(records: list[dict], dataset: str, stem: Path) -> list[Path]:
    """Test value of the dataset's selection metric against trainable parameters, mean ± std over seeds."""
    rows = [{"method": r["method"], "params": r["params"]["trainable"], "value": r["metrics"]["test"][metric]}
            for r in records if r["dataset"] == dataset and "test" in r["metrics"]
            and (metric := r["selection"]["metric"]) in r["metrics"]["test"]]
    if not rows:
        return []
    stats = pd.DataFrame(rows).groupby("method").agg(params=("params", "max"), mean=("value", "mean"),
                                                     std=("value", "std")).fillna(0.0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(stats["params"], stats["mean"], yerr=stats["std"], fmt="o", capsize=2)
    for method, row in stats.iterrows():
        ax.annotate(method, (row["params"], row["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    # plain counts with SI prefixes (31.5k), no minor-tick labels: log-axis labels such as 3.15 x 10^4 overlap
    ax.xaxis.set_major_formatter(EngFormatter(places=1))
    ax.xaxis.set_minor_formatter(EngFormatter(places=1))
    ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=30)
    metric = next(r["selection"]["metric"] for r in records if r["dataset"] == dataset)
    ax.set(xlabel="trainable parameters", ylabel=f"test {metric} (%)", title=f"{dataset}: quality vs parameters")
    return _save(fig, stem)


def throughput_figure(records: list[dict], stem: Path) -> list[Path]:
    """Training micro-batch passes per second per method and dataset, mean ± std over seeds."""
    df = pd.DataFrame([{"method": r["method"], "dataset": r["dataset"], "value": r["timing"]["train_iter_per_s"]}
                       for r in records])
    stats = df.groupby(["method", "dataset"], sort=False)["value"].agg(["mean", "std"]).fillna(0.0).reset_index()
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    stats.pivot(index="method", columns="dataset", values="mean").plot.bar(
        ax=ax, yerr=stats.pivot(index="method", columns="dataset", values="std"), capsize=2, rot=30)
    device = sorted({r["device"]["name"] for r in records})
    ax.set(xlabel="", ylabel="training iter/s", title=f"training throughput ({', '.join(device)})")
    ax.legend(fontsize=7)
    return _save(fig, stem)


def write_figures(records: list[dict], out: Path) -> list[Path]:
    """Render every figure of `records` (the records under `out`/runs, see load_records) into `out`/figures.
    Returns the files written."""
    figures = Path(out) / "figures"
    written = []
    curves = curves_frame(records)
    operations = operations_frame(records)
    figures.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(figures / "convergence.csv", curves)
    written.append(figures / "convergence.csv")
    for dataset in curves["dataset"].unique():
        written += convergence_figure(records, dataset, figures / f"convergence_{dataset}")
        written += pareto_figure(records, dataset, figures / f"pareto_{dataset}")
    written += throughput_figure(records, figures / "throughput")
    if not operations.empty:
        write_csv_atomic(figures / "operations.csv", operations)
        written.append(figures / "operations.csv")
        for dataset in operations["dataset"].unique():
            written += operations_figure(operations, dataset, figures / f"operations_{dataset}")
    return written
