"""The adapter interface every PEFT method implements, and the helper that swaps target modules.

A method is attached to a model in place. The trainer then only talks to it through:
  - `parameter_groups(model)`: named lists of trainable parameters, one optimizer per group;
  - `groups_to_step(epoch, step)`: which groups step at this iteration (all, unless a method declares a schedule);
  - `extra_loss(model)`: an optional term added to the task loss (e.g. a load-balancing loss);
  - `merge(model)`: fold the adapter into the frozen weights; `merge_kind` says how faithful that is.
"""

from __future__ import annotations

import re
from typing import Callable

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

    def groups_to_step(self, epoch: int, step: int) -> list[str] | None:
        """Names of the parameter groups to update at this step; None means all of them."""
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


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def replace_targets(root: nn.Module, targets: list[str], scope: str, wrap: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every target module by `wrap(module)`; returns how many were replaced."""
    names = find_targets(root, targets, scope)
    for name in names:
        replace_module(root, name, wrap(root.get_submodule(name)))
    return len(names)


def merge_wrappers(root: nn.Module, wrapper_type: type) -> nn.Module:
    """Replace every `wrapper_type` module by the plain module its `merged()` returns."""
    names = [n for n, m in root.named_modules() if isinstance(m, wrapper_type)]
    for name in names:
        replace_module(root, name, root.get_submodule(name).merged())
    return root
