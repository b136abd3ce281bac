"""How a run ends when something outside it misbehaves at the end: a state store another
process holds locked, a signal after the sending, requests that never get an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

import bulklink.run.runner
import bulklink.state.ledger
import bulklink.state.store
import tests.helpers as h
from bulklink.sandbox import Reply, Sandbox
from tests.helpers import FAST_UNPACED, Receiver

# -- a state store held locked by another connection ------------------------------------------


@contextlib.contextmanager
def store_held(path: Path, when: Callable[[], bool], seconds: float | None) -> Iterator[None]:
    """Another connection takes ``BEGIN EXCLUSIVE`` on the store once ``when()`` holds, as an
    admin in the ``sqlite3`` shell would, and lets go after ``seconds`` (None: at the end)."""
    release, taken = threading.Event(), threading.Event()

    def hold() -> None:
        h.wait_until(when, "the run to start sending")
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        taken.set()
        release.wait(seconds)
        db.execute("ROLLBACK")
        db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield
        assert taken.is_set(), "the store was never locked"
    finally:
        release.set()
        thread.join(10)


def linked_pairs(path: Path) -> set[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT source, linked FROM linked_pairs").fetchall()
    return {(source, linked) for source, linked in rows}


@pytest.fixture
def short_store_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 s busy timeout (not 30 s), and a batch every 4 pairs so one is in a worker
    thread while the run goes on."""
    monkeypatch.setattr(bulklink.state.store, "BUSY_TIMEOUT", 1.0)
    monkeypatch.setattr(bulklink.state.ledger, "FLUSH_PAIRS", 4)


def locked_run(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], n: int, seconds: float | None
) -> tuple[Sandbox, tuple[Any, ...], Result]:
    """``n`` pairs run with ``tmp_path/state.sqlite3`` held by another connection from the
    second request on, for ``seconds`` (None: past the run's end)."""
    server = start_sandbox(latency=0.03)
    src = h.pairs_csv(tmp_path / "in.csv", n)
    args = ("run", src, "--state", tmp_path / "state.sqlite3", "--concurrency", "1")
    with store_held(tmp_path / "state.sqlite3", lambda: len(server.requests) >= 2, seconds):
        result = h.run_against(server, *args, *FAST_UNPACED)
    return server, (*args, *FAST_UNPACED), result


@pytest.mark.usefixtures("short_store_waits")
def test_a_store_locked_to_the_end_keeps_the_journal_and_the_next_run_sends_nothing(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    n, state, report = 30, tmp_path / "state.sqlite3", tmp_path / "in.results.csv"
    server, args, result = locked_run(tmp_path, start_sandbox, n, None)
    assert result.exit_code == 74, result.stderr
    assert "locked by another process" in result.stderr
    assert "space" not in result.stderr
    assert str(h.journal_of(report)) in result.stderr
    assert h.journal_of(report).exists()
    assert {r["outcome"] for r in h.read_report(report)} == {"linked"}  # all sent, none lost
    assert len(linked_pairs(state)) < n

    since = len(server.requests)
    again = h.run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    assert h.sent(server, since) == []
    assert linked_pairs(state) == set(h.input_pairs(n))
    assert not h.journal_of(report).exists()


@pytest.mark.usefixtures("short_store_waits")
def test_a_batch_waiting_for_a_lock_when_sending_ends_is_in_the_store_before_exit_0(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    # The lock outlasts the first batch's busy timeout (it fails, goes back in line) and is
    # let go before the end's: every pair is in the store when the run exits 0.
    n, state = 24, tmp_path / "state.sqlite3"
    _server, _args, result = locked_run(tmp_path, start_sandbox, n, 1.6)
    assert result.exit_code == 0, result.stderr
    assert linked_pairs(state) == set(h.input_pairs(n))
    assert not h.journal_of(tmp_path / "in.results.csv").exists()


# -- requests that never get an answer ---------------------------------------------------------

HANG = 600.0  # the sandbox's answer is this late: never, as far as a test can tell


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests in flight get 0.3 s after a stop (not 5 s) before they are abandoned."""
    monkeypatch.setattr(bulklink.run.runner, "STOP_GRACE", 0.3)


def hanging_sandbox(start_sandbox: Callable[..., Sandbox], n: int, answered: int) -> Sandbox:
    """The first ``answered`` pairs are linked; the others never get an answer."""
    hang = {source: [Reply(delay=HANG)] for source, _ in h.input_pairs(n)[answered:]}
    return start_sandbox(script=hang)


@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize(
    ("bound", "stopped"),
    [
        (("--deadline", "1s"), "--deadline 1s reached"),
        (("--give-up-after", "1s"), "gave up: no answer settled a row for 1s"),
    ],
)
def test_a_server_that_never_answers_cannot_hold_a_bounded_run(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], bound: tuple[str, str], stopped: str
) -> None:
    n, answered = 12, 3
    server = hanging_sandbox(start_sandbox, n, answered)
    src = h.pairs_csv(tmp_path / "in.csv", n)
    t0 = time.monotonic()
    summary = tmp_path / "summary.json"
    result = h.run_against(
        server, "run", src, "--no-state", "--timeout", "3600", "--concurrency", "4",
        "--summary-json", summary, *bound, *FAST_UNPACED,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert result.exit_code == 1, result.stderr
    assert elapsed < 4, f"the run took {elapsed:.1f}s"
    assert stopped in result.stderr
    rows = h.read_report(tmp_path / "in.results.csv")
    assert [r["outcome"] for r in rows] == ["linked"] * answered + ["skipped"] * (n - answered)
    asked = rows[answered : answered + 4]
    assert all("abandoned" in r["error"] for r in asked), asked
    assert all("not attempted" in r["error"] for r in rows[answered + 4 :])
    assert len(server.requests) == answered + 4  # nothing sent after the stop
    # The abandoned ones were sent: the summary counted 3, what was answered.
    assert json.loads(summary.read_text())["requests"] == answered + 4


@pytest.mark.parametrize(
    ("option", "value"),
    [
        (option, value)
        for option in ("--timeout", "--rate", "--backoff")
        for value in ("nan", "inf", "-inf", "1e400", "1e30")
    ]
    + [
        (option, value)
        for option in ("--give-up-after", "--deadline")
        for value in ("nan", "inf", "1e400", "99999999h", "-1")
    ]
    + [
        ("--max-retries", "99999999999999999999"),
        ("--max-retries", "nan"),
        ("--concurrency", "inf"),
        ("--concurrency", "99999999999999999999"),
        ("--limit", "nan"),
        ("--limit", "-1"),
    ],
)
def test_a_numeric_option_out_of_range_is_one_line_and_nothing_is_sent(
    tmp_path: Path, sandbox: Sandbox, option: str, value: str
) -> None:
    src = h.pairs_csv(tmp_path / "in.csv", 3)
    result = h.run_against(sandbox, "run", src, "--no-state", *FAST_UNPACED, option, value)
    assert option in h.one_line_usage_error(result)
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()


# -- a signal after the sending ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_a_signal_during_a_slow_notice_cuts_it_short_but_writes_everything_else(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver, signum: int, code: int
) -> None:
    n, log, state = 5, tmp_path / "run.log", tmp_path / "state.sqlite3"
    summary, metrics = tmp_path / "s.json", tmp_path / "m.prom"
    receiver.answers = [(200, 30.0)]  # holds the notice for 30 s
    src = h.pairs_csv(tmp_path / "in.csv", n)
    args = ("run", src, "--state", state, "--log-file", log, *FAST_UNPACED,
            "--summary-json", summary, "--metrics-file", metrics)  # fmt: skip
    with h.spawn(sandbox, *args, "--notify", receiver.url, "--notify-on", "always") as proc:
        h.wait_until(lambda: len(receiver.raw) == 1, "the notice to be sent")
        t0 = time.monotonic()
        os.kill(proc.pid, signum)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert time.monotonic() - t0 < 5, "the notice was not cut short"
    name = signal.Signals(signum).name
    assert f"interrupted by {name} after the sending" in err
    assert "before anything was sent" not in err
    h.no_traceback(err)
    summary_line = err.strip().splitlines()[-1]
    assert summary_line.startswith(f"linked {n},"), err
    assert summary_line in log.read_text()
    assert {r["outcome"] for r in h.read_report(tmp_path / "in.results.csv")} == {"linked"}
    assert linked_pairs(state) == set(h.input_pairs(n))
    # One exit code per run: the process's is the summary's, the metrics' and the history's.
    assert json.loads(summary.read_text(encoding="utf-8"))["exit_code"] == code
    metric = metrics.read_text(encoding="utf-8")
    assert f'bulklink_last_run_exit_code{{job="in.results"}} {float(code)}' in metric
    assert 'bulklink_last_success_timestamp_seconds{job="in.results"} 0.0' in metric
    [night] = json.loads(h.invoke("runs", "--state", state, "--json").stdout)
    assert night["exit_code"] == code


def test_a_signal_while_the_report_is_written_ends_143_not_as_a_bug(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM from cron's or systemd's timeout just as the sending ended: the report, the
    store and the summary line are written, and the work a signal drops is skipped (it
    was an internal error, exit 70: the context that drops it never ran its body)."""
    from bulklink.tables.report.writers import CsvWriter

    commit = CsvWriter.commit

    def signalled_commit(self: CsvWriter, *args: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled: bulklink records it
        commit(self, *args)

    monkeypatch.setattr(CsvWriter, "commit", signalled_commit)
    state = tmp_path / "state.sqlite3"
    src = h.pairs_csv(tmp_path / "in.csv", 4)
    result = h.run_against(sandbox, "run", src, "--state", state, *FAST_UNPACED)
    assert result.exit_code == 143, result.output
    assert "internal error" not in result.output
    assert "interrupted by SIGTERM after the sending" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("linked 4,")
    assert {r["outcome"] for r in h.read_report(tmp_path / "in.results.csv")} == {"linked"}
    assert linked_pairs(state) == set(h.input_pairs(4))


# -- a run history someone edited ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("counts", "[1]", "?'[1]'"),
        ("counts", "null", "?'null'"),
        ("counts", "garbage", "?'garbage'"),
        ("counts", '{"linked": "many"}', '?\'{"linked": "many"}\''),
        ("started", "yesterday", "?'yesterday'"),
        ("finished", "soon", "?'soon'"),
        ("exit_code", "zero", "exit ?'zero'"),
    ],
)
def test_runs_and_the_next_run_survive_a_history_row_someone_edited(
    tmp_path: Path, sandbox: Sandbox, column: str, value: str, shown: str
) -> None:
    state = tmp_path / "state.sqlite3"
    src = h.pairs_csv(tmp_path / "in.csv", 3)
    args = ("run", src, "--state", state, *FAST_UNPACED)
    assert h.run_against(sandbox, *args).exit_code == 0
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute(f"UPDATE runs SET {column} = ?", (value,))  # noqa: S608 - the test's own
        db.commit()
    listed = h.run_against(sandbox, "runs", "--state", state)
    assert listed.exit_code == 0, listed.output
    assert shown in listed.stdout
    as_json = h.run_against(sandbox, "runs", "--state", state, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)[0][column] == value
    again = h.run_against(sandbox, *args, "--relink")
    assert again.exit_code == 0, again.stderr


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A file system of its own (a tmpfs), which the test may remount read-only."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a file system needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_runs_and_a_dry_run_read_a_store_on_a_read_only_file_system(
    tmp_path: Path, sandbox: Sandbox, mounted: Path
) -> None:
    state = mounted / "state.sqlite3"
    src = h.pairs_csv(tmp_path / "in.csv", 3)
    assert h.run_against(sandbox, "run", src, "--state", state, *FAST_UNPACED).exit_code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    listed = h.run_against(sandbox, "runs", "--state", state)
    assert listed.exit_code == 0, listed.output
    assert "linked 3" in listed.stdout
    dry = h.run_against(sandbox, "run", src, "--state", state, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "already linked 3" in dry.stdout
    assert sorted(p.name for p in mounted.iterdir()) == ["state.sqlite3"]


@pytest.mark.parametrize("limit", ["99999999999999999999", "0", "-1", "nan"])
def test_runs_limit_is_range_checked(sandbox: Sandbox, limit: str) -> None:
    assert "--limit" in h.one_line_usage_error(h.run_against(sandbox, "runs", "--limit", limit))


# -- smaller ones --------------------------------------------------------------------------------


def test_folders_made_for_the_store_are_0700_whatever_the_umask(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    state = tmp_path / "a" / "b" / "state.sqlite3"
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    old = os.umask(0)
    try:
        result = h.run_against(sandbox, "run", src, "--state", state, *FAST_UNPACED)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert [stat.S_IMODE(p.stat().st_mode) for p in (state.parent.parent, state.parent)] == [
        0o700,
        0o700,
    ]


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        ("http://alice:PASSW0RD@127.0.0.1:{port}", "must not hold a user name or password"),
        ("http://:PASSW0RD@127.0.0.1:{port}/", "must not hold a user name or password"),
        ("http://PASSW0RD@127.0.0.1:{port}", "must not hold a user name or password"),
        ("http://127.0.0.1:{port}/v1/tickets/link", "already ends in /v1/tickets/link"),
        ("http://127.0.0.1:{port}/v1/tickets/link/", "already ends in /v1/tickets/link"),
    ],
)
def test_a_base_url_with_user_info_or_the_endpoint_path_is_refused_before_sending(
    tmp_path: Path, sandbox: Sandbox, base_url: str, said: str
) -> None:
    url = base_url.format(port=sandbox.url.rsplit(":", 1)[1])
    state = tmp_path / "state.sqlite3"
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    result = h.run_against(sandbox, "run", src, "--state", state, "--base-url", url, *FAST_UNPACED)
    line = h.one_line_usage_error(result)
    assert said in line
    assert "PASSW0RD" not in result.output
    assert sandbox.requests == []
    if state.exists():
        assert b"PASSW0RD" not in state.read_bytes()


@contextlib.contextmanager
def raw_server(answer: bytes) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with ``answer``, bytes as given."""
    ready: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, str]] = []
    up = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(answer)
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        stop = asyncio.Event()
        port = server.sockets[0].getsockname()[1]
        ready.append((asyncio.get_running_loop(), stop, f"http://127.0.0.1:{port}"))
        up.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert up.wait(10)
    loop, stop, url = ready[0]
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


BIG_HEADER = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}"
BROKEN_CHUNKS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "said"),
    [(BIG_HEADER, "Got more than"), (BROKEN_CHUNKS, "chunk size")],
)
def test_an_answer_that_cannot_be_parsed_fails_the_row_without_retries(
    tmp_path: Path, answer: bytes, said: str
) -> None:
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    with raw_server(answer) as url:
        result = h.invoke(
            "run", src, "--no-state", "--concurrency", "1", *FAST_UNPACED,
            env=h.env_for(url),
        )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    rows = h.read_report(tmp_path / "in.results.csv")
    assert [r["outcome"] for r in rows] == ["failed", "failed"]
    assert all(r["attempts"] == "1" for r in rows)
    assert all(r["error"].startswith("malformed answer: ") and said in r["error"] for r in rows)


# -- two runs on one input -------------------------------------------------------------------------


def test_a_second_run_on_the_same_input_exits_75_whatever_its_report_home_or_store(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.15)
    n = 8
    src = h.pairs_csv(tmp_path / "in.csv", n)
    first = ("run", src, "-o", tmp_path / "monday.csv", "--concurrency", "1", *FAST_UNPACED)
    with h.spawn(server, *first) as proc:
        h.wait_until(lambda: len(server.requests) >= 1, "the first run to send")
        other_home = tmp_path / "home2"
        other_home.mkdir()
        result = h.run_against(
            server, "run", src, "-o", tmp_path / "tuesday.csv", "--state",
            tmp_path / "other.sqlite3", *FAST_UNPACED,
            env={"HOME": str(other_home), "XDG_STATE_HOME": str(other_home)},
        )  # fmt: skip
        assert result.exit_code == 75, result.stderr
        assert f"working on the input {src}" in result.stderr
        assert not (tmp_path / "tuesday.csv").exists()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert sorted(h.sent(server)) == h.input_pairs(n), "a pair was sent twice"
    # Once the first run is done, the input is free again.
    again = h.run_against(server, "run", src, "-o", tmp_path / "tuesday.csv", *FAST_UNPACED)
    assert again.exit_code == 0, again.stderr


# -- a refused run tells the webhook ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--metrics-file", "{tmp}/missing/m.prom"), "--metrics-file: no such folder"),
        (("--summary-json", "{tmp}/missing/s.json"), "--summary-json: no such folder"),
        (("--base-url", "http://alice:PASSW0RD@127.0.0.1:1"), "must not hold a user name"),
        (("--input-is-missing",), "missing.csv"),
        # refused by click's own checks, by the options, or for the report's folder
        (("--rate", "nan"), "Invalid value for '--rate'"),
        (("--limit", "x"), "Invalid value for '--limit'"),
        (("--give-up-after", "soon"), "--give-up-after"),
        (("-o", "{tmp}/missing/r.csv"), "the report's folder does not exist"),
    ],
)
def test_a_run_refused_before_it_starts_sends_its_notice(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver, extra: tuple[str, ...], said: str
) -> None:
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    if extra == ("--input-is-missing",):
        src, extra = tmp_path / "missing.csv", ()
    args = [a.format(tmp=tmp_path) for a in extra]
    result = h.run_against(
        sandbox, "run", src, "--no-state", *FAST_UNPACED, "--notify", receiver.url, *args
    )
    assert result.exit_code == 2, result.stderr
    assert len(receiver.raw) == 1, "no notice"
    notice = receiver.raw[0].decode()
    assert said in notice
    assert "PASSW0RD" not in notice
    assert sandbox.requests == []


# -- notices that a server's text cannot turn into links or pings ---------------------------------

HOSTILE = [
    "[click here](https://evil.example/x)",
    "see <https://evil.example|here> and <!channel> <!here> <@U123> <#C1>",
    "plain https://evil.example/path?a=1 link",
    "`](https://evil.example)` in a code span",
    "![img](http://evil.example/i.png)",
]


def test_server_text_is_shown_literally_in_every_string_of_the_notice(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    pairs = h.input_pairs(len(HOSTILE))
    script = {
        source: [Reply(status=422, body={"statusCode": 422, "message": text})]
        for (source, _), text in zip(pairs, HOSTILE, strict=True)
    }
    server = start_sandbox(script=script)
    src = h.pairs_csv(tmp_path / "in[x](https:evil.example).csv", len(HOSTILE))
    summary_json = tmp_path / "summary.json"
    result = h.run_against(
        server, "run", src, "--no-state", "--notify", receiver.url, "--summary-json",
        summary_json, *FAST_UNPACED,
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    [body] = receiver.bodies

    def strings(value: object) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    every = list(strings(body))
    assert len(every) > 5
    for text in every:
        for sequence in ("](", "<http", "<!", "<@"):
            assert sequence not in text, text
        for url in re.findall(r"https?://[^\s`]+", text):
            assert f"`{url}`" in text, text  # a bare URL sits in a code span
    # The file for tools keeps the server's words as they were.
    kept = json.loads(summary_json.read_text())
    errors = " ".join(e["error"] for e in kept["errors"])
    assert all(text in errors for text in HOSTILE)


# -- webhook secrets in the spellings a receiver echoes ---------------------------------------

HOOK_SHAPES = {
    "slack": ("/services/T0001/B0002/SlackKeySECRET0123456789", ["SlackKeySECRET0123456789"]),
    "teams": (
        "/webhookb2/11111111-2222-3333-4444-555555555555@66666666-7777/IncomingWebhook/"
        "TeamsKeySECRETabcdef0123/88888888-9999",
        ["TeamsKeySECRETabcdef0123", "11111111-2222-3333-4444-555555555555"],
    ),
    "power-automate": (
        "/workflows/0a1b2c3d/triggers/manual/paths/invoke?api-version=2016-06-01"
        "&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=PaSigSECRET%7Eq%41b%2Fc",
        ["PaSigSECRET~qAb/c", "PaSigSECRET%7Eq%41b%2Fc", "PaSigSECRET"],
    ),
    "path-and-query": ("/hook?token=QuerySECRET12345", ["QuerySECRET12345"]),
}


@pytest.mark.parametrize("shape", list(HOOK_SHAPES))
def test_a_webhook_secret_echoed_in_any_spelling_is_never_shown_logged_or_kept(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver, shape: str
) -> None:
    path, secrets = HOOK_SHAPES[shape]
    url = receiver.url.split("/services/", 1)[0] + path
    receiver.answers = [500, 500, 500]  # each answer echoes the path and query it got
    src = h.pairs_csv(tmp_path / "in.csv", 2)
    state, log, summary = tmp_path / "s.sqlite3", tmp_path / "run.log", tmp_path / "s.json"
    result = h.run_against(
        sandbox, "run", src, "--state", state, "--log-file", log, "--summary-json", summary,
        "--notify", url, "--notify-on", "always", *FAST_UNPACED,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert receiver.paths, "the notice never reached the receiver"
    assert "warning" in result.stderr  # the receiver's 500 is said, without the secret
    for secret in secrets:
        h.no_secret_anywhere(secret, result.output, files=(log, summary, state))


def test_a_full_temporary_disk_while_spooling_the_report_is_one_line(
    tmp_path: Path,
    sandbox: Sandbox,
    mounted: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every worker's write fails at once: one message, exit 74, no worker's traceback."""
    import gc
    import tempfile

    (mounted / "filler").write_bytes(b"\0" * (8 * 1024 * 1024 - 200 * 1024))
    monkeypatch.setattr(tempfile, "tempdir", str(mounted))
    src = h.pairs_csv(tmp_path / "in.csv", 3000)
    result = h.run_against(sandbox, "run", src, "-o", tmp_path / "out.xlsx", *FAST_UNPACED)
    gc.collect()  # a task whose exception nobody looked at is reported when collected
    assert result.exit_code == 74, result.output
    h.no_traceback(result.output)
    said = [line for line in result.stderr.splitlines() if line.startswith("bulklink:")]
    assert len(said) == 1 and "No space left on device" in said[0], result.stderr
    assert result.stderr.rstrip().endswith("| report: none written")  # what was done, still
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == [], "each worker's traceback printed by asyncio"


def test_a_full_disk_under_the_state_store_exits_74_and_the_rerun_sends_nothing_twice(
    tmp_path: Path, sandbox: Sandbox, mounted: Path
) -> None:
    """SQLite's SQLITE_FULL is a full disk, told by its code: exit 74 naming the store,
    the linked pairs kept in the journal, and recorded by the rerun without a resend."""
    state = mounted / "state.sqlite3"
    header = ("sourceTicketId", "linkedTicketId")
    first = h.write_csv(tmp_path / "first.csv", [header, ("F1", "F2")])
    assert h.run_against(sandbox, "run", first, "--state", state, *FAST_UNPACED).exit_code == 0
    free = os.statvfs(mounted).f_bavail * os.statvfs(mounted).f_frsize
    (mounted / "filler").write_bytes(b"\0" * (free - 48 * 1024))
    src = tmp_path / "in.csv"
    pairs = [(f"S{n:06d}-{'x' * 40}", f"L{n:06d}-{'y' * 40}") for n in range(4000)]
    h.write_csv(src, [header, *pairs])
    args = ("run", src, "-o", tmp_path / "out.csv", "--state", state, *FAST_UNPACED)

    full = h.run_against(sandbox, *args)
    assert full.exit_code == 74, full.output
    said = [line for line in full.stderr.splitlines() if line.startswith("bulklink:")]
    assert said == [f"bulklink: error: No space left on device: {state}"], full.stderr
    h.no_traceback(full.output)

    (mounted / "filler").unlink()
    again = h.run_against(sandbox, *args)
    assert again.exit_code == 0, again.output
    assert len(h.sent(sandbox)) == 4001  # every pair once, over the three runs
    assert {r["outcome"] for r in h.read_report(tmp_path / "out.csv")} <= {
        "linked",
        "already-linked",
    }
    runs = json.loads(h.run_against(sandbox, "runs", "--state", state, "--json").stdout)
    # The full run could not write its own ending: it stays unfinished in the history.
    assert [r["exit_code"] for r in sorted(runs, key=lambda r: r["id"])] == [0, None, 0]


def test_retry_of_a_report_on_a_read_only_file_system_writes_its_output_elsewhere(
    tmp_path: Path, sandbox: Sandbox, mounted: Path
) -> None:
    """Last night's report from a read-only backup (or under ProtectSystem=strict): only
    -o is written, so retry holds the report it reads by a flock on it, as run holds its
    input, instead of refusing for want of a lock file beside it."""
    report = mounted / "in.results.csv"
    src = h.write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId"], ["A1", "B1"], ["MISSING2", "B2"]],
    )
    first = h.run_against(sandbox, "run", src, "-o", report, "--max-retries", "0", *FAST_UNPACED)
    assert first.exit_code == 1, first.output
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    sandbox.config.unknown_prefix = ""
    out = tmp_path / "retried.csv"
    since = len(sandbox.requests)
    retried = h.run_against(sandbox, "retry", report, "-o", out, *FAST_UNPACED)
    assert retried.exit_code == 0, retried.output
    assert h.sent(sandbox, since) == [("MISSING2", "B2")]
    assert [r["outcome"] for r in h.read_report(out)] == ["linked", "linked"]
