"""The report: columns and their order, the three formats, text safety, atomic writing,
exit codes and the closing summary line."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from bulklink.models import TICKET_FIELDS
from bulklink.sandbox import FORMULA_TITLE, Reply, Sandbox
from tests.conftest import ORG, TOKEN, read_report, run_against, write_csv

ROOT = Path(__file__).resolve().parent.parent
FAST = ("--rate", "0", "--backoff", "0.01", "--no-progress")
HEAD = [
    "row",
    "sourceTicketId",
    "linkedTicketId",
    "success",
    "outcome",
    "http_status",
    "error",
    "attempts",
    "linked_at",
]
TICKET_COLS = [f"ticket.{name}" for name in TICKET_FIELDS]
CUSTOM_FIELDS = [{"id": "CF1", "name": "Region", "value": 'EMEA, "north"'}, {"id": "CF2"}]


def custom_ticket(source: str, **extra: Any) -> dict[str, Any]:
    """Every documented field, with values of each JSON type, plus ``extra``."""
    ticket: dict[str, Any] = {name: f"{name} of {source}" for name in TICKET_FIELDS}
    ticket.update(
        id=source,
        title=f"Custom title {source}",
        ticketId=4242,
        storyPoints=5,
        isPrivate=True,
        customFieldValues=CUSTOM_FIELDS,
        deletedAt=None,
        archivedAt=None,
    )
    ticket.update(extra)
    return ticket


def success_body(ticket: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": True,
        "message": "Success",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "data": ticket,
    }


# -- reading the three formats back as rows of cells --------------------------------------


def read_any(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a report in any format, cells as the file holds them."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            return header, [dict(zip(header, row, strict=True)) for row in reader]
    if path.suffix == ".xlsx":
        sheet = openpyxl.load_workbook(path).worksheets[0]
        lines = list(sheet.iter_rows(values_only=True))
        header = [str(c) for c in lines[0]]
        return header, [dict(zip(header, row, strict=True)) for row in lines[1:]]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return list(rows[0]), rows


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


def canonical(column: str, value: Any) -> str:
    """Like as_text, with JSON text parsed so separators and key order don't matter."""
    if column == "ticket.customFieldValues" and isinstance(value, str) and value:
        value = json.loads(value)
    return as_text(value)


# -- columns ---------------------------------------------------------------------------------


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
    inp = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / f"out{fmt}"
    result = run_against(sandbox, "run", inp, "-o", out, *FAST)
    assert result.exit_code == 1, result.stderr
    expected = [*HEAD, *TICKET_COLS, "owner", "note"]
    header, report = read_any(out)
    assert header == expected
    assert len(report) == len(rows) - 1
    if fmt == ".jsonl":
        assert all(list(obj) == expected for obj in report)
    assert [as_text(r["owner"]) for r in report] == [r[0] for r in rows[1:]]
    assert [as_text(r["note"]) for r in report] == [r[2] for r in rows[1:]]


# -- formats -----------------------------------------------------------------------------------


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
    inp = write_csv(tmp_path / "in.csv", FORMATS_INPUT)
    reports = {}
    for fmt in (".csv", ".xlsx", ".jsonl"):
        server = start_sandbox(
            script={"CUSTOM1": [Reply(200, body=success_body(custom_ticket("CUSTOM1")))]}
        )
        out = tmp_path / f"report{fmt}"
        result = run_against(server, "run", inp, "-o", out, *FAST)
        assert result.exit_code == 1, result.stderr
        reports[fmt] = read_any(out)
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
        assert json.loads(cell) == CUSTOM_FIELDS, fmt
        plain = next(r for r in rows if r["sourceTicketId"] == "S1")
        assert json.loads(plain["ticket.customFieldValues"]) == [], fmt
    _, rows = reports[".jsonl"]
    custom = next(r for r in rows if r["sourceTicketId"] == "CUSTOM1")
    assert custom["ticket.customFieldValues"] in (CUSTOM_FIELDS, json.dumps(CUSTOM_FIELDS))


def test_formula_title_is_text_in_xlsx_and_neutralised_in_csv(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    inp = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId", "memo"], ["FORMULA1", "L1", "=1+1"]],
    )
    xlsx, csv_out = tmp_path / "r.xlsx", tmp_path / "r.csv"
    for out in (xlsx, csv_out):  # the same pair twice: the store would skip the second
        result = run_against(sandbox, "run", inp, "-o", out, "--no-state", *FAST)
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

    (csv_row,) = read_report(csv_out)
    assert csv_row["ticket.title"] == "'" + FORMULA_TITLE


# -- per-row values -------------------------------------------------------------------------


def test_success_http_status_and_attempts_per_outcome(sandbox: Sandbox, tmp_path: Path) -> None:
    inp = write_csv(
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
    result = run_against(sandbox, "run", inp, "-o", out, *FAST)
    assert result.exit_code == 1, result.stderr
    rows = read_report(out)
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


# -- undocumented ticket fields -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_undocumented_field_becomes_a_column_after_the_documented_ones(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str
) -> None:
    ticket = custom_ticket("S2", extraField="x")
    server = start_sandbox(script={"S2": [Reply(200, body=success_body(ticket))]})
    inp = write_csv(
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
    result = run_against(server, "run", inp, "-o", out, "--concurrency", "1", *FAST)
    assert result.exit_code == 1, result.stderr
    header, rows = read_any(out)
    expected = [*HEAD, *TICKET_COLS, "ticket.extraField", "note"]
    if fmt == ".jsonl":
        assert list(rows[1]) == expected
        assert all(list(r)[: len(HEAD) + len(TICKET_COLS)] == expected[:-2] for r in rows)
        assert all(list(r)[-1] == "note" for r in rows)
    else:
        assert header == expected
    assert [as_text(r.get("ticket.extraField")) for r in rows] == ["", "x", "", ""]
    assert [as_text(r["note"]) for r in rows] == ["n1", "n2", "n3", "n4"]
    assert [r["outcome"] for r in rows] == ["linked", "linked", "failed", "linked"]
    assert rows[1]["ticket.title"] == "Custom title S2"
    assert as_text(rows[1]["ticket.ticketId"]) == "4242"
    assert rows[0]["ticket.title"] == "Ticket S1"


# -- atomic write ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "earlier"), [(".csv", True), (".xlsx", False)])
def test_report_is_written_atomically(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str, earlier: bool
) -> None:
    server = start_sandbox(latency=0.03)
    out = tmp_path / f"report{fmt}"
    old: bytes | None = None
    names = {"big.csv", out.name}
    if earlier:
        small = write_csv(
            tmp_path / "small.csv", [["sourceTicketId", "linkedTicketId"], ["A", "B"]]
        )
        names.add(small.name)
        result = run_against(server, "run", small, "-o", out, *FAST)
        assert result.exit_code == 0, result.stderr
        old = out.read_bytes()
    big = write_csv(
        tmp_path / "big.csv",
        [["sourceTicketId", "linkedTicketId"], *([f"S{i}", f"L{i}"] for i in range(40))],
    )
    env = {
        **os.environ,
        "THENA_TOKEN": TOKEN,
        "THENA_ORG_ID": ORG,
        "THENA_BASE_URL": server.url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(big), "-o", str(out),
         "--concurrency", "1", *FAST],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen: list[bytes | None] = []
    during_run = 0
    while proc.poll() is None:
        try:
            seen.append(out.read_bytes())
        except FileNotFoundError:
            seen.append(None)
        if len(server.requests) > 1 and proc.poll() is None:
            during_run += 1
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert during_run > 10, "the run ended before the report could be watched"
    final = out.read_bytes()
    allowed = {old, final}
    bad = [content for content in seen if content not in allowed]
    assert bad == [], f"{len(bad)} reads saw a partial or foreign report"
    _, rows = read_any(out)
    assert len(rows) == 40
    assert {p.name for p in tmp_path.iterdir()} == names  # no temp files left


# -- exit codes and the summary ----------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "code"),
    [
        pytest.param([["S1", "L1"], ["S2", "L2"]], 0, id="all-linked"),
        pytest.param([["S1", "L1"], ["S2", "L2"], ["S1", "L1"]], 0, id="duplicate-of-linked"),
        pytest.param([["S1", "L1"], ["MISSING2", "L2"]], 1, id="one-failed"),
        pytest.param([["S1", "L1"], ["S2", "S2"]], 1, id="one-self-link"),
        pytest.param([["S1", "L1"], ["", "L2"]], 1, id="one-blank"),
        pytest.param([["MISSING1", "L1"], ["MISSING1", "L1"]], 1, id="duplicate-of-failed"),
    ],
)
def test_exit_codes(sandbox: Sandbox, tmp_path: Path, pairs: list[list[str]], code: int) -> None:
    inp = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *pairs])
    out = tmp_path / "out.csv"
    result = run_against(sandbox, "run", inp, "-o", out, *FAST)
    assert result.exit_code == code, result.stderr
    assert len(read_report(out)) == len(pairs)


def has_count(line: str, name: str, n: int) -> bool:
    return bool(re.search(rf"\b{name}\b\W{{0,3}}{n}\b|\b{n}\W{{0,3}}{name}\b", line))


@pytest.mark.parametrize("explicit_output", [True, False])
def test_summary_last_line(sandbox: Sandbox, tmp_path: Path, explicit_output: bool) -> None:
    inp = write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId"],
            ["S1", "L1"],
            ["S2", "L2"],
            ["MISSING3", "L3"],
            ["S4", "S4"],
            ["S1", "L1"],
        ],
    )
    out = tmp_path / "chosen.csv" if explicit_output else tmp_path / "in.results.csv"
    args = ("-o", out) if explicit_output else ()
    result = run_against(sandbox, "run", inp, *args, *FAST)
    assert result.exit_code == 1, result.stderr
    assert out.exists()
    last = result.stderr.strip().splitlines()[-1]
    for name, n in (("linked", 2), ("failed", 1), ("invalid", 1), ("duplicate", 1)):
        assert has_count(last, name, n), (name, last)
    assert re.search(r"\d+(\.\d+)?\s?(s|sec|seconds)\b|\d+:\d\d", last), last
    assert str(out) in last or (not explicit_output and out.name in last), last
