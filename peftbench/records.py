"""Run records: one JSON per (dataset, method, seed), written atomically, with everything needed to reproduce it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO

from .paths import ROOT

PACKAGES = ["torch", "torchvision", "segment-anything", "timm", "numpy", "pandas", "scikit-image", "pillow", "peftbench"]


# 2: a record carries `method_info` (MethodSpec.info(): group, lineage, ablation, baseline, ...) beside its config,
# so that reports read what a method is from the record, never from today's registry. 1 (no "schema" key): it does
# not; load_records migrates it (_schema1_method_info).
RECORD_SCHEMA = 2


def record_path(out: Path, dataset: str, method: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / method / f"seed{seed}.json"


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


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def environment() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": package_versions(),
            "git": git_commit()}


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object to write `path` through: a temporary file in the same folder, fsynced and renamed over `path`
    when the block ends, so readers see the old file or the new one, never half of one. On any error (a full disk,
    a read-only folder, an interrupt) the temporary file is removed, `path` is left as it was, and an OSError names
    `path`. The file gets the permissions any program's would (0666 less the umask; mkstemp's are 0600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text)


def write_csv_atomic(path: Path, frame) -> None:
    """A pandas DataFrame as CSV (no index), written atomically."""
    with atomic_output(path) as f:
        frame.to_csv(f, index=False)


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_output(path) as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)


def load_record(path: Path) -> tuple[dict | None, str | None]:
    """(the record at `path` or None, why the file there is not a usable record or None). No file: (None, None);
    records are written atomically, so a crash never leaves half of one."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    except ValueError as err:
        return None, f"not valid JSON ({err})"
    return (record, None) if _is_record(record) else (None, "not a run record (no method, dataset, seed or metrics)")


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None if there is none or it is unusable (see load_record)."""
    return load_record(path)[0]


def record_problem(path: Path) -> str | None:
    """Why the file at `path` is not a usable record; None if it is one or there is none (see load_record)."""
    return load_record(path)[1]


def _is_record(data) -> bool:
    return isinstance(data, dict) and {"method", "dataset", "seed", "metrics"} <= data.keys()


def is_complete(path: Path, config: dict) -> bool:
    record = read_record(path)
    return record is not None and record.get("config_hash") == config_hash(config)


def record_paths(out: Path) -> list[Path]:
    return sorted((Path(out) / "runs").glob("*/*/seed*.json"))


def unusable_records(out: Path) -> dict[Path, str]:
    """Record files under `out`/runs that cannot be used, with the reason (see record_problem)."""
    return {p: why for p in record_paths(out) if (why := record_problem(p))}


def load_records(out: Path) -> list[dict]:
    """Every usable record under `out`/runs, each with its `method_info` (a schema-1 record's migrated). Where
    records of one (dataset, method) were made with different configs (e.g. some retrained with --replace --epochs 1),
    each is labelled with its differing settings, "lora [epochs=1]", so that no table cell averages two experiments;
    its method_info stays the method's, so reports read what a row is from there, never from its label."""
    records = [_with_method_info(r) for p in record_paths(out) if (r := read_record(p)) is not None]
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


def set_label(dataset: str, test: str) -> str:
    """How tables name a test set: the dataset, or dataset/test when a card has several (e.g. polyp/kvasir)."""
    return dataset if test == "test" else f"{dataset}/{test}"


SEARCH_MARK = "‡"
SEARCH_NOTE = ("‡ the architecture search did not engage in k of n seeds (no architecture step, or the operation "
               "distribution within 0.01 of uniform): such a run is LoRA with a fixed, near-uniform operation mixture, "
               "not a NAS result.")


def unsearched(records: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(method, dataset) -> (seeds whose architecture search did not engage, seeds), for the searching methods
    (records whose statistics say `search_engaged`) with at least one such seed."""
    counts: dict[tuple[str, str], list[int]] = {}
    for r in records:
        engaged = (r.get("statistics") or {}).get("search_engaged")
        if engaged is not None:
            counts.setdefault((r["method"], r["dataset"]), []).append(not engaged)
    return {key: (sum(flags), len(flags)) for key, flags in counts.items() if any(flags)}
