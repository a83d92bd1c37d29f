"""What a usable run record holds: every field a reader of records (the report, the figures, a grid's skip check,
`load_run`, `export`, `predict`) uses, with its type. A record from someone else's results folder is data, never
trusted: `record_problem` names the first field that is missing or of the wrong type, and every reader skips (or,
asked for that one record, refuses) such a record with that reason, instead of failing half-way with a traceback.

Names that become parts of paths (`dataset`, `method`, the kept state's file) are checked too: a record never makes
peftbench read or write outside its results folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .layout import run_file
from .names import name_problem

SHA256 = re.compile(r"[0-9a-f]{64}")
ABLATION = re.compile(r"([A-Za-z0-9][A-Za-z0-9 ._-]*)?")  # "Table 7": it names a report table's file

Check = Callable[[object], str]  # "" when the value is fine, else what is wrong with it


def _number(value: object) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool)  # NaN too: a metric undefined for a run
    return "" if ok or value is None else f"expected a number, got {value!r}"


def _count(value: object) -> str:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return "" if ok else f"expected a non-negative integer, got {value!r}"


def _text(value: object) -> str:
    return "" if isinstance(value, str) else f"expected a string, got {value!r}"


def _optional_text(value: object) -> str:
    return "" if value is None else _text(value)


def _flag(value: object) -> str:
    return "" if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _one_of(*allowed: str) -> Check:
    return lambda value: "" if value in allowed else f"expected one of {', '.join(allowed)}, got {value!r}"


def _pattern(regex: re.Pattern, what: str) -> Check:
    return lambda value: "" if isinstance(value, str) and regex.fullmatch(value) else f"expected {what}, got {value!r}"


def _timing_value(value: object) -> str:  # numbers, and the model inference ran ("merged" / "unmerged")
    return "" if isinstance(value, str) else _number(value)


def _numbers(value: object) -> str:
    if not isinstance(value, list):
        return f"expected a list of numbers, got {type(value).__name__}"
    return next((f"item {i}: {why}" for i, v in enumerate(value) if (why := _number(v))), "")


# A field's layout: a Check for a leaf; a dict {key: layout} of required keys (a key ending in "?" is optional);
# ("each", layout): a dict whose every value has that layout; ("items", layout): a list of such items;
# ("nullable", layout): null or that layout.
METHOD_INFO = {"name": _text, "family": _text, "group": _text, "lineage": _text,
               "ablation": _pattern(ABLATION, "a paper table such as 'Table 7'"),
               "baseline": _text, "backbone": _text, "control": _flag, "merge_kind": _text}
RECORD = {  # what every reader needs
    "method": name_problem, "dataset": name_problem, "seed": _count,
    "metrics": ("each", ("each", _number)),
    "config": {"dataset": {"kind": _one_of("binary", "multiclass")},
               "method?": {"name": _text, "family": _text, "backbone?": _text}},  # schema 1: may lack it
    "adapter?": ("nullable", {"file": _text, "sha256": _pattern(SHA256, "a sha256 in hex")}),
    "merge?": {"evaluated_model?": _text},
    "config_hash?": _text,
}
REPORTED = {  # what the tables and figures read besides
    "timing": ("each", _timing_value),
    "params": {"trainable": _count, "ratio_percent": _number},
    "selection": {"metric": _text},
    "history": ("items", {"epoch": _count, "val": ("each", _number)}),
    "device": {"name": _text},
    "per_image?": ("each", ("each", _numbers)),
    "statistics?": ("nullable", {"search_engaged?": _flag, "max_abs_deviation?": _number,
                                 "operations?": ("items", _text), "distribution?": _numbers}),  # null: no search
    "milestones?": ("each", _count),
    "metric_definitions?": ("each", {"definition": _text, "threshold": _text, "resolution": _text}),
}
LOADABLE = {  # what `load_run` (and so export and predict) reads besides
    "config": {"sam": _text, "checkpoint?": _optional_text, "checkpoint_sha256?": _optional_text,
               "dataset": {"num_classes?": _count},
               # name: as the run filed its files (reports may label record["method"] by config)
               "method": {"name": name_problem, "family": _text, "hparams": ("each", lambda v: ""),
                          "train?": ("each", lambda v: "")}}}


def _problem(value: object, layout, where: str) -> str:
    """"<field>: <what is wrong>" for the first field of `value` that does not fit `layout`; "" when all fit."""
    if callable(layout):
        why = layout(value)
        return f"{where}: {why}" if why else ""
    if isinstance(layout, tuple):
        kind, inner = layout
        if kind == "nullable":
            return "" if value is None else _problem(value, inner, where)
        expected = dict if kind == "each" else list
        if not isinstance(value, expected):
            return f"{where}: expected {'an object' if expected is dict else 'a list'}, got {type(value).__name__}"
        items = value.items() if kind == "each" else enumerate(value)
        return next((why for key, item in items if (why := _problem(item, inner, f"{where}.{key}"))), "")
    if not isinstance(value, dict):
        return f"{where}: expected an object, got {type(value).__name__}"
    for key, inner in layout.items():
        name = key.removesuffix("?")
        if name not in value:
            if key.endswith("?"):
                continue
            return f"{where}.{name}: missing".lstrip(".")
        if why := _problem(value[name], inner, f"{where}.{name}".lstrip(".")):
            return why
    return ""


def record_problem(record: object, loadable: bool = False) -> str:
    """"" when `record` is a run record that the tables and figures can use (with `loadable`: that `load_run` can
    rebuild), else "<field>: <why>", e.g. "seed: expected a non-negative integer, got 'x'"."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    schema2 = {"method_info": METHOD_INFO} if record.get("schema", 1) != 1 else {}
    why = _problem(record, {**RECORD, **({} if loadable else {**REPORTED, **schema2})}, "")
    if why or not loadable:
        return why
    return _problem(record, LOADABLE, "") or _files_problem(record)


def _files_problem(record: dict) -> str:
    """The kept state must be the one file the layout gives this run, so that no record names a file elsewhere; a
    SAM checkpoint the record names is only read with the sha256 it must have."""
    config = record["config"]
    if config.get("checkpoint") and not config.get("checkpoint_sha256"):
        return "config.checkpoint_sha256: missing (the record names a checkpoint file without its sha256)"
    saved = record.get("adapter")
    expected = run_file(Path(), "adapters", record["dataset"], config["method"]["name"], record["seed"],
                        ".safetensors").as_posix()
    if saved and saved["file"] != expected:
        return f"adapter.file: {saved['file']!r} is not this run's state file {expected!r}"
    return ""
