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
    learned adapter in the run record (e.g. NAS-LoRA's operation distribution and whether its search engaged).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UserError


class Method:
    """Base class of a PEFT method. Subclasses set `family` and implement `attach`."""

    family: str = ""
    # "exact": merge() leaves the plain SAM architecture with outputs equal up to float rounding;
    # "approximate": merge() folds what folds exactly and approximates the rest (the harness measures the gap);
    # "none": the adapter must run at inference (prompts, adapters, input-dependent experts).
    merge_kind: str = "none"

    def __init__(self, targets: list[str] | None = None, scope: str = "", **hparams) -> None:
        self.targets = list(targets or [])
        self.scope = scope
        self.hparams = hparams

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
