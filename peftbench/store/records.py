"""Run records: one JSON per (dataset, method, seed), written atomically, with everything needed to reproduce it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from .layout import run_file
from .schema import record_problem

# 2: a record carries `method_info` (MethodSpec.info(): group, lineage, ablation, baseline, ...) beside its config,
# so that reports read what a method is from the record, never from today's registry. 1 (no "schema" key): it does
# not; load_records migrates it (_schema1_method_info).
RECORD_SCHEMA = 2


def record_path(out: Path, dataset: str, method: str, seed: int) -> Path:
    return run_file(out, "runs", dataset, method, seed, ".json")


# Settings that change how fast a run goes, not its numbers (beyond float rounding, tested): recorded in the config,
# left out of its identity, so a record made with another of them is the same result and is kept and reused.
SPEED_SETTINGS = ("attention", "checkpointing", "cache_embeddings", "cpu_workers", "threads_per_run")


def identity(config: dict) -> dict:
    """What determines a run's numbers: the resolved config less its SPEED_SETTINGS."""
    return {k: v for k, v in config.items() if k not in SPEED_SETTINGS}


def config_hash(config: dict) -> str:
    """Stable hash of the config's identity; a record with another hash holds another experiment's result."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dict as {dotted key: value}."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(old: dict, new: dict, most: int = 4) -> str:
    """'key: old -> new' for the identity keys (dotted paths) where two configs differ, the first `most` of them."""
    a, b = (_flat(json.loads(json.dumps(identity(c), default=str))) for c in (old, new))  # as stored: tuples -> lists
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    text = "; ".join(f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in keys[:most])
    return text + (f"; and {len(keys) - most} more" if len(keys) > most else "")


def record_and_problem(path: Path, loadable: bool = False) -> tuple[dict | None, str | None]:
    """(the record at `path` or None, why the file there is not a usable record or None). No file: (None, None);
    records are written atomically, so a crash never leaves half of one. A record with a missing or mistyped field
    (schema.record_problem; with `loadable`, also what load_run needs) is not usable: the reason names the field."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    except ValueError as err:
        return None, f"not valid JSON ({err})"
    if not (isinstance(record, dict) and {"method", "dataset", "seed", "metrics"} <= record.keys()):
        return None, "not a run record (no method, dataset, seed or metrics)"
    why = record_problem(record, loadable)
    return (None, f"not a usable run record ({why})") if why else (record, None)


def usable_record(path: Path) -> dict | None:
    """The record at `path`, or None if there is none or it is unusable (see record_and_problem)."""
    return record_and_problem(path)[0]


def is_complete(path: Path, config: dict) -> bool:
    record = usable_record(path)
    return record is not None and record.get("config_hash") == config_hash(config)


def record_paths(out: Path) -> list[Path]:
    return sorted((Path(out) / "runs").glob("*/*/seed*.json"))


def load_records(out: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every usable record under `out`/runs, each with its `method_info` (a schema-1 record's migrated); each file
    that is not one is left out, and `warn` is told its path and why (the field at fault). Where
    records of one (dataset, method) were made with different configs (e.g. some retrained with --replace --epochs 1),
    each is labelled with its differing settings, "lora [epochs=1]", so that no table cell averages two experiments;
    its method_info stays the method's, so reports read what a row is from there, never from its label."""
    records = []
    for path in record_paths(out):
        record, why = record_and_problem(path)
        if why and warn:
            warn(f"{path}: {why}; left out of the tables (its seed shows as missing)")
        if record is not None:
            records.append(_with_method_info(record))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for group in groups.values():
        flats = [{k: v for k, v in _flat(identity(r.get("config", {}))).items() if k != "seed"} for r in group]
        varying = sorted(k for k in set().union(*flats) if len({json.dumps(f.get(k), default=str) for f in flats}) > 1)
        for r, f in zip(group, flats) if varying else ():
            shown = [f"{k}={f.get(k)}" for k in varying[:3]] + ([f"config {config_hash(r.get('config', {}))[:8]}"]
                                                                 if varying[3:] else [])
            r["method"] += " [" + ", ".join(shown) + "]"
    return records


# Migration of schema-1 records: what the method registry said of their methods when they were written, frozen
# here (never read from today's registry, whose files may have changed since).
_SCHEMA1_ABLATIONS = {
    "nas_pc_lora_arch0": "Table 9", "nas_pc_lora_arch0_simultaneous": "Table 9", "nas_pc_lora_arch20": "Table 9",
    "nas_pc_lora_first_half": "Table 8", "nas_pc_lora_last_half": "Table 8",
    "nas_pc_lora_no_conv": "Table 6", "nas_pc_lora_no_pool": "Table 6", "nas_pc_lora_no_skip_zero": "Table 6",
    "nas_pc_lora_pc1": "Table D1",
    "nas_pc_lora_r6": "Table 7", "nas_pc_lora_r12": "Table 7", "nas_pc_lora_r24": "Table 7",
}
_SCHEMA1_BASELINES = {"nas_lora": "lora", "nas_pc_lora": "lora", "decoder_only_random": "decoder_only",
                      **dict.fromkeys(_SCHEMA1_ABLATIONS, "nas_pc_lora")}
_SCHEMA1_CONTROLS = {"decoder_only_random"}
_SCHEMA1_NON_PEFT_FAMILIES = {"full_ft"}
_SCHEMA1_LORA_FAMILIES = {"lora", "conv_lora", "dora", "vera", "nas_lora"}
_SCHEMA1_MERGE_KINDS = {"bitfit": "exact", "conv_lora": "none", "decoder_only": "exact", "dora": "exact",
                        "full_ft": "exact", "lora": "exact", "mona": "none", "nas_lora": "approximate",
                        "sam_adapter": "none", "vera": "exact", "vpt": "none"}


def _schema1_method_info(record: dict) -> dict:
    """A schema-1 record's method_info: its config's method name, family and backbone, and what the registry said
    of that method then (the frozen tables above). Its description was not recorded."""
    method = record.get("config", {}).get("method", {})
    name, family = method.get("name", record["method"]), method.get("family", "")
    return {"name": name, "family": family, "description": "",
            "group": "Non-PEFT" if family in _SCHEMA1_NON_PEFT_FAMILIES else "PEFT",
            "lineage": "lora" if family in _SCHEMA1_LORA_FAMILIES else family,
            "ablation": _SCHEMA1_ABLATIONS.get(name, ""), "baseline": _SCHEMA1_BASELINES.get(name, ""),
            "backbone": method.get("backbone", "pretrained"), "control": name in _SCHEMA1_CONTROLS,
            "merge_kind": _SCHEMA1_MERGE_KINDS.get(family, "none")}


def _with_method_info(record: dict) -> dict:
    """`record`, given its method_info when it is of schema 1 (no "schema" key)."""
    if record.get("schema", 1) == 1:
        record["method_info"] = _schema1_method_info(record)
    return record
