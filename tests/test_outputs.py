"""Every output atomic and readable, failures one line, values checked before the first run: a full disk (a real
small tmpfs, and simulated), a killed writer's temporaries, a peft export that fails half-way, bad dataset cards."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import peft.peft_model
import pytest
import safetensors
import torch
from PIL import Image

from peftbench.cli import main
from peftbench.data import resolve_dataset
from peftbench.store.atomic import TEMPORARY_GRACE_S, remove_stale_temporaries, write_json_atomic
from peftbench.store.records import record_path
from peftbench.store.resume import claim, save_checkpoint

RUN = ["run", "--device", "cpu", "--datasets", "synth_road", "--methods", "lora", "--epochs", "1"]
FULL = "No space left on device"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder holding one finished LoRA run (seed 0, one epoch) on the tiny SAM."""
    out = tmp_path_factory.mktemp("finished") / "results"
    assert main([*RUN, "--seeds", "0", "--out", str(out)]) == 0
    return out


def lora_record(out: Path) -> Path:
    return record_path(out, "synth_road", "lora", 0)


def one_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and all(p in err for p in parts), err
    return err


def aged(*paths: Path) -> None:
    """Make `paths` look untouched for longer than a live writer's temporary can be."""
    old = time.time() - 10 * TEMPORARY_GRACE_S
    for path in paths:
        os.utime(path, (old, old))


# --- a full disk ------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root, as on this machine and CI), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system to fill")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        pytest.skip(f"mounting a small tmpfs to fill is not permitted here ({done.stderr.strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Take every free byte of the file system at `disk` but `leave`."""
    with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as full:
        while True:
            f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    os.truncate(disk / "filler", os.path.getsize(disk / "filler") - leave)


@pytest.fixture
def results_on(finished, small_disk) -> Path:
    """A copy of the finished run's record and trained state on the small disk."""
    out = small_disk / "results"
    for folder in ("runs", "adapters"):
        shutil.copytree(finished / folder, out / folder)
    return out


def contents(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_full_disk_is_one_line_for_export_predict_and_report(results_on, tmp_path, capsys):
    full_results, disk = results_on, results_on.parent
    fill(disk)
    kept, record = contents(full_results), str(lora_record(full_results))
    image = tmp_path / "new.png"
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(image)
    commands = {"peft": ["export", record, "--format", "peft"], "state": ["export", record, "--format", "state"],
                "masks": ["predict", record, "--images", str(image)]}
    for folder, command in commands.items():
        assert main([*command, "--out", str(disk / folder)]) == 2
        one_line(capsys, f"cannot write {disk / folder}", FULL, "finished runs are kept")
        assert not [p for p in (disk / folder).rglob("*")]  # no half export, no temporary
    assert main(["report", "--out", str(full_results)]) == 2  # tables, figures (matplotlib), report.html
    one_line(capsys, f"cannot write {full_results}", FULL)
    assert contents(full_results) == kept
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("workers, free", [("1", 0), ("1", 32 * 1024), ("2", 0)])
def test_a_run_on_a_full_disk_is_one_line_and_keeps_every_finished_run(results_on, workers, free, capsys,
                                                                         monkeypatch):
    """No space for the run's lock, or (32 KiB free) for its first checkpoint (torch.save) after an epoch."""
    fill(results_on.parent, free)
    kept, thread_errors = contents(results_on), []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    assert main([*RUN, "--seeds", "0,1", "--checkpoint-interval", "0", "--cpu-workers", workers,
                 "--out", str(results_on)]) == 2  # seed 1 trains
    one_line(capsys, f"cannot write {results_on}", FULL)
    assert not thread_errors
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert not [p for p in results_on.parent.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    if free:  # the run's own failure is recorded, with the disk's error naming the checkpoint (torch's hid it)
        failure = json.loads((results_on / "failed" / "synth_road" / "lora" / "seed1.json").read_text())
        assert failure["error"].startswith(f"OSError: [Errno 28] {FULL}: '{results_on / 'checkpoints'}")


def test_a_lock_the_disk_could_not_take_never_blocks_its_run(tmp_path, monkeypatch):
    lock = tmp_path / "seed0.lock"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError):
        claim(lock)
    assert not lock.exists()
    monkeypatch.undo()
    lock.write_text("")  # its writer killed between creating and writing it
    assert not claim(lock)  # it may be being written
    aged(lock)
    assert claim(lock) and json.loads(lock.read_text())["pid"] == os.getpid()


class FullDisk:
    """A file object over `f` whose disk fills up after its first write."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)


def test_a_checkpoint_on_a_full_disk_is_the_disks_error_naming_the_file_not_torchs(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "seed0.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, FullDisk(f)))  # torch: "unexpected pos 64 vs 0"
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"epoch": 2, "model": torch.zeros(1000)})
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_bytes() == before and os.listdir(path.parent) == ["seed0.pt"]


# --- the peft export --------------------------------------------------------------------------------------------

def test_a_peft_export_is_whole_or_absent_and_readable_by_the_team(finished, tmp_path, monkeypatch, capsys):
    target, record = tmp_path / "peft", str(lora_record(finished))
    save_file = peft.peft_model.safe_save_file

    def half_then_full(tensors, filename, metadata=None):  # as safetensors fails on a full disk
        Path(filename).write_bytes(b"half")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_then_full)
    assert main(["export", record, "--format", "peft", "--out", str(target)]) == 2
    one_line(capsys, f"cannot write {target}: {FULL}")
    assert list(target.iterdir()) == []  # no README.md, no half weights, no temporary folder
    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)
    umask = os.umask(0o022)
    try:
        assert main(["export", record, "--format", "peft", "--out", str(target)]) == 0
    finally:
        os.umask(umask)
    files = {p.name: p.read_bytes() for p in target.iterdir()}
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()} == {0o644}  # peft's weights: 0600

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(peft.peft_model, "safe_save_file", killed)
    assert main(["export", record, "--format", "peft", "--out", str(target)]) == 130
    assert {p.name: p.read_bytes() for p in target.iterdir()} == files  # the earlier export, untouched


# --- a killed writer's temporaries ------------------------------------------------------------------------------

WRITER = """
import sys, time
from peftbench.store.atomic import atomic_output
with atomic_output(sys.argv[1]) as f:
    f.write("half")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_and_a_live_writers_never(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(folder / "seed1.json")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert live.stdout.readline() == "writing\n"
        (writing,) = folder.glob(".seed1.json.*.tmp")
        stale, young = folder / ".seed0.json.ab_d1234.tmp", folder / ".seed2.json.efgh5678.tmp"
        staging = folder / ".peft.ijkl9012.tmp"  # export's temporary folder
        others = [folder / name for name in (".seed0.json.abc.tmp", "seed0.json.abcd1234.tmp", ".notes.tmp",
                                             ".seed0.json.ABCD1234.tmp", ".seed0.json.abcd1234.tmp.keep")]
        staging.mkdir()
        for path in [stale, young, staging / "README.md", *others]:
            path.write_bytes(b"")
        aged(stale, writing, staging / "README.md", staging, *others)
        write_json_atomic(folder / "seed0.json", {"seed": 0})  # the next write in the folder
        assert not stale.exists() and not staging.exists()
        assert writing.exists() and young.exists() and all(p.exists() for p in others)
        live.kill()  # kill -9: its temporary stays behind
        live.wait()
        assert writing.exists()
        assert remove_stale_temporaries(tmp_path, recursive=True) == [writing]
    finally:
        live.kill()
        live.wait()


def test_a_grid_removes_a_killed_grids_temporaries_where_it_writes_nothing(finished, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(finished, out)
    left = [out / "runs" / "synth_road" / "lora" / ".seed7.json.abcd1234.tmp",
            out / "checkpoints" / "synth_road" / "lora" / ".seed7.pt.abcd1234.tmp",
            out / "adapters" / "synth_road" / "lora" / ".seed7.safetensors.abcd1234.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    aged(*left)
    assert main([*RUN, "--seeds", "0", "--out", str(out)]) == 0  # recorded: nothing trains
    assert not any(p.exists() for p in left)


# --- dataset cards ----------------------------------------------------------------------------------------------

CARD = """name = {name}
kind = "binary"
source = "synthetic"
generator = "road"
size = {size}
num_classes = {num_classes}
f_beta2 = {f_beta2}
metrics = ["iou"]
select_metric = "iou"

[splits]
train = {train}
val = 4
test = 4

[train]
epochs = {epochs}
lr = {lr}
"""
GOOD = {"name": '"mine"', "size": 32, "num_classes": 1, "f_beta2": 1.0, "train": 8, "epochs": 1, "lr": 1e-3}


@pytest.mark.parametrize("key, value, message", [
    ("lr", '"abc"', "lr must be a positive number, not 'abc'"),
    ("lr", "-0.1", "lr must be a positive number, not -0.1"),
    ("epochs", "true", "epochs must be a positive integer, not True"),
    ("epochs", "1.5", "epochs must be a positive integer, not 1.5"),
    ("size", "-64", "size must be a positive integer, not -64"),
    ("num_classes", "0", "num_classes must be a positive integer, not 0"),
    ("num_classes", "3", "num_classes 3 does not fit kind 'binary'"),
    ("f_beta2", '"one"', "f_beta2 must be a positive number, not 'one'"),
    ("train", '"many"', "splits.train must be a positive integer, not 'many'"),
    ("name", '"../escape"', "name must be a single folder name"),
    ("name", '"a\\\\b"', "name must be a single folder name"),
    ("name", '".hidden"', "name must be a single folder name"),
    ("name", '""', "name must be a single folder name"),
    ("name", '"bell\\u0007"', "name must be a single folder name"),
])
def test_a_bad_card_value_is_one_line_naming_the_file_and_key_before_any_run(key, value, message, tmp_path, capsys):
    card = tmp_path / "mine.toml"
    card.write_text(CARD.format(**{**GOOD, key: value}))
    assert main(["run", "--device", "cpu", "--datasets", str(card), "--methods", "decoder_only", "--seeds", "0",
                 "--out", str(tmp_path / "out")]) == 2
    one_line(capsys, f"{card}: {message}")
    assert not (tmp_path / "out").exists()


def test_a_hidden_folders_dataset_files_its_records_where_the_tables_see_them(tmp_path):
    folder = tmp_path / ".data"
    for split in ("train", "val", "test"):
        for kind in ("images", "masks"):
            (folder / split / kind).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / split / "images" / "0.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / split / "masks" / "0.png")
    assert resolve_dataset(str(folder)).name.startswith("data-")
