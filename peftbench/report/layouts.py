"""The report's tables, one registered builder per layout. A builder takes the records' Frame and returns the
Tables it can fill (none where its datasets or methods did not run); `build_report` writes every registered
layout, in registration order. Adding a table is one `@register_layout` function (and its test).

Which paper table a dataset belongs to is read from its records' card (config.dataset), never from its name:
Table 1 takes the binary cards, Table 2 the multi-class cards of the Trans10K-v1 protocol (things / stuff, easy and
hard test sets), Table 3 those of the Trans10K-v2 protocol with the paper's 12 categories; any other multi-class
card gets a table of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cells import Cell, Group, Row, Table
from .compare import comparison
from .frame import PARAMS, RUN_SETTING, TIMING, Frame, base_name, baselines, params_cells
from .miniature import MINIATURE_NOTE, control_pair, miniature_table
from .search import SEARCH_MARK, SEARCH_NOTE, unsearched

Builder = Callable[[Frame], list[Table]]


@dataclass(frozen=True)
class Layout:
    """A registered builder; `formats`: the files written per table; `page`: shown in report.html; `lead`: first
    on the page."""

    build: Builder
    formats: tuple[str, ...] = ("md", "tex", "csv")
    page: bool = True
    lead: bool = False


LAYOUTS: dict[str, Layout] = {}


def register_layout(build: Builder | None = None, *, formats: tuple[str, ...] = ("md", "tex", "csv"),
                    page: bool = True, lead: bool = False):
    """Decorator: register `build` under its function name (a later one of the same name replaces it), with
    Layout's options: `@register_layout` or `@register_layout(page=False)`."""
    def add(fn: Builder) -> Builder:
        LAYOUTS[fn.__name__] = Layout(fn, formats, page, lead)
        return fn

    return add(build) if build is not None else add


# --- columns ---------------------------------------------------------------------------------------------------

def _quality(df: pd.DataFrame) -> pd.Series:
    """The rows of test quality metrics: no timing, no per-category IoU (Table 3 adds those)."""
    return ~df["metric"].isin(TIMING) & ~df["metric"].str.startswith("iou_")


def card_columns(frame: Frame) -> list[tuple[str, str]]:
    """(dataset label, metric) of every card's `metrics`, in the card's order, datasets in order of appearance (a
    record whose card lists no metrics, e.g. one written by hand, shows all of them)."""
    df = frame.df
    listed = [frame.card(d).get("metrics", []) for d in df["dataset"]]
    keep = _quality(df) & np.array([m in ms or not ms for m, ms in zip(df["metric"], listed)], dtype=bool)
    columns = list(dict.fromkeys(zip(df[keep]["dataset"], df[keep]["metric"])))
    position = {d: i for i, d in enumerate(dict.fromkeys(d for d, _ in columns))}

    def order(column: tuple[str, str]) -> tuple:
        metrics = frame.card(column[0]).get("metrics", [])
        return position[column[0]], metrics.index(column[1]) if column[1] in metrics else len(metrics)

    return sorted(columns, key=order)


def extra_columns(frame: Frame) -> list[tuple[str, str]]:
    """(dataset label, metric) of every card's `extra_metrics`, in the records' order."""
    df = frame.df
    keep = _quality(df) & np.array([m in frame.card(d).get("extra_metrics", []) for d, m in
                                    zip(df["dataset"], df["metric"])], dtype=bool)
    return list(dict.fromkeys(zip(df[keep]["dataset"], df[keep]["metric"])))


# --- the generic tables: tables/metrics and tables/timing -------------------------------------------------------

def _mean_std(df: pd.DataFrame, keys: list[str], decimals: int | None) -> tuple[pd.DataFrame, pd.Series]:
    """Aggregated (mean, std with ddof=1, count) and the 'mean ± std' strings: `decimals` fixed decimals, or None
    for three significant digits (timings span orders of magnitude between a CPU and a GPU). A cell over fewer
    seeds than the frame holds is marked "(n=k)": two cells over different seed sets are never shown as alike."""
    stats = df.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    seeds = df["seed"].nunique()

    def cell(s: pd.Series) -> str:
        mean = f"{s['mean']:.3g}" if decimals is None else f"{s['mean']:.{decimals}f}"
        fewer = f" (n={s['count']})" if s["count"] < seeds else ""
        if pd.isna(s["std"]):  # one seed: the spread is undefined, not 0
            return f"{mean} (n=1)"
        return (f"{mean} ± {s['std']:.2g}" if decimals is None else f"{mean} ± {s['std']:.{decimals}f}") + fewer

    return stats, stats.apply(cell, axis=1)


def grid(name: str, caption: str, table: pd.DataFrame, data: pd.DataFrame, notes: tuple[str, ...] = ()) -> Table:
    """A grid Table of `table`'s texts (its index: the label columns; nan: no value); `data`: its CSV."""
    index = [] if isinstance(table.index, pd.RangeIndex) else list(table.index.names)
    labels = [list(key) if isinstance(key, tuple) else [key] if index else [] for key in table.index]
    rows = [Row(label, [None if pd.isna(v) else Cell(text=v) for v in values])
            for label, values in zip(labels, table.itertuples(index=False))]
    return Table(name, caption, index, list(table.columns), [Group(None, rows)], notes=list(notes), data=data,
                 style="grid", column_names=list(table.columns.names))


@register_layout(page=False)
def metrics(frame: Frame) -> list[Table]:
    """tables/metrics: every test metric of every dataset, methods x (dataset, metric) cells 'mean ± std'."""
    records, df = frame.records, frame.df
    quality = df[_quality(df)]
    stats, text = _mean_std(quality, ["method", "dataset", "metric"], 2)
    not_engaged = unsearched(records)

    def marked(cell: str, method: str, label: str) -> str:  # a NAS run whose search did not engage
        seeds = not_engaged.get((method, base_name(label)))
        return f"{cell} {SEARCH_MARK} {seeds[0]}/{seeds[1]}" if seeds else cell

    text = [marked(*row) for row in zip(text, stats["method"], stats["dataset"])]
    table = stats.assign(cell=text).pivot(index="method", columns=["dataset", "metric"], values="cell")
    table = table.reindex(index=list(dict.fromkeys(stats["method"])))
    table.insert(0, ("", PARAMS), pd.Series(params_cells(records)))
    caption = (f"Test metrics (%), mean ± std over seeds {sorted({r['seed'] for r in records})} (std with ddof=1); "
               "ber: lower is better." + (" " + SEARCH_NOTE if not_engaged else ""))
    return [grid("metrics", caption, table, stats)]


@register_layout(page=False)
def timing(frame: Frame) -> list[Table]:
    """tables/timing: like the paper's Table 5, per dataset, method and run setting, training and inference
    throughput and peak memory."""
    keys = ["dataset", "method", *RUN_SETTING]
    stats, text = _mean_std(frame.df[frame.df["metric"].isin(TIMING)], [*keys, "metric"], None)
    table = stats.assign(cell=text).pivot(index=keys, columns="metric", values="cell")
    table = table[[c for c in TIMING if c in table.columns]].rename(columns=TIMING)
    caption = ("Throughput and peak memory, mean ± std over seeds (absolute values only comparable on one device). "
               "Inference model: 'merged' = adapter folded into the frozen weights (plain SAM at inference), "
               "'unmerged' = the adapter runs at inference. CPU runs x threads: runs trained in parallel and "
               "torch threads of each (--cpu-workers, --threads-per-run); timings compare only within one "
               "such setting.")
    return [grid("timing", caption, table, stats)]


# --- the paper's layouts -----------------------------------------------------------------------------------------

# The paper's Table 1 columns, in its order: the names of the real cards (and test sets) it reports. A synthetic
# card takes the place of the real one it stands in for (its `analogue_of`); a card the paper does not have comes
# after them.
TABLE1_ORDER = ["polyp/kvasir", "polyp/cvc", "isic2017", "cod/camo", "sbu", "leaf", "road"]
# The categories of the paper's Table 3 (Trans10K-v2), as the card names them: a Trans10K-v2-protocol card with
# exactly these classes is shown in that layout.
TABLE3_CLASSES = ["bg", "shelf", "jar", "freezer", "window", "door", "eyeglass", "cup", "wall", "bowl", "bottle", "box"]


def _binary(frame: Frame, label: str) -> bool:
    return frame.card(label)["kind"] == "binary"


def _protocol(frame: Frame, label: str) -> str:
    """Which of the paper's multi-class layouts a column's card fills: "trans10k_v1", "trans10k_v2" or ""."""
    card = frame.card(label)
    if card["kind"] != "multiclass":
        return ""
    protocol = card.get("multiclass_protocol", "")
    return protocol if protocol == "trans10k_v1" or card.get("classes") == TABLE3_CLASSES else ""


@register_layout
def table1_binary(frame: Frame) -> list[Table]:
    """Table 1: the binary cards, in the paper's column order (TABLE1_ORDER)."""
    def paper_position(column: tuple[str, str]) -> int:
        test = column[0].partition("/")[2]
        real = frame.card(column[0]).get("analogue_of") or base_name(column[0])
        matches = [i for i, d in enumerate(TABLE1_ORDER) if d == f"{real}/{test}" or base_name(d) == real]
        return matches[0] if matches else len(TABLE1_ORDER)

    columns = sorted((c for c in card_columns(frame) if _binary(frame, c[0])), key=paper_position)
    return [comparison(frame, "table1_binary", "Binary semantic segmentation (the paper's Table 1 layout), test %.",
                       columns, frame.main_methods())] if columns else []


@register_layout
def table2_trans10k_v1(frame: Frame) -> list[Table]:
    """Table 2: the cards of the Trans10K-v1 protocol, their columns per test set (easy / hard)."""
    columns = [c for c in card_columns(frame) if _protocol(frame, c[0]) == "trans10k_v1"]
    return [comparison(frame, "table2_trans10k_v1", "Trans10K-v1 easy / hard (Table 2 layout), test %.", columns,
                       frame.main_methods())] if columns else []


@register_layout
def table3_trans10k_v2(frame: Frame) -> list[Table]:
    """Table 3: the Trans10K-v2 cards' columns, then their per-category IoUs in the card's class order."""
    columns = [c for c in card_columns(frame) if _protocol(frame, c[0]) == "trans10k_v2"]
    df = frame.df
    for label in dict.fromkeys(d for d, _ in list(columns)):
        found = list(dict.fromkeys(m for m in df[df["dataset"] == label]["metric"] if m.startswith("iou_")))
        ordered = [f"iou_{c}" for c in frame.card(label).get("classes", []) if f"iou_{c}" in found]
        columns += [(label, m) for m in ordered or found]
    return [comparison(frame, "table3_trans10k_v2", "Trans10K-v2 per category (Table 3 layout), test %.", columns,
                       frame.main_methods())] if columns else []


@register_layout
def table_multiclass(frame: Frame) -> list[Table]:
    """The multi-class cards outside the paper's Tables 2 and 3."""
    columns = [c for c in card_columns(frame) if not _binary(frame, c[0]) and not _protocol(frame, c[0])]
    return [comparison(frame, "table_multiclass", "Multi-class semantic segmentation, test %.", columns,
                       frame.main_methods())] if columns else []


@register_layout
def table_extra_metrics(frame: Frame) -> list[Table]:
    """Every card's `extra_metrics`."""
    columns = extra_columns(frame)
    return [comparison(frame, "table_extra_metrics", "Further metrics recorded for each dataset (its card's "
                       "extra_metrics), test.", columns, frame.main_methods())] if columns else []


TIMING_NOTE = ("Absolute timings are only comparable on one device and, on a CPU, one setting of runs in parallel x "
               "threads per run (the records' cpu_workers, threads_per_run; tables/timing.md shows it); see "
               "`peftbench bench`.")


@register_layout
def table5_timing(frame: Frame) -> list[Table]:
    """Table 5: training and inference cost per dataset."""
    df = frame.df
    columns = list(dict.fromkeys((d, m) for d, m in zip(df["dataset"], df["metric"]) if m in TIMING))
    return [comparison(frame, "table5_timing", "Training and inference cost (the paper's Table 5 layout).", columns,
                       frame.main_methods(), (TIMING_NOTE,))] if columns else []


@register_layout
def ablations(frame: Frame) -> list[Table]:
    """One table per ablation the records name (method_info.ablation, the paper's Tables 6-9 and D1): its variants
    after the main methods they are compared with, over every column of the datasets the variants ran on."""
    infos, df, tables = frame.infos, frame.df, []
    for ablation in sorted({info["ablation"] for info in infos.values()} - {""}):
        variants = [m for m, info in infos.items() if info["ablation"] == ablation]
        compared = {b for m in variants for b in baselines(m, infos)}
        ran = set(df[df["method"].isin(variants)]["dataset"])
        columns = [c for c in card_columns(frame) + extra_columns(frame) if c[0] in ran]
        tables.append(comparison(frame, f"ablation_{ablation.lower().replace(' ', '')}", f"Ablation: paper {ablation}.",
                                 columns, [m for m in frame.main_methods() if m in compared] + variants))
    return tables


@register_layout(formats=("md", "csv"), lead=True)
def miniature(frame: Frame) -> list[Table]:
    """tables/miniature: the miniature experiment's two questions (see miniature.py); none without a control."""
    table = miniature_table(frame.records, frame.df)
    if table is None or table.empty:
        return []
    control, reference = control_pair(frame.infos)
    return [grid("miniature", "", table, table, (MINIATURE_NOTE.format(control=control, reference=reference),))]
