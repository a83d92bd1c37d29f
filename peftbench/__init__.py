"""peftbench: benchmark parameter-efficient fine-tuning methods for the Segment Anything Model."""

import os

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads: so before any torch import here).
# Spinning threads steal the cores of parallel runs and of other users of a shared machine (peftbench/cpu.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data import dataset_cards
from .methods import adapt, method_specs
from .runs import load_run

__all__ = ["adapt", "dataset_cards", "load_run", "method_specs"]
__version__ = "0.1.0"
