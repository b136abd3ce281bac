"""The xlsx report as Excel shows it: frozen header, filter, fitted widths, typed cells, the
Summary sheet with its chart, and ``retry`` keeping all of it (issue 13)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.chart import BarChart
from openpyxl.utils import get_column_letter
from openpyxl.workbook.workbook import Workbook

from bulklink.models import TICKET_FIELDS
from bulklink.sandbox import FORMULA_TITLE, Reply, Sandbox
from bulklink.xlsx import MAX_WIDTH, MIN_WIDTH, RunInfo, write_workbook
from tests.conftest import invoke, run_against, write_csv

FAST = ("--rate", "0", "--backoff", "0.01", "--no-progress")
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
COUNTS = {"linked": 3, "failed": 2, "invalid": 2, "duplicate": 2, "skipped": 0, "already-linked": 0}
AFTER_RETRY = {
    "linked": 5,
    "failed": 0,
    "invalid": 2,
    "duplicate": 2,
    "skipped": 0,
    "already-linked": 0,
}


# -- reading the workbook back as Excel would show it ----------------------------------------


def table(sheet: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The rows sheet's header, and each row as cells by column name."""
    lines = list(sheet.iter_rows())
    header = [str(c.value) for c in lines[0]]
    return header, [dict(zip(header, line, strict=True)) for line in lines[1:]]


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


def shown(value: Any) -> str:
    """A cell as Excel shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


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


def cells(row: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    return {name: (c.value, c.data_type) for name, c in row.items()}


# -- end to end through the CLI -----------------------------------------------------------------


@pytest.fixture
def first_run(sandbox: Sandbox, tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    inp = write_csv(tmp_path / "in.csv", INPUT)
    out = tmp_path / "out.xlsx"
    end = tmp_path / "summary.json"
    result = run_against(sandbox, "run", inp, "-o", out, "--summary-json", end, *FAST)
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
    read = invoke("report", out, "--json")
    assert read.exit_code == 1, read.stderr
    assert json.loads(read.stdout)["counts"] == summary["counts"]
    assert json.loads(read.stdout)["errors"] == summary["errors"]


def test_retry_keeps_the_types_and_rewrites_the_summary(
    first_run: tuple[Path, Path, dict[str, Any]],
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    _, out, _ = first_run
    _, before = table(openpyxl.load_workbook(out)["report"])
    healed = start_sandbox(unknown_prefix="")  # the missing tickets exist now
    end = tmp_path / "retry.json"
    result = run_against(healed, "retry", out, "--summary-json", end, *FAST)
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
    read = invoke("report", out, "--json")
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
    inp = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["S1", "L1"]])
    out = tmp_path / "out.xlsx"
    result = run_against(server, "run", inp, "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    _, rows = check_rows_sheet(openpyxl.load_workbook(out))
    # XML cannot hold a BEL: it is shown as its control picture (U+2407).
    assert rows[0]["ticket.title"].value == "bell\u2407 and tab\tstay"


# -- the writer on its own ------------------------------------------------------------------------


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
