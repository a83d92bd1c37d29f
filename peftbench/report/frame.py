"""The records as the layouts read them: one long frame of test values and timings, per-image values, each method's
method_info and the metric definitions, gathered once (`Frame`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .search import unsearched

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


def per_image(records: list[dict]) -> dict[tuple, dict[int, np.ndarray]]:
    """(method, dataset label, metric) -> {seed: per-image values (%) in test-set order}."""
    out: dict[tuple, dict[int, np.ndarray]] = {}
    for r in records:
        for test, values in r.get("per_image", {}).items():
            label = set_label(r["dataset"], test)
            for metric, v in values.items():
                out.setdefault((r["method"], label, metric), {})[r["seed"]] = 100.0 * np.asarray(v, dtype=float)
    return out


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


def base_name(label: str) -> str:
    """The dataset of a column label "dataset/test set"."""
    return label.split("/")[0]


@dataclass
class Frame:
    """What every layout builder reads: the records (as records.load_records returns them), their long_frame `df`,
    per_image values, method_infos, the (method, dataset) -> (k, n) seeds whose search did not engage
    (search.unsearched), the seeds asked (all seeds any record has), metric_definitions, and the paper's published
    numbers (reference/paper_results.csv as strings) when `--reference` asked for them, else None."""

    records: list[dict]
    reference: pd.DataFrame | None = None
    df: pd.DataFrame = field(init=False)
    images: dict = field(init=False)
    infos: dict[str, dict] = field(init=False)
    not_engaged: dict[tuple[str, str], tuple[int, int]] = field(init=False)
    seeds_asked: int = field(init=False)
    definitions: dict[tuple[str, str], str] = field(init=False)
    cards: dict[str, dict] = field(init=False)

    def __post_init__(self) -> None:
        self.df, self.images = long_frame(self.records), per_image(self.records)
        self.infos, self.not_engaged = method_infos(self.records), unsearched(self.records)
        self.seeds_asked = len({r["seed"] for r in self.records})
        self.definitions = metric_definitions(self.records)
        self.cards = {r["dataset"]: r["config"]["dataset"] for r in self.records}  # dataset -> its card (the last)

    def card(self, label: str) -> dict:
        """The card (config.dataset) of the dataset of a column label "dataset/test set"."""
        return self.cards[base_name(label)]

    def main_methods(self) -> list[str]:
        """The methods of the main comparison (no ablation variant), in row order."""
        return [m for m, info in self.infos.items() if not info["ablation"]]


def set_label(dataset: str, test: str) -> str:
    """How tables name a test set: the dataset, or dataset/test when a card has several (e.g. polyp/kvasir)."""
    return dataset if test == "test" else f"{dataset}/{test}"
