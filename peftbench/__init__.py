"""peftbench: benchmark parameter-efficient fine-tuning methods for the Segment Anything Model."""

from .data import dataset_cards
from .methods import adapt, method_specs

__all__ = ["adapt", "dataset_cards", "method_specs"]
__version__ = "0.1.0"
