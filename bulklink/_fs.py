"""Our own files beside the report, opened and created without following a planted link.

Anyone who can write in the report's folder can plant a symlink at a name bulklink uses;
a run by the cron user (often root) would then write through it into any file. So:

- fixed names (``<report>.lock``, ``<report>.journal``) are opened with ``O_NOFOLLOW``
  and must be regular files: a link, a FIFO or a folder there is refused with a
  :class:`~bulklink.errors.UsageError` naming it (exit 2), never followed or waited on;
- temporary files get unpredictable names, created with ``O_EXCL``
  (``.<name>.<12 hex digits>.bulklink-<kind>``), and are renamed into place: ``rename``
  replaces whatever sits at the destination, a link included, and never writes through it;
- every side-file name is derived by :func:`fit_name`, so it fits in a file name however
  long the report's name is;
- :func:`sweep` removes the temporary files a killed run left behind, once the next run
  holds the report's lock, so they do not pile up.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from bulklink.errors import SameFileError, UsageError

_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO never hangs us
_KINDS = ("tmp", "merge", "stdin.csv", "input")
NAME_MAX = 255  # bytes in one file name, on every file system bulklink runs on
#: What a temporary name adds to the name it is made from: ``.``, ``.<12 hex>.bulklink-``
#: and the longest kind.
_TEMP_ROOM = 1 + 1 + 12 + len(".bulklink-") + max(map(len, _KINDS))


def fit_name(name: str, room: int = 0) -> str:
    """``name`` itself when ``room`` more bytes still fit in a file name; else its start
    and a hash of the whole, so that any name bulklink is given yields side-file names
    (journal, lock, temporary files) the file system accepts, each distinct."""
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    head = raw[: max(0, NAME_MAX - room - 13)]
    while head and head[-1] & 0xC0 == 0x80:  # never cut a UTF-8 character in two
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return os.fsdecode(head) + "~" + hashlib.sha256(raw).hexdigest()[:12]


def side_path(target: Path, suffix: str) -> Path:
    """A fixed side file of ``target`` (``<report>.journal``, ``<report>.lock``)."""
    return target.with_name(fit_name(target.name, len(os.fsencode(suffix))) + suffix)


def _names_of(path: Path, follows: bool) -> set[tuple[object, ...]]:
    """What names one file however it is spelled: the name with its folders' links
    resolved, and the file's inode (a hard link is the same file). A file written by a
    rename (``follows`` false) replaces a symbolic link at its name, never the file it
    points to; one read or written in place follows it."""
    names: set[tuple[object, ...]] = {("path", str(path.parent.resolve() / path.name))}
    try:
        info = path.stat() if follows else path.lstat()
    except OSError:
        info = None
    if follows:
        names.add(("path", str(path.resolve())))
    if info is not None and stat.S_ISREG(info.st_mode):
        names.add(("inode", info.st_dev, info.st_ino))
    return names


def refuse_same_files(files: Sequence[tuple[str, Path | None, bool]]) -> None:
    """Refuse two roles (``the input``, ``--summary-json``...) given the same file, as
    ``(role, path, follows)``: one would destroy the other (a log appended to the input
    is read as pairs the next night). The one check of it, before anything is written.
    The message names the first two; the error's ``roles`` are all that share a file."""
    seen: dict[tuple[object, ...], str] = {}
    clashes: list[tuple[str, str, Path]] = []
    for role, path, follows in files:
        if path is None:
            continue
        for key in _names_of(path, follows):
            other = seen.setdefault(key, role)
            if other != role and (other, role, path) not in clashes:
                clashes.append((other, role, path))
    if clashes:
        other, role, path = clashes[0]
        raise SameFileError(
            f"{role} {path} is the same file as {other}; bulklink would destroy "
            f"one with the other: choose another path for {role}",
            tuple(dict.fromkeys(r for clash in clashes for r in clash[:2])),
        )


_SYSTEM_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))
_KIND_NAMES = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def refuse_unreplaceable(path: Path, what: str) -> None:
    """Refuse to rename a file over ``path`` when it is no regular file (``/dev/null``, a
    FIFO a collector reads, a folder) or a link to one (``/dev/stdout``): the rename would
    replace it, and a run as root would put a regular file where ``/dev/null`` was. A
    link to a regular file, or to nothing, is replaced as any link is; nothing is made in
    the system's own folders (``/dev/stdout`` links to whatever stdout is)."""
    folder = path.parent.resolve()
    if any(place in (folder, *folder.parents) for place in _SYSTEM_FOLDERS):
        raise UsageError(
            f"{what} {path} is in {folder}, where bulklink makes no file (it writes a new "
            "file and renames it into place): give the path of a file"
        )
    try:
        mode = path.stat().st_mode  # through a link: what a user means by the name
    except OSError:
        return  # nothing there (or a dangling link): a new file is made
    kind = _KIND_NAMES.get(stat.S_IFMT(mode))
    if kind is None:
        return
    link = "a symbolic link to " if path.is_symlink() else ""
    raise UsageError(
        f"{what} {path} is {link}{kind}, not a file: bulklink writes a new file and "
        "renames it into place, which would replace it; give the path of a file"
    )


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
    base = fit_name(beside.name, _TEMP_ROOM)
    for _ in range(100):
        tmp = beside.with_name(f".{base}.{secrets.token_hex(6)}.bulklink-{kind}")
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
        refuse_unreplaceable(target, "the file")  # callers check earlier, by their name
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
    journal = side_path(report, ".journal").name
    bases = "|".join(re.escape(fit_name(n, _TEMP_ROOM)) for n in (report.name, journal))
    kinds = "|".join(re.escape(k) for k in _KINDS)
    ours = rf"\.(?:{bases})\.[0-9a-f]{{12}}\.bulklink-(?:{kinds})"
    return re.compile(rf"{ours}|\.{re.escape(report.name)}\.bulklink-tmp")


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
