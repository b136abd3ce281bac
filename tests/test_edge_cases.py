"""Cases found by verifying the tool from outside: reruns after a credentials stop, a
resumed canary, credentials from files and the environment, unusable paths, IDs from
Python callers, a pool that must grow without a rate limit. Real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bulklink import link_pairs
from bulklink.inputs import ReadOptions, Table, scan
from bulklink.models import Outcome
from bulklink.sandbox import Reply, Sandbox
from tests.conftest import ORG, TOKEN, invoke, pairs_csv, read_report, run_against, write_csv
from tests.test_cron import spawn, wait_until
from tests.test_report import custom_ticket, read_any, success_body

FAST = ("--backoff", "0.01", "--no-progress")


def test_rerun_after_rejected_credentials_links_every_row(tmp_path: Path, sandbox: Sandbox) -> None:
    data = pairs_csv(tmp_path / "in.csv", 60)
    report = tmp_path / "out.csv"
    wrong = {"THENA_TOKEN": "a-wrong-token-123"}
    first = run_against(sandbox, "run", data, "-o", report, "--rate", "0", "--concurrency", "4",
                        *FAST, env=wrong)  # fmt: skip
    assert first.exit_code == 3, first.stderr
    rows = read_report(report)
    assert {r["outcome"] for r in rows} == {"skipped"}  # the 401'd rows too: not final
    assert all(r["http_status"] in ("", "401") for r in rows)
    second = run_against(sandbox, "run", data, "-o", report, "--rate", "0", *FAST)
    assert second.exit_code == 0, second.stderr
    assert {r["outcome"] for r in read_report(report)} == {"linked"}


def test_a_resumed_canary_sends_only_what_is_left_of_its_limit(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    data = pairs_csv(tmp_path / "in.csv", 200)
    report = tmp_path / "out.csv"
    args = ("run", data, "-o", report, "--rate", "20", "--limit", "40", *FAST)
    proc = spawn(server, *args)
    wait_until(lambda: sum(server.link_counts.values()) >= 10, "10 links")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 143
    done_before = sum(server.link_counts.values())
    assert 10 <= done_before < 40
    result = run_against(server, *args)
    assert result.exit_code == 1, result.stderr  # the rest are skipped by the limit
    outcomes = [r["outcome"] for r in read_report(report)]
    assert outcomes.count("linked") == 40
    assert sum(server.link_counts.values()) == 40
    assert max(server.link_counts.values()) == 1


def test_the_journal_key_changes_with_the_encoding(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [["source", "linked"], ["TÉ1", "L1"]])
    plain = scan(Table(path)).key
    assert scan(Table(path, ReadOptions(encoding="cp1252"))).key != plain
    assert scan(Table(path)).key == plain


def test_token_file_overrides_an_exported_token(tmp_path: Path, sandbox: Sandbox) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"THENA_TOKEN": "stale-token-from-profile", "THENA_ORG_ID": ORG,
           "THENA_BASE_URL": sandbox.url}  # fmt: skip
    result = invoke("run", data, "--token-file", token_file, "--rate", "0", *FAST, env=env)
    assert result.exit_code == 0, result.stderr
    assert {r.header("authorization") for r in sandbox.requests} == {f"Bearer {TOKEN}"}


def test_an_exported_token_and_an_api_key_file_name_their_sources(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    key_file = tmp_path / "key"
    key_file.write_text("some-api-key")
    result = run_against(sandbox, "run", data, "--api-key-file", key_file, *FAST)
    assert result.exit_code == 2
    assert "THENA_TOKEN" in result.stderr and "--api-key-file" in result.stderr
    assert sandbox.requests == []


def test_a_credential_with_a_control_character_is_refused_up_front(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    token_file = tmp_path / "token"
    token_file.write_text("tok\ren-123")
    result = run_against(sandbox, "run", data, "--token-file", token_file, *FAST)
    assert result.exit_code == 2
    assert "control character" in result.stderr and "Traceback" not in result.stderr
    assert sandbox.requests == []
    assert "tok\ren-123" not in result.stderr


def test_unwritable_log_and_summary_paths_are_usage_errors(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    for flag in ("--log-file", "--summary-json"):
        result = run_against(sandbox, "run", data, flag, tmp_path / "nope" / "x", *FAST)
        assert result.exit_code == 2, (flag, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()


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


def test_without_a_rate_limit_the_auto_pool_grows_past_its_start(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.2)
    data = pairs_csv(tmp_path / "in.csv", 400)
    started = time.monotonic()
    result = run_against(server, "run", data, "--rate", "0", *FAST)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    # Requests in flight at the server: arrivals less than one latency apart overlap.
    times = sorted(r.t for r in server.requests)
    peak = max(sum(1 for u in times if t <= u < t + 0.2) for t in times)
    assert peak > 16
    assert elapsed < 400 / 16 * 0.2  # what a pool stuck at 16 would need


def test_dry_run_counts_what_a_limit_holds_back(tmp_path: Path) -> None:
    data = pairs_csv(tmp_path / "in.csv", 30)
    result = invoke("run", data, "--dry-run", "--limit", "3")
    assert result.exit_code == 0
    assert "would send 3" in result.stdout and "skipped by --limit 27" in result.stdout


def test_report_on_a_file_that_is_not_a_report_says_so(tmp_path: Path) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    for path in (data, other):
        result = invoke("report", path)
        assert result.exit_code == 2
        assert "not a bulklink report" in result.stderr, result.stderr


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_retry_keeps_the_kept_rows_exactly_in_every_format(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    """Leading quotes are data outside CSV; ints with nulls beside them stay ints."""
    quoted = custom_ticket("S1", priority="'=already", type="''+two", ticketId=12345678901234567891)
    server = start_sandbox(
        script={"S1": [Reply(200, body=success_body(quoted))], "S2": [Reply(404)]}
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


def test_the_summary_line_is_the_last_line_after_a_credentials_stop(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 5)
    result = run_against(sandbox, "run", data, *FAST, env={"THENA_TOKEN": "wrong-token-123"})
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert "rejected the credentials" in result.stderr
    assert lines[-1].startswith("linked 0,") and "report: " in lines[-1]


def test_a_terminal_gets_a_progress_bar_even_when_it_reports_no_size(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """stderr on a pty (size 0x0, as under `script` or some CI runners): the bar shows."""
    import os
    import pty
    import subprocess
    import sys

    server = start_sandbox(latency=0.02)
    data = pairs_csv(tmp_path / "in.csv", 60)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THENA_")}
    env.update(THENA_TOKEN=TOKEN, THENA_ORG_ID=ORG, THENA_BASE_URL=server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(data), "--rate", "40"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            block = os.read(master, 4096)
        except OSError:  # the child closed the pty
            break
        if not block:
            break
        seen += block
    os.close(master)
    assert proc.wait(timeout=30) == 0
    text = seen.decode("utf-8", "replace")
    assert "row/s" in text and "/60" in text
    assert text.rstrip().splitlines()[-1].startswith("linked 60,")
