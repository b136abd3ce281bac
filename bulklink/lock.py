"""One run per report: an advisory ``flock`` on ``<report>.lock``.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock left by a
killed run never blocks the next one. The file names its holder (pid, host, command,
start time) so the refusal can say who is at work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bulklink.errors import LockedError, UsageError


def lock_path(report: Path) -> Path:
    return report.with_name(report.name + ".lock")


@contextlib.contextmanager
def hold(report: Path, command: str) -> Iterator[None]:
    """Hold the report's lock for the block, or raise :class:`LockedError` at once."""
    path = lock_path(report)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot create the lock file {path}: {exc.strerror}") from None
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
            same = path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
