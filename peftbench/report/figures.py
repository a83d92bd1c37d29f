"""Figures from run records: validation curves over seeds (the paper's Fig. C1), the learned operation
distribution of searchable methods (Fig. C2), quality against parameters, throughput (PNG and PDF, the plotted
numbers as CSV) and predicted test masks per method (PNG), under <out>/figures."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import EngFormatter
from PIL import Image

from ..data import DatasetCard, build_splits
from ..data.files import foreground
from ..errors import UserError
from ..paths import DATA_ROOT
from ..store.atomic import atomic_output, write_csv_atomic
from ..store.records import record_path
from ..store.schema import record_problem
from ..training.device import resolve_device
from ..training.inference import decode, predict_masks
from ..training.runs import Trust, load_run
from .colours import class_colours

PREDICTION_IMAGES = 3  # test images per dataset in the predicted-masks figure


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


def _save(fig, stem: Path, suffixes: tuple[str, ...] = (".png", ".pdf")) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in suffixes]
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


def shown_runs(records: list[dict], warn: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    """dataset -> method -> the record whose predictions are shown: its lowest seed among those that kept their
    trained state (records without one are left out; one kept but not loadable is named to `warn`, never silently
    dropped). Runs on the official architectures only with a GPU here: on a CPU a vit_h forward at 1024 px takes
    about a minute, too long for every report rebuild."""
    shown: dict[str, dict[str, dict]] = {}
    cheap = torch.cuda.is_available()
    for r in sorted(records, key=lambda r: r["seed"]):
        if not r.get("adapter"):
            continue
        if why := record_problem(r, loadable=True):
            warn(f"predictions_{r['dataset']}: {r['method']} seed {r['seed']} not loadable ({why})")
        elif cheap or r["config"]["sam"] in ("tiny", "tiny_random"):
            shown.setdefault(r["dataset"], {}).setdefault(r["method"], r)
    return shown


def first_test_samples(card: DatasetCard, count: int) -> tuple[str, list[tuple[Image.Image, np.ndarray]]]:
    """The card's first test set: its split name and its first `count` (RGB image, (H, W) label as stored) pairs
    in the test loader's order, each at its own size. A UserError when the card's files are not on this machine."""
    splits = build_splits(card, card.size)  # the size only matters to the model-size tensors, not used here
    name = next(name for name in splits if name.startswith("test"))
    test = splits[name]
    pairs = []
    for i in range(min(count, len(test))):
        if isinstance(test.samples, tuple):  # generated: arrays
            image = Image.fromarray(test.samples[0][i])
        else:
            image, why = decode(path := test.samples.iloc[i]["image"])
            if image is None:
                raise UserError(f"{path}: {why}")
        pairs.append((image, test.original_label(i)))
    return name, pairs


def _classes(label: np.ndarray, kind: str) -> np.ndarray:
    """A label or mask as class ids for the palette: binary 0/1 (thresholded as the trainer reads labels)."""
    return foreground(label).astype(np.uint8) if kind == "binary" else label


def images_allowed(card: DatasetCard, roots: Collection[str | Path]) -> bool:
    """Whether a record's dataset may be read for a figure: generated, or its files inside one of `roots` (the
    data root, the datasets this invocation named), so that a planted record cannot make a report show, and so
    share, images from anywhere on this machine."""
    if card.source == "synthetic":
        return True
    folder = Path(card.path).resolve()
    return any(folder.is_relative_to(Path(root).resolve()) for root in [DATA_ROOT, *roots])


def predictions_figure(runs: dict[str, dict], out: Path, dataset: str, stem: Path,
                       warn: Callable[[str], None] = print, trust_plugins: Trust = (),
                       dataset_roots: Collection[str | Path] = ()) -> list[Path]:
    """Rows: the first test images; columns: image, label, each run's predicted mask (see inference.predict_masks),
    classes coloured as in `peftbench predict --overlay`. Each run's model is loaded once per dataset (on vit_*:
    its SAM checkpoint read and sha256-checked each time, seconds per run). Nothing when the test images are not
    on this machine or outside the allowed roots (images_allowed); a run whose model cannot be loaded here (its SAM
    checkpoint moved, its kept state damaged, a plug-in not trusted) is left out, and `warn` says why."""
    try:
        card = DatasetCard(**next(iter(runs.values()))["config"]["dataset"])
    except TypeError:  # a card field this version of peftbench does not know
        return []
    if not images_allowed(card, dataset_roots):
        warn(f"{stem.name}: not drawn: the images of {dataset} are at {card.path}, outside the data root "
             f"{DATA_ROOT}; peftbench report --data-root {card.path} shows them")
        return []
    try:
        split, samples = first_test_samples(card, PREDICTION_IMAGES)
    except (UserError, OSError):
        return []
    device, masks = resolve_device("auto"), {}
    for method, record in runs.items():
        try:
            model = load_run(record_path(out, dataset, record["config"]["method"]["name"], record["seed"]),
                             device=device, trust_plugins=trust_plugins)
        except UserError as err:
            warn(f"{stem.name}: {method} left out: {err}")
            continue
        masks[method] = predict_masks(model, [image for image, _ in samples], device)
    if not masks:
        return []
    palette = class_colours(max(card.num_classes, 2))
    columns = ["image", "label", *masks]
    fig, axes = plt.subplots(len(samples), len(columns), figsize=(1.6 * len(columns), 1.6 * len(samples)),
                             squeeze=False)
    for row, (image, label) in enumerate(samples):
        shown = [np.asarray(image), palette[_classes(label, card.kind)],
                 *(palette[_classes(m[row], card.kind)] for m in masks.values())]
        for ax, picture in zip(axes[row], shown):
            ax.imshow(picture, interpolation="nearest")
            ax.axis("off")
    for ax, title in zip(axes[0], columns):
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{dataset} ({split}): predicted masks, lowest seed with a kept state", fontsize=8)
    return _save(fig, stem, (".png",))


def write_figures(records: list[dict], out: Path, warn: Callable[[str], None] = print, trust_plugins: Trust = (),
                  dataset_roots: Collection[str | Path] = ()) -> list[Path]:
    """Render every figure of `records` (the records under `out`/runs, see load_records) into `out`/figures.
    Returns the files written. `warn`, `trust_plugins`, `dataset_roots`: see predictions_figure."""
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
    for dataset, runs in shown_runs(records, warn).items():
        written += predictions_figure(runs, out, dataset, figures / f"predictions_{dataset}", warn, trust_plugins,
                                      dataset_roots)
    return written
