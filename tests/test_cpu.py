"""The CPU execution policy: cores as the scheduler grants them, threads and parallel runs per model size."""

import json
import os
import subprocess
import sys

import pytest

from peftbench.cli import main
from peftbench.grid import cpu
from peftbench.store.records import record_path


def test_policy_per_model_size_and_overrides():
    assert cpu.cpu_policy("tiny", 4) == (4, 1)  # overhead-bound: single-threaded runs side by side
    assert cpu.cpu_policy("vit_b", 4) == (1, 4)  # one wide run
    assert cpu.cpu_policy("tiny", 4, threads=2) == (2, 2) and cpu.cpu_policy("vit_h", 4, workers=2) == (2, 2)
    assert cpu.cpu_policy("tiny", 2, workers=3, threads=3) == (3, 3)  # both given: taken as they are


def test_cores_come_from_the_affinity_mask_and_the_cgroup_quota(tmp_path, monkeypatch):
    code = "import os; os.sched_setaffinity(0, {0}); from peftbench.grid.cpu import available_cores; print(available_cores())"
    one_core = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert one_core.stdout.strip() == "1"
    monkeypatch.setattr(cpu, "CGROUP", tmp_path)
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores of quota
    assert cpu.available_cores() == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.available_cores() == min(len(os.sched_getaffinity(0)), os.cpu_count())


def test_openmp_threads_sleep_when_idle():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", "import os, peftbench; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "PASSIVE"


def test_parallel_cpu_runs_train_each_run_once_and_record_the_setting(tmp_path):
    args = ["run", "--device", "cpu", "--methods", "decoder_only,lora", "--datasets", "synth_road", "--seeds", "0,1",
            "--epochs", "1", "--cpu-workers", "2", "--threads-per-run", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    for method in ("decoder_only", "lora"):
        for seed in (0, 1):
            record = json.loads(record_path(tmp_path, "synth_road", method, seed).read_text())
            assert (record["config"]["cpu_workers"], record["config"]["threads_per_run"]) == (2, 1)
            assert record["device"]["torch_threads"] == 1
    assert "2 x 1" in (tmp_path / "tables" / "timing.md").read_text()
    assert not list((tmp_path / "locks").rglob("*.lock"))
    # Another setting of the policy is a speed setting: the finished records are kept, not retrained.
    assert main([*args[:-6], "--cpu-workers", "1", "--threads-per-run", "2", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--executor", "ray", "--cpu-workers", "2"], "--cpu-workers is for --executor local"),
    (["--gpus", "0", "--threads-per-run", "1", "--device", "cuda"], "for CPU runs"),
    (["--cpu-workers", "0"], "--cpu-workers"),
])
def test_cpu_flags_in_the_wrong_place_are_one_line_errors(flags, message, tmp_path, capsys):
    assert main(["run", "--methods", "lora", "--datasets", "synth_road", *flags, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
