"""Where the registries (methods/, datasets/) and the prepared datasets live.

A checkout, or an editable install of one, uses the checkout's own methods/ and datasets/. A regular install (a
wheel) carries a copy of both inside the package, peftbench/registry/ (setup.py copies them at build time), and
prepares real datasets under ~/.cache/peftbench/datasets (PEFTBENCH_DATA overrides, as does --data-root).
PEFTBENCH_ROOT overrides the registries: a folder holding methods/ and datasets/.
"""

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
IN_CHECKOUT = (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "methods").is_dir()
ROOT = Path(os.environ.get("PEFTBENCH_ROOT") or (CHECKOUT if IN_CHECKOUT else PACKAGE / "registry"))
METHODS_DIR = ROOT / "methods"
DATASETS_DIR = ROOT / "datasets"
# Prepared real datasets: beside the cards in a checkout (as before), in the user's cache for an installed package
# (never inside site-packages).
DATA_ROOT = Path(os.environ.get("PEFTBENCH_DATA") or (
    CHECKOUT / "datasets" if IN_CHECKOUT else Path.home() / ".cache" / "peftbench" / "datasets"))
