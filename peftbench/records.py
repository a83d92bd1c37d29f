"""Run records: one JSON per (dataset, method, seed), written atomically, with everything needed to reproduce it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO

from .paths import ROOT
from .schema import record_problem

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


# What a write fails with when the disk or the folder will not take it (a full disk, a quota, a read-only or forbidden
# folder): the CLI reports it in one line, naming the file.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

# atomic_output's temporaries, as tempfile names them: ".<target name>.<8 random characters>.tmp" beside the target.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# A temporary is a killed writer's only when no process holds its lock and it was not touched for this long; the
# delay covers the instant between creating a temporary and locking it, and file systems without locks.
TEMPORARY_GRACE_S = 60.0
_LIVE: set[str] = set()  # this process's temporaries being written (on NFS its threads do not exclude each other)
_SWEPT: set[str] = set()  # folders this process has cleared of leftovers already


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object to write `path` through: a temporary file in the same folder, fsynced and renamed over `path`
    when the block ends, so readers see the old file or the new one, never half of one. On any error (a full disk,
    a read-only folder, an interrupt) the temporary file is removed, `path` is left as it was, and an OSError names
    `path` (also where a library wraps the disk's error in its own, as torch.save does). The file gets the
    permissions any program's would (0666 less the umask; mkstemp's are 0600). A killed writer's temporaries in
    the folder are removed by the next write there (see remove_stale_temporaries)."""
    path = Path(path)
    with writing(path), locked_temporary(path.parent, path.name) as (fd, tmp):
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, closefd=False) as f:  # the fd, and its lock, outlive the rename
            yield f
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """The block's errors as write errors naming `path` (see write_error); any other error as it is."""
    try:
        yield
    except Exception as err:
        error = write_error(err, path)
        if error is None:
            raise
        raise error from None


@contextmanager
def locked_temporary(folder: Path, name: str, directory: bool = False) -> Iterator[tuple[int, Path]]:
    """(an open fd, the path) of a new temporary file, or folder with `directory`, ".<name>.<random>.tmp" in
    `folder`, under an exclusive lock while the block runs, so that no process's remove_stale_temporaries takes
    it; whatever of it is left when the block ends (the block did not move it away) is removed. Before the first
    one in a folder, this process removes that folder's stale temporaries."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if str(folder) not in _SWEPT:
        remove_stale_temporaries(folder)
        _SWEPT.add(str(folder))
    if directory:
        tmp = tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        fd = os.open(tmp, os.O_RDONLY)
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    _LIVE.add(tmp)
    try:
        _lock(fd)
        yield fd, Path(tmp)
    finally:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            Path(tmp).unlink(missing_ok=True)
        _LIVE.discard(tmp)
        os.close(fd)


def _lock(fd: int) -> None:
    """An exclusive lock on `fd`, held until it is closed (the kernel releases it if this process dies). A file
    system without locks refuses remove_stale_temporaries' lock too, so its temporaries are never removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed writers left in `folder` (and below it, with `recursive`): only files and
    folders named exactly as locked_temporary names them, that no live process holds the lock of (its writer is
    gone: the kernel released it) and untouched for TEMPORARY_GRACE_S. Best effort: whatever cannot be checked
    or removed is left. Returns what was removed."""
    folder = Path(folder)
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    try:
        candidates = [p for p in found if _TEMPORARY.fullmatch(p.name) and str(p) not in _LIVE]
    except OSError:
        return []
    return [path for path in candidates if _remove_if_abandoned(path)]


def _remove_if_abandoned(path: Path) -> bool:
    """Remove the temporary `path` if its writer is gone (see remove_stale_temporaries); True if it did."""
    try:
        is_dir = path.is_dir() and not path.is_symlink()
        fd = os.open(path, (os.O_RDONLY if is_dir else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone meanwhile, a link, not ours to open
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer holds it, or without locks
        if time.time() - os.fstat(fd).st_mtime < TEMPORARY_GRACE_S:
            return False
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_error(err: Exception, path: Path) -> OSError | None:
    """The OSError naming `path` to raise for `err`, an error writing it; None where `err` is no write error (raise
    it as it is). An OSError is renamed; another exception stands for the disk's error where it wraps one of
    WRITE_ERRORS: torch.save's RuntimeError ("unexpected pos ...") holds it as its context, a Rust writer's
    (safetensors) message ends in "(os error 28)"."""
    if isinstance(err, OSError):
        return OSError(err.errno, err.strerror, str(path))
    cause, seen = err.__cause__ or err.__context__, 0
    while cause is not None and seen < 8:  # the chain of exceptions it was raised during or from
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRORS:
            return OSError(cause.errno, cause.strerror, str(path))
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found and int(found.group(1)) in WRITE_ERRORS:
        return OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(path))
    return None


def file_mode() -> int:
    """The permissions any program's new file gets: 0666 less the umask."""
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return 0o666 & ~mask


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


def load_record(path: Path, loadable: bool = False) -> tuple[dict | None, str | None]:
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


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None if there is none or it is unusable (see load_record)."""
    return load_record(path)[0]


def is_complete(path: Path, config: dict) -> bool:
    record = read_record(path)
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
        record, why = load_record(path)
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
