"""Atomic writes: every file peftbench writes goes through a locked temporary file in its folder and a rename,
so readers see the old file or the new one; a killed writer's leftovers are removed by the next writer."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

# atomic_output's temporaries, as tempfile names them: ".<target name>.<8 random characters>.tmp" beside the target.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# A temporary is a killed writer's only when no process holds its lock and it was not touched for this long; the
# delay covers the instant between creating a temporary and locking it, and file systems without locks.
TEMPORARY_GRACE_S = 60.0
_LIVE: set[str] = set()  # this process's temporaries being written (on NFS its threads do not exclude each other)
_SWEPT: set[str] = set()  # folders this process has cleared of leftovers already


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object to write `path` through: a temporary file in the same folder, fsynced and renamed over `path`
    when the block ends, so readers see the old file or the new one, never half of one. On any error (a full disk,
    a read-only folder, an interrupt) the temporary file is removed, `path` is left as it was, and an OSError names
    `path` (also where a library wraps the disk's error in its own, as torch.save does). The file gets the
    permissions any program's would (0666 less the umask; mkstemp's are 0600). A killed writer's temporaries in
    the folder are removed by the next write there (see remove_stale_temporaries)."""
    path = Path(path)
    with writing(path), locked_temporary(path.parent, path.name) as (fd, tmp):
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, closefd=False) as f:  # the fd, and its lock, outlive the rename
            yield f
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """The block's errors as write errors naming `path` (see write_error); any other error as it is."""
    try:
        yield
    except Exception as err:
        error = write_error(err, path)
        if error is None:
            raise
        raise error from None


@contextmanager
def locked_temporary(folder: Path, name: str, directory: bool = False) -> Iterator[tuple[int, Path]]:
    """(an open fd, the path) of a new temporary file, or folder with `directory`, ".<name>.<random>.tmp" in
    `folder`, under an exclusive lock while the block runs, so that no process's remove_stale_temporaries takes
    it; whatever of it is left when the block ends (the block did not move it away) is removed. Before the first
    one in a folder, this process removes that folder's stale temporaries."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if str(folder) not in _SWEPT:
        remove_stale_temporaries(folder)
        _SWEPT.add(str(folder))
    if directory:
        tmp = tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        fd = os.open(tmp, os.O_RDONLY)
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    _LIVE.add(tmp)
    try:
        _lock(fd)
        yield fd, Path(tmp)
    finally:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            Path(tmp).unlink(missing_ok=True)
        _LIVE.discard(tmp)
        os.close(fd)


def _lock(fd: int) -> None:
    """An exclusive lock on `fd`, held until it is closed (the kernel releases it if this process dies). A file
    system without locks refuses remove_stale_temporaries' lock too, so its temporaries are never removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed writers left in `folder` (and below it, with `recursive`): only files and
    folders named exactly as locked_temporary names them, that no live process holds the lock of (its writer is
    gone: the kernel released it) and untouched for TEMPORARY_GRACE_S. Best effort: whatever cannot be checked
    or removed is left. Returns what was removed."""
    folder = Path(folder)
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    try:
        candidates = [p for p in found if _TEMPORARY.fullmatch(p.name) and str(p) not in _LIVE]
    except OSError:
        return []
    return [path for path in candidates if _remove_if_abandoned(path)]


def _remove_if_abandoned(path: Path) -> bool:
    """Remove the temporary `path` if its writer is gone (see remove_stale_temporaries); True if it did."""
    try:
        is_dir = path.is_dir() and not path.is_symlink()
        fd = os.open(path, (os.O_RDONLY if is_dir else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone meanwhile, a link, not ours to open
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer holds it, or without locks
        if time.time() - os.fstat(fd).st_mtime < TEMPORARY_GRACE_S:
            return False
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_error(err: Exception, path: Path) -> OSError | None:
    """The OSError naming `path` to raise for `err`, an error writing it; None where `err` is no write error (raise
    it as it is). An OSError is renamed; another exception stands for the disk's error where it wraps one of
    WRITE_ERRORS: torch.save's RuntimeError ("unexpected pos ...") holds it as its context, a Rust writer's
    (safetensors) message ends in "(os error 28)"."""
    if isinstance(err, OSError):
        return OSError(err.errno, err.strerror, str(path))
    cause, seen = err.__cause__ or err.__context__, 0
    while cause is not None and seen < 8:  # the chain of exceptions it was raised during or from
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRORS:
            return OSError(cause.errno, cause.strerror, str(path))
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found and int(found.group(1)) in WRITE_ERRORS:
        return OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(path))
    return None


def file_mode() -> int:
    """The permissions any program's new file gets: 0666 less the umask."""
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text)


def write_csv_atomic(path: Path, frame) -> None:
    """A pandas DataFrame as CSV (no index), written atomically."""
    with atomic_output(path) as f:
        frame.to_csv(f, index=False)


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_output(path) as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
