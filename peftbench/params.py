"""Trainable-parameter counts per method on the official architectures, built on the meta device in seconds."""

from __future__ import annotations

import pandas as pd
import torch

from .backbone.sam import build_sam
from .backbone.segmenter import SamSegmenter
from .methods import resolve_methods
from .training.train import count_params


def method_params(sam_name: str, method_name: str, num_classes: int = 1) -> dict:
    """count_params of the method attached to SAM `sam_name`, built on the meta device (no memory, no init)."""
    (spec,) = resolve_methods(method_name)
    with torch.device("meta"):
        model = SamSegmenter(build_sam(sam_name), num_classes)
        spec.build().attach(model)
    return count_params(model, sam_name)


def count_method(sam_name: str, method_name: str, num_classes: int = 1) -> int:
    return method_params(sam_name, method_name, num_classes)["trainable"]


def params_table(sam_name: str, methods: str = "all", num_classes: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """(one row per method, notes explaining where ours differ from the paper's Table 1 by more than 1 %).

    The paper's column is shown for its setting only: vit_h, binary segmentation.
    """
    rows, notes = [], []
    paper_setting = sam_name == "vit_h" and num_classes == 1
    for spec in resolve_methods(methods):
        p = method_params(sam_name, spec.name, num_classes)
        row = {"method": spec.name, "trainable": p["trainable"], "Params(M)": round(p["trainable"] / 1e6, 3),
               "Ratio(%)": round(p["ratio_percent"], 2), "sam": sam_name, "sam_total_M": round(p["sam_total"] / 1e6, 2)}
        paper_m = spec.paper.get("params_m")
        if paper_setting:
            row["paper Params(M)"] = paper_m if paper_m is not None else "-"
            if paper_m and abs(p["trainable"] / 1e6 - paper_m) > 0.01 * paper_m:
                notes.append(f"{spec.name}: {spec.paper.get('params_note', 'differs from the paper')}")
        rows.append(row)
    return pd.DataFrame(rows), notes
