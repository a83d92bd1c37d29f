"""Dataset cards: one TOML per registered dataset in datasets/, or a card built on the fly for a folder / CSV.

A card says what the task is (binary or multi-class), where the samples come from, its splits and test sets,
which metrics are reported, which validation metric selects the checkpoint, and the default epochs and lr.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..paths import DATASETS_DIR

BINARY_METRICS = ["iou", "dice", "acc", "ber"]
MULTICLASS_METRICS = ["acc", "miou"]


@dataclass
class DatasetCard:
    name: str
    kind: str  # "binary" or "multiclass"
    source: str  # "synthetic", "folder" or "csv"
    description: str = ""
    num_classes: int = 1
    metrics: list[str] = field(default_factory=lambda: list(BINARY_METRICS))
    select_metric: str = "iou"
    epochs: int = 30  # Conv-LoRA harness defaults
    lr: float = 1e-4
    path: str = ""  # folder or CSV for file-backed datasets
    generator: str = ""  # synthetic only
    size: int = 64  # synthetic only: generated resolution
    seed: int = 0  # synthetic only: generation seed (fixed per card, independent of the run seed)
    splits: dict = field(default_factory=dict)  # synthetic only: samples per split

    def as_dict(self) -> dict:
        return asdict(self)


def _card_from_toml(path: Path) -> DatasetCard:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML ({err})") from None
    train = data.pop("train", {})
    data.setdefault("name", path.stem)
    try:
        card = DatasetCard(**data, **train)
    except TypeError as err:
        raise UserError(f"{path}: {err}") from None
    if card.kind not in ("binary", "multiclass"):
        raise UserError(f"{path}: kind must be 'binary' or 'multiclass', not {card.kind!r}")
    return card


def dataset_cards(directory: Path = DATASETS_DIR) -> dict[str, DatasetCard]:
    """All registered dataset cards, by name, sorted."""
    return {p.stem: _card_from_toml(p) for p in sorted(directory.glob("*.toml"))}


def resolve_dataset(arg: str, data_root: Path | None = None) -> DatasetCard:
    """A --datasets entry: a registered name, or a folder / CSV manifest path (relative to --data-root if given)."""
    cards = dataset_cards()
    if arg in cards:
        card = cards[arg]
        if card.source != "synthetic" and data_root is not None:
            card.path = str(Path(data_root) / Path(card.path).name)
        return card
    path = Path(arg)
    if data_root is not None and not path.exists():
        path = Path(data_root) / arg
    if path.exists():
        from .files import card_for_path  # deferred: reading masks to infer the task costs I/O

        return card_for_path(path)
    raise UserError(
        f"--datasets: {arg!r} is neither a registered dataset ({', '.join(cards)}) nor an existing folder or CSV file"
    )
