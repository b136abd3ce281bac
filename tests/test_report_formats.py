"""The report in every format (csv, xlsx, jsonl): columns, the same rows in each, formula
neutralisation, the xlsx workbook's sheets, and reading a report back.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from openpyxl import load_workbook
from openpyxl.chart import BarChart
from openpyxl.utils import get_column_letter
from openpyxl.workbook.workbook import Workbook

from bulklink.models import TICKET_FIELDS
from bulklink.sandbox import FORMULA_TITLE, Reply, Sandbox, success_body
from bulklink.tables.report.schema import RunInfo, carried_names, neutralize, unneutralize
from bulklink.tables.report.xlsx import MAX_WIDTH, MIN_WIDTH, write_workbook
from tests import helpers as h

# -- columns ----------------------------------------------------------------------------------


REPORT_HEAD = h.RESULT_COLUMNS  # the report's own columns, from the shared helpers
TICKET_COLS = h.TICKET_COLUMNS


def as_text(value: Any) -> str:
    """One cell as text, whatever the format stored: comparable across formats."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


MIXED = [
    ["owner", "sourceTicketId", "note", "linkedTicketId"],
    ["ann", "S1", "first", "L1"],
    ["bob", "MISSING1", "second", "L2"],
    ["cy", "", "third", "L3"],
]

ALL_404 = [
    ["owner", "sourceTicketId", "note", "linkedTicketId"],
    ["ann", "MISSING1", "first", "L1"],
    ["bob", "MISSING2", "second", "L2"],
]


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
@pytest.mark.parametrize("rows", [MIXED, ALL_404], ids=["some-linked", "all-404"])
def test_columns_in_order_whatever_succeeded(
    sandbox: Sandbox, tmp_path: Path, rows: list[list[str]], fmt: str
) -> None:
    inp = h.write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / f"out{fmt}"
    result = h.run_against(sandbox, "run", inp, "-o", out, *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    expected = [*REPORT_HEAD, *TICKET_COLS, "owner", "note"]
    header, report = h.read_any(out)
    assert header == expected
    assert len(report) == len(rows) - 1
    if fmt == ".jsonl":
        assert all(list(obj) == expected for obj in report)
    assert [as_text(r["owner"]) for r in report] == [r[0] for r in rows[1:]]
    assert [as_text(r["note"]) for r in report] == [r[2] for r in rows[1:]]


def test_other_columns_are_carried_unchanged_after_ticket_columns(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Row 1's answer is delayed so it completes last: the report must still be in order.
    server = start_sandbox(script={"S1": [Reply(delay=0.4)]})
    header = ["note", "sourceTicketId", "extra", "linkedTicketId", "amount"]
    rows = [
        ["00042", "S1", "  padded  ", "L1", "1.50"],
        ["=SUM(A1:A2)", "S2", "NA", "L2", ""],
        ['a,b "q"', "S3", "null", "L3", "1e5"],
        ["ünï", "S4", "", "L4", "-0"],
    ]
    path = h.write_csv(tmp_path / "pairs.csv", [header, *rows])
    result = h.run(server, path)
    assert result.exit_code == 0, result.output
    assert sorted(h.sent_checked(server)) == [
        ("S1", "L1"),
        ("S2", "L2"),
        ("S3", "L3"),
        ("S4", "L4"),
    ]
    assert h.report_header(path) == [
        *h.RESULT_COLUMNS,
        *h.TICKET_COLUMNS,
        "note",
        "extra",
        "amount",
    ]
    report = h.report_of(path)
    assert [r["row"] for r in report] == ["1", "2", "3", "4"]
    assert h.ids(report) == [("S1", "L1"), ("S2", "L2"), ("S3", "L3"), ("S4", "L4")]
    assert [[r["note"], r["extra"], r["amount"]] for r in report] == [
        [r[0], r[2], r[4]] for r in rows
    ]


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_undocumented_field_becomes_a_column_after_the_documented_ones(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str
) -> None:
    ticket = h.custom_ticket("S2", extraField="x")
    server = start_sandbox(script={"S2": [Reply(200, body=h.answer_with(ticket))]})
    inp = h.write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId", "note"],
            ["S1", "L1", "n1"],
            ["S2", "L2", "n2"],
            ["MISSING3", "L3", "n3"],
            ["S4", "L4", "n4"],
        ],
    )
    out = tmp_path / f"out{fmt}"
    result = h.run_against(server, "run", inp, "-o", out, "--concurrency", "1", *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    header, rows = h.read_any(out)
    expected = [*REPORT_HEAD, *TICKET_COLS, "ticket.extraField", "note"]
    if fmt == ".jsonl":
        assert list(rows[1]) == expected
        assert all(list(r)[: len(REPORT_HEAD) + len(TICKET_COLS)] == expected[:-2] for r in rows)
        assert all(list(r)[-1] == "note" for r in rows)
    else:
        assert header == expected
    assert [as_text(r.get("ticket.extraField")) for r in rows] == ["", "x", "", ""]
    assert [as_text(r["note"]) for r in rows] == ["n1", "n2", "n3", "n4"]
    assert [r["outcome"] for r in rows] == ["linked", "linked", "failed", "linked"]
    assert rows[1]["ticket.title"] == "Custom title S2"
    assert as_text(rows[1]["ticket.ticketId"]) == "4242"
    assert rows[0]["ticket.title"] == "Ticket S1"


# -- the input's own columns beside bulklink's ------------------------------------------------


#: Input columns named like bulklink's; the last is what the first is carried as.
CLASHING = ["outcome", "success", "error", "ticket.title", "input.outcome"]
CARRIED = ["input.outcome", "input.success", "input.error", "input.ticket.title"]


def test_only_bulklinks_names_are_prefixed_when_carried() -> None:
    names = ["note", "outcome", "input.outcome", "ticket.x", "row", "tickets", "Outcome"]
    assert carried_names(names) == [
        "note",
        "input.outcome",
        "input.input.outcome",  # input.outcome was taken by the one before
        "input.ticket.x",
        "input.row",
        "tickets",
        "Outcome",
    ]


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_an_input_column_named_like_bulklinks_is_carried_as_input_dot_name(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str
) -> None:
    # S2's answer adds a ticket field: the late column is placed by the same rule.
    ticket = h.custom_ticket("S2", extraField="x")
    server = start_sandbox(script={"S2": [Reply(200, body=h.answer_with(ticket))]})
    mine = [["mine1", "no", "my error 1", "my title 1", "old1"], ["mine2", "", "", "t2", "old2"]]
    inp = h.write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", *CLASHING, "linkedTicketId"],
            ["S1", *mine[0], "L1"],
            ["MISSING2", *mine[1], "L2"],
            ["S2", *mine[0], "L3"],
        ],
    )
    out = tmp_path / f"out{fmt}"
    result = h.run_against(server, "run", inp, "-o", out, "--concurrency", "1", *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    carried = [*CARRIED, "input.input.outcome"]
    expected = [*REPORT_HEAD, *TICKET_COLS, "ticket.extraField", *carried]

    def check(out: Path, late: bool) -> None:
        header, rows = h.read_any(out)
        if fmt == ".jsonl":  # a key per value: a field first seen late only where it is
            known = [c for c in expected if late or c != "ticket.extraField"]
            assert [list(r) for r in rows] == [known, known, expected]
        else:
            assert header == expected
        assert [r["outcome"] for r in rows] == ["linked", "failed", "linked"]
        assert [as_text(r["success"]) for r in rows] == ["true", "false", "true"]
        assert as_text(rows[0]["error"]) == "" and as_text(rows[1]["error"]) != ""
        assert as_text(rows[1]["http_status"]) == "404"
        assert [rows[0]["ticket.title"], rows[2]["ticket.title"]] == [
            "Ticket S1",
            "Custom title S2",
        ]
        assert as_text(rows[2]["ticket.extraField"]) == "x"
        assert [[as_text(r[c]) for c in carried] for r in rows] == [mine[0], mine[1], mine[0]]

    check(out, late=False)
    # retry reads the columns apart by the same rule: the carried ones keep their names
    # (and the field the run found late is one the retry knows from the start).
    result = h.run_against(server, "retry", out, "--max-retries", "0", *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    check(out, late=True)


def test_a_huge_carried_cell_survives_the_pass_that_adds_late_csv_columns(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """The late ticket field makes the CSV writer read its file back: with the reader run
    uses, which has no 131,072-character field limit (the csv module's has)."""
    huge = "x" * 150_000 + ',\n"end'
    ticket = h.custom_ticket("S2", extraField="x")
    server = start_sandbox(script={"S2": [Reply(200, body=h.answer_with(ticket))]})
    inp = h.write_csv(
        tmp_path / "in.csv", [[*h.HEAD, "note"], ["S1", "L1", huge], ["S2", "L2", "n2"]]
    )
    result = h.run(server, inp)
    assert result.exit_code == 0, result.stderr
    report = pd.read_csv(inp.with_name("in.results.csv"), dtype=str, keep_default_na=False)
    assert list(report.columns[-2:]) == ["ticket.extraField", "note"]
    assert report["note"].tolist() == [huge, "n2"]
    assert report["ticket.extraField"].tolist() == ["", "x"]


# -- csv, xlsx and jsonl hold the same rows ---------------------------------------------------


def canonical(column: str, value: Any) -> str:
    """Like as_text, with JSON text parsed so separators and key order don't matter."""
    if column == "ticket.customFieldValues" and isinstance(value, str) and value:
        value = json.loads(value)
    return as_text(value)


FORMATS_INPUT = [
    ["sourceTicketId", "linkedTicketId", "code", "comment"],
    ["S1", "L1", "00123", "plain"],
    ["FORMULA1", "L2", "007", "formula title"],
    ["CUSTOM1", "L3", "1.50", "custom fields"],
    ["MISSING1", "L4", "", "not found"],
    ["S5", "S5", "x", "self link"],
    ["S1", "L1", "y", "duplicate"],
]


def run_formats(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    inp = h.write_csv(tmp_path / "in.csv", FORMATS_INPUT)
    reports = {}
    for fmt in (".csv", ".xlsx", ".jsonl"):
        server = start_sandbox(
            script={"CUSTOM1": [Reply(200, body=h.answer_with(h.custom_ticket("CUSTOM1")))]}
        )
        out = tmp_path / f"report{fmt}"
        result = h.run_against(server, "run", inp, "-o", out, *h.FAST_UNPACED)
        assert result.exit_code == 1, result.stderr
        reports[fmt] = h.read_any(out)
    return reports


def test_csv_xlsx_jsonl_hold_the_same_rows(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    reports = run_formats(start_sandbox, tmp_path)
    csv_header, csv_rows = reports[".csv"]
    assert len(csv_rows) == len(FORMATS_INPUT) - 1
    for fmt in (".xlsx", ".jsonl"):
        header, rows = reports[fmt]
        assert header == csv_header, fmt
        assert len(rows) == len(csv_rows), fmt
        for want, got in zip(csv_rows, rows, strict=True):
            for column in csv_header:
                text = want[column]
                if column == "ticket.title" and text.startswith("'="):
                    text = text[1:]  # the CSV's OWASP escape, checked on its own below
                if column == "linked_at":  # each format's run links at its own time
                    assert bool(got[column]) == bool(text), (fmt, want["row"])
                    continue
                assert canonical(column, got[column]) == canonical(column, text), (
                    fmt,
                    want["row"],
                    column,
                )
    by_source = {r["comment"]: r for r in csv_rows}
    assert [r["outcome"] for r in csv_rows] == [
        "linked", "linked", "linked", "failed", "invalid", "duplicate",
    ]  # fmt: skip
    assert by_source["plain"]["code"] == "00123"
    assert by_source["formula title"]["code"] == "007"
    assert by_source["custom fields"]["code"] == "1.50"
    # numbers from the API stay exact in every format
    assert by_source["custom fields"]["ticket.ticketId"] == "4242"
    assert by_source["custom fields"]["ticket.isPrivate"] == "true"


def test_lists_are_json_text_in_csv_and_xlsx(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    reports = run_formats(start_sandbox, tmp_path)
    for fmt in (".csv", ".xlsx"):
        _, rows = reports[fmt]
        custom = next(r for r in rows if r["sourceTicketId"] == "CUSTOM1")
        cell = custom["ticket.customFieldValues"]
        assert isinstance(cell, str), fmt
        assert json.loads(cell) == h.CUSTOM_FIELDS, fmt
        plain = next(r for r in rows if r["sourceTicketId"] == "S1")
        assert json.loads(plain["ticket.customFieldValues"]) == [], fmt
    _, rows = reports[".jsonl"]
    custom = next(r for r in rows if r["sourceTicketId"] == "CUSTOM1")
    assert custom["ticket.customFieldValues"] in (h.CUSTOM_FIELDS, json.dumps(h.CUSTOM_FIELDS))


def test_success_http_status_and_attempts_per_outcome(sandbox: Sandbox, tmp_path: Path) -> None:
    inp = h.write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId"],
            ["S1", "L1"],  # linked
            ["MISSING1", "L2"],  # failed (404)
            ["", "L3"],  # invalid: blank
            ["S4", "S4"],  # invalid: self-link
            ["S1", "L1"],  # duplicate of a linked row
            ["MISSING1", "L2"],  # duplicate of a failed row
        ],
    )
    out = tmp_path / "out.csv"
    result = h.run_against(sandbox, "run", inp, "-o", out, *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    rows = h.read_report(out)
    assert [r["row"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["outcome"] for r in rows] == [
        "linked", "failed", "invalid", "invalid", "duplicate", "duplicate",
    ]  # fmt: skip
    assert all(r["success"] in ("true", "false") for r in rows)
    assert [r["success"] for r in rows[:4]] == ["true", "false", "false", "false"]
    # a duplicate shares the first row's result
    assert rows[4]["success"] == "true"
    assert rows[5]["success"] == "false"
    assert [r["http_status"] for r in rows[:4]] == ["200", "404", "", ""]
    assert [r["attempts"] for r in rows] == ["1", "1", "0", "0", "0", "0"]
    assert rows[2]["error"] and rows[3]["error"]  # the reason it was not sent
    assert rows[0]["error"] == ""
    assert len(sandbox.requests) == 2  # invalid rows and duplicates are not sent


@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".xlsx"])
def test_lone_surrogates_in_answers_never_cost_the_report(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    """``"\\ud800"`` is valid JSON but no text: shown as U+FFFD, and every format is written."""
    ticket = json.loads(success_body("S1", 0.0))
    ticket["data"]["title"] = "half \ud800 a pair"
    body = json.dumps(ticket).encode()  # ensure_ascii: the lone surrogate as an escape
    error = b'{"statusCode": 404, "message": "no \\udfff ticket", "error": "Not Found"}'
    server = start_sandbox(script={"S1": [Reply(200, body=body)], "S2": [Reply(404, body=error)]})
    inp = h.write_csv(
        tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["S1", "L1"], ["S2", "L2"]]
    )
    out = tmp_path / f"out{fmt}"
    result = h.run_against(server, "run", inp, "-o", out, "--backoff", "0.01", "--no-progress")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = h.invoke("report", out, "--json")
    assert json.loads(summary.stdout)["counts"]["linked"] == 1
    if fmt != ".xlsx":  # a zip: its text is compressed
        assert "\ufffd" in out.read_text(encoding="utf-8")


def test_control_characters_in_an_xlsx_report_do_not_crash_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = h.write_csv(tmp_path / "ids.csv", [h.HEAD, ["A\x00B", "C"], ["A\x1bB", "D"], ["E", "F"]])
    out = tmp_path / "out.xlsx"
    result = h.run(sandbox, path, "-o", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert sorted(h.sent(sandbox)) == [("E", "F")]
    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    values = [[c.value for c in row] for row in sheet.iter_rows(min_row=2, max_col=5)]
    assert [v[4] for v in values] == ["invalid", "invalid", "linked"]
    assert values[0][1] == "A\u2400B" and values[1][1] == "A\u241bB"  # control pictures


# -- formula neutralisation -------------------------------------------------------------------


def test_formula_title_is_text_in_xlsx_and_neutralised_in_csv(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    inp = h.write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId", "memo"], ["FORMULA1", "L1", "=1+1"]],
    )
    xlsx, csv_out = tmp_path / "r.xlsx", tmp_path / "r.csv"
    for out in (xlsx, csv_out):  # the same pair twice: the store would skip the second
        result = h.run_against(sandbox, "run", inp, "-o", out, "--no-state", *h.FAST_UNPACED)
        assert result.exit_code == 0, result.stderr

    sheet = openpyxl.load_workbook(xlsx).worksheets[0]
    header = [c.value for c in sheet[1]]
    title = sheet.cell(row=2, column=header.index("ticket.title") + 1)
    assert title.value == FORMULA_TITLE
    assert title.data_type == "s"  # a string cell, not a formula ("f")
    memo = sheet.cell(row=2, column=header.index("memo") + 1)
    assert memo.value == "=1+1"  # input text stays text too
    assert memo.data_type == "s"
    for row in sheet.iter_rows():
        for cell in row:
            assert cell.data_type != "f", cell.coordinate

    (csv_row,) = h.read_report(csv_out)
    assert csv_row["ticket.title"] == "'" + FORMULA_TITLE


def test_neutralize_quotes_exactly_what_a_spreadsheet_would_run() -> None:
    """Its set test may skip the regex only where the regex cannot match."""
    risky = re.compile(r"'*[=+\-@\t\r]")
    for first in map(chr, range(0x10000)):
        for text in (first, first + "1+1", first + "=1"):
            expected = "'" + text if risky.match(text) else text
            assert neutralize(text) == expected, repr(text)
            assert unneutralize(neutralize(text)) == text
    assert neutralize("") == ""


FORMULA_INPUT = [
    ("FORMULA1", "L1"),  # linked at once; title is a formula
    ("FORMULA2", "L2"),  # fails first, retried
    ("-00123", "L3"),  # fails first, retried
    ("@abc", "L4"),
    ("=1+2", "L5"),  # fails first, retried
    ("+44", "-L6"),
    ("'@q", "L7"),  # already quoted; fails first, retried
]

FIRST_FAIL = ("FORMULA2", "-00123", "=1+2", "'@q")


def test_formula_text_neutralised_and_retry_round_trips_ids(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={s: [Reply(status=503)] * 10 for s in FIRST_FAIL})
    src = h.write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *FORMULA_INPUT])
    report = tmp_path / "report.csv"
    result = h.run_against(server, "run", src, "-o", report, "--max-retries", "1", *h.FAST)
    assert result.exit_code == 1, result.stderr
    rows = h.read_report(report)
    h.assert_rows_once(rows, FORMULA_INPUT)
    assert rows[0]["ticket.title"] == "'" + FORMULA_TITLE
    assert rows[3]["ticket.id"] == "'@abc"
    assert rows[5]["ticket.id"] == "'+44"
    raw = report.read_text(encoding="utf-8")
    assert not re.search(r'(^|,)"?=HYPERLINK', raw, re.MULTILINE)

    server.config.script.clear()
    since = len(server.requests)
    retried = h.run_against(server, "retry", report, *h.FAST)
    assert retried.exit_code == 0, retried.stderr
    assert sorted(h.sent(server, since)) == sorted(p for p in FORMULA_INPUT if p[0] in FIRST_FAIL)
    rows = h.read_report(report)
    h.assert_rows_once(rows, FORMULA_INPUT)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert rows[0]["ticket.title"] == "'" + FORMULA_TITLE
    assert rows[1]["ticket.title"] == "'" + FORMULA_TITLE
    ids = [r["ticket.id"] for r in rows]
    assert ids == ["FORMULA1", "FORMULA2", "'-00123", "'@abc", "'=1+2", "'+44", "''@q"]

    xlsx = tmp_path / "report.xlsx"  # the same pairs again: not skipped as linked
    assert h.run_against(server, "run", src, "-o", xlsx, "--no-state", *h.FAST).exit_code == 0
    wb = load_workbook(xlsx)
    try:
        sheet = wb.worksheets[0]
        header = [c.value for c in sheet[1]]
        title = sheet.cell(row=2, column=header.index("ticket.title") + 1)
        assert title.data_type == "s"
        assert title.value == FORMULA_TITLE
    finally:
        wb.close()


# -- the xlsx workbook ------------------------------------------------------------------------


LONG_NOTE = "a note far longer than any column should be allowed to grow " * 4

INPUT = [
    ["sourceTicketId", "linkedTicketId", "note"],
    ["00123", "00456", "plain"],  # 1 linked; IDs with leading zeros
    ["FORMULA1", "L2", "=1+1"],  # 2 linked; the sandbox answers a formula-looking title
    ["MISSING3", "L3", LONG_NOTE],  # 3 failed (404)
    ["MISSING4", "L4", ""],  # 4 failed (404)
    ["", "L5", "blank"],  # 5 invalid
    ["S6", "S6", "self"],  # 6 invalid
    ["00123", "00456", "again"],  # 7 duplicate of a linked row
    ["MISSING3", "L3", "again"],  # 8 duplicate of a failed row
    ["S9", "L9", "#N/A"],  # 9 linked; text that looks like an Excel error value
]


def table(sheet: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The rows sheet's header, and each row as cells by column name."""
    lines = list(sheet.iter_rows())
    header = [str(c.value) for c in lines[0]]
    return header, [dict(zip(header, line, strict=True)) for line in lines[1:]]


def shown(value: Any) -> str:
    """A cell as Excel shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


def check_rows_sheet(book: Workbook) -> tuple[list[str], list[dict[str, Any]]]:
    """What every report's rows sheet must look like, whatever its rows."""
    assert book.sheetnames == ["report", "Summary"]
    sheet = book["report"]
    header, rows = table(sheet)
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{get_column_letter(len(header))}{len(rows) + 1}"
    assert all(c.font.b for c in sheet[1]), "the header is bold"
    for index, name in enumerate(header, 1):
        width = sheet.column_dimensions[get_column_letter(index)].width
        longest = max(len(shown(r[name].value)) for r in rows)
        assert MIN_WIDTH <= width <= MAX_WIDTH, name
        assert width >= min(longest, MAX_WIDTH), (name, width, longest)
    for row in rows:
        assert type(row["row"].value) is int
        assert type(row["attempts"].value) is int
        assert type(row["success"].value) is bool
        assert row["http_status"].value is None or type(row["http_status"].value) is int
        for name in header:
            if name not in ("row", "attempts", "success", "http_status"):
                assert row[name].data_type in ("s", "n", "b"), (name, row[name].data_type)
        for name in ("sourceTicketId", "linkedTicketId", "outcome", "note"):
            value = row[name].value if name in row else None
            assert value is None or (type(value) is str and row[name].data_type == "s"), name
    return header, rows


@pytest.fixture
def first_run(sandbox: Sandbox, tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    inp = h.write_csv(tmp_path / "in.csv", INPUT)
    out = tmp_path / "out.xlsx"
    end = tmp_path / "summary.json"
    result = h.run_against(sandbox, "run", inp, "-o", out, "--summary-json", end, *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    return inp, out, json.loads(end.read_text())


def test_rows_sheet_is_frozen_filtered_fitted_and_typed(
    first_run: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, out, _ = first_run
    header, rows = check_rows_sheet(openpyxl.load_workbook(out))
    assert len(rows) == len(INPUT) - 1
    assert [r["row"].value for r in rows] == list(range(1, 10))
    assert [r["success"].value for r in rows] == [
        True, True, False, False, False, False, True, False, True,
    ]  # fmt: skip
    assert [r["http_status"].value for r in rows[:5]] == [200, 200, 404, 404, None]
    assert (rows[0]["sourceTicketId"].value, rows[0]["linkedTicketId"].value) == ("00123", "00456")
    title = rows[1]["ticket.title"]
    assert (title.value, title.data_type) == (FORMULA_TITLE, "s"), "text, never a formula"
    assert (rows[1]["note"].value, rows[1]["note"].data_type) == ("=1+1", "s")
    assert (rows[8]["note"].value, rows[8]["note"].data_type) == ("#N/A", "s")
    sheet = openpyxl.load_workbook(out)["report"]
    width = {name: sheet.column_dimensions[get_column_letter(i)].width for i, name in
             enumerate(header, 1)}  # fmt: skip
    assert width["note"] == MAX_WIDTH, "a long text is capped"
    assert width["row"] == MIN_WIDTH
    longest_error = max(len(str(r["error"].value or "")) for r in rows)
    assert longest_error < width["error"] < MAX_WIDTH, "fitted to the longest error"


COUNTS = {"linked": 3, "failed": 2, "invalid": 2, "duplicate": 2, "skipped": 0, "already-linked": 0}


def summary_sheet(book: Workbook) -> dict[str, Any]:
    """The Summary sheet's three blocks: counts per outcome, the run, failures by error."""
    lines = [list(r) for r in book["Summary"].iter_rows(values_only=True)]
    blocks: dict[str, list[list[Any]]] = {}
    current: list[list[Any]] = []
    for line in lines:
        if all(v is None for v in line):
            continue
        if line[0] in ("Outcome", "Run", "Failures by error"):
            current = blocks.setdefault(str(line[0]), [])
            continue
        current.append(line)
    counts = {r[0]: r[1] for r in blocks["Outcome"]}
    return {
        "total": counts.pop("total"),
        "counts": counts,
        "run": {r[0]: r[1] for r in blocks["Run"]},
        "errors": [
            {"error": r[0], "count": r[1], "example_rows": [int(x) for x in r[2].split(", ")]}
            for r in blocks["Failures by error"]
            if r[0] != "(none)"
        ],
    }


def check_summary(book: Workbook, rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summary_sheet(book)
    in_rows = Counter(str(r["outcome"].value) for r in rows)
    assert summary["counts"] == {outcome: in_rows[outcome] for outcome in COUNTS}
    assert list(summary["counts"]) == list(COUNTS), "every outcome, in order, zeros too"
    assert summary["total"] == len(rows)
    charts = book["Summary"]._charts  # type: ignore[attr-defined]
    assert len(charts) == 1 and isinstance(charts[0], BarChart)
    (series,) = charts[0].series
    last = 1 + len(COUNTS)  # the counts cells, not a copy
    assert series.val.numRef.f == f"'Summary'!$B$2:$B${last}"
    assert series.cat.numRef.f == f"'Summary'!$A$2:$A${last}"
    return summary


def test_summary_sheet_holds_the_end_of_run_summary(
    first_run: tuple[Path, Path, dict[str, Any]],
) -> None:
    inp, out, end = first_run
    book = openpyxl.load_workbook(out)
    _, rows = check_rows_sheet(book)
    summary = check_summary(book, rows)
    assert summary["counts"] == COUNTS == end["counts"]
    assert summary["errors"] == end["errors"]
    assert [g["count"] for g in summary["errors"]] == [2, 1, 1], "most common first"
    assert summary["errors"][0]["example_rows"] == [3, 4] and "404" in summary["errors"][0]["error"]
    assert summary["run"] == {
        "Started": end["started"],
        "Finished": end["finished"],
        "Duration (seconds)": end["elapsed_seconds"],
        "Input": str(inp),
        "Report": str(out),
        "Exit code": 1,
    }
    # The same as ``bulklink report`` reads from the rows sheet.
    read = h.invoke("report", out, "--json")
    assert read.exit_code == 1, read.stderr
    assert json.loads(read.stdout)["counts"] == summary["counts"]
    assert json.loads(read.stdout)["errors"] == summary["errors"]


AFTER_RETRY = {
    "linked": 5,
    "failed": 0,
    "invalid": 2,
    "duplicate": 2,
    "skipped": 0,
    "already-linked": 0,
}


def cells(row: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    return {name: (c.value, c.data_type) for name, c in row.items()}


def test_retry_keeps_the_types_and_rewrites_the_summary(
    first_run: tuple[Path, Path, dict[str, Any]],
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    _, out, _ = first_run
    _, before = table(openpyxl.load_workbook(out)["report"])
    healed = start_sandbox(unknown_prefix="")  # the missing tickets exist now
    end = tmp_path / "retry.json"
    result = h.run_against(healed, "retry", out, "--summary-json", end, *h.FAST_UNPACED)
    assert result.exit_code == 1, result.stderr  # the two invalid rows stay invalid
    sent = sorted(json.loads(r.body)["sourceTicketId"] for r in healed.requests)
    assert sent == ["MISSING3", "MISSING4"], "only the failed rows are sent again"

    book = openpyxl.load_workbook(out)
    _, after = check_rows_sheet(book)
    kept = [0, 1, 4, 5, 6, 8]  # linked, invalid, duplicate of linked
    assert [cells(after[i]) for i in kept] == [cells(before[i]) for i in kept], "cell for cell"
    assert [r["outcome"].value for r in after] == [
        "linked", "linked", "linked", "linked", "invalid", "invalid",
        "duplicate", "duplicate", "linked",
    ]  # fmt: skip
    assert [r["attempts"].value for r in after[2:4]] == [2, 2]
    assert after[7]["success"].value is True, "the duplicate follows its first row"

    summary = check_summary(book, after)
    assert summary["counts"] == AFTER_RETRY == json.loads(end.read_text())["counts"]
    assert [g["error"] for g in summary["errors"]] == [
        "blank source ticket ID",
        "source and linked ticket are the same",
    ]
    assert summary["run"]["Input"] == str(out)
    assert summary["run"]["Exit code"] == 1
    assert summary["run"]["Started"] == json.loads(end.read_text())["started"]


def test_report_reads_the_rows_sheet_even_when_summary_comes_first(
    first_run: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, out, end = first_run
    book = openpyxl.load_workbook(out)
    book.move_sheet("Summary", offset=-1)  # as someone tidying up in Excel might
    book.save(out)
    assert openpyxl.load_workbook(out).sheetnames == ["Summary", "report"]
    read = h.invoke("report", out, "--json")
    assert read.exit_code == 1, read.stderr
    assert json.loads(read.stdout)["counts"] == end["counts"]


def test_control_characters_from_the_api_do_not_cost_the_report(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """XML cannot hold them: they show as U+FFFD instead of failing the whole workbook."""
    ticket = {name: None for name in TICKET_FIELDS} | {
        "id": "S1",
        "title": "bell\x07 and tab\tstay",
    }
    body = {"status": True, "message": "Success", "data": ticket}
    server = start_sandbox(script={"S1": [Reply(200, body=body)]})
    inp = h.write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["S1", "L1"]])
    out = tmp_path / "out.xlsx"
    result = h.run_against(server, "run", inp, "-o", out, *h.FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    _, rows = check_rows_sheet(openpyxl.load_workbook(out))
    # XML cannot hold a BEL: it is shown as its control picture (U+2407).
    assert rows[0]["ticket.title"].value == "bell\u2407 and tab\tstay"


def test_an_all_linked_report_without_run_facts_has_an_empty_failures_table(
    tmp_path: Path,
) -> None:
    columns = ["row", "sourceTicketId", "linkedTicketId", "success", "outcome", "http_status",
               "error", "attempts", "ticket.isPrivate", "ticket.customFieldValues"]  # fmt: skip
    rows = [
        [1, "A1", "B1", "true", "linked", 200, "", 1, False, [{"id": "CF1"}]],
        [2, "A2", "B2", True, "linked", 200, "", 3, True, []],
    ]
    out = tmp_path / "plain.xlsx"
    write_workbook(out, columns, lambda: iter(rows), None)
    book = openpyxl.load_workbook(out)
    _, got = table(book["report"])
    assert [r["success"].value for r in got] == [True, True]
    assert [r["ticket.isPrivate"].value for r in got] == [False, True]
    assert [r["ticket.customFieldValues"].value for r in got] == ['[{"id":"CF1"}]', "[]"]
    assert [r["error"].value for r in got] == [None, None]
    summary = summary_sheet(book)
    assert summary["counts"] == {"linked": 2, "failed": 0, "invalid": 0, "duplicate": 0,
                                 "skipped": 0, "already-linked": 0}  # fmt: skip
    assert summary["errors"] == []
    assert summary["run"] == {
        "Started": None, "Finished": None, "Duration (seconds)": None,
        "Input": None, "Report": None, "Exit code": None,
    }  # fmt: skip
    run = RunInfo(exit_code=130, stopped="interrupted")
    write_workbook(out, columns, lambda: iter(rows), run)
    facts = summary_sheet(openpyxl.load_workbook(out))["run"]
    assert (facts["Exit code"], facts["Stopped"]) == (130, "interrupted")


# -- JSON-lines reports holding lines that are not rows ---------------------------------------


GOOD_LINE = {
    "row": 1,
    "sourceTicketId": "A",
    "linkedTicketId": "B",
    "success": False,
    "outcome": "failed",
    "http_status": 503,
    "error": "HTTP 503",
    "attempts": 1,
}


@pytest.mark.parametrize(
    "bad",
    [
        "null",
        "[1, 2]",
        "42",
        '"text"',
        "true",
        json.dumps({**GOOD_LINE, "row": 2, "sourceTicketId": {"id": "A"}}),
        json.dumps({**GOOD_LINE, "row": 2, "linkedTicketId": ["B"]}),
        json.dumps({**GOOD_LINE, "row": 2, "outcome": ["failed"]}),
        "{not json",
    ],
)
@pytest.mark.parametrize("command", ["report", "retry"])
def test_jsonl_line_that_is_not_a_row_is_one_line_exit_2(
    sandbox: Sandbox, tmp_path: Path, bad: str, command: str
) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(GOOD_LINE) + "\n\n" + bad + "\n")
    content = path.read_bytes()
    if command == "report":
        result = h.invoke("report", path)
    else:
        result = h.run_against(sandbox, "retry", path, "--rate", "0", "--no-progress")
    line = h.one_line_usage_error(result)
    assert "line 3" in line
    assert sandbox.requests == []
    assert path.read_bytes() == content
    assert h.files_in(tmp_path) == ["old.jsonl"]


def test_jsonl_with_a_line_separator_inside_a_string_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    line = json.dumps({**GOOD_LINE, "error": "HTTP 503 a\u2028b"}, ensure_ascii=False)
    path.write_text(line + "\n", encoding="utf-8")
    result = h.invoke("report", path)
    assert result.exit_code == 1, result.output
    assert "failed 1" in result.output


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl"])
def test_a_ticket_nested_too_deeply_to_write_again_is_linked_with_a_note(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, suffix: str
) -> None:
    """Valid JSON nested 960 deep parses, but writing it again (a report cell, the
    journal line) recursed past Python's limit: exit 70 and no report at all. The row is
    linked (the server said so), the value kept as a note, every other row written."""
    deep = "[" * DEPTH + "1" + "]" * DEPTH  # spelt out: the test's own json would recurse
    body = f'{{"status":true,"data":{{"id":"X","title":"kept","account":{deep}}}}}'
    server = start_sandbox(script={"T00002": [Reply(200, body.encode())]})
    out = tmp_path / f"out{suffix}"
    src = h.pairs_csv(tmp_path / "in.csv", 3)
    # A process of its own, as users run it: its stack is as shallow as theirs.
    with h.spawn(server, "run", src, "-o", out, "--allow-http", *h.FAST_UNPACED) as proc:
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = h.read_any(out)[1]
    assert [r["outcome"] for r in rows] == ["linked"] * 3
    assert rows[1]["ticket.title"] == "kept"
    assert rows[1]["ticket.account"] == "(nested more than 32 levels deep: not kept)"


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_undocumented_fields_of_new_names_in_every_answer_get_at_most_100_columns(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, suffix: str
) -> None:
    """Each answer adds 30 fields no other had: a column each made the CSV quadratic in
    its rows and the xlsx wider than Excel's 16,384 columns. The first 100 get one."""
    n = 8
    script = {
        f"T{i:05d}": [
            Reply(
                200,
                {"status": True, "data": {"id": f"X{i}", **{f"f{i}_{k}": k for k in range(30)}}},
            )
        ]
        for i in range(1, n + 1)
    }
    server = start_sandbox(script=script)
    out = tmp_path / f"out{suffix}"
    result = h.run_against(server, "run", h.pairs_csv(tmp_path / "in.csv", n), "-o", out,
                           *h.FAST_UNPACED)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the API sent 140 more undocumented ticket fields than the report has columns" in (
        result.stderr
    )
    header, rows = h.read_any(out)
    extra = [c for c in header if re.fullmatch(r"ticket\.f\d+_\d+", c)]
    assert len(extra) == 100 and extra[:2] == ["ticket.f1_0", "ticket.f1_1"]
    assert [r["outcome"] for r in rows] == ["linked"] * n
    assert rows[0]["ticket.f1_29"] in (29, "29")


DEPTH = 940  # parses in a process of its own; writing it again recursed too deep


def _strict_json(line: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is no JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl"])
def test_nan_and_infinity_from_the_api_are_kept_as_the_text_it_sent(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, suffix: str
) -> None:
    """Python's json reads NaN, Infinity and 1e400 as numbers that no JSON line holds
    (the .jsonl report was no JSON) and Excel holds only as error formulas (which retry
    then rewrote): they are the text the server sent, in every format, and retry keeps it."""
    body = (
        b'{"status":true,"data":{"id":"X","storyPoints":NaN,"createdAt":1e400,"extra":-Infinity}}'
    )
    server = start_sandbox(script={"T00001": [Reply(200, body)], "T00002": [Reply(400, "no")]})
    out = tmp_path / f"out{suffix}"
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    assert h.run_against(server, "run", src, "-o", out, *h.FAST_UNPACED).exit_code == 1
    expected = {
        "ticket.storyPoints": "NaN",
        "ticket.createdAt": "1e400",
        "ticket.extra": "-Infinity",
    }

    def kept() -> dict[str, Any]:  # a CSV's text formula-escaped as always ('-Infinity)
        row = h.read_any(out)[1][0]
        return {k: unneutralize(row[k]) if suffix == ".csv" else row[k] for k in expected}

    assert kept() == expected
    if suffix == ".jsonl":
        [_strict_json(line) for line in out.read_text().splitlines()]  # every line is JSON
    assert h.run_against(server, "retry", out, *h.FAST_UNPACED).exit_code == 0
    assert kept() == expected
