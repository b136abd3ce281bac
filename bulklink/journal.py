"""The crash-safe record of finished rows that lets a killed run resume.

One line per finished row (``linked`` or ``failed``), appended and handed to the OS
before the row counts as done, so a ``kill -9`` loses at most the requests in flight.
The file is ``fsync``'d in batches (at least once a second and at the end) because an
fsync per row would cost more than the request. The first line ties the journal to the
input's content and the report path; anything else starts fresh. Lines hold what the
report needs: no headers, so never a token.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bulklink.models import Outcome, Result

FORMAT = 2  # 2: lines carry the time of the link ("t")


def journal_path(report: Path) -> Path:
    return report.with_name(report.name + ".journal")


class Journal:
    """Results by row, on disk; ``offsets[i]`` is where row ``i+1``'s line starts (or -1)."""

    def __init__(self, path: Path, fd: int, offsets: array[int], resumed: int, end: int) -> None:
        self.path = path
        self._fd = fd
        self.offsets = offsets
        self.resumed = resumed
        self._end = end
        self._reader: Any = None
        self._lines: list[bytes] = []
        self.dirty = False
        #: How to run :meth:`flush` soon after a record: ``loop.call_soon`` inside a run,
        #: so all the rows finished in one event-loop turn cost one system call.
        self.defer: Callable[[Callable[[], None]], object] = lambda flush: flush()

    @classmethod
    def open(cls, path: Path, key: str, rows: int, *, fresh: bool = False) -> tuple[Journal, str]:
        """Open or create the journal; the message says what was found (for stderr)."""
        offsets = array("q", [-1]) * rows
        header = json.dumps({"bulklink_journal": FORMAT, "key": key, "rows": rows}).encode()
        note = ""
        resumed = 0
        end = 0
        if path.exists() and not fresh:
            resumed, end, note = _load(path, header, offsets)
        elif path.exists():
            note = "--fresh: ignoring the journal of an earlier run"
        if end == 0:
            with path.open("wb") as fh:
                fh.write(header + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            end = len(header) + 1
            resumed = 0
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.truncate(fd, end)  # drop a line cut short by a crash
        return cls(path, fd, offsets, resumed, end), note

    def record(self, result: Result) -> None:
        """Append one finished row; only ``linked`` and ``failed`` rows belong here."""
        body = result.body.replace(b"\n", b" ") if result.body is not None else b"null"
        status = b"null" if result.http_status is None else str(result.http_status).encode()
        line = b'{"r":%d,"o":"%s","h":%s,"a":%d,"t":"%s","e":%s,"b":%s}\n' % (
            result.row,
            result.outcome.value.encode(),
            status,
            result.attempts,
            result.linked_at.encode(),
            json.dumps(result.error).encode() if result.error else b'""',
            body,
        )
        self.offsets[result.row - 1] = self._end
        self._end += len(line)
        self._lines.append(line)
        if len(self._lines) == 1:
            self.defer(self.flush)

    def flush(self) -> None:
        """Hand buffered lines to the OS: one ``write`` per event-loop turn, not per row."""
        if self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            while data:
                data = data[os.write(self._fd, data) :]
            self.dirty = True

    def sync(self) -> None:
        self.flush()
        if self.dirty:
            self.dirty = False
            os.fsync(self._fd)

    def fsync_now(self) -> None:
        """For a worker thread: the event loop clears ``dirty`` before handing this off."""
        with contextlib.suppress(OSError):  # closed meanwhile: close() fsyncs itself
            os.fsync(self._fd)

    def pending(self, wanted: Any) -> int:
        """How many rows of the boolean mask ``wanted`` have no recorded result yet."""
        import numpy as np

        offsets = np.frombuffer(self.offsets, dtype=np.int64)
        return int(np.count_nonzero(wanted & (offsets < 0)))

    def done(self, row: int) -> bool:
        return self.offsets[row - 1] >= 0

    def read(self, row: int) -> Result:
        """The recorded result of ``row`` (which must be :meth:`done`)."""
        self.flush()
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(self.offsets[row - 1])
        obj = json.loads(self._reader.readline())
        body = obj["b"]
        ticket = body.get("data") if isinstance(body, dict) else None
        return Result(
            obj["r"],
            Outcome(obj["o"]),
            obj["h"],
            obj["e"],
            obj["a"],
            ticket if isinstance(ticket, dict) else None,
            linked_at=str(obj.get("t") or ""),
        )

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _load(path: Path, header: bytes, offsets: array[int]) -> tuple[int, int, str]:
    """Index an earlier journal; returns (rows done, end of the last whole line, note)."""
    with path.open("rb") as fh:
        first = fh.readline()
        if first.rstrip(b"\n") != header:
            return (
                0,
                0,
                "the journal beside the report belongs to another input or command: starting fresh",
            )
        end = len(first)
        for line in fh:
            if not line.endswith(b"}\n") or not line.startswith(b'{"r":'):
                break  # a torn last line: everything before it is good
            comma = line.find(b",", 5)
            try:
                row = int(line[5:comma])
            except ValueError:
                break
            if 1 <= row <= len(offsets):
                offsets[row - 1] = end
            end += len(line)
    done = sum(1 for off in offsets if off >= 0)
    return done, end, f"resuming: {done} rows were already done by an earlier run"
