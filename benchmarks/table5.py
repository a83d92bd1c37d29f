"""Our `peftbench bench` figures beside the paper's Table 5 (one V100, ISIC 2017, its harness).

    python benchmarks/table5.py benchmarks/results/bench_vit_b_1024px_b1_fp16_cuda.json

The paper counts a training iteration as one micro-batch of one image, so its "iter/s" is images/s; we compare
images/s (training and inference) and, because absolute speed depends on the device, each method's ratio to
LoRA on either side; for a searching method (NAS-PC-LoRA) also the search phase (architecture + weight update)
against its weight-only phase. Writes <bench file stem>_vs_table5.md next to the bench file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from peftbench.report import REFERENCE_FILE


def compare(bench: dict) -> pd.DataFrame:
    rows = pd.DataFrame(bench["rows"])
    first = bench["settings"]["timed_settings"][0]  # a bench of several settings: compare its first
    ours = rows[(rows[list(first)] == pd.Series(first)).all(axis=1)].set_index("method")
    paper = pd.read_csv(REFERENCE_FILE)
    paper = paper[paper["table"] == "Table 5"].pivot_table(index="method", columns="metric", values="value",
                                                            aggfunc="first").astype(float)
    methods = [m for m in paper.index if m in ours.index]
    table = pd.DataFrame({
        "train img/s (ours)": ours.loc[methods, "train_img_per_s"],
        "train img/s (paper)": paper.loc[methods, "train_iter_per_s"],
        "train vs LoRA (ours)": ours.loc[methods, "train_img_per_s"] / ours.loc["lora", "train_img_per_s"],
        "train vs LoRA (paper)": paper.loc[methods, "train_iter_per_s"] / paper.loc["lora", "train_iter_per_s"],
        "infer img/s (ours)": ours.loc[methods, "infer_img_per_s"],
        "infer img/s (paper)": paper.loc[methods, "infer_img_per_s"],
        "infer vs LoRA (ours)": ours.loc[methods, "infer_img_per_s"] / ours.loc["lora", "infer_img_per_s"],
        "infer vs LoRA (paper)": paper.loc[methods, "infer_img_per_s"] / paper.loc["lora", "infer_img_per_s"],
    })
    # The search phase (architecture + weight update) against the weight-only phase: the paper's 25.2 vs 21.1
    # min/epoch rows for NAS-PC-LoRA; ours the search iteration against the weight step.
    searched = [m for m in methods if pd.notna(ours.loc[m, "search_ms"])]
    table["search vs weight phase (ours)"] = (ours.loc[searched, "search_ms"] / ours.loc[searched, "train_ms"]) \
        .reindex(methods)
    table["search vs weight phase (paper)"] = (paper["train_min_per_epoch_search"] / paper["train_min_per_epoch"]) \
        .reindex(methods)
    table.index.name = "method"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a JSON file written by `peftbench bench`")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())
    s, d = bench["settings"], bench["device"]
    table = compare(bench)
    caveat = ("" if d["type"] == "cuda" else
              " This run is on a CPU at a reduced size: only the ratio columns are comparable, and loosely.")
    first = s["timed_settings"][0]
    text = (f"# Table 5 beside peftbench bench (SAM {s['sam']}, {s['image_size']} px, batch {s['batch']}, "
            f"{first['precision']}, attention {first['attention']}, checkpointing "
            f"{'on' if first['checkpointing'] else 'off'}, {d['name']})\n\n"
            f"Paper: one V100, ISIC 2017, the Conv-LoRA harness, training iterations of one image. Ours: random inputs, "
            f"the training step of `peftbench bench` (images/s = batch / step time), inference of the deployed model "
            f"(merged where the merge is exact).{caveat}\n\n" + table.to_markdown(floatfmt=".3g") + "\n")
    out = args.bench.with_name(args.bench.stem + "_vs_table5.md")
    out.write_text(text)
    print(text + f"\n-> {out}")


if __name__ == "__main__":
    main()
