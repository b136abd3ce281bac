"""The xlsx report as a person opens it in Excel: a typed, filterable rows sheet and a Summary.

The rows sheet (first, named ``report``, the one ``retry`` and ``report`` read back) has
its header frozen, an autofilter over the table and column widths fitted to the content;
``success`` is a real boolean and ``row``, ``attempts`` and ``http_status`` are numbers,
while IDs and all other text are text cells, never formulas. The ``Summary`` sheet holds
the rows per outcome with a bar chart of them, the run (start, end, duration, input,
exit code) and the failures grouped by error, most common first. Counts and groups are
taken from the rows themselves, the same way the end-of-run summary is made, so the two
sheets always agree. Everything is written in openpyxl's write-only mode from two passes
over the rows (widths and tallies first), so memory does not grow with the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bulklink.models import ErrorGroup, ErrorTally, Outcome
from bulklink.tables.report.schema import RunInfo, text_cell

ROWS_SHEET = "report"
SUMMARY_SHEET = "Summary"
BOOL_COLUMNS = frozenset({"success"})
NUMBER_COLUMNS = frozenset({"row", "attempts", "http_status"})
MIN_WIDTH, MAX_WIDTH = 8, 60
_FILTER_BUTTON = 2  # the header's dropdown arrow covers about two characters
#: Bar colours per outcome, so the night's state shows before a number is read.
_COLOURS = {
    Outcome.LINKED: "4CAF50",
    Outcome.FAILED: "E53935",
    Outcome.INVALID: "FB8C00",
    Outcome.DUPLICATE: "9E9E9E",
    Outcome.SKIPPED: "1E88E5",
    Outcome.ALREADY_LINKED: "81C784",
}

Rows = Callable[[], Iterable[Sequence[Any]]]
#: A write-only worksheet; openpyxl's stubs lack the layout attributes it does have
#: (column_dimensions, auto_filter, add_chart), so it is typed loosely.
_Sheet = Any


@dataclass(slots=True)
class _Tally:
    """The first pass's findings: column widths, rows per outcome, failures by error."""

    widths: list[int]
    counts: Counter[str]
    errors: list[ErrorGroup]
    rows: int


def write_workbook(
    target: Path | BinaryIO, columns: Sequence[str], rows: Rows, run: RunInfo | None
) -> None:
    """Write the report workbook to ``target`` (a path or an open binary file).

    ``rows()`` is called twice (widths, then cells).

    Cells are ``None``, ``bool``, ``int``, ``float``, ``str`` or JSON lists and objects
    (written as JSON text); ``success`` may be the text ``true``/``false``.
    """
    from openpyxl import Workbook

    tally = _first_pass(columns, rows)
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(ROWS_SHEET)
    summary = workbook.create_sheet(SUMMARY_SHEET)
    _write_rows_sheet(sheet, columns, rows, tally)
    _write_summary_sheet(summary, tally, run or RunInfo())
    workbook.save(target)


# -- the rows sheet -------------------------------------------------------------------


def _kinds(columns: Sequence[str]) -> list[str]:
    return [
        "bool" if name in BOOL_COLUMNS else "number" if name in NUMBER_COLUMNS else "any"
        for name in columns
    ]


def _typed(value: Any, kind: str) -> Any:
    """The value a cell holds: the text ``true`` a boolean, a row number an int."""
    if value is None or value == "":
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return True if text == "true" else False if text == "false" else str(value)
    if kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        return int(text) if text.isdigit() else str(value)
    if isinstance(value, bool | int | float | str):
        return value
    return text_cell(value)  # lists and objects as JSON text, as in the CSV report


def _shown_width(value: Any) -> int:
    """Characters a cell takes on screen: its longest line; booleans as TRUE/FALSE."""
    if value is None:
        return 0
    if value is True or value is False:
        return 5
    if isinstance(value, str):
        return max(map(len, value.split("\n"))) if "\n" in value else len(value)
    return len(str(value))


def _first_pass(columns: Sequence[str], rows: Rows) -> _Tally:
    kinds = _kinds(columns)
    longest = [len(name) + _FILTER_BUTTON for name in columns]
    at = {name: i for i, name in enumerate(columns)}
    outcome_at, success_at = at.get("outcome"), at.get("success")
    error_at, row_at = at.get("error"), at.get("row")
    source_at, linked_at = at.get("sourceTicketId"), at.get("linkedTicketId")
    counts: Counter[str] = Counter()
    errors = ErrorTally()
    n = 0
    for row in rows():
        n += 1
        for i, value in enumerate(row):
            if value is None:
                continue
            width = _shown_width(_typed(value, kinds[i]))
            if width > longest[i]:
                longest[i] = width
        if outcome_at is None or success_at is None:
            continue
        outcome = str(row[outcome_at]).strip()
        counts[outcome] += 1
        if str(row[success_at]).strip().lower() != "true" and outcome != Outcome.DUPLICATE:
            errors.add(
                _typed(row[row_at], "number") if row_at is not None else n,
                str(row[error_at] or "") if error_at is not None else "",
                str(row[source_at] or "") if source_at is not None else "",
                str(row[linked_at] or "") if linked_at is not None else "",
            )
    widths = [min(max(w + 1, MIN_WIDTH), MAX_WIDTH) for w in longest]
    return _Tally(widths, counts, errors.groups(), n)


def _text_cell(sheet: _Sheet, text: str, bold: bool = False) -> Any:
    """Text as a text cell, whatever it looks like (a formula, an error code)."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    if ILLEGAL_CHARACTERS_RE.search(text):
        # XML cannot hold C0 controls (an ID refused for one is still reported): each is
        # shown as its Unicode control picture, NUL as U+2400, ESC as U+241B.
        text = ILLEGAL_CHARACTERS_RE.sub(lambda m: chr(0x2400 + ord(m.group())), text)
    cell = WriteOnlyCell(sheet, value=text)
    cell.data_type = "s"
    if bold:
        cell.font = Font(bold=True)
    return cell


def _write_rows_sheet(sheet: _Sheet, columns: Sequence[str], rows: Rows, tally: _Tally) -> None:
    from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE
    from openpyxl.utils import get_column_letter

    # Layout first: write-only mode writes it out before the first row.
    for i, width in enumerate(tally.widths, 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{tally.rows + 1}"
    sheet.append([_text_cell(sheet, name, bold=True) for name in columns])
    kinds = _kinds(columns)
    for row in rows():
        cells = []
        for value, kind in zip(row, kinds, strict=True):
            cell = _typed(value, kind)
            # Plain text goes as it is (openpyxl makes it a text cell); only text that
            # openpyxl would turn into a formula or an error, or cannot store, is wrapped.
            if isinstance(cell, str) and (
                cell.startswith("=") or cell in ERROR_CODES or ILLEGAL_CHARACTERS_RE.search(cell)
            ):
                cell = _text_cell(sheet, cell)
            cells.append(cell)
        sheet.append(cells)


# -- the Summary sheet ----------------------------------------------------------------


def _write_summary_sheet(sheet: _Sheet, tally: _Tally, run: RunInfo) -> None:
    from openpyxl.chart import BarChart, Reference
    from openpyxl.chart.marker import DataPoint

    outcomes = [o.value for o in Outcome]
    errors = tally.errors
    width_a = max([24, *(len(g.error) for g in errors)])
    sheet.column_dimensions["A"].width = min(width_a + 1, MAX_WIDTH)
    sheet.column_dimensions["B"].width = 12
    sheet.column_dimensions["C"].width = 24

    def heading(*names: str) -> list[Any]:
        return [_text_cell(sheet, name, bold=True) for name in names]

    sheet.append(heading("Outcome", "Rows"))
    for outcome in outcomes:
        sheet.append([outcome, tally.counts.get(outcome, 0)])
    sheet.append([_text_cell(sheet, "total", bold=True), tally.rows])
    sheet.append([])

    sheet.append(heading("Run"))
    facts: list[tuple[str, Any]] = [
        ("Started", run.started),
        ("Finished", run.finished),
        ("Duration (seconds)", run.duration),
        ("Input", run.input),
        ("Report", run.report),
        ("Exit code", run.exit_code),
    ]
    if run.stopped:
        facts.append(("Stopped", run.stopped))
    for label, value in facts:
        sheet.append([label, _text_cell(sheet, value) if isinstance(value, str) else value])
    sheet.append([])

    sheet.append(heading("Failures by error", "Rows", "Example rows"))
    if not errors:
        sheet.append(["(none)"])
    for group in errors:
        examples = ", ".join(str(r) for r in group.example_rows)
        sheet.append([_text_cell(sheet, group.error), group.count, _text_cell(sheet, examples)])

    chart = BarChart()
    chart.type = "col"
    chart.title = "Rows per outcome"
    chart.y_axis.title = "rows"
    chart.legend = None
    last = 1 + len(outcomes)
    chart.add_data(Reference(sheet, min_col=2, min_row=1, max_row=last), titles_from_data=True)
    chart.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=last))
    series = chart.series[0]
    for index, outcome in enumerate(outcomes):
        point = DataPoint(idx=index)
        point.graphicalProperties.solidFill = _COLOURS[Outcome(outcome)]
        series.dPt.append(point)
    sheet.add_chart(chart, "E2")
