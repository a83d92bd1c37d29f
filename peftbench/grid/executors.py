"""Where runs execute. Every executor calls the same run function, `run_one` (claim the lock, train, write the
record), each run in a process of its own (`run_isolated`), and writes the same results layout:

    runs/<dataset>/<method>/seed<k>.json     the record (written atomically)
    locks/...seed<k>.lock                    the claim while the run trains
    checkpoints/...seed<k>.pt                mid-run state of an unfinished run
    logs/...seed<k>.log                      stdout/stderr of a run in progress
    failed/...seed<k>.json, seed<k>.log      status (error, exit code or signal, log path) and log of a failed run

A crash (segfault, `os._exit`, the kernel's OOM killer), a CUDA OOM or a NaN loss ends only that run's process;
its failure is recorded and the grid goes on. Executors:

- `LocalExecutor`: runs one after the other, or one worker per GPU (`CUDA_VISIBLE_DEVICES` per child process).
- `RayExecutor`: each run a Ray task (one GPU when the runs train on CUDA), on a local instance or a cluster.
- `SlurmExecutor`: one Slurm array job per grid through submitit; a preempted or timed-out task is requeued and
  continues from its last mid-run checkpoint, taking over its own lock.

Children are forked from a fork server that has imported peftbench once (a fresh `python` costs seconds of imports
per run, more than a tiny CPU run) and has run no torch operation, so no CUDA context or OpenMP pool crosses a fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ..data import DatasetCard
from ..errors import UserError
from ..methods import MethodSpec
from ..store.atomic import write_json_atomic, write_text_atomic
from ..store.layout import run_file
from ..store.records import RECORD_SCHEMA, config_hash, is_complete, record_path, usable_record
from ..store.resume import claim, release
from ..training.config import RunConfig
from ..training.device import resolve_device
from ..training.runs import adapter_path, save_trained_state
from ..training.train import train_run

if TYPE_CHECKING:
    from .trackers import TrackerSpec

ProgressCallback = Callable[[int, int, int, float], None]  # (epoch, step, steps_per_epoch, loss)


@dataclass(frozen=True)
class RunTask:
    """One (dataset, method, seed) run: everything a process on any machine sharing the results folder needs."""

    card: DatasetCard
    method: MethodSpec
    seed: int
    config: RunConfig  # resolved; its hash decides whether a stored record is still valid
    out: Path  # absolute, so workers in other folders or on other hosts write to the same place
    cwd: str  # the driver's working directory: relative dataset and checkpoint paths resolve as they did there
    environment: dict  # python, packages, git commit of the driver
    checkpoint_interval_s: float
    save_adapter: bool = True  # keep the tested model's trained state (runs.save_trained_state)
    tracker: TrackerSpec | None = None  # log the run to an experiment tracker as it trains

    @property
    def label(self) -> str:
        return f"{self.card.name} / {self.method.name} / seed {self.seed}"

    def path(self, kind: str, suffix: str) -> Path:
        """This run's file of `kind` in the results layout (store/layout.py)."""
        return run_file(self.out, kind, self.card.name, self.method.name, self.seed, suffix)


def status(task: RunTask, state: str, **details) -> dict:
    """state: trained, skipped (recorded already), claimed (another process has it), failed or interrupted."""
    return {"dataset": task.card.name, "method": task.method.name, "seed": task.seed, "status": state, **details}


def run_one(task: RunTask, on_step: ProgressCallback | None = None, owner: str | None = None) -> dict:
    """The run function of every executor: claim the run, train it (continuing a checkpoint), write its record."""
    record = record_path(task.out, task.card.name, task.method.name, task.seed)
    lock, checkpoint = task.path("locks", ".lock"), task.path("checkpoints", ".pt")
    if is_complete(record, task.config):
        return status(task, "skipped")
    if not claim(lock, owner):
        return status(task, "claimed")
    try:
        if is_complete(record, task.config):  # finished by another process between the check and the claim
            return status(task, "skipped")
        start = time.time()
        step = None if on_step is None else lambda epoch, i, steps, loss, groups: on_step(epoch, i, steps, loss)
        log = None
        if task.tracker:  # an optional dependency: imported only when asked for
            from .trackers import RunLog

            log = RunLog(task.tracker, f"{task.card.name}/{task.method.name}/seed{task.seed}",
                         {"dataset": task.card.name, "method": task.method.name, "seed": str(task.seed),
                          "config_hash": config_hash(task.config)})
        try:
            result = train_run(task.config, task.card, task.method, step, checkpoint=checkpoint, lock=lock,
                               checkpoint_interval_s=task.checkpoint_interval_s, log=log)
        except BaseException as err:
            if log:  # the run's own error is the one to report, even if the tracker fails too
                with contextlib.suppress(Exception):
                    log.finish({}, {}, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        trained = result.pop("trained_state")
        if usable_record(record):  # another config's record appeared meanwhile (another driver): never replace it
            raise RuntimeError(f"{record}: a record of another config was written while this run trained; "
                               "this run's result is not recorded")
        if task.save_adapter:  # first: the record names the file
            result["adapter"] = save_trained_state(
                trained, adapter_path(task.out, task.card.name, task.method.name, task.seed), task.out,
                {"config_hash": config_hash(task.config)})
        write_json_atomic(record, {
            "method": task.method.name, "dataset": task.card.name, "seed": task.seed, **result,
            "config": task.config.as_dict(), "config_hash": config_hash(task.config), "environment": task.environment,
            "method_info": task.method.info(), "schema": RECORD_SCHEMA,  # beside the config: not in its identity
            "device": {"type": task.config.device, "name": result.pop("device_name"),
                       "torch_threads": torch.get_num_threads()},
            "wall_time_s": time.time() - start,
        })
        if log:
            _finish_log(log, result)
        checkpoint.unlink(missing_ok=True)
        for stale in (task.path("failed", ".json"), task.path("failed", ".log")):  # an earlier attempt's failure
            stale.unlink(missing_ok=True)
        return status(task, "trained")
    finally:
        release(lock)


def _finish_log(log, result: dict) -> None:
    """Final test metrics and timing to the tracker; the run is recorded already, so a tracker failing now is a
    warning in the run's log, not a failed run."""
    try:
        log.finish({f"test/{test}/{name}": value for test, values in result["metrics"].items()
                    for name, value in values.items()},
                   {f"timing/{k}": v for k, v in result["timing"].items() if isinstance(v, (int, float))})
    except Exception as err:  # noqa: BLE001 - any tracker error: the recorded run stands
        print(f"peftbench: warning: the tracker did not take the final metrics ({type(err).__name__}: {err})",
              file=sys.stderr)


def record_failure(task: RunTask, error: str, log: Path | None = None, log_text: str | None = None,
                   exit_code: int | None = None) -> dict:
    """Write failed/<...>/seed<k>.json (and the log next to it); returns the status. `log`: the run's log file
    (a child's output, moved there); `log_text`: what to write there otherwise (an in-process traceback)."""
    failed_log = task.path("failed", ".log")
    failed_log.parent.mkdir(parents=True, exist_ok=True)
    if log is not None and log.is_file() and log.is_relative_to(task.out / "logs"):
        os.replace(log, failed_log)
    elif log is not None and log.is_file():  # a log the executor keeps elsewhere (submitit's): point at it
        failed_log = log
    else:  # no log was written (the process died starting up): the error is all there is
        write_text_atomic(failed_log, log_text or error + "\n")
    signal_name = signal.Signals(-exit_code).name if exit_code is not None and exit_code < 0 else None
    result = status(task, "failed", error=error, exit_code=exit_code, signal=signal_name,
                    log=str(failed_log) if failed_log else None, host=socket.gethostname(), time=time.time())
    write_json_atomic(task.path("failed", ".json"), result)
    return result


def _exit_reason(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name
        hint = {"SIGKILL": " (out of memory? the kernel's OOM killer sends SIGKILL)", "SIGSEGV": " (segfault)"}
        return f"process killed by {name}{hint.get(name, '')}"
    return f"process exited with code {exit_code} before reporting a result"


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed grid leaves no orphan training on."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an orphan finishes its run and releases the lock itself
        pass


def _child(task: RunTask, send, log: str, gpu: str | None, threads: int | None, owner: str | None,
           run: Callable) -> None:
    """Body of a run's process: output to `log`, then `run(task, on_step, owner)`; reports through `send`."""
    _die_with_parent()
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    faulthandler.enable()  # a segfault's Python stack ends up in the log
    os.chdir(task.cwd)
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run(task, lambda *progress: send.send(("step", progress)), owner)
    except KeyboardInterrupt:
        os._exit(130)
    except BaseException as err:  # noqa: BLE001 - any failure of the run is reported, not raised
        traceback.print_exc()
        sys.stderr.flush()
        send.send(("error", f"{type(err).__name__}: {err}"))
        os._exit(1)
    send.send(("status", result))


def _context(start_method: str) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(["peftbench.grid.executors"])  # imported once, not per run
    return context


def run_isolated(task: RunTask, on_step: ProgressCallback | None = None, gpu: str | None = None,
                 threads: int | None = None, owner: str | None = None, run: Callable = run_one,
                 start_method: str = "forkserver") -> dict:
    """`run(task, on_step, owner)` (default `run_one`) in a child process; returns its status. A child that dies
    without one (crash, OOM kill, exception) is recorded as failed with its exit code or signal and its log.
    `gpu`: the child's CUDA_VISIBLE_DEVICES; `threads`: its torch threads (default: torch's own choice)."""
    log = task.path("logs", ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    context = _context(start_method)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(task, send, str(log), gpu, threads, owner, run),
                              name=f"peftbench {task.label}")
    result, error = None, None
    try:
        process.start()
        send.close()
        while True:
            ready = wait([receive, process.sentinel])
            if receive not in ready and not receive.poll():
                break  # ended, but a grandchild (a data-loader worker) may still hold the pipe open
            try:
                kind, payload = receive.recv()
            except EOFError:
                break
            if kind == "step" and on_step is not None:
                on_step(*payload)
            elif kind == "status":
                result = payload
            elif kind == "error":
                error = payload
        process.join()
    except BaseException:  # interrupted: take the child down too; its lock goes stale and is taken over later
        if process.is_alive():
            process.kill()
            process.join()
        raise
    finally:
        receive.close()
    if result is not None:
        log.unlink(missing_ok=True)
        return result
    if process.exitcode == 130:
        return status(task, "interrupted")
    release_if_dead(task)
    return record_failure(task, error or _exit_reason(process.exitcode), log=log, exit_code=process.exitcode)


def release_if_dead(task: RunTask) -> None:
    """A crashed child leaves its lock behind; free it now so a retry in this grid need not detect it as stale."""
    lock = task.path("locks", ".lock")
    if lock.exists() and claim(lock):
        release(lock)


class Monitor(Protocol):
    """What an executor reports to the grid: a run starts (returns its step callback, if progress is shown) and
    ends with a status."""

    def started(self, task: RunTask) -> ProgressCallback | None: ...

    def finished(self, task: RunTask, result: dict) -> None: ...


class Executor(Protocol):
    """Runs a grid's pending runs somewhere; all share `run_one` and the results layout."""

    name: str

    def device_type(self, requested: str) -> str:
        """--device auto|cpu|cuda -> the device type the runs' workers train on (it goes into their configs)."""

    def run(self, tasks: list[RunTask], monitor: Monitor) -> None: ...


class LocalExecutor:
    """On this machine: one run after the other, or one worker per entry of `slots`, each giving its children
    that CUDA_VISIBLE_DEVICES (None: inherited; n None slots run n CPU runs in parallel, see cpu.py), `threads`
    torch threads per run (None: torch's choice). `isolate=False` runs in this process (debugging: breakpoints
    work, a crash ends the grid)."""

    name = "local"

    def __init__(self, slots: list[str | None] | None = None, isolate: bool = True, run: Callable = run_one,
                 threads: int | None = None):
        self.slots, self.isolate, self.run_function, self.threads = slots or [None], isolate, run, threads

    def device_type(self, requested: str) -> str:
        device = resolve_device(requested).type
        if self.slots != [None] and any(self.slots) and device != "cuda":
            raise UserError(f"--gpus with --device {requested}: GPU workers train on CUDA; use --device auto or cuda")
        return device

    def _run(self, task: RunTask, slot: str | None, on_step: ProgressCallback | None) -> dict:
        if self.isolate:
            return run_isolated(task, on_step, gpu=slot, threads=self.threads, run=self.run_function)
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self.run_function(task, on_step, None)
        except Exception as err:  # noqa: BLE001 - one broken run must not lose the others; its traceback is kept
            return record_failure(task, f"{type(err).__name__}: {err}", log_text=traceback.format_exc())

    def run(self, tasks: list[RunTask], monitor: Monitor) -> None:
        queue, take = deque(tasks), threading.Lock()
        stop, errors = threading.Event(), []

        def worker(slot: str | None) -> None:
            try:
                while not stop.is_set():
                    with take:
                        if not queue:
                            return
                        task = queue.popleft()
                    monitor.finished(task, self._run(task, slot, monitor.started(task)))
            except BaseException as err:  # noqa: BLE001 - a full disk, say: no new run starts; raised below, once
                errors.append(err)
                stop.set()

        if len(self.slots) == 1:
            worker(self.slots[0])
            return
        threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in self.slots]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)  # with a timeout, so Ctrl-C reaches this thread
        except KeyboardInterrupt:
            stop.set()  # the children got the same SIGINT and end; no new run starts
            raise
        if errors:
            raise errors[0]


def gpu_slots(value: str) -> list[str]:
    """--gpus 0,1,2,3 -> one worker per listed GPU; checked against this machine's GPUs."""
    slots = [g.strip() for g in value.split(",") if g.strip()]
    if not slots or not all(g.isdigit() for g in slots):
        raise UserError(f"--gpus {value!r}: expected comma-separated GPU indices, e.g. 0,1,2,3")
    available = torch.cuda.device_count()
    if available == 0:
        raise UserError(f"--gpus {value}: this machine has no CUDA GPU; leave --gpus out to run on the CPU")
    missing = [g for g in slots if int(g) >= available]
    if missing:
        raise UserError(f"--gpus {value}: GPU {', '.join(missing)} does not exist (this machine has {available})")
    return visible_devices(slots)


def visible_devices(slots: list[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES values for GPU indices as this process counts them: under an inherited
    CUDA_VISIBLE_DEVICES (e.g. 4,5 from Slurm) index 0 is its first entry, not physical GPU 0."""
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return [inherited[int(g)] for g in slots] if inherited else slots


def _ray_task(task: RunTask) -> dict:
    """A run as a Ray task, in a process from a forkserver (a Ray worker runs gRPC threads, and forking a
    multi-threaded process can deadlock the child); the task id survives Ray's retries after a lost node, so the
    retry takes over its own lock."""
    import ray

    context = ray.get_runtime_context()
    return run_isolated(task, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
                        threads=int(context.get_assigned_resources().get("CPU", 1)) or None,
                        owner=f"ray:{context.get_task_id()}")


class RayExecutor:
    """Each run a Ray task with `num_gpus=1` on CUDA and `cpus_per_run` CPUs (the run's torch threads). `address`:
    "auto" (or ray://...) joins an existing cluster; None starts a local instance, shut down after the grid."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, init_kwargs: dict | None = None):
        self.address, self.cpus_per_run, self.init_kwargs = address, cpus_per_run, init_kwargs or {}
        self._started = False

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install -e \".[ray]\"") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
            self._started = True
        return ray

    def device_type(self, requested: str) -> str:
        gpus = self._ray().cluster_resources().get("GPU", 0)
        if requested == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPUs; use --device cpu or auto")
        return "cuda" if requested == "cuda" or (requested == "auto" and gpus) else "cpu"

    def run(self, tasks: list[RunTask], monitor: Monitor) -> None:
        ray = self._ray()
        remote = ray.remote(_ray_task)
        pending = {}
        for task in tasks:
            gpus = 1 if task.config.device == "cuda" else 0
            pending[remote.options(num_gpus=gpus, num_cpus=self.cpus_per_run).remote(task)] = task
            monitor.started(task)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - the Ray worker itself died (node lost, retries spent)
                    result = record_failure(task, f"Ray task failed: {type(err).__name__}: {err}", log_text=str(err))
                monitor.finished(task, result)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if self._started:
                ray.shutdown()
                self._started = False


class SlurmRun:
    """One Slurm array task: the run in its own process. On preemption or time-out submitit calls `checkpoint`,
    which requeues the same run; the requeued task (same job id, so it takes over its own lock) continues from the
    run's last mid-run checkpoint. The job process is fresh and has run no torch operation: it forks the run."""

    def __call__(self, task: RunTask) -> dict:
        import submitit

        return run_isolated(task, owner=f"slurm:{submitit.JobEnvironment().job_id}", start_method="fork")

    def checkpoint(self, task: RunTask):
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


class SlurmExecutor:
    """All runs of a grid as one Slurm array job (submitit), each task with `gpus_per_task` GPUs. Job scripts and
    Slurm's logs go to `folder`. `cluster="local"` runs the same jobs through submitit's local executor."""

    name = "slurm"

    def __init__(self, folder: Path, partition: str | None = None, time_min: int = 24 * 60, gpus_per_task: int = 1,
                 cpus_per_task: int = 6, cluster: str | None = None):
        self.folder, self.partition, self.time_min = Path(folder), partition, time_min
        self.gpus_per_task, self.cpus_per_task, self.cluster = gpus_per_task, cpus_per_task, cluster

    def device_type(self, requested: str) -> str:
        if requested == "cuda" and not self.gpus_per_task:
            raise UserError("--device cuda with --slurm-gpus-per-task 0: ask for a GPU per task or use --device cpu")
        return "cuda" if requested == "cuda" or (requested == "auto" and self.gpus_per_task) else "cpu"

    def run(self, tasks: list[RunTask], monitor: Monitor) -> None:
        try:
            import submitit
        except ImportError:
            raise UserError("--executor slurm needs submitit: pip install -e \".[slurm]\"") from None
        if self.cluster is None and submitit.SlurmExecutor.affinity() < 0:
            raise UserError("--executor slurm: no Slurm here (srun not found); run it on the cluster's login node")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster or "slurm")
        executor.update_parameters(name="peftbench", timeout_min=self.time_min, gpus_per_node=self.gpus_per_task,
                                   tasks_per_node=1, cpus_per_task=self.cpus_per_task,
                                   **({"slurm_partition": self.partition} if self.partition else {}))
        jobs = executor.map_array(SlurmRun(), tasks)
        by_job = {job.job_id: task for job, task in zip(jobs, tasks)}
        for task in tasks:
            monitor.started(task)
        for job in submitit.helpers.as_completed(jobs, poll_frequency=2 if executor.cluster == "local" else 30):
            task = by_job[job.job_id]
            try:
                result = job.result()
            except Exception as err:  # noqa: BLE001 - the array task died (node lost, time limit)
                result = record_failure(task, f"Slurm task {job.job_id} failed: {str(err).strip().splitlines()[0]}",
                                        log=Path(job.paths.stderr))
            monitor.finished(task, result)
