"""Trainable-parameter counts per method on the official architectures, built on the meta device in seconds."""

from __future__ import annotations

import pandas as pd
import torch

from .methods import resolve_methods
from .sam import build_sam, official_param_count
from .segmenter import SamSegmenter


def count_method(sam_name: str, method_name: str, num_classes: int = 1) -> int:
    (spec,) = resolve_methods(method_name)
    with torch.device("meta"):
        model = SamSegmenter(build_sam(sam_name), num_classes)
        spec.build().attach(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def params_table(sam_name: str, methods: str = "all", num_classes: int = 1) -> pd.DataFrame:
    total = official_param_count(sam_name)
    rows = []
    for spec in resolve_methods(methods):
        trainable = count_method(sam_name, spec.name, num_classes)
        rows.append({"method": spec.name, "trainable": trainable, "Params(M)": round(trainable / 1e6, 3),
                     "Ratio(%)": round(100 * trainable / total, 2)})
    return pd.DataFrame(rows).assign(sam=sam_name, sam_total_M=round(total / 1e6, 2))
