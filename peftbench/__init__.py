"""peftbench: benchmark parameter-efficient fine-tuning methods for the Segment Anything Model.

`import peftbench` (and so `import peftbench.errors`, `peftbench --help`) is light: the public API below is
loaded on first use (a module-level `__getattr__`), so torch and segment_anything load only when a command or a
caller needs them. `peftbench.adapt`, `peftbench.load_run`, `peftbench.method_specs` and `peftbench.dataset_cards`
work as before; tests/test_imports.py checks that the light paths stay light.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads: so before any torch import, which
# the lazy attributes below guarantee: nothing here imports torch, and every peftbench module runs this first).
# Spinning threads steal the cores of parallel runs and of other users of a shared machine (peftbench/grid/cpu.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:  # for type checkers and editors; never runs
    from .data import dataset_cards
    from .methods import adapt, method_specs
    from .training.runs import load_run

__all__ = ["adapt", "dataset_cards", "load_run", "method_specs"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The public API, imported on first access and then kept as a plain attribute of the package."""
    # Explicit `from ... import` statements (not importlib strings), so tests/test_imports.py's graph sees them.
    if name == "dataset_cards":
        from .data import dataset_cards as value
    elif name == "adapt":
        from .methods import adapt as value
    elif name == "method_specs":
        from .methods import method_specs as value
    elif name == "load_run":
        from .training.runs import load_run as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
