"""Spreadsheets as people make them: cell formats and kinds, odd shapes, sheets, Excel's limits.

Every workbook is written with openpyxl (as Excel would save it) and run against the
sandbox over loopback; the tests check what the server received and what the report says.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Font

from bulklink.models import TICKET_FIELDS
from bulklink.sandbox import Reply, Sandbox
from bulklink.tables.report import xlsx
from bulklink.tables.report.schema import RunInfo
from bulklink.tables.report.xlsx import write_workbook
from tests.helpers import (
    HEAD,
    ROOT,
    make_xlsx,
    one_line_error,
    one_line_usage_error,
    pairs_csv,
    read_any,
    report_header,
    report_of,
    run,
    run_against,
    sent_checked,
    write_csv,
)


def formatted_book(path: Path, cells: Sequence[tuple[object, str | None]], column: int) -> Path:
    """One row per cell: the cell in ``column`` (1 source, 2 linked) with its number
    format, the other ID a text ``X<n>``."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([*HEAD, "note"])
    for n, (value, number_format) in enumerate(cells, start=2):
        row: list[object] = [f"X{n}", f"X{n}", f"row {n}"]
        row[column - 1] = value
        sheet.append(row)
        if number_format is not None:
            sheet.cell(row=n, column=column).number_format = number_format
    book.save(path)
    return path


# -- cells that are not what they look like ---------------------------------------------------

FORMATTED = [
    (123, "00000", "00123"),
    (7, '"T-"0000', "T-0007"),
    (42, "[Blue]000000", "000042"),
    (124, "@", "124"),  # typed before the column was made Text: Excel shows the digits
    (123456789012345, "0", "123456789012345"),  # 15 digits: exact, shown whole
    (98765, None, "98765"),  # General
    (42, '"T-"#', "T-42"),  # text around placeholders that pad nothing
    (42, '"T-"General', "T-42"),
    (42, '#"-X"', "42-X"),
    (123456, "000-000", "123-456"),  # digits fill placeholders split by text
    (1234, "#,##0", "1234"),  # grouping is no part of an ID: the digits
    (-126, "00000", "-00126"),  # the sign first, as Excel shows it (was "0-126")
    (-7, '"T-"0000', "-T-0007"),
    (-126, "00000_);(00000)", "(00126)"),  # a negative number's own section, no sign
    (-126, "0000;-0000", "-0126"),
]


@pytest.mark.parametrize("column", [1, 2], ids=["source", "linked"])
def test_number_cells_are_read_as_their_format_shows_them(
    sandbox: Sandbox, tmp_path: Path, column: int
) -> None:
    path = formatted_book(tmp_path / "f.xlsx", [(v, f) for v, f, _ in FORMATTED], column)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    expected = [(shown, f"X{n}") for n, (_, _, shown) in enumerate(FORMATTED, start=2)]
    if column == 2:
        expected = [(f"X{n}", shown) for n, (_, _, shown) in enumerate(FORMATTED, start=2)]
    assert sorted(sent_checked(sandbox)) == sorted(expected)


def uncached_formula_book(path: Path, column: int) -> Path:
    """A formula with no stored value, as a program (never Excel) writes one."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEAD)
    sheet.append(["A1", "B1"])
    sheet.append(["A2", "B2"])
    sheet.cell(row=3, column=column).value = '=A2&"x"'
    book.save(path)
    return path


KINDS = [
    (dt.datetime(2024, 1, 1), "a date (2024-01-01)"),
    (dt.date(2024, 3, 5), "a date (2024-03-05)"),
    (dt.time(18, 0), "a time (18:00:00)"),
    (dt.datetime(2024, 1, 1, 9, 30), "a date and time (2024-01-01 09:30:00)"),
    (True, "a TRUE/FALSE value (TRUE)"),
    (False, "a TRUE/FALSE value (FALSE)"),
]
FIX = "not text; format the column as Text and retype the IDs"


@pytest.mark.parametrize("column", [1, 2], ids=["source", "linked"])
def test_dates_times_and_booleans_are_invalid_naming_the_kind(
    sandbox: Sandbox, tmp_path: Path, column: int
) -> None:
    cells: list[tuple[object, str | None]] = [("OK1", None), *((v, None) for v, _ in KINDS)]
    path = formatted_book(tmp_path / "k.xlsx", cells, column)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    good = ("OK1", "X2") if column == 1 else ("X2", "OK1")
    assert sent_checked(sandbox) == [good], "only the text ID is sent"
    report = report_of(path)
    assert [r["outcome"] for r in report] == ["linked"] + ["invalid"] * len(KINDS)
    name = HEAD[column - 1]
    assert [r["error"] for r in report[1:]] == [f"{name} cell is {k}, {FIX}" for _, k in KINDS]
    assert [r["note"] for r in report] == [f"row {n}" for n in range(2, 3 + len(KINDS))]


@pytest.mark.parametrize("column", [1, 2], ids=["source", "linked"])
def test_a_formula_never_calculated_is_invalid_saying_how_to_fix_it(
    sandbox: Sandbox, tmp_path: Path, column: int
) -> None:
    path = uncached_formula_book(tmp_path / "u.xlsx", column)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]
    error = report_of(path)[1]["error"]
    assert error == (
        f'{HEAD[column - 1]} cell is a formula that was never calculated (=A2&"x"), not text; '
        "open the file in Excel and save it, or paste the IDs as values"
    )


def test_rows_made_only_of_formulas_never_calculated_are_reported_not_dropped(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """calamine gives a formula with no cached value as empty: a row of them is no blank
    row, and is reported invalid like a row with one."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEAD)
    sheet.append(["T1", "L1"])
    for n in (2, 3):
        sheet.append([f'=CONCAT("T","{n}")', f'=CONCAT("L","{n}")'])
    sheet.append(["T4", "L4"])
    path = tmp_path / "f.xlsx"
    book.save(path)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), ("T4", "L4")]
    report = report_of(path)
    assert [r["outcome"] for r in report] == ["linked", "invalid", "invalid", "linked"]
    assert [r["row"] for r in report] == ["1", "2", "3", "4"]
    assert "formula that was never calculated" in report[1]["error"]


def test_retry_reads_a_report_cell_as_run_reads_an_input_cell(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The report, saved by someone in Excel: a kept ID became a zero-padded number and a
    failed row's ID a number too; retry reads both as Excel shows them."""
    src = write_csv(tmp_path / "in.csv", [HEAD, ["00123", "B1"], ["MISSING1", "00042"]])
    out = tmp_path / "r.xlsx"
    assert run(sandbox, src, "-o", out).exit_code == 1
    book = openpyxl.load_workbook(out)
    sheet = book["report"]
    header = [c.value for c in sheet[1]]
    source, linked = header.index("sourceTicketId") + 1, header.index("linkedTicketId") + 1
    sheet.cell(row=2, column=source).value = 123
    sheet.cell(row=2, column=source).number_format = "00000"
    sheet.cell(row=3, column=linked).value = 42
    sheet.cell(row=3, column=linked).number_format = "00000"
    book.save(out)
    sandbox.requests.clear()
    result = run_against(sandbox, "retry", out, "--rate", "0", "--no-progress")
    assert result.exit_code == 1, result.output  # MISSING1 is still not found
    assert sent_checked(sandbox) == [("MISSING1", "00042")]
    _, rows = read_any(out)
    assert [(r["sourceTicketId"], r["linkedTicketId"]) for r in rows] == [
        ("00123", "B1"),
        ("MISSING1", "00042"),
    ]


def test_retry_refuses_a_report_whose_id_became_a_date(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [HEAD, ["A1", "B1"], ["MISSING1", "B2"]])
    out = tmp_path / "r.xlsx"
    assert run(sandbox, src, "-o", out).exit_code == 1
    book = openpyxl.load_workbook(out)
    book["report"]["C3"].value = dt.date(2024, 2, 1)  # linkedTicketId of row 2
    book.save(out)
    sandbox.requests.clear()
    result = run_against(sandbox, "retry", out, "--rate", "0", "--no-progress")
    assert result.exit_code == 2, result.output
    assert f"row 2: linkedTicketId cell is a date (2024-02-01), {FIX}" in one_line_error(result)
    assert sandbox.requests == []


# -- shapes --------------------------------------------------------------------------------


def styled_far_cell_book(path: Path, rows: int) -> Path:
    """``rows`` pairs, and one empty cell at XFD (Excel's last column) that is bold."""
    book = openpyxl.Workbook(write_only=False)
    sheet = book.active
    assert sheet is not None
    sheet.append([*HEAD, "note"])
    for n in range(rows):
        sheet.append([f"A{n}", f"B{n}", "n"])
    sheet["XFD2"].font = Font(bold=True)
    book.save(path)
    return path


def test_a_styled_empty_cell_at_xfd_adds_no_columns(sandbox: Sandbox, tmp_path: Path) -> None:
    path = styled_far_cell_book(tmp_path / "wide.xlsx", 3)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    header = report_header(path)
    assert header[-1] == "note" and len(header) < 50, header
    assert len(sent_checked(sandbox)) == 3


def test_a_5000_row_sheet_with_a_styled_xfd_cell_stays_small(tmp_path: Path) -> None:
    path = styled_far_cell_book(tmp_path / "wide.xlsx", 5000)
    log = tmp_path / "out.txt"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulklink", "run", str(path), "--dry-run", "--no-state"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, log.read_text()
    assert "5000 rows: would send 5000" in log.read_text(), log.read_text()
    assert usage.ru_maxrss < 400 * 1024, f"peak RSS {usage.ru_maxrss / 1024:.0f} MB"  # KiB


# -- sheets --------------------------------------------------------------------------------


def test_a_chart_sheet_first_is_passed_over(sandbox: Sandbox, tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    data = book.active
    assert data is not None
    data.title = "Links"
    for row in (HEAD, ["A1", "B1"], ["A2", "B2"]):
        data.append(row)
    chart_sheet = book.create_chartsheet("Chart", 0)
    chart = BarChart()
    chart.add_data(Reference(data, min_col=1, min_row=1, max_row=3))
    chart_sheet.add_chart(chart)
    path = tmp_path / "chart.xlsx"
    book.save(path)
    assert openpyxl.load_workbook(path).sheetnames[0] == "Chart"
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent_checked(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    result = run(sandbox, path, "--sheet", "Chart", "--dry-run")
    assert result.exit_code == 2
    assert "'Chart'" in one_line_error(result) and "is a chart" in result.stderr


def test_a_hidden_worksheet_behind_a_chart_is_not_read_unless_named(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a chart the only visible sheet, the hidden one (old pairs put away on
    purpose) was read and linked without a word."""
    book = openpyxl.Workbook()
    data = book.active
    assert data is not None
    data.title = "old pairs"
    for row in (HEAD, ["HID1", "HID2"]):
        data.append(row)
    chart_sheet = book.create_chartsheet("Dashboard", 0)
    chart = BarChart()
    chart.add_data(Reference(data, min_col=1, min_row=1, max_row=2))
    chart_sheet.add_chart(chart)
    data.sheet_state = "hidden"
    book.active = 0
    path = tmp_path / "dash.xlsx"
    book.save(path)
    line = one_line_usage_error(run(sandbox, path))
    assert "has no visible worksheet" in line and "'old pairs' (hidden)" in line
    assert sandbox.requests == []
    result = run(sandbox, path, "--sheet", "old pairs")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("HID1", "HID2")]


def test_an_encrypted_workbook_is_called_password_protected(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    msoffcrypto = pytest.importorskip("msoffcrypto")
    from msoffcrypto.format.ooxml import OOXMLFile

    plain = make_xlsx(tmp_path / "plain.xlsx", {"Sheet": [HEAD, ["A1", "B1"]]})
    path = tmp_path / "locked.xlsx"
    with plain.open("rb") as src, path.open("wb") as dst:
        OOXMLFile(src).encrypt("secret", dst)
    assert msoffcrypto.olefile.isOleFile(str(path)), "a real encrypted workbook: an OLE file"
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "password-protected" in line and "zip" not in line
    assert sandbox.requests == []


def test_sheet_matches_case_insensitively_when_only_one_sheet_does(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = make_xlsx(
        tmp_path / "s.xlsx", {"Notes": [["x"]], "Links": [HEAD, ["A1", "B1"]], "links2": [["y"]]}
    )
    result = run(sandbox, path, "--sheet", "LINKS")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]
    # Excel never names two sheets alike but for case; another program may.
    twice = make_xlsx(tmp_path / "t.xlsx", {"Data": [HEAD], "DATA1": [HEAD]})
    rename_sheet(twice, "DATA1", "DATA")
    result = run(sandbox, twice, "--sheet", "data", "--dry-run")
    assert result.exit_code == 2
    assert "'Data', 'DATA'" in one_line_error(result) and "exact case" in result.stderr


def rename_sheet(path: Path, old: str, new: str) -> None:
    """Rename a sheet in the workbook's XML, past the checks of Excel and openpyxl."""
    with zipfile.ZipFile(path) as book:
        parts = {item.filename: book.read(item) for item in book.infolist()}
    parts["xl/workbook.xml"] = parts["xl/workbook.xml"].replace(
        f'name="{old}"'.encode(), f'name="{new}"'.encode()
    )
    with zipfile.ZipFile(path, "w") as book:
        for name, data in parts.items():
            book.writestr(name, data)


def test_a_missing_sheet_lists_a_few_names_and_the_count(sandbox: Sandbox, tmp_path: Path) -> None:
    sheets = {f"Sheet {n:03d}": [HEAD, ["A1", "B1"]] for n in range(100)}
    path = make_xlsx(tmp_path / "many.xlsx", sheets)
    result = run(sandbox, path, "--sheet", "Nope", "--dry-run")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "no sheet 'Nope'" in line
    assert "'Sheet 000', 'Sheet 001', 'Sheet 002', 'Sheet 003', 'Sheet 004' and 95 more" in line
    assert "(100 sheets)" in line and "Sheet 005" not in line and len(line) < 300


# -- Excel's limits ------------------------------------------------------------------------


def test_an_xlsx_report_of_more_rows_than_a_sheet_holds_is_refused_before_sending(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx, "MAX_ROWS", 4)  # the limit, made small: Excel's is 1,048,575
    src = pairs_csv(tmp_path / "in.csv", 5)
    result = run(sandbox, src, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "5 rows, more than Excel's 4 a sheet" in line and ".csv or .jsonl with -o" in line
    assert sandbox.requests == [] and not (tmp_path / "out.xlsx").exists()
    assert run(sandbox, src, "-o", tmp_path / "out.csv").exit_code == 0, "csv has no such limit"


@pytest.mark.slow
def test_1048576_rows_are_refused_for_an_xlsx_report(sandbox: Sandbox, tmp_path: Path) -> None:
    src = pairs_csv(tmp_path / "in.csv", 1_048_576)
    result = run(sandbox, src, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    assert "1,048,576 rows, more than Excel's 1,048,575" in one_line_error(result)
    assert sandbox.requests == []


def test_an_input_cell_longer_than_a_cell_holds_is_refused_for_xlsx(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    long_note = "n" * 32_768
    src = write_csv(
        tmp_path / "in.csv", [[*HEAD, "note"], ["A1", "B1", "ok"], ["A2", "B2", long_note]]
    )
    result = run(sandbox, src, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "row 2: note holds 32,768 characters, more than an Excel cell's 32,767" in line
    assert sandbox.requests == []
    fits = write_csv(tmp_path / "fits.csv", [[*HEAD, "note"], ["A1", "B1", "n" * 32_767]])
    assert run(sandbox, fits, "-o", tmp_path / "fits.xlsx").exit_code == 0


def test_api_text_longer_than_a_cell_is_cut_and_says_so(tmp_path: Path) -> None:
    """Text from the API is known only while writing: cut to the limit, never lost silently."""
    columns = ["row", "outcome", "success", "ticket.title"]
    title = "t" * 40_000
    out = io.BytesIO()
    write_workbook(out, columns, lambda: [[1, "linked", True, title]], RunInfo())
    cell = openpyxl.load_workbook(io.BytesIO(out.getvalue()))["report"]["D2"].value
    assert isinstance(cell, str) and len(cell) == 32_767
    assert cell.startswith("t" * 30_000)
    assert cell.endswith("[cut: 40,000 characters; a .csv or .jsonl report holds them all]")


def test_an_old_xls_named_xlsx_is_told_to_be_saved_as_xlsx(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "old.xlsx"
    path.write_bytes(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + "Workbook".encode("utf-16-le")
    )
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "old Office file (.xls?)" in line and "password" not in line
    assert sandbox.requests == []


# Answers an xlsx report must hold as sent: text shaped like the sheet's own XML (a rich
# string, Excel's _xHHHH_ escapes), integers a double cannot hold, one beyond a double's
# range (XlsxWriter refused it, failing the whole report).
HOSTILE_TICKETS: dict[str, dict[str, Any]] = {
    "S1": {"title": "<r><t>rich</t></r>", "description": "</t></is></c><c>&amp;"},
    "S2": {"ticketId": 2**53 + 1, "storyPoints": -(10**20)},
    "S3": {"ticketId": int("9" * 400), "title": " spaced "},
}


def test_ticket_values_shaped_like_the_sheet_or_too_big_for_a_double_read_back_exactly(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    script = {}
    for source, values in HOSTILE_TICKETS.items():
        ticket: dict[str, Any] = {name: None for name in TICKET_FIELDS}
        ticket.update(id=source, **values)
        script[source] = [Reply(200, body={"status": True, "message": "ok", "data": ticket})]
    server = start_sandbox(script=script)
    inp = write_csv(tmp_path / "in.csv", [HEAD, *([s, f"L{s}"] for s in HOSTILE_TICKETS)])
    out = tmp_path / "out.xlsx"
    result = run(server, inp, "-o", out)
    assert result.exit_code == 0, result.stderr
    _, rows = read_any(out)
    got = {row["sourceTicketId"]: row for row in rows}
    for source, values in HOSTILE_TICKETS.items():
        for name, value in values.items():
            expected = value if isinstance(value, str) else str(value)  # exact digits, as text
            assert got[source][f"ticket.{name}"] == expected, (source, name)


def test_nan_and_infinities_from_the_api_are_excel_error_values(tmp_path: Path) -> None:
    """JSON's NaN and Infinity (Python's json reads them) have no number in Excel."""
    columns = ["row", "outcome", "success", "ticket.a", "ticket.b", "ticket.c"]
    out = io.BytesIO()
    values = [float("nan"), float("inf"), float("-inf")]
    write_workbook(out, columns, lambda: [[1, "linked", True, *values]], RunInfo())
    sheet = openpyxl.load_workbook(io.BytesIO(out.getvalue()), data_only=True)["report"]
    assert [sheet.cell(2, col).value for col in (4, 5, 6)] == ["#NUM!", "#DIV/0!", "#DIV/0!"]


@pytest.mark.parametrize("cell", [(1048575, 16383), (1048575, 99)], ids=["XFD1048576", "CV1048576"])
def test_a_value_far_beyond_the_table_is_refused_in_one_line_not_an_abort(
    sandbox: Sandbox, tmp_path: Path, cell: tuple[int, int]
) -> None:
    """calamine holds the whole rectangle from A1 to the last value: one typed in Excel's
    last cell asked for 549 GB and aborted the process (exit 134, a Rust backtrace)."""
    import xlsxwriter

    path = tmp_path / "stray.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, HEAD)
    sheet.write_row(1, 0, ["T1", "L1"])
    sheet.write(*cell, "x")
    book.close()
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    said = one_line_error(result)
    assert "because of a value far from the table" in said and "Ctrl+End" in said, said
    assert sandbox.requests == []


def test_a_formatted_cell_far_beyond_the_table_adds_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    import xlsxwriter

    path = tmp_path / "formatted.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, HEAD)
    sheet.write_row(1, 0, ["T1", "L1"])
    sheet.write_blank(1048575, 16383, None, book.add_format({"bold": True}))
    book.close()
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1")]


def test_the_xml_pass_carries_only_a_tail_past_a_block_without_an_end_of_cell() -> None:
    """A block of blanks (no ``</row>``, no ``</c>``) carried whole to the next made the
    pass quadratic: 820 KB of workbook took 153 s and 2.5 GB."""
    from bulklink.tables.workbook import _CARRY, _cut

    blanks = b" " * (1 << 22)
    assert len(blanks) - _cut(blanks) == _CARRY
    row = b'<row r="1"><c r="A1"><v>1</v></c></row>'
    assert _cut(row + blanks) == len(row)
    assert _cut(b'<c r="A1"><v>1</v></c><c r="B1"><v>2') == len(b'<c r="A1"><v>1</v></c>')


def test_a_formula_in_a_workbook_to_be_recalculated_is_never_calculated(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """XlsxWriter (and pandas through it) writes 0 as every formula's value and asks Excel
    to recalculate on opening: the ID was sent as ticket "0"."""
    import xlsxwriter

    path = tmp_path / "built.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, [*HEAD, "prefix", "number"])
    sheet.write_row(1, 0, ["T1", "L1", "x", "y"])
    sheet.write_row(2, 0, ["", "L2", "TKT-", 200])
    sheet.write_formula(2, 0, "=C3&D3")
    book.close()
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("T1", "L1")]
    error = report_of(path)[1]["error"]
    assert error.startswith("sourceTicketId cell is a formula that was never calculated (=C3&D3)")


def _respelt(plain: Path, path: Path, respell: Callable[[bytes], bytes]) -> Path:
    """A copy of workbook ``plain`` whose first sheet's XML is ``respell``'s."""
    import zipfile

    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = respell(data)
            out.writestr(item.filename, data)
    return path


def _prefixed(data: bytes) -> bytes:
    """Every element with a namespace prefix, as OpenXML SDK writers spell them."""
    import re

    data = data.replace(b'<worksheet xmlns="', b'<worksheet xmlns:x="')
    return re.sub(rb"<(/?)(\w+)([ >/])", rb"<\1x:\2\3", data)


def _single_quoted(data: bytes) -> bytes:
    """Every cell's attributes in single quotes."""
    import re

    return re.sub(rb"(<c [^>]*)", lambda m: m.group(1).replace(b'"', b"'"), data)


@pytest.mark.parametrize("spelling", ["prefixed", "single quotes", "no references"])
def test_the_sheets_xml_is_read_however_it_is_spelt(
    sandbox: Sandbox, tmp_path: Path, spelling: str
) -> None:
    """Elements with a namespace prefix (``<x:c>``, OpenXML SDK exporters) and attributes
    in single quotes are as valid as Excel's spelling: 123 formatted 00000 went as 123
    and a #N/A cell as a blank, since the XML pass saw no cell."""
    import re

    import xlsxwriter

    plain = tmp_path / "plain.xlsx"
    book = xlsxwriter.Workbook(str(plain))
    sheet = book.add_worksheet("S")
    sheet.write_row(0, 0, HEAD)
    sheet.write_number(1, 0, 123, book.add_format({"num_format": "00000"}))
    sheet.write_string(1, 1, "L1")
    sheet.write_formula(2, 0, "=NA()", None, "#N/A")
    sheet.write_string(2, 1, "L2")
    book.close()

    def respell(data: bytes) -> bytes:
        if spelling == "prefixed":
            return _prefixed(data)
        if spelling == "single quotes":
            return _single_quoted(data)
        # r is optional on rows and cells: each follows the one before
        return re.sub(rb'(<(?:c|row)\b[^>]*?) r="[A-Z]*[0-9]+"', rb"\1", data)

    path = _respelt(plain, tmp_path / "respelt.xlsx", respell)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("00123", "L1")]
    assert report_of(path)[1]["error"] == "Excel error #N/A in sourceTicketId"


@pytest.mark.parametrize(
    ("spelling", "error"),
    [
        ("prefixed formula", "sourceTicketId cell is a formula that was never calculated (=A9)"),
        ("single-quoted error", "Excel error #N/A in sourceTicketId"),
        ("plain formula", "sourceTicketId cell is a formula that was never calculated (=A9)"),
        ("plain error", "Excel error #N/A in sourceTicketId"),
    ],
)
def test_odd_cells_are_found_however_spelt_in_a_sheet_without_number_formats(
    sandbox: Sandbox, tmp_path: Path, spelling: str, error: str
) -> None:
    """Without a number format to look for, the XML pass reads only the blocks that may
    hold an error cell or a formula, found by byte search first: each spelling must
    count (``<x:f>``, ``t='e'``), or the cell is read as a blank or as its ID."""
    import re

    import xlsxwriter

    plain = tmp_path / "plain.xlsx"
    book = xlsxwriter.Workbook(str(plain))
    sheet = book.add_worksheet("S")
    sheet.write_row(0, 0, HEAD)
    sheet.write_row(1, 0, ["T1", "L1"])
    if spelling.endswith("error"):
        sheet.write_formula(2, 0, "=NA()", None, "#N/A")
    else:
        sheet.write_formula(2, 0, "=A9", None, "T9")
    sheet.write_string(2, 1, "L2")
    book.close()

    def respell(data: bytes) -> bytes:
        if spelling.endswith("error"):  # the cached error alone: no formula
            data = re.sub(rb"<f>[^<]*</f>", b"", data)
        else:  # the formula alone: no value (never calculated), no type
            cell = rb'<c r="A3"[^>]*><f>A9</f><v>T9</v>'
            data = re.sub(cell, b'<c r="A3"><f>A9</f>', data)
            assert b'<c r="A3"><f>A9</f></c>' in data
        if spelling == "prefixed formula":
            data = _prefixed(data)
        if spelling == "single-quoted error":
            data = _single_quoted(data)
        return data

    path = _respelt(plain, tmp_path / "respelt.xlsx", respell)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("T1", "L1")]
    assert report_of(path)[1]["error"].startswith(error)


def test_a_strict_open_xml_workbook_is_read(sandbox: Sandbox, tmp_path: Path) -> None:
    """Excel's 'Strict Open XML Spreadsheet' names its parts in other namespaces: it was
    refused as 'not a readable .xlsx file (None)'."""
    import zipfile

    import xlsxwriter

    plain = tmp_path / "t.xlsx"
    book = xlsxwriter.Workbook(str(plain))
    book.add_worksheet("S").write_row(0, 0, HEAD)
    book.worksheets()[0].write_row(1, 0, ["T1", "L1"])
    book.close()
    strict = tmp_path / "strict.xlsx"
    spaces = {
        b"http://schemas.openxmlformats.org/spreadsheetml/2006/main": (
            b"http://purl.oclc.org/ooxml/spreadsheetml/main"
        ),
        b"http://schemas.openxmlformats.org/officeDocument/2006/relationships": (
            b"http://purl.oclc.org/ooxml/officeDocument/relationships"
        ),
    }
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(strict, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            for old, new in spaces.items():
                data = data.replace(old, new)
            out.writestr(item.filename, data)
    result = run(sandbox, strict)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1")]
