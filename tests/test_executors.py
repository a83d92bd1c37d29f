"""Executors: every run in its own process (crashes, NaN losses recorded as that run's failure), local / several
workers / Ray / Slurm (submitit's local executor) giving the same records, the retry command of failed runs."""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftbench.cli import main, retry_command
from peftbench.data import dataset_cards
from peftbench.grid.executors import LocalExecutor, RayExecutor, SlurmExecutor, run_one
from peftbench.grid.runner import GridOptions, run_grid
from peftbench.methods import method_specs
from peftbench.store.records import record_path
from peftbench.store.resume import claim

SAM = "tiny_random"  # no weights file needed


def grid(out, executor, methods=("decoder_only",)) -> dict:
    """synth_leaf x methods x seed 0, one epoch, on the CPU."""
    opts = GridOptions(sam=SAM, device="cpu", epochs=1, seeds=[0], out=out)
    specs = [method_specs()[m] for m in methods]
    return run_grid(specs, [dataset_cards()["synth_leaf"]], opts, Console(quiet=True), executor)


def numbers(out, method="decoder_only") -> dict:
    """What must not depend on where a run executed: metrics, per-image values, untimed history, selection."""
    record = json.loads(record_path(out, "synth_leaf", method, 0).read_text())
    history = [{k: v for k, v in h.items() if k != "train_s"} for h in record["history"]]
    return {"metrics": record["metrics"], "per_image": record["per_image"], "history": history,
            "selection": record["selection"], "config_hash": record["config_hash"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The default executor's record: local, sequential, the run in a child process."""
    out = tmp_path_factory.mktemp("local")
    summary = grid(out, LocalExecutor())
    assert summary["trained"] == 1 and summary["failed"] == 0
    assert not (out / "logs" / "synth_leaf" / "decoder_only" / "seed0.log").exists()  # kept only for failures
    assert not list((out / "locks").rglob("*.lock"))
    return numbers(out)


@pytest.mark.slow
def test_in_process_gives_the_isolated_record(tmp_path, reference):
    grid(tmp_path, LocalExecutor(isolate=False))
    assert numbers(tmp_path) == reference


def test_ray_tasks_give_the_local_record(tmp_path, reference):
    pytest.importorskip("ray")
    threads = torch.get_num_threads()  # the same torch threads as the local run: bit-identical CPU numbers
    executor = RayExecutor(cpus_per_run=threads, init_kwargs={"num_cpus": threads})
    assert grid(tmp_path, executor)["trained"] == 1
    assert numbers(tmp_path) == reference
    import ray

    assert not ray.is_initialized()  # the local instance it started is shut down


def test_slurm_array_through_submitits_local_executor_gives_the_local_record(tmp_path, reference):
    pytest.importorskip("submitit")
    executor = SlurmExecutor(tmp_path / "slurm", gpus_per_task=0, cluster="local")
    assert grid(tmp_path, executor)["trained"] == 1
    assert numbers(tmp_path) == reference
    assert list((tmp_path / "slurm").glob("*_log.err"))  # submitit's job files under out/slurm


@pytest.mark.slow
def test_one_worker_per_slot_gives_the_sequential_records(tmp_path, reference):
    """The --gpus code path with two CPU workers (slots None: CUDA_VISIBLE_DEVICES inherited)."""
    summary = grid(tmp_path, LocalExecutor(slots=[None, None]), methods=("decoder_only", "lora"))
    assert summary["trained"] == 2
    assert numbers(tmp_path) == reference and record_path(tmp_path, "synth_leaf", "lora", 0).is_file()


def crash_lora(task, on_step=None, owner=None):
    """Runs in the child: lora's process dies without a word, other methods train."""
    if task.method.name == "lora":
        os._exit(3)
    return run_one(task, on_step, owner)


def crash(task, on_step=None, owner=None):
    kind = task.config.method["name"]
    claim(task.path("locks", ".lock"))  # as run_one would: the dead child leaves its lock behind
    if kind == "lora":
        os.kill(os.getpid(), signal.SIGSEGV)
    raise MemoryError("CUDA out of memory (simulated)")


def nan_loss(task, on_step=None, owner=None):
    import peftbench.training.train

    peftbench.training.train.training_loss = lambda *args, **kwargs: torch.tensor(float("nan"), requires_grad=True)
    return run_one(task, on_step, owner)


def failure(out, method) -> dict:
    return json.loads((out / "failed" / "synth_leaf" / method / "seed0.json").read_text())


@pytest.mark.slow
def test_a_crashed_run_is_recorded_as_failed_and_the_grid_goes_on(tmp_path, reference):
    summary = grid(tmp_path, LocalExecutor(run=crash_lora), methods=("decoder_only", "lora"))
    assert summary["trained"] == 1 and summary["failed"] == 1 and numbers(tmp_path) == reference
    status = failure(tmp_path, "lora")
    assert status["status"] == "failed" and status["exit_code"] == 3 and status["signal"] is None
    assert "exited with code 3" in status["error"] and os.path.isfile(status["log"])
    assert summary["failed_runs"] == [status]
    assert not record_path(tmp_path, "synth_leaf", "lora", 0).exists()


@pytest.mark.parametrize("method, signal_name, error", [
    ("lora", "SIGSEGV", "killed by SIGSEGV (segfault)"),
    ("decoder_only", None, "MemoryError: CUDA out of memory (simulated)"),
])
def test_segfaults_and_exceptions_become_a_status_with_the_log(tmp_path, method, signal_name, error):
    assert grid(tmp_path, LocalExecutor(run=crash), methods=(method,))["failed"] == 1
    status = failure(tmp_path, method)
    assert status["signal"] == signal_name and error in status["error"]
    log = Path(status["log"]).read_text()
    assert ("Fatal Python error: Segmentation fault" if signal_name else "Traceback") in log  # faulthandler / traceback
    assert not (tmp_path / "locks" / "synth_leaf" / method / "seed0.lock").exists()  # the dead child's lock freed


def test_a_nan_loss_stops_the_run_with_a_clear_error(tmp_path):
    assert grid(tmp_path, LocalExecutor(run=nan_loss))["failed"] == 1
    status = failure(tmp_path, "decoder_only")
    assert status["error"].startswith("FloatingPointError: training loss is nan at epoch 1, step 1 (decoder_only")
    assert status["exit_code"] == 1 and "FloatingPointError" in Path(status["log"]).read_text()


def interrupt_lora(task, on_step=None, owner=None):
    """Runs in the child: lora's process ends as a Ctrl-C that reached only the child does (exit code 130)."""
    if task.method.name == "lora":
        os._exit(130)
    return run_one(task, on_step, owner)


def test_an_interrupted_run_is_counted_listed_and_in_the_retry_command(tmp_path, monkeypatch, capsys):
    import peftbench.cli

    monkeypatch.setattr(peftbench.cli, "_executor", lambda args, cpu=None: LocalExecutor(run=interrupt_lora))
    args = ["run", "--device", "cpu", "--sam", SAM, "--datasets", "synth_leaf", "--methods", "decoder_only,lora",
            "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 trained" in out and "0 failed, 1 interrupted" in out
    assert "interrupted runs" in out and "synth_leaf / lora / seed 0" in out
    assert "--methods lora --seeds 0" in out.split("retry only these: ")[1].splitlines()[0]
    assert not (tmp_path / "failed" / "synth_leaf" / "lora").exists()  # not a failure: nothing went wrong in it


def test_the_retry_command_names_only_the_failed_runs_and_keeps_every_other_flag():
    argv = ["--device", "cpu", "--datasets=synth_leaf,data/my set", "--methods", "lora,dora", "--seeds", "0,1",
            "--epochs", "2", "--out", "res"]
    failed = [{"dataset": "my_set", "method": "dora", "seed": 1}, {"dataset": "my_set", "method": "lora", "seed": 1}]
    command = retry_command(argv, failed, {"synth_leaf": "synth_leaf", "my_set": "data/my set"})
    assert command == ("python run_all.py --device cpu --epochs 2 --out res --datasets 'data/my set' "
                       "--methods dora,lora --seeds 1")


@pytest.mark.slow
def test_the_printed_retry_command_reruns_only_the_failed_run(tmp_path, monkeypatch, capsys):
    """End to end through the CLI (in-process, where a test can break a run), then the printed command."""
    import peftbench.grid.executors

    real = peftbench.grid.executors.train_run

    def broken_for_lora(config, *args, **kwargs):
        if config.method["name"] == "lora":
            raise RuntimeError("broken on purpose")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(peftbench.grid.executors, "train_run", broken_for_lora)
    args = ["run", "--device", "cpu", "--datasets", "synth_leaf", "--methods", "decoder_only,lora", "--seeds", "0",
            "--epochs", "1", "--in-process", "--out", str(tmp_path)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "synth_leaf / lora / seed 0: RuntimeError: broken on purpose" in out
    command = out.split("retry only these: ")[1].splitlines()[0]
    assert "--methods lora --seeds 0" in command and "--datasets synth_leaf" in command
    monkeypatch.setattr(peftbench.grid.executors, "train_run", real)
    assert main(["run", *shlex.split(command)[2:]]) == 0
    assert "1 trained, 0 skipped" in capsys.readouterr().out  # the product holds only the failed run
    assert record_path(tmp_path, "synth_leaf", "lora", 0).is_file()
    assert not list((tmp_path / "failed").rglob("seed*.*"))  # the old failure's status and log are gone


def test_a_lock_of_the_same_slurm_job_is_taken_over_after_a_requeue(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "started": 0, "owner": "slurm:7_3"}))
    assert not claim(lock) and not claim(lock, owner="slurm:8_0")  # another host's fresh lock: trusted
    assert claim(lock, owner="slurm:7_3")  # our own job, preempted and requeued (maybe on another node)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("args, message", [
    (["--gpus", "0,1"], "--gpus 0,1: this machine has no CUDA GPU"),
    (["--executor", "ray", "--gpus", "0"], "--gpus is for --executor local"),
    (["--executor", "slurm", "--slurm-time", "1h"], "--slurm-time '1h'"),
    (["--slurm-partition", "gpu"], "--slurm-partition is for --executor slurm, not local"),
    (["--executor", "slurm", "--ray-address", "auto"], "--ray-address is for --executor ray, not slurm"),
])
def test_executor_flags_fail_in_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "run_all.py", "--methods", "lora", *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_gpu_indices_follow_an_inherited_cuda_visible_devices(monkeypatch):
    from peftbench.grid.executors import visible_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices(["0", "1"]) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # e.g. what Slurm gave this job
    assert visible_devices(["0", "1"]) == ["4", "5"] and visible_devices(["1"]) == ["5"]
