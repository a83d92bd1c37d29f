"""SHA-256 of a file, the one helper for every checksum peftbench computes or checks: dataset archives against their
card (data/prepare.py), the --checkpoint a run records (runner.py), the shipped tiny SAM weights (sam.py,
pretrain.py). A leaf module, so none of them imports another for it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (hashlib.file_digest): a multi-gigabyte archive or checkpoint
    never sits in memory whole."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
