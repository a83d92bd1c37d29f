from .cards import DatasetCard, dataset_cards, resolve_dataset
from .loading import SegmentationDataset, build_splits

__all__ = ["DatasetCard", "SegmentationDataset", "build_splits", "dataset_cards", "resolve_dataset"]
