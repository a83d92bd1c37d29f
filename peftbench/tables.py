"""Comparison tables from run records: mean ± std over seeds, as markdown, LaTeX (booktabs) and CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .records import SEARCH_MARK, SEARCH_NOTE, load_records, set_label, unsearched, write_csv_atomic, write_text_atomic

TIMING_COLUMNS = {
    "train_iter_per_s": "Train iter/s",
    "train_images_per_s": "Train img/s",
    "train_min_per_epoch": "Train min/epoch",
    "arch_iter_per_s": "Search: architecture iter/s",  # NAS-LoRA: architecture passes, timed apart (Table 5)
    "train_min_per_epoch_search": "Search: min/epoch",
    "infer_img_per_s": "Inference img/s",
    "peak_memory_mib": "Peak memory (MiB)",
}


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """Long format: one row per (method, dataset, test set, metric, seed)."""
    rows = [
        {"method": r["method"], "dataset": set_label(r["dataset"], test),
         "metric": metric, "seed": r["seed"], "value": value}
        for r in records for test, values in r["metrics"].items() for metric, value in values.items()
        if not metric.startswith("iou_")  # per-category IoUs: the report's Table 3 layout
    ]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "seed", "value"])


def _mean_std(df: pd.DataFrame, keys: list[str], decimals: int | None) -> tuple[pd.DataFrame, pd.Series]:
    """Aggregated (mean, std with ddof=1, n) and the 'mean ± std' strings: `decimals` fixed decimals, or None for
    three significant digits (timings span orders of magnitude between a CPU and a GPU)."""
    stats = df.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()

    def cell(s: pd.Series) -> str:
        mean = f"{s['mean']:.3g}" if decimals is None else f"{s['mean']:.{decimals}f}"
        if pd.isna(s["std"]):  # one seed: the spread is undefined, not 0
            return f"{mean} (n=1)"
        return f"{mean} ± {s['std']:.2g}" if decimals is None else f"{mean} ± {s['std']:.{decimals}f}"

    return stats, stats.apply(cell, axis=1)


def _params_column(records: list[dict]) -> pd.Series:
    """Trainable M / ratio per method; a range where datasets differ (a multi-class head adds parameters)."""
    def cell(values: list[dict]) -> str:
        lo, hi = min(values, key=lambda p: p["trainable"]), max(values, key=lambda p: p["trainable"])
        text = lambda p: f"{p['trainable'] / 1e6:.3f}/{p['ratio_percent']:.2f}%"  # noqa: E731
        return text(lo) if lo["trainable"] == hi["trainable"] else f"{text(lo)} – {text(hi)}"

    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r["params"])
    return pd.Series({m: cell(v) for m, v in by_method.items()}, name="Params(M)/Ratio(%)")


def metrics_table(records: list[dict], decimals: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paper-style table: methods x (dataset, metric) cells 'mean ± std', long stats for CSV)."""
    df = metrics_frame(records)
    stats, text = _mean_std(df, ["method", "dataset", "metric"], decimals)
    not_engaged = unsearched(records)

    def marked(cell: str, method: str, label: str) -> str:  # a NAS run whose search did not engage
        seeds = not_engaged.get((method, label.split("/")[0]))
        return f"{cell} {SEARCH_MARK} {seeds[0]}/{seeds[1]}" if seeds else cell

    text = [marked(*row) for row in zip(text, stats["method"], stats["dataset"])]
    table = stats.assign(cell=text).pivot(index="method", columns=["dataset", "metric"], values="cell")
    table = table.reindex(index=list(dict.fromkeys(stats["method"])))
    table.insert(0, ("", "Params(M)/Ratio(%)"), _params_column(records))
    return table, stats


def _cpu_setting(config: dict) -> str:
    """How many CPU runs ran in parallel with how many torch threads each ("–" on a GPU or unrecorded)."""
    workers, threads = config.get("cpu_workers"), config.get("threads_per_run")
    return f"{workers} x {threads}" if workers and threads else "–"


def timing_table(records: list[dict], decimals: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like the paper's Table 5: per dataset and method, training and inference throughput and peak memory."""
    keys = ["dataset", "method", "device", "CPU runs x threads", "inference model"]
    rows = [{"dataset": r["dataset"], "method": r["method"], "device": r["device"]["name"],
             "CPU runs x threads": _cpu_setting(r["config"]),
             "inference model": r["timing"]["inference_model"], "metric": k, "value": v}
            for r in records for k, v in r["timing"].items() if k in TIMING_COLUMNS]
    df = pd.DataFrame(rows, columns=[*keys, "metric", "value"])
    stats, text = _mean_std(df, [*keys, "metric"], decimals)
    table = stats.assign(cell=text).pivot(index=keys, columns="metric", values="cell")
    table = table[[c for c in TIMING_COLUMNS if c in table.columns]].rename(columns=TIMING_COLUMNS)
    return table, stats


def _write(table: pd.DataFrame, stats: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, tex, csv = stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")
    flat = table.reset_index()
    flat.columns = [" ".join(str(part) for part in col if part).strip() if isinstance(col, tuple) else col
                    for col in flat.columns]
    write_text_atomic(md, f"{caption}\n\n{flat.to_markdown(index=False)}\n")
    write_text_atomic(tex, table.to_latex(caption=caption.replace("±", r"$\pm$"), escape=True)
                      .replace("±", r"$\pm$").replace(SEARCH_MARK, r"$\ddagger$"))
    write_csv_atomic(csv, stats)
    return [md, tex, csv]


def write_tables(out: Path) -> list[Path]:
    """Render every table from the records under `out`/runs into `out`/tables. Returns the files written."""
    records = load_records(out)
    if not records:
        return []
    seeds = sorted({r["seed"] for r in records})
    tables = Path(out) / "tables"
    metric_caption = f"Test metrics (%), mean ± std over seeds {seeds} (std with ddof=1); ber: lower is better."
    if unsearched(records):
        metric_caption += " " + SEARCH_NOTE
    timing_caption = ("Throughput and peak memory, mean ± std over seeds (absolute values only comparable on one device). "
                      "Inference model: 'merged' = adapter folded into the frozen weights (plain SAM at inference), "
                      "'unmerged' = the adapter runs at inference. CPU runs x threads: runs trained in parallel and "
                      "torch threads of each (--cpu-workers, --threads-per-run); timings compare only within one "
                      "such setting.")
    return (_write(*metrics_table(records), tables / "metrics", metric_caption)
            + _write(*timing_table(records), tables / "timing", timing_caption))
