"""The crash-safe record of finished rows that lets a killed run resume.

One line per finished row (``linked`` or ``failed``), appended and handed to the OS
before the row counts as done, so a ``kill -9`` loses at most the requests in flight.
The file is ``fsync``'d in batches (at least once a second and at the end) because an
fsync per row would cost more than the request. The first line (JSON) ties the journal to
the input's content and how it was read (its name ties it to the report) and to the
:class:`Scope`, where the rows were linked: base URL, org ID, sandbox. A journal that does
not match starts fresh, and the note says what differs. Lines hold what the report
needs: no headers, so never a token. The file is opened without following a link: a
symlink (or anything but a regular file) at its name is refused (exit 2); a fresh one is
written under a temporary name and renamed into place.

Every line reads back, whatever the server sent: the 2xx body is copied as it is only
when it is the plain UTF-8 JSON object a line can embed (the usual answer, and the
cheap path), else the ticket is re-serialised. Each line ends with a CRC-32 of the
rest, checked when an earlier run's journal is loaded (a fraction of the cost of
parsing it): a line torn by a crash, damaged by hand or by the disk is not trusted, and
its row counts as not done, so it is sent again. A write that fails (a full disk) is
reported once through :attr:`Journal.on_failure`; later results stay in memory for the
rest of the run, and the rerun sends those rows again.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bulklink._fs import AtomicFile, open_fixed, side_path
from bulklink.models import Outcome, Result
from bulklink.state.scope import Scope
from bulklink.text import answer_json, compact_json

FORMAT = 3  # 2: the header holds the scope; 3: a CRC-32 ends each line; "t", "s", "l"
UNREADABLE = "not attempted: its journal line could not be read back"


def journal_path(report: Path) -> Path:
    return side_path(report, ".journal")


_BESIDE = "the journal beside the report"
_HEADER_MAX = 1 << 16


class Journal:
    """Results by row, on disk; ``offsets[i]`` is where row ``i+1``'s line starts (or -1)."""

    def __init__(self, path: Path, fd: int, offsets: array[int], resumed: int, end: int) -> None:
        self.path = path
        self._fd = fd
        self.offsets = offsets
        self.resumed = resumed
        self._end = end
        self._reader: Any = None
        self._lines: list[bytes] = []  # rows not yet handed to the OS
        self.dirty = False
        #: How to run :meth:`flush` soon after a record: ``loop.call_soon`` inside a run,
        #: so all the rows finished in one event-loop turn cost one system call.
        self.defer: Callable[[Callable[[], None]], object] = lambda flush: flush()
        #: Told once, of the first write that failed; from then on results stay in memory.
        self.on_failure: Callable[[OSError], None] | None = None
        self.failure: OSError | None = None
        self._unwritten: dict[int, Result] = {}

    @classmethod
    def open(
        cls,
        path: Path,
        key: str,
        rows: int,
        *,
        scope: Scope,
        fresh: bool = False,
    ) -> tuple[Journal, str]:
        """Open or create the journal; the message says what was found (for stderr)."""
        offsets = array("q", [-1]) * rows
        expected = _expected(key, rows)
        note = ""
        resumed = 0
        end = 0
        earlier = open_fixed(path, os.O_RDWR | os.O_APPEND, "the journal")
        if earlier is not None and not fresh:
            with os.fdopen(os.dup(earlier), "rb") as fh:
                resumed, end, note = _load(fh, expected, scope, offsets)
        elif earlier is not None:
            note = "--fresh: ignoring the journal of an earlier run"
        if end and earlier is not None:
            fd = earlier
            os.ftruncate(fd, end)  # drop a line cut short by a crash
        else:
            if earlier is not None:
                os.close(earlier)
            header = json.dumps({**expected, "scope": scope.header()}).encode() + b"\n"
            fd = _create(path, header)
            end = len(header)
            resumed = 0
        return cls(path, fd, offsets, resumed, end), note

    def record(self, result: Result) -> None:
        """Append one finished row; only ``linked`` and ``failed`` rows belong here."""
        self.offsets[result.row - 1] = self._end
        if self.failure is not None:
            self._unwritten[result.row] = result
            return
        line = journal_line(result)
        self._end += len(line)
        self._lines.append(line)
        if len(self._lines) == 1:
            self.defer(self.flush)

    def attach(
        self,
        defer: Callable[[Callable[[], None]], object],
        on_failure: Callable[[OSError], None],
    ) -> None:
        """Inside a run: flush once per event-loop turn (``loop.call_soon``), and say when a
        write fails."""
        self.defer = defer
        self.on_failure = on_failure

    def take_dirty(self) -> bool:
        """Whether lines were written since the last fsync; the caller fsyncs them now."""
        dirty, self.dirty = self.dirty, False
        return dirty

    def flush(self) -> None:
        """Hand buffered lines to the OS: one ``write`` per event-loop turn, not per row."""
        if self._lines:
            data = b"".join(self._lines)
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError as exc:
                self.fail(exc)
                return
            self._lines.clear()
            self.dirty = True

    def fail(self, error: OSError) -> None:
        """A write or fsync failed: stop writing, keep what is unwritten in memory, tell once.

        What reached the file stays valid (a torn last line is cut off by the next
        open); the rows held in memory are sent again by the next run.
        """
        if self.failure is not None:
            return
        self.failure = error
        for line in self._lines:
            result = parse_line(line)
            if result is not None:
                self._unwritten[result.row] = result
        self._lines.clear()
        if self.on_failure is not None:
            self.on_failure(error)

    def sync(self) -> None:
        self.flush()
        if self.dirty and self.failure is None:
            self.dirty = False
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.fail(exc)

    def fsync_now(self) -> None:
        """For a worker thread: the event loop clears ``dirty`` before handing this off.

        Raises the ``OSError`` of a failed fsync for the caller to pass to :meth:`fail`
        on the loop; a descriptor closed meanwhile is not a failure (close() fsyncs).
        """
        fd = self._fd
        if fd < 0:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF and self._fd >= 0:
                raise

    def pending(self, wanted: Any) -> int:
        """How many rows of the boolean mask ``wanted`` have no recorded result yet."""
        import numpy as np

        offsets = np.frombuffer(self.offsets, dtype=np.int64)
        return int(np.count_nonzero(wanted & (offsets < 0)))

    def undone(self, start: int, end: int) -> Any:
        """A boolean array: which rows of ``[start, end)`` (0-based) have no result yet."""
        import numpy as np

        return np.frombuffer(self.offsets, dtype=np.int64)[start:end] < 0

    def done(self, row: int) -> bool:
        return self.offsets[row - 1] >= 0

    def read(self, row: int) -> Result:
        """The recorded result of ``row`` (which must be :meth:`done`); never raises for a
        line that cannot be read back: the row then comes back ``skipped``."""
        if self._unwritten:
            kept = self._unwritten.get(row)
            if kept is not None:
                return kept
        self.flush()
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(self.offsets[row - 1])
        result = parse_line(self._reader.readline())
        if result is None or result.row != row:
            return Result(row, Outcome.SKIPPED, None, UNREADABLE, 0)
        return result

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()  # reports a failure through fail(), never raises
            os.close(self._fd)
            self._fd = -1
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _expected(key: str, rows: int) -> dict[str, Any]:
    """What a journal's header must say to be resumed by a run of this input."""
    return {"bulklink_journal": FORMAT, "key": key, "rows": rows}


def resumable_rows(path: Path, key: str, rows: int, scope: Scope) -> array[int] | None:
    """The rows a run would take as done from the journal at ``path`` (an offset of 0 or
    more each), read only, for a dry run to say what the run would really send; None
    when there is no journal this run would resume."""
    fd = open_fixed(path, os.O_RDONLY, "the journal")
    if fd is None:
        return None
    offsets = array("q", [-1]) * rows
    with os.fdopen(fd, "rb") as fh:
        done, _, _ = _load(fh, _expected(key, rows), scope, offsets)
    return offsets if done else None


_HAND_OVER_BATCH = 10_000


#: Where pairs a journal holds go: the scope they were linked in, and a batch of them.
KeepLinked = Callable[[Scope, list[tuple[str, str, str]]], None]


def hand_over_links(path: Path, scope: Scope, keep_linked: KeepLinked) -> None:
    """The pairs an earlier run linked, from its journal, to ``keep_linked`` (the state
    store) in batches of ``(source, linked, time)``, under the scope the journal was
    written against: ``scope``'s, or another one (a run on the same report against
    another org or server), whose pairs are then not lost when this run starts fresh.

    Called before the input is checked against the store, whether or not the journal will
    be resumed: a kill followed by ``--fresh`` or a changed input then loses no link.
    """
    fd = open_fixed(path, os.O_RDONLY, "the journal")
    if fd is None:
        return
    with os.fdopen(fd, "rb") as fh:
        _hand_over(fh, scope, keep_linked)


def _hand_over(fh: IO[bytes], scope: Scope, keep_linked: KeepLinked) -> None:
    written = _written_in(fh.readline(_HEADER_MAX), scope)
    if written is None:
        return
    batch: list[tuple[str, str, str]] = []
    for line in fh:
        if not checked_row(line) or b'"o":"linked"' not in line:
            continue
        try:
            obj = json.loads(line)
            pair = (obj["s"], obj["l"], obj["t"])
        except (ValueError, KeyError, RecursionError):
            continue
        if all(isinstance(v, str) and v for v in pair):
            batch.append(pair)
        if len(batch) >= _HAND_OVER_BATCH:
            keep_linked(written, batch)
            batch = []
    if batch:
        keep_linked(written, batch)


def _written_in(first: bytes, scope: Scope) -> Scope | None:
    """The scope a journal's header says it was written in: ``scope`` when it matches,
    else the one it records (linked on another server or org: recorded there); None for
    no journal of this format, or one that does not say."""
    try:
        header = json.loads(first)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("bulklink_journal") != FORMAT:
        return None
    found = header.get("scope")
    return Scope.from_header(found) if scope.mismatch(found) else scope


def journal_line(result: Result) -> bytes:
    """The line that records ``result``: its fields, the 2xx body as ``"b"``, the CRC-32.

    The body is embedded as it came when it is the plain UTF-8 JSON object a line can
    hold (the usual answer), so a ticket is neither decoded nor encoded again here.
    """
    body = result.body
    if body is None:
        body = b"null"
    elif body.startswith(b'{"'):  # decoded as UTF-8 by json (no BOM, not UTF-16)
        body = body.replace(b"\n", b" ")  # a newline can only be whitespace here
    else:
        body = json.dumps({"data": result.ticket}).encode()
    fields = {
        "r": result.row,
        "o": result.outcome,
        "h": result.http_status,
        "a": result.attempts,
        "t": result.linked_at,
        "s": result.source,
        "l": result.linked,
        "e": result.error,
    }
    head = compact_json(fields)[:-1].encode()
    line = head + b',"b":' + body
    return line + b',"k":%d}\n' % zlib.crc32(line)


def parse_line(line: bytes) -> Result | None:
    """A journal line as the result it records, or None when it is not one."""
    try:
        obj = answer_json(line)
        body = obj["b"]
        ticket = body.get("data") if isinstance(body, dict) else None
        status, error, attempts = obj["h"], obj["e"], obj["a"]
        if not (
            (status is None or type(status) is int)
            and isinstance(error, str)
            and type(attempts) is int
        ):
            return None
        outcome = Outcome(obj["o"])
        if outcome is not Outcome.LINKED and outcome is not Outcome.FAILED:
            return None
        return Result(
            int(obj["r"]),
            outcome,
            status,
            error,
            attempts,
            ticket if isinstance(ticket, dict) else None,
            linked_at=str(obj.get("t") or ""),
            source=str(obj.get("s") or ""),
            linked=str(obj.get("l") or ""),
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def checked_row(line: bytes) -> int:
    """The row of a whole line whose CRC matches, else 0: cheap enough for a million lines."""
    crc_at = line.rfind(b',"k":')
    if crc_at < 0 or not line.startswith(b'{"r":') or not line.endswith(b"}\n"):
        return 0
    digits = line[crc_at + 5 : -2]
    if not digits.isdigit() or int(digits) != zlib.crc32(line[:crc_at]):
        return 0
    row = line[5 : line.find(b",", 5)]
    return int(row) if row.isdigit() else 0


def _create(path: Path, header: bytes) -> int:
    """A new journal holding ``header``, installed over ``path``; the fd appends to it."""
    new = AtomicFile(path, mode=0o600, flags=os.O_APPEND)
    try:
        os.write(new.fd, header)
        new.install()
    except OSError:
        new.discard()
        raise  # a full disk: the job reports it as such (exit 74)
    return new.fd


def _load(
    fh: IO[bytes], expected: dict[str, Any], scope: Scope, offsets: array[int]
) -> tuple[int, int, str]:
    """Index an earlier journal; returns (rows done, end of the last whole line, note)."""
    first = fh.readline(_HEADER_MAX)
    mismatch = _mismatch(first, expected, scope)
    if mismatch:
        return 0, 0, f"{mismatch}: starting fresh"
    end = len(first)
    unreadable = 0
    for line in fh:
        if not line.endswith(b"\n"):
            break  # a torn last line (a crash, a full disk): cut off when reopened
        row = checked_row(line)
        if 1 <= row <= len(offsets):
            offsets[row - 1] = end
        else:
            unreadable += 1
        end += len(line)
    done = sum(1 for off in offsets if off >= 0)
    note = f"resuming: {done} rows were already done by an earlier run"
    if unreadable:
        note += f"; {unreadable} unreadable journal lines ignored (their rows are sent again)"
    return done, end, note


def _mismatch(first: bytes, expected: dict[str, Any], scope: Scope) -> str:
    """Why an earlier journal's first line does not fit this run ('' when it does)."""
    try:
        found = json.loads(first) if first.endswith(b"\n") else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or "bulklink_journal" not in found:
        return f"{_BESIDE} is not a bulklink journal"
    if found["bulklink_journal"] == 1:
        return (
            f"{_BESIDE} was written by an older bulklink, which did not record the server "
            "and org it linked on"
        )
    if found["bulklink_journal"] != FORMAT:
        return f"{_BESIDE} was written by another version of bulklink"
    if any(found.get(name) != value for name, value in expected.items()):
        return f"{_BESIDE} belongs to another input or command"
    return scope.mismatch(found.get("scope"))
