"""Run records: one JSON per (dataset, method, seed), written atomically, with everything needed to reproduce it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from .paths import ROOT

PACKAGES = ["torch", "torchvision", "segment-anything", "timm", "numpy", "pandas", "scikit-image", "pillow", "peftbench"]


def record_path(out: Path, dataset: str, method: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / method / f"seed{seed}.json"


def config_hash(config: dict) -> str:
    """Stable hash of the resolved config; a record whose hash differs is stale and is rerun."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None if it is absent or unreadable (a crashed writer never leaves one)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(path: Path, config: dict) -> bool:
    record = read_record(path)
    return record is not None and record.get("config_hash") == config_hash(config)


def load_records(out: Path) -> list[dict]:
    return [r for p in sorted((Path(out) / "runs").glob("*/*/seed*.json")) if (r := read_record(p)) is not None]


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
