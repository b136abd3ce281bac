"""Every input case of ``bulklink run``, end to end over real HTTP against the sandbox.

What is asserted is what a user sees: the report's rows and columns, the exit code, the
messages on stderr/stdout, and what the (simulated) API actually received.
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import openpyxl
import pytest
from click.testing import Result

from bulklink.sandbox import TICKET_FIELDS, Reply, Sandbox
from tests.conftest import ORG, TOKEN, invoke, read_report, run_against, write_csv

HEAD = ["sourceTicketId", "linkedTicketId"]
RESULT_COLUMNS = [
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
TICKET_COLUMNS = [f"ticket.{name}" for name in TICKET_FIELDS]


# -- helpers ---------------------------------------------------------------------------
def sent(server: Sandbox) -> list[tuple[str, str]]:
    """The (source, linked) pairs the server received, in arrival order; IDs must be strings."""
    pairs = []
    for request in server.requests:
        assert request.method == "PATCH"
        assert request.path == "/v1/tickets/link"
        body = json.loads(request.body)
        assert set(body) == {"sourceTicketId", "linkedTicketId"}, body
        assert isinstance(body["sourceTicketId"], str), body
        assert isinstance(body["linkedTicketId"], str), body
        pairs.append((body["sourceTicketId"], body["linkedTicketId"]))
    return pairs


def run(server: Sandbox, path: Path, *extra: str) -> Result:
    return run_against(server, "run", path, "--rate", "0", "--no-progress", *extra)


def report_of(path: Path) -> list[dict[str, str]]:
    return read_report(path.with_name(f"{path.stem}.results.csv"))


def report_header(path: Path) -> list[str]:
    report = path.with_name(f"{path.stem}.results.csv")
    with report.open(newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def ids(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["sourceTicketId"], r["linkedTicketId"]) for r in rows]


def one_line_error(result: Result) -> str:
    """stderr must be one clear line, never a traceback."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def make_xlsx(
    path: Path, sheets: Mapping[str, Sequence[Sequence[object]]], active: int = 0
) -> Path:
    wb = openpyxl.Workbook()
    for sheet in list(wb.worksheets):
        wb.remove(sheet)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.active = active
    wb.save(path)
    return path


# -- IDs are sent verbatim --------------------------------------------------------------
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
    assert sorted(sent(sandbox)) == sorted(expected)
    raw = b"".join(r.body for r in sandbox.requests)
    assert b'"00123"' in raw
    assert b'"12345678901234567890"' in raw
    report = report_of(path)
    assert ids(report) == expected
    assert [r["outcome"] for r in report] == ["linked"] * 6
    # the ticket the API returned (its id is the source); "+44" is left out: the CSV report
    # deliberately quote-prefixes API text starting with + - = @ (CSV injection guard)
    assert [r["ticket.id"] for r in report[:5]] == [s for s, _ in expected[:5]]


# -- Excel ----------------------------------------------------------------------------
def test_xlsx_numbers_are_sent_as_written_and_text_verbatim(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = make_xlsx(
        tmp_path / "pairs.xlsx",
        {
            "Links": [
                ["Source Ticket ID", "Linked Ticket ID", "note"],
                [123, 456, 7],
                ["00123", "  T-9  ", "text"],
                ["12345678901234567890", "X1", 1.5],
                [None, "X2", "blank source"],
            ]
        },
    )
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output  # the blank row is invalid
    assert sorted(sent(sandbox)) == sorted(
        [("123", "456"), ("00123", "T-9"), ("12345678901234567890", "X1")]
    )
    raw = b"".join(r.body for r in sandbox.requests)
    assert b"123.0" not in raw and b"456.0" not in raw
    report = report_of(path)
    assert ids(report) == [
        ("123", "456"),
        ("00123", "T-9"),
        ("12345678901234567890", "X1"),
        ("", "X2"),
    ]
    assert [r["outcome"] for r in report] == ["linked", "linked", "linked", "invalid"]
    assert [r["note"] for r in report] == ["7", "text", "1.5", "blank source"]


def two_sheets(tmp_path: Path) -> Path:
    # The *active* sheet is the second one: the default must still be the first.
    return make_xlsx(
        tmp_path / "book.xlsx",
        {
            "Summary": [HEAD, ["S1", "L1"], ["S2", "L2"]],
            "Links": [HEAD, ["K1", "M1"]],
        },
        active=1,
    )


def test_xlsx_default_is_the_first_sheet(sandbox: Sandbox, tmp_path: Path) -> None:
    path = two_sheets(tmp_path)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("S1", "L1"), ("S2", "L2")]
    assert ids(report_of(path)) == [("S1", "L1"), ("S2", "L2")]


def test_xlsx_sheet_option_picks_the_sheet(sandbox: Sandbox, tmp_path: Path) -> None:
    path = two_sheets(tmp_path)
    result = run(sandbox, path, "--sheet", "Links")
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("K1", "M1")]
    assert ids(report_of(path)) == [("K1", "M1")]


def test_xlsx_missing_sheet_is_an_input_error(sandbox: Sandbox, tmp_path: Path) -> None:
    path = two_sheets(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(sandbox, path, "--sheet", "Nope")
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "Nope" in line
    assert sandbox.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- CSV dialects and encodings ---------------------------------------------------------
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=["comma", "semi", "tab", "pipe"])
def test_csv_delimiter_is_detected(sandbox: Sandbox, tmp_path: Path, delimiter: str) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "hello, world"], ["A2", "B2", "x; y"]]
    path = write_csv(tmp_path / "pairs.csv", rows, delimiter=delimiter)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    report = report_of(path)
    assert ids(report) == [("A1", "B1"), ("A2", "B2")]
    assert [r["note"] for r in report] == ["hello, world", "x; y"]


def test_tsv_extension(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "a,b;c|d"], ["A2", "B2", ""]]
    path = write_csv(tmp_path / "pairs.tsv", rows, delimiter="\t")
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    report = report_of(path)
    assert [r["note"] for r in report] == ["a,b;c|d", ""]


@pytest.mark.parametrize(
    "header",
    [[*HEAD, "note"], ["note", *HEAD]],
    ids=["id-column-first", "other-column-first"],
)
def test_utf8_bom_header_is_detected(sandbox: Sandbox, tmp_path: Path, header: list[str]) -> None:
    values = {"sourceTicketId": "A1", "linkedTicketId": "B1", "note": "ünïcode"}
    path = write_csv(
        tmp_path / "bom.csv", [header, [values[h] for h in header]], encoding="utf-8-sig"
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("A1", "B1")]
    assert report_header(path)[-1] == "note"  # no BOM glued to a carried column name
    assert report_of(path)[0]["note"] == "ünïcode"


def test_cp1252_bytes_fall_back_and_run(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "café"], ["A2", "B2", "naïve \u2013 5€"]]
    path = write_csv(tmp_path / "legacy.csv", rows, encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    assert [r["note"] for r in report_of(path)] == ["café", "naïve \u2013 5€"]


def test_encoding_option_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "Привет"]]
    path = write_csv(tmp_path / "cyr.csv", rows, encoding="cp1251")
    result = run(sandbox, path, "--encoding", "cp1251")
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("A1", "B1")]
    assert report_of(path)[0]["note"] == "Привет"


@pytest.mark.parametrize(("option", "delimiter"), [("|", "|"), ("tab", "\t")])
def test_delimiter_option_overrides_detection(
    sandbox: Sandbox, tmp_path: Path, option: str, delimiter: str
) -> None:
    # A header with commas in it makes ',' look as plausible as the real delimiter.
    rows = [[*HEAD, "notes, comments, remarks"], ["A1", "B1", "x, y, z"]]
    path = write_csv(tmp_path / "pairs.csv", rows, delimiter=delimiter)
    result = run(sandbox, path, "--delimiter", option)
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("A1", "B1")]
    report = report_of(path)
    assert report[0]["notes, comments, remarks"] == "x, y, z"


def test_cp1252_byte_far_into_a_large_file_still_falls_back(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # The only non-UTF-8 byte comes after the first 64 KiB: detection must see the whole file.
    lines = ["sourceTicketId,linkedTicketId,note"] + ["A1,B1,padding padding"] * 4000
    data = ("\n".join(lines) + "\nA2,B2,café\n").encode("cp1252")
    assert data.index(b"\xe9") > 65536
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    report = report_of(path)
    assert len(report) == 4001
    assert report[-1]["note"] == "café"
    assert report[-1]["row"] == "4001"


def test_windows_excel_export(sandbox: Sandbox, tmp_path: Path) -> None:
    """BOM, ';', CRLF, a quoted note spanning lines, upper-case extension."""
    text = (
        "\ufeffSource Ticket ID;Linked Ticket ID;Note\r\n"
        'A1;B1;"first line\r\nsecond; line"\r\n'
        "A2;B2;plain\r\n"
    )
    path = tmp_path / "EXPORT.CSV"
    path.write_bytes(text.encode("utf-8"))
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    report = report_of(path)
    assert ids(report) == [("A1", "B1"), ("A2", "B2")]
    assert [r["Note"] for r in report] == ["first line\r\nsecond; line", "plain"]


def test_trailing_delimiter_on_every_row_keeps_the_columns(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Some exporters end every data row with the delimiter; the IDs must not shift a column.
    path = tmp_path / "pairs.csv"
    path.write_text("sourceTicketId,linkedTicketId\nA1,B1,\nA2,B2,\n")
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]
    assert ids(report_of(path)) == [("A1", "B1"), ("A2", "B2")]


def test_extra_cell_in_first_row_never_shifts_ids(sandbox: Sandbox, tmp_path: Path) -> None:
    # More cells than header names: either ignore the extra cell or refuse the file;
    # linking "B1" to "extra" would link the wrong tickets.
    path = tmp_path / "pairs.csv"
    path.write_text("sourceTicketId,linkedTicketId\nA1,B1,extra\nA2,B2\n")
    result = run(sandbox, path)
    assert set(sent(sandbox)) <= {("A1", "B1"), ("A2", "B2")}, sent(sandbox)
    if result.exit_code == 2:
        one_line_error(result)
        assert sandbox.requests == []
    else:
        assert result.exit_code == 0, result.output
        assert ids(report_of(path)) == [("A1", "B1"), ("A2", "B2")]


def test_repeated_column_name_is_carried_not_a_crash(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [[*HEAD, "note", "note"], ["A1", "B1", "x", "y"]])
    result = run(sandbox, path)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("A1", "B1")]
    with (tmp_path / "pairs.results.csv").open(newline="", encoding="utf-8") as fh:
        header, row = list(csv.reader(fh))
    assert header[:2] == RESULT_COLUMNS[:2]
    assert [h.startswith("note") for h in header[-2:]] == [True, True]
    assert row[-2:] == ["x", "y"]


# -- column detection ------------------------------------------------------------------
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
    assert sent(sandbox) == [("A1", "B1")]
    report = report_of(path)
    assert ids(report) == [("A1", "B1")]
    assert report[0]["other"] == "o"


def test_explicit_columns(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [["from", "to", "parent", "child"], ["F1", "T1", "P1", "C1"]]
    path = write_csv(tmp_path / "pairs.csv", rows)
    result = run(sandbox, path, "--source-col", "parent", "--linked-col", "child")
    assert result.exit_code == 0, result.output
    assert sent(sandbox) == [("P1", "C1")]
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


# -- validation ------------------------------------------------------------------------
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
    assert sent(sandbox) == [("E", "F")]
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
    assert Counter(sent(sandbox)) == Counter(
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


# -- the report keeps the input -------------------------------------------------------
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
    path = write_csv(tmp_path / "pairs.csv", [header, *rows])
    result = run(server, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(server)) == [("S1", "L1"), ("S2", "L2"), ("S3", "L3"), ("S4", "L4")]
    assert report_header(path) == [*RESULT_COLUMNS, *TICKET_COLUMNS, "note", "extra", "amount"]
    report = report_of(path)
    assert [r["row"] for r in report] == ["1", "2", "3", "4"]
    assert ids(report) == [("S1", "L1"), ("S2", "L2"), ("S3", "L3"), ("S4", "L4")]
    assert [[r["note"], r["extra"], r["amount"]] for r in report] == [
        [r[0], r[2], r[4]] for r in rows
    ]


# -- bad input -------------------------------------------------------------------------
def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope.csv"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    path.mkdir()
    return path


def _xls(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)
    return path


def _json(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text('[{"sourceTicketId": "A", "linkedTicketId": "B"}]')
    return path


def _corrupt_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xlsx"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _zip_not_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xlsx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a workbook")
    return path


def _csv_named_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xlsx"
    path.write_text("sourceTicketId,linkedTicketId\nA,B\n")
    return path


def _empty_csv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"")
    return path


def _empty_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xlsx"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (_missing, r"not found|no such|does not exist"),
        (_directory, r"directory"),
        (_xls, r"\.xls\b"),
        (_json, r"\.json\b"),
        (_corrupt_xlsx, r"xlsx|excel|corrupt|zip"),
        (_zip_not_xlsx, r"xlsx|excel|corrupt|workbook"),
        (_csv_named_xlsx, r"xlsx|excel|corrupt|zip"),
        (_empty_csv, r"empty|0 bytes|zero"),
        (_empty_xlsx, r"empty|0 bytes|zero"),
    ],
    ids=[
        "missing",
        "directory",
        "xls",
        "json",
        "corrupt-xlsx",
        "zip-not-xlsx",
        "csv-named-xlsx",
        "empty-csv",
        "empty-xlsx",
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_sent(
    sandbox: Sandbox, tmp_path: Path, make: Callable[[Path], Path], pattern: str
) -> None:
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    # the reason must be in the words, not just in the file's name
    assert re.search(pattern, line.replace(str(path), ""), re.I), line
    assert sandbox.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no journal
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_header_only_is_nothing_to_do(sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    if kind == "csv":
        path = write_csv(tmp_path / "pairs.csv", [[*HEAD, "note"]])
    else:
        path = make_xlsx(tmp_path / "pairs.xlsx", {"Sheet": [[*HEAD, "note"]]})
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert sandbox.requests == []


# -- dry run ---------------------------------------------------------------------------
def test_dry_run_reports_and_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [HEAD, ["V1", "W1"]]
    for i in range(25):  # rows 2..26, alternating reasons
        rows.append(["", f"X{i}"] if i % 2 == 0 else [f"Y{i}", f"Y{i}"])
    rows += [["V2", "W2"], ["V1", "W1"], ["V3", "W3"], ["V2", "W2"]]  # rows 27..30
    path = write_csv(tmp_path / "pairs.csv", rows)
    report = tmp_path / "pairs.results.csv"
    old = b"row,sourceTicketId\r\n1,OLD\r\n\xff not even utf-8\n"
    report.write_bytes(old)
    before = sorted(p.name for p in tmp_path.iterdir())

    result = run(sandbox, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sandbox.requests == []
    assert report.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    out = result.stdout
    assert re.search(r"\bsend\D{0,3}3\b", out), out
    assert re.search(r"\binvalid\D{0,3}25\b", out), out
    assert re.search(r"\bduplicate\D{0,3}2\b", out), out
    for row in range(2, 22):  # the first 20 invalid rows, each with its reason
        reason = "(blank|empty|missing)" if row % 2 == 0 else "(same|itself|self)"
        assert re.search(rf"\brow {row}\b[^\n]*{reason}", out), (row, out)
    for row in range(22, 27):
        assert not re.search(rf"\brow {row}\b", out), (row, out)
    assert re.search(r"\b5\b[^\n]*(more|other|not shown)", out), out
    # the first requests that would be sent, with their bodies
    assert '"sourceTicketId": "V1"' in out or '"sourceTicketId":"V1"' in out, out
    assert "W1" in out and "V2" in out
    assert TOKEN not in result.output


# -- secrets ---------------------------------------------------------------------------
def test_token_never_printed(
    start_sandbox: Callable[..., Sandbox], sandbox: Sandbox, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "pairs.csv", [HEAD, ["A", "B"], ["MISSING1", "C"], ["", "D"], ["A", "B"]]
    )
    outputs = []
    # a normal run with some failures, the token from the environment
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    outputs.append(result)
    # the token on the command line, with a run, a dry run and an input error
    flags = ("--token", TOKEN, "--org-id", ORG, "--base-url", sandbox.url, "--rate", "0")
    result = invoke("run", path, *flags, "-o", tmp_path / "b.csv")
    assert result.exit_code == 1, result.output
    outputs.append(result)
    result = invoke("run", path, *flags, "--dry-run")
    assert result.exit_code == 0, result.output
    outputs.append(result)
    result = invoke("run", tmp_path / "absent.csv", *flags)
    assert result.exit_code == 2, result.output
    outputs.append(result)
    # credentials rejected: a server expecting another token
    strict = start_sandbox(token="tok-OTHER-999")
    result = run(strict, path)
    assert result.exit_code == 3, result.output
    outputs.append(result)
    for result in outputs:
        assert TOKEN not in result.stdout
        assert TOKEN not in result.stderr
        assert "SECRET" not in result.output
