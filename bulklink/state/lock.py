"""One run per report: an advisory ``flock`` on ``<report>.lock``; one run per input: a
``flock`` on the input file itself (:func:`hold_input`).

The kernel drops a ``flock`` when its process dies, however it dies, so a lock left by a
killed run never blocks the next one. The file names its holder (pid, host, command,
start time) so the refusal can say who is at work. It is opened without following a link
(a symlink, FIFO or folder planted at its name is refused, exit 2), and once it is held
the temporary files a killed run left beside the report are swept away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bulklink._fs import open_fixed, side_path, sweep
from bulklink.errors import LockedError


def lock_path(report: Path) -> Path:
    return side_path(report, ".lock")


@contextlib.contextmanager
def hold_read(report: Path, command: str) -> Iterator[None]:
    """The lock of a report only read (``retry REPORT -o elsewhere``): its lock file, or,
    when its folder cannot be written (a read-only backup, ``ProtectSystem=strict``), so
    that no run there can be writing it either, a ``flock`` on the report itself, as an
    input is held: another retry of it still meets this one."""
    if os.access(report.parent, os.W_OK):
        with hold(report, command):
            yield
    else:
        with hold_input(report):
            yield


@contextlib.contextmanager
def hold(report: Path, command: str) -> Iterator[None]:
    """Hold the report's lock for the block, or raise :class:`LockedError` at once."""
    path = lock_path(report)
    while True:
        fd = open_fixed(path, os.O_RDWR | os.O_CREAT, "the lock file")
        assert fd is not None  # O_CREAT: created or refused
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise LockedError(
                f"another bulklink run is working on {report} ({holder}); "
                f"not starting a second one (lock file {path})"
            ) from None
        # The holder before us may have unlinked the file between our open and flock.
        try:
            mine, there = os.fstat(fd), os.lstat(path)
            same = (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = time.time()
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        sweep(report, before=started)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def hold_input(path: Path) -> Iterator[None]:
    """Hold a ``flock`` on the input file itself for the block, or raise
    :class:`LockedError` at once.

    Keyed by the file (its inode), not by a name or a folder of bulklink's: two runs on
    one input meet whatever their ``-o``, ``HOME`` or ``--state`` (date-stamped reports
    would otherwise send every pair twice). Nothing is written, and nothing lives in the
    state store. Only a regular file is locked: standard input, a pipe or a missing file
    (which the input reader refuses) need none, and a file system without ``flock``
    is not a reason to refuse a run.
    """
    fd = _open_input(path)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another bulklink run is working on the input {path}; not starting a "
                "second one (it would send the same pairs again)"
            ) from None
        except OSError:
            pass  # no locks on this file system
        yield
    finally:
        os.close(fd)


def _open_input(path: Path) -> int | None:
    try:
        # Looked at before it is opened: opening a FIFO, even without blocking, would
        # take it from the reader that comes next (its writer sees a reader come and go).
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
