"""A comparison table of the paper's layouts built from the records: per column the mean ± std of each method,
best and second marked, the significance of best vs second, methods grouped as their method_info says, and the
paper's published numbers beside them (`comparison`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..scoring.stats import LOWER_IS_BETTER, paired_bootstrap_p, paired_t_p
from .cells import Cell, Group, Row, Table
from .frame import PARAMS, TIMING, Frame, base_name, params_cells
from .search import SEARCH_NOTE

MAIN_REFERENCE_TABLES = ("Table 1", "Table 2", "Table 3", "Table 5")
FOOTNOTE = ("Mean ± std (ddof=1) over seeds; bold best, {second} second best per column (BER, MAE, mBER, min/epoch, "
            "memory: lower is better). § best beats second by a one-sided paired t-test over seeds, † by a paired "
            "bootstrap over test images (10,000 resamples), p < 0.05. (n=k): only k seeds finished.")


def column_stats(frame: Frame, columns: list[tuple[str, str]], methods: list[str]) -> pd.DataFrame:
    """Per (method, column): mean, std, n, n_asked, rank marks and the p values of best vs second (on the best)."""
    df, rows = frame.df, []
    for dataset, metric in columns:
        sub = df[(df["dataset"] == dataset) & (df["metric"] == metric) & df["method"].isin(methods)]
        higher = metric not in LOWER_IS_BETTER
        by_method = {m: dict(zip(g["seed"], g["value"])) for m, g in sub.groupby("method")}
        stats = [{"method": m, "dataset": dataset, "metric": metric, "mean": np.mean(list(v.values())),
                  "std": np.std(list(v.values()), ddof=1) if len(v) > 1 else float("nan"), "n": len(v),
                  "n_asked": frame.seeds_asked} for m, v in by_method.items()]
        order = sorted(stats, key=lambda s: s["mean"], reverse=higher)
        distinct = sorted({round(s["mean"], 10) for s in stats}, reverse=higher)
        for s in stats:  # ties share a rank
            rank = distinct.index(round(s["mean"], 10))
            s.update(best=rank == 0, second=rank == 1, p_seeds=None, p_images=None)
        if len(order) >= 2:
            best, second = order[0], order[1]
            best["p_seeds"] = paired_t_p(by_method[best["method"]], by_method[second["method"]], higher)
            key_a, key_b = (best["method"], dataset, metric), (second["method"], dataset, metric)
            if key_a in frame.images and key_b in frame.images:
                best["p_images"] = paired_bootstrap_p(frame.images[key_a], frame.images[key_b], higher)
        rows += stats
    return pd.DataFrame(rows)


def _cell(s: dict, search: tuple[int, int] | None) -> Cell:
    significant = [mark for mark, p in (("§", s.get("p_seeds")), ("†", s.get("p_images"))) if p is not None and p < 0.05]
    return Cell(s["mean"], s["std"], s["n"], s["n_asked"], ".3g" if s["metric"] in TIMING else ".2f", s["best"],
                s["second"], "".join(significant), search)


def table_notes(frame: Frame, columns: list[tuple[str, str]]) -> list[str]:
    """The definition of every metric in the columns, once per distinct text, naming the datasets it covers."""
    covered: dict[tuple[str, str], list[str]] = {}  # (metric, definition) -> datasets
    for label, metric in columns:
        dataset = base_name(label)
        text = frame.definitions.get((dataset, metric))
        if text and dataset not in covered.setdefault((metric, text), []):
            covered[(metric, text)].append(dataset)
    return [f"{metric} ({', '.join(names)}): {text}" for (metric, text), names in covered.items()]


def reference_group(reference: pd.DataFrame, name: str, columns: list[tuple[str, str]]) -> Group:
    """The paper's rows beside table `name`: an ablation table those of its own paper table, any other those of
    Tables 1-3 and 5; a row where one of its numbers matches a column."""
    own = [t for t in dict.fromkeys(reference["table"]) if name == f"ablation_{t.lower().replace(' ', '')}"]
    reference = reference[reference["table"].isin(own or MAIN_REFERENCE_TABLES)]
    rows = []
    for method in dict.fromkeys(reference["method"]):
        values = {(d, m): v for d, m, v in reference[reference["method"] == method][["dataset", "metric", "value"]]
                  .itertuples(index=False)}
        cells = [values.get(c) for c in columns]
        if any(v is not None for v in cells):
            rows.append(Row([f"paper: {method}", ""], [Cell(text="–" if v is None else str(v)) for v in cells]))
    return Group("Published (paper)", rows, reference=True)


def comparison(frame: Frame, name: str, caption: str, columns: list[tuple[str, str]], methods: list[str],
               notes: tuple[str, ...] = ()) -> Table:
    """The table `name` of `methods` (rows, in order) over `columns` (dataset label, metric), grouped by their
    method_info's group: Non-PEFT, PEFT, then any other; `notes` go under the footnote, before the definitions of
    the table's metrics. The parameters shown are those of the runs on the table's datasets (heads differ)."""
    stats = column_stats(frame, columns, methods)
    lookup = {(r["method"], r["dataset"], r["metric"]): r for r in stats.to_dict("records")}
    shown = {base_name(label) for label, _ in columns}
    params = params_cells([r for r in frame.records if r["dataset"] in shown])
    not_engaged = {key: value for key, value in frame.not_engaged.items()
                   if key[0] in methods and any(base_name(d) == key[1] for d, _ in columns)}

    def row(method: str) -> Row:
        cells = [(lookup.get((method, d, m)), not_engaged.get((method, base_name(d)))) for d, m in columns]
        return Row([method, params.get(method, "")], [None if s is None else _cell(s, u) for s, u in cells])

    titles = dict.fromkeys(["Non-PEFT", "PEFT", *(frame.infos[m]["group"] for m in methods)])
    groups = [Group(f"{title} methods", [row(m) for m in methods if frame.infos[m]["group"] == title])
              for title in titles]
    if frame.reference is not None:
        groups.append(reference_group(frame.reference, name, columns))
    footnote = FOOTNOTE + (" " + SEARCH_NOTE if not_engaged else "")
    return Table(name, caption, ["method", PARAMS], columns, groups, footnote,
                 [*notes, *table_notes(frame, columns)], stats)
