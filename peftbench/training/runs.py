"""Trained runs kept and loaded back: the tested model's trained state beside its record, and `load_run`.

Every finished run saves what training changed in the model it tested (its trainable parameters and buffers at the
selected epoch, before any merge) as safetensors in <out>/adapters/<dataset>/<method>/seed<k>.safetensors; the
record holds its path (relative to <out>), sha256, size and counts. `load_run(record)` rebuilds the tested model
from the record alone (not from today's method registry): SAM from the run's architecture and checkpoint (both
checked against the recorded sha256), the segmenter, the method from the recorded family and hyper-parameters, the
trained state, merged if the run tested the merged model.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path

import safetensors.torch
import torch

from ..backbone.sam import load_sam, random_sam
from ..backbone.segmenter import SamSegmenter
from ..errors import UserError
from ..methods import MethodSpec
from ..methods.registry import FAMILIES, family_class
from ..store.atomic import atomic_output
from ..store.hashing import bytes_sha256, cached_file_sha256, file_sha256
from ..store.layout import run_file
from ..store.records import record_and_problem


def adapter_path(out: Path, dataset: str, method: str, seed: int) -> Path:
    return run_file(out, "adapters", dataset, method, seed, ".safetensors")


def save_trained_state(state: dict[str, torch.Tensor], path: Path, out: Path, metadata: dict[str, str]) -> dict:
    """Write `state` as safetensors at `path` atomically; returns the record's account of the file (path relative to
    the results folder `out`, sha256, bytes, tensors, numbers saved)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    data = safetensors.torch.save(tensors, metadata=metadata)
    with atomic_output(path, "wb") as f:
        f.write(data)
    return {"file": str(Path(path).relative_to(out)), "sha256": bytes_sha256(data), "bytes": len(data),
            "tensors": len(tensors), "numel": sum(t.numel() for t in tensors.values()),
            "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})}


def results_folder(record_file: Path) -> Path:
    """<out> of <out>/runs/<dataset>/<method>/seed<k>.json (also inside a replaced/<time>/ folder)."""
    return Path(record_file).resolve().parents[3]


def run_record(record_file: str | Path) -> dict:
    """The record at `record_file`, or a one-line UserError naming it."""
    path = Path(record_file)
    record, problem = record_and_problem(path, loadable=True)
    if problem:
        raise UserError(f"{path}: {problem}")
    if record is None:
        raise UserError(f"{path}: no such run record")
    return record


def trained_state_file(record_file: str | Path, record: dict | None = None) -> Path:
    """The file of the run's kept trained state, checked against the recorded sha256."""
    record = record or run_record(record_file)
    saved = record.get("adapter")
    if not saved:
        raise UserError(f"{record_file}: the run kept no trained state (made with --no-save-adapters or before "
                        "peftbench kept them); retrain it to load it")
    folder = results_folder(record_file)  # resolved
    path = folder / saved["file"]  # the layout's own file (schema: adapter.file), unless a link leads elsewhere
    if path.resolve() != path:
        raise UserError(f"{path}: a link out of the results folder {folder}; peftbench reads no trained state there")
    if not path.is_file():
        raise UserError(f"{path}: the trained state of {record_file} is missing")
    if file_sha256(path) != saved["sha256"]:
        raise UserError(f"{path}: differs from the sha256 recorded in {record_file} (changed or damaged)")
    return path


def trained_state(record_file: str | Path, record: dict | None = None) -> dict[str, torch.Tensor]:
    """The run's kept trained state, checked against the recorded sha256."""
    return safetensors.torch.load_file(trained_state_file(record_file, record))


Trust = bool | Collection[str]  # plug-in modules a record may name: True any, else these module names


def check_plugin(family: str, where: str, trust_plugins: Trust = ()) -> None:
    """A record's plug-in family ("module:Class") is code that a results folder names: it is imported only when
    this invocation trusts its module (`trust_plugins`, --trust-plugin) or has imported it already (the user's own
    --methods file named it); otherwise a one-line UserError says which module the record asks for."""
    if family in FAMILIES or ":" not in family:
        return  # a registered family, or an unknown name that family_class refuses
    module = family.partition(":")[0]
    if trust_plugins is True or module in trust_plugins or module in sys.modules:
        return
    raise UserError(f"{where}: config.method.family {family!r} is plug-in code (module {module!r}); peftbench does "
                    f"not import code a results folder names: pass --trust-plugin {module} (Python: trust_plugins="
                    f"[{module!r}]) if you trust it")


def method_of(record: dict, where: str, trust_plugins: Trust = ()) -> MethodSpec:
    """The run's method, rebuilt from the family and hyper-parameters in its config (a plug-in family must be
    importable and trusted, see check_plugin)."""
    method = record["config"]["method"]
    check_plugin(method["family"], where, trust_plugins)
    cls = family_class(method["family"], "")
    config = cls.config_class.from_dict(method.get("hparams", {}), f"{where}: config.method.hparams")
    return MethodSpec(method["name"], method["family"], "", config, method.get("train", {}),
                      backbone=method.get("backbone", "pretrained"))


def base_sam(record: dict, where: str, checkpoint: str | Path | None = None):
    """The run's SAM before training: its architecture at the fixed random initialisation (random backbone) or with
    its checkpoint, found at the recorded path or at `checkpoint`, checked against the recorded sha256."""
    config = record["config"]
    if config["method"].get("backbone", "pretrained") == "random":
        return random_sam(config["sam"])
    path = checkpoint or config.get("checkpoint")  # as the run's command line gave it (relative: to its folder)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{where}: the run's SAM checkpoint {path} is missing; pass checkpoint= (or --checkpoint) "
                            "with its path")
        if config.get("checkpoint_sha256") and cached_file_sha256(path) != config["checkpoint_sha256"]:
            raise UserError(f"{path}: differs from the SAM checkpoint recorded in {where} (sha256)")
    return load_sam(config["sam"], path)


def load_run(record_file: str | Path, adapter: bool = True, device: str | torch.device = "cpu",
             checkpoint: str | Path | None = None, merged: bool | None = None,
             trust_plugins: Trust = ()) -> SamSegmenter:
    """The model a run tested, in eval mode on `device`: forward takes ImageNet-normalised (B, 3, S, S) images as
    the trainer's loaders give them (S: the architecture's input size) and returns the segmenter's outputs.

    `adapter=False`: the same SAM segmenter before its method was attached (the run's starting decoder): the base an
    exported peft adapter is loaded onto. `checkpoint`: where the run's SAM checkpoint is now, if it moved.
    `merged`: None, merged as the run tested it; False, the adapter left unmerged. `trust_plugins`: the plug-in
    modules (or True: any) that a record's method may import (see check_plugin); the registered families need none.
    """
    where = str(record_file)
    record = run_record(record_file)
    spec = method_of(record, where, trust_plugins)
    model = SamSegmenter(base_sam(record, where, checkpoint), record["config"]["dataset"].get("num_classes", 1))
    if adapter:
        method = spec.build()
        method.attach(model)
        state = trained_state(record_file, record)
        missing, unexpected = model.load_state_dict(state, strict=False)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise UserError(f"{where}: the saved state does not fit {spec.name} ({len(unexpected)} unexpected, "
                            f"{len(trainable & set(missing))} missing trained tensors)")
        if merged is not False and record.get("merge", {}).get("evaluated_model") == "merged":
            method.merge(model)
    return model.eval().to(device)
