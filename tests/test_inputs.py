"""Reading input files, end to end against the sandbox: CSV dialects, encodings and line
ends, standard input, Excel workbooks and their sheets, and files that cannot be read
(one line on stderr, exit 2, nothing sent).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from click.testing import CliRunner

from bulklink.cli import cli
from bulklink.sandbox import Sandbox
from tests.helpers import (
    FAST_UNPACED,
    HEAD,
    ORG,
    RESULT_COLUMNS,
    TOKEN,
    files_in,
    ids,
    invoke,
    linked_from,
    make_xlsx,
    one_line_error,
    one_line_usage_error,
    read_report,
    report_header,
    report_of,
    run,
    run_against,
    sent,
    sent_checked,
    write_csv,
)

# -- CSV dialects, encodings and line ends ----------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=["comma", "semi", "tab", "pipe"])
def test_csv_delimiter_is_detected(sandbox: Sandbox, tmp_path: Path, delimiter: str) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "hello, world"], ["A2", "B2", "x; y"]]
    path = write_csv(tmp_path / "pairs.csv", rows, delimiter=delimiter)
    report = linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
    assert ids(report) == [("A1", "B1"), ("A2", "B2")]
    assert [r["note"] for r in report] == ["hello, world", "x; y"]


def test_tsv_extension(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "a,b;c|d"], ["A2", "B2", ""]]
    path = write_csv(tmp_path / "pairs.tsv", rows, delimiter="\t")
    report = linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
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
    assert sent_checked(sandbox) == [("A1", "B1")]
    assert report_header(path)[-1] == "note"  # no BOM glued to a carried column name
    assert report_of(path)[0]["note"] == "ünïcode"


def test_cp1252_bytes_fall_back_and_run(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "café"], ["A2", "B2", "naïve \u2013 5€"]]
    path = write_csv(tmp_path / "legacy.csv", rows, encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
    assert [r["note"] for r in report_of(path)] == ["café", "naïve \u2013 5€"]


@pytest.mark.parametrize(
    ("encoding", "said"),
    [
        ("nonsense", "unknown encoding: nonsense"),
        ("rot13", "--encoding 'rot13' is not a text encoding"),  # str to str
        ("hex", "--encoding 'hex' is not a text encoding"),  # bytes to bytes
        ("idna", "--encoding 'idna' is not a text encoding"),  # replaces no bad byte
        ("undefined", "--encoding 'undefined' is not a text encoding"),
        ("utf-32", "cannot be read as utf-32: UTF-32 stream does not start with BOM"),
    ],
)
def test_an_encoding_that_cannot_read_the_file_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, encoding: str, said: str
) -> None:
    path = write_csv(tmp_path / "in.csv", [HEAD, ["A1", "B1"]])
    result = run(sandbox, path, "--encoding", encoding)
    assert result.exit_code == 2, result.output
    assert said in one_line_error(result)
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("data", "line"),
    [
        # UTF-8 IDs, then a note in cp1252: read as cp1252, TKT-Müller-1 went as MÃ¼ller.
        (
            "sourceTicketId,linkedTicketId,note\nTKT-Müller-1,T200,ok\n".encode()
            + "T103,T203,café\n".encode("cp1252"),
            3,
        ),
        # The other way round: a cp1252 line first, UTF-8 text after it.
        (
            "sourceTicketId,linkedTicketId,note\nA1,B1,café\n".encode("cp1252")
            + "A2,B2,Müller\n".encode(),
            2,
        ),
    ],
    ids=["utf-8 then cp1252", "cp1252 then utf-8"],
)
def test_a_file_of_two_encodings_is_refused_naming_the_line(
    sandbox: Sandbox, tmp_path: Path, data: bytes, line: int
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(data)
    result = run(sandbox, path)
    assert result.exit_code == 2, result.output
    assert f"mixes encodings: it holds UTF-8 text, but line {line} is not UTF-8" in (
        one_line_error(result)
    )
    assert sandbox.requests == []
    given = run(sandbox, path, "--encoding", "cp1252")  # the user decides: all of it so
    assert given.exit_code == 0, given.output


def test_encoding_option_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [[*HEAD, "note"], ["A1", "B1", "Привет"]]
    path = write_csv(tmp_path / "cyr.csv", rows, encoding="cp1251")
    result = run(sandbox, path, "--encoding", "cp1251")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]
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
    assert sent_checked(sandbox) == [("A1", "B1")]
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
    report = linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
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
    report = linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
    assert ids(report) == [("A1", "B1"), ("A2", "B2")]
    assert [r["Note"] for r in report] == ["first line\r\nsecond; line", "plain"]


def test_trailing_delimiter_on_every_row_keeps_the_columns(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Some exporters end every data row with the delimiter; the IDs must not shift a column.
    path = tmp_path / "pairs.csv"
    path.write_text("sourceTicketId,linkedTicketId\nA1,B1,\nA2,B2,\n")
    linked_from(sandbox, path, [("A1", "B1"), ("A2", "B2")])
    assert ids(report_of(path)) == [("A1", "B1"), ("A2", "B2")]


def test_extra_cell_in_first_row_never_shifts_ids(sandbox: Sandbox, tmp_path: Path) -> None:
    # More cells than header names: linking "B1" to "extra" would link the wrong
    # tickets, and so may A1 to B1 (a cell before them may hold an unquoted delimiter):
    # the row is invalid, saying why, and the others go.
    path = tmp_path / "pairs.csv"
    path.write_text("sourceTicketId,linkedTicketId\nA1,B1,extra\nA2,B2\n")
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("A2", "B2")]
    rows = report_of(path)
    assert ids(rows) == [("A1", "B1"), ("A2", "B2")]
    assert rows[0]["outcome"] == "invalid" and "more cells than the header" in rows[0]["error"]


@pytest.mark.parametrize(
    ("line", "sent"),
    [
        ("Acme, Inc.,T101,T201", []),  # an unquoted comma: the IDs shifted
        ("Trail,T1,T2,", [("T1", "T2")]),  # a trailing delimiter: nothing past the header
        ("Wide,T3,T4,,,,,,,,x", []),  # far past the header
    ],
)
def test_a_row_with_more_cells_than_the_header_is_never_sent(
    sandbox: Sandbox, tmp_path: Path, line: str, sent: list[tuple[str, str]]
) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(f"customer,sourceTicketId,linkedTicketId\nGlobex,T100,T200\n{line}\n")
    result = run(sandbox, path)
    assert sent_checked(sandbox) == [("T100", "T200"), *sent]
    row = report_of(path)[1]
    assert (row["outcome"] == "invalid") == (not sent), row
    assert result.exit_code == (0 if sent else 1), result.output


def test_a_row_far_wider_than_the_header_refuses_the_file_in_one_line(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("sourceTicketId,linkedTicketId\nA1,B1\n" + ",".join("x" * 1100) + "\n")
    result = run(sandbox, path)
    assert result.exit_code == 2
    assert "line 3 has 1100 cells where the header has 2" in one_line_error(result)
    assert sandbox.requests == []


def test_repeated_column_name_is_carried_not_a_crash(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [[*HEAD, "note", "note"], ["A1", "B1", "x", "y"]])
    result = run(sandbox, path)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]
    with (tmp_path / "pairs.results.csv").open(newline="", encoding="utf-8") as fh:
        header, row = list(csv.reader(fh))
    assert header[:2] == RESULT_COLUMNS[:2]
    assert [h.startswith("note") for h in header[-2:]] == [True, True]
    assert row[-2:] == ["x", "y"]


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
    assert sorted(sent(sandbox)) == [("T-2", "L-2"), ("É-1", "L-1")]
    assert [r["note"] for r in report_of(path)] == ["café", "€"]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_line_ends_of_any_platform(sandbox: Sandbox, tmp_path: Path, newline: bytes) -> None:
    lines = [b"sourceTicketId,linkedTicketId,note", b"A1,B1,x", b'A2,B2,"two' + newline + b'lines"']
    path = tmp_path / "mac.csv"
    path.write_bytes(newline.join(lines) + newline)
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("A1", "B1"), ("A2", "B2")]


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
    line = one_line_usage_error(run(sandbox, path, *extra))
    assert "--encoding" in line and "no source ticket ID column" in line
    assert sandbox.requests == []


def test_plain_missing_columns_do_not_blame_the_encoding(sandbox: Sandbox, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [["Référence", "Cible"], ["A", "B"]])
    assert "--encoding" not in one_line_usage_error(run(sandbox, path))


def test_delimiter_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "semi.csv"
    src.write_text("sourceTicketId;linkedTicketId\nA,1;B,2\nC,3;D,4\n", encoding="utf-8")
    result = run_against(sandbox, "run", src, "--delimiter", ";", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(sandbox)) == [("A,1", "B,2"), ("C,3", "D,4")]

    wrong = run_against(sandbox, "run", src, "--delimiter", ",", "--fresh", *FAST_UNPACED)
    assert wrong.exit_code == 2, "with ',' forced, the header is one column: no ID columns"
    assert len(sandbox.requests) == 2


def test_tab_delimiter_alias(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", [["source", "linked"], ["A 1", "B 1"]], delimiter="\t")
    result = run_against(sandbox, "run", src, "--delimiter", "tab", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sent(sandbox) == [("A 1", "B 1")]


def test_encoding_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    text = "sourceTicketId,linkedTicketId\nCAFÉ-1,NOËL-2\n"
    cp = tmp_path / "cp.csv"
    cp.write_bytes(text.encode("cp1252"))
    result = run_against(sandbox, "run", cp, "--encoding", "cp1252", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sent(sandbox) == [("CAFÉ-1", "NOËL-2")]
    assert read_report(tmp_path / "cp.results.csv")[0]["sourceTicketId"] == "CAFÉ-1"

    # A valid UTF-8 file forced to cp1252 is read as cp1252: the override wins.
    utf = tmp_path / "utf.csv"
    utf.write_bytes(text.encode("utf-8"))
    forced = run_against(sandbox, "run", utf, "--encoding", "cp1252", *FAST_UNPACED)
    assert forced.exit_code == 0, forced.stderr
    assert sent(sandbox)[1] == (
        "CAFÉ-1".encode().decode("cp1252"),
        "NOËL-2".encode().decode("cp1252"),
    )


# -- standard input ---------------------------------------------------------------------------


def test_stdin_input_with_output(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    data = "sourceTicketId,linkedTicketId,note\n00123,00456,keep me\nCT-1,CT-2,x\n"
    result = run_against(sandbox, "run", "-", "-o", out, *FAST_UNPACED, input=data)

    assert result.exit_code == 0, result.stderr
    assert sorted(sent(sandbox)) == [("00123", "00456"), ("CT-1", "CT-2")]
    rows = read_report(out)
    assert [(r["sourceTicketId"], r["linkedTicketId"], r["note"]) for r in rows] == [
        ("00123", "00456", "keep me"),
        ("CT-1", "CT-2", "x"),
    ]
    assert {r["outcome"] for r in rows} == {"linked"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"], "no spool left behind"


def test_stdin_without_output_is_a_usage_error(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_against(
        sandbox, "run", "-", *FAST_UNPACED, input="sourceTicketId,linkedTicketId\nA,B\n"
    )
    assert result.exit_code == 2, result.stderr
    assert "-o" in result.stderr or "--output" in result.stderr
    assert sandbox.requests == []
    assert list(tmp_path.iterdir()) == []


def test_stdin_honours_encoding_and_delimiter(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    data = "sourceTicketId;linkedTicketId\nÉTÉ,1;HIVER,2\n".encode("cp1252")
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url}
    result = CliRunner().invoke(
        cli,
        ["run", "-", "-o", str(out), "--encoding", "cp1252", "--delimiter", ";", *FAST_UNPACED],
        input=data,
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert sent(sandbox) == [("ÉTÉ,1", "HIVER,2")]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["sourceTicketId"], r["outcome"]) for r in lines] == [("ÉTÉ,1", "linked")]


# -- Excel workbooks and sheets ---------------------------------------------------------------


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
    assert sorted(sent_checked(sandbox)) == sorted(
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
    linked_from(sandbox, path, [("S1", "L1"), ("S2", "L2")])
    assert ids(report_of(path)) == [("S1", "L1"), ("S2", "L2")]


def test_xlsx_sheet_option_picks_the_sheet(sandbox: Sandbox, tmp_path: Path) -> None:
    path = two_sheets(tmp_path)
    result = run(sandbox, path, "--sheet", "Links")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("K1", "M1")]
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


def test_hidden_first_sheet_is_passed_over_for_the_first_visible(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sheets = {"Lookup": [HEAD, ["HIDDEN1", "HIDDEN2"]], "Links": [HEAD, ["K1", "M1"]]}
    path = make_xlsx(tmp_path / "book.xlsx", sheets, hidden=["Lookup"])
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent(sandbox)) == [("K1", "M1")]
    result = run(sandbox, path, "--sheet", "Lookup")  # still reachable by name
    assert result.exit_code == 0, result.output
    assert ("HIDDEN1", "HIDDEN2") in sorted(sent(sandbox))


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_empty_first_sheet_is_named_with_the_others(
    sandbox: Sandbox, tmp_path: Path, dry: bool
) -> None:
    path = make_xlsx(tmp_path / "b.xlsx", {"Cover": [], "Links": [HEAD, ["A", "B"]]})
    line = one_line_usage_error(run(sandbox, path, *(["--dry-run"] if dry else [])))
    assert "'Cover'" in line and "empty" in line and "'Links'" in line and "--sheet" in line
    assert sandbox.requests == []


def test_first_sheet_without_id_columns_names_it_and_lists_hidden_ones(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sheets = {"Notes": [["when", "what"]], "Links": [HEAD], "Old": []}
    path = make_xlsx(tmp_path / "b.xlsx", sheets, hidden=["Old"])
    line = one_line_usage_error(run(sandbox, path))
    assert "sheet 'Notes'" in line and "'when'" in line
    assert "'Links'" in line and "'Old' (hidden)" in line and "--sheet" in line
    line = one_line_usage_error(run(sandbox, path, "--sheet", "Nope"))
    assert "'Nope'" in line and "'Old' (hidden)" in line
    assert sandbox.requests == []


# -- files that cannot be read: one line, exit 2 ----------------------------------------------


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope.csv"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    path.mkdir()
    return path


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    """A maker of the file ``name`` holding ``content``."""

    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return make


def _zip_not_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.xlsx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a workbook")
    return path


_xls = _file("pairs.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)
_json = _file("pairs.json", b'[{"sourceTicketId": "A", "linkedTicketId": "B"}]')
_corrupt_xlsx = _file("pairs.xlsx", bytes(range(256)) * 8)
_csv_named_xlsx = _file("pairs.xlsx", b"sourceTicketId,linkedTicketId\nA,B\n")
_empty_csv = _file("pairs.csv", b"")
_empty_xlsx = _file("pairs.xlsx", b"")


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
    line = one_line_usage_error(result)
    assert "not" in line.replace(str(path), "")
    assert sandbox.requests == []
    assert files_in(tmp_path) == before


def test_an_xlsx_named_csv_says_so(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(_xlsx_bytes())
    assert ".xlsx" in one_line_usage_error(run(sandbox, path)).replace(str(path), "")


def test_broken_csv_far_into_the_file_is_one_line_and_nothing_sent(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = "".join(f"S{i},L{i}\n" for i in range(60_000))  # beyond the first 50,000-row chunk
    path = tmp_path / "big.csv"
    path.write_text("sourceTicketId,linkedTicketId\n" + rows + 'S,"never closed\n')
    before = files_in(tmp_path)
    for extra in ([], ["--dry-run"]):
        line = one_line_usage_error(run(sandbox, path, *extra))
        assert "CSV" in line
    assert sandbox.requests == []
    assert files_in(tmp_path) == before


def test_empty_padding_past_the_header_is_harmless_however_long(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Excel pads a blank row with delimiters to the sheet's widest row: 12 or 20 empty
    cells past the header refused the file (the reader made room for 8); a value that
    far out still makes its row invalid, and blanks are no value."""
    path = tmp_path / "padded.csv"
    path.write_text(
        "sourceTicketId,linkedTicketId\nT1,L1\n" + "," * 12 + "\nT2,L2" + "," * 20
        + "\nT3,L3" + "," * 20 + "x\nT4,L4, \t\n"
    )  # fmt: skip
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), ("T2", "L2"), ("T4", "L4")]
    rows = report_of(path)
    assert [r["outcome"] for r in rows] == ["linked", "invalid", "linked", "invalid", "linked"]
    assert "more cells than the header" in rows[3]["error"]


def test_a_cp1252_file_whose_bytes_happen_to_spell_utf8_is_read_as_cp1252(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """É and a closing quotation mark are C9 92 in cp1252: valid UTF-8 by chance, which
    is no UTF-8 text (the file was refused as mixing encodings)."""
    path = tmp_path / "legacy.csv"
    data = "customer,sourceTicketId,linkedTicketId\nJOS\u00c9\u2019S TACOS,T1,L1\nCafé Z,Té2,L2\n"
    path.write_bytes(data.encode("cp1252"))
    result = run(sandbox, path)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), ("Té2", "L2")]
