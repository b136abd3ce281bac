"""A run always ends well: signals (SIGTERM, SIGINT, SIGHUP, a second Ctrl-C), one run per
report, a bug inside a worker (exit 70), --give-up-after and --deadline, and a closed
output pipe. Long runs are real subprocesses so they can be signalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bulklink.errors import UsageError
from bulklink.models import Outcome, Pair, Result
from bulklink.net.client import Answer, Verdict
from bulklink.options import TrafficOptions, parse_duration
from bulklink.run.runner import Runner, describe_refusals
from bulklink.sandbox import Reply, Sandbox
from tests import helpers as h

# -- signals: a clean stop with a report ------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signal_writes_report_with_skipped_rows_then_rerun_completes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], signum: int, code: int
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "30", "--concurrency", "4", "--backoff", "0.01")
    with h.spawn(server, *args) as proc:
        h.wait_until(lambda: len(server.requests) >= 10, "10 requests")
        os.kill(proc.pid, signum)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err

    pairs = h.input_pairs(n)
    rows = h.read_report(report)
    h.assert_rows_once(rows, pairs)
    outcomes = [r["outcome"] for r in rows]
    assert set(outcomes) == {"linked", "skipped"}
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    # Every pair the server linked before the stop is linked in the report (in-flight
    # requests were let finish), and nothing else is.
    assert set(server.link_counts) == linked
    assert all(r["success"] == "false" for r in rows if r["outcome"] == "skipped")
    assert "report:" in err

    since = len(server.requests)
    # The rerun unpaced: what it resumes is the point here, not its rate.
    result = h.run_against(server, *args, "--rate", "0", "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert len(linked) in h.done_earlier(result.stderr), result.stderr
    assert sorted(h.sent(server, since)) == sorted(set(pairs) - linked)
    rows = h.read_report(report)
    h.assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert server.link_counts == dict.fromkeys(pairs, 1), "a pair was linked twice"


@pytest.mark.slow
def test_sigterm_waits_for_in_flight_requests_at_most_timeout(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 8
    server = start_sandbox(script={s: [Reply(delay=10)] for s, _ in h.input_pairs(n)})
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "0", "--concurrency", "2", "--timeout", "1", *h.FAST)
    with h.spawn(server, *args) as proc:
        h.wait_until(lambda: len(server.requests) >= 2, "2 requests in flight")
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert elapsed < 3.0, f"SIGTERM took {elapsed:.1f}s with --timeout 1"
    rows = h.read_report(report)
    h.assert_rows_once(rows, h.input_pairs(n))
    assert [r["outcome"] for r in rows][2:] == ["skipped"] * (n - 2)
    assert len(server.requests) == 2, "requests were sent after SIGTERM"


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_and_journal_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n, quick = 30, 10
    # Rows after the first ten hang for 4 s, so the first Ctrl-C has requests to wait for.
    slow = {f"T{i:05d}": [Reply(delay=4)] for i in range(quick + 1, n + 1)}
    server = start_sandbox(script=slow)
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "0", "--concurrency", "4")
    with h.spawn(server, *args) as proc:
        h.wait_until(lambda: len(server.requests) >= quick + 4, "the slow requests")
        h.wait_until(lambda: h.line_count(h.journal_of(report)) > quick, "the quick rows journaled")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 130
    assert elapsed < 2.0, f"second Ctrl-C took {elapsed:.1f}s"
    assert h.journal_of(report).exists()

    server.config.script.clear()
    since = len(server.requests)
    result = h.run_against(server, *args, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert quick in h.done_earlier(result.stderr), result.stderr
    pairs = h.input_pairs(n)
    assert sorted(h.sent(server, since)) == pairs[quick:]
    rows = h.read_report(report)
    h.assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert all(server.link_counts[p] == 1 for p in pairs[:quick])


@pytest.mark.slow
def test_sighup_is_handled_as_sigterm(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    with h.spawn(server, "run", src, "--rate", "30", "--concurrency", "4", *h.FAST) as proc:
        h.wait_until(lambda: len(server.requests) >= 5, "5 requests")
        os.kill(proc.pid, signal.SIGHUP)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 129, err
    assert "interrupted by SIGHUP" in err
    h.no_traceback(err)
    rows = h.read_report(report)
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    assert set(server.link_counts) == linked
    assert h.journal_of(report).exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
@pytest.mark.slow
def test_a_signal_while_reading_stdin_leaves_no_copy_of_it(
    tmp_path: Path, sandbox: Sandbox, signum: int, code: int
) -> None:
    out = tmp_path / "out.csv"

    def spooled() -> bool:  # the copy has a random name: .out.csv.<hex>.bulklink-input
        return any(p.stat().st_size > 1000 for p in tmp_path.glob(".out.csv.*.bulklink-input"))

    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", "-", "-o", str(out), *h.FAST],
        env=h.child_env(sandbox),
        cwd=h.ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"sourceTicketId,linkedTicketId\n" + b"A1,B1\n" * 20_000)
    proc.stdin.flush()  # ... and the input never ends: the run is still reading it
    h.wait_until(spooled, "the spooled input")
    os.kill(proc.pid, signum)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert b"before anything was sent" in err
    h.no_traceback(err.decode())
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a copy of the input was left"
    assert sandbox.requests == []


# -- one run per report -----------------------------------------------------------------------


@pytest.mark.slow
def test_second_run_refuses_fast_names_the_holder_and_changes_nothing(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 12
    server = start_sandbox()
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    assert h.run_against(server, "run", src, "--rate", "0", *h.FAST).exit_code == 0

    # The holder: every request hangs 5 s; its token is given on the command line. It
    # relinks: the store knows every pair from the run above.
    for source, _ in h.input_pairs(n):
        server.config.script[source] = [Reply(delay=5)]
    first = h.spawn(server, "run", src, "--rate", "0", "--concurrency", "4", "--token", h.TOKEN,
                  "--relink", token=False)  # fmt: skip
    with first:
        lock = h.lock_of(report)
        h.wait_until(lambda: len(server.requests) >= n + 4, "the holder's requests")
        h.wait_until(lambda: str(first.pid).encode() in lock.read_bytes(), "the lock's holder")
        files = (report, h.journal_of(report))
        snapshot = {p: p.read_bytes() for p in files}
        requests = len(server.requests)

        t0 = time.monotonic()
        with h.spawn(server, "run", src, "--rate", "0", "--no-progress") as second:
            out, err = second.communicate(timeout=10)
        elapsed = time.monotonic() - t0
        assert second.returncode == 75, err
        # The holder's requests hang 5 s: a refusal that waited for the lock could not come
        # back before them. (How fast a refused run starts is bench.py's start-up figure.)
        assert elapsed < 4.0, f"refusal took {elapsed:.2f}s"
        assert str(first.pid) in err, err

        again = h.run_against(server, "retry", report, *h.FAST)
        assert again.exit_code == 75, again.stderr
        assert str(first.pid) in again.stderr

        assert {p: p.read_bytes() for p in files} == snapshot
        assert len(server.requests) == requests, "a refused run sent requests"
        for text in (out, err, again.stdout, again.stderr, lock.read_text()):
            assert h.TOKEN not in text

        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
    assert lock.exists()  # left behind by the killed run

    server.config.script.clear()
    result = h.run_against(server, "run", src, "--rate", "0", *h.FAST)
    assert result.exit_code == 0, result.stderr
    rows = h.read_report(report)
    h.assert_rows_once(rows, h.input_pairs(n))
    # Linked by the first run and known to the store: not sent again.
    assert {r["outcome"] for r in rows} == {"already-linked"}


def test_junk_lock_file_held_by_nobody_does_not_block(tmp_path: Path, sandbox: Sandbox) -> None:
    src = h.pairs_csv(tmp_path / "in.csv", 5)
    report = tmp_path / "in.results.csv"
    h.lock_of(report).write_bytes(b"\x00junk{not json\n")
    result = h.run_against(sandbox, "run", src, "--rate", "0", *h.FAST)
    assert result.exit_code == 0, result.stderr
    rows = h.read_report(report)
    h.assert_rows_once(rows, h.input_pairs(5))
    assert {r["outcome"] for r in rows} == {"linked"}
    # and it stays usable: retry on the finished report takes the lock too
    assert h.run_against(sandbox, "retry", report, *h.FAST).exit_code == 0


# -- a bug inside a worker --------------------------------------------------------------------


def test_runner_stops_everyone_on_a_bug_and_raises_it_after_in_flight_finish(
    linker: h.ScriptedLinker,
) -> None:
    linker.latency = 0.01
    linker.script["T00003"] = [ZeroDivisionError("a bug")]  # the third call: a bug
    results: list[Result] = []

    async def feed() -> Any:
        yield [Pair(row, *pair) for row, pair in enumerate(h.input_pairs(49), start=1)]

    async def main() -> None:
        runner = Runner(linker, TrafficOptions(rate=0, concurrency=4), results.append)
        with pytest.raises(ZeroDivisionError):
            await runner.run(feed())
        assert runner.stop_reason == "internal error"

    asyncio.run(main())
    # The other three requests in flight finished and were reported; nothing more was sent.
    assert len(linker.answered) == 3
    assert sorted(r.row for r in results if r.outcome is Outcome.LINKED) == [1, 2, 4]
    assert len(linker.calls) == 4


def test_runner_counts_refusals_since_the_last_answer_that_settled_a_row(
    linker: h.ScriptedLinker,
) -> None:
    timeout = Answer(Verdict.RETRY, None, "timeout after 1s")
    linker.script = {
        "T00001": [Answer(Verdict.RETRY, 503), timeout, Answer(Verdict.LINKED, 200)],
        "T00002": [Answer(Verdict.RETRY, 503), timeout, Answer(Verdict.RETRY, 503)],  # gives up
        "T00003": [Answer(Verdict.FAIL, 404, "gone")],  # failed, but the API answered
    }
    seen: list[tuple[str, str]] = []

    def note(result: Result) -> None:
        seen.append((result.outcome.value, describe_refusals(runner.refusals)))

    async def feed() -> Any:
        yield [Pair(row, *pair) for row, pair in enumerate(h.input_pairs(3), start=1)]

    settings = TrafficOptions(rate=0, concurrency=1, backoff=0, max_retries=2)
    runner = Runner(linker, settings, note)
    asyncio.run(runner.run(feed()))
    assert seen == [
        ("linked", ""),
        ("failed", "503 x 2, timeout after 1s x 1"),
        ("failed", ""),
    ]


def test_a_bug_in_a_worker_writes_the_report_exits_70_and_resumes(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bulklink.net.client

    real = bulklink.net.client.classify

    def buggy(status: int, headers: Any, body: bytes, **options: Any) -> Answer:
        if b"T00005" in body:
            raise KeyError("boom")
        return real(status, headers, body, **options)

    monkeypatch.setattr(bulklink.net.client, "classify", buggy)
    n = 30
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    log = tmp_path / "run.log"
    args = ("run", src, "--concurrency", "2", "--rate", "0", *h.FAST)
    result = h.run_against(sandbox, *args, "--log-file", log, "--summary-json", tmp_path / "s.json")

    assert result.exit_code == 70, result.stderr
    h.no_traceback(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("bulklink:")]
    assert len(lines) == 1 and "internal error" in lines[0], result.stderr
    assert "KeyError" in lines[0] and "report it to" in lines[0] and str(log) in lines[0]
    assert "Traceback" in log.read_text() and "buggy" in log.read_text()
    rows = h.read_report(report)
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert rows[4]["outcome"] == "skipped"
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == 70
    assert h.journal_of(report).exists()

    monkeypatch.setattr(bulklink.net.client, "classify", real)
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    since = len(sandbox.requests)
    again = h.run_against(sandbox, *args)
    assert again.exit_code == 0, again.stderr
    assert sorted(h.sent(sandbox, since)) == sorted(set(h.input_pairs(n)) - linked)


# -- a nightly run always ends: --give-up-after and --deadline --------------------------------


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
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    result = h.run_against(sandbox, "run", src, "--give-up-after", "soon", *h.FAST)
    assert result.exit_code == 2
    assert result.stderr.startswith("bulklink: error: --give-up-after must be a duration")
    assert sandbox.requests == []


@pytest.mark.slow
def test_gives_up_when_the_api_refuses_everything(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 10
    refusals = [Reply(429), Reply(503)] * 500
    server = start_sandbox(script={s: list(refusals) for s, _ in h.input_pairs(n)})
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    summary = tmp_path / "s.json"
    args = ("run", src, "--rate", "0", "--concurrency", "2", "--max-retries", "1000", *h.FAST)
    result = h.run_against(server, *args, "--give-up-after", "3s", "--summary-json", summary)

    assert result.exit_code == 1, result.stderr
    h.no_traceback(result.stderr)
    stopped = json.loads(summary.read_text())["stopped"]
    assert stopped.startswith("gave up: the API refused everything for 3s (")
    assert "429 x " in stopped and "503 x " in stopped
    assert f"stopped: {stopped}" in result.stderr
    rows = h.read_report(report)
    assert {r["outcome"] for r in rows} == {"skipped"}
    assert any(r["error"] == f"not attempted: {stopped}" for r in rows)
    assert h.journal_of(report).exists(), "the journal is kept for a rerun"


@pytest.mark.slow
def test_deadline_stops_dispatch_and_the_rerun_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = h.pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "20", "--concurrency", "2", *h.FAST)
    result = h.run_against(server, *args, "--deadline", "1s")

    assert result.exit_code == 1, result.stderr
    rows = h.read_report(report)
    linked = [r for r in rows if r["outcome"] == "linked"]
    assert 0 < len(linked) < n
    assert {r["outcome"] for r in rows} == {"linked", "skipped"}
    assert {r["error"] for r in rows if r["outcome"] == "skipped"} == {
        "not attempted: --deadline 1s reached"
    }
    assert len(server.requests) == len(linked), "in-flight requests were not let finish"
    again = h.run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    assert len(server.requests) == n


# -- a closed output pipe ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_pipe_changes_neither_the_report_nor_the_exit_code(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox()
    n = 20
    pairs = [("MISSING1", "X1"), *h.input_pairs(n - 1)]  # one 404: stderr has lines to say
    src = tmp_path / "in.csv"
    src.write_text("sourceTicketId,linkedTicketId\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    report = tmp_path / "in.results.csv"
    # As `bulklink run ... 2>&1 | head -1`: the reader is gone before anything is said.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(src), *h.FAST_UNPACED],
        env=h.child_env(server),
        cwd=h.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    rows = h.read_report(report)
    assert [r["outcome"] for r in rows] == ["failed"] + ["linked"] * (n - 1)

    for command, code in ((["report", str(report)], 1), (["run", str(src), "--dry-run"], 0)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulklink", *command],
            env=h.child_env(server),
            cwd=h.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        assert proc.wait(timeout=60) == code, command
        h.no_traceback(proc.stderr.read().decode())
        proc.stderr.close()
