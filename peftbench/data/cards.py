"""Dataset cards: one TOML per registered dataset in datasets/, or a card built on the fly for a folder / CSV.

A card says what the task is (binary or multi-class), where the samples come from, its splits and test sets,
which metrics are reported, which validation metric selects the checkpoint, and the default epochs and lr.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ..errors import UserError
from ..paths import DATA_ROOT, DATASETS_DIR
from ..scoring.metrics import spec
from ..store.names import checked_number, safe_name
from .files import read_manifest
from .synthetic import GENERATORS

BINARY_METRICS = ["iou", "dice", "acc", "ber"]
MULTICLASS_METRICS = ["acc", "miou"]
LOSSES = ("bce_dice", "structure_loss", "balanced_bce")  # binary losses; multi-class always uses multiclass_loss


Kind = Literal["binary", "multiclass"]
Source = Literal["synthetic", "prepared", "files"]


@dataclass
class DatasetCard:
    """One benchmark. `metrics` are the paper's table columns for it; `extra_metrics` are recorded too (other tables).

    Sources: "synthetic" (generated in memory), "prepared" (a registered real dataset that `peftbench prepare`
    writes to <data root>/<name> in the Conv-LoRA CSV layout), "files" (an ad-hoc folder or CSV manifest).
    """

    name: str
    kind: Kind
    source: Source
    description: str = ""
    analogue_of: str = ""  # synthetic only: the real card it stands in for
    num_classes: int = 1
    classes: list[str] = field(default_factory=list)  # multi-class: class names in index order
    multiclass_protocol: str = "trans10k_v2"  # or "trans10k_v1" (background excluded from Acc/mIoU, adds MAE/mBER)
    metrics: list[str] = field(default_factory=lambda: list(BINARY_METRICS))
    extra_metrics: list[str] = field(default_factory=list)
    select_metric: str = "iou"
    f_beta2: float = 1.0  # beta^2 of the weighted F-measure
    test_sets: list[str] = field(default_factory=list)  # several named test sets; empty: one set named "test"
    epochs: int = 30  # Conv-LoRA harness defaults
    lr: float = 1e-4
    loss: str = "bce_dice"  # the paper's segmentation loss (Appendix A)
    path: str = ""  # file-backed datasets: the prepared folder, folder or CSV
    split_seed: int = 0  # prepared only: seed of a validation split carved from train
    sources: list[dict] = field(default_factory=list)  # prepared only: where `peftbench prepare` gets the data
    paper: dict = field(default_factory=dict)  # prepared only: the paper's description (Appendix B split sizes)
    excluded: list[dict] = field(default_factory=list)  # bad pairs left out with --skip-bad (paths relative to path)
    binarize: bool = False  # files only (--binarize): binary masks with other values than 0/255 thresholded at 128
    generator: str = ""  # synthetic only
    size: int = 64  # synthetic only: generated resolution
    seed: int = 0  # synthetic only: generation seed (fixed per card, independent of the run seed)
    splits: dict = field(default_factory=dict)  # synthetic only: samples per split (test: per test set)

    def as_dict(self) -> dict:
        """The fields that decide a run's numbers (what run configs hold and hash): not the description, the
        paper's notes or the download sources, so recording a checksum in a card keeps every finished run."""
        return {k: v for k, v in asdict(self).items() if k not in ("description", "sources", "paper")}

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets, as run records key them."""
        return list(self.test_sets) or ["test"]

    @property
    def base_dir(self) -> str:
        """The folder manifest paths are relative to (a CSV manifest's folder)."""
        return self.path if Path(self.path).is_dir() else str(Path(self.path).parent)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) or [f"class{i}" for i in range(self.num_classes)]

    @property
    def all_metrics(self) -> list[str]:
        return list(dict.fromkeys(self.metrics + self.extra_metrics))


def _card_from_toml(path: Path) -> DatasetCard:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read the card ({err.strerror})") from None
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
    if card.source not in get_args(Source):
        raise UserError(f"{path}: source must be one of {', '.join(get_args(Source))}, not {card.source!r}")
    if card.loss not in LOSSES:
        raise UserError(f"{path}: loss must be one of {', '.join(LOSSES)}, not {card.loss!r}")
    if card.classes and len(card.classes) != card.num_classes:
        raise UserError(f"{path}: {len(card.classes)} class names for num_classes = {card.num_classes}")
    if card.select_metric not in card.all_metrics:
        raise UserError(f"{path}: select_metric {card.select_metric!r} is not among metrics or extra_metrics")
    try:
        for name in card.all_metrics:  # a typo fails here, once, not in every run after its first epoch
            spec(name, card.kind, card.multiclass_protocol)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    if card.source == "synthetic" and card.generator not in GENERATORS:
        raise UserError(f"{path}: generator {card.generator!r} is not one of {', '.join(GENERATORS)}")
    _check_values(card, str(path))
    return card


SPLITS = ("train", "val", "test")  # a synthetic card's [splits]: samples per split (test: per test set)


def _check_values(card: DatasetCard, where: str) -> None:
    """A card's name and numbers, checked when it is read rather than run by run: the name is one safe folder name
    (records are filed under it), epochs, num_classes (1 for a binary task, at least 2 for a multi-class one) and
    size positive integers, seed and split_seed integers >= 0, lr and f_beta2 positive numbers, a synthetic card's
    splits positive integers."""
    safe_name(card.name, f"{where}: name")
    for key in ("epochs", "num_classes", "size"):
        checked_number(getattr(card, key), f"{where}: {key}", integer=True)
    for key in ("seed", "split_seed"):
        checked_number(getattr(card, key), f"{where}: {key}", integer=True, positive=False)
    for key in ("lr", "f_beta2"):
        checked_number(getattr(card, key), f"{where}: {key}")
    if (card.num_classes == 1) != (card.kind == "binary"):
        raise UserError(f"{where}: num_classes {card.num_classes} does not fit kind {card.kind!r} (binary: 1, "
                        "multiclass: 2 or more)")
    if card.source == "synthetic" or card.splits:
        if not isinstance(card.splits, dict) or sorted(card.splits) != sorted(SPLITS):
            raise UserError(f"{where}: splits must be a table of {', '.join(SPLITS)}, not {card.splits!r}")
        for split in SPLITS:
            checked_number(card.splits[split], f"{where}: splits.{split}", integer=True)


def dataset_cards(directory: Path = DATASETS_DIR) -> dict[str, DatasetCard]:
    """All registered dataset cards, by name, sorted."""
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise UserError(f"{directory}: no dataset cards (*.toml); reinstall peftbench or set PEFTBENCH_ROOT to a "
                        "checkout")
    return {p.stem: _card_from_toml(p) for p in paths}


def prepared_dir(card: DatasetCard, data_root: Path | None = None) -> Path:
    """Where `peftbench prepare` puts a registered real dataset: <data root>/<name> (default root: paths.DATA_ROOT)."""
    return Path(data_root or DATA_ROOT) / card.name


def is_prepared(folder: Path) -> bool:
    """`prepared.json` is written last by `peftbench prepare`, so its presence means the folder is complete."""
    return (folder / "prepared.json").is_file()


def _read_prepared(folder: Path) -> dict:
    """prepared.json of a prepared folder; {} when unreadable."""
    try:
        data = json.loads((folder / "prepared.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_state(card: DatasetCard, data_root: Path | None = None) -> str:
    """One line for `peftbench datasets`: images per split, or the command that prepares a missing dataset."""
    if card.source == "synthetic":
        tests = "+".join(str(card.splits["test"]) for _ in card.test_names)
        return f"synthetic {card.splits['train']}/{card.splits['val']}/{tests}"
    folder = prepared_dir(card, data_root)
    if not is_prepared(folder):
        return f"missing: peftbench prepare {card.name}"
    counts = _read_prepared(folder).get("counts")
    if not isinstance(counts, dict):
        return f"unreadable {folder / 'prepared.json'}: prepare again"
    tests = "+".join(str(counts.get(f"test:{t}", counts.get("test", "?"))) for t in card.test_names)
    return f"prepared {counts.get('train', '?')}/{counts.get('val', '?')}/{tests}"


def card_for_path(path: Path, classes: int | None = None, binarize: bool = False) -> DatasetCard:
    """A card for a folder or CSV dataset. The task is declared, never guessed from the masks: binary (masks 0/255 or
    0/1, every mask checked before training; with `binarize` any values, thresholded at 128) unless `classes` K >= 2
    is given (class ids 0..K-1, 255 = ignore).
    Its name is the folder or file name plus a hash of the resolved path, so it never clashes with a registered
    card or with another folder of the same name."""
    read_manifest(path)  # a missing split or file fails here, before anything else
    if classes is not None and classes < 2:
        raise UserError(f"--classes {classes}: a multi-class dataset has at least 2 classes (binary is the default)")
    if classes is not None and binarize:
        raise UserError("--binarize thresholds binary masks; it does not go with --classes")
    resolved = Path(path).resolve()
    binary = classes is None
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    # Without a leading '.': records under runs/.<name>/ would be hidden from every glob (and from the tables).
    stem = (resolved.stem if resolved.is_file() else resolved.name).lstrip(".")
    return DatasetCard(
        name=f"{stem or 'data'}-{digest}",
        kind="binary" if binary else "multiclass", source="files", num_classes=1 if binary else classes,
        path=str(resolved), description=f"ad-hoc dataset from {path}",
        metrics=list(BINARY_METRICS if binary else MULTICLASS_METRICS),
        select_metric="iou" if binary else "miou", binarize=binarize,
    )


def _user_card(path: Path, registered: dict[str, DatasetCard]) -> DatasetCard:
    """A card file given on the command line, checked as a registered one; its name must not shadow a registered
    card (records are filed under the name)."""
    if not path.is_file():
        raise UserError(f"--datasets {path}: no such card file")
    card = _card_from_toml(path)
    if card.name in registered and Path(path).resolve() != (DATASETS_DIR / f"{card.name}.toml").resolve():
        raise UserError(f"--datasets {path}: a registered card is named {card.name!r}; rename yours")
    return card


def resolve_dataset(arg: str, data_root: Path | None = None, classes: int | None = None,
                    binarize: bool = False) -> DatasetCard:
    """A --datasets entry: a registered name, a card file of one's own (path/to/card.toml, any source), or a folder /
    CSV manifest path (relative to --data-root if given); `classes` and `binarize` (--classes, --binarize) declare a
    folder or CSV dataset's task (see card_for_path).

    A registered real dataset that is not prepared fails here, before any training, with the command to type."""
    cards = dataset_cards()
    if arg.endswith(".toml"):
        cards = {**cards, arg: _user_card(Path(arg), cards)}
    if arg in cards:
        card = cards[arg]
        if classes is not None or binarize:
            raise UserError(f"--classes / --binarize declare a folder or CSV dataset's task; {arg} is a registered "
                            "card, which declares its own")
        if card.source == "prepared":
            folder = prepared_dir(card, data_root)
            if not is_prepared(folder):
                root = f" --data-root {data_root}" if data_root else ""
                raise UserError(f"--datasets {arg}: not prepared in {folder}; run `peftbench prepare {arg}{root}` first")
            card.path = str(folder)
            # Pairs `prepare --skip-bad` left out (paths relative to the folder): counted in every run's record.
            card.excluded = _read_prepared(folder).get("excluded", [])
        return card
    path = Path(arg)
    if data_root is not None and not path.exists():
        path = Path(data_root) / arg
    if path.exists():
        return card_for_path(path, classes, binarize)
    raise UserError(
        f"--datasets: {arg!r} is neither a registered dataset ({', '.join(cards)}) nor an existing folder or CSV file"
    )
