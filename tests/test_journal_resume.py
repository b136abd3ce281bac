"""The journal and resume: kill -9 then the same command, what a journal is scoped to
(server, org, credentials, input, encoding), lines that always read back, and a full
disk that stops a run (exit 74) which the rerun resumes. Real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bulklink.models
import bulklink.run.assembly
import bulklink.run.job
import bulklink.state.journal
import bulklink.tables.inputs
from bulklink.models import Outcome, Result
from bulklink.options import ReadOptions
from bulklink.sandbox import Reply, Sandbox, success_body
from bulklink.state.journal import Journal, checked_row, journal_path, parse_line
from bulklink.state.scope import Scope
from bulklink.tables.inputs import Table, scan
from bulklink.urls import normalise_url
from tests.helpers import (
    FAST,
    FAST_UNPACED,
    ORG,
    ROOT,
    SIGKILLED,
    TOKEN,
    N,
    assert_all_linked,
    assert_rows_once,
    done_earlier,
    env_for,
    input_pairs,
    interrupt_at_row_11,
    invoke,
    journal_of,
    line_count,
    no_traceback,
    pairs_csv,
    read_report,
    run_against,
    sent,
    spawn,
    wait_until,
    write_csv,
)

# -- kill -9 and resume -----------------------------------------------------------------------


def kill_when_journal_has(
    server: Sandbox, args: tuple[str | Path, ...], report: Path, lines: int
) -> None:
    """Start a run, SIGKILL it once its journal holds ``lines`` lines."""
    journal = journal_of(report)
    with spawn(server, *args) as proc:
        wait_until(
            lambda: line_count(journal) >= lines or proc.poll() is not None,
            f"{lines} journal lines",
        )
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == SIGKILLED


@pytest.mark.slow
def test_kill9_then_same_command_resumes_without_relinking(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.02)
    # Killed at 40 of 150 rows: over 2 s of paced sending left, so the kill lands mid-run.
    n, concurrency = 150, 8
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "40", "--concurrency", str(concurrency), "--backoff", "0.01")

    kill_when_journal_has(server, args, report, lines=40)
    linked_before = set(server.link_counts)
    assert 30 <= len(linked_before) < n
    since = len(server.requests)

    with spawn(server, *args) as proc:
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err

    resent = sent(server, since)
    done = n - len(resent)
    assert len(set(resent)) == len(resent), "a pair was sent twice by the resumed run"
    # Only rows the killed run had not finished are sent again: at most the in-flight ones
    # were linked on the server without being recorded.
    assert len(linked_before) - concurrency <= done <= len(linked_before)
    assert done in done_earlier(err), f"stderr does not say {done} rows were already done:\n{err}"

    pairs = input_pairs(n)
    rows = read_report(report)
    assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert all(r["success"] == "true" for r in rows)
    assert set(server.link_counts) == set(pairs)
    twice = [p for p, count in server.link_counts.items() if count > 1]
    assert len(twice) <= concurrency, twice
    assert max(server.link_counts.values()) <= 2
    assert not journal_of(report).exists(), "the journal outlived a completed run"


@pytest.mark.parametrize("how", ["changed input", "--fresh"])
def test_changed_input_or_fresh_ignores_the_journal(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], how: str
) -> None:
    server = start_sandbox(latency=0.02)
    n = 40
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    # The journal alone: with the state store, the pairs it holds are known as linked.
    args: tuple[str | Path, ...] = ("run", src, "--rate", "40", "--concurrency", "4")
    args += ("--no-state",)
    kill_when_journal_has(server, args, report, lines=10)
    done_before = set(server.link_counts)
    assert done_before

    pairs = input_pairs(n)
    if how == "changed input":
        pairs[-1] = ("T00040", "CHANGED")
        write_csv(src, [["sourceTicketId", "linkedTicketId"], *map(list, pairs)])
    else:
        args = (*args, "--fresh")
    since = len(server.requests)
    result = run_against(server, *args, *FAST)
    assert result.exit_code == 0, result.stderr

    assert sorted(sent(server, since)) == sorted(pairs), "not every row was sent again"
    assert not re.search(r"already done|done earlier", result.stderr), result.stderr
    rows = read_report(report)
    assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    for pair in done_before & set(pairs):
        assert server.link_counts[pair] == 2


def test_the_journal_key_changes_with_the_encoding(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [["source", "linked"], ["TÉ1", "L1"]])
    plain = scan(Table(path)).key
    assert scan(Table(path, ReadOptions(encoding="cp1252"))).key != plain
    assert scan(Table(path)).key == plain


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


@pytest.mark.slow
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


def test_resume_reads_done_rows_back_a_slice_per_loop_turn(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bulklink.run.assembly
    from bulklink.api import run_job
    from bulklink.run.assembly import SLICE_ROWS

    # 2,000 rows read back make 125 slices of SLICE_ROWS: plenty of turns to bound.
    done, n = 2_000, 2_050
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    plan = scan(Table(src, ReadOptions()))
    scope = Scope.build(sandbox.url, "org_test", sandbox=False)
    journal, _ = Journal.open(journal_path(report), plan.key, plan.rows, scope=scope)
    body = success_body("T00001", 0.0)
    ticket = json.loads(body)["data"]
    for row in range(1, done + 1):
        journal.record(Result(row, Outcome.LINKED, 200, "", 1, ticket, body))
    journal.close()

    reads = [0]
    most = [0]
    real_read = Journal.read

    def read(self: Journal, row: int) -> Result:
        reads[0] += 1
        return real_read(self, row)

    async def probe() -> None:
        while True:  # one wake-up per event-loop turn: what each turn read back
            await asyncio.sleep(0)
            most[0] = max(most[0], reads[0])
            reads[0] = 0

    real_run = bulklink.run.job._run

    async def measured(*args: Any) -> Any:
        task = asyncio.create_task(probe())
        try:
            return await real_run(*args)
        finally:
            task.cancel()

    # No time to spare in a turn: each takes one check's worth of rows (machine-independent).
    monkeypatch.setattr(bulklink.run.assembly, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(Journal, "read", read)
    monkeypatch.setattr(bulklink.run.job, "_run", measured)
    summary = run_job(
        src,
        base_url=sandbox.url,
        token="tok-SECRET-abc123",
        org_id="org_test",
        rate=0,
        backoff=0.01,
    )
    assert summary.resumed_rows == done and summary.counts["linked"] == n
    assert len(sandbox.requests) == n - done
    assert 0 < most[0] <= 2 * SLICE_ROWS, f"{most[0]} rows read back in one event-loop turn"


# -- a journal resumes only against the server, org and credentials it was made for -----------


def assert_fresh_start(stderr: str, *names: str) -> None:
    """One note on stderr: the journal was set aside, naming what differs."""
    notes = [line for line in stderr.splitlines() if "starting fresh" in line]
    assert len(notes) == 1, stderr
    for name in names:
        assert name in notes[0], (name, notes[0])
    assert not re.search(r"resuming|already done", stderr), stderr


def test_base_url_a_then_b_sends_every_row_to_b(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    a, b = start_sandbox(), start_sandbox()
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    interrupt_at_row_11(a, src, report, env_for(a.url))

    result = run_against(b, "run", src, *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(b)) == input_pairs(N), "B did not receive every row"
    assert_all_linked(report)
    assert_fresh_start(result.stderr, f"{a.url} (org {ORG})", f"{b.url} (org {ORG})")
    assert TOKEN not in result.stderr + result.stdout
    assert not journal_of(report).exists()


def test_org_a_then_org_b_sends_every_row_again(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(org_id=None)  # accepts any org
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    interrupt_at_row_11(server, src, report, env_for(server.url, THENA_ORG_ID="org_a"))
    since = len(server.requests)

    result = invoke("run", src, *FAST_UNPACED, env=env_for(server.url, THENA_ORG_ID="org_b"))
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(server, since)) == input_pairs(N)
    assert {r.header("x-org-id") for r in server.requests[since:]} == {"org_b"}
    assert_all_linked(report)
    assert_fresh_start(result.stderr, "(org org_a)", "(org org_b)")


@pytest.mark.parametrize("change", ["same URL", "URL spelled differently", "rotated token"])
def test_same_scope_resumes_and_sends_only_the_rest(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], change: str
) -> None:
    server = start_sandbox(token=None)  # accepts any token
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    interrupt_at_row_11(server, src, report, env_for(server.url, THENA_TOKEN="old-token-1234"))
    since = len(server.requests)

    env = env_for(server.url, THENA_TOKEN="old-token-1234")
    if change == "URL spelled differently":
        env["THENA_BASE_URL"] = server.url + "/"
    elif change == "rotated token":
        env["THENA_TOKEN"] = "new-token-5678"
    result = invoke("run", src, *FAST_UNPACED, env=env)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(server, since)) == input_pairs(N)[10:], "rows done earlier were sent again"
    assert "resuming: 10 rows were already done" in result.stderr
    assert "starting fresh" not in result.stderr
    assert_all_linked(report)


def test_sandbox_then_real_server_sends_every_row_and_sweeps_the_killed_runs_temp(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox()
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    journal = journal_of(report)
    args = ("run", src, "--sandbox", *FAST_UNPACED, "--rate", "20", "--concurrency", "2")
    with subprocess.Popen(
        [sys.executable, "-m", "bulklink", *map(str, args)],
        env={k: v for k, v in os.environ.items() if not k.startswith("THENA_")},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        deadline = time.monotonic() + 30
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 6):
            assert proc.poll() is None, "the sandbox run ended before it could be killed"
            assert time.monotonic() < deadline, "no journal lines from the sandbox run"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert json.loads(journal.read_bytes().splitlines()[0])["scope"]["sandbox"] is True
    leftovers = list(tmp_path.glob(".in.results.csv.*.bulklink-tmp"))
    assert leftovers, "the killed run left no temporary report (nothing to sweep)"

    result = run_against(server, "run", src, *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(server)) == input_pairs(N), "the real server did not receive every row"
    assert_all_linked(report)
    assert_fresh_start(result.stderr, "the sandbox", server.url)
    assert not any(p.exists() for p in leftovers), "the killed run's temporary file was kept"


def test_api_key_without_org_resumes_with_the_same_key_only(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(token=None, org_id=None)
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    key_1, key_2 = "key-one-SECRET-111", "key-two-SECRET-222"
    env = {"THENA_API_KEY": key_1, "THENA_BASE_URL": server.url}
    interrupt_at_row_11(server, src, report, env)
    assert key_1 not in journal_of(report).read_text(), "the API key is in the journal"

    # Another key without an org ID may belong to another org: start fresh.
    since = len(server.requests)
    server.config.script["T00011"] = [Reply(status=401)]
    other = invoke(
        "run", src, "--concurrency", "1", *FAST_UNPACED, env={**env, "THENA_API_KEY": key_2}
    )
    assert other.exit_code == 3, other.stderr
    assert sent(server, since) == input_pairs(N)[:11]
    assert_fresh_start(other.stderr, "another API key", "--org-id")
    assert key_1 not in other.stderr and key_2 not in other.stderr

    # The same key again resumes.
    since = len(server.requests)
    same = invoke("run", src, *FAST_UNPACED, env={**env, "THENA_API_KEY": key_2})
    assert same.exit_code == 0, same.stderr
    assert sorted(sent(server, since)) == input_pairs(N)[10:]
    assert "resuming: 10 rows" in same.stderr
    assert_all_linked(report)


def test_journal_of_the_previous_format_starts_fresh_with_a_note(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src, report = pairs_csv(tmp_path / "in.csv", N), tmp_path / "in.results.csv"
    interrupt_at_row_11(sandbox, src, report, env_for(sandbox.url))
    journal = journal_of(report)
    header, *lines = journal.read_bytes().splitlines(keepends=True)
    old = json.loads(header)
    old = {"bulklink_journal": 1, "key": old["key"], "rows": old["rows"]}
    journal.write_bytes(json.dumps(old).encode() + b"\n" + b"".join(lines))
    since = len(sandbox.requests)

    # The journal alone decides here: the state store would skip the 10 rows linked.
    result = run_against(sandbox, "run", src, "--no-state", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent(sandbox, since)) == input_pairs(N)
    assert_fresh_start(result.stderr, "older bulklink")
    assert_all_linked(report)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://API.Example.COM:443/v1/", "https://api.example.com/v1"),
        ("https://user:pw@a.example/?token=s3cret#x", "https://a.example"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
    ],
)
def test_base_url_is_normalised_and_never_keeps_credentials(url: str, normal: str) -> None:
    assert normalise_url(url) == normal


# -- journal lines always read back -----------------------------------------------------------


BOM = b"\xef\xbb\xbf"

SCOPE = Scope.build("https://api.example", "org_1", sandbox=False)


def test_bom_and_utf16_bodies_are_journaled_so_they_read_back(tmp_path: Path) -> None:
    body = success_body("CT1", 0.0)
    ticket = json.loads(body)["data"]
    path = tmp_path / "x.journal"
    journal, _ = Journal.open(path, "key", 5, scope=SCOPE)
    bodies = [BOM + body, body.decode().encode("utf-16"), b' \n{"status": true}', body]
    for row, raw in enumerate(bodies, start=1):
        data = ticket if row != 3 else None
        journal.record(Result(row, Outcome.LINKED, 200, "", 1, data, raw))
    journal.record(Result(5, Outcome.FAILED, 404, "HTTP 404 Ticket not found: \u2028x", 1))
    journal.close()

    again, note = Journal.open(path, "key", 5, scope=SCOPE)
    assert "5 rows were already done" in note
    assert [again.read(row).ticket for row in (1, 2, 3, 4)] == [ticket, ticket, None, ticket]
    assert again.read(5).error == "HTTP 404 Ticket not found: \u2028x"
    again.close()


def test_damaged_lines_count_as_not_done(tmp_path: Path) -> None:
    path = tmp_path / "x.journal"
    journal, _ = Journal.open(path, "key", 6, scope=SCOPE)
    for row in range(1, 7):
        body = b'{"data":{"id":%d}}' % row
        journal.record(Result(row, Outcome.LINKED, 200, "", 1, {"id": row}, body))
    journal.close()
    header, *lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"linked"', b'"linkd"')  # row 2: edited
    lines[2] = b'{"r":3}\n'  # row 3: rewritten by hand
    lines[3] = lines[3].replace(b'"a":1', b'"a":2')  # row 4: valid JSON, but not ours
    path.write_bytes(header + b"".join(lines) + lines[4][:20])  # + a torn last line

    again, note = Journal.open(path, "key", 6, scope=SCOPE)
    assert [again.done(row) for row in range(1, 7)] == [True, False, False, False, True, True]
    assert "3 unreadable journal lines ignored" in note
    assert again.read(5).ticket == {"id": 5}
    again.close()
    assert checked_row(lines[0]) == 1 and checked_row(lines[1]) == 0
    assert parse_line(b"null\n") is None and parse_line(b'{"r":1,"o":"skipped"}') is None


def stop_after(server: Sandbox, first: int, n: int) -> None:
    """Script a 401 for row ``first`` so a --concurrency 1 run stops there (exit 3),
    leaving the rows before it in the journal; the rerun gets the normal answers."""
    server.config.script[f"T{first:05d}"] = [Reply(401)]


def test_bom_bodies_resume_and_hand_damaged_lines_are_sent_again(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 12
    pairs = input_pairs(n)
    server = start_sandbox(
        script={s: [Reply(200, BOM + success_body(s, 0.0))] for s, _ in pairs[:8]}
    )
    stop_after(server, 9, n)
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    # The journal alone decides what is sent again: the state store knows rows 2 and 5.
    args = ("run", src, "--concurrency", "1", "--rate", "0", "--no-state", *FAST)
    first = run_against(server, *args)
    assert first.exit_code == 3, first.stderr
    journal = journal_of(report)
    header, *lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 8
    lines[1] = lines[1].replace(b'"h":200', b'"h":"200"')  # rows 2 and 5, edited by hand
    lines[4] = b'{"r":5,"o":"linked","h":200,"a":1,"e":"","b":null}\n'
    journal.write_bytes(header + b"".join(lines))

    since = len(server.requests)
    second = run_against(server, *args)
    assert second.exit_code == 0, second.stderr
    no_traceback(second.stderr)
    assert sorted(sent(server, since)) == sorted([pairs[1], pairs[4], *pairs[8:]])
    rows = read_report(report)
    assert [r["outcome"] for r in rows] == ["linked"] * n
    # Rows read back from BOM-prefixed answers keep their ticket data.
    assert [r["ticket.ticketId"] != "" for r in rows] == [True] * n
    assert rows[0]["ticket.title"] == json.loads(success_body("T00001", 0.0))["data"]["title"]


# -- a full disk stops the run (exit 74) and the rerun resumes --------------------------------


REAL_OS_WRITE = os.write


@pytest.fixture
def full_disk_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """After ``writes`` successful writes to any ``*.journal`` file, every write to one
    fails with ENOSPC (the first may be partial), as on a disk that fills up."""

    def arm(writes: int) -> None:
        real = os.write
        left = [writes]

        def write(fd: int, data: Any) -> int:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.endswith(".journal"):
                if left[0] <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left[0] -= 1
                if left[0] == 0:  # the last write that fits is cut short
                    return real(fd, bytes(data)[: max(1, len(data) // 2)])
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)

    return arm


def rerun_after_full_disk(
    server: Sandbox,
    args: tuple[Any, ...],
    first: list[Any],
    report: Path,
    n: int,
    concurrency: int,
) -> None:
    """The same command once space is back: it links the rest and resends only the rows
    whose results could not be written (those finished in the turn the write failed, and
    those in flight then: each at most --concurrency)."""
    again = run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    resent = set(first) & set(sent(server, len(first)))
    assert len(resent) <= 2 * concurrency, resent
    # Rows linked before the disk filled and recorded in the state store (which lives on
    # another disk here) are known as linked even where the journal missed them.
    outcomes = [r["outcome"] for r in read_report(report)]
    assert set(outcomes) <= {"linked", "already-linked"} and len(outcomes) == n


def test_full_disk_on_the_journal_stops_exits_74_and_resumes(
    tmp_path: Path,
    start_sandbox: Callable[..., Sandbox],
    full_disk_after: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_sandbox(latency=0.01)
    n, concurrency = 120, 4
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--concurrency", str(concurrency), "--rate", "0", *FAST)
    full_disk_after(6)
    result = run_against(server, *args)

    assert result.exit_code == 74, result.stderr
    no_traceback(result.stderr)
    said = [line for line in result.stderr.splitlines() if line.startswith("bulklink:")]
    assert said == [f"bulklink: error: No space left on device: {journal_path(report)}"]
    first = sent(server)
    assert len(first) < n, "sending went on after the disk filled"
    assert journal_of(report).exists()

    # Space freed (only this patch is undone: the test's own state store stays in place).
    monkeypatch.setattr(os, "write", REAL_OS_WRITE)
    rerun_after_full_disk(server, args, first, report, n, concurrency)
    assert not journal_of(report).exists()


def test_a_failed_report_write_exits_74_naming_the_report(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulklink.tables.report.writers import CsvWriter

    real = CsvWriter.write
    rows_written = [0]

    def write(self: CsvWriter, *cells: Any) -> None:
        rows_written[0] += 1
        if rows_written[0] > 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, *cells)

    monkeypatch.setattr(CsvWriter, "write", write)
    n = 40
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--concurrency", "2", "--rate", "0", *FAST)
    result = run_against(sandbox, *args)
    assert result.exit_code == 74, result.stderr
    no_traceback(result.stderr)
    assert f"No space left on device: {report}" in result.stderr
    assert not report.exists(), "a half-written report was installed"
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    done = line_count(journal_of(report)) - 1
    assert done >= 10

    monkeypatch.setattr(CsvWriter, "write", real)  # space freed
    since = len(sandbox.requests)
    again = run_against(sandbox, *args)
    assert again.exit_code == 0, again.stderr
    assert len(sent(sandbox, since)) == n - done


def test_failed_summary_or_log_writes_exit_74(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 5)
    result = run_against(sandbox, "run", src, *FAST, "--log-file", "/dev/full")
    assert result.exit_code == 74, result.stderr
    assert "No space left on device: /dev/full" in result.stderr
    assert {r["outcome"] for r in read_report(tmp_path / "in.results.csv")} == {"linked"}

    def full(path: Path, summary: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bulklink.run.job, "write_summary_json", full)
    summary = tmp_path / "s.json"
    result = run_against(sandbox, "run", src, *FAST, "--summary-json", summary)
    assert result.exit_code == 74, result.stderr
    no_traceback(result.stderr)
    assert f"No space left on device: {summary}" in result.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 48 KiB filesystem (root only), grown to 16 MiB by ``grow(path)``."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_still_tells_the_summary_json_metrics_and_history_what_was_done(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], small_tmpfs: Path
) -> None:
    """The report could not be written, but pairs were linked: the machine-readable end
    says so (not an empty run of 0 rows), and the history holds that run once, ended."""
    server = start_sandbox(latency=0.005)
    n = 300
    src = pairs_csv(tmp_path / "in.csv", n)
    summary, metrics = tmp_path / "summary.json", tmp_path / "m.prom"
    result = run_against(
        server, "run", src, "-o", small_tmpfs / "nightly.results.csv", "--rate", "0",
        "--concurrency", "4", "--summary-json", summary, "--metrics-file", metrics, *FAST,
    )  # fmt: skip
    assert result.exit_code == 74, result.stderr
    linked = len(sent(server))
    assert 0 < linked < n
    end = json.loads(summary.read_text())
    assert (end["exit_code"], end["rows"], end["requests"]) == (74, n, linked)
    assert end["counts"]["linked"] == linked and sum(end["counts"].values()) == n
    assert f'bulklink_last_run_rows{{job="nightly.results",outcome="linked"}} {linked}.0' in (
        metrics.read_text()
    )
    history = json.loads(invoke("runs", "--json").stdout)
    assert [(r["exit_code"], r["counts"].get("linked")) for r in history] == [(74, linked)]


def test_a_real_full_disk_exits_74_then_resumes_after_freeing_space(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], small_tmpfs: Path
) -> None:
    server = start_sandbox(latency=0.005)
    n, concurrency = 300, 4
    src = pairs_csv(tmp_path / "in.csv", n)
    report = small_tmpfs / "nightly.results.csv"
    args = ("run", src, "-o", report, "--concurrency", str(concurrency), "--rate", "0", *FAST)
    result = run_against(server, *args)

    assert result.exit_code == 74, result.stderr
    no_traceback(result.stderr)
    said = [line for line in result.stderr.splitlines() if line.startswith("bulklink:")]
    assert len(said) == 1 and f"No space left on device: {small_tmpfs}/" in said[0], said
    first = sent(server)
    assert len(first) < n

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    rerun_after_full_disk(server, args, first, report, n, concurrency)


# -- the assembler's memory bounds, made small ------------------------------------------


def test_the_feed_waits_while_the_report_cursor_is_far_behind(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulklink.tables.inputs, "CHUNK_ROWS", 10)
    monkeypatch.setattr(bulklink.run.job, "MAX_LEAD_ROWS", 20)
    # Row 1 answers after 1 s: the cursor stays on it while every other row is done.
    server = start_sandbox(script={"T00001": [Reply(delay=1.0)]})
    n = 200
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--concurrency", "4", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr

    first = next(r for r in server.requests if b"T00001" in r.body)
    before = [r for r in server.requests if r.t < first.t + 0.9]
    # Read ahead stops at MAX_LEAD_ROWS plus the chunk being fed and the batch in flight.
    assert len(before) <= 20 + 10 + 4, len(before)
    rows = read_report(tmp_path / "in.results.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert {r["outcome"] for r in rows} == {"linked"}


def test_results_far_ahead_of_the_cursor_are_read_back_from_the_journal(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulklink.run.assembly, "PENDING_IN_MEMORY", 2)
    reads = [0]
    real_read = bulklink.state.journal.Journal.read

    def read(self: bulklink.state.journal.Journal, row: int) -> bulklink.models.Result:
        reads[0] += 1
        return real_read(self, row)

    monkeypatch.setattr(bulklink.state.journal.Journal, "read", read)
    server = start_sandbox(script={"T00001": [Reply(delay=0.5)]})
    n = 40
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--concurrency", "8", *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert reads[0] >= n - 1 - 2 - 8, "rows beyond the in-memory bound came from the journal"
    rows = read_report(tmp_path / "in.results.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert all(r["outcome"] == "linked" and r["ticket.id"] == r["sourceTicketId"] for r in rows)
