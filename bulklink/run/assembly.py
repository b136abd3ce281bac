"""Putting the report together in input order while results arrive in any order.

Results come from the runner as requests finish; each is journaled first, then written
as soon as every earlier row is. Rows done by an earlier (killed) run, and results that
arrived far ahead of the cursor, are read back from the journal instead of held in
memory, so memory stays flat. Only the input chunks the cursor has not passed are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bulklink.models import ErrorTally, Outcome, Result
from bulklink.state.journal import Journal
from bulklink.tables.ids import invalid_text
from bulklink.tables.inputs import ALREADY, DUPLICATE, KEEP, SEND, Chunk, Plan
from bulklink.tables.report.reader import RowReader
from bulklink.tables.report.schema import TICKET_COLUMNS, Layout, ReportRow, split_ticket
from bulklink.tables.report.writers import ReportWriter
from bulklink.text import utc_stamp

PENDING_IN_MEMORY = 4096  # out-of-order results kept whole; beyond it, re-read from journal
#: Rows ready to write (read back from the journal on a resume, kept by ``retry``) are
#: written for at most SLICE_SECONDS per event-loop turn, so dispatch never stalls; the
#: clock is read once per SLICE_ROWS rows.
SLICE_SECONDS = 0.005
SLICE_ROWS = 16
_NO_TICKET: list[Any] = [None] * len(TICKET_COLUMNS)


@dataclass(slots=True)
class _First:
    """A row that later rows duplicate: what they share."""

    success: bool
    http_status: Any
    error: str
    ticket: Sequence[Any]
    extras: dict[str, Any] | None
    row: int | str  # its ``row`` cell: what a note cites (``retry`` keeps the old numbers)


class Assembler:
    """Consumes results, writes the report in order, and counts what it wrote."""

    def __init__(
        self,
        plan: Plan,
        layout: Layout,
        journal: Journal,
        writer: ReportWriter,
        on_linked: Callable[[tuple[str, str, str]], None] | None = None,
    ) -> None:
        self.plan = plan
        #: Each pair the API linked, as ``(source, linked, linked_at)``, as it is written.
        self.on_linked = on_linked
        self.layout = layout
        self.journal = journal
        self.writer = writer
        self.codes = plan.codes.tobytes()  # per-row reads of bytes are far cheaper than numpy
        self.first_of = plan.first_of
        self._targets = {int(i) for i in set(plan.first_of[plan.first_of >= 0].tolist())}
        self._firsts: dict[int, _First] = {}
        self._chunks: deque[Chunk] = deque()
        self._loaded = 0  # rows in chunks handed to us so far
        self._cursor = 0
        self._pending: dict[int, Result] = {}
        self.counts: Counter[str] = Counter()
        self.errors = ErrorTally()
        self.done_this_run = 0
        self.unsuccessful = 0  # rows whose success is false, whatever the outcome
        self.skip_reason = "not attempted"
        self.moved = asyncio.Event()  # set whenever the cursor passes a chunk
        #: ``loop.call_soon`` inside a run: how the rest of a long stretch of rows ready to
        #: write is left for the next event-loop turn (see SLICE_SECONDS).
        self.defer: Callable[[Callable[[], None]], object] | None = None
        self._deferred = False

    # -- input side -------------------------------------------------------------------
    def add_chunk(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._loaded = chunk.end
        self._advance()

    @property
    def lead(self) -> int:
        """Rows read but not yet written: the feed waits when this grows too large."""
        return self._loaded - self._cursor

    # -- result side ------------------------------------------------------------------
    def accept(self, result: Result) -> None:
        """Journal a finished row (before it counts as done), then write what can be."""
        index = result.row - 1
        journaled = result.outcome in (Outcome.LINKED, Outcome.FAILED)
        if journaled:
            self.journal.record(result)
            self.done_this_run += 1
        # A journaled result far ahead of the cursor is read back when its turn comes.
        if not journaled or index == self._cursor or len(self._pending) < PENDING_IN_MEMORY:
            self._pending[index] = result
        self._advance()

    def finish(self) -> None:
        """Everything still without a result is ``skipped``; called once no request runs."""
        for index in range(self._cursor, self._loaded):
            if (
                self.codes[index] == SEND
                and index not in self._pending
                and not self.journal.done(index + 1)
            ):
                self._pending[index] = Result(index + 1, Outcome.SKIPPED, None, self.skip_reason, 0)
        self._advance(whole=True)
        assert self._cursor == self._loaded, "rows left unwritten"

    # -- writing ----------------------------------------------------------------------
    @property
    def catching_up(self) -> bool:
        """Rows ready to write are left for a later turn (see SLICE_SECONDS)."""
        return self._deferred

    def _resume(self) -> None:
        self._deferred = False
        self._advance()

    def _advance(self, whole: bool = False) -> None:
        if self._deferred and not whole:
            return  # one slice per turn, written by the deferred call
        budget, started = SLICE_ROWS, 0.0
        while self._cursor < self._loaded:
            if not budget and not whole and self.defer is not None:
                budget = SLICE_ROWS
                now = time.monotonic()
                started = started or now
                if now - started >= SLICE_SECONDS:
                    if not self._deferred:  # the rest next turn: let requests and timers run
                        self._deferred = True
                        self.defer(self._resume)
                    return
            budget -= 1
            if not self._write_next():
                return

    def _write_next(self) -> bool:
        """Write the row at the cursor; False when its result has not come yet."""
        index = self._cursor
        chunk = self._chunks[0]
        at = index - chunk.start
        code = self.codes[index]
        if code == SEND:
            result = self._pending.pop(index, None)
            if result is None:
                if not self.journal.done(index + 1):
                    return False
                result = self.journal.read(index + 1)
            self._write_result(chunk, at, result)
        elif code == DUPLICATE:
            self._write_duplicate(chunk, at, int(self.first_of[index]))
        elif code == ALREADY:
            if self.journal.done(index + 1):  # linked by the run this one resumes
                self._write_result(chunk, at, self.journal.read(index + 1))
            else:
                self._write_already(chunk, at)
        elif code == KEEP:
            self._write_kept(chunk, at)
        else:
            reason = invalid_text(code, chunk.source[at], chunk.linked[at])
            self._write_invalid(chunk, at, reason)
        self._step(chunk)
        return True

    def _step(self, chunk: Chunk) -> None:
        """Past one row; past the chunk too when it was its last."""
        self._cursor += 1
        if self._cursor == chunk.end:
            self._chunks.popleft()
            self.moved.set()

    def _head(
        self,
        chunk: Chunk,
        at: int,
        outcome: Outcome,
        *,
        success: bool,
        status: int | None = None,
        error: str = "",
        attempts: int = 0,
        linked_at: str = "",
    ) -> ReportRow:
        """A row's own cells; ``retry`` keeps the row number the old report gave it."""
        number: int | str = chunk.start + at + 1
        if self.layout.retry:
            number = self._reader(chunk).row_number(at)
        source, linked = chunk.source[at], chunk.linked[at]
        return ReportRow(
            number, source, linked, success, outcome, status, error, attempts, linked_at
        )

    def _reader(self, chunk: Chunk) -> RowReader:
        """``retry``: the old report's cells of the chunk."""
        return RowReader(chunk.columns, self.layout.escaped)

    def _prior_attempts(self, chunk: Chunk, at: int) -> int:
        """``retry``: the attempts the old report counted for the row."""
        if not self.layout.retry:
            return 0
        column = chunk.columns.get("attempts")  # a column deleted by hand counts none
        value = str(column[at]).strip() if column is not None else ""
        return int(value) if value.isdigit() else 0

    def _put(
        self,
        chunk: Chunk,
        at: int,
        head: ReportRow,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
    ) -> None:
        """Write one row, count it, and keep what its duplicates will share."""
        carried = [chunk.columns[name][at] for name in self.layout.passthrough]
        self.writer.write(*self.writer.schema.cells(head, ticket, extras, carried))
        self.counts[head.outcome] += 1  # keyed by the text: an Outcome is a str
        if not head.success:
            self.unsuccessful += 1
            if head.outcome is not Outcome.DUPLICATE:
                self.errors.add(head.row, head.error, head.source, head.linked)
        index = chunk.start + at
        if index in self._targets:
            self._firsts[index] = _First(
                head.success, head.http_status, head.error, ticket, extras, head.row
            )

    def _write_result(self, chunk: Chunk, at: int, result: Result) -> None:
        """A row sent this run or read back from the journal."""
        ticket, extras = split_ticket(result.ticket)
        success = result.outcome is Outcome.LINKED
        if success and self.on_linked is not None:
            self.on_linked((chunk.source[at], chunk.linked[at], result.linked_at))
        head = self._head(
            chunk,
            at,
            result.outcome,
            success=success,
            status=result.http_status,
            error=result.error,
            attempts=result.attempts + self._prior_attempts(chunk, at),
            linked_at=result.linked_at,
        )
        self._put(chunk, at, head, ticket, extras)

    def _write_duplicate(self, chunk: Chunk, at: int, first: int) -> None:
        base = self._firsts.get(first)
        if base is None:  # the first row was kept from an earlier report (retry)
            base = _First(False, None, "", _NO_TICKET, None, first + 1)
        note = f"duplicate of row {base.row}"
        if not base.success and base.error:
            note += f": {base.error}"
        head = self._head(
            chunk,
            at,
            Outcome.DUPLICATE,
            success=base.success,
            status=base.http_status,
            error=note,
            attempts=self._prior_attempts(chunk, at),
        )
        self._put(chunk, at, head, base.ticket, base.extras)

    def _write_already(self, chunk: Chunk, at: int) -> None:
        """A pair the store says an earlier run linked: not sent, and a success."""
        assert self.plan.linked_at is not None  # ALREADY rows come with their times
        stamp = int(self.plan.linked_at[chunk.start + at])
        when = utc_stamp(datetime.fromtimestamp(stamp, UTC))
        head = self._head(chunk, at, Outcome.ALREADY_LINKED, success=True, linked_at=when)
        self._put(chunk, at, head, _NO_TICKET, None)

    def _write_invalid(self, chunk: Chunk, at: int, reason: str) -> None:
        head = self._head(chunk, at, Outcome.INVALID, success=False, error=reason)
        self._put(chunk, at, head, _NO_TICKET, None)

    def _write_kept(self, chunk: Chunk, at: int) -> None:
        """A row ``retry`` leaves alone: its old cells, exactly as read."""
        reader = self._reader(chunk)
        ticket = [reader.cell(name, at) for name in TICKET_COLUMNS]
        extras = {
            name: reader.cell(f"ticket.{name}", at) for name in self.layout.extra_fields
        } or None
        head = reader.head(at, chunk.source[at], chunk.linked[at])
        self._put(chunk, at, head, ticket, extras)
