"""The Python API: what ``bulklink`` exports, ``run_job`` and ``link_pairs`` against the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import gc
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import click
import pytest

import bulklink
from bulklink.cli import cli
from bulklink.options import JobOptions, RetryOptions, StreamOptions
from bulklink.sandbox import Sandbox
from tests.helpers import (
    KEY,
    ORG,
    ROOT,
    TOKEN,
    env_for,
    input_pairs,
    invoke,
    journal_of,
    make_jwt,
    pairs_csv,
    read_report,
    sent,
    wait_until,
    write_csv,
)

# -- the public surface -----------------------------------------------------------------------


PUBLIC = {
    "run_job", "retry_job", "link_pairs", "read_report", "Summary", "LinkResult", "Outcome",
    "BulklinkError", "UsageError", "TokenExpiredError", "InputError", "LockedError",
    "CredentialsRejected", "Interrupted",
}  # fmt: skip


def test_public_api_exports_and_hints() -> None:
    from bulklink import (  # noqa: F401 - the import itself is the test
        BulklinkError,
        CredentialsRejected,
        InputError,
        Interrupted,
        LinkResult,
        LockedError,
        Summary,
        TokenExpiredError,
        UsageError,
        link_pairs,
        read_report,
        retry_job,
        run_job,
    )

    assert set(bulklink.__all__) >= PUBLIC
    for name in bulklink.__all__:
        assert getattr(bulklink, name) is not None
    for error in (UsageError, InputError, LockedError, CredentialsRejected, Interrupted):
        assert issubclass(error, BulklinkError)
    assert issubclass(TokenExpiredError, UsageError)
    assert (UsageError.exit_code, InputError.exit_code) == (2, 2)
    assert (LockedError.exit_code, CredentialsRejected.exit_code) == (75, 3)
    assert typing.get_type_hints(run_job)["return"] is Summary
    assert inspect.isasyncgenfunction(link_pairs)
    assert typing.get_type_hints(link_pairs)["return"] == AsyncGenerator[LinkResult]


def test_run_job_takes_the_cli_options_in_snake_case() -> None:
    run_cmd = cli.commands["run"]
    display_only = {"help", "dry_run", "progress", "quiet", "log_file"}
    wanted = {
        p.name
        for p in run_cmd.params
        if isinstance(p, click.Option) and p.name and p.name not in display_only
    }
    params = inspect.signature(bulklink.run_job).parameters
    assert wanted <= set(params), wanted - set(params)
    for name in wanted:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY or name == "output"


#: The CLI's options that shape what it prints (its console), not the run itself.
CLI_ONLY = {"output", "dry_run", "progress", "quiet", "log_file"}
#: The library's options that the CLI sets itself.
LIBRARY_ONLY = {"console", "handle_signals"}


@pytest.mark.parametrize(("command", "options"), [("run", JobOptions), ("retry", RetryOptions)])
def test_each_option_is_one_field_and_one_click_option(command: str, options: type) -> None:
    """The dataclass is the truth: the CLI has an option for each field and no other."""
    in_cli = {p.name for p in cli.commands[command].params if isinstance(p, click.Option)}
    fields = {f.name for f in dataclasses.fields(options) if f.init}
    assert in_cli - CLI_ONLY == fields - LIBRARY_ONLY


def test_a_wrong_option_is_refused_by_mypy_and_at_run_time(tmp_path: Path) -> None:
    def wrong() -> None:  # never called: mypy's verdict on it is the test (warn_unused_ignores)
        bulklink.run_job("in.csv", ratee=1)  # type: ignore[call-arg]
        bulklink.run_job("in.csv", rate="fast")  # type: ignore[arg-type]
        bulklink.link_pairs([], limit=1)  # type: ignore[call-arg]

    assert wrong is not None
    with pytest.raises(TypeError, match="ratee"):
        bulklink.run_job(tmp_path / "in.csv", ratee=1)  # type: ignore[call-arg]
    with pytest.raises(bulklink.UsageError, match="--rate must be a finite number"):
        bulklink.run_job(tmp_path / "in.csv", rate=float("nan"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate": -1}, "--rate must be 0 (no limit), or from 0.0001"),
        ({"rate": 1e-320}, "--rate must be 0 (no limit), or from 0.0001"),
        ({"rate": float("inf")}, "--rate must be a finite number, got inf"),
        ({"rate": "fast"}, "--rate must be a number or 'auto', got 'fast'"),
        ({"timeout": 0}, "--timeout must be more than 0 and at most 86,400 seconds"),
        ({"timeout": float("nan")}, "--timeout must be a finite number, got nan"),
        ({"backoff": float("-inf")}, "--backoff must be a finite number, got -inf"),
        ({"max_retries": -1}, "--max-retries must be 0 or more"),
        ({"max_retries": 10**6}, "--max-retries must be at most 1000"),
        ({"concurrency": "many"}, "--concurrency must be a number or 'auto'"),
        ({"concurrency": 0}, "--concurrency must be between 1 and 10000"),
        ({"limit": -1}, "--limit must be 0 or more"),
        ({"deadline": "inf"}, "--deadline must be a duration"),
        ({"give_up_after": float("nan")}, "--give-up-after must be 0 (off) or more"),
        ({"state": "s.sqlite3", "no_state": True}, "give --state or --no-state, not both"),
        ({"notify_on": "never"}, "--notify-on must be 'problems' or 'always'"),
        ({"delimiter": ";;"}, "--delimiter must be one character (or 'tab')"),
    ],
)
def test_options_are_checked_when_built(values: dict[str, Any], message: str) -> None:
    with pytest.raises(bulklink.UsageError) as refused:
        JobOptions(**values)
    assert str(refused.value).startswith(message)


def test_options_hold_what_the_run_takes() -> None:
    options = JobOptions(concurrency="16", give_up_after="1h30m", deadline=0, delimiter="tab")
    assert (options.workers, options.give_up_seconds, options.deadline_seconds) == (16, 5400, None)
    assert options.delimiter == "\t"
    assert JobOptions().workers is None and JobOptions().give_up_seconds == 600
    numbers = JobOptions(rate="20", timeout=1, max_retries=2)  # type: ignore[arg-type]
    assert (numbers.rate, numbers.timeout, numbers.max_retries) == (20.0, 1.0, 2)
    assert isinstance(numbers.rate, float) and isinstance(numbers.timeout, float)


#: Values of the wrong type, as a config file, an environment variable or a typo gives
#: them, and the refusal each gets: a bool is no number, a float no count.
WRONG_TYPES = [
    ({"limit": 2.5}, "--limit must be a whole number or None, got 2.5"),
    ({"limit": 5.0}, "--limit must be a whole number or None, got 5.0"),
    ({"limit": "5"}, "--limit must be a whole number or None, got '5'"),
    ({"limit": True}, "--limit must be a whole number or None, got True"),
    ({"concurrency": [3]}, "--concurrency must be a whole number or text or None, got [3]"),
    ({"concurrency": 2.5}, "--concurrency must be a whole number or text or None, got 2.5"),
    ({"max_retries": 2.7}, "--max-retries must be a whole number, got 2.7"),
    ({"rate": True}, "--rate must be a number or 'auto', got True"),
    ({"timeout": "30"}, "--timeout must be a number, got '30'"),
    ({"give_up_after": True}, "--give-up-after must be a number or text or None, got True"),
    ({"give_up_after": [1]}, "--give-up-after must be a number or text or None, got [1]"),
    ({"deadline": {}}, "--deadline must be a number or text or None, got {}"),
    ({"delimiter": 44}, "--delimiter must be text or None, got 44"),
    ({"encoding": 5}, "--encoding must be text or None, got 5"),
    ({"state": 5}, "--state must be text or a path or None, got 5"),
    ({"source_col": 5}, "--source-col must be text or None, got 5"),
    ({"org_id": 42}, "--org-id must be text or None, got 42"),
    ({"base_url": 5}, "--base-url must be text or None, got 5"),
    ({"token": 12345}, "--token must be text or None, got a value of type int"),
    ({"fresh": 1}, "--fresh must be True or False, got 1"),
]


@pytest.mark.parametrize(("values", "message"), WRONG_TYPES)
def test_a_wrong_option_type_is_refused_before_anything_is_read_or_sent(
    sandbox: Sandbox, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.csv"
    given = {"base_url": sandbox.url, "token": TOKEN, "org_id": ORG, "rate": 0, **values}
    with pytest.raises(bulklink.UsageError) as refused:
        bulklink.run_job(src, out, **given)
    assert str(refused.value) == message
    assert refused.value.exit_code == 2
    with pytest.raises(bulklink.UsageError, match=f"^{re.escape(message)}$"):
        bulklink.dry_run(tmp_path / "never-read.csv", **given)
    if values.keys() <= {f.name for f in dataclasses.fields(StreamOptions)}:
        with pytest.raises(bulklink.UsageError, match=f"^{re.escape(message)}$"):
            asyncio.run(collect([("A1", "B1")], **given))
    assert sandbox.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert str(TOKEN) not in str(refused.value)


# -- run_job ----------------------------------------------------------------------------------


def test_run_job_returns_a_summary_and_prints_nothing(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId"], ["A1", "B1"], ["MISSING2", "B2"], ["A3", "A3"]],
    )
    out = tmp_path / "out.csv"
    summary = bulklink.run_job(
        src, out, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0, backoff=0.01
    )
    assert isinstance(summary, bulklink.Summary)
    assert summary.exit_code == 1
    counts = summary.counts
    assert (counts["linked"], counts["failed"], counts["invalid"], counts["skipped"]) == (
        1,
        1,
        1,
        0,
    )
    assert summary.rows == 3
    assert [r["outcome"] for r in read_report(out)] == ["linked", "failed", "invalid"]
    assert capsys.readouterr() == ("", "")

    clean = bulklink.run_job(
        pairs_csv(tmp_path / "clean.csv", 4),
        tmp_path / "clean.jsonl",
        base_url=sandbox.url,
        token=TOKEN,
        org_id=ORG,
        rate=0,
    )
    assert clean.exit_code == 0 and clean.counts["linked"] == 4
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == 4
    assert capsys.readouterr() == ("", "")


def test_run_job_errors_are_exceptions_of_the_hierarchy(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_sandbox()
    common: dict[str, Any] = {"base_url": server.url, "rate": 0, "backoff": 0.01}
    src = pairs_csv(tmp_path / "in.csv", 6)

    with pytest.raises(bulklink.InputError) as missing:
        bulklink.run_job(
            tmp_path / "nope.csv", tmp_path / "a.csv", token=TOKEN, org_id=ORG, **common
        )
    assert missing.value.exit_code == 2
    with pytest.raises(bulklink.UsageError):
        bulklink.run_job(src, tmp_path / "b.csv", **common)
    with pytest.raises(bulklink.TokenExpiredError) as expired:
        expired_jwt = make_jwt(exp=int(time.time()) - 60)
        bulklink.run_job(src, tmp_path / "c.csv", token=expired_jwt, org_id=ORG, **common)
    assert isinstance(expired.value, bulklink.UsageError)
    assert server.requests == []

    out = tmp_path / "locked.csv"
    lock = out.with_name(out.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(bulklink.LockedError) as locked:
            bulklink.run_job(src, out, token=TOKEN, org_id=ORG, **common)
    finally:
        os.close(fd)
    assert locked.value.exit_code == 75
    assert server.requests == []
    assert not out.exists()

    wrong = "wrong-token-0123456789"
    rejected_out = tmp_path / "rejected.csv"
    with pytest.raises(bulklink.CredentialsRejected) as rejected:
        bulklink.run_job(src, rejected_out, token=wrong, org_id=ORG, concurrency=1, **common)
    summary = rejected.value.summary
    assert summary is not None and summary.counts["skipped"] >= 1
    assert rejected.value.exit_code == 3
    assert 1 <= len(server.requests) < 6
    rows = read_report(rejected_out)
    assert len(rows) == 6 and {r["outcome"] for r in rows} <= {"failed", "skipped"}
    assert wrong not in str(rejected.value)
    assert capsys.readouterr() == ("", "")


def test_run_job_inside_a_running_event_loop(sandbox: Sandbox, tmp_path: Path) -> None:
    src = pairs_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.csv"

    async def notebook_cell() -> bulklink.Summary:
        asyncio.get_running_loop()  # we are inside a running loop
        return bulklink.run_job(src, out, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0)

    summary = asyncio.run(notebook_cell())
    assert summary.exit_code == 0
    assert summary.counts["linked"] == 5
    assert len(sandbox.requests) == 5
    assert {r["outcome"] for r in read_report(out)} == {"linked"}


def test_list_runs_refuses_a_limit_the_cli_would(sandbox: Sandbox, tmp_path: Path) -> None:
    store = tmp_path / "state.sqlite3"
    for night in ("one", "two"):
        bulklink.run_job(
            pairs_csv(tmp_path / f"{night}.csv", 2, night), base_url=sandbox.url, token=TOKEN,
            org_id=ORG, rate=0, state=store,
        )  # fmt: skip
    before = store.read_bytes()
    assert [r.input for r in bulklink.list_runs(store, limit=1)] == [str(tmp_path / "two.csv")]
    assert len(bulklink.list_runs(store, limit=None)) == 2
    refusals = {
        2.5: "--limit must be a whole number or None, got 2.5",
        True: "--limit must be a whole number or None, got True",
        0: "--limit must be from 1 to 1,000,000, got 0",
        -1: "--limit must be from 1 to 1,000,000, got -1",
        1_000_001: "--limit must be from 1 to 1,000,000, got 1000001",
    }
    for limit, message in refusals.items():
        with pytest.raises(bulklink.UsageError) as refused:
            bulklink.list_runs(store, limit=limit)  # type: ignore[arg-type]
        assert str(refused.value) == message, "not 'the state store is damaged'"
    assert store.read_bytes() == before
    assert "1<=x<=1000000" in invoke("runs", "--state", store, "--limit", "0").stderr
    assert len(sandbox.requests) == 4


# -- dry_run ----------------------------------------------------------------------------------


def test_dry_run_lists_only_the_requests_a_limit_lets_out(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId"], ["A1", "B1"], ["", "B2"], *input_pairs(6)],
    )
    common: dict[str, Any] = {"base_url": sandbox.url, "token": TOKEN, "org_id": ORG}
    listed = {
        limit: [p.row for p in bulklink.dry_run(src, limit=limit, **common).sample_requests]
        for limit in (None, 0, 1, 3)
    }
    assert listed == {None: [1, 3, 4, 5, 6], 0: [], 1: [1], 3: [1, 3, 4]}
    assert bulklink.dry_run(src, limit=3, **common).counts["send"] == 3

    env = env_for(sandbox.url)
    one = invoke("run", src, "--dry-run", "--limit", "1", env=env).stdout
    assert "would send 1," in one and re.findall(r"row (\d+): PATCH", one) == ["1"]
    none = invoke("run", src, "--dry-run", "--limit", "0", env=env).stdout
    assert "would send 0," in none and "first requests" not in none and "PATCH" not in none
    assert sandbox.requests == []


#: A caller of run_job in a process of its own (signals reach only it): ``argv`` is the
#: input, the report, the sandbox's URL, "loop" to call from inside a running event loop
#: and "signals" for handle_signals=True. It installs handlers of its own first and prints
#: how the call ended and which handlers are its own afterwards, as JSON.
CALLER = """
import asyncio, json, signal, sys
import bulklink

src, out, url, mode = sys.argv[1:5]
def mine(signum, frame):
    pass
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, mine if "signals" in mode else signal.getsignal(sig))
def call():
    return bulklink.run_job(
        src, out, base_url=url, token=sys.argv[5], org_id=sys.argv[6], rate=5, no_state=True,
        handle_signals="signals" in mode,
    )
async def cell():
    return call()
try:
    summary = asyncio.run(cell()) if "loop" in mode else call()
    ended = {"returned": summary.exit_code}
except bulklink.BulklinkError as exc:
    ended = {"raised": type(exc).__name__, "exit_code": exc.exit_code,
             "counts": exc.summary.counts if exc.summary else None}
ended["own"] = [signal.getsignal(s) is mine for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
print(json.dumps(ended))
"""


def call_run_job(sandbox: Sandbox, src: Path, out: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CALLER, str(src), str(out), sandbox.url, mode, TOKEN, ORG],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_ctrl_c_stops_run_job_called_inside_a_running_event_loop(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """A notebook: Ctrl-C stops dispatch as in plain code (the rest skipped, Interrupted
    with its summary, the journal kept for a rerun), not after the whole file was sent."""
    server = start_sandbox(latency=0.2)
    n, src, out = 60, pairs_csv(tmp_path / "in.csv", 60), tmp_path / "out.csv"
    with call_run_job(server, src, out, "loop") as proc:
        wait_until(lambda: len(server.requests) >= 3, "3 requests")
        os.kill(proc.pid, signal.SIGINT)
        at_signal = len(server.requests)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    ended = json.loads(stdout)
    assert ended["raised"] == "Interrupted" and ended["exit_code"] == 130, ended
    assert len(server.requests) <= at_signal + 3, "sending went on after Ctrl-C"
    assert ended["counts"]["skipped"] >= n - len(server.requests)
    outcomes = [row["outcome"] for row in read_report(out)]
    assert outcomes.count("skipped") == ended["counts"]["skipped"]
    assert journal_of(out).exists()


@pytest.mark.parametrize("mode", ["signals", "loop signals"])
def test_handle_signals_puts_back_every_handler_of_the_caller(
    sandbox: Sandbox, tmp_path: Path, mode: str
) -> None:
    """A scheduler daemon calling run_job each night keeps its own Ctrl-C handling."""
    src, out = pairs_csv(tmp_path / "in.csv", 3), tmp_path / "out.csv"
    with call_run_job(sandbox, src, out, mode) as proc:
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout) == {"returned": 0, "own": [True, True, True]}


# -- link_pairs -------------------------------------------------------------------------------


async def collect(pairs: Any, **options: Any) -> list[bulklink.LinkResult]:
    return [result async for result in bulklink.link_pairs(pairs, **options)]


@pytest.mark.parametrize("as_async", [False, True], ids=["list", "async-iterable"])
def test_link_pairs_yields_one_result_per_pair_in_the_callers_loop(
    start_sandbox: Callable[..., Sandbox], as_async: bool
) -> None:
    server = start_sandbox(latency=0.2)
    pairs = [("A1", "B1"), ("  ", "B2"), ("C3", "C3"), ("MISSING4", "B4"), ("A5", "B5")]

    async def produce() -> AsyncIterator[tuple[str, str]]:
        for pair in pairs:
            await asyncio.sleep(0)
            yield pair

    async def main() -> tuple[list[bulklink.LinkResult], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        beat = asyncio.create_task(ticker())
        try:
            results = await collect(
                produce() if as_async else pairs,
                base_url=server.url, token=TOKEN, org_id=ORG, rate=0, backoff=0.01,
            )  # fmt: skip
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return results, ticks

    results, ticks = asyncio.run(main())
    assert ticks >= 3, "the caller's loop kept running while requests were in flight"
    assert len(results) == len(pairs)
    by_source = {r.source: r for r in results}
    assert set(by_source) == {"A1", "", "C3", "MISSING4", "A5"}
    for source in ("A1", "A5"):
        ok = by_source[source]
        assert (ok.outcome, ok.http_status, ok.error, ok.attempts) == ("linked", 200, "", 1)
        assert ok.success
        assert isinstance(ok.ticket, dict) and ok.ticket["id"] == source
    for source in ("", "C3"):
        bad = by_source[source]
        assert bad.outcome == "invalid" and bad.http_status is None
        assert bad.attempts == 0 and bad.error and bad.ticket is None
    missing = by_source["MISSING4"]
    assert (missing.outcome, missing.http_status, missing.attempts) == ("failed", 404, 1)
    assert "MISSING4" in missing.error
    assert sorted(sent(server)) == [("A1", "B1"), ("A5", "B5"), ("MISSING4", "B4")]


def test_link_pairs_with_api_key(start_sandbox: Callable[..., Sandbox]) -> None:
    server = start_sandbox(api_key=KEY)
    results = asyncio.run(collect([("A", "B")], base_url=server.url, api_key=KEY, rate=0))
    assert [r.outcome for r in results] == ["linked"]
    assert server.requests[0].header("x-api-key") == KEY
    assert server.requests[0].header("authorization") is None


def test_link_pairs_with_a_wrong_token_skips_the_rest_and_raises(sandbox: Sandbox) -> None:
    pairs = [(f"S{i}", f"L{i}") for i in range(10)]
    results: list[bulklink.LinkResult] = []

    async def main() -> None:
        async for result in bulklink.link_pairs(
            pairs, base_url=sandbox.url, token="wrong-token-xyz", org_id=ORG, rate=0,
            concurrency=1,
        ):  # fmt: skip
            results.append(result)

    with pytest.raises(bulklink.CredentialsRejected) as rejected:
        asyncio.run(main())
    assert "wrong-token-xyz" not in str(rejected.value)
    assert sorted((r.source, r.linked) for r in results) == sorted(pairs)
    sent_ids = set(sent(sandbox))
    assert 1 <= len(sent_ids) < 10
    assert all(r.outcome == "skipped" and r.attempts == 0 for r in results if (r.source, r.linked)
               not in sent_ids)  # fmt: skip
    assert all(r.outcome != "linked" for r in results)


@pytest.mark.parametrize("how", ["break", "aclosing"])
def test_link_pairs_stops_cleanly_when_the_caller_breaks(
    start_sandbox: Callable[..., Sandbox], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_sandbox(latency=0.05)
    pairs = [(f"S{i:04d}", f"L{i:04d}") for i in range(400)]

    async def main() -> tuple[bulklink.LinkResult, int, int]:
        options: dict[str, Any] = {"base_url": server.url, "token": TOKEN, "org_id": ORG}
        if how == "break":
            async for result in bulklink.link_pairs(pairs, rate=50, **options):
                first = result
                break
        else:
            async with contextlib.aclosing(
                bulklink.link_pairs(pairs, rate=50, **options)
            ) as results:
                async for result in results:
                    first = result
                    break
        await asyncio.sleep(0.3)
        settled = len(server.requests)
        await asyncio.sleep(0.5)
        return first, settled, len(server.requests)

    with caplog.at_level(logging.WARNING):
        first, settled, later = asyncio.run(main())
        gc.collect()
    assert first.outcome == "linked"
    assert settled == later, "no request is sent after the caller stopped reading"
    assert later < 60
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "aiohttp"))]


def test_link_pairs_takes_ids_as_the_file_reader_does(sandbox: Sandbox) -> None:
    """A number is its digits while a float holds them; any other value is never sent as
    its ``str()`` (``123.0``, ``1e+20``, ``True``) but is ``invalid``, saying why."""
    import numpy as np

    pairs: list[Any] = [
        (123.0, "L1"),  # an int column with a blank, as pandas gives it
        (np.float64(8.0), 9),
        (np.int64(7), " L7 "),
        (10**20, "L20"),  # a Python int is exact however long
        ("S2", 999_999_999_999_999.0),
        (1e20, "L3"),
        (12345678901234567.0, "L4"),  # a float that lost digits
        (1.5, "L5"),
        (float("inf"), "L6"),
        (True, "L8"),
        ("S9", False),
        (b"bytes", "L10"),
        (["x"], "L11"),
        ("S12", {"id": 1}),
        (None, "L13"),
        (float("nan"), "L14"),
    ]
    results = asyncio.run(collect(pairs, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0))
    assert sorted(sent(sandbox)) == sorted(
        [("123", "L1"), ("8", "9"), ("7", "L7"), (str(10**20), "L20"), ("S2", "999999999999999")]
    )
    outcomes = {(r.source, r.linked): (r.outcome, r.error) for r in results}
    assert len(results) == len(pairs)
    for pair in sent(sandbox):
        assert outcomes.pop(pair) == ("linked", "")
    neither = "ticket ID is neither text nor a whole number held exactly"
    assert outcomes == {
        ("1e+20", "L3"): ("invalid", f"source {neither} (1e+20); give IDs as text"),
        ("1.2345678901234568e+16", "L4"): (
            "invalid",
            f"source {neither} (1.2345678901234568e+16); give IDs as text",
        ),
        ("1.5", "L5"): ("invalid", f"source {neither} (1.5); give IDs as text"),
        ("inf", "L6"): ("invalid", f"source {neither} (inf); give IDs as text"),
        ("True", "L8"): ("invalid", f"source {neither} (True); give IDs as text"),
        ("S9", "False"): ("invalid", f"linked {neither} (False); give IDs as text"),
        ("b'bytes'", "L10"): ("invalid", f"source {neither} (b'bytes'); give IDs as text"),
        ("['x']", "L11"): ("invalid", f"source {neither} (['x']); give IDs as text"),
        ("S12", "{'id': 1}"): ("invalid", f"linked {neither} ({{'id': 1}}); give IDs as text"),
        ("", "L13"): ("invalid", "blank source ticket ID"),
        ("", "L14"): ("invalid", "blank source ticket ID"),
    }


def test_numpys_numbers_are_options_like_pythons(sandbox: Sandbox, tmp_path: Path) -> None:
    """A count read from a DataFrame is numpy's: the type check refused it (it was taken
    before), and SQLite cannot bind one: they are Python's own numbers here."""
    import numpy as np

    src = pairs_csv(tmp_path / "in.csv", 3)
    state = tmp_path / "state.sqlite3"
    counts: Any = {"limit": np.int64(2), "concurrency": np.int32(2), "max_retries": np.int64(1)}
    summary = bulklink.run_job(
        src, base_url=sandbox.url, token=TOKEN, org_id=ORG, state=state,
        rate=np.float64(0), **counts,
    )  # fmt: skip
    assert summary.counts["linked"] == 2 and len(sent(sandbox)) == 2
    five: Any = np.int64(5)
    assert len(bulklink.list_runs(state, limit=five)) == 1
    flag: Any = np.bool_(True)
    with pytest.raises(bulklink.UsageError, match="--limit must be a whole number"):
        bulklink.dry_run(src, limit=flag)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((b"in.csv",), "the input must be a path (str or pathlib.Path), got a value of type bytes"),
        ((None,), "the input must be a path (str or pathlib.Path), got a value of type NoneType"),
        (("in.csv", ""), "the output must be a path (str or pathlib.Path), got empty text"),
    ],
)
def test_a_file_argument_of_the_wrong_kind_is_a_usage_error(
    sandbox: Sandbox, args: tuple[Any, ...], said: str
) -> None:
    """They were a raw TypeError, and an empty output wrote the default report."""
    with pytest.raises(bulklink.UsageError) as refused:
        bulklink.run_job(*args, base_url=sandbox.url, token=TOKEN, org_id=ORG)
    assert str(refused.value) == said
    assert sandbox.requests == []
