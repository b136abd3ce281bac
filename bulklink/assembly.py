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
from dataclasses import dataclass, field
from typing import Any

from bulklink.inputs import DUPLICATE, INVALID_REASONS, KEEP, SEND, Chunk, Plan
from bulklink.journal import Journal
from bulklink.models import TICKET_COLUMNS, ErrorGroup, Outcome, Result
from bulklink.report import ReportWriter, split_ticket, unneutralize

PENDING_IN_MEMORY = 4096  # out-of-order results kept whole; beyond it, re-read from journal
#: Rows ready to write (read back from the journal on a resume, kept by ``retry``) are
#: written for at most SLICE_SECONDS per event-loop turn, so dispatch never stalls; the
#: clock is read once per SLICE_ROWS rows, and never on the usual one-row path.
SLICE_SECONDS = 0.005
SLICE_ROWS = 16


@dataclass(slots=True)
class Layout:
    """Which input columns are copied through, and (for ``retry``) where old results live."""

    passthrough: list[str]
    extra_fields: list[str] = field(default_factory=list)
    retry: bool = False
    escaped: bool = False  # the old report is a CSV: its API text carries formula escapes


@dataclass(slots=True)
class _First:
    """A row that later rows duplicate: what they share."""

    success: bool
    http_status: Any
    error: str
    ticket: list[Any]
    extras: dict[str, Any] | None


class Assembler:
    """Consumes results, writes the report in order, and counts what it wrote."""

    def __init__(self, plan: Plan, layout: Layout, journal: Journal, writer: ReportWriter) -> None:
        self.plan = plan
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
        self._loaded = chunk.start + len(chunk)
        self._advance()

    @property
    def lead(self) -> int:
        """Rows read but not yet written: the feed waits when this grows too large."""
        return self._loaded - self._cursor

    # -- result side ------------------------------------------------------------------
    def accept(self, result: Result) -> None:
        """Journal a finished row (before it counts as done), then write what can be."""
        index = result.row - 1
        if result.outcome is Outcome.LINKED or result.outcome is Outcome.FAILED:
            self.journal.record(result)
            self.done_this_run += 1
            if index != self._cursor:
                if len(self._pending) < PENDING_IN_MEMORY:
                    self._pending[index] = result
                return
        elif index != self._cursor:
            self._pending[index] = result
            return
        # The row the report is waiting for (the usual case): write it straight away.
        chunk = self._chunks[0]
        self._write_result(chunk, index - chunk.start, result)
        self._step(chunk)
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
        codes, pending = self.codes, self._pending
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
            index = self._cursor
            chunk = self._chunks[0]
            at = index - chunk.start
            code = codes[index]
            if code == SEND:
                result = pending.pop(index, None)
                if result is None:
                    if not self.journal.done(index + 1):
                        return
                    result = self.journal.read(index + 1)
                self._write_result(chunk, at, result)
            elif code == DUPLICATE:
                self._write_duplicate(chunk, at, int(self.first_of[index]))
            elif code == KEEP:
                self._write_kept(chunk, at)
            else:
                self._write_invalid(chunk, at, INVALID_REASONS[int(code)])
            self._step(chunk)

    def _step(self, chunk: Chunk) -> None:
        """Past one row; past the chunk too when it was its last."""
        self._cursor += 1
        if self._cursor == chunk.start + len(chunk):
            self._chunks.popleft()
            self.moved.set()

    def _others(self, chunk: Chunk, at: int) -> list[Any]:
        cols = chunk.columns
        return [cols[name][at] for name in self.layout.passthrough]

    def _row_number(self, chunk: Chunk, at: int) -> Any:
        if self.layout.retry:
            value = chunk.columns["row"][at]
            return int(value) if str(value).isdigit() else value
        return chunk.start + at + 1

    def _prior_attempts(self, chunk: Chunk, at: int) -> int:
        if not self.layout.retry:
            return 0
        value = str(chunk.columns["attempts"][at]).strip()
        return int(value) if value.isdigit() else 0

    def _emit(
        self,
        chunk: Chunk,
        at: int,
        success: bool,
        outcome: Outcome,
        status: Any,
        error: str,
        attempts: int,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
    ) -> None:
        source, linked = chunk.source[at], chunk.linked[at]
        head = [
            self._row_number(chunk, at),
            source,
            linked,
            "true" if success else "false",
            outcome.value,
            status,
            error,
            attempts,
        ]
        self.writer.write(head, ticket, extras, self._others(chunk, at))
        self.counts[outcome.value] += 1
        if not success:
            self.unsuccessful += 1
            if outcome is not Outcome.DUPLICATE:
                self.errors.add(head[0], error, source, linked)

    def _write_result(self, chunk: Chunk, at: int, result: Result) -> None:
        ticket, extras = split_ticket(result.ticket)
        attempts = result.attempts + self._prior_attempts(chunk, at)
        success = result.outcome is Outcome.LINKED
        index = chunk.start + at
        self._emit(
            chunk,
            at,
            success,
            result.outcome,
            result.http_status,
            result.error,
            attempts,
            ticket,
            extras,
        )
        if index in self._targets:
            self._firsts[index] = _First(success, result.http_status, result.error, ticket, extras)

    def _write_duplicate(self, chunk: Chunk, at: int, first: int) -> None:
        base = self._firsts.get(first)
        if base is None:  # the first row was kept from an earlier report (retry)
            base = _First(False, None, "", [None] * len(TICKET_COLUMNS), None)
        note = f"duplicate of row {first + 1}"
        if not base.success and base.error:
            note += f": {base.error}"
        self._emit(
            chunk,
            at,
            base.success,
            Outcome.DUPLICATE,
            base.http_status,
            note,
            self._prior_attempts(chunk, at) if self.layout.retry else 0,
            base.ticket,
            base.extras,
        )

    def _write_invalid(self, chunk: Chunk, at: int, reason: str) -> None:
        self._emit(
            chunk, at, False, Outcome.INVALID, None, reason, 0, [None] * len(TICKET_COLUMNS), None
        )

    def _write_kept(self, chunk: Chunk, at: int) -> None:
        """A row ``retry`` leaves alone: its old cells, exactly as read."""
        cols = chunk.columns
        outcome = Outcome(str(cols["outcome"][at]).strip())
        success = str(cols["success"][at]).strip().lower() == "true"
        escaped = self.layout.escaped
        ticket = [_restore(cols[name][at], escaped) for name in TICKET_COLUMNS]
        extras = {
            name: _restore(cols[f"ticket.{name}"][at], escaped) for name in self.layout.extra_fields
        } or None
        status = cols["http_status"][at]
        head = [
            self._row_number(chunk, at),
            chunk.source[at],
            chunk.linked[at],
            "true" if success else "false",
            outcome.value,
            _number(status),
            _text(cols["error"][at], escaped),
            _number(cols["attempts"][at]),
        ]
        self.writer.write(head, ticket, extras, self._others(chunk, at))
        self.counts[outcome.value] += 1
        if not success:
            self.unsuccessful += 1
            if outcome is not Outcome.DUPLICATE:
                self.errors.add(head[0], str(head[6]), chunk.source[at], chunk.linked[at])
        index = chunk.start + at
        if index in self._targets:
            self._firsts[index] = _First(success, head[5], str(head[6]), ticket, extras)


class ErrorTally:
    """Failures grouped by error text, each row's own IDs folded out so groups form."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[Any]] = {}

    def add(self, row: Any, error: str, source: str, linked: str) -> None:
        key = error or "(no error text)"
        for value, name in ((source, "<source>"), (linked, "<linked>")):
            if len(value) >= 3:
                key = key.replace(value, name)
        self._counts[key] += 1
        examples = self._examples.setdefault(key, [])
        if len(examples) < 5:
            examples.append(row)

    def groups(self, top: int = 10) -> list[ErrorGroup]:
        return [
            ErrorGroup(error, count, tuple(self._examples[error]))
            for error, count in self._counts.most_common(top)
        ]


def _restore(value: Any, escaped: bool) -> Any:
    """A cell read back from a report: empty is nothing; a CSV's formula escapes undone
    (xlsx and jsonl reports hold text as it came, so a leading quote there is data)."""
    if isinstance(value, str):
        if not value:
            return None
        return unneutralize(value) if escaped else value
    return value


def _text(value: Any, escaped: bool) -> str:
    """The error cell read back: text as written (``""`` stays ``""``)."""
    if value is None:
        return ""
    return unneutralize(str(value)) if escaped else str(value)


def _number(value: Any) -> Any:
    text = str(value).strip() if value is not None else ""
    if text.endswith(".0"):
        text = text[:-2]
    return int(text) if text.isdigit() else (None if text in ("", "None", "nan") else value)
