"""The adapter interface every PEFT method implements, and the helper that swaps target modules.

A method is attached to a model in place. The trainer then only talks to it through:
  - `parameter_groups(model)`: named lists of trainable parameters, one optimizer per group;
  - `schedule(epochs, steps_per_epoch)`: resolve the method's schedule for a run (e.g. NAS-LoRA's architecture
    start and search budget), before any step; returns what the record stores, with `lr_scale` per group;
    `check_schedule(epochs)` says beforehand why a schedule cannot work for that many epochs;
  - `step_plan(epoch, step)`: the optimizer steps taken on one batch, each a list of the groups it updates
    (one step of every group, unless a method declares a schedule such as NAS-LoRA's stage-wise optimisation);
  - `selectable(epoch)`: whether the weights after that epoch may be selected on validation;
  - `extra_loss(model)`: an optional term added to the task loss (e.g. a load-balancing loss);
  - `merge(model)`: fold the adapter into the frozen weights; `merge_kind` says how faithful that is;
  - `milestones()` and `statistics(model, steps)`: schedule epochs to mark on plots, and what to store about the
    learned adapter in the run record (e.g. NAS-LoRA's operation distribution and whether its search engaged);
  - `lr_multipliers()`: each group's learning rate as a multiple of the card's (LoRA+: B at 16x);
  - `after_backward(model, step, total_steps)`: called once per optimizer step with the gradients in place
    (unscaled and clipped), before the update (e.g. AdaLoRA's rank allocation reads them).
Its hyper-parameters are a frozen dataclass (`config_class`, as peft's `LoraConfig`): the defaults live there and
only there, and a key the dataclass does not have is an error naming the file and the key. What the registry tests
check about a family is declared beside it (`encoder_trainable`, `identity_at_init`), so they cover a new family.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class MethodConfig:
    """A family's hyper-parameters: subclasses are frozen dataclasses whose fields have the defaults."""

    @classmethod
    def from_dict(cls, values: dict, source: str) -> MethodConfig:
        """The config of a TOML `[hparams]` table (or keyword overrides); an unknown key, a value of the wrong type
        or an invalid value (the dataclass's `__post_init__` raises ValueError) is a UserError naming `source`."""
        check_keys(values, [f.name for f in dataclasses.fields(cls)], source, "hyper-parameter")
        hints = typing.get_type_hints(cls)
        checked = {key: _typed(value, hints[key], f"{source}: hyper-parameter {key!r}") for key, value in values.items()}
        try:
            return cls(**checked)
        except ValueError as err:
            raise UserError(f"{source}: {err}") from None

    def as_dict(self) -> dict:
        """Every field, defaults filled in (what a run record stores)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TargetedConfig(MethodConfig):
    """Where a module-wrapping adapter goes: the Linear modules named by `targets` (a name, a dotted suffix or a
    regular expression, as peft's `target_modules`) under `scope` (empty: anywhere in the model)."""

    targets: tuple[str, ...] = ("attn.qkv",)
    scope: str = "image_encoder"


def check_keys(keys, known: Sequence[str], where: str, what: str = "key") -> None:
    """A one-line UserError for the first of `keys` not in `known`, with the closest known one: a misspelled setting
    is never silently ignored."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"{where}: unknown {what} {key!r}; {hint}expected one of {', '.join(known) or 'none'}")


def _typed(value, hint, where: str):
    """`value` checked against the annotation `hint` (bool, int, float, str, tuple[X, ...] and unions of them);
    lists become tuples (the config is frozen); an int is a valid float and is kept as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, where)
            except UserError:
                continue
    elif origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_typed(v, args[0], where) for v in value)
    elif hint in (float, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if hint is float or isinstance(value, int):
            return value
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", None) if origin is None else None
    raise UserError(f"{where}: expected {name or str(hint).replace('typing.', '')}, got {value!r}")


MergeKind = Literal["exact", "approximate", "none"]


class Method:
    """Base class of a PEFT method. Subclasses set `family` and `config_class` and implement `attach`."""

    family: str = ""
    config_class: type[MethodConfig] = MethodConfig
    # "exact": merge() leaves the plain SAM architecture with outputs equal up to float rounding;
    # "approximate": merge() folds what folds exactly and approximates the rest (the harness measures the gap);
    # "none": the adapter must run at inference (prompts, adapters, input-dependent experts).
    merge_kind: MergeKind = "none"
    # How reports group it: "PEFT", or "Non-PEFT" (full fine-tuning); `lineage` "lora" marks the LoRA family
    # (adapters of the form W + B g(A x)); the report reads both from the run record, never from this class.
    group: str = "PEFT"
    lineage: str = ""
    # Declared for the registry tests: the image-encoder parameters it trains (regex on the name under
    # image_encoder; None: none) and whether the model is unchanged before training.
    encoder_trainable: str | None = None
    identity_at_init: bool = False
    needs_sam: bool = False  # it changes SAM's image encoder itself (`model.image_encoder`), not target modules

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, not {type(config).__name__}")

    def attach(self, model: nn.Module) -> nn.Module:
        """Insert the adapter into `model` (in place) and return it."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        return {"weights": [p for p in model.parameters() if p.requires_grad]}

    def check_schedule(self, epochs: int) -> str | None:
        """Why this method's schedule cannot do what its name says in a run of `epochs` epochs, or None."""
        return None

    def schedule(self, epochs: int, steps_per_epoch: int) -> dict:
        """Resolve the schedule of a run of `epochs` epochs of `steps_per_epoch` optimizer steps (raises ValueError
        with check_schedule's reason). Returns the record's account of it; `lr_scale`: {group: learning-rate factor}."""
        return {}

    def step_plan(self, epoch: int, step: int) -> list[list[str]] | None:
        """Optimizer steps on batch `step` of `epoch`, in order, each the group names it updates; None: one step
        of all groups. Groups not in a step get no gradient in it."""
        return None

    def selectable(self, epoch: int) -> bool:
        """Whether the weights after `epoch` may be selected on validation and tested (NAS-LoRA: only once its
        search has started; before that the model is LoRA with a uniform operation mixture)."""
        return True

    def milestones(self) -> dict[str, int]:
        return {}

    def statistics(self, model: nn.Module, steps: dict[str, int]) -> dict | None:
        """What to store about the trained adapter; `steps`: optimizer steps taken per parameter group."""
        return None

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def lr_multipliers(self) -> dict[str, float]:
        """{group: learning rate as a multiple of the card's (or of the group's own `[train.group_optim]` lr)};
        groups not named keep 1."""
        return {}

    def after_backward(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called once per optimizer step (`step` counts from 0 over the run, of `total_steps`), after backward
        with the gradients unscaled and clipped, before the optimizer updates the weights."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the adapter into frozen weights, leaving plain modules behind.

        This default suits methods that add no module (decoder-only, BitFit, full fine-tuning): nothing to fold.
        """
        if self.merge_kind == "none":
            raise NotImplementedError(f"{self.family} cannot be merged into the frozen weights")
        return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training changes: trainable parameters and every buffer (e.g. running statistics).

    Loading it into a freshly built model with the same method attached reproduces the trained model.
    """
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def find_targets(root: nn.Module, targets: list[str], scope: str = "", kind: type = nn.Linear) -> list[str]:
    """Qualified names of `kind` modules under `scope` whose name equals a target or ends in ".<target>".

    A target may also be a regular expression matched against the full name (as in peft's `target_modules`).
    """
    found = []
    for name, module in root.named_modules():
        if not isinstance(module, kind) or (scope and not name.startswith(scope + ".")):
            continue
        if any(name == t or name.endswith("." + t) or re.fullmatch(t, name) for t in targets):
            found.append(name)
    if not found:
        raise UserError(f"targets {targets} matched no {kind.__name__} module" + (f" under {scope!r}" if scope else ""))
    return found


def select_blocks(names: list[str], which: str | list[int]) -> list[str]:
    """Keep the target names inside encoder blocks `which`: "all", "first_half", "last_half" or a list of indices
    (the paper's Table 8 places NAS-LoRA in blocks 1-16, 17-32 or all of vit_h's 32)."""
    if which == "all":
        return names
    index = {n: int(re.search(r"blocks\.(\d+)\.", n).group(1)) for n in names}
    depth = max(index.values()) + 1
    chosen = {"first_half": range(depth // 2), "last_half": range(depth // 2, depth)}.get(which, which)
    if isinstance(chosen, str):
        raise UserError(f"blocks {which!r}: expected all, first_half, last_half or a list of block indices")
    return [n for n in names if index[n] in set(chosen)]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def replace_targets(root: nn.Module, targets: list[str], scope: str, wrap: Callable[[nn.Module], nn.Module],
                    blocks: str | list[int] = "all") -> int:
    """Replace every target module (inside encoder `blocks`, see select_blocks) by `wrap(module)`; returns how many
    were replaced."""
    names = select_blocks(find_targets(root, targets, scope), blocks)
    for name in names:
        replace_module(root, name, wrap(root.get_submodule(name)))
    return len(names)


def merge_wrappers(root: nn.Module, wrapper_type: type) -> nn.Module:
    """Replace every `wrapper_type` module by the plain module its `merged()` returns."""
    names = [n for n, m in root.named_modules() if isinstance(m, wrapper_type)]
    for name in names:
        replace_module(root, name, root.get_submodule(name).merged())
    return root
