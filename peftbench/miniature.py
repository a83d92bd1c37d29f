"""The two questions of the miniature experiment (a tiny SAM pretrained by `peftbench pretrain-tiny`, adapted to
the synthetic domains), answered from the run records in one table, `tables/miniature.{md,csv}`:

1. Does the pretrained encoder help? decoder_only (pretrained, frozen) against decoder_only_random (the same
   architecture at its random initialisation, frozen).
2. Do LoRA-family adapters help beyond the decoder? every LoRA-family method present against decoder_only.
And for the paper's method: does a searching method (NAS-PC-LoRA) beat LoRA, and did its search engage (max |p - 1/K|
of the learned operation distribution, per seed; see methods/nas_lora.py)?

Per dataset and test set the card's selection metric is compared (lower is better for BER and MAE); a cell is
mean ± std over seeds, and a comparison reads "yes" / "no" with the mean difference and the one-sided paired
t-test p over the seeds both runs have. Nothing here is tuned: it reports whatever the records say.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .methods import method_specs
from .records import write_csv_atomic, write_text_atomic
from .report import LOWER_IS_BETTER, paired_t_p

LORA_FAMILIES = {"lora", "conv_lora", "dora", "vera", "nas_lora"}
PRETRAINED, RANDOM = "decoder_only", "decoder_only_random"


def _verdict(a: dict[int, float], b: dict[int, float], higher: bool) -> str:
    """'yes'/'no' for "a better than b" by mean, with the mean difference and the paired t-test p."""
    if not a or not b:
        return ""
    diff = np.mean(list(a.values())) - np.mean(list(b.values()))
    p = paired_t_p(a, b, higher)
    better = diff > 0 if higher else diff < 0
    return f"{'yes' if better else 'no'} ({diff:+.2f}" + (f", p={p:.3f})" if p is not None else ")")


def _cell(by_seed: dict[int, float]) -> str:
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
    """One row per dataset / test set, or None when decoder_only and decoder_only_random are not both present."""
    methods = set(df["method"])
    if not {PRETRAINED, RANDOM} <= methods:
        return None
    registry = method_specs()
    lora = [m for m in dict.fromkeys(df["method"]) if m in registry and registry[m].family in LORA_FAMILIES
            and not registry[m].ablation]
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
        row = {"dataset": label, "metric": metric, **{m: _cell(seeds.get(m, {})) for m in [RANDOM, PRETRAINED, *lora]},
               "pretrained > random": _verdict(seeds.get(PRETRAINED, {}), seeds.get(RANDOM, {}), higher)}
        wins = [m for m in lora if _verdict(seeds.get(m, {}), seeds.get(PRETRAINED, {}), higher).startswith("yes")]
        row["LoRA-family > decoder-only"] = f"{len(wins)}/{sum(m in seeds for m in lora)}"
        for m in (m for m in lora if registry[m].family == "nas_lora" and "lora" in seeds):
            row[f"{m} > lora"] = _verdict(seeds.get(m, {}), seeds["lora"], higher)
            row[f"{m} search: max abs(p - 1/K)"] = search[m].get(label.split("/")[0], "")
        rows.append(row)
    return pd.DataFrame(rows)


def write_miniature(records: list[dict], df: pd.DataFrame, folder: Path) -> list[Path]:
    table = miniature_table(records, df)
    if table is None or table.empty:
        return []
    note = ("Selection metric of each card on its test sets, mean ± std over seeds. \"pretrained > random\": "
            "decoder_only on the pretrained tiny SAM against decoder_only_random (mean difference, one-sided paired "
            "t-test over seeds). \"LoRA-family > decoder-only\": LoRA-family methods whose mean beats decoder_only. "
            "\"<method> > lora\": a searching method against LoRA, likewise. \"search\": max abs(p - 1/K) of its "
            "operation distribution per seed (uniform: 0); a search engaged when it took architecture steps and "
            "moved it at least 0.01.")
    md, csv = folder / "miniature.md", folder / "miniature.csv"
    write_text_atomic(md, table.to_markdown(index=False, disable_numparse=True) + "\n\n" + note + "\n")
    write_csv_atomic(csv, table)
    return [md, csv]
