"""Runs that survive: a claim (lock file) per run and a checkpoint at the end of every epoch.

- `claim(path)`: creates the run's lock file atomically (O_EXCL) holding host, pid and start time, so two
  processes, or two machines sharing the results folder, never train the same run. A lock left by a process that
  no longer exists on this host is stale and taken over; a lock of another host is trusted while its file was
  touched in the last `STALE_AFTER_S` seconds (every checkpoint touches it). A lock written under the same
  `owner` (a Slurm job id, a Ray task id: ids that survive a requeue or retry of the same work) is that work's
  earlier incarnation, killed by preemption or a lost node, and is taken over at once wherever it was written.
  A lock that cannot be written (a full disk) is removed at once; one left empty or half-written (its writer
  killed in between) is stale after `UNWRITTEN_AFTER_S` seconds.
- `save_checkpoint` / `load_checkpoint`: model state (trainable parameters and buffers), optimizers, schedules,
  loss scaler, selection state, history, counters and every random-number state (Python, NumPy, torch CPU/CUDA,
  the data-order generator), written atomically (on a full disk: the disk's error naming the file, the previous
  checkpoint whole). A killed run continues after its last finished epoch; on the CPU its final record equals an
  uninterrupted run's.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_output

STALE_AFTER_S = 6 * 3600
# A lock is written the instant it is created: one still unreadable after this long never will be (its writer was
# killed in between, or the disk was full), and is stale.
UNWRITTEN_AFTER_S = 300


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has died but was not reaped yet (an orphan in a container whose init never reaps stays one for
    # good): it holds nothing. Linux only; elsewhere the signal test above decides.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def claim(path: Path, owner: str | None = None) -> bool:
    """Take the run's lock; False if a live process (here or on another host) holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "owner": owner}
    if _create(path, me):
        return True
    # Taking over a stale lock: unlink it and create ours. Two processes judging the same lock stale could both
    # do that (the second unlinking the first's fresh lock), so a takeover happens only under an exclusive
    # fcntl lock on a sibling file, released by the kernel if its holder dies, and re-reads the lock inside it.
    # fcntl locks hold across hosts on NFSv3 (lockd) and v4; a file system without them makes flock fail loudly.
    with open(path.with_name(path.name + ".takeover"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            age = time.time() - path.stat().st_mtime
            holder = json.loads(path.read_text())
        except FileNotFoundError:  # released meanwhile
            return _create(path, me)
        except OSError:  # unreadable from here: its owner may well be alive
            return False
        except ValueError:  # being written this instant, or never finished
            holder = None
        if not _stale(holder, age, me, owner):
            return False
        path.unlink(missing_ok=True)  # its owner is gone (or it is this work's earlier incarnation)
        return _create(path, me)


def _stale(holder: object, age: float, me: dict, owner: str | None) -> bool:
    """Whether a lock holding `holder` (not a JSON object: unreadable), last touched `age` seconds ago, may be
    taken over by `me` (see claim)."""
    if not isinstance(holder, dict):
        return age >= UNWRITTEN_AFTER_S
    if owner is not None and holder.get("owner") == owner:
        return True
    if holder.get("host") == me["host"]:
        return not _alive(int(holder.get("pid", -1)))
    return age >= STALE_AFTER_S


def _create(path: Path, me: dict) -> bool:
    """Create the lock file holding `me` if there is none (O_EXCL: atomic, also on NFSv3+)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
    except BaseException:  # a full disk: no empty lock may stay to block the run for good
        path.unlink(missing_ok=True)
        raise
    return True


def release(path: Path) -> None:
    path.unlink(missing_ok=True)


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every random-number state, in types a weights-only load accepts (NumPy's key array as a tensor)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss,
                                                   gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader_generator.get_state()}


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


def save_checkpoint(path: Path, state: dict, lock: Path | None = None) -> None:
    with atomic_output(path, "wb") as f:
        torch.save(state, f)
    if lock is not None and lock.exists():
        os.utime(lock)  # heartbeat for other hosts


def load_checkpoint(path: Path, config_hash: str) -> dict | None:
    """The checkpoint at `path` if it belongs to this exact config; None otherwise (then training starts over).

    Loaded weights-only: tensors, numbers, strings and containers, nothing that can name a callable, so a file
    planted in a shared results folder cannot run code here. One that does not load that way (tampered,
    truncated, from another version) is ignored with a warning."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint means the same: start over
        print(f"peftbench: warning: ignoring checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
              "the run starts over", file=sys.stderr)
        return None
    return state if isinstance(state, dict) and state.get("config_hash") == config_hash else None
