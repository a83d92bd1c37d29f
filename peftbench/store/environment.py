"""What a run record stores of the machine: Python, platform, package versions and the git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from ..paths import ROOT

PACKAGES = ["torch", "torchvision", "segment-anything", "timm", "numpy", "pandas", "scikit-image", "pillow", "peftbench"]


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
