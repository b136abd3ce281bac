"""Cron-grade operation (issue 3), over real loopback HTTP against the sandbox: kill -9 and
resume, clean shutdown on SIGTERM/SIGINT, `retry` in every report format, one run per
report, adaptive rate under 429s, the token kept out of every stream and file, formula
neutralisation, the scheduler's outputs (summary JSON, quiet, log file) and the crontab.

Long-running runs are real subprocesses (``python -m bulklink``) so they can be signalled
and killed; the sandbox runs in a thread of this process and they reach it by URL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from bulklink.sandbox import FORMULA_TITLE, Reply, Sandbox
from tests.conftest import ORG, TOKEN, invoke, pairs_csv, read_report, run_against, write_csv

ROOT = Path(__file__).parent.parent
FAST = ("--backoff", "0.01", "--no-progress")
SIGKILLED = -signal.SIGKILL


# -- helpers -------------------------------------------------------------------------------


def child_env(server: Sandbox, *, token: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THENA_")}
    env.update(THENA_ORG_ID=ORG, THENA_BASE_URL=server.url)
    if token:
        env["THENA_TOKEN"] = TOKEN
    return env


def spawn(server: Sandbox, *args: str | Path, token: bool = True) -> subprocess.Popen[str]:
    """``python -m bulklink ARGS`` in its own session, so signals reach only it."""
    return subprocess.Popen(
        [sys.executable, "-m", "bulklink", *map(str, args)],
        env=child_env(server, token=token),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def journal_of(report: Path) -> Path:
    return report.with_name(report.name + ".journal")


def lock_of(report: Path) -> Path:
    return report.with_name(report.name + ".lock")


def input_pairs(n: int, prefix: str = "T") -> list[tuple[str, str]]:
    return [(f"{prefix}{i:05d}", f"{prefix}L{i:05d}") for i in range(1, n + 1)]


def sent(server: Sandbox, since: int = 0) -> list[tuple[str, str]]:
    """(source, linked) of every request the server received from index ``since`` on."""
    out = []
    for rec in server.requests[since:]:
        body = json.loads(rec.body)
        out.append((body["sourceTicketId"], body["linkedTicketId"]))
    return out


def load_rows(path: Path) -> list[dict[str, Any]]:
    """A report in any format as a list of dicts (cell values as the format holds them)."""
    if path.suffix == ".csv":
        return list(read_report(path))
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    wb = load_workbook(path)
    try:
        values = list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
        wb.close()
    header = [str(h) for h in values[0]]
    return [dict(zip(header, row, strict=True)) for row in values[1:]]


def is_true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def assert_rows_once(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> None:
    """Every input row exactly once, in input order, with its IDs."""
    assert [int(r["row"]) for r in rows] == list(range(1, len(pairs) + 1))
    # (an empty xlsx cell reads back as None)
    ids = [(r["sourceTicketId"] or "", r["linkedTicketId"] or "") for r in rows]
    assert ids == pairs


def done_earlier(stderr: str) -> list[int]:
    """Numbers on the stderr lines that report rows already done by an earlier run."""
    found: list[int] = []
    for line in stderr.splitlines():
        if re.search(r"already done|done earlier|resum", line, re.IGNORECASE):
            found += [int(n) for n in re.findall(r"\d+", line)]
    return found


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


# -- crash-safe journal and resume -----------------------------------------------------------


def test_kill9_then_same_command_resumes_without_relinking(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.02)
    n, concurrency = 300, 8
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
    args: tuple[str | Path, ...] = ("run", src, "--rate", "40", "--concurrency", "4")
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


# -- clean shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_report_with_skipped_rows_then_rerun_completes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], signum: int, code: int
) -> None:
    server = start_sandbox(latency=0.05)
    n = 60
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "30", "--concurrency", "4", "--backoff", "0.01")
    with spawn(server, *args) as proc:
        wait_until(lambda: len(server.requests) >= 10, "10 requests")
        os.kill(proc.pid, signum)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err

    pairs = input_pairs(n)
    rows = read_report(report)
    assert_rows_once(rows, pairs)
    outcomes = [r["outcome"] for r in rows]
    assert set(outcomes) == {"linked", "skipped"}
    linked = {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] == "linked"}
    # Every pair the server linked before the stop is linked in the report (in-flight
    # requests were let finish), and nothing else is.
    assert set(server.link_counts) == linked
    assert all(r["success"] == "false" for r in rows if r["outcome"] == "skipped")
    assert "report:" in err

    since = len(server.requests)
    result = run_against(server, *args, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert len(linked) in done_earlier(result.stderr), result.stderr
    assert sorted(sent(server, since)) == sorted(set(pairs) - linked)
    rows = read_report(report)
    assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert server.link_counts == dict.fromkeys(pairs, 1), "a pair was linked twice"


def test_sigterm_waits_for_in_flight_requests_at_most_timeout(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 8
    server = start_sandbox(script={s: [Reply(delay=10)] for s, _ in input_pairs(n)})
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "0", "--concurrency", "2", "--timeout", "1", *FAST)
    with spawn(server, *args) as proc:
        wait_until(lambda: len(server.requests) >= 2, "2 requests in flight")
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert elapsed < 3.0, f"SIGTERM took {elapsed:.1f}s with --timeout 1"
    rows = read_report(report)
    assert_rows_once(rows, input_pairs(n))
    assert [r["outcome"] for r in rows][2:] == ["skipped"] * (n - 2)
    assert len(server.requests) == 2, "requests were sent after SIGTERM"


def test_second_ctrl_c_exits_at_once_and_journal_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n, quick = 30, 10
    # Rows after the first ten hang for 4 s, so the first Ctrl-C has requests to wait for.
    slow = {f"T{i:05d}": [Reply(delay=4)] for i in range(quick + 1, n + 1)}
    server = start_sandbox(script=slow)
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--rate", "0", "--concurrency", "4")
    with spawn(server, *args) as proc:
        wait_until(lambda: len(server.requests) >= quick + 4, "the slow requests")
        wait_until(lambda: line_count(journal_of(report)) > quick, "the quick rows journaled")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 130
    assert elapsed < 2.0, f"second Ctrl-C took {elapsed:.1f}s"
    assert journal_of(report).exists()

    server.config.script.clear()
    since = len(server.requests)
    result = run_against(server, *args, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert quick in done_earlier(result.stderr), result.stderr
    pairs = input_pairs(n)
    assert sorted(sent(server, since)) == pairs[quick:]
    rows = read_report(report)
    assert_rows_once(rows, pairs)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert all(server.link_counts[p] == 1 for p in pairs[:quick])


# -- retry -----------------------------------------------------------------------------------

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
    rows = load_rows(report)
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
    before = load_rows(report)
    since = len(server.requests)

    result = run_against(server, "retry", report, "--max-retries", "1", *FAST)
    # Exit 1 only because the two invalid rows can never be linked.
    assert result.exit_code == 1, result.stderr

    assert sorted(sent(server, since)) == sorted(RESENT)
    after = load_rows(report)
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


# -- one run at a time -------------------------------------------------------------------------


def test_second_run_refuses_fast_names_the_holder_and_changes_nothing(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n = 12
    server = start_sandbox()
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    assert run_against(server, "run", src, "--rate", "0", *FAST).exit_code == 0

    # The holder: every request hangs 5 s; its token is given on the command line. It
    # relinks: the store knows every pair from the run above.
    for source, _ in input_pairs(n):
        server.config.script[source] = [Reply(delay=5)]
    first = spawn(server, "run", src, "--rate", "0", "--concurrency", "4", "--token", TOKEN,
                  "--relink", token=False)  # fmt: skip
    with first:
        lock = lock_of(report)
        wait_until(lambda: len(server.requests) >= n + 4, "the holder's requests")
        wait_until(lambda: str(first.pid).encode() in lock.read_bytes(), "the lock's holder")
        files = (report, journal_of(report))
        snapshot = {p: p.read_bytes() for p in files}
        requests = len(server.requests)

        t0 = time.monotonic()
        with spawn(server, "run", src, "--rate", "0", "--no-progress") as second:
            out, err = second.communicate(timeout=10)
        elapsed = time.monotonic() - t0
        assert second.returncode == 75, err
        # The holder's requests hang 5 s: a refusal that waited for the lock could not come
        # back before them. (How fast a refused run starts is bench.py's start-up figure.)
        assert elapsed < 4.0, f"refusal took {elapsed:.2f}s"
        assert str(first.pid) in err, err

        again = run_against(server, "retry", report, *FAST)
        assert again.exit_code == 75, again.stderr
        assert str(first.pid) in again.stderr

        assert {p: p.read_bytes() for p in files} == snapshot
        assert len(server.requests) == requests, "a refused run sent requests"
        for text in (out, err, again.stdout, again.stderr, lock.read_text()):
            assert TOKEN not in text

        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
    assert lock.exists()  # left behind by the killed run

    server.config.script.clear()
    result = run_against(server, "run", src, "--rate", "0", *FAST)
    assert result.exit_code == 0, result.stderr
    rows = read_report(report)
    assert_rows_once(rows, input_pairs(n))
    # Linked by the first run and known to the store: not sent again.
    assert {r["outcome"] for r in rows} == {"already-linked"}


def test_junk_lock_file_held_by_nobody_does_not_block(tmp_path: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(tmp_path / "in.csv", 5)
    report = tmp_path / "in.results.csv"
    lock_of(report).write_bytes(b"\x00junk{not json\n")
    result = run_against(sandbox, "run", src, "--rate", "0", *FAST)
    assert result.exit_code == 0, result.stderr
    rows = read_report(report)
    assert_rows_once(rows, input_pairs(5))
    assert {r["outcome"] for r in rows} == {"linked"}
    # and it stays usable: retry on the finished report takes the lock too
    assert run_against(sandbox, "retry", report, *FAST).exit_code == 0


# -- adaptive rate ---------------------------------------------------------------------------


def test_rate_adapts_to_429s(tmp_path: Path, start_sandbox: Callable[..., Sandbox]) -> None:
    server = start_sandbox(rate_limit=20)
    n = 200
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--rate", "100", "--no-progress")
    assert result.exit_code == 0, result.stderr
    rows = read_report(tmp_path / "in.results.csv")
    assert {r["outcome"] for r in rows} == {"linked"}
    statuses = [rec.status for rec in server.requests]
    throttled = statuses.count(429)
    assert throttled <= 0.10 * len(statuses), f"{throttled} of {len(statuses)} requests got 429"
    assert server.link_counts == dict.fromkeys(input_pairs(n), 1)


# -- secrets -----------------------------------------------------------------------------------


def file_text(path: Path) -> bytes:
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as zf:
            return b"".join(zf.read(name) for name in zf.namelist())
    return path.read_bytes()


def leaks(streams: dict[str, str], files: list[Path]) -> list[str]:
    """Names of the streams and files that hold the token."""
    found = [name for name, text in streams.items() if TOKEN in text]
    found += [p.name for p in files if p.exists() and TOKEN.encode() in file_text(p)]
    return found


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_token_absent_from_everything_in_failing_runs(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    echo = f"Bearer {TOKEN}"
    script = {
        "E0003": [Reply(404, {"statusCode": 404, "message": f"not found for {echo}"})],
        "E0004": [Reply(503, f"upstream refused {echo}")] * 10,
        "E0005": [Reply(400, {"statusCode": 400, "message": [f"bad auth header {echo}"]})],
    }
    server = start_sandbox(script=script)
    rows = [["sourceTicketId", "linkedTicketId"], ["T0001", "L1"], ["MISSING2", "L2"]]
    rows += [["E0003", "L3"], ["E0004", "L4"], ["E0005", "L5"], ["T0006", "L6"]]
    src = write_csv(tmp_path / "in.csv", rows)
    log, summary = tmp_path / "run.log", tmp_path / "summary.json"
    report = tmp_path / f"a{fmt}"
    # Each run below sends the same pairs again: no state store.
    common: tuple[str | Path, ...] = ("--log-file", log, "--summary-json", summary)
    common += ("--max-retries", "1", "--no-state", *FAST)

    failing = run_against(server, "run", src, "-o", report, *common)
    assert failing.exit_code == 1, failing.stderr
    assert "404" in failing.stderr and "503" in failing.stderr
    found = {
        "404/503 run": leaks(
            {"stdout": failing.stdout, "stderr": failing.stderr},
            [report, journal_of(report), lock_of(report), log, summary],
        )
    }

    # 401 whose body echoes the token: the run stops with exit 3, journal kept.
    server.config.script["T0001"] = [
        Reply(401, {"statusCode": 401, "message": f"Invalid token {TOKEN}"})
    ]
    report_b = tmp_path / f"b{fmt}"
    rejected = run_against(server, "run", src, "-o", report_b, *common)
    assert rejected.exit_code == 3, rejected.stderr
    assert report_b.exists() and journal_of(report_b).exists()
    found["401 run"] = leaks(
        {"stdout": rejected.stdout, "stderr": rejected.stderr},
        [report_b, journal_of(report_b), lock_of(report_b), log, summary],
    )

    # A wrong token (the server expects another one), given in a file.
    other = start_sandbox(token="someone-elses-token")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    report_c = tmp_path / f"c{fmt}"
    wrong = invoke(
        "run", src, "-o", report_c, "--token-file", token_file, *common,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": other.url},
    )  # fmt: skip
    assert wrong.exit_code == 3, wrong.stderr
    assert {r["outcome"] for r in load_rows(report_c)} <= {"skipped", "failed"}
    assert json.loads(summary.read_text())["exit_code"] == 3
    found["wrong token"] = leaks(
        {"stdout": wrong.stdout, "stderr": wrong.stderr},
        [report_c, journal_of(report_c), lock_of(report_c), log, summary],
    )
    assert found == {"404/503 run": [], "401 run": [], "wrong token": []}


# -- formula neutralisation ----------------------------------------------------------------------

FORMULA_INPUT = [
    ("FORMULA1", "L1"),  # linked at once; title is a formula
    ("FORMULA2", "L2"),  # fails first, retried
    ("-00123", "L3"),  # fails first, retried
    ("@abc", "L4"),
    ("=1+2", "L5"),  # fails first, retried
    ("+44", "-L6"),
    ("'@q", "L7"),  # already quoted; fails first, retried
]
FIRST_FAIL = ("FORMULA2", "-00123", "=1+2", "'@q")


def test_formula_text_neutralised_and_retry_round_trips_ids(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={s: [Reply(status=503)] * 10 for s in FIRST_FAIL})
    src = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *FORMULA_INPUT])
    report = tmp_path / "report.csv"
    result = run_against(server, "run", src, "-o", report, "--max-retries", "1", *FAST)
    assert result.exit_code == 1, result.stderr
    rows = read_report(report)
    assert_rows_once(rows, FORMULA_INPUT)
    assert rows[0]["ticket.title"] == "'" + FORMULA_TITLE
    assert rows[3]["ticket.id"] == "'@abc"
    assert rows[5]["ticket.id"] == "'+44"
    raw = report.read_text(encoding="utf-8")
    assert not re.search(r'(^|,)"?=HYPERLINK', raw, re.MULTILINE)

    server.config.script.clear()
    since = len(server.requests)
    retried = run_against(server, "retry", report, *FAST)
    assert retried.exit_code == 0, retried.stderr
    assert sorted(sent(server, since)) == sorted(p for p in FORMULA_INPUT if p[0] in FIRST_FAIL)
    rows = read_report(report)
    assert_rows_once(rows, FORMULA_INPUT)
    assert {r["outcome"] for r in rows} == {"linked"}
    assert rows[0]["ticket.title"] == "'" + FORMULA_TITLE
    assert rows[1]["ticket.title"] == "'" + FORMULA_TITLE
    ids = [r["ticket.id"] for r in rows]
    assert ids == ["FORMULA1", "FORMULA2", "'-00123", "'@abc", "'=1+2", "'+44", "''@q"]

    xlsx = tmp_path / "report.xlsx"  # the same pairs again: not skipped as linked
    assert run_against(server, "run", src, "-o", xlsx, "--no-state", *FAST).exit_code == 0
    wb = load_workbook(xlsx)
    try:
        sheet = wb.worksheets[0]
        header = [c.value for c in sheet[1]]
        title = sheet.cell(row=2, column=header.index("ticket.title") + 1)
        assert title.data_type == "s"
        assert title.value == FORMULA_TITLE
    finally:
        wb.close()


# -- for the scheduler -----------------------------------------------------------------------


def test_summary_json_and_stderr_group_errors_most_common_first(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={"F0001": [Reply(status=503)] * 10})
    rows = [["sourceTicketId", "linkedTicketId"]]
    rows += [["F0001", "L0"], ["T0001", "L1"], ["MISSING1", "L2"], ["T0002", "L3"]]
    rows += [["MISSING2", "L4"], ["T0003", "L5"], ["MISSING3", "L6"], ["T0004", "L7"]]
    src = write_csv(tmp_path / "in.csv", rows)
    report = tmp_path / "report.csv"
    summary = tmp_path / "summary.json"
    result = run_against(
        server, "run", src, "-o", report, "--summary-json", summary, "--max-retries", "1", *FAST
    )
    assert result.exit_code == 1, result.stderr

    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["counts"] == {
        "linked": 4,
        "failed": 4,
        "invalid": 0,
        "duplicate": 0,
        "skipped": 0,
        "already-linked": 0,
    }
    errors = data["errors"]
    assert [e["count"] for e in errors] == [3, 1]
    assert "404" in errors[0]["error"] and "503" in errors[1]["error"]
    started = datetime.fromisoformat(data["started"])
    finished = datetime.fromisoformat(data["finished"])
    assert started.tzinfo is not None and started <= finished
    assert 0 <= data["elapsed_seconds"] <= (finished - started).total_seconds() + 2
    assert Path(data["report"]).resolve() == report.resolve()
    assert data["exit_code"] == 1

    groups = re.findall(r"^\s*(\d+) x (.+)$", result.stderr, re.MULTILINE)
    assert [int(count) for count, _ in groups] == [3, 1], result.stderr
    assert groups[0][1].startswith("HTTP 404") and "503" in groups[1][1]


def test_no_terminal_no_carriage_returns_quiet_and_log_file(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 20)
    report = tmp_path / "in.results.csv"
    # A real pipe, default progress setting: what cron sees.
    with spawn(sandbox, "run", src, "--rate", "0") as proc:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "\r" not in err and "\r" not in out
    assert "report:" in err

    no_progress = run_against(sandbox, "run", src, "--rate", "0", "--no-progress")
    assert no_progress.exit_code == 0
    assert "\r" not in no_progress.stderr

    log = tmp_path / "bulklink.log"
    quiet = run_against(sandbox, "run", src, "--rate", "0", "-q", "--log-file", log)
    assert quiet.exit_code == 0
    assert quiet.stdout == "" and quiet.stderr == ""
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines
    stamp = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
    assert all(stamp.match(line) for line in lines), lines
    assert any(str(report) in line for line in lines)

    bad = write_csv(tmp_path / "bad.csv", [["source", "linked"], ["T1", "L1"], ["MISSING9", "L9"]])
    failed = run_against(sandbox, "run", bad, "-q", "--log-file", log, *FAST)
    assert failed.exit_code == 1
    assert "1 x HTTP 404" in failed.stderr
    assert "bad.results.csv" in failed.stderr
    assert "bad.results.csv" in log.read_text(encoding="utf-8")


def test_help_prefers_environment_token_and_offers_token_file() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "THENA_TOKEN" in text and "--token-file" in text
    assert "process list" in text


def test_sample_crontab_runs_with_token_file_metrics_and_notice_url_from_a_file() -> None:
    crontab = (ROOT / "samples" / "crontab").read_text(encoding="utf-8")
    entries = [line for line in crontab.splitlines() if line.strip() and not line.startswith("#")]
    jobs = [line for line in entries if re.match(r"^(\S+\s+){5}", line) and "=" not in line[:20]]
    assert jobs, "no cron entry"
    job = " ".join(jobs)
    assert "bulklink run" in job and "--metrics-file" in job
    assert "--notify " not in job  # the URL is a secret: from a root-only env file
    assert not any("BULKLINK_NOTIFY_URL" in line for line in entries)
    assert "--token-file" in job
    assert "--token " not in job
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^#+ .*[Ss]chedul", readme, re.MULTILINE)
