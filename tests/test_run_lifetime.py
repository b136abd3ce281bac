"""A run always ends well (issue 12): journal lines that always read back, a bug or a full
disk that stops a run cleanly (exit 70 / 74) and resumes, --give-up-after and --deadline,
SIGHUP, a signal while standard input is spooled, a closed output pipe, and a resume that
does not stall the event loop. Everything goes over loopback to the sandbox.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bulklink.job
from bulklink.client import Answer, Verdict
from bulklink.errors import UsageError
from bulklink.inputs import ReadOptions, Table, scan
from bulklink.journal import Journal, Scope, checked_row, journal_path, parse_line
from bulklink.models import Outcome, Pair, Result
from bulklink.options import RunSettings, parse_duration
from bulklink.runner import Runner, describe_refusals
from bulklink.sandbox import Reply, Sandbox, success_body
from tests.conftest import pairs_csv, read_report, run_against
from tests.test_cron import (
    ROOT,
    child_env,
    input_pairs,
    journal_of,
    line_count,
    sent,
    spawn,
    wait_until,
)

FAST = ("--backoff", "0.01", "--no-progress")
BOM = b"\xef\xbb\xbf"

SCOPE = Scope.build("https://api.example", "org_1", sandbox=False)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def stop_after(server: Sandbox, first: int, n: int) -> None:
    """Script a 401 for row ``first`` so a --concurrency 1 run stops there (exit 3),
    leaving the rows before it in the journal; the rerun gets the normal answers."""
    server.config.script[f"T{first:05d}"] = [Reply(401)]


# -- journal lines always read back --------------------------------------------------------


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
    # --no-state: the store would know rows 2 and 5 as linked (rightly) and not resend them.
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


# -- a bug inside a worker -----------------------------------------------------------------


class _Flaky:
    """A :class:`~bulklink.runner.Linker` whose third call raises (a bug, not the network)."""

    def __init__(self) -> None:
        self.calls = 0
        self.finished: list[str] = []

    async def link(self, source: str, linked: str) -> Answer:
        self.calls += 1
        if self.calls == 3:
            raise ZeroDivisionError("a bug")
        await asyncio.sleep(0.01)
        self.finished.append(source)
        return Answer(Verdict.LINKED, 200)


def test_runner_stops_everyone_on_a_bug_and_raises_it_after_in_flight_finish() -> None:
    linker = _Flaky()
    results: list[Result] = []

    async def feed() -> Any:
        yield [Pair(i, f"S{i}", f"L{i}") for i in range(1, 50)]

    async def main() -> None:
        runner = Runner(linker, RunSettings(rate=0, concurrency=4), results.append)
        with pytest.raises(ZeroDivisionError):
            await runner.run(feed())
        assert runner.stop_reason == "internal error"

    asyncio.run(main())
    # The other three requests in flight finished and were reported; nothing more was sent.
    assert len(linker.finished) == 3
    assert sorted(r.row for r in results if r.outcome is Outcome.LINKED) == [1, 2, 4]
    assert linker.calls == 4


def test_runner_counts_refusals_since_the_last_answer_that_settled_a_row() -> None:
    timeout = Answer(Verdict.RETRY, None, "timeout after 1s")
    answers = iter(
        [
            *(Answer(Verdict.RETRY, 503), timeout, Answer(Verdict.LINKED, 200)),  # row 1
            *(Answer(Verdict.RETRY, 503), timeout, Answer(Verdict.RETRY, 503)),  # row 2: gives up
            Answer(Verdict.FAIL, 404, "gone"),  # row 3: failed, but the API answered
        ]
    )

    class Scripted:
        async def link(self, source: str, linked: str) -> Answer:
            return next(answers)

    seen: list[tuple[str, str]] = []

    def note(result: Result) -> None:
        seen.append((result.outcome.value, describe_refusals(runner.refusals)))

    async def feed() -> Any:
        yield [Pair(1, "a", "b"), Pair(2, "c", "d"), Pair(3, "e", "f")]

    settings = RunSettings(rate=0, concurrency=1, backoff=0, max_retries=2)
    runner = Runner(Scripted(), settings, note)
    asyncio.run(runner.run(feed()))
    assert seen == [
        ("linked", ""),
        ("failed", "503 x 2, timeout after 1s x 1"),
        ("failed", ""),
    ]


def test_a_bug_in_a_worker_writes_the_report_exits_70_and_resumes(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bulklink.client

    real = bulklink.client.classify

    def buggy(status: int, headers: Any, body: bytes) -> Answer:
        if b"T00005" in body:
            raise KeyError("boom")
        return real(status, headers, body)

    monkeypatch.setattr(bulklink.client, "classify", buggy)
    n = 30
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    log = tmp_path / "run.log"
    args = ("run", src, "--concurrency", "2", "--rate", "0", *FAST)
    result = run_against(sandbox, *args, "--log-file", log, "--summary-json", tmp_path / "s.json")

    assert result.exit_code == 70, result.stderr
    no_traceback(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("bulklink:")]
    assert len(lines) == 1 and "internal error" in lines[0], result.stderr
    assert "KeyError" in lines[0] and "report it to" in lines[0] and str(log) in lines[0]
    assert "Traceback" in log.read_text() and "buggy" in log.read_text()
    rows = read_report(report)
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert rows[4]["outcome"] == "skipped"
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == 70
    assert journal_of(report).exists()

    monkeypatch.setattr(bulklink.client, "classify", real)
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    since = len(sandbox.requests)
    again = run_against(sandbox, *args)
    assert again.exit_code == 0, again.stderr
    assert sorted(sent(sandbox, since)) == sorted(set(input_pairs(n)) - linked)


# -- a full disk ---------------------------------------------------------------------------


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

    monkeypatch.undo()  # space freed
    again = run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    resent = set(first) & set(sent(server, len(first)))
    # Resent: the rows whose results could not be written: those finished in the turn
    # the write failed, and those in flight then (each at most --concurrency).
    assert len(resent) <= 2 * concurrency, resent
    assert [r["outcome"] for r in read_report(report)] == ["linked"] * n
    assert not journal_of(report).exists()


def test_a_failed_report_write_exits_74_naming_the_report(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulklink.report import CsvWriter

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

    monkeypatch.undo()
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

    monkeypatch.setattr(bulklink.job, "write_summary_json", full)
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
    again = run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    resent = set(first) & set(sent(server, len(first)))
    assert len(resent) <= 2 * concurrency, resent
    # Rows whose journal lines the full disk lost are in the state store (elsewhere):
    # known as linked, not sent again.
    assert {r["outcome"] for r in read_report(report)} <= {"linked", "already-linked"}
    assert all(r["success"] == "true" for r in read_report(report))


# -- a nightly run always ends -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("45", 45.0),
        ("0.5s", 0.5),
        (30, 30.0),
        ("0", None),
        ("off", None),
        (None, None),
    ],
)
def test_durations(text: str | float | None, seconds: float | None) -> None:
    assert parse_duration(text, "--x") == seconds


def test_a_bad_duration_is_a_usage_error(tmp_path: Path, sandbox: Sandbox) -> None:
    with pytest.raises(UsageError, match="--deadline must be a duration"):
        parse_duration("10 minutes", "--deadline")
    src = pairs_csv(tmp_path / "in.csv", 2)
    result = run_against(sandbox, "run", src, "--give-up-after", "soon", *FAST)
    assert result.exit_code == 2
    assert result.stderr.startswith("bulklink: error: --give-up-after must be a duration")
    assert sandbox.requests == []


def test_gives_up_when_the_api_refuses_everything(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 10
    refusals = [Reply(429), Reply(503)] * 500
    server = start_sandbox(script={s: list(refusals) for s, _ in input_pairs(n)})
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    summary = tmp_path / "s.json"
    args = ("run", src, "--rate", "0", "--concurrency", "2", "--max-retries", "1000", *FAST)
    result = run_against(server, *args, "--give-up-after", "1s", "--summary-json", summary)

    assert result.exit_code == 1, result.stderr
    no_traceback(result.stderr)
    stopped = json.loads(summary.read_text())["stopped"]
    assert stopped.startswith("gave up: the API refused everything for 1s (")
    assert "429 x " in stopped and "503 x " in stopped
    assert f"stopped: {stopped}" in result.stderr
    rows = read_report(report)
    assert {r["outcome"] for r in rows} == {"skipped"}
    assert any(r["error"] == f"not attempted: {stopped}" for r in rows)
    assert journal_of(report).exists(), "the journal is kept for a rerun"


def test_deadline_stops_dispatch_and_the_rerun_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "20", "--concurrency", "2", *FAST)
    result = run_against(server, *args, "--deadline", "1s")

    assert result.exit_code == 1, result.stderr
    rows = read_report(report)
    linked = [r for r in rows if r["outcome"] == "linked"]
    assert 0 < len(linked) < n
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    assert {r["error"] for r in rows if r["outcome"] == "skipped"} == {
        "not attempted: --deadline 1s reached"
    }
    assert len(server.requests) == len(linked), "in-flight requests were not let finish"
    again = run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    assert len(server.requests) == n


# -- signals -------------------------------------------------------------------------------


def test_sighup_is_handled_as_sigterm(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    with spawn(server, "run", src, "--rate", "30", "--concurrency", "4", *FAST) as proc:
        wait_until(lambda: len(server.requests) >= 5, "5 requests")
        os.kill(proc.pid, signal.SIGHUP)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 129, err
    assert "interrupted by SIGHUP" in err
    no_traceback(err)
    rows = read_report(report)
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    assert set(server.link_counts) == linked
    assert journal_of(report).exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_reading_stdin_leaves_no_copy_of_it(
    tmp_path: Path, sandbox: Sandbox, signum: int, code: int
) -> None:
    out = tmp_path / "out.csv"
    spool = tmp_path / ".out.csv.stdin.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", "-", "-o", str(out), *FAST],
        env=child_env(sandbox),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"sourceTicketId,linkedTicketId\n" + b"A1,B1\n" * 20_000)
    proc.stdin.flush()  # ... and the input never ends: the run is still reading it
    wait_until(lambda: spool.exists() and spool.stat().st_size > 1000, "the spooled input")
    os.kill(proc.pid, signum)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert b"before anything was sent" in err
    no_traceback(err.decode())
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a copy of the input was left"
    assert sandbox.requests == []


# -- a closed output pipe ------------------------------------------------------------------


def test_a_closed_pipe_changes_neither_the_report_nor_the_exit_code(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox()
    n = 20
    pairs = [("MISSING1", "X1"), *input_pairs(n - 1)]  # one 404: stderr has lines to say
    src = tmp_path / "in.csv"
    src.write_text("sourceTicketId,linkedTicketId\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    report = tmp_path / "in.results.csv"
    # As `bulklink run ... 2>&1 | head -1`: the reader is gone before anything is said.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(src), *FAST],
        env=child_env(server),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    rows = read_report(report)
    assert [r["outcome"] for r in rows] == ["failed"] + ["linked"] * (n - 1)

    for command, code in ((["report", str(report)], 1), (["run", str(src), "--dry-run"], 0)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulklink", *command],
            env=child_env(server),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        assert proc.wait(timeout=60) == code, command
        no_traceback(proc.stderr.read().decode())
        proc.stderr.close()


# -- resume does not stall the event loop ----------------------------------------------------


def test_resume_reads_done_rows_back_a_slice_per_loop_turn(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bulklink.assembly
    from bulklink.api import run_job
    from bulklink.assembly import SLICE_ROWS

    done, n = 20_000, 20_050
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

    real_run = bulklink.job._run

    async def measured(*args: Any) -> Any:
        task = asyncio.create_task(probe())
        try:
            return await real_run(*args)
        finally:
            task.cancel()

    # No time to spare in a turn: each takes one check's worth of rows (machine-independent).
    monkeypatch.setattr(bulklink.assembly, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(Journal, "read", read)
    monkeypatch.setattr(bulklink.job, "_run", measured)
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
