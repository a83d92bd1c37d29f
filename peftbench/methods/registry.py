"""Method registry: adapter families (Python classes) and registered methods (one TOML file each in methods/).

A family is the code (`lora`); a method is a family plus hyper-parameters (`methods/lora.toml`: rank 3, alpha 32).
Adding a variant for an ablation is adding a TOML file; adding a family is one module with `@register_family`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..paths import METHODS_DIR

FAMILIES: dict[str, type] = {}
BACKBONES = ("pretrained", "random")


def register_family(cls: type) -> type:
    if cls.family in FAMILIES:
        raise ValueError(f"adapter family {cls.family!r} registered twice")
    FAMILIES[cls.family] = cls
    return cls


@dataclass(frozen=True)
class MethodSpec:
    """One registered method, read from methods/<name>.toml (or methods/ablations/<name>.toml)."""

    name: str
    family: str
    description: str
    hparams: dict = field(default_factory=dict)  # passed to the family's constructor
    train: dict = field(default_factory=dict)  # overrides of the dataset's training settings (e.g. lr)
    paper: dict = field(default_factory=dict)  # what the NAS-LoRA paper reports: params_m (vit_h), params_note
    ablation: str = ""  # the paper table this variant belongs to; empty for a main method
    backbone: str = "pretrained"  # or "random": the same SAM architecture at a fixed random initialisation
    control: bool = False  # an experiment's control, not a method of the paper: left out of --methods all

    def build(self):
        return FAMILIES[self.family](**self.hparams)

    @property
    def merge_kind(self) -> str:
        return FAMILIES[self.family].merge_kind

    def as_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "hparams": self.hparams, "train": self.train,
                "backbone": self.backbone}


def _merged(base: dict, override: dict) -> dict:
    """`override` on top of `base`, tables merged key by key (so a variant states only what it changes)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(path: Path, directory: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML ({err})") from None
    if "base" in data:  # a variant: the base method's file with this file's keys on top
        base_path = directory / f"{data['base']}.toml"
        if not base_path.is_file():
            raise UserError(f"{path}: base method {data['base']!r} has no file {base_path}")
        base = {k: v for k, v in _read_toml(base_path, directory).items() if k != "paper"}
        data = _merged(base, {k: v for k, v in data.items() if k != "base"})
    return data


def _read_spec(path: Path, directory: Path) -> MethodSpec:
    data = _read_toml(path, directory)
    family = data.get("family")
    if family not in FAMILIES:
        raise UserError(f"{path}: family {family!r} is not one of {', '.join(sorted(FAMILIES))}")
    backbone = data.get("backbone", "pretrained")
    if backbone not in BACKBONES:
        raise UserError(f"{path}: backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}")
    return MethodSpec(path.stem, family, data.get("description", ""), data.get("hparams", {}), data.get("train", {}),
                      data.get("paper", {}), data.get("ablation", ""), backbone, bool(data.get("control", False)))


def method_specs(directory: Path = METHODS_DIR) -> dict[str, MethodSpec]:
    """All registered methods by name: the main ones (methods/*.toml), then the ablation variants
    (methods/ablations/*.toml)."""
    paths = sorted(directory.glob("*.toml")) + sorted(directory.glob("ablations/*.toml"))
    if not paths:
        raise UserError(f"{directory}: no method files (*.toml); run from the peftbench checkout (pip install -e .) "
                        "or set PEFTBENCH_ROOT to it")
    specs: dict[str, MethodSpec] = {}
    for path in paths:
        if path.stem in specs:
            raise UserError(f"{path}: method name {path.stem!r} is registered twice")
        specs[path.stem] = _read_spec(path, directory)
    return specs


def get_method(name: str) -> MethodSpec:
    specs = method_specs()
    if name not in specs:
        raise UserError(f"--methods: unknown method {name!r}; registered: {', '.join(specs)} (see `peftbench methods`)")
    return specs[name]


# The default run: the miniature of the paper's experiment on the shipped pretrained tiny SAM. The decoder-only
# pair answers "does the pretrained encoder help?", the LoRA family "do adapters help beyond the decoder?".
# LoRA and NAS-PC-LoRA (the paper's method) stand for the family; DoRA and Conv-LoRA would not fit the default
# run's ~10 minutes on 2 CPU cores (`--methods all` runs every method).
MINIATURE = ["decoder_only_random", "decoder_only", "lora", "nas_pc_lora"]


def resolve_methods(arg: str) -> list[MethodSpec]:
    """Parse a --methods value: comma-separated names, 'all' (the paper's main methods), 'ablations' (every
    variant) or 'miniature' (the default run's methods, MINIATURE, controls included)."""
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


def adapt(module: nn.Module, method: str, targets: list[str] | None = None, **hparams):
    """Apply a registered method (or bare family) to any module by target module names, in place.

    Example: `peftbench.adapt(block, "lora", targets=["qkv"], rank=3, alpha=32)`.
    Keyword arguments override the method's TOML hyper-parameters. Returns the attached method object
    (for `parameter_groups`, `extra_loss` and `merge`).
    """
    specs = method_specs()
    if method in specs:
        base = dict(specs[method].hparams)
        family = specs[method].family
    elif method in FAMILIES:
        base, family = {}, method
    else:
        raise UserError(f"unknown method {method!r}; registered: {', '.join(specs)}")
    base.pop("scope", None)  # a bare module has no SAM scope
    if targets is not None:
        base["targets"] = targets
    adapter = FAMILIES[family](**{**base, **hparams})
    adapter.attach(module)
    return adapter
