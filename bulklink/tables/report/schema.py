"""The report's shape: its columns, which are bulklink's, and each row's cells in order.

Every writer gets a row as the full list of its cells from :class:`Schema`, and the
reader tells bulklink's columns from the carried ones by :func:`is_ours`, so no format
decides on its own which column a value belongs to. A report's columns are, in order:
bulklink's own (:data:`RESULT_COLUMNS`), the documented ticket fields
(:data:`TICKET_COLUMNS`), the undocumented ticket fields (``ticket.<name>``; those first
seen in answers during the run join at the end of this group), then the input's own
columns, carried through. An input column whose name is bulklink's (``outcome``,
``ticket.title``) is carried as ``input.<name>``, so it can neither overwrite nor be
mistaken for bulklink's own on a ``retry``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bulklink.models import TICKET_FIELDS, Outcome, Summary
from bulklink.text import escape_controls

#: A column per documented ticket field, so the report's shape never depends on which
#: rows succeeded.
TICKET_COLUMNS: tuple[str, ...] = tuple(f"ticket.{name}" for name in TICKET_FIELDS)
_DOCUMENTED = frozenset(TICKET_FIELDS)
#: Columns for ticket fields beyond the documented ones, at most, in one report.
MAX_EXTRA_FIELDS = 100
#: Names of the fields left out that are remembered, to count them: an API naming new
#: fields in every answer must not grow memory by a set entry each.
MAX_DROPPED_NAMES = 10_000
_RISKY = re.compile(r"'*[=+\-@\t\r]")
_RISKY_FIRST = frozenset("'=+-@\t\r")  # what a match of _RISKY can start with
#: What :func:`text_cell` writes as JSON (a tuple made once: a union such as
#: ``dict | list`` in ``isinstance`` is a new object at every call).
_JSON_TYPES = (dict, list)


class ReportRow(NamedTuple):
    """A report row's own cells, typed, in column order: the one definition of them.

    :data:`RESULT_COLUMNS` names them; a new column is one field here (and its value
    where rows are built).
    """

    row: int | str  # an int, except a kept row whose cell was not a number
    source: str
    linked: str
    success: bool
    outcome: Outcome
    http_status: int | None
    error: str
    attempts: int
    linked_at: str  # UTC, ISO 8601: when this run or an earlier one linked the pair


#: Report column names of :class:`ReportRow`'s fields, where they differ.
_COLUMN_NAMES = {"source": "sourceTicketId", "linked": "linkedTicketId"}
#: The report's leading columns, before the ``ticket.*`` ones.
RESULT_COLUMNS: tuple[str, ...] = tuple(_COLUMN_NAMES.get(f, f) for f in ReportRow._fields)
#: Where some of bulklink's cells sit in a row, for the formats that treat them apart.
SUCCESS_AT = ReportRow._fields.index("success")
OUTCOME_AT = ReportRow._fields.index("outcome")
ERROR_AT = ReportRow._fields.index("error")
LINKED_AT_AT = ReportRow._fields.index("linked_at")
#: Where the ticket's cells start in a row.
TICKET_AT = len(RESULT_COLUMNS)


def is_ours(name: str) -> bool:
    """A column bulklink writes itself, as opposed to one carried from the input."""
    return name in RESULT_COLUMNS or name.startswith("ticket.")


def carried_names(columns: Sequence[str]) -> list[str]:
    """The names the input's columns are carried under: their own unless bulklink's, then
    ``input.<name>`` (again, until it is free: ``outcome`` beside ``input.outcome``)."""
    taken: set[str] = set()
    names = []
    for name in columns:
        while is_ours(name) or name in taken:
            name = f"input.{name}"
        taken.add(name)
        names.append(name)
    return names


def split_ticket(ticket: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any] | None]:
    """Documented fields in order, and the undocumented ones (or None)."""
    if ticket is None:
        return [None] * len(TICKET_FIELDS), None
    cells = list(map(ticket.get, TICKET_FIELDS))
    if _DOCUMENTED.issuperset(ticket):  # the usual answer: no field but the documented ones
        return cells, None
    return cells, {k: v for k, v in ticket.items() if k not in _DOCUMENTED}


@dataclass(slots=True)
class Layout:
    """Which input columns are carried through, and (for ``retry``) where old results live."""

    passthrough: list[str]  # the input's column names (a chunk's ``columns`` keys)
    extra_fields: list[str] = field(default_factory=list)  # undocumented ticket fields
    retry: bool = False
    escaped: bool = False  # the old report is a CSV: its API text carries formula escapes


class Schema:
    """The columns of one report being written, and each row's cells in their order.

    The undocumented ticket fields known up front (``retry``: the old report's) have
    their columns from the start; fields first seen in an answer ("late") only get
    theirs once every row is in, so a row's late values travel beside its cells.
    """

    def __init__(self, layout: Layout) -> None:
        self.extra_fields = list(layout.extra_fields)
        self.carried = carried_names(layout.passthrough)
        self.late: dict[str, None] = {}  # late fields, in the order they first appeared
        self.dropped: set[str] = set()  # late fields past MAX_EXTRA_FIELDS: no column
        self._known = frozenset(self.extra_fields)
        self._no_extras = [None] * len(self.extra_fields)  # a row without extra fields
        extra = [f"ticket.{name}" for name in self.extra_fields]
        self._leading = [*RESULT_COLUMNS, *TICKET_COLUMNS, *extra]
        #: Where the late fields' columns go: after the ticket columns known up front.
        self.cut = len(self._leading)

    def columns(self) -> list[str]:
        """The header: with the late fields' columns seen so far."""
        late = [f"ticket.{name}" for name in self.late]
        return [*self._leading, *late, *self.carried]

    def cells(
        self,
        head: ReportRow,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        carried: Sequence[Any],
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """A row's cells for the columns known up front, and its late fields (or None)."""
        if not extras:  # the usual row: its cells only
            return [*head, *ticket, *self._no_extras, *carried], None
        cells = [*head, *ticket, *(extras.get(name) for name in self.extra_fields), *carried]
        late = {k: v for k, v in extras.items() if k not in self._known} or None
        if late is not None:
            late = self._admit(late)
        return cells, late

    def _admit(self, late: dict[str, Any]) -> dict[str, Any] | None:
        """The late fields that have, or get, a column: at most :data:`MAX_EXTRA_FIELDS`
        in all, so an API adding fields of new names to every answer cannot grow the
        report by a column a row (a CSV quadratic in its rows, an xlsx past Excel's
        16,384 columns). The others are counted in :attr:`dropped`."""
        room = MAX_EXTRA_FIELDS - len(self.extra_fields) - len(self.late)
        for name in late:
            if name not in self.late:
                if room > 0:
                    self.late[name] = None
                    room -= 1
                elif len(self.dropped) < MAX_DROPPED_NAMES:  # a count, not every name
                    self.dropped.add(name)
        kept = {k: v for k, v in late.items() if k in self.late}
        return kept or None

    def complete(self, cells: Sequence[Any], late: dict[str, Any] | None) -> list[Any]:
        """A row's cells under the final header: its late values put in their columns."""
        values = late or {}
        added = [values.get(name) for name in self.late]
        return [*cells[: self.cut], *added, *cells[self.cut :]]

    def record(self, cells: Sequence[Any], late: dict[str, Any] | None) -> dict[str, Any]:
        """A row as one object keyed by column: its own late fields only, before the
        carried columns (a format with a key per value needs no column for every row)."""
        record = dict(zip(self._leading, cells[: self.cut], strict=True))
        record.update((f"ticket.{name}", value) for name, value in (late or {}).items())
        record.update(zip(self.carried, cells[self.cut :], strict=True))
        return record


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a report tells of the run besides its rows (the xlsx Summary sheet)."""

    started: str = ""
    finished: str = ""
    duration: float | None = None
    input: str = ""
    report: str = ""
    exit_code: int | None = None
    stopped: str = ""

    @classmethod
    def from_summary(cls, summary: Summary, input: str | Path) -> RunInfo:
        """Names escaped as on a terminal: a sheet's XML holds no stray byte of a name."""
        return cls(
            started=summary.started,
            finished=summary.finished,
            duration=round(summary.elapsed, 3),
            input=escape_controls(os.fsdecode(input)),
            report=escape_controls(summary.report),
            exit_code=summary.exit_code,
            stopped=escape_controls(summary.stopped),
        )


def text_cell(value: Any) -> str:
    """A JSON value as the text a cell holds: lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _JSON_TYPES):
        if not value:
            return "[]" if isinstance(value, list) else "{}"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def neutralize(text: str) -> str:
    """Prefix a quote to text a spreadsheet would run as a formula (``= + - @``, a tab or
    a carriage return first, as OWASP advises); bijective, so a report reads back exactly."""
    # The first character's test first: it spares the regex for nearly every cell.
    return "'" + text if text and text[0] in _RISKY_FIRST and _RISKY.match(text) else text


def unneutralize(text: str) -> str:
    """Undo :func:`neutralize`."""
    return text[1:] if text[:1] == "'" and _RISKY.match(text) else text
