"""The miniature experiment's two questions, answered from the records (a tiny SAM pretrained by `peftbench
pretrain-tiny`, adapted to the synthetic domains). 1. Does the pretrained encoder help? The control on a random
backbone (decoder_only_random) against the method it controls (decoder_only, the same architecture pretrained).
2. Do LoRA-family adapters help beyond the decoder? Every LoRA-family method present against that reference. And a
LoRA-family method compared with another (NAS-PC-LoRA with LoRA) against it, with how far its search moved
(max |p - 1/K| of the learned operation distribution, per seed; see methods/nas_lora.py). Per dataset and test set
the card's selection metric is compared; a comparison reads "yes" / "no" with the mean difference and the
one-sided paired t-test p over the seeds both runs have. Nothing there is tuned: it reports what the records say."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..scoring.stats import LOWER_IS_BETTER, paired_t_p
from .frame import base_name, baselines, method_infos

MINIATURE_NOTE = (
    "Selection metric of each card on its test sets, mean ± std over seeds. \"pretrained > random\": {reference} on "
    "the pretrained tiny SAM against {control} (mean difference, one-sided paired t-test over seeds). \"LoRA-family "
    "> decoder-only\": LoRA-family methods whose mean beats {reference}. \"<method> > lora\": a searching method "
    "against LoRA, likewise. \"search\": max abs(p - 1/K) of its operation distribution per seed (uniform: 0); a "
    "search engaged when it took architecture steps and moved it at least 0.01.")


def control_pair(infos: dict[str, dict]) -> tuple[str, str] | None:
    """(control, reference) of the miniature's first question: the first control on the random backbone whose
    baseline ran too (decoder_only_random, decoder_only); None without one. `infos`: see frame.method_infos."""
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
        metric = select.get(base_name(label))
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
                row[f"{method} search: max abs(p - 1/K)"] = search[method].get(base_name(label), "")
        rows.append(row)
    return pd.DataFrame(rows)
