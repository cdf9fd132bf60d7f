"""One process at a time in a folder: a run folder, a feature cache, the demo's seeds.

Two ``segros train`` on one ``--out`` would both write into it: each one's ``checkpoint.begin``
clears the other's half-written checkpoint, its pruning deletes the other's, and ``latest`` can
end up naming a folder without weights. :func:`lock_folder` makes the second one refuse, in one
line naming the folder and the holder (pid, host, start time, command).

The lock is an advisory ``fcntl.flock`` on a file in the folder (``.segros-lock``), and that file
also holds a JSON record of the holder for the message. The kernel drops a flock when its holder
dies, however it dies (``kill -9``, out of memory, a node's reboot for a local disk), so a lock
left by a killed run never blocks: the next run gets the lock, finds the dead holder's record and
warns that it takes it over. The file stays in place (emptied on release): deleting it could let
a third process lock a new file while a second still holds the old one.

Why ``fcntl.flock`` itself and not the ``filelock`` package (installed here only as an unpinned
dependency of huggingface_hub): filelock keeps no record of who holds its native lock (only its
soft-lock fallback writes a pid), its 3.x versions open the lock file with truncation, so a record
could not share the locked file, and its API (lifetimes, soft fallbacks, singletons) changed
completely between 3.x and 4.x, both of which may be installed. What is needed here, a
non-blocking try, a record in the locked file and the holder's death detected, is a few lines on
the system call that filelock itself uses on Unix.

Where the file system has no working flock (Lustre mounted without ``flock``; no ``fcntl``, as on
Windows), the record alone decides: a holder on this host whose process is gone is stale and taken
over; a live one, or one on another host (whose process cannot be checked from here), refuses, and
the message says which file to delete if that run is gone. Where flock is local to a host (NFS
mounted with ``local_lock=flock``), runs on two hosts are not kept apart.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the holder record alone decides (see the module docstring)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".segros-lock"
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}  # some file systems say EACCES


class FolderInUseError(OSError):
    """The folder is locked by another live process; the message names it and the holder."""


def holder_record(command: list[str] | None = None) -> dict[str, Any]:
    """Who this process is, for another process's refusal message."""
    argv = sys.argv if command is None else command
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = [Path(argv[0]).name] if argv else []
    if command is None and spec is not None and spec.name:  # python -m segros.cli: not "cli.py"
        program = ["python", "-m", spec.name]
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": shlex.join([*program, *argv[1:]]),
    }


def describe(record: dict[str, Any] | None) -> str:
    """``pid 12 on host h since 2026-01-02 10:00:00 UTC (segros train ...)``, or what is known."""
    if not record:
        return "a process that has not written its record yet"
    return (
        f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('started', '?')}"
        f" ({record.get('command') or 'command unknown'})"
    )


def _read_record(fd: int) -> dict[str, Any] | None:
    """The holder record in the lock file: None when empty (free, or released cleanly)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except ValueError:  # cut short by a crash while writing it: a holder we cannot name
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(fd: int, record: dict[str, Any] | None) -> None:
    os.ftruncate(fd, 0)
    if record is not None:
        os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _process_gone(record: dict[str, Any]) -> bool:
    """True when the record's holder ran on this host and its process no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _flock(fd: int, wait: bool) -> bool | None:
    """Try the OS lock: True won, False held by another process, None when unsupported here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as err:
        if err.errno in _BUSY:
            return False
        if err.errno in {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}:
            return None
        raise
    return True


class FolderLock:
    """A held lock on ``folder`` (``key`` names one of several locks in it); :meth:`release` it,
    or use it as a context manager. Closing the process releases it too."""

    def __init__(self, folder: Path, fd: int, path: Path) -> None:
        self.folder, self.path = folder, path
        self._fd: int | None = fd
        self._pid = os.getpid()

    def release(self) -> None:
        """Empty the holder record and drop the OS lock (only in the process that took it: a
        forked child shares the open file and must not release its parent's lock)."""
        if self._fd is None or os.getpid() != self._pid:
            return
        fd, self._fd = self._fd, None
        try:
            _write_record(fd, None)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a holder dropped without release(), e.g. a Trainer never run
        with contextlib.suppress(Exception):  # at interpreter exit; the kernel drops the lock anyway
            self.release()


def lock_folder(folder: str | Path, key: str | None = None, wait: bool = False) -> FolderLock:
    """Lock ``folder`` (created if missing) for this process, or raise :class:`FolderInUseError`.

    ``key`` makes one of several independent locks in the folder (``.segros-lock-<key>``), for
    work that may share a folder in parts (the demo's seeds). With ``wait``, block until the
    holder releases it instead of refusing (for short shared work, like writing a data set once).
    A lock whose holder died is taken over with a warning naming it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (LOCK_FILE if key is None else f"{LOCK_FILE}-{key}")
    try:
        return _lock(folder, key, path, wait=False)
    except FolderInUseError:
        here = _held_here(path)
        if not (here or wait):
            raise
        if here:  # maybe by an object nothing refers to any more (a Trainer built but never run,
            gc.collect()  # in a reference cycle): collected, it releases the lock
        return _lock(folder, key, path, wait=wait and not here)  # never wait for this process


def _held_here(path: Path) -> bool:
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("pid") == os.getpid()


def _lock(folder: Path, key: str | None, path: Path, wait: bool) -> FolderLock:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        won = _flock(fd, wait)
        record = _read_record(fd)
        where = f"{folder}" + (f" ({key})" if key else "")
        if won is False:
            raise FolderInUseError(
                f"{where} is in use by {describe(record)}; wait for it to end or use another folder"
            )
        if won is None and record and not _process_gone(record):
            raise FolderInUseError(
                f"{where} is in use by {describe(record)} (this file system has no working locks, so "
                f"the holder cannot be checked from here; if that run is gone, delete {path})"
            )
        if record is not None:
            log.warning(
                "%s: taking over the lock left by %s, which ended without releasing it",
                where,
                describe(record),
            )
        _write_record(fd, holder_record())
    except BaseException:
        os.close(fd)
        raise
    return FolderLock(folder, fd, path)
