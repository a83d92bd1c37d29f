"""Method registry: adapter families (Python classes) and registered methods (one TOML file each in methods/).

A family is the code (`lora`, with its typed config `LoRAConfig`); a method is a family plus hyper-parameters
(`methods/lora.toml`: rank 3, alpha 32). Adding a variant for an ablation is adding a TOML file; adding a family is
one module with `@register_family`, or, without touching peftbench, a TOML whose `family = "my_module:MyMethod"`
names an importable `Method` subclass (`--methods path/to/my_method.toml`). Every key of a method file is checked:
a misspelled one is an error naming the file and the key, never a silently ignored setting.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from torch import nn

from ..errors import UserError
from ..paths import METHODS_DIR
from ..store.names import checked_number, safe_name
from .base import Method, MethodConfig, check_keys

FAMILIES: dict[str, type[Method]] = {}
Backbone = Literal["pretrained", "random"]
BACKBONES: tuple[Backbone, ...] = get_args(Backbone)
# Every key a method file may hold; [train] and [train.group_optim.<group>] and [paper] are checked too.
FILE_KEYS = ("family", "description", "hparams", "train", "paper", "ablation", "baseline", "backbone", "control", "base")
TRAIN_KEYS = ("lr", "epochs", "group_optim")
GROUP_OPTIM_KEYS = ("optimizer", "lr", "weight_decay", "betas", "schedule")
PAPER_KEYS = ("params_m", "params_note")


def register_family(cls: type[Method]) -> type[Method]:
    if cls.family in FAMILIES:
        raise ValueError(f"adapter family {cls.family!r} registered twice")
    FAMILIES[cls.family] = cls
    return cls


def family_class(family: str, source: str = "") -> type[Method]:
    """The class of a registered family, or of a plug-in named "module:Class" (imported; a module file beside the
    method's TOML `source` is found too)."""
    if family in FAMILIES:
        return FAMILIES[family]
    where = f"{source}: " if source else ""
    if not isinstance(family, str) or ":" not in family:
        raise UserError(f"{where}family {family!r} is not one of {', '.join(sorted(FAMILIES))}, nor a plug-in "
                        "'module:Class'")
    module_name, _, attr = family.partition(":")
    _make_importable(module_name, Path(source).parent if source else None)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{where}family {family!r}: cannot import module {module_name!r} ({err})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"{where}family {family!r}: {module_name} has no peftbench Method subclass {attr!r}")
    return cls


def _make_importable(module_name: str, folder: Path | None) -> None:
    """Put `folder` on the import path when it holds the plug-in module and nothing else provides it; exported in
    PYTHONPATH too, so that the processes runs train in import it as well."""
    top = module_name.split(".")[0]
    if folder is None or importlib.util.find_spec(top) is not None:
        return
    if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
        path = str(folder.resolve())
        sys.path.insert(0, path)
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *filter(None, [os.environ.get("PYTHONPATH")])])


@dataclass(frozen=True)
class MethodSpec:
    """One registered method, read from methods/<name>.toml (or methods/ablations/<name>.toml, or a user's file)."""

    name: str
    family: str
    description: str
    config: MethodConfig  # the family's typed hyper-parameters, defaults filled in
    train: dict = field(default_factory=dict)  # overrides of the dataset's training settings (e.g. lr)
    paper: dict = field(default_factory=dict)  # what the NAS-LoRA paper reports: params_m (vit_h), params_note
    ablation: str = ""  # the paper table this variant belongs to; empty for a main method
    baseline: str = ""  # the method this one is compared with (a variant's base; NAS-LoRA's LoRA)
    backbone: Backbone = "pretrained"  # or "random": the same SAM architecture at a fixed random initialisation
    control: bool = False  # an experiment's control, not a method of the paper: left out of --methods all
    source: str = ""  # the TOML file

    @property
    def family_class(self) -> type[Method]:
        return family_class(self.family, self.source)

    @property
    def hparams(self) -> dict:
        return self.config.as_dict()

    def build(self) -> Method:
        return self.family_class(self.config)

    @property
    def merge_kind(self) -> str:
        return self.family_class.merge_kind

    def as_dict(self) -> dict:
        """What a run's config holds of the method (and hashes)."""
        return {"name": self.name, "family": self.family, "hparams": self.hparams, "train": self.train,
                "backbone": self.backbone}

    def info(self) -> dict:
        """What reports need to know about the method, stored in every run record beside (not in) the config, so
        that a report of archived runs never depends on today's registry."""
        cls = self.family_class
        return {"name": self.name, "family": self.family, "description": self.description, "group": cls.group,
                "lineage": cls.lineage or self.family, "ablation": self.ablation, "baseline": self.baseline,
                "backbone": self.backbone, "control": self.control, "merge_kind": cls.merge_kind}


def _merged(base: dict, override: dict) -> dict:
    """`override` on top of `base`, tables merged key by key (so a variant states only what it changes)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(path: Path, directory: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read the method file ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML ({err})") from None
    check_keys(data, FILE_KEYS, str(path))
    if "base" in data:  # a variant: the base method's file with this file's keys on top
        candidates = [path.parent / f"{data['base']}.toml", directory / f"{data['base']}.toml"]
        base_path = next((p for p in candidates if p.is_file()), None)
        if base_path is None:
            raise UserError(f"{path}: base method {data['base']!r} has no file {candidates[0]}")
        base = {k: v for k, v in _read_toml(base_path, directory).items() if k not in ("paper", "baseline")}
        data = {**_merged(base, {k: v for k, v in data.items() if k != "base"}),
                "baseline": data.get("baseline", data["base"])}
    return data


def read_method(path: Path, directory: Path = METHODS_DIR) -> MethodSpec:
    """The method of one TOML file (a variant's `base` is looked up beside it, then in `directory`)."""
    path = Path(path)
    name = safe_name(path.stem, f"{path}: the method name (the file's name)")  # records are filed under it
    data = _read_toml(path, directory)
    family = data.get("family")
    cls = family_class(family, str(path))
    train = data.get("train", {})
    _check_train(train, str(path))
    check_keys(data.get("paper", {}), PAPER_KEYS, f"{path}: [paper]")
    backbone = data.get("backbone", "pretrained")
    if backbone not in BACKBONES:
        raise UserError(f"{path}: backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}")
    config = cls.config_class.from_dict(data.get("hparams", {}), f"{path}: [hparams]")
    return MethodSpec(name, family, data.get("description", ""), config, train, data.get("paper", {}),
                      data.get("ablation", ""), data.get("baseline", ""), backbone, bool(data.get("control", False)),
                      str(path))


def _check_train(train: object, where: str) -> None:
    """A method file's [train], checked here rather than run by run: known keys, lr (also each
    [train.group_optim.<group>]'s) a positive number, epochs a positive integer, weight_decay a number >= 0."""
    check_keys(_table(train, f"{where}: [train]"), TRAIN_KEYS, f"{where}: [train]")
    if "epochs" in train:
        checked_number(train["epochs"], f"{where}: [train] epochs", integer=True)
    if "lr" in train:
        checked_number(train["lr"], f"{where}: [train] lr")
    for group, settings in _table(train.get("group_optim", {}), f"{where}: [train.group_optim]").items():
        table = f"{where}: [train.group_optim.{group}]"
        check_keys(_table(settings, table), GROUP_OPTIM_KEYS, table)
        if "lr" in settings:
            checked_number(settings["lr"], f"{table} lr")
        if "weight_decay" in settings:
            checked_number(settings["weight_decay"], f"{table} weight_decay", positive=False)


def _table(value: object, where: str) -> dict:
    """`value`, a TOML table, or a one-line error naming `where`."""
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a table, not {value!r}")
    return value


def method_specs(directory: Path = METHODS_DIR) -> dict[str, MethodSpec]:
    """All registered methods by name: the main ones (methods/*.toml), then the ablation variants
    (methods/ablations/*.toml)."""
    paths = sorted(directory.glob("*.toml")) + sorted(directory.glob("ablations/*.toml"))
    if not paths:
        raise UserError(f"{directory}: no method files (*.toml); reinstall peftbench or set PEFTBENCH_ROOT to a "
                        "checkout")
    specs: dict[str, MethodSpec] = {}
    for path in paths:
        if path.stem in specs:
            raise UserError(f"{path}: method name {path.stem!r} is registered twice")
        specs[path.stem] = read_method(path, directory)
    return specs


def is_method_file(arg: str) -> bool:
    return arg.endswith(".toml")


def get_method(name: str) -> MethodSpec:
    """A registered method by name, or a user's method file (a path ending in .toml)."""
    specs = method_specs()
    if is_method_file(name):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"--methods {name}: no such method file")
        if path.stem in specs and path.resolve() != Path(specs[path.stem].source).resolve():
            raise UserError(f"--methods {name}: a registered method is named {path.stem!r}; rename the file")
        return read_method(path)
    if name not in specs:
        raise UserError(f"--methods: unknown method {name!r}; registered: {', '.join(specs)} (see `peftbench methods`)"
                        " or give a method file path/to/name.toml")
    return specs[name]


# The default run: the miniature of the paper's experiment on the shipped pretrained tiny SAM. The decoder-only
# pair answers "does the pretrained encoder help?", the LoRA family "do adapters help beyond the decoder?".
# LoRA and NAS-PC-LoRA (the paper's method) stand for the family; DoRA and Conv-LoRA would not fit the default
# run's ~10 minutes on 2 CPU cores (`--methods all` runs every method).
MINIATURE = ["decoder_only_random", "decoder_only", "lora", "nas_pc_lora"]


def resolve_methods(arg: str) -> list[MethodSpec]:
    """Parse a --methods value: comma-separated names or method files (path/to/name.toml), 'all' (the paper's
    main methods), 'ablations' (every variant) or 'miniature' (the default run's methods, controls included)."""
    keyword = arg.strip()
    if keyword in ("all", "ablations"):
        return [s for s in method_specs().values()
                if bool(s.ablation) == (keyword == "ablations") and not s.control]
    if keyword == "miniature":
        return [get_method(n) for n in MINIATURE]
    names = [n.strip() for n in arg.split(",") if n.strip()]
    if not names:
        raise UserError("--methods is empty; give comma-separated names, 'all', 'ablations' or 'miniature'")
    return [get_method(n) for n in names]


def adapt(module: nn.Module, method: str, targets: list[str] | None = None, **hparams) -> Method:
    """Apply a registered method (or bare family) to any module by target module names, in place.

    Example: `peftbench.adapt(block, "lora", targets=["qkv"], rank=3, alpha=32)`.
    Keyword arguments override the method's hyper-parameters (checked as a method file's are). Returns the attached
    method object (for `parameter_groups`, `extra_loss` and `merge`). A method that rebuilds SAM's image encoder
    (VPT, Mona, SAM-Adapter, full fine-tuning) needs a SAM model (a module with `image_encoder`).
    """
    specs = method_specs()
    if method in specs or is_method_file(method):
        spec = get_method(method)
        cls, base = spec.family_class, spec.hparams
    elif method in FAMILIES:
        cls, base = FAMILIES[method], {}
    else:
        raise UserError(f"unknown method {method!r}; registered: {', '.join(specs)}")
    if cls.needs_sam and not hasattr(module, "image_encoder"):
        raise UserError(f"{method} changes SAM's image encoder itself, so it needs a SAM model (a module with an "
                        f"image_encoder, e.g. peftbench's SamSegmenter), not a {type(module).__name__}")
    overrides = dict(hparams, **({"targets": targets} if targets is not None else {}))
    scope = overrides.get("scope", base.get("scope"))
    if scope and "scope" not in overrides and scope not in dict(module.named_modules()):
        overrides["scope"] = ""  # a bare module (a block, a Linear) has no SAM scope: search all of it
    config = cls.config_class.from_dict({**base, **overrides}, f"peftbench.adapt({method!r})")
    adapter = cls(config)
    adapter.attach(module)
    return adapter
