"""Our own files beside the report, opened and created without following a planted link.

Anyone who can write in the report's folder can plant a symlink at a name bulklink uses;
a run by the cron user (often root) would then write through it into any file. So:

- fixed names (``<report>.lock``, ``<report>.journal``) are opened with ``O_NOFOLLOW``
  and must be regular files: a link, a FIFO or a folder there is refused with a
  :class:`~bulklink.errors.UsageError` naming it (exit 2), never followed or waited on;
- temporary files get unpredictable names, created with ``O_EXCL``
  (``.<name>.<12 hex digits>.bulklink-<kind>``), and are renamed into place: ``rename``
  replaces whatever sits at the destination, a link included, and never writes through it;
- :func:`sweep` removes the temporary files a killed run left behind, once the next run
  holds the report's lock, so they do not pile up.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path

from bulklink.errors import UsageError

_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO never hangs us
_KINDS = ("tmp", "merge", "stdin.csv")


def open_fixed(path: Path, flags: int, what: str, mode: int = 0o600) -> int | None:
    """An fd on the regular file ``path``, never through a link; None when it is missing
    (and ``flags`` lacks ``O_CREAT``). ``what`` names the file in the refusal."""
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except FileNotFoundError:
        if flags & os.O_CREAT:
            raise UsageError(f"cannot create {what} {path}: no such folder") from None
        return None
    except OSError as exc:
        raise UsageError(_refusal(path, what, exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(
                f"{what} {path} is not a regular file; bulklink will not use it "
                "(remove it if you did not put it there)"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(path: Path, what: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP and path.is_symlink():
        return (
            f"{what} {path} is a symbolic link; bulklink never writes through one "
            "(remove it if you did not put it there)"
        )
    if exc.errno == errno.EISDIR:
        return f"{what} {path} is a folder; bulklink will not use it"
    return f"cannot open {what} {path}: {exc.strerror}"


def create_temp(beside: Path, kind: str, mode: int = 0o666, flags: int = 0) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.bulklink-<kind>`` in ``beside``'s folder, opened for
    reading and writing; ``mode`` is filtered by the umask as for any new file."""
    assert kind in _KINDS, kind  # sweep() must know every kind
    for _ in range(100):
        tmp = beside.with_name(f".{beside.name}.{secrets.token_hex(6)}.bulklink-{kind}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _SAFE | flags, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot create a temporary file {tmp}: {exc.strerror}") from exc
        os.set_blocking(fd, True)
        return fd, tmp
    raise UsageError(f"cannot create a temporary file beside {beside}: every name was taken")


class AtomicFile:
    """A file that appears at ``target`` whole or not at all: written under a temporary
    name beside it (:func:`create_temp`), then fsynced and renamed over it by
    :meth:`install`. The one way bulklink replaces a file (report, journal, summary,
    metrics), so every temporary name is one :func:`sweep` knows."""

    def __init__(self, target: Path, *, kind: str = "tmp", mode: int = 0o666, flags: int = 0):
        self.target = target
        self.fd, self.tmp = create_temp(target, kind, mode, flags)

    def install(self) -> None:
        """Durable first, then visible: a crash leaves the old file or the whole new one."""
        os.fsync(self.fd)
        self.tmp.replace(self.target)  # replaces a link at the target; never follows it

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # closed even when close() fails (EIO, a full NFS disk)
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


#: Seconds after which a small file's temporary (summary, metrics) is surely abandoned:
#: writing one takes milliseconds.
_ABANDONED = 60.0


def write_atomically(target: Path, content: bytes, mode: int, *, exact_mode: bool = False) -> None:
    """``content`` at ``target`` via :class:`AtomicFile`, after sweeping what killed writers
    of it left; ``exact_mode`` ignores the umask (a collector running as another user must
    read the metrics file)."""
    sweep(target, before=time.time() - _ABANDONED)
    new = AtomicFile(target, mode=mode)
    try:
        if exact_mode:
            os.fchmod(new.fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(new.fd, view) :]
        new.install()
    except BaseException:
        new.discard()
        raise
    new.close()


def leftover_pattern(report: Path) -> re.Pattern[str]:
    """Names of the temporary files a run on ``report`` creates (its journal's included),
    and the fixed temporary name older versions used."""
    name = re.escape(report.name)
    kinds = "|".join(re.escape(k) for k in _KINDS)
    ours = rf"\.{name}(?:\.journal)?\.[0-9a-f]{{12}}\.bulklink-(?:{kinds})"
    return re.compile(rf"{ours}|\.{name}\.bulklink-tmp")


def sweep(report: Path, before: float) -> int:
    """Remove our temporary files for ``report`` (or any file we write) last modified
    before ``before`` (the lock's start, or long enough ago: whoever made them is gone);
    returns how many."""
    pattern = leftover_pattern(report)
    removed = 0
    try:
        entries = list(os.scandir(report.parent))
    except OSError:
        return 0
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) or info.st_mtime >= before:
                continue
            Path(entry.path).unlink()  # a link itself, never its target
        except OSError:
            continue
        removed += 1
    return removed
