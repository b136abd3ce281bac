"""The xlsx report as a person opens it in Excel: a typed, filterable rows sheet and a Summary.

The rows sheet (first, named ``report``, the one ``retry`` and ``report`` read back) has
its header frozen, an autofilter over the table and column widths fitted to the content;
``success`` is a real boolean and ``row``, ``attempts`` and ``http_status`` are numbers,
while IDs and all other text are text cells, never formulas. The ``Summary`` sheet holds
the rows per outcome with a bar chart of them, the run (start, end, duration, input,
exit code) and the failures grouped by error, most common first. Counts and groups are
taken from the rows themselves, the same way the end-of-run summary is made, so the two
sheets always agree. It is written with XlsxWriter in constant-memory mode, in one pass
over the rows (widths, the filter and the tallies are set once the rows are out), so
memory does not grow with the report.

Excel's own limits are refused before a run sends anything (:func:`refuse_beyond_limits`):
more rows than a sheet holds, or an input cell longer than a cell holds. Text from the
API is only known while writing: a ticket field longer than a cell holds is cut, and
the cell says so and where to get the whole text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bulklink.errors import InputError
from bulklink.models import ErrorGroup, ErrorTally, Outcome
from bulklink.tables.report.schema import RunInfo, text_cell

ROWS_SHEET = "report"
SUMMARY_SHEET = "Summary"
BOOL_COLUMNS = frozenset({"success"})
NUMBER_COLUMNS = frozenset({"row", "attempts", "http_status"})
MIN_WIDTH, MAX_WIDTH = 8, 60
MAX_ROWS = 1_048_575  # a sheet's 1,048,576 rows, less the header
MAX_CELL = 32_767  # characters a cell holds
_FILTER_BUTTON = 2  # the header's dropdown arrow covers about two characters
#: XML cannot hold C0 controls other than tab, line feed and carriage return.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
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
_Sheet = Any  # XlsxWriter ships no type information


def refuse_beyond_limits(report: Path, rows: int, longest: tuple[int, int, str]) -> None:
    """Refuse an .xlsx report Excel could not show whole: too many rows, a cell too long.

    ``longest`` is the longest input cell (length, row, column) the scan found.
    """
    if report.suffix.lower() != ".xlsx":
        return
    use = "write the report as .csv or .jsonl with -o"
    if rows > MAX_ROWS:
        raise InputError(
            f"the .xlsx report would have {rows:,} rows, more than Excel's {MAX_ROWS:,} "
            f"a sheet; {use}"
        )
    length, row, column = longest
    if length > MAX_CELL:
        raise InputError(
            f"row {row}: {column} holds {length:,} characters, more than an Excel cell's "
            f"{MAX_CELL:,}; {use}"
        )


@dataclass(slots=True)
class _Tally:
    """Found while writing the rows: column widths, rows per outcome, failures by error."""

    widths: list[int]
    counts: Counter[str]
    errors: list[ErrorGroup]
    rows: int


def write_workbook(
    target: Path | BinaryIO, columns: Sequence[str], rows: Rows, run: RunInfo | None
) -> None:
    """Write the report workbook to ``target`` (a path or an open binary file).

    ``rows()`` is called once. Cells are ``None``, ``bool``, ``int``, ``float``, ``str``
    or JSON lists and objects (written as JSON text); ``success`` may be the text
    ``true``/``false``.
    """
    import xlsxwriter

    options = {
        "constant_memory": True,
        "strings_to_formulas": False,
        "strings_to_urls": False,
        "strings_to_numbers": False,
        "nan_inf_to_errors": True,
    }
    book = xlsxwriter.Workbook(target, options)
    bold = book.add_format({"bold": True})
    sheet = book.add_worksheet(ROWS_SHEET)
    summary = book.add_worksheet(SUMMARY_SHEET)
    plain = (book.add_format(), book.add_format())
    tally = _write_rows_sheet(sheet, bold, plain, columns, rows)
    _write_summary_sheet(book, summary, bold, tally, run or RunInfo())
    book.close()


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


def _cell_text(text: str) -> str:
    """Text as a cell can hold it: a C0 control as its Unicode control picture (NUL as
    U+2400, ESC as U+241B: an ID refused for one is still reported), and text beyond a
    cell's limit cut, saying so (only the API's text can be that long: the input's is
    refused before the run)."""
    if _ILLEGAL.search(text):
        text = _ILLEGAL.sub(lambda m: chr(0x2400 + ord(m.group())), text)
    if len(text) > MAX_CELL:
        note = f" [cut: {len(text):,} characters; a .csv or .jsonl report holds them all]"
        text = text[: MAX_CELL - len(note)] + note
    return text


def _write(sheet: _Sheet, row: int, col: int, cell: Any, style: Any = None) -> None:
    """One cell by its type; text is always a text cell, never a formula or an error."""
    if cell is None or cell == "":
        return
    if cell is True or cell is False:
        sheet.write_boolean(row, col, cell)
    elif isinstance(cell, int | float):
        sheet.write_number(row, col, cell)
    else:
        sheet.write_string(row, col, _cell_text(cell), style)


def _set_width(sheet: _Sheet, col: int, width: int, style: Any = None) -> None:
    """Make column ``col`` ``width`` characters wide in the file: XlsxWriter adds Excel's
    5 pixels of padding (a character is 7) to the width it is given."""
    sheet.set_column(col, col, width - 5 / 7, style)


class _Counting:
    """The tallies of the rows as they are written: outcomes and failures by error."""

    def __init__(self, columns: Sequence[str]) -> None:
        at = {name: i for i, name in enumerate(columns)}
        self.outcome_at, self.success_at = at.get("outcome"), at.get("success")
        self.error_at, self.row_at = at.get("error"), at.get("row")
        self.source_at, self.linked_at = at.get("sourceTicketId"), at.get("linkedTicketId")
        self.counts: Counter[str] = Counter()
        self.errors = ErrorTally()

    def add(self, row: Sequence[Any], n: int) -> None:
        if self.outcome_at is None or self.success_at is None:
            return
        outcome = str(row[self.outcome_at]).strip()
        self.counts[outcome] += 1
        if str(row[self.success_at]).strip().lower() != "true" and outcome != Outcome.DUPLICATE:
            self.errors.add(
                _typed(row[self.row_at], "number") if self.row_at is not None else n,
                self._text(row, self.error_at),
                self._text(row, self.source_at),
                self._text(row, self.linked_at),
            )

    @staticmethod
    def _text(row: Sequence[Any], at: int | None) -> str:
        return str(row[at] or "") if at is not None else ""


def _write_rows_sheet(
    sheet: _Sheet, bold: Any, plain: tuple[Any, Any], columns: Sequence[str], rows: Rows
) -> _Tally:
    kinds = _kinds(columns)
    longest = [len(name) + _FILTER_BUTTON for name in columns]
    counting = _Counting(columns)
    for col, name in enumerate(columns):
        sheet.write_string(0, col, _cell_text(name), bold)
    n = 0
    for n, row in enumerate(rows(), 1):
        for col, (value, kind) in enumerate(zip(row, kinds, strict=True)):
            if value is None or value == "":
                continue  # most ticket cells of a row not linked now: nothing to write
            cell = _typed(value, kind)
            _write(sheet, n, col, cell)
            if (width := _shown_width(cell)) > longest[col]:
                longest[col] = width
        counting.add(row, n)
    widths = [min(max(w + 1, MIN_WIDTH), MAX_WIDTH) for w in longest]
    for col, width in enumerate(widths):
        # XlsxWriter writes neighbours alike as one <col> range, and openpyxl (how scripts
        # read reports) then gives the width to the first column only: two empty
        # formats, taken in turn, keep each column its own.
        _set_width(sheet, col, width, plain[col % 2])
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, n, len(columns) - 1)
    return _Tally(widths, counting.counts, counting.errors.groups(), n)


# -- the Summary sheet ----------------------------------------------------------------


def _write_summary_sheet(book: Any, sheet: _Sheet, bold: Any, tally: _Tally, run: RunInfo) -> None:
    outcomes = [o.value for o in Outcome]
    errors = tally.errors
    width_a = max([24, *(len(g.error) for g in errors)])
    for col, width in enumerate((min(width_a + 1, MAX_WIDTH), 12, 24)):
        _set_width(sheet, col, width)
    lines: list[list[Any]] = [["Outcome", "Rows"]]
    lines += [[outcome, tally.counts.get(outcome, 0)] for outcome in outcomes]
    lines += [["total", tally.rows], [], ["Run"]]
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
    lines += [[label, value] for label, value in facts]
    lines += [[], ["Failures by error", "Rows", "Example rows"]]
    if not errors:
        lines.append(["(none)"])
    for group in errors:
        lines.append([group.error, group.count, ", ".join(str(r) for r in group.example_rows)])
    # The headings and the total's label are bold.
    bold_rows = {0, len(outcomes) + 1, len(outcomes) + 3, len(outcomes) + 5 + len(facts)}
    for at, line in enumerate(lines):
        for col, value in enumerate(line):
            _write(sheet, at, col, value, bold if at in bold_rows else None)

    last = 1 + len(outcomes)
    chart = book.add_chart({"type": "column"})
    chart.add_series(
        {
            "name": f"='{SUMMARY_SHEET}'!$B$1",
            "categories": f"='{SUMMARY_SHEET}'!$A$2:$A${last}",
            "values": f"='{SUMMARY_SHEET}'!$B$2:$B${last}",
            "points": [{"fill": {"color": "#" + _COLOURS[Outcome(o)]}} for o in outcomes],
        }
    )
    chart.set_title({"name": "Rows per outcome"})
    chart.set_y_axis({"name": "rows"})
    chart.set_legend({"none": True})
    sheet.insert_chart("E2", chart)
