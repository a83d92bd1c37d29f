"""Every table of `peftbench report` / `peftbench tables`, the figures and one self-contained HTML page, rebuilt
from the run records alone. What a method is (PEFT or not, LoRA family, the ablation table it belongs to, the
method it is compared with, a control) comes from each record's `method_info`, never from the method registry, so
a report of archived runs does not change when a method file does. Each column is defined here once.

- tables/metrics and tables/timing (`write_tables`): every test metric, and every run's throughput and memory per
  device and CPU setting, mean ± std per method.
- The paper's layouts where their datasets were run (Table 1: binary benchmarks; Table 2: Trans10K-v1 easy/hard;
  Table 3: Trans10K-v2 per category; Table 5: timing; one table per ablation: its variants and the methods they
  are compared with); every other dataset gets the generic layout. Each is written as markdown, LaTeX (booktabs)
  and CSV.
  - A cell is mean ± std (ddof=1) over the seeds that finished; a cell with fewer seeds than the table's other
    cells (the seeds asked) is marked "(n=k)", never silently averaged over fewer.
  - Per column the best cell is bold and the second best underlined (LaTeX) / italic (markdown), lower-is-better
    metrics (BER, MAE, mBER) counted as such.
  - Significance of best vs second per column: a paired t-test over the seeds both finished (same seed = same data
    order and initialisation) and a paired bootstrap over test images (10,000 resamples of the per-image values
    averaged over common seeds; per-image metrics only). The best cell gets "§" (t-test) and/or "†" (bootstrap)
    when p < 0.05, one-sided.
  - A cell of a searching method (NAS-LoRA) whose architecture search did not engage in some seed is marked "‡"
    (k of n seeds), with a footnote: it is not a NAS result.
  - `--reference` adds the paper's published numbers (peftbench/reference/paper_results.csv, transcribed from its
    Tables 1-3, 5, 6-9 and D1) as "paper: <method>" rows beside ours, where a column matches: a main table shows
    the rows of Tables 1-3 and 5, an ablation table those of its own paper table.
- tables/miniature: the two questions of the miniature experiment (a tiny SAM pretrained by `peftbench
  pretrain-tiny`, adapted to the synthetic domains). 1. Does the pretrained encoder help? The control on a random
  backbone (decoder_only_random) against the method it controls (decoder_only, the same architecture pretrained).
  2. Do LoRA-family adapters help beyond the decoder? Every LoRA-family method present against that reference.
  And a LoRA-family method compared with another (NAS-PC-LoRA with LoRA) against it, with how far its search
  moved (max |p - 1/K| of the learned operation distribution, per seed; see methods/nas_lora.py). Per dataset and
  test set the card's selection metric is compared; a comparison reads "yes" / "no" with the mean difference and
  the one-sided paired t-test p over the seeds both runs have. Nothing there is tuned: it reports what the
  records say.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .figures import write_figures
from .records import SEARCH_MARK, SEARCH_NOTE, load_records, set_label, unsearched, write_csv_atomic, write_text_atomic
from .runs import Trust
from .stats import LOWER_IS_BETTER, paired_bootstrap_p, paired_t_p

REFERENCE_FILE = Path(__file__).parent / "reference" / "paper_results.csv"
TABLE1_DATASETS = ["polyp/kvasir", "polyp/cvc", "isic2017", "cod/camo", "sbu", "leaf", "road"]
# The timing columns of every table: record key -> title (tables/timing shows the titles, Table 5 the keys).
TIMING = {
    "train_iter_per_s": "Train iter/s",
    "train_images_per_s": "Train img/s",
    "train_min_per_epoch": "Train min/epoch",
    "arch_iter_per_s": "Search: architecture iter/s",  # NAS-LoRA: architecture passes, timed apart (Table 5)
    "train_min_per_epoch_search": "Search: min/epoch",
    "infer_img_per_s": "Inference img/s",
    "peak_memory_mib": "Peak memory (MiB)",
}
PARAMS = "Params(M)/Ratio(%)"
# What a run's timings depend on besides its method: the timing table's row keys.
RUN_SETTING = ["device", "CPU runs x threads", "inference model"]
TIMING_NOTE = ("Absolute timings are only comparable on one device and, on a CPU, one setting of runs in parallel x "
               "threads per run (the records' cpu_workers, threads_per_run; tables/timing.md shows it); see "
               "`peftbench bench`.")
MAIN_REFERENCE_TABLES = ("Table 1", "Table 2", "Table 3", "Table 5")


def long_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (method, dataset label, metric, seed) with the test value, the TIMING metrics included under the
    dataset's name; each row also states its run's setting (RUN_SETTING)."""
    rows = []
    for r in records:
        run = {"method": r["method"], "seed": r["seed"], **_run_setting(r)}
        for test, values in r["metrics"].items():
            label = set_label(r["dataset"], test)
            rows += [{**run, "dataset": label, "metric": m, "value": v} for m, v in values.items()]
        rows += [{**run, "dataset": r["dataset"], "metric": m, "value": v} for m, v in r["timing"].items() if m in TIMING]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "seed", "value", *RUN_SETTING])


def _run_setting(record: dict) -> dict:
    """The device, how many CPU runs ran in parallel with how many torch threads each ("–" on a GPU) and the model
    inference ran; "–" where a record (one written by hand) does not say."""
    config = record.get("config", {})
    workers, threads = config.get("cpu_workers"), config.get("threads_per_run")
    return {"device": record.get("device", {}).get("name", "–"),
            "CPU runs x threads": f"{workers} x {threads}" if workers and threads else "–",
            "inference model": record["timing"].get("inference_model", "–")}


def params_cells(records: list[dict]) -> dict[str, str]:
    """Method -> its PARAMS cell, trainable M / ratio: a range where datasets differ (a multi-class head adds
    parameters)."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r["params"])
    return {m: _params_range(values) for m, values in by_method.items()}


def _params_range(values: list[dict]) -> str:
    lo, hi = min(values, key=lambda p: p["trainable"]), max(values, key=lambda p: p["trainable"])
    return _params_text(lo) if lo["trainable"] == hi["trainable"] else f"{_params_text(lo)} – {_params_text(hi)}"


def _params_text(params: dict) -> str:
    return f"{params['trainable'] / 1e6:.3f}/{params['ratio_percent']:.2f}%"


def method_infos(records: list[dict]) -> dict[str, dict]:
    """Row label (a record's method, as load_records labelled it) -> its method_info, in the records' order."""
    infos: dict[str, dict] = {}
    for r in records:
        infos.setdefault(r["method"], r["method_info"])
    return infos


def baselines(method: str, infos: dict[str, dict]) -> list[str]:
    """The rows of the method that `method` is compared with (its baseline; several rows where load_records split
    it by config), in row order."""
    name = infos[method]["baseline"]
    return [m for m, info in infos.items() if name and info["name"] == name]


def _mean_std(df: pd.DataFrame, keys: list[str], decimals: int | None) -> tuple[pd.DataFrame, pd.Series]:
    """Aggregated (mean, std with ddof=1, n) and the 'mean ± std' strings: `decimals` fixed decimals, or None for
    three significant digits (timings span orders of magnitude between a CPU and a GPU). A cell over fewer seeds
    than the frame holds is marked "(n=k)": two cells over different seed sets are never shown as alike."""
    stats = df.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    seeds = df["seed"].nunique()

    def cell(s: pd.Series) -> str:
        mean = f"{s['mean']:.3g}" if decimals is None else f"{s['mean']:.{decimals}f}"
        fewer = f" (n={s['count']})" if s["count"] < seeds else ""
        if pd.isna(s["std"]):  # one seed: the spread is undefined, not 0
            return f"{mean} (n=1)"
        return (f"{mean} ± {s['std']:.2g}" if decimals is None else f"{mean} ± {s['std']:.{decimals}f}") + fewer

    return stats, stats.apply(cell, axis=1)


def metrics_table(records: list[dict], df: pd.DataFrame, decimals: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(methods x (dataset, metric) cells 'mean ± std', long stats for CSV); `df`: the records' long_frame."""
    quality = df[~df["metric"].isin(TIMING) & ~df["metric"].str.startswith("iou_")]  # per-category IoUs: Table 3
    stats, text = _mean_std(quality, ["method", "dataset", "metric"], decimals)
    not_engaged = unsearched(records)

    def marked(cell: str, method: str, label: str) -> str:  # a NAS run whose search did not engage
        seeds = not_engaged.get((method, label.split("/")[0]))
        return f"{cell} {SEARCH_MARK} {seeds[0]}/{seeds[1]}" if seeds else cell

    text = [marked(*row) for row in zip(text, stats["method"], stats["dataset"])]
    table = stats.assign(cell=text).pivot(index="method", columns=["dataset", "metric"], values="cell")
    table = table.reindex(index=list(dict.fromkeys(stats["method"])))
    table.insert(0, ("", PARAMS), pd.Series(params_cells(records)))
    return table, stats


def timing_table(df: pd.DataFrame, decimals: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like the paper's Table 5: per dataset, method and run setting, training and inference throughput and peak
    memory; `df`: the records' long_frame."""
    keys = ["dataset", "method", *RUN_SETTING]
    stats, text = _mean_std(df[df["metric"].isin(TIMING)], [*keys, "metric"], decimals)
    table = stats.assign(cell=text).pivot(index=keys, columns="metric", values="cell")
    table = table[[c for c in TIMING if c in table.columns]].rename(columns=TIMING)
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
    """tables/metrics and tables/timing from the records under `out`/runs, into `out`/tables. Returns the files.
    (build_report writes them too, with every other table.)"""
    records = load_records(out)
    return _generic_tables(records, long_frame(records), Path(out) / "tables") if records else []


def _generic_tables(records: list[dict], df: pd.DataFrame, tables: Path) -> list[Path]:
    """tables/metrics and tables/timing of `records` (`df`: their long_frame) into the folder `tables`."""
    seeds = sorted({r["seed"] for r in records})
    metric_caption = f"Test metrics (%), mean ± std over seeds {seeds} (std with ddof=1); ber: lower is better."
    if unsearched(records):
        metric_caption += " " + SEARCH_NOTE
    timing_caption = ("Throughput and peak memory, mean ± std over seeds (absolute values only comparable on one device). "
                      "Inference model: 'merged' = adapter folded into the frozen weights (plain SAM at inference), "
                      "'unmerged' = the adapter runs at inference. CPU runs x threads: runs trained in parallel and "
                      "torch threads of each (--cpu-workers, --threads-per-run); timings compare only within one "
                      "such setting.")
    return (_write(*metrics_table(records, df), tables / "metrics", metric_caption)
            + _write(*timing_table(df), tables / "timing", timing_caption))


@dataclass
class Table:
    """One table: a title, its columns as (dataset label, metric) and the methods in row order."""

    name: str
    caption: str
    columns: list[tuple[str, str]]
    methods: list[str]
    notes: list[str] = field(default_factory=list)


def per_image(records: list[dict]) -> dict[tuple, dict[int, np.ndarray]]:
    """(method, dataset label, metric) -> {seed: per-image values in test-set order}."""
    out: dict[tuple, dict[int, np.ndarray]] = {}
    for r in records:
        for test, values in r.get("per_image", {}).items():
            label = set_label(r["dataset"], test)
            for metric, v in values.items():
                out.setdefault((r["method"], label, metric), {})[r["seed"]] = 100.0 * np.asarray(v, dtype=float)
    return out


def column_stats(df: pd.DataFrame, images: dict, table: Table, seeds_asked: int) -> pd.DataFrame:
    """Per (method, column): mean, std, n, rank marks and the significance of best vs second."""
    rows = []
    for dataset, metric in table.columns:
        sub = df[(df["dataset"] == dataset) & (df["metric"] == metric) & df["method"].isin(table.methods)]
        higher = metric not in LOWER_IS_BETTER
        by_method = {m: dict(zip(g["seed"], g["value"])) for m, g in sub.groupby("method")}
        stats = [{"method": m, "dataset": dataset, "metric": metric, "mean": np.mean(list(v.values())),
                  "std": np.std(list(v.values()), ddof=1) if len(v) > 1 else float("nan"), "n": len(v),
                  "n_asked": seeds_asked} for m, v in by_method.items()]
        order = sorted(stats, key=lambda s: s["mean"], reverse=higher)
        distinct = sorted({round(s["mean"], 10) for s in stats}, reverse=higher)
        for s in stats:  # ties share a rank
            rank = distinct.index(round(s["mean"], 10))
            s.update(best=rank == 0, second=rank == 1, p_seeds=None, p_images=None)
        if len(order) >= 2:
            best, second = order[0], order[1]
            best["p_seeds"] = paired_t_p(by_method[best["method"]], by_method[second["method"]], higher)
            key_a, key_b = (best["method"], dataset, metric), (second["method"], dataset, metric)
            if key_a in images and key_b in images:
                best["p_images"] = paired_bootstrap_p(images[key_a], images[key_b], higher)
        rows += stats
    return pd.DataFrame(rows)


def _number(value: float, metric: str) -> str:
    return f"{value:.3g}" if metric in TIMING else f"{value:.2f}"


def _cell(s: pd.Series | None, latex: bool, unsearched: tuple[int, int] | None = None) -> str:
    """mean ± std with best/second and significance marks; `unsearched`: (k, n) seeds whose search did not engage."""
    if s is None:
        return "–"
    std = "" if pd.isna(s["std"]) else (r" $\pm$ " if latex else " ± ") + _number(s["std"], s["metric"])
    text = _number(s["mean"], s["metric"]) + std
    if s["best"]:
        text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
    elif s["second"]:
        text = rf"\underline{{{text}}}" if latex else f"_{text}_"
    marks = ("§" if s.get("p_seeds") is not None and s["p_seeds"] < 0.05 else "") + \
            ("†" if s.get("p_images") is not None and s["p_images"] < 0.05 else "")
    if marks:
        text += "$^{" + marks.replace("§", r"\S").replace("†", r"\dagger") + "}$" if latex else " " + marks
    if s["n"] < s["n_asked"]:
        text += f" (n={s['n']})"
    if unsearched:
        mark = f"{SEARCH_MARK} {unsearched[0]}/{unsearched[1]}"
        text += rf" $^{{\ddagger\,{unsearched[0]}/{unsearched[1]}}}$" if latex else f" {mark}"
    return text


LATEX_SPECIALS = {**{c: "\\" + c for c in "&%$#_{}"}, "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """`text` as LaTeX prints it literally: each of LaTeX's ten special characters escaped (a method or dataset
    name from someone's record can never inject a command)."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in text)


def render(table: Table, stats: pd.DataFrame, reference: pd.DataFrame | None, params: dict[str, str],
           infos: dict[str, dict], not_engaged: dict[tuple[str, str], tuple[int, int]] | None = None) -> dict:
    """{"md": ..., "tex": ...} for `table`, its methods grouped by their method_info's group (`infos`, see
    method_infos): Non-PEFT, PEFT, then any other; `not_engaged`: (method, dataset) -> (k, n) seeds whose
    architecture search did not engage (see records.unsearched)."""
    lookup = {(r["method"], r["dataset"], r["metric"]): r for _, r in stats.iterrows()}
    not_engaged = {key: value for key, value in (not_engaged or {}).items()
                   if key[0] in table.methods and any(d.split("/")[0] == key[1] for d, _ in table.columns)}
    if reference is not None:  # the paper's rows of the table this one reproduces
        own = [t for t in dict.fromkeys(reference["table"]) if table.name == f"ablation_{t.lower().replace(' ', '')}"]
        reference = reference[reference["table"].isin(own or MAIN_REFERENCE_TABLES)]
    titles = dict.fromkeys(["Non-PEFT", "PEFT", *(infos[m]["group"] for m in table.methods)])
    groups = [(f"{title} methods", [m for m in table.methods if infos[m]["group"] == title]) for title in titles]
    ref_rows = []
    if reference is not None:
        for method in dict.fromkeys(reference["method"]):
            values = {(d, m): v for d, m, v in reference[reference["method"] == method][["dataset", "metric", "value"]]
                      .itertuples(index=False)}
            cells = [values.get(c) for c in table.columns]
            if any(v is not None for v in cells):
                ref_rows.append((f"paper: {method}", ["–" if v is None else str(v) for v in cells]))
    header = ["method", PARAMS, *[f"{d} {m}" for d, m in table.columns]]
    md = [f"{table.caption}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ncol = len(header)
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    tex = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(table.caption)}}}",
           rf"\label{{tab:{table.name}}}", r"\begin{tabular}{ll" + "c" * len(table.columns) + "}", r"\toprule",
           " & & " + " & ".join(rf"\multicolumn{{{sum(d == x for x, _ in table.columns)}}}{{c}}{{{_latex_escape(d)}}}"
                                  for d in datasets) + r" \\",
           f"Method & {_latex_escape(PARAMS)} & " + " & ".join(_latex_escape(m) for _, m in table.columns) + r" \\"]
    for title, methods in groups:
        if not methods:
            continue
        md.append(f"| *{title}* |" + " |" * (ncol - 1))
        tex += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{title}}}}} \\"]
        for method in methods:
            cells = [(lookup.get((method, d, m)), not_engaged.get((method, d.split("/")[0]))) for d, m in table.columns]
            md.append("| " + " | ".join([method, params.get(method, ""), *[_cell(c, False, u) for c, u in cells]]) + " |")
            tex.append(" & ".join([_latex_escape(method), _latex_escape(params.get(method, "")),
                                   *[_cell(c, True, u) for c, u in cells]]) + r" \\")
    if ref_rows:
        md.append("| *Published (paper)* |" + " |" * (ncol - 1))
        tex += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{Published (paper)}}}} \\"]
        for name, cells in ref_rows:
            md.append("| " + " | ".join([name, "", *cells]) + " |")
            tex.append(" & ".join([_latex_escape(name), "", *map(_latex_escape, cells)]) + r" \\")
    footnote = ("Mean ± std (ddof=1) over seeds; bold best, " + "italic" + " second best per column "
                "(BER, MAE, mBER, min/epoch, memory: lower is better). § best beats second by a one-sided paired t-test "
                "over seeds, "
                "† by a paired bootstrap over test images (10,000 resamples), p < 0.05. (n=k): only k seeds finished.")
    if not_engaged:
        footnote += " " + SEARCH_NOTE
    md += ["", footnote, *table.notes]
    tex += [r"\bottomrule", r"\end{tabular}",
            r"\par\footnotesize " + _latex_escape(footnote.replace("italic", "underlined")).replace("±", r"$\pm$")
            .replace("†", r"$\dagger$").replace("§", r"\S{}").replace(SEARCH_MARK, r"$\ddagger$"),
            *[r"\par\footnotesize " + _latex_escape(note) for note in table.notes],
            r"\end{table}"]
    return {"md": "\n".join(md) + "\n", "tex": "\n".join(tex) + "\n"}


def plan_tables(records: list[dict], df: pd.DataFrame) -> list[Table]:
    """The tables these records can fill, in the paper's layouts where their datasets are present: the main
    methods (no ablation) in each, and per ablation its variants with the methods they are compared with."""
    infos = method_infos(records)
    main = [m for m, info in infos.items() if not info["ablation"]]
    # The paper's columns for each dataset are its card's `metrics`, in the card's order; datasets in order of
    # appearance. The card's `extra_metrics` go to a table of their own.
    # (A record whose card lists no metrics, e.g. one written by hand, shows all of them.)
    card_order = {r["dataset"]: r["config"]["dataset"].get("metrics", []) for r in records}
    extra = {r["dataset"]: r["config"]["dataset"].get("extra_metrics", []) for r in records}
    quality_metric = ~df["metric"].isin(TIMING) & ~df["metric"].str.startswith("iou_")
    in_card = quality_metric & np.array([m in card_order[d.split("/")[0]] or not card_order[d.split("/")[0]]
                                         for d, m in zip(df["dataset"], df["metric"])], dtype=bool)
    in_extra = quality_metric & np.array([m in extra[d.split("/")[0]] for d, m in zip(df["dataset"], df["metric"])],
                                         dtype=bool)
    quality = df[in_card]
    columns = list(dict.fromkeys(zip(quality["dataset"], quality["metric"])))
    position = {d: i for i, d in enumerate(dict.fromkeys(d for d, _ in columns))}

    def order(column: tuple[str, str]) -> tuple:
        metrics = card_order.get(column[0].split("/")[0], [])
        return position[column[0]], metrics.index(column[1]) if column[1] in metrics else len(metrics)

    columns.sort(key=order)
    binary = {r["dataset"] for r in records if r["config"]["dataset"]["kind"] == "binary"}
    tables = []
    table1 = [c for c in columns if c[0].split("/")[0] in binary]
    # A synthetic analogue takes the place of the real dataset it stands in for (card field analogue_of).
    analogue = {r["dataset"]: r["config"]["dataset"].get("analogue_of") or r["dataset"] for r in records}

    def paper_position(column: tuple[str, str]) -> int:
        base, _, test = column[0].partition("/")
        real = analogue.get(base, base)
        matches = [i for i, d in enumerate(TABLE1_DATASETS) if d == f"{real}/{test}" or d.split("/")[0] == real]
        return matches[0] if matches else len(TABLE1_DATASETS)

    table1.sort(key=paper_position)
    if table1:
        tables.append(Table("table1_binary", "Binary semantic segmentation (the paper's Table 1 layout), test %.",
                            table1, main))
    # Table 2: the card's columns per test set; Table 3 adds the per-category IoUs in the card's class order.
    classes = {r["dataset"]: r["config"]["dataset"].get("classes", []) for r in records}
    for name, prefix, caption in [("table2_trans10k_v1", "trans10k_v1", "Trans10K-v1 easy / hard (Table 2 layout)"),
                                  ("table3_trans10k_v2", "trans10k_v2", "Trans10K-v2 per category (Table 3 layout)")]:
        cols = [c for c in columns if analogue.get(c[0].split("/")[0]) == prefix]
        if prefix == "trans10k_v2":
            labels = dict.fromkeys(d for d, _ in cols)
            for d in labels:
                found = list(dict.fromkeys(m for m in df[df["dataset"] == d]["metric"] if m.startswith("iou_")))
                ordered = [f"iou_{c}" for c in classes[d.split("/")[0]] if f"iou_{c}" in found]
                cols += [(d, m) for m in ordered or found]
        if cols:
            tables.append(Table(name, caption + ", test %.", cols, main))
    others = [c for c in columns
              if c not in table1 and analogue.get(c[0].split("/")[0]) not in ("trans10k_v1", "trans10k_v2")]
    if others:
        tables.append(Table("table_multiclass", "Multi-class semantic segmentation, test %.", others, main))
    more = list(dict.fromkeys(zip(df[in_extra]["dataset"], df[in_extra]["metric"])))
    if more:
        tables.append(Table("table_extra_metrics", "Further metrics recorded for each dataset (its card's "
                            "extra_metrics), test.", more, main))
    timing = list(dict.fromkeys((d, m) for d, m in zip(df["dataset"], df["metric"]) if m in TIMING))
    if timing:
        tables.append(Table("table5_timing", "Training and inference cost (the paper's Table 5 layout).", timing,
                            main, [TIMING_NOTE]))
    for ablation in sorted({info["ablation"] for info in infos.values()} - {""}):
        variants = [m for m, info in infos.items() if info["ablation"] == ablation]
        compared = {b for m in variants for b in baselines(m, infos)}
        base = [m for m in main if m in compared]
        cols = [c for c in columns + more if not df[(df["method"].isin(variants)) & (df["dataset"] == c[0])].empty]
        tables.append(Table(f"ablation_{ablation.lower().replace(' ', '')}", f"Ablation: paper {ablation}.", cols,
                            base + variants))
    return tables


def metric_definitions(records: list[dict]) -> dict[tuple[str, str], str]:
    """(dataset, metric) -> one footnote line: the metric's definition, threshold and resolution as the records
    state them (records disagreeing on a protocol get one sentence each, so a mixed table cannot hide it)."""
    lines: dict[tuple[str, str], list[str]] = {}
    for r in records:
        for name, d in r.get("metric_definitions", {}).items():
            beta = f"; beta^2 = {d['f_beta2']}" if "f_beta2" in d else ""
            text = f"{d['definition']} (threshold: {d['threshold']}{beta}; at {d['resolution']})."
            if text not in lines.setdefault((r["dataset"], name), []):
                lines[(r["dataset"], name)].append(text)
    return {key: " ".join(texts) for key, texts in lines.items()}


def table_notes(table: Table, definitions: dict[tuple[str, str], str]) -> list[str]:
    """The definition of every metric in the table, once per distinct text, naming the datasets it covers."""
    covered: dict[tuple[str, str], list[str]] = {}  # (metric, definition) -> datasets
    for label, metric in table.columns:
        dataset = label.split("/")[0]
        text = definitions.get((dataset, metric))
        if text and dataset not in covered.setdefault((metric, text), []):
            covered[(metric, text)].append(dataset)
    return [f"{metric} ({', '.join(names)}): {text}" for (metric, text), names in covered.items()]


def control_pair(infos: dict[str, dict]) -> tuple[str, str] | None:
    """(control, reference) of the miniature's first question: the first control on the random backbone whose
    baseline ran too (decoder_only_random, decoder_only); None without one. `infos`: see method_infos."""
    pairs = [(m, b) for m, info in infos.items() if info["control"] and info["backbone"] == "random"
             for b in baselines(m, infos)]
    return pairs[0] if pairs else None


def lora_family(infos: dict[str, dict]) -> list[str]:
    """The LoRA-family methods of the main comparison (lineage "lora"; no ablation variant, no control)."""
    return [m for m, info in infos.items() if info["lineage"] == "lora" and not info["ablation"] and not info["control"]]


def _verdict(a: dict[int, float], b: dict[int, float], higher: bool) -> str:
    """'yes'/'no' for "a better than b" by mean, with the mean difference and the paired t-test p."""
    if not a or not b:
        return ""
    diff = np.mean(list(a.values())) - np.mean(list(b.values()))
    p = paired_t_p(a, b, higher)
    better = diff > 0 if higher else diff < 0
    return f"{'yes' if better else 'no'} ({diff:+.2f}" + (f", p={p:.3f})" if p is not None else ")")


def _mean_text(by_seed: dict[int, float]) -> str:
    """mean ± std (ddof=1) over seeds; empty when the method did not run."""
    values = list(by_seed.values())
    if not values:
        return ""
    std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):.2f}{std}"


def _search_cells(records: list[dict], method: str) -> dict[str, str]:
    """dataset -> how far `method`'s learned operation distribution left uniform, per seed, and how many engaged."""
    by_dataset: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        if r["method"] == method and "max_abs_deviation" in (r.get("statistics") or {}):
            by_dataset.setdefault(r["dataset"], []).append(r["statistics"])
    return {d: ", ".join(f"{s['max_abs_deviation']:.3f}" for s in stats)
            + f" ({sum(s['search_engaged'] for s in stats)}/{len(stats)} engaged)" for d, stats in by_dataset.items()}


def miniature_table(records: list[dict], df: pd.DataFrame) -> pd.DataFrame | None:
    """One row per dataset / test set, or None without a control pair (see control_pair). Columns: the control,
    its reference and the LoRA-family methods; the two questions' answers; and "<m> > <b>" for each LoRA-family
    method m compared with another, b, followed by m's search where its records state one. `df`: the records'
    long_frame."""
    infos = method_infos(records)
    if (pair := control_pair(infos)) is None:
        return None
    control, reference = pair
    lora = lora_family(infos)
    compared = {m: [b for b in baselines(m, infos) if b in lora] for m in lora}
    select = {r["dataset"]: r["selection"]["metric"] for r in records}
    search = {m: _search_cells(records, m) for m in lora}
    rows = []
    for label in dict.fromkeys(df["dataset"]):
        metric = select.get(label.split("/")[0])
        sub = df[(df["dataset"] == label) & (df["metric"] == metric)]
        if sub.empty:
            continue
        higher = metric not in LOWER_IS_BETTER
        seeds = {m: dict(zip(g["seed"], g["value"])) for m, g in sub.groupby("method")}
        row = {"dataset": label, "metric": metric, **{m: _mean_text(seeds.get(m, {})) for m in [control, reference, *lora]},
               "pretrained > random": _verdict(seeds.get(reference, {}), seeds.get(control, {}), higher)}
        wins = [m for m in lora if _verdict(seeds.get(m, {}), seeds.get(reference, {}), higher).startswith("yes")]
        row["LoRA-family > decoder-only"] = f"{len(wins)}/{sum(m in seeds for m in lora)}"
        for method, base in ((m, b) for m in lora for b in compared[m] if b in seeds):
            row[f"{method} > {base}"] = _verdict(seeds.get(method, {}), seeds[base], higher)
            if search[method]:
                row[f"{method} search: max abs(p - 1/K)"] = search[method].get(label.split("/")[0], "")
        rows.append(row)
    return pd.DataFrame(rows)


def write_miniature(records: list[dict], df: pd.DataFrame, folder: Path) -> list[Path]:
    """tables/miniature.{md,csv} (see miniature_table); nothing without a control pair."""
    table = miniature_table(records, df)
    if table is None or table.empty:
        return []
    control, reference = control_pair(method_infos(records))
    note = (f"Selection metric of each card on its test sets, mean ± std over seeds. \"pretrained > random\": "
            f"{reference} on the pretrained tiny SAM against {control} (mean difference, one-sided paired "
            f"t-test over seeds). \"LoRA-family > decoder-only\": LoRA-family methods whose mean beats {reference}. "
            "\"<method> > lora\": a searching method against LoRA, likewise. \"search\": max abs(p - 1/K) of its "
            "operation distribution per seed (uniform: 0); a search engaged when it took architecture steps and "
            "moved it at least 0.01.")
    md, csv = folder / "miniature.md", folder / "miniature.csv"
    write_text_atomic(md, table.to_markdown(index=False, disable_numparse=True) + "\n\n" + note + "\n")
    write_csv_atomic(csv, table)
    return [md, csv]


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(path.stem)}</figcaption></figure>"


def _cell_html(text: str) -> str:
    """A markdown cell as HTML: escaped, with the tables' **best** and _second_ marks as bold and italic."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", text)  # *PEFT methods* group rows
    return re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<i>\1</i>", text)


def _markdown_html(markdown: str) -> list[str]:
    """A table file's markdown (paragraphs and pipe tables) as HTML; wide tables scroll instead of overflowing."""
    parts, rows = [], []

    def flush() -> None:
        if rows:
            body = "".join("<tr>" + "".join(f"<{tag}>{_cell_html(c)}</{tag}>" for c in cells) + "</tr>"
                           for tag, cells in (("th" if i == 0 else "td", r) for i, r in enumerate(rows)))
            parts.append(f"<div class='wide'><table>{body}</table></div>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            if not re.fullmatch(r"\|[\s:|-]+\|?", line):  # not the |---| separator
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    flush()
    return parts


def write_html(out: Path, tables: list[tuple[str, str]], figures: list[Path]) -> Path:
    """results/report.html: every table (name, markdown) and every PNG inlined; no external assets."""
    parts = [("<!DOCTYPE html><html><head><meta charset='utf-8'><title>peftbench report</title><style>"
              "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
              "td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}div.wide{overflow-x:auto}"
              "p{font-size:13px}img{max-width:640px}</style></head><body>"), "<h1>peftbench report</h1>"]
    for name, markdown in tables:
        parts += [f"<h2>{html.escape(name)}</h2>", *_markdown_html(markdown)]
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(p) for p in figures if p.suffix == ".png"]
    parts.append("</body></html>")
    path = Path(out) / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path


def _check_inside(out: Path, path: Path) -> None:
    """A one-line UserError when `path` (under the results folder `out`) is a link that leads out of it."""
    if not path.resolve().is_relative_to(out.resolve()):
        raise UserError(f"{path}: links to {path.resolve()}, outside the results folder {out}; peftbench writes "
                        "nothing there (remove the link)")


def build_report(out: Path, reference: bool = False, warn: Callable[[str], None] = print,
                 trust_plugins: Trust = (), dataset_roots: Collection[str | Path] = ()) -> list[Path]:
    """Rebuild every table (tables/metrics and tables/timing included), figure and the HTML page from the records
    under `out`/runs, reading them once. Returns the files. `warn`: how to say which record files are left out
    (not usable records, see records.load_records), which runs the figures cannot show, and that `reference` found
    no published number to put beside these results. `trust_plugins`: the plug-in modules the predictions figure
    may import to load a run's model (runs.check_plugin); `dataset_roots`: folders besides the data root whose
    images it may show (figures.images_allowed)."""
    records = load_records(out, warn)
    if not records:
        return []
    df, images = long_frame(records), per_image(records)
    seeds_asked = len({r["seed"] for r in records})
    ref = pd.read_csv(REFERENCE_FILE, dtype=str) if reference else None
    infos, not_engaged = method_infos(records), unsearched(records)
    for place in ("tables", "figures", "report.html"):  # a link planted in the folder must not lead writes out
        _check_inside(Path(out), Path(out) / place)
    folder = Path(out) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written, rendered, reference_rows = _generic_tables(records, df, folder), [], 0
    definitions = metric_definitions(records)
    for table in plan_tables(records, df):
        table.notes += table_notes(table, definitions)
        stats = column_stats(df, images, table, seeds_asked)
        shown = {label.split("/")[0] for label, _ in table.columns}  # its own runs' parameters (heads differ)
        text = render(table, stats, ref, params_cells([r for r in records if r["dataset"] in shown]), infos,
                      not_engaged)
        rendered.append((table.name, text["md"]))
        reference_rows += text["md"].count("| paper: ")
        for ext in ("md", "tex"):
            write_text_atomic(folder / f"{table.name}.{ext}", text[ext])
            written.append(folder / f"{table.name}.{ext}")
        write_csv_atomic(folder / f"{table.name}.csv", stats)
        written.append(folder / f"{table.name}.csv")
    miniature = write_miniature(records, df, folder)
    if miniature:  # the default run's answer first
        rendered.insert(0, ("miniature", miniature[0].read_text()))
    if reference and not reference_rows:
        warn("--reference: none of these results has a counterpart in the paper's tables (its datasets and "
             "methods), so no published number is shown")
    figures = write_figures(records, out, warn, trust_plugins, dataset_roots)
    return written + miniature + figures + [write_html(out, rendered, figures)]
