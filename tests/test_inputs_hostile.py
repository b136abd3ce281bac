"""Hostile inputs, end to end: what cannot be an ID is never sent, and no file is a traceback.

Each class of problem is tried with several cases of its kind: control and invisible
characters inside IDs, ambiguous headers, Excel numbers that lost digits, Excel error
cells, line ends and encodings, files that are not text at all, hidden and empty sheets,
and JSON-lines reports holding lines that are not rows. Every case runs through the CLI
against the sandbox on 127.0.0.1; what is asserted is the exit code, the one-line error,
the report's rows and exactly what the server received.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import random
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import openpyxl
import pytest
from click.testing import Result

from bulklink.inputs import invalid_reason
from bulklink.sandbox import Sandbox
from tests.conftest import invoke, read_report, run_against, write_csv

HEAD = ["sourceTicketId", "linkedTicketId"]
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


# -- helpers ---------------------------------------------------------------------------
def sent(server: Sandbox) -> list[tuple[str, str]]:
    pairs = []
    for request in server.requests:
        body = json.loads(request.body)
        pairs.append((body["sourceTicketId"], body["linkedTicketId"]))
    return sorted(pairs)


def run(server: Sandbox, path: Path, *extra: str | Path) -> Result:
    return run_against(
        server, "run", path, "--rate", "0", "--backoff", "0.01", "--no-progress", *extra
    )


def report_of(path: Path) -> list[dict[str, str]]:
    return read_report(path.with_name(f"{path.stem}.results.csv"))


def one_line_error(result: Result) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bulklink: error: "), lines[0]
    return lines[0]


def make_xlsx(path: Path, sheets: dict[str, Sequence[Sequence[object]]]) -> Path:
    wb = openpyxl.Workbook()
    for sheet in list(wb.worksheets):
        wb.remove(sheet)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- 1. characters no ID holds ------------------------------------------------------------
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
    assert sent(sandbox) == [("A1", "B1"), ("A3", "B3")]
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
    assert sent(sandbox) == [("T1", "L1")]
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


def test_control_characters_in_an_xlsx_report_do_not_crash_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [HEAD, ["A\x00B", "C"], ["A\x1bB", "D"], ["E", "F"]])
    out = tmp_path / "out.xlsx"
    result = run(sandbox, path, "-o", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert sent(sandbox) == [("E", "F")]
    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    values = [[c.value for c in row] for row in sheet.iter_rows(min_row=2, max_col=5)]
    assert [v[4] for v in values] == ["invalid", "invalid", "linked"]
    assert values[0][1] == "A\u2400B" and values[1][1] == "A\u241bB"  # control pictures


# -- 2. ambiguous headers -----------------------------------------------------------------
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
    assert sent(sandbox) == [(source, "L")]


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
    line = one_line_error(result)
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
    assert sent(sandbox) == [("B", "L")]


def test_a_tie_in_an_xlsx_names_the_sheet(sandbox: Sandbox, tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "b.xlsx", {"Links": [["source", "Source", "linked"], [1, 2, 3]]})
    line = one_line_error(run(sandbox, path))
    assert "'Links'" in line and "'source'" in line and "'Source'" in line
    assert sandbox.requests == []


# -- 3. Excel numbers that lost digits ----------------------------------------------------
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
    assert sent(sandbox) == sorted((text, f"G{i}") for i, (_, text) in enumerate(good))
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


# -- 4. Excel error cells ------------------------------------------------------------------
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
    assert sent(sandbox) == [("A0", "B0")]
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
    assert sent(sandbox) == [("A0", "B0")]
    errors = [r["error"] for r in report_of(path)]
    assert errors[1:] == [
        "Excel error #N/A in sourceTicketId",
        "Excel error #VALUE! in linkedTicketId",
        "Excel error #REF! in sourceTicketId",  # not "the same ticket": a failed lookup
    ]


# -- 5. line ends, encodings and files that are not text ----------------------------------
TEXT = "sourceTicketId\tlinkedTicketId\tnote\r\nÉ-1\tL-1\tcafé\r\nT-2\tL-2\t€\r\n"


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xff\xfe" + TEXT.encode("utf-16-le"),
        b"\xfe\xff" + TEXT.encode("utf-16-be"),
        b"\xff\xfe\x00\x00" + TEXT.encode("utf-32-le"),
        b"\x00\x00\xfe\xff" + TEXT.encode("utf-32-be"),
        b"\xef\xbb\xbf" + TEXT.encode("utf-8"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-8-sig"],
)
def test_unicode_text_with_a_bom_is_read(sandbox: Sandbox, tmp_path: Path, encoded: bytes) -> None:
    path = tmp_path / "export.txt"
    path.write_bytes(encoded)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("T-2", "L-2"), ("É-1", "L-1")]
    assert [r["note"] for r in report_of(path)] == ["café", "€"]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_line_ends_of_any_platform(sandbox: Sandbox, tmp_path: Path, newline: bytes) -> None:
    lines = [b"sourceTicketId,linkedTicketId,note", b"A1,B1,x", b'A2,B2,"two' + newline + b'lines"']
    path = tmp_path / "mac.csv"
    path.write_bytes(newline.join(lines) + newline)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("A1", "B1"), ("A2", "B2")]


def _noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _zip(names: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in names.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _xlsx_bytes() -> bytes:
    buf = io.BytesIO()
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(HEAD)
    ws.append(["A", "B"])
    wb.save(buf)
    return buf.getvalue()


GARBAGE: dict[str, Callable[[], bytes]] = {
    "noise-4k": lambda: _noise(1, 4096),
    "noise-200": lambda: _noise(2, 200),
    "noise-1m": lambda: _noise(3, 1 << 20),
    "png": lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _noise(4, 300),
    "zip": lambda: _zip({"readme.txt": "hello"}),
    "gzip": lambda: gzip.compress(b"sourceTicketId,linkedTicketId\nA,B\n" * 50),
    "bzip2": lambda: bz2.compress(b"sourceTicketId,linkedTicketId\nA,B\n"),
    "pdf": lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + _noise(5, 500),
    "xlsx": _xlsx_bytes,
}


@pytest.mark.parametrize("make", list(GARBAGE.values()), ids=list(GARBAGE))
@pytest.mark.parametrize(
    "command", [["run"], ["run", "--dry-run"], ["retry"], ["report"]], ids=lambda c: "-".join(c)
)
def test_a_file_that_is_not_text_is_one_line_exit_2(
    sandbox: Sandbox, tmp_path: Path, make: Callable[[], bytes], command: list[str]
) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(make())
    before = files_in(tmp_path)
    if command == ["report"]:
        result = invoke("report", path)
    else:
        result = run_against(sandbox, *command, path, "--rate", "0", "--no-progress")
    line = one_line_error(result)
    assert "not" in line.replace(str(path), "")
    assert sandbox.requests == []
    assert files_in(tmp_path) == before


def test_an_xlsx_named_csv_says_so(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(_xlsx_bytes())
    assert ".xlsx" in one_line_error(run(sandbox, path)).replace(str(path), "")


@pytest.mark.parametrize(
    ("data", "extra"),
    [
        ("Référence source,Référence liée\nA,B\n".encode().decode("cp1252").encode(), []),
        ("sourceTicketId,linkedTicketId\nA,B\n".encode("utf-16-le"), []),  # no BOM
        ("Identifiant,Lié\nA,B\n".encode("cp1252"), ["--encoding", "utf-8"]),  # U+FFFD
        (b"\xef\xbb\xbf" + b"Quelle,Cible\nA,B\n", ["--encoding", "cp1252"]),  # ï»¿
    ],
    ids=["utf8-as-cp1252", "utf16-no-bom", "cp1252-as-utf8", "bom-as-cp1252"],
)
def test_mis_decoded_header_suggests_encoding(
    sandbox: Sandbox, tmp_path: Path, data: bytes, extra: list[str]
) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(data)
    line = one_line_error(run(sandbox, path, *extra))
    assert "--encoding" in line and "no source ticket ID column" in line
    assert sandbox.requests == []


def test_plain_missing_columns_do_not_blame_the_encoding(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [["Référence", "Cible"], ["A", "B"]])
    assert "--encoding" not in one_line_error(run(sandbox, path))


def test_broken_csv_far_into_the_file_is_one_line_and_nothing_sent(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = "".join(f"S{i},L{i}\n" for i in range(60_000))  # beyond the first 50,000-row chunk
    path = tmp_path / "big.csv"
    path.write_text("sourceTicketId,linkedTicketId\n" + rows + 'S,"never closed\n')
    before = files_in(tmp_path)
    for extra in ([], ["--dry-run"]):
        line = one_line_error(run(sandbox, path, *extra))
        assert "CSV" in line
    assert sandbox.requests == []
    assert files_in(tmp_path) == before


# -- 6. sheets ----------------------------------------------------------------------------
def test_hidden_first_sheet_is_passed_over_for_the_first_visible(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    wb = openpyxl.Workbook()
    lookup = wb.active
    assert lookup is not None
    lookup.title = "Lookup"
    lookup.append(["sourceTicketId", "linkedTicketId"])
    lookup.append(["HIDDEN1", "HIDDEN2"])
    lookup.sheet_state = "hidden"
    links = wb.create_sheet("Links")
    links.append(HEAD)
    links.append(["K1", "M1"])
    path = tmp_path / "book.xlsx"
    wb.save(path)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("K1", "M1")]
    result = run(sandbox, path, "--sheet", "Lookup")  # still reachable by name
    assert result.exit_code == 0, result.output
    assert ("HIDDEN1", "HIDDEN2") in sent(sandbox)


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_empty_first_sheet_is_named_with_the_others(
    sandbox: Sandbox, tmp_path: Path, dry: bool
) -> None:
    path = make_xlsx(tmp_path / "b.xlsx", {"Cover": [], "Links": [HEAD, ["A", "B"]]})
    line = one_line_error(run(sandbox, path, *(["--dry-run"] if dry else [])))
    assert "'Cover'" in line and "empty" in line and "'Links'" in line and "--sheet" in line
    assert sandbox.requests == []


def test_first_sheet_without_id_columns_names_it_and_lists_hidden_ones(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    wb = openpyxl.Workbook()
    notes = wb.active
    assert notes is not None
    notes.title = "Notes"
    notes.append(["when", "what"])
    wb.create_sheet("Links").append(HEAD)
    wb.create_sheet("Old").sheet_state = "hidden"
    path = tmp_path / "b.xlsx"
    wb.save(path)
    line = one_line_error(run(sandbox, path))
    assert "sheet 'Notes'" in line and "'when'" in line
    assert "'Links'" in line and "'Old' (hidden)" in line and "--sheet" in line
    line = one_line_error(run(sandbox, path, "--sheet", "Nope"))
    assert "'Nope'" in line and "'Old' (hidden)" in line
    assert sandbox.requests == []


# -- 7. JSON-lines reports holding lines that are not rows --------------------------------
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
        result = invoke("report", path)
    else:
        result = run_against(sandbox, "retry", path, "--rate", "0", "--no-progress")
    line = one_line_error(result)
    assert "line 3" in line
    assert sandbox.requests == []
    assert path.read_bytes() == content
    assert files_in(tmp_path) == ["old.jsonl"]


def test_jsonl_with_a_line_separator_inside_a_string_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    line = json.dumps({**GOOD_LINE, "error": "HTTP 503 a\u2028b"}, ensure_ascii=False)
    path.write_text(line + "\n", encoding="utf-8")
    result = invoke("report", path)
    assert result.exit_code == 1, result.output
    assert "failed 1" in result.output
