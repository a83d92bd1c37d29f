"""Trained runs kept, loaded back exactly as tested, and exported for peft and segment-anything (each round trip
closed by the other library itself)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import safetensors.torch
import torch
from segment_anything import sam_model_registry

from peftbench import dataset_cards, load_run
from peftbench.backbone.sam import build_sam, load_sam
from peftbench.backbone.segmenter import SamSegmenter
from peftbench.data import build_splits
from peftbench.errors import UserError
from peftbench.export import export_run
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import method_specs
from peftbench.methods.base import trainable_state
from peftbench.store.atomic import write_json_atomic
from peftbench.store.hashing import file_sha256
from peftbench.store.records import config_hash, record_path
from peftbench.training.runs import adapter_path, save_trained_state
from peftbench.training.train import evaluate

METHODS = ["lora", "dora", "vera", "nas_pc_lora"]
CARD = "synth_leaf"


def peftbench_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftbench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=900, check=False)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """One seed of four methods on a synthetic card, 2 epochs (NAS-PC-LoRA searches in the second)."""
    out = tmp_path_factory.mktemp("grid") / "results"
    done = peftbench_cli("run", "--methods", ",".join(METHODS), "--datasets", CARD, "--seeds", "0", "--epochs", "2",
                         "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def record_of(out: Path, method: str) -> Path:
    return record_path(out, CARD, method, 0)


def test_every_finished_run_keeps_the_state_it_tested(grid):
    for method in METHODS:
        record = json.loads(record_of(grid, method).read_text())
        saved = record["adapter"]
        path = grid / saved["file"]
        assert path == adapter_path(grid, CARD, method, 0) and path.is_file()
        assert saved["sha256"] == file_sha256(path) and saved["bytes"] == path.stat().st_size
        tensors = safetensors.torch.load_file(path)
        assert saved["numel"] == sum(t.numel() for t in tensors.values()) and saved["tensors"] == len(tensors)
        assert record["params"]["trainable"] <= saved["numel"]  # trainable parameters, plus the buffers


@pytest.mark.parametrize("method", ["lora", "nas_pc_lora"])  # tested merged / unmerged (an approximate merge)
def test_load_run_gives_the_tested_model_exactly(grid, method):
    record = json.loads(record_of(grid, method).read_text())
    model = load_run(record_of(grid, method))
    assert not model.training
    card = dataset_cards()[CARD]
    metrics, _, _ = evaluate(model, build_splits(card, model.img_size, keys=True)["test"].loader(4), card,
                             torch.device("cpu"))
    assert metrics == record["metrics"]["test"]
    assert record["merge"]["evaluated_model"] == ("merged" if method == "lora" else "unmerged")


def test_load_run_without_the_adapter_is_the_starting_segmenter(grid):
    x = torch.randn(2, 3, 64, 64)
    base, start = load_run(record_of(grid, "lora"), adapter=False), SamSegmenter(load_sam("tiny")).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(x)["mask_logits"], start(x)["mask_logits"], rtol=0, atol=0)
        assert (load_run(record_of(grid, "lora"))(x)["mask_logits"] - start(x)["mask_logits"]).abs().max() > 1e-3


def test_a_missing_or_changed_state_is_a_one_line_error_naming_it(grid, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(grid, out)
    record, state = record_of(out, "lora"), adapter_path(out, CARD, "lora", 0)
    data = bytearray(state.read_bytes())
    data[-1] ^= 1
    state.write_bytes(bytes(data))
    with pytest.raises(UserError, match="differs from the sha256 recorded") as err:
        load_run(record)
    assert str(state) in str(err.value) and "\n" not in str(err.value)
    state.unlink()
    with pytest.raises(UserError, match=f"{state}: the trained state of .* is missing"):
        load_run(record)


def test_a_rerun_skips_finished_runs_and_keeps_their_files(grid):
    state = adapter_path(grid, CARD, "lora", 0)
    before = (state.stat().st_mtime_ns, file_sha256(state))
    done = peftbench_cli("run", "--methods", "lora", "--datasets", CARD, "--seeds", "0", "--epochs", "2",
                         "--out", grid)
    assert done.returncode == 0 and "0 trained, 1 skipped" in done.stdout
    assert (state.stat().st_mtime_ns, file_sha256(state)) == before


def test_no_save_adapters_and_replace(grid, tmp_path):
    out = tmp_path / "results"
    done = peftbench_cli("run", "--methods", "lora", "--datasets", CARD, "--seeds", "0", "--epochs", "1",
                         "--no-save-adapters", "--out", out)
    assert done.returncode == 0, done.stderr
    assert not (out / "adapters").exists() and "adapter" not in json.loads(record_of(out, "lora").read_text())
    with pytest.raises(UserError, match="kept no trained state"):
        load_run(record_of(out, "lora"))
    # --replace moves a replaced record's state with it, where load_run still finds it; --out as typed, relative.
    shutil.copytree(grid, out, dirs_exist_ok=True)
    done = peftbench_cli("run", "--methods", "lora", "--datasets", CARD, "--seeds", "0", "--epochs", "1",
                         "--replace", "--out", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (moved,) = (out / "replaced").glob("*/runs/synth_leaf/lora/seed0.json")
    assert json.loads(moved.read_text())["config"]["epochs"] == 2
    load_run(moved)
    assert json.loads(record_of(out, "lora").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize("method", ["lora", "dora", "vera"])
def test_peft_loads_the_exported_adapter_as_the_tested_model(grid, method, tmp_path):
    record = record_of(grid, method)
    files = export_run(record, "peft", tmp_path / "peft")
    assert {f.name for f in files} == {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = peft.PeftModel.from_pretrained(load_run(record, adapter=False), str(tmp_path / "peft")).eval()
    tested = load_run(record)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = tested(x), reloaded(x)
    torch.testing.assert_close(theirs["mask_logits"], ours["mask_logits"], rtol=0, atol=1e-4)
    assert (ours["mask_logits"] - load_run(record, adapter=False)(x)["mask_logits"]).abs().max() > 1e-2


def test_a_format_a_method_cannot_give_is_an_error_naming_the_ones_it_can(grid, tmp_path):
    with pytest.raises(UserError, match=r"--format peft: nas_pc_lora \(nas_lora, tiny\) exports as state$"):
        export_run(record_of(grid, "nas_pc_lora"), "peft", tmp_path)
    with pytest.raises(UserError, match=r"--format sam: lora \(lora, tiny\) exports as state, peft$"):
        export_run(record_of(grid, "lora"), "sam", tmp_path)
    done = peftbench_cli("export", record_of(grid, "nas_pc_lora"), "--format", "peft", "--out", tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_state_export_holds_the_trained_state_and_the_config(grid, tmp_path):
    record = record_of(grid, "nas_pc_lora")
    state, run = export_run(record, "state", tmp_path)
    assert file_sha256(state) == json.loads(record.read_text())["adapter"]["sha256"]
    assert json.loads(run.read_text())["config"] == json.loads(record.read_text())["config"]


def test_sam_export_loads_strictly_into_segment_anything(tmp_path):
    """On a randomly initialised official vit_b saved as a checkpoint file: a LoRA run's merged checkpoint loads
    with sam_model_registry strictly, and peftbench's segmenter on it is the tested model, tensor for tensor."""
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_sam("vit_b").state_dict(), checkpoint)
    out, spec, card = tmp_path / "results", method_specs()["lora"], dataset_cards()[CARD]
    config = resolve_config(spec, card, 0, GridOptions(sam="vit_b", checkpoint=str(checkpoint), device="cpu"))
    model = SamSegmenter(load_sam("vit_b", checkpoint))
    spec.build().attach(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stands in for training at 1024 px (25 s per forward on a CPU)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
    record = record_path(out, card.name, "lora", 0)
    state = save_trained_state(trainable_state(model), adapter_path(out, card.name, "lora", 0), out, {})
    write_json_atomic(record, {"method": "lora", "dataset": card.name, "seed": 0, "metrics": {"test": {}},
                               "config": config.as_dict(), "config_hash": config_hash(config), "adapter": state,
                               "merge": {"evaluated_model": "merged"}})
    files = export_run(record, "sam", tmp_path / "sam")
    sam = sam_model_registry["vit_b"](checkpoint=str(files[0]))  # load_state_dict(strict=True)
    ours, theirs = load_run(record).state_dict(), SamSegmenter(sam).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert "mask token 0" in files[1].read_text()
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 1  # a changed weight
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(UserError, match="differs from the SAM checkpoint recorded"):
        load_run(record)
