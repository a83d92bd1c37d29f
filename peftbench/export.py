"""`peftbench export RECORD --format state|peft|sam --out DIR`: a trained run in the formats other tools load.

- state (any method): the trained state as saved beside the record (safetensors, peftbench's parameter names) and
  run.json (the run's config, method metadata, merge and test metrics); `peftbench.load_run` reads the record.
- peft (LoRA, LoRA+, DoRA, VeRA): adapter_config.json + adapter_model.safetensors written by Hugging Face peft itself
  (`save_pretrained`), the trained mask decoder (and a multi-class head) as peft's `modules_to_save`, so that
  `peft.PeftModel.from_pretrained(peftbench.load_run(record, adapter=False), DIR)` is the tested model.
  LoRA+ is LoRA's model (only its training differed). Needs peft: pip install "peftbench[peft]".
- sam (exact merges, official architectures, binary runs): one checkpoint in segment-anything's format that
  `segment_anything.sam_model_registry[arch](checkpoint=...)` loads strictly: the run's SAM checkpoint with the
  merged encoder and the trained decoder written in, and README.md on how the segmenter uses it (mask token 0 and
  hypernetwork 0, no prompts; see DECODER_NOTE).

Every file is written atomically (peft's in a temporary folder beside them, then renamed in, its config last) with
the permissions any program's file gets: a failed or killed export leaves whole files only, and a full disk is an
OSError naming the file or the export folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from .backbone.sam import OFFICIAL_CHECKPOINTS
from .errors import UserError
from .methods.dora import DoRA, DoRALinear
from .methods.lora import LoRA, LoRALinear
from .methods.vera import VeRA, VeRALinear
from .store.atomic import atomic_output, file_mode, locked_temporary, write_json_atomic, write_text_atomic, writing
from .training.runs import Trust, base_sam, check_plugin, load_run, method_of, run_record, trained_state_file

FORMATS = ("state", "peft", "sam")
DECODER_NOTE = """\
How peftbench's segmenter uses this SAM (peftbench/segmenter.py): prompt-free. The image encoder's embedding plus the
prompt encoder's "no mask" dense embedding go into the mask decoder's transformer with no sparse (point/box) tokens;
the IoU token and mask token 0 are the only tokens; mask token 0's output through hypernetwork MLP 0 gives one mask
logit map (the decoder's other mask tokens and MLPs 1-3 are the original checkpoint's, unused). The IoU head was not
trained. Inputs: RGB resized to {size} x {size} (no padding; aspect ratio not kept), normalised with ImageNet's mean
and std (= SAM's pixel_mean / pixel_std on 0-255 pixels). Output: sigmoid(logits) upsampled bilinearly to the image's
size; foreground where it exceeds 0.5.
"""


def supported_formats(record: dict) -> list[str]:
    """The formats a run can be exported in (see the module doc)."""
    cls = method_of(record, "").family_class
    formats = ["state"]
    if issubclass(cls, tuple(PEFT_WRITERS)):
        formats.append("peft")
    config = record["config"]
    if (cls.merge_kind == "exact" and config["sam"] in OFFICIAL_CHECKPOINTS
            and config["dataset"].get("num_classes", 1) == 1):
        formats.append("sam")
    return formats


def export_run(record_file: str | Path, fmt: str, out: Path, checkpoint: str | Path | None = None,
               trust_plugins: Trust = ()) -> list[Path]:
    """Write run `record_file` in format `fmt` into the folder `out`; returns the files written. `checkpoint`: where
    the run's SAM checkpoint is now, if it moved. `trust_plugins`: see runs.check_plugin."""
    record = run_record(record_file)
    check_plugin(record["config"]["method"]["family"], str(record_file), trust_plugins)  # once trusted, imported
    supported = supported_formats(record)
    if fmt not in supported:
        raise UserError(f"--format {fmt}: {record['method']} ({record['config']['method']['family']}, "
                        f"{record['config']['sam']}) exports as {', '.join(supported)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"state": _state, "peft": _peft, "sam": _sam}[fmt](Path(record_file), record, out, checkpoint)


def _state(record_file: Path, record: dict, out: Path, checkpoint) -> list[Path]:
    source = trained_state_file(record_file, record)  # checked against its sha256
    target = out / "trained_state.safetensors"
    with atomic_output(target, "wb") as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)
    run = {key: record.get(key) for key in ("method", "dataset", "seed", "config", "config_hash", "method_info",
                                            "merge", "metrics", "adapter", "environment")}
    write_json_atomic(out / "run.json", run)
    return [target, out / "run.json"]


# --- peft -------------------------------------------------------------------------------------------------------

def _lora_config(peft, wrappers: dict[str, nn.Module], method, modules_to_save: list[str]):
    c = method.config
    return peft.LoraConfig(r=c.rank, lora_alpha=c.alpha, lora_dropout=0.0, bias="none",
                           target_modules=_exact(wrappers), modules_to_save=modules_to_save,
                           use_dora=isinstance(next(iter(wrappers.values())), DoRALinear))


def _copy_lora(peft_model: nn.Module, name: str, ours: nn.Module) -> None:
    layer = peft_model.base_model.model.get_submodule(name)
    lora = ours.lora if isinstance(ours, DoRALinear) else ours
    layer.lora_A["default"].weight.copy_(lora.lora_A)
    layer.lora_B["default"].weight.copy_(lora.lora_B)
    if isinstance(ours, DoRALinear):
        layer.lora_magnitude_vector["default"].weight.copy_(ours.magnitude)


def _vera_config(peft, wrappers: dict[str, nn.Module], method, modules_to_save: list[str]):
    c = method.config
    return peft.VeraConfig(r=c.rank, target_modules=_exact(wrappers), projection_prng_key=c.projection_seed,
                           save_projection=True, vera_dropout=0.0, d_initial=c.d_initial, bias="none",
                           modules_to_save=modules_to_save)


def _copy_vera(peft_model: nn.Module, name: str, ours: VeRALinear) -> None:
    layer = peft_model.base_model.model.get_submodule(name)
    layer.vera_lambda_d["default"].copy_(ours.lambda_d)
    layer.vera_lambda_b["default"].copy_(ours.lambda_b)
    peft_model.base_model.vera_A["default"].copy_(ours.projection.A)
    peft_model.base_model.vera_B["default"].copy_(ours.projection.B)


# family class -> (wrapper types it inserts, peft config builder, copy of one wrapped layer into peft's)
PEFT_WRITERS = {LoRA: ((LoRALinear,), _lora_config, _copy_lora), DoRA: ((DoRALinear,), _lora_config, _copy_lora),
                VeRA: ((VeRALinear,), _vera_config, _copy_vera)}


def _exact(wrappers: dict[str, nn.Module]) -> str:
    """peft's target_modules as one regular expression matching exactly these module names (peft full-matches a
    string against each module's name), so peft wraps the very layers the run adapted."""
    return "|".join(re.escape(name) for name in wrappers)


def _peft(record_file: Path, record: dict, out: Path, checkpoint) -> list[Path]:
    try:
        import peft
    except ImportError:
        raise UserError('--format peft needs Hugging Face peft: pip install "peftbench[peft]"') from None
    method = method_of(record, str(record_file)).build()
    types, build_config, copy_layer = next(w for cls, w in PEFT_WRITERS.items() if isinstance(method, cls))
    trained = load_run(record_file, checkpoint=checkpoint, merged=False)
    wrappers = {n: m for n, m in trained.named_modules() if isinstance(m, types)}
    modules_to_save = ["mask_decoder"] + (["class_head"] if trained.class_head is not None else [])
    peft_model = peft.get_peft_model(load_run(record_file, adapter=False, checkpoint=checkpoint),
                                     build_config(peft, wrappers, method, modules_to_save))
    with torch.no_grad():
        for name, ours in wrappers.items():
            copy_layer(peft_model, name, ours)
        for name in modules_to_save:
            peft_model.base_model.model.get_submodule(name).modules_to_save["default"].load_state_dict(
                trained.get_submodule(name).state_dict())
    with writing(out), locked_temporary(out, "peft", directory=True) as (_, staging):
        peft_model.save_pretrained(str(staging))
        (out / PEFT_FILES[-1]).unlink(missing_ok=True)  # an older export's: never loadable with half of the new one
        for name in PEFT_FILES:
            if (staging / name).exists():
                _move_in(staging / name, out / name)
    return [out / "adapter_config.json", out / "adapter_model.safetensors"]


# What peft's save_pretrained writes, in the order the files move into the export folder: the config, which peft
# reads first, last, so that an interrupted export holds no loadable adapter.
PEFT_FILES = ("adapter_model.safetensors", "README.md", "adapter_config.json")


def _move_in(source: Path, target: Path) -> None:
    """`source`, written in a temporary folder beside `target`, renamed over it (atomic), fsynced and with the
    permissions any program's file gets (peft's safetensors are 0600)."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fchmod(fd, file_mode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)


# --- segment-anything -------------------------------------------------------------------------------------------

def _sam(record_file: Path, record: dict, out: Path, checkpoint) -> list[Path]:
    """The run's official SAM state dict with the merged encoder and the trained decoder written in."""
    model = load_run(record_file, checkpoint=checkpoint)
    if record.get("merge", {}).get("evaluated_model") != "merged":  # tested unmerged (--inference unmerged)
        method_of(record, str(record_file)).build().merge(model)  # exact: the same outputs, plain modules
    official = base_sam(record, str(record_file), checkpoint).state_dict()
    merged = model.state_dict()
    unknown = sorted(set(merged) - set(official))
    if unknown:
        raise UserError(f"{record_file}: the merged model has parameters SAM does not ({unknown[0]}, ...)")
    for name, value in merged.items():
        if name == "mask_decoder.mask_tokens.weight":  # the segmenter's one token, trained from SAM's token 0
            official[name] = official[name].clone()
            official[name][: len(value)] = value
        else:
            official[name] = value
    arch = record["config"]["sam"]
    target = out / f"sam_{arch}_{record['dataset']}_{record['method']}_seed{record['seed']}.pth"
    with atomic_output(target, "wb") as f:
        torch.save({k: v.detach().cpu().contiguous() for k, v in official.items()}, f)
    readme = out / "README.md"
    write_text_atomic(readme, f"# {record['method']} on {record['dataset']}, seed {record['seed']} ({arch})\n\n"
                      f"Load it with segment-anything:\n\n```python\nfrom segment_anything import sam_model_registry\n"
                      f"sam = sam_model_registry[{arch!r}](checkpoint={target.name!r})\n```\n\n"
                      + DECODER_NOTE.format(size=model.img_size) + "\npeftbench reads it back as the tested model "
                      "(same outputs) with `peftbench.backbone.segmenter.SamSegmenter(sam)`.\n")
    write_json_atomic(out / "peftbench_export.json", {"record": str(record_file), "format": "sam", "architecture": arch,
                                                      "method": record["config"]["method"], "merge": record.get("merge"),
                                                      "metrics": record.get("metrics")})
    return [target, readme, out / "peftbench_export.json"]

