"""Runs that survive: a killed grid resumes from its last epoch with the same final record; runs are claimed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from peftbench.cli import main
from peftbench.store.records import record_path
from peftbench.store.resume import _alive, claim, release

ARGS = ["--device", "cpu", "--datasets", "synth_road", "--methods", "lora", "--seeds", "0"]


def untimed(record):
    return [{k: v for k, v in h.items() if k != "train_s"} for h in record["history"]]


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_record(tmp_path):
    args = [*ARGS, "--epochs", "12", "--checkpoint-interval", "0"]
    assert main(["run", *args, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "run_all.py", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "synth_road" / "lora" / "seed0.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 after the first finished epoch
    proc.wait()
    assert checkpoint.exists() and not record_path(out, "synth_road", "lora", 0).exists()
    lock = out / "locks" / "synth_road" / "lora" / "seed0.lock"
    # The run's own process dies with the grid (its forkserver exits, then the death signal): a moment later. Its
    # lock stays behind, unless the run reported a step to the dead grid first: the broken pipe ends the run
    # normally, releasing its lock (the checkpoint stays either way).
    try:
        holder = json.loads(lock.read_text())["pid"]
    except FileNotFoundError:
        holder = None
    deadline = time.time() + 30
    while holder is not None and _alive(holder):
        assert time.time() < deadline, "the killed grid's run process is still alive"
        time.sleep(0.05)
    assert main(["run", *args, "--out", str(out)]) == 0  # takes the stale lock over and continues
    straight, resumed = (json.loads(record_path(d, "synth_road", "lora", 0).read_text()) for d in (tmp_path / "straight", out))
    assert resumed["metrics"] == straight["metrics"] and untimed(resumed) == untimed(straight)
    assert not checkpoint.exists() and not (out / "locks" / "synth_road" / "lora" / "seed0.lock").exists()


def test_two_concurrent_grids_train_each_run_once(tmp_path):
    args = ["--device", "cpu", "--datasets", "synth_road", "--methods", "lora,decoder_only", "--seeds", "0,1",
            "--epochs", "2", "--out", str(tmp_path)]
    procs = [subprocess.Popen([sys.executable, "run_all.py", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    trained = sum(int(o.split("done in")[1].split(":")[1].split("trained")[0]) for o in outputs)
    assert trained == 4
    assert len(list((tmp_path / "runs").glob("*/*/seed*.json"))) == 4


def test_claims_respect_live_owners_and_take_over_dead_ones(tmp_path):
    lock = tmp_path / "run.lock"
    assert claim(lock) and not claim(lock)  # held by this live process
    release(lock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = json.loads(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "started": 0}))
    lock.write_text(json.dumps(holder))
    assert claim(lock) and json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_dead_but_unreaped_process_holds_no_lock(tmp_path):
    """An orphaned run in a container whose init never reaps stays a zombie: its lock must still be taken over."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline
        time.sleep(0.02)
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": zombie.pid, "started": 0}))
    assert claim(lock) and json.loads(lock.read_text())["pid"] == os.getpid()
    zombie.wait()


def _race(lock: Path, barrier, wins) -> None:
    barrier.wait()
    wins.put(claim(lock))
    barrier.wait()  # the winner stays alive (a live holder) until every racer has tried


def test_many_processes_racing_for_one_stale_lock_leave_exactly_one_winner(tmp_path):
    """A takeover is atomic: of 12 processes that all find the same dead holder's lock, exactly one gets it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reaped)
    for trial in range(25):
        lock = tmp_path / f"run{trial}.lock"
        lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid, "owner": None}))
        barrier, wins = context.Barrier(12), context.Queue()
        racers = [context.Process(target=_race, args=(lock, barrier, wins)) for _ in range(12)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        results = [wins.get(timeout=5) for _ in racers]
        assert results.count(True) == 1, (trial, results)
        assert json.loads(lock.read_text())["pid"] != dead.pid


class _Planted:
    """Runs code when unpickled by a loader that allows it (what a tampered checkpoint would carry)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_checkpoint_cannot_run_code_and_the_run_still_finishes(tmp_path):
    import torch

    from peftbench.data import dataset_cards
    from peftbench.grid.runner import GridOptions, resolve_config
    from peftbench.methods import get_method
    from peftbench.store.records import config_hash

    out, marker = tmp_path / "out", tmp_path / "code_ran"
    config = resolve_config(get_method("lora"), dataset_cards()["synth_road"], 0, GridOptions(device="cpu", epochs=1))
    planted = out / "checkpoints" / "synth_road" / "lora" / "seed0.pt"  # the name a resuming run loads
    planted.parent.mkdir(parents=True)
    torch.save({"config_hash": config_hash(config), "model": _Planted(str(marker))}, planted)
    torch.load(planted, weights_only=False)  # the plant is live: an unrestricted load runs its code
    assert marker.exists()
    marker.unlink()
    assert main(["run", "--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--epochs", "1",
                 "--methods", "lora", "--out", str(out)]) == 0
    assert not marker.exists() and record_path(out, "synth_road", "lora", 0).is_file()
    log = next((out / "failed").rglob("*.log"), None) if (out / "failed").exists() else None
    assert log is None  # the run did not fail: it ignored the checkpoint and started over
