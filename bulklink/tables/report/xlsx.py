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

import io
import math
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

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
_EXCEL_ESCAPE = re.compile("(_x[0-9a-fA-F]{4}_)")
_EXACT = 2**53  # beyond it, a double (what Excel holds) loses an integer's digits
#: Excel's error values for what JSON's NaN and infinities mean, as XlsxWriter writes them.
_NON_FINITE = {"nan": ("#NUM!", "#NUM!"), "inf": ("1/0", "#DIV/0!"), "-inf": ("-1/0", "#DIV/0!")}
_ROWS_PART = "xl/worksheets/sheet1.xml"  # the first sheet's part: the rows sheet
_DIMENSION = re.compile(r'<dimension ref="[A-Z]+[0-9]+(:[A-Z]+[0-9]+)?"/>')
_LEVEL = 1  # half zlib's default time (XlsxWriter's) for a file a fifth larger
_ZIP64_FROM = (1 << 31) - (1 << 20)  # zipfile needs to know up front, a little under 2 GiB
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
    ``true``/``false``. The data rows go to a temporary file first (their widths and
    tallies shape the rest), XlsxWriter then writes the workbook around them, and the
    two are put together in ``target``'s zip.
    """
    import xlsxwriter
    from xlsxwriter.utility import xl_col_to_name

    options = {
        "constant_memory": True,
        "strings_to_formulas": False,
        "strings_to_urls": False,
        "strings_to_numbers": False,
    }
    with tempfile.TemporaryFile() as body:
        text = io.TextIOWrapper(body, encoding="utf-8", errors="backslashreplace")
        tally = _write_rows(text, columns, rows)
        text.detach()
        frame = io.BytesIO()
        book = xlsxwriter.Workbook(frame, options)
        bold = book.add_format({"bold": True})
        sheet = book.add_worksheet(ROWS_SHEET)
        summary = book.add_worksheet(SUMMARY_SHEET)
        plain = (book.add_format(), book.add_format())
        _write_rows_sheet(sheet, bold, plain, columns, tally)
        _write_summary_sheet(book, summary, bold, tally, run or RunInfo())
        book.close()
        _put_together(frame, body, target, f"{xl_col_to_name(len(columns) - 1)}{tally.rows + 1}")


def _put_together(frame: io.BytesIO, body: IO[bytes], target: Path | BinaryIO, last: str) -> None:
    """Copy XlsxWriter's workbook to ``target``, the data rows put into its rows sheet
    after the header row, and the sheet's dimension stretched over them (readers size
    the sheet from it)."""
    size = body.tell()
    body.seek(0)
    with (
        zipfile.ZipFile(frame) as src,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=_LEVEL) as dst,
    ):
        for info in src.infolist():
            if info.filename != _ROWS_PART:
                dst.writestr(info, src.read(info))
                continue
            head, tail = src.read(info).decode("utf-8").split("</row></sheetData>")
            head, found = _DIMENSION.subn(f'<dimension ref="A1:{last}"/>', head, count=1)
            if not found:
                raise RuntimeError(f"XlsxWriter wrote {_ROWS_PART} without a dimension")
            with dst.open(_ROWS_PART, "w", force_zip64=size > _ZIP64_FROM) as part:
                part.write(head.encode("utf-8") + b"</row>")
                shutil.copyfileobj(body, part, 1 << 20)
                part.write(b"</sheetData>" + tail.encode("utf-8"))


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
    if isinstance(value, str):  # first: nearly every cell is text
        return max(map(len, value.split("\n"))) if "\n" in value else len(value)
    if value is None:
        return 0
    if value is True or value is False:
        return 5
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


def _string_xml(ref: str, text: str) -> str:
    """A text cell, spelt as XlsxWriter spells it: an inline string, markup escaped, a
    carriage return as Excel's ``_x000D_`` (and a literal ``_x000D_`` escaped in turn, so
    it reads back as typed), whitespace at either end kept."""
    # A control or non-character is never printable: the plain tests spare nearly
    # every cell the escaping (a regular expression costs five times as much).
    if not text.isprintable() or "_x" in text or len(text) > MAX_CELL:
        text = _EXCEL_ESCAPE.sub(r"_x005F\1", _cell_text(text))
        text = text.replace("\r", "_x000D_").replace("\ufffe", "_xFFFE_")
        text = text.replace("\uffff", "_xFFFF_")
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{text}</t></is></c>'


def _cell_xml(ref: str, cell: Any) -> str:
    """One cell of the rows sheet by its type: text is always an inline string, never a
    formula. A number too big for a double's exact digits is text, as in the CSV report:
    Excel would show it rounded (and XlsxWriter refused one beyond a double's range)."""
    if isinstance(cell, str):  # first: nearly every cell is text
        return _string_xml(ref, cell)
    if cell is True or cell is False:
        return f'<c r="{ref}" t="b"><v>{int(cell)}</v></c>'
    if isinstance(cell, float) and not math.isfinite(cell):
        formula, error = _NON_FINITE[str(cell)]
        return f'<c r="{ref}" t="e"><f>{formula}</f><v>{error}</v></c>'
    if isinstance(cell, float) or abs(cell) <= _EXACT:
        return f'<c r="{ref}"><v>{cell:.16G}</v></c>'
    return _string_xml(ref, str(cell))


def _write(sheet: _Sheet, row: int, col: int, cell: Any, style: Any = None) -> None:
    """One cell of the Summary by its type; text is always a text cell, never a formula."""
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


def _write_rows(out: IO[str], columns: Sequence[str], rows: Rows) -> _Tally:
    """The data rows' ``<row>`` elements, as XlsxWriter's constant-memory mode writes them.

    Written here rather than cell by cell through XlsxWriter, whose per-cell machinery
    (dimension checks, a format lookup, three escaping passes) costs about ten times
    this loop (benchmarks/NOTES.md); the header row, the widths, the filter and the
    Summary stay XlsxWriter's.
    """
    from xlsxwriter.utility import xl_col_to_name

    kinds = _kinds(columns)
    letters = [xl_col_to_name(col) for col in range(len(columns))]
    longest = [len(name) + _FILTER_BUTTON for name in columns]
    counting = _Counting(columns)
    n = 0
    for n, row in enumerate(rows(), 1):
        line = []
        at = str(n + 1)  # the row's number in the sheet, below the header
        for col, value in enumerate(row):
            if value is None or value == "":
                continue  # most ticket cells of a row not linked now: nothing to write
            kind = kinds[col]
            cell = value if kind == "any" and isinstance(value, str) else _typed(value, kind)
            line.append(_cell_xml(letters[col] + at, cell))
            if (width := _shown_width(cell)) > longest[col]:
                longest[col] = width
        if line:
            out.write(f'<row r="{at}">{"".join(line)}</row>')
        counting.add(row, n)
    widths = [min(max(w + 1, MIN_WIDTH), MAX_WIDTH) for w in longest]
    return _Tally(widths, counting.counts, counting.errors.groups(), n)


def _write_rows_sheet(
    sheet: _Sheet, bold: Any, plain: tuple[Any, Any], columns: Sequence[str], tally: _Tally
) -> None:
    """Everything of the rows sheet but its data rows: header, widths, pane, filter."""
    for col, name in enumerate(columns):
        sheet.write_string(0, col, _cell_text(name), bold)
    for col, width in enumerate(tally.widths):
        # XlsxWriter writes neighbours alike as one <col> range, and openpyxl (how scripts
        # read reports) then gives the width to the first column only: two empty
        # formats, taken in turn, keep each column its own.
        _set_width(sheet, col, width, plain[col % 2])
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, tally.rows, len(columns) - 1)


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
