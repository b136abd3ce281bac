"""``bulklink retry``: only failed and skipped rows are sent again, kept rows stay exactly as
they were in every format, and a --limit canary completes through retry.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from bulklink.sandbox import Reply, Sandbox
from tests.helpers import (
    FAST,
    FAST_UNPACED,
    HEAD,
    KEY,
    answer_with,
    assert_rows_once,
    custom_ticket,
    invoke,
    make_xlsx,
    no_secret_anywhere,
    one_line_error,
    pairs_csv,
    read_any,
    read_report,
    report_of,
    run_against,
    sent,
    spawn,
    wait_until,
    write_csv,
)

# -- retry resends only failed and skipped rows, in every format ------------------------------


def is_true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


RETRY_INPUT = [
    ("A0001", "B0001", "n1"),  # 1 linked
    ("F0002", "B0002", "n2"),  # 2 failed: 503 until retries run out (2 attempts)
    ("N0003", "B0003", "n3"),  # 3 failed: 404 once (1 attempt)
    ("", "B0004", "n4"),  # 4 invalid: blank
    ("S0005", "S0005", "n5"),  # 5 invalid: self-link
    ("A0001", "B0001", "n6"),  # 6 duplicate of a linked row
    ("F0002", "B0002", "n7"),  # 7 duplicate of a failed row
    ("00123", "B0008", "n8"),  # 8 linked
    ("K0009", "B0009", "n9"),  # 9 skipped (--limit 4)
    ("K0010", "B0010", "n10"),  # 10 skipped (--limit 4)
]

RESENT = [("F0002", "B0002"), ("N0003", "B0003"), ("K0009", "B0009"), ("K0010", "B0010")]

KEPT_ROWS = (1, 4, 5, 6, 8)


def retry_fixture(tmp_path: Path, start_sandbox: Callable[..., Sandbox], report: Path) -> Sandbox:
    """A report with every outcome, written by ``run``; the server then heals."""
    script = {"F0002": [Reply(status=503)] * 10, "N0003": [Reply(status=404)]}
    server = start_sandbox(script=script)
    src = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId", "note"], *map(list, RETRY_INPUT)],
    )
    result = run_against(
        server, "run", src, "-o", report, "--limit", "4", "--max-retries", "1", *FAST
    )
    assert result.exit_code == 1, result.stderr
    rows = read_report(report)
    assert [r["outcome"] for r in rows] == [
        "linked", "failed", "failed", "invalid", "invalid",
        "duplicate", "duplicate", "linked", "skipped", "skipped",
    ]  # fmt: skip
    assert [int(r["attempts"] or 0) for r in rows][:3] == [1, 2, 1]
    server.config.script.clear()
    return server


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_retry_resends_only_failed_and_skipped_rows(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    report = tmp_path / f"report{fmt}"
    server = retry_fixture(tmp_path, start_sandbox, report)
    before = read_report(report)
    since = len(server.requests)

    result = run_against(server, "retry", report, "--max-retries", "1", *FAST)
    # Exit 1 only because the two invalid rows can never be linked.
    assert result.exit_code == 1, result.stderr

    assert sorted(sent(server, since)) == sorted(RESENT)
    after = read_report(report)
    pairs = [(s, d) for s, d, _ in RETRY_INPUT]
    assert_rows_once(after, pairs)
    assert [r["note"] for r in after] == [note for _, _, note in RETRY_INPUT]
    outcomes = [r["outcome"] for r in after]
    assert outcomes == [
        "linked", "linked", "linked", "invalid", "invalid",
        "duplicate", "duplicate", "linked", "linked", "linked",
    ]  # fmt: skip
    assert is_true(after[6]["success"]), "a duplicate follows its first row"
    attempts = {int(r["row"]): int(r["attempts"]) for r in after}
    assert (attempts[2], attempts[3], attempts[9], attempts[10]) == (3, 2, 1, 1)
    assert after[1]["ticket.id"] == "F0002"
    assert all(is_true(after[i - 1]["success"]) for i in (2, 3, 9, 10))
    # Linked, invalid and duplicate-of-linked rows are kept cell for cell.
    changed = {
        row: {k: (v, after[row - 1].get(k)) for k, v in before[row - 1].items()
              if after[row - 1].get(k, "<missing>") != v}
        for row in KEPT_ROWS
    }  # fmt: skip
    assert changed == {row: {} for row in KEPT_ROWS}, "kept rows changed (before, after)"
    assert [list(r) for r in after] == [list(r) for r in before], "columns changed"


def test_retry_refuses_an_xlsx_report_whose_id_excel_turned_into_a_cut_number(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """As ``run`` refuses that cell in an input, with the same words; nothing is sent and
    the report is left as it is (retry would rewrite every row of it)."""
    report = tmp_path / "report.xlsx"
    server = retry_fixture(tmp_path, start_sandbox, report)
    # Saved from Excel with a failed row's ID typed in as a number: 15 digits kept.
    cut = 1.2345678901234567e19
    book = openpyxl.load_workbook(report)
    sheet = book["report"]
    header = [cell.value for cell in sheet[1]]
    sheet.cell(row=3, column=header.index("sourceTicketId") + 1, value=cut)
    book.save(report)
    edited = report.read_bytes()
    since = len(server.requests)

    result = run_against(server, "retry", report, *FAST)
    assert result.exit_code == 2, result.stderr
    line = one_line_error(result)
    assert sent(server, since) == []
    assert report.read_bytes() == edited
    summary = invoke("report", report)
    assert summary.exit_code == 2 and one_line_error(summary) == line

    src = make_xlsx(tmp_path / "cut.xlsx", {"Sheet": [HEAD, [cut, "B0002"]]})
    ran = run_against(server, "run", src, *FAST)
    assert ran.exit_code == 1, ran.stderr
    assert sent(server, since) == []
    words = report_of(src)[0]["error"]
    assert "lost digits" in words
    assert line.endswith(f"{report}: row 2: {words}"), line


def test_retry_output_elsewhere_leaves_report_untouched(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={"F0002": [Reply(status=503)] * 10})
    pairs = [("A0001", "B0001"), ("F0002", "B0002"), ("A0003", "B0003"), ("F0002", "B0002")]
    src = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *pairs])
    report = tmp_path / "report.csv"
    first = run_against(server, "run", src, "-o", report, "--max-retries", "1", *FAST)
    assert first.exit_code == 1, first.stderr
    original = report.read_bytes()
    server.config.script.clear()
    since = len(server.requests)

    other = tmp_path / "other.csv"
    result = run_against(server, "retry", report, "-o", other, "--max-retries", "1", *FAST)
    assert result.exit_code == 0, result.stderr
    assert sent(server, since) == [("F0002", "B0002")]
    assert report.read_bytes() == original
    rows = read_report(other)
    assert_rows_once(rows, pairs)
    assert [r["outcome"] for r in rows] == ["linked", "linked", "linked", "duplicate"]
    assert all(r["success"] == "true" for r in rows)
    assert [int(r["attempts"]) for r in rows][:3] == [1, 3, 1]


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_retry_keeps_the_kept_rows_exactly_in_every_format(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    """Leading quotes are data outside CSV; ints with nulls beside them stay ints."""
    quoted = custom_ticket("S1", priority="'=already", type="''+two", ticketId=12345678901234567891)
    server = start_sandbox(
        script={"S1": [Reply(200, body=answer_with(quoted))], "S2": [Reply(404)]}
    )
    data = write_csv(tmp_path / "in.csv", [["source", "linked"], ["S1", "L1"], ["S2", "L2"]])
    report = tmp_path / f"out{fmt}"
    assert run_against(server, "run", data, "-o", report, "--rate", "0", *FAST).exit_code == 1
    _, before = read_any(report)
    result = run_against(server, "retry", report, "--rate", "0", *FAST)
    assert result.exit_code == 0, result.stderr
    _, after = read_any(report)
    assert after[0] == before[0]  # the linked row, cell for cell
    assert after[1]["outcome"] == "linked"
    if fmt != ".csv":
        assert after[0]["ticket.priority"] == "'=already"
        assert after[0]["ticket.type"] == "''+two"
    if fmt == ".jsonl":
        assert after[0]["ticket.ticketId"] == 12345678901234567891


@pytest.mark.slow
def test_a_second_retry_of_the_same_report_refuses_even_to_another_output(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.1)
    data = pairs_csv(tmp_path / "in.csv", 60)
    report = tmp_path / "out.csv"
    wrong = {"THENA_TOKEN": "a-wrong-token-123"}
    assert run_against(server, "run", data, "-o", report, *FAST, env=wrong).exit_code == 3
    proc = spawn(server, "retry", report, "--rate", "10", *FAST)
    wait_until(lambda: len(server.requests) >= 3, "the first retry to start")
    started = time.monotonic()
    second = run_against(server, "retry", report, "-o", tmp_path / "other.csv", *FAST)
    assert second.exit_code == 75, second.stderr
    assert time.monotonic() - started < 1.0
    assert not (tmp_path / "other.csv").exists()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert max(server.link_counts.values()) == 1


def test_retry_in_api_key_mode(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    server = start_sandbox(api_key=KEY)
    src = pairs_csv(tmp_path / "in.csv", 6)
    report = tmp_path / "in.results.csv"
    env = {"THENA_BASE_URL": server.url, "THENA_API_KEY": KEY}
    first = invoke("run", src, "--limit", "2", *FAST_UNPACED, env=env)
    assert first.exit_code == 1, first.stderr
    second = invoke("retry", report, *FAST_UNPACED, env=env)
    assert second.exit_code == 0, second.stderr
    assert len(server.requests) == 6
    assert all(r.header("authorization") is None for r in server.requests)
    assert all(r.header("x-api-key") == KEY for r in server.requests)
    no_secret_anywhere(KEY, first.stderr, second.stderr, second.stdout, files=(report,))


# -- canary runs: --limit then retry ----------------------------------------------------------


def test_limit_then_retry_completes_the_file(sandbox: Sandbox, tmp_path: Path) -> None:
    src = pairs_csv(tmp_path / "in.csv", 20)
    report = tmp_path / "in.results.csv"
    first = run_against(sandbox, "run", src, "--limit", "5", *FAST_UNPACED)

    assert first.exit_code == 1, first.stderr
    assert len(sandbox.requests) == 5
    rows = read_report(report)
    assert len(rows) == 20
    assert [r["outcome"] for r in rows[:5]] == ["linked"] * 5
    assert sorted(sent(sandbox)) == [(f"T{i:05d}", f"TL{i:05d}") for i in range(1, 6)]
    for row in rows[5:]:
        assert row["outcome"] == "skipped"
        assert row["error"] == "not attempted (--limit 5)"
        assert row["attempts"] == "0"
        assert row["success"] == "false"

    second = run_against(sandbox, "retry", report, *FAST_UNPACED)
    assert second.exit_code == 0, second.stderr
    assert len(sandbox.requests) == 20
    assert set(sandbox.link_counts.values()) == {1}
    assert len(sandbox.link_counts) == 20
    rows = read_report(report)
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 21)]
    assert {r["outcome"] for r in rows} == {"linked"}
    assert all(r["error"] == "" and r["attempts"] == "1" for r in rows)


def test_limit_counts_only_pairs_that_would_be_sent(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId"],
            ["", "B1"],  # 1 invalid
            ["A2", "B2"],  # 2 sent
            ["A2", "B2"],  # 3 duplicate of 2
            ["A4", "A4"],  # 4 invalid (self-link)
            ["A5", "B5"],  # 5 sent
            ["A6", "B6"],  # 6 over the limit
        ],
    )
    result = run_against(sandbox, "run", src, "--limit", "2", *FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    assert sorted(sent(sandbox)) == [("A2", "B2"), ("A5", "B5")]
    rows = read_report(tmp_path / "in.results.csv")
    assert [r["outcome"] for r in rows] == [
        "invalid", "linked", "duplicate", "invalid", "linked", "skipped",
    ]  # fmt: skip
    assert rows[5]["error"] == "not attempted (--limit 2)"


@pytest.mark.parametrize(("value", "shown"), [(True, "true"), (1e20, "1e+20"), (1.0, "1.0")])
def test_a_jsonl_report_whose_id_is_no_text_is_refused_naming_the_line(
    tmp_path: Path, sandbox: Sandbox, value: object, shown: str
) -> None:
    """A script rewrote an ID as a JSON bool or float: str() sent True or 1e+20, IDs no
    file held; refused in one line as an xlsx report's odd ID cell is, nothing sent."""
    report = tmp_path / "out.jsonl"
    data = write_csv(tmp_path / "in.csv", [["source", "linked"], ["MISSING1", "L1"], ["S2", "L2"]])
    assert run_against(sandbox, "run", data, "-o", report, "--rate", "0", *FAST).exit_code == 1
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    lines[0]["sourceTicketId"] = value
    report.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = len(sandbox.requests)
    result = run_against(sandbox, "retry", report, "--rate", "0", *FAST)
    assert result.exit_code == 2, result.output
    assert "line 1: sourceTicketId is" in one_line_error(result)
    assert f"({shown}), not the text of a ticket ID" in result.stderr
    assert len(sandbox.requests) == before
