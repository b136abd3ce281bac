"""Reading back a report written by ``run``: what ``retry`` resends and ``report`` counts."""

from __future__ import annotations

from pathlib import Path

from bulklink.errors import InputError
from bulklink.models import RESULT_COLUMNS, TICKET_COLUMNS, ErrorTally, Outcome, Summary
from bulklink.options import ReadOptions
from bulklink.run.assembly import Layout
from bulklink.tables.inputs import Chunk, Table
from bulklink.tables.report.writers import RowReader

_OUTCOMES = frozenset(o.value for o in Outcome)
REQUIRED = ("row", "sourceTicketId", "linkedTicketId", "success", "outcome", "attempts")


def open_report(path: Path) -> tuple[Table, Layout]:
    """A report written by ``run`` as a table, with its result columns told apart."""
    table = Table(
        path, ReadOptions(source_col="sourceTicketId", linked_col="linkedTicketId"), report=True
    )
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{path} is not a bulklink report: no column {', '.join(missing)}")
    ours = set(RESULT_COLUMNS) | set(TICKET_COLUMNS)
    extra = [
        c.removeprefix("ticket.")
        for c in table.columns
        if c.startswith("ticket.") and c not in ours
    ]
    passthrough = [c for c in table.other_cols if c not in ours and not c.startswith("ticket.")]
    layout = Layout(passthrough, extra, retry=True, escaped=table.kind == "csv")
    return table, layout


def kept_rows(chunk: Chunk) -> list[bool]:
    """Rows ``retry`` leaves alone: linked, invalid, and duplicates of a linked row."""
    reader = RowReader(chunk.columns, escaped=False)
    keep = []
    for at in range(len(chunk)):
        outcome = reader.outcome(at)
        if outcome not in _OUTCOMES:
            raise InputError(f"unknown outcome {outcome!r} in the report")
        keep.append(
            outcome in ("linked", "invalid") or (outcome == "duplicate" and reader.success(at))
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
