"""SHA-256, the one place for every checksum peftbench computes or checks: dataset archives against their card
(data/prepare.py), the --checkpoint a run records (runner.py) and a loaded run checks (runs.py), a run's kept
trained state (runs.py), the shipped tiny SAM weights (sam.py, pretrain.py). A leaf module, so none of them imports
another for it."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (hashlib.file_digest): a multi-gigabyte archive or checkpoint
    never sits in memory whole."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cached_file_sha256(path: str | Path) -> str:
    """file_sha256, computed once per process while the file is unchanged (same size and modification time): every
    run of a grid records its SAM checkpoint's (2.5 GB for vit_h), and a report loads many runs of one checkpoint."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes already in memory (a file about to be written: no second read of it)."""
    return hashlib.sha256(data).hexdigest()
