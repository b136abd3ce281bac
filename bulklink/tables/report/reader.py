"""Reading back a report written by ``run``: the one reader that ``retry`` and ``report`` use.

A report is read as ``run`` reads an input (:class:`~bulklink.tables.inputs.Table`, the
same ID rules), and its columns are told apart by the schema's rule: bulklink's own,
the ticket's, and the ones carried from the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bulklink.errors import InputError
from bulklink.models import ErrorTally, Outcome, Summary
from bulklink.options import ReadOptions
from bulklink.tables.ids import cell_code, invalid_text
from bulklink.tables.inputs import Chunk, Snapshot, Table
from bulklink.tables.report.schema import (
    TICKET_COLUMNS,
    Layout,
    ReportRow,
    is_ours,
    unneutralize,
)

_OUTCOMES = frozenset(o.value for o in Outcome)
#: The columns ``retry`` cannot do without; the others of ours (``http_status``,
#: ``error``, ``attempts``, ``linked_at``, ``ticket.*``), when someone deleted them, are
#: rebuilt: empty on the rows kept, filled on the rows sent again.
REQUIRED = ("row", "sourceTicketId", "linkedTicketId", "success", "outcome")


def open_report(source: Path | Snapshot) -> tuple[Table, Layout]:
    """A report written by ``run`` as a table, with its result columns told apart."""
    table = Table(
        source, ReadOptions(source_col="sourceTicketId", linked_col="linkedTicketId"), report=True
    )
    path = table.name
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{path} is not a bulklink report: no column {', '.join(missing)}")
    if table.has_odd_cells:
        _refuse_odd_cells(path, table)
    extra = [
        c.removeprefix("ticket.")
        for c in table.columns
        if c.startswith("ticket.") and c not in TICKET_COLUMNS
    ]
    layout = Layout(carried_columns(table), extra, retry=True, escaped=table.kind == "csv")
    return table, layout


def carried_columns(table: Table) -> list[str]:
    """The report's columns that are the input's, not ours; once the table was read
    through, without the empty unnamed ones it dropped."""
    return [c for c in table.other_cols if not is_ours(c)]


def _refuse_odd_cells(path: str, table: Table) -> None:
    """An ID cell that became a number Excel cut short, a date or another kind no ID is
    (someone saved the report from Excel) is refused with the words ``run`` gives such a
    row: every row of the report is rewritten by ``retry``, and no ID is made up for it."""
    for chunk in table.chunks():
        kinds = table.cell_kinds(chunk.start, chunk.end)
        for at in range(len(chunk)):
            for side, column in enumerate(kinds):  # the source speaks first
                if column is not None and column[at]:
                    code = cell_code(int(column[at]), side)
                    reason = invalid_text(code, chunk.source[at], chunk.linked[at])
                    raise InputError(f"{path}: row {chunk.start + at + 1}: {reason}")


def kept_rows(chunk: Chunk) -> list[bool]:
    """Rows ``retry`` leaves alone: linked (by this run or, ``already-linked``, an earlier
    one: so without the store too), invalid, and duplicates of a linked row."""
    reader = RowReader(chunk.columns, escaped=False)
    keep = []
    for at in range(len(chunk)):
        outcome = reader.outcome(at)
        if outcome not in _OUTCOMES:
            raise InputError(f"unknown outcome {outcome!r} in the report")
        keep.append(
            outcome in ("linked", "already-linked", "invalid")
            or (outcome == "duplicate" and reader.success(at))
        )
    return keep


def read_report(report: str | Path) -> Summary:
    """Counts, failures by error and rows to retry, from a report in any format; no network."""
    path = Path(report)
    table, layout = open_report(path)
    summary = Summary(report=str(path))
    tally = ErrorTally()
    unsuccessful = 0
    for chunk in table.chunks():
        reader = RowReader(chunk.columns, layout.escaped)
        for at in range(len(chunk)):
            outcome = reader.outcome(at)
            if outcome not in summary.counts:
                raise InputError(
                    f"{path}: unknown outcome {outcome!r} in row {at + chunk.start + 1}"
                )
            summary.counts[outcome] += 1
            if not reader.success(at):
                unsuccessful += 1
                if outcome != "duplicate":
                    tally.add(
                        reader.row_number(at), reader.error(at), chunk.source[at], chunk.linked[at]
                    )
        summary.rows += len(chunk)
    summary.errors = tally.groups()
    summary.retryable_rows = summary.counts["failed"] + summary.counts["skipped"]
    summary.exit_code = 1 if unsuccessful else 0
    return summary


class RowReader:
    """A report's cells back as the typed row written.

    A CSV holds everything as text, with formula escapes on the API's text; xlsx and
    jsonl hold numbers, booleans and text as they came, so a leading quote there is data.
    ``retry`` writes kept rows from this, and ``report`` counts with it.
    """

    def __init__(self, columns: dict[str, list[Any]], escaped: bool) -> None:
        self.cols = columns
        self.escaped = escaped

    def outcome(self, at: int) -> str:
        return str(self.cols["outcome"][at]).strip()

    def success(self, at: int) -> bool:
        return str(self.cols["success"][at]).strip().lower() == "true"

    def error(self, at: int) -> str:
        """The error cell as written (``""`` stays ``""``)."""
        value = self.cols["error"][at] if "error" in self.cols else None
        if value is None:
            return ""
        return unneutralize(str(value)) if self.escaped else str(value)

    def row_number(self, at: int) -> int | str:
        value = self.cols["row"][at]
        return int(value) if str(value).isdigit() else value

    def head(self, at: int, source: str, linked: str) -> ReportRow:
        return ReportRow(
            self.row_number(at),
            source,
            linked,
            self.success(at),
            Outcome(self.outcome(at)),
            _number(self.text("http_status", at)),
            self.error(at),
            _number(self.text("attempts", at)),
            self.text("linked_at", at),
        )

    def text(self, name: str, at: int) -> str:
        """A text cell of ours, or "" when the report predates its column."""
        column = self.cols.get(name)
        value = column[at] if column is not None else None
        return "" if value is None else str(value)

    def cell(self, name: str, at: int) -> Any:
        """An API cell: empty (or its column deleted) is nothing; a CSV's formula escape
        undone."""
        column = self.cols.get(name)
        value = column[at] if column is not None else None
        if isinstance(value, str):
            if not value:
                return None
            return unneutralize(value) if self.escaped else value
        return value


def _number(value: Any) -> Any:
    """A number cell read back (``3``, ``"3"``, ``3.0``); empty is None; else as it was."""
    text = str(value).strip() if value is not None else ""
    if text.endswith(".0"):
        text = text[:-2]
    return int(text) if text.isdigit() else (None if text in ("", "None", "nan") else value)
