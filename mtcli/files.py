"""Every file mtcli writes goes through here: atomic replacement, directory swaps, sweeps, run locks.

The rules (README "What mtcli writes, and what it never touches"):

- A whole file is written to a unique temporary name in the target's folder
  (`.NAME.mtcli-tmp-PID-RANDOM`), flushed, fsynced and renamed over the target, so a reader sees
  the old file or the new one, never half of one; any exception (KeyboardInterrupt too) removes
  the temporary file.
- A directory (a bundle, prepared data) is built under a temporary name and swapped in; the old
  one is renamed to `.NAME.mtcli-old-PID-RANDOM` for the instant between two renames, so a
  killed swap can be undone by the next sweep.
- `sweep` removes the temporaries of dead mtcli processes in a run's folders (run under the run
  lock, so nothing else writes there).
- `run_lock` is an exclusive OS lock (`flock`) on `RUN/.mtcli.lock`, released by the kernel when
  the process dies, re-entrant within a process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mtcli.errors import MtcliError, RunFailure

TMP_TAG = ".mtcli-tmp-"
OLD_TAG = ".mtcli-old-"
LOCK_NAME = ".mtcli.lock"
# Failures of the write itself: full disk, quota, I/O error, read-only or too-large file.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


def temp_path(path: Path, tag: str = TMP_TAG) -> Path:
    """A unique hidden name beside `path`, marked with this process's pid."""
    return path.with_name(f".{path.name}{tag}{os.getpid()}-{secrets.token_hex(4)}")


def _write_error(path: Path, exc: OSError) -> MtcliError:
    """One line for a failed write: a missing folder and a directory in the way are the user's."""
    if not path.parent.is_dir():
        return MtcliError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        return MtcliError(f"{path}: is a directory; give a file name")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS):  # a place the user cannot write
        return MtcliError(f"cannot write {path}: {exc.strerror or exc}")
    return RunFailure(f"could not write {path}: {exc.strerror or exc}; nothing was changed")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse a directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output(path: Path, option: str) -> None:
    """Fail before any work when `path` cannot be written as a file (missing folder, a directory)."""
    path = Path(path)
    if path.is_dir():
        raise MtcliError(f"{option} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise MtcliError(f"{option} {path}: folder {path.parent} does not exist")


@contextlib.contextmanager
def replace_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path` atomically."""
    path = Path(path)
    if path.is_dir():
        raise MtcliError(f"{path}: is a directory; give a file name")
    tmp = temp_path(path)
    try:
        f = open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"}))
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # the disk, not the caller's own I/O
            raise _write_error(path, exc) from None
        raise
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Replace a text file atomically."""
    with replace_file(path) as f:
        f.write(text)


def write_json(path: Path, obj) -> None:
    """Replace a JSON file atomically (indented, UTF-8, newline at the end)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_torch(obj, path: Path) -> None:
    """torch.save through `replace_file` (the previous file survives any failure)."""
    import torch

    with replace_file(path, binary=True) as f:
        torch.save(obj, f)


def new_dir(target: Path) -> Path:
    """A fresh temporary folder beside `target`, readable by others like a normal folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    tmp.mkdir(mode=0o755)
    return tmp


def swap_dir(tmp: Path, target: Path) -> None:
    """Put the complete folder `tmp` in place of `target` (the old one is removed only afterwards)."""
    old = temp_path(target, OLD_TAG) if target.exists() else None
    if old is not None:
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _pid_of(name: str, tag: str) -> int | None:
    pid = name.rpartition(tag)[2].partition("-")[0]
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours counts as dead: nothing of ours is open yet)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(folder: Path, legacy: tuple[str, ...] = (), only: str | None = None) -> list[str]:
    """Remove dead processes' temporaries in `folder`; restore a folder a killed swap moved aside.

    `legacy` are glob patterns of temporaries that older mtcli versions named differently;
    `only` limits the sweep to the temporaries of one target name. Returns the names handled.
    """
    if not folder.is_dir():
        return []
    done = []
    for path in sorted(folder.iterdir()):
        name = path.name
        for tag in (TMP_TAG, OLD_TAG):
            if name.startswith(".") and tag in name:
                original = folder / name[1:].rpartition(tag)[0]
                pid = _pid_of(name, tag)
                if (only is not None and original.name != only) or (pid is not None and pid_alive(pid)):
                    break
                if tag == OLD_TAG and not original.exists():
                    os.replace(path, original)
                else:
                    _remove(path)
                done.append(name)
                break
    for pattern in legacy:
        for path in sorted(folder.glob(pattern)):
            if TMP_TAG in path.name or OLD_TAG in path.name or not path.exists():
                continue
            _remove(path)
            done.append(path.name)
    return done


def sweep_run(run_dir: Path) -> list[str]:
    """Sweep a run's folders (the caller holds the run lock) and say what was removed."""
    # Temporaries of mtcli versions before this module: mkdtemp/mkstemp names, fixed ".old" names.
    legacy = {run_dir: (".model.*",), run_dir / "checkpoints": (".step_*.pt.*", ".best.pt.*")}
    done = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "data", run_dir / "model"):
        done += [f"{folder.name}/{name}" for name in sweep(folder, legacy.get(folder, ()))]
    if done:
        print(f"removed what an interrupted mtcli left in {run_dir}: {', '.join(done)}", file=sys.stderr)
    return done


# ----------------------------------------------------------------------------- run locks

_HELD: dict[str, list] = {}  # realpath -> [open lock file, depth, created the folder]


def _holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text().split()[0]
    except (OSError, IndexError):
        return "another process"
    return f"pid {pid}"


@contextlib.contextmanager
def run_lock(run_path: Path) -> Iterator[None]:
    """Hold the exclusive lock on a run directory (creating it); a second process gets one line.

    Re-entrant: `train` holds it and calls `prepare`, which takes it again. A run folder that
    this lock created and that is still empty (but for the lock) when the lock is released is
    removed again, so a run that failed before writing anything leaves nothing behind.
    """
    run_path = Path(run_path)
    key = os.path.realpath(run_path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    created = not run_path.exists()
    _check_run_dir(run_path)
    try:
        run_path.mkdir(parents=True, exist_ok=True)
        f = open(run_path / LOCK_NAME, "a+", encoding="utf-8")
    except OSError as exc:
        raise MtcliError(f"{run_path}: cannot create the run directory: {exc.strerror or exc}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise MtcliError(f"{run_path}: run is in use by another mtcli process ({_holder(run_path / LOCK_NAME)}); "
                         "wait for it to finish or stop it") from None  # fmt: skip
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[key] = [f, 1, created]
    try:
        yield
    finally:
        del _HELD[key]
        if created and [p.name for p in run_path.iterdir()] == [LOCK_NAME]:
            (run_path / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_path.rmdir()
        f.close()  # releases the flock


RUN_MARKERS = (LOCK_NAME, "data", "checkpoints", "model", "metrics.jsonl")


def _check_run_dir(run_path: Path) -> None:
    """Refuse to make a run of a folder that holds other things (mtcli would write its files there)."""
    if run_path.exists() and not run_path.is_dir():
        raise MtcliError(f"run_dir {run_path}: exists and is not a folder")
    if run_path.is_dir():
        names = {p.name for p in run_path.iterdir()}
        if names and not names & set(RUN_MARKERS):
            raise MtcliError(f"{run_path}: folder holds files that are not an mtcli run; mtcli will not "
                             "write there (choose an empty or new run_dir)")  # fmt: skip

