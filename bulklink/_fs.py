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
            raise UsageError(f"cannot create a temporary file {tmp}: {exc.strerror}") from None
        os.set_blocking(fd, True)
        return fd, tmp
    raise UsageError(f"cannot create a temporary file beside {beside}: every name was taken")


def leftover_pattern(report: Path) -> re.Pattern[str]:
    """Names of the temporary files a run on ``report`` creates (its journal's included),
    and the fixed temporary name older versions used."""
    name = re.escape(report.name)
    kinds = "|".join(re.escape(k) for k in _KINDS)
    ours = rf"\.{name}(?:\.journal)?\.[0-9a-f]{{12}}\.bulklink-(?:{kinds})"
    return re.compile(rf"{ours}|\.{name}\.bulklink-tmp")


def sweep(report: Path, before: float) -> int:
    """Remove our temporary files for ``report`` last modified before ``before`` (the lock's
    start: whoever made them is gone, since the caller holds the lock); returns how many."""
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
