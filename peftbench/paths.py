"""Where the registries live: `methods/` and `datasets/` at the project root (override with PEFTBENCH_ROOT)."""

import os
from pathlib import Path

ROOT = Path(os.environ.get("PEFTBENCH_ROOT", Path(__file__).resolve().parent.parent))
METHODS_DIR = ROOT / "methods"
DATASETS_DIR = ROOT / "datasets"
