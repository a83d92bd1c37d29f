"""The two questions of the miniature experiment (a tiny SAM pretrained by `peftbench pretrain-tiny`, adapted to
the synthetic domains), answered from the run records in one table, `tables/miniature.{md,csv}`:

1. Does the pretrained encoder help? decoder_only (pretrained, frozen) against decoder_only_random (the same
   architecture at its random initialisation, frozen).
2. Do LoRA-family adapters help beyond the decoder? every LoRA-family method present against decoder_only.

Per dataset and test set the card's selection metric is compared (lower is better for BER and MAE); a cell is
mean ± std over seeds, and a comparison reads "yes" / "no" with the mean difference and the one-sided paired
t-test p over the seeds both runs have. Nothing here is tuned: it reports whatever the records say.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .methods import method_specs
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


def miniature_table(records: list[dict], df: pd.DataFrame) -> pd.DataFrame | None:
    """One row per dataset / test set, or None when decoder_only and decoder_only_random are not both present."""
    methods = set(df["method"])
    if not {PRETRAINED, RANDOM} <= methods:
        return None
    registry = method_specs()
    lora = [m for m in dict.fromkeys(df["method"]) if m in registry and registry[m].family in LORA_FAMILIES
            and not registry[m].ablation]
    select = {r["dataset"]: r["selection"]["metric"] for r in records}
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
        rows.append(row)
    return pd.DataFrame(rows)


def write_miniature(records: list[dict], df: pd.DataFrame, folder: Path) -> list[Path]:
    table = miniature_table(records, df)
    if table is None or table.empty:
        return []
    note = ("Selection metric of each card on its test sets, mean ± std over seeds. \"pretrained > random\": "
            "decoder_only on the pretrained tiny SAM against decoder_only_random (mean difference, one-sided paired "
            "t-test over seeds). \"LoRA-family > decoder-only\": LoRA-family methods whose mean beats decoder_only.")
    md, csv = folder / "miniature.md", folder / "miniature.csv"
    md.write_text(table.to_markdown(index=False, disable_numparse=True) + "\n\n" + note + "\n")
    table.to_csv(csv, index=False)
    return [md, csv]
