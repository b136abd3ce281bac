"""Which columns hold the IDs and what an ID may be, end to end against the sandbox: column
detection and ties, IDs sent exactly as written, what is invalid and never sent (blanks,
self links, control characters, Excel numbers that lost digits, Excel error cells), and
duplicates sent once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import openpyxl
import pytest

from bulklink import link_pairs
from bulklink.models import Outcome
from bulklink.sandbox import Sandbox
from bulklink.tables.inputs import invalid_reason
from tests.helpers import (
    HEAD,
    ORG,
    TICKET_COLUMNS,
    TOKEN,
    files_in,
    ids,
    make_xlsx,
    one_line_error,
    one_line_usage_error,
    report_of,
    run,
    sent,
    sent_checked,
    write_csv,
)

# -- which columns hold the IDs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "row"),
    [
        (["other", "Source Ticket ID", "Linked Ticket ID"], ["o", "A1", "B1"]),
        (["other", "source_ticket_id", "linked_ticket_id"], ["o", "A1", "B1"]),
        (["other", "SOURCE-TICKET-ID", "LINKED-TICKET-ID"], ["o", "A1", "B1"]),
        (["other", "source", "linked"], ["o", "A1", "B1"]),
        (["other", " Linked Ticket ID ", "Source"], ["o", "B1", "A1"]),  # any order
    ],
    ids=["spaces", "underscores", "dashes-upper", "aliases", "reversed-order"],
)
def test_id_columns_are_detected(
    sandbox: Sandbox, tmp_path: Path, header: list[str], row: list[str]
) -> None:
    path = write_csv(tmp_path / "pairs.csv", [header, row])
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]
    report = report_of(path)
    assert ids(report) == [("A1", "B1")]
    assert report[0]["other"] == "o"


def test_explicit_columns(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [["from", "to", "parent", "child"], ["F1", "T1", "P1", "C1"]]
    path = write_csv(tmp_path / "pairs.csv", rows)
    result = run(sandbox, path, "--source-col", "parent", "--linked-col", "child")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("P1", "C1")]
    report = report_of(path)
    assert ids(report) == [("P1", "C1")]
    assert (report[0]["from"], report[0]["to"]) == ("F1", "T1")


def test_no_recognisable_columns_lists_the_columns(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [["ticket", "other ticket", "note"], ["A", "B", "n"]])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    for column in ("ticket", "other ticket", "note"):
        assert column in line
    assert sandbox.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_explicit_column_not_in_file_is_an_input_error(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [[*HEAD], ["A", "B"]])
    result = run(sandbox, path, "--source-col", "parent")
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "parent" in line and "sourceTicketId" in line
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (["source", "sourceTicketId", "linkedTicketId"], "S2"),  # exact beats the alias
        (["Source Ticket ID", "sourceTicketId", "linked"], "S2"),  # exact beats folded
        (["source", "Source_Ticket_Id", "linked"], "S2"),  # folded beats the alias
        (["SOURCE-TICKET-ID", "Source", "linked"], "S1"),
    ],
)
def test_the_most_exact_column_wins(
    sandbox: Sandbox, tmp_path: Path, header: list[str], source: str
) -> None:
    path = write_csv(tmp_path / "h.csv", [header, ["S1", "S2", "L"]])
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [(source, "L")]


@pytest.mark.parametrize(
    ("header", "flag", "candidates"),
    [
        (["source", "sourceTicketId.x", "Source", "linked"], "--source-col", ["source", "Source"]),
        (
            ["Source Ticket ID", "source_ticket_id", "linkedTicketId"],
            "--source-col",
            ["Source Ticket ID", "source_ticket_id"],
        ),
        (["sourceTicketId", "linked", "LINKED"], "--linked-col", ["linked", "LINKED"]),
        (
            ["sourceTicketId", "linkedTicketId", "linkedTicketId"],
            "--linked-col",
            ["linkedTicketId", "linkedTicketId.1"],
        ),
    ],
    ids=["alias-tie", "folded-tie", "linked-tie", "repeated-exact"],
)
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_a_tie_is_refused_listing_the_candidates(
    sandbox: Sandbox,
    tmp_path: Path,
    header: list[str],
    flag: str,
    candidates: list[str],
    dry: bool,
) -> None:
    path = write_csv(tmp_path / "h.csv", [header, ["a", "b", "c", "d"][: len(header)]])
    before = files_in(tmp_path)
    result = run(sandbox, path, *(["--dry-run"] if dry else []))
    line = one_line_usage_error(result)
    assert flag in line
    for name in candidates:
        assert repr(name) in line
    assert sandbox.requests == []
    assert files_in(tmp_path) == before


def test_a_tie_is_resolved_with_the_option(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "h.csv", [["Source Ticket ID", "source_ticket_id", "linked"], ["A", "B", "L"]]
    )
    result = run(sandbox, path, "--source-col", "source_ticket_id")
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("B", "L")]


def test_a_tie_in_an_xlsx_names_the_sheet(sandbox: Sandbox, tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "b.xlsx", {"Links": [["source", "Source", "linked"], [1, 2, 3]]})
    line = one_line_usage_error(run(sandbox, path))
    assert "'Links'" in line and "'source'" in line and "'Source'" in line
    assert sandbox.requests == []


# -- IDs are sent as written ------------------------------------------------------------------


def test_ids_are_sent_and_reported_exactly_as_written(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [
        ("00123", "0456"),
        ("12345678901234567890", "98765432109876543210"),
        ("  T-1  ", " T-2"),
        ("NA", "null"),
        ("1e5", "1.0"),
        ("+44", "-0"),
    ]
    path = write_csv(tmp_path / "ids.csv", [HEAD, *map(list, rows)])
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    expected = [
        ("00123", "0456"),
        ("12345678901234567890", "98765432109876543210"),
        ("T-1", "T-2"),
        ("NA", "null"),
        ("1e5", "1.0"),
        ("+44", "-0"),
    ]
    assert sorted(sent_checked(sandbox)) == sorted(expected)
    raw = b"".join(r.body for r in sandbox.requests)
    assert b'"00123"' in raw
    assert b'"12345678901234567890"' in raw
    report = report_of(path)
    assert ids(report) == expected
    assert [r["outcome"] for r in report] == ["linked"] * 6
    # the ticket the API returned (its id is the source); "+44" is left out: the CSV report
    # deliberately quote-prefixes API text starting with + - = @ (CSV injection guard)
    assert [r["ticket.id"] for r in report[:5]] == [s for s, _ in expected[:5]]


def test_excel_numbers_beyond_15_digits_are_invalid_others_sent_as_written(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    cut = [
        1.234567890123457e19,  # pandas made this 12345678901234569216
        9.876543210987654e17,
        1.23456789012345e19,  # what Excel keeps of a typed 20-digit ID: zeros at the end
        1234567890123456,  # 16 digits: Excel would have zeroed the last one
        0.12345678901234568,
    ]
    good: list[tuple[object, str]] = [
        (123, "123"),
        (456.0, "456"),
        (123456789012345, "123456789012345"),
        (12.5, "12.5"),
    ]
    rows: list[Sequence[object]] = [[*HEAD, "note"]]
    rows += [[value, f"L{i}", "cut"] for i, value in enumerate(cut)]
    rows += [[value, f"G{i}", "good"] for i, (value, _) in enumerate(good)]
    rows += [["T-1", 1.2345678901234567e20, "cut linked"]]
    path = make_xlsx(tmp_path / "n.xlsx", {"Sheet": rows})
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sorted(sent(sandbox)) == sorted((text, f"G{i}") for i, (_, text) in enumerate(good))
    raw = b"".join(r.body for r in sandbox.requests)
    assert b"12345678901234569216" not in raw and b".0" not in raw
    report = report_of(path)
    assert [r["outcome"] for r in report] == ["invalid"] * 5 + ["linked"] * 4 + ["invalid"]
    for row in [*report[:5], report[-1]]:
        assert "lost digits" in row["error"] and "format the column as text" in row["error"]
        assert row["attempts"] == "0"
    assert "linkedTicketId" in report[-1]["error"]
    assert report[0]["sourceTicketId"] == "1.234567890123457e+19"  # what the file holds


def test_dry_run_shows_lost_digits_without_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "n.xlsx", {"Sheet": [HEAD, [1.234567890123457e19, "L"]]})
    result = run(sandbox, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "lost digits" in result.output
    assert sandbox.requests == []


# -- what cannot be an ID is invalid and never sent -------------------------------------------


def test_blank_and_self_links_are_invalid_and_not_sent(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [
        HEAD,
        ["", "B"],
        ["A", ""],
        ["   ", "  "],
        ["C", "C"],
        [" D ", "D"],  # the same ticket once trimmed
        ["E", "F"],
    ]
    path = write_csv(tmp_path / "pairs.csv", rows)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("E", "F")]
    report = report_of(path)
    assert [r["row"] for r in report] == ["1", "2", "3", "4", "5", "6"]
    assert [r["outcome"] for r in report] == ["invalid"] * 5 + ["linked"]
    for r in report[:5]:
        assert r["success"] == "false"
        assert r["http_status"] == ""
        assert r["ticket.id"] == ""
    blank = re.compile(r"blank|empty|missing", re.I)
    same = re.compile(r"same|itself|self", re.I)
    assert blank.search(report[0]["error"]) and "source" in report[0]["error"].lower()
    assert blank.search(report[1]["error"]) and "linked" in report[1]["error"].lower()
    assert blank.search(report[2]["error"])
    assert same.search(report[3]["error"])
    assert same.search(report[4]["error"])
    assert report[5]["error"] == ""


BAD_CHARS = {
    "\x00": "U+0000 NUL",
    "\x01": "U+0001 SOH",
    "\t": "U+0009 TAB",
    "\n": "U+000A LF",
    "\r": "U+000D CR",
    "\x1b": "U+001B ESC",
    "\x1f": "U+001F US",
    "\x7f": "U+007F DEL",
    "\x85": "U+0085 NEL",
    "\x9b": "U+009B CSI",
    "\u2028": "U+2028 LINE SEPARATOR",
    "\u2029": "U+2029 PARAGRAPH SEPARATOR",
    "\ufeff": "U+FEFF ZERO WIDTH NO-BREAK SPACE",
    "\u200b": "U+200B ZERO WIDTH SPACE",
    "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "\ufffd": "U+FFFD REPLACEMENT CHARACTER",
    # What Unicode shows as nothing beyond Cf, and the Braille blank: a cell of one looks
    # blank, an ID with one looks like another ID.
    "\u3164": "U+3164 HANGUL FILLER",
    "\uffa0": "U+FFA0 HALFWIDTH HANGUL FILLER",
    "\u2800": "U+2800 BRAILLE PATTERN BLANK",
    "\ufe0f": "U+FE0F VARIATION SELECTOR-16",
    "\U000e0100": "U+E0100 VARIATION SELECTOR-17",
    "\u034f": "U+034F COMBINING GRAPHEME JOINER",
    "\u115f": "U+115F HANGUL CHOSEONG FILLER",
    "\u17b4": "U+17B4 KHMER VOWEL INHERENT AQ",
    "\u180b": "U+180B MONGOLIAN FREE VARIATION SELECTOR ONE",
}


@pytest.mark.parametrize("side", ["source", "linked"])
@pytest.mark.parametrize("char", list(BAD_CHARS), ids=[n.split()[0] for n in BAD_CHARS.values()])
def test_id_with_a_control_character_is_invalid_and_not_sent(
    sandbox: Sandbox, tmp_path: Path, char: str, side: str
) -> None:
    bad = (f"T{char}1", "L1") if side == "source" else ("T1", f"L{char}1")
    path = write_csv(tmp_path / "ids.csv", [HEAD, ["A1", "B1"], list(bad), ["A3", "B3"]])
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A3", "B3")]
    rows = report_of(path)
    assert [r["outcome"] for r in rows] == ["linked", "invalid", "linked"]
    assert (
        rows[1]["error"] == f"{side} ticket ID contains " + rows[1]["error"].split("contains ")[1]
    )
    assert f"({BAD_CHARS[char]})" in rows[1]["error"]
    assert rows[1]["attempts"] == "0"
    assert (rows[1]["sourceTicketId"], rows[1]["linkedTicketId"]) == bad  # kept as written


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\u2028", "\u200b"])
def test_dry_run_names_the_character_and_sends_nothing(
    sandbox: Sandbox, tmp_path: Path, char: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", [HEAD, ["A1", "B1"], [f"X{char}Y", "B2"]])
    result = run(sandbox, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert BAD_CHARS[char] in result.output
    assert "invalid 1" in result.output
    assert sandbox.requests == []


def test_bad_character_at_an_edge_is_refused_but_whitespace_is_trimmed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = [
        ["\tT1 \r\n", "\u00a0L1 "],  # tabs, line ends and no-break spaces around: trimmed
        ["T2\x1c", "L2"],  # an information separator is no whitespace to trim
        ["\ufeffT3", "L3"],  # a BOM glued to the front of an ID
        ["T4", "\x00"],
    ]
    path = write_csv(tmp_path / "ids.csv", [HEAD, *rows])
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sorted(sent(sandbox)) == [("T1", "L1")]
    report = report_of(path)
    assert [r["outcome"] for r in report] == ["linked", "invalid", "invalid", "invalid"]
    assert "U+001C" in report[1]["error"]
    assert "U+FEFF" in report[2]["error"]
    assert report[3]["error"] == "linked ticket ID contains a control character (U+0000 NUL)"


@pytest.mark.parametrize("char", list(BAD_CHARS), ids=[n.split()[0] for n in BAD_CHARS.values()])
def test_python_callers_get_the_same_rule(char: str) -> None:
    reason = invalid_reason(f"A{char}B", "C")
    assert reason is not None and BAD_CHARS[char] in reason and reason.startswith("source")
    reason = invalid_reason("C", f"A{char}B")
    assert reason is not None and BAD_CHARS[char] in reason and reason.startswith("linked")
    assert invalid_reason("A", "#N/A") == "Excel error #N/A in linkedTicketId"
    assert invalid_reason("A B", "C-1") is None


def test_link_pairs_treats_none_and_nan_as_blank(sandbox: Sandbox) -> None:
    async def collect() -> list[tuple[str, str, Outcome]]:
        pairs: list[tuple[str | None, str | float]] = [
            (None, "B1"),
            ("A2", float("nan")),
            ("A3", "B3"),
        ]
        return [
            (r.source, r.linked, r.outcome)
            async for r in link_pairs(pairs, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0)
        ]

    results = sorted(asyncio.run(collect()))
    assert results == [
        ("", "B1", Outcome.INVALID),
        ("A2", "", Outcome.INVALID),
        ("A3", "B3", Outcome.LINKED),
    ]
    assert [json.loads(r.body) for r in sandbox.requests] == [
        {"sourceTicketId": "A3", "linkedTicketId": "B3"}
    ]


EXCEL_ERRORS = [
    "#N/A",
    "#REF!",
    "#DIV/0!",
    "#VALUE!",
    "#NAME?",
    "#NUM!",
    "#NULL!",
    "#SPILL!",
    "#CALC!",
    "#GETTING_DATA",
]


def error_book(path: Path, errors: list[str], column: int) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append([*HEAD, "note"])
    ws.append(["A0", "B0", "fine"])
    for i, error in enumerate(errors, start=1):
        ws.append([f"A{i}", f"B{i}", "lookup"])
        cell = ws.cell(row=i + 2, column=column)
        cell.value = error
        cell.data_type = "e"
    wb.save(path)
    return path


@pytest.mark.parametrize("column", [1, 2], ids=["source", "linked"])
def test_excel_error_cells_are_invalid_and_the_rest_runs(
    sandbox: Sandbox, tmp_path: Path, column: int
) -> None:
    path = error_book(tmp_path / "e.xlsx", EXCEL_ERRORS, column)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert sorted(sent(sandbox)) == [("A0", "B0")]
    report = report_of(path)
    assert [r["outcome"] for r in report] == ["linked"] + ["invalid"] * len(EXCEL_ERRORS)
    name = HEAD[column - 1]
    assert [r["error"] for r in report[1:]] == [f"Excel error {e} in {name}" for e in EXCEL_ERRORS]
    assert [r["note"] for r in report] == ["fine"] + ["lookup"] * len(EXCEL_ERRORS)


@pytest.mark.parametrize("error", ["#N/A", "#REF!", "#DIV/0!", "#SPILL!"])
def test_excel_error_cell_dry_run_sends_nothing(
    sandbox: Sandbox, tmp_path: Path, error: str
) -> None:
    path = error_book(tmp_path / "e.xlsx", [error], 2)
    result = run(sandbox, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"Excel error {error} in linkedTicketId" in result.output
    assert sandbox.requests == []


def test_excel_errors_exported_to_csv_are_invalid_too(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [HEAD, ["A0", "B0"], ["#N/A", "B1"], ["A2", "#VALUE!"], ["#REF!", "#REF!"]]
    path = write_csv(tmp_path / "e.csv", rows)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sorted(sent(sandbox)) == [("A0", "B0")]
    errors = [r["error"] for r in report_of(path)]
    assert errors[1:] == [
        "Excel error #N/A in sourceTicketId",
        "Excel error #VALUE! in linkedTicketId",
        "Excel error #REF! in sourceTicketId",  # not "the same ticket": a failed lookup
    ]


# -- duplicates -------------------------------------------------------------------------------


def test_duplicates_are_sent_once_and_share_the_first_result(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = [
        HEAD,
        ["A1", "B1"],  # 1 linked
        ["MISSING1", "B2"],  # 2 failed (404)
        ["A1", "B1"],  # 3 duplicate of 1
        [" A1 ", "B1 "],  # 4 duplicate of 1 once trimmed
        ["MISSING1", "B2"],  # 5 duplicate of 2
        ["B1", "A1"],  # 6 reversed: a different pair
        ["a1", "B1"],  # 7 different case: a different pair
    ]
    path = write_csv(tmp_path / "pairs.csv", rows)
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert Counter(sent_checked(sandbox)) == Counter(
        {("A1", "B1"): 1, ("MISSING1", "B2"): 1, ("B1", "A1"): 1, ("a1", "B1"): 1}
    )
    report = report_of(path)
    assert [r["outcome"] for r in report] == [
        "linked",
        "failed",
        "duplicate",
        "duplicate",
        "duplicate",
        "linked",
        "linked",
    ]
    first, failed = report[0], report[1]
    assert first["ticket.id"] == "A1"
    for dup in (report[2], report[3]):
        assert (dup["sourceTicketId"], dup["linkedTicketId"]) == ("A1", "B1")
        assert dup["success"] == "true"
        assert dup["http_status"] == "200"
        assert {k: dup[k] for k in TICKET_COLUMNS} == {k: first[k] for k in TICKET_COLUMNS}
        assert re.search(r"\brow 1\b", dup["error"]), dup["error"]
    dup = report[4]
    assert failed["http_status"] == "404"
    assert dup["success"] == "false"
    assert dup["http_status"] == "404"
    assert re.search(r"\brow 2\b", dup["error"]), dup["error"]
    assert "MISSING1" in dup["error"]  # carries why the first one failed
    assert all(dup[k] == "" for k in TICKET_COLUMNS)


def test_duplicates_of_linked_rows_exit_zero(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [HEAD, ["A", "B"], ["C", "D"], ["A", "B"]])
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert len(sandbox.requests) == 2
    assert [r["outcome"] for r in report_of(path)] == ["linked", "linked", "duplicate"]


@pytest.mark.parametrize("value", ["Err:502", "Err:522", "Loading...", "#NV", "#WERT!", "#N/D"])
def test_libreoffice_and_google_sheets_errors_are_invalid_like_excels(
    sandbox: Sandbox, tmp_path: Path, value: str
) -> None:
    """LibreOffice's CSV export writes Err:5xx where Excel writes #VALUE!, and Google
    Sheets 'Loading...' for a formula still waiting: they were sent as ticket IDs."""
    path = write_csv(tmp_path / "ids.csv", [HEAD, ["A1", "B1"], [value, "B2"]])
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent(sandbox) == [("A1", "B1")]
    kind = "Excel error" if value.startswith("#") else "spreadsheet error"
    assert report_of(path)[1]["error"] == f"{kind} {value} in sourceTicketId"
