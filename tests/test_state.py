"""Nightly runs do only new work (issue 9), end to end over loopback HTTP: the state store
as users meet it through the CLI.

Three nights of a growing file, duplicates and failures carried into the next night,
``--relink``, ``--dry-run``, ``runs`` and ``runs --json``, two runs sharing one store,
``kill -9`` then the same command, where the store lives and with which modes, a corrupt
store, runs that must leave the store alone, scopes, and ``retry``. Each test gets its own
``XDG_STATE_HOME`` (tests/conftest.py), so "the default store" is the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bulklink.sandbox import Reply, Sandbox
from tests.helpers import FAST_UNPACED as FAST
from tests.helpers import (
    ROOT,
    SIGKILLED,
    TOKEN,
    assert_rows_once,
    child_env,
    input_pairs,
    invoke,
    journal_of,
    line_count,
    pairs_csv,
    read_report,
    run_against,
    sent,
    spawn,
    wait_until,
    write_csv,
)

HEADER = ["sourceTicketId", "linkedTicketId"]
STAMP = "%Y-%m-%dT%H:%M:%SZ"


# -- helpers -------------------------------------------------------------------------------


def default_store() -> Path:
    return Path(os.environ["XDG_STATE_HOME"]) / "bulklink" / "state.sqlite3"


def linked_pairs(store: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """``linked_pairs`` as the README's ``sqlite3`` query reads it: pair -> (linked_at, run)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT source, linked, linked_at, run_id FROM linked_pairs").fetchall()
    finally:
        db.close()
    return {(s, link): (at, run) for s, link, at, run in rows}


def has_pairs(store: Path) -> bool:
    """Whether a run at work has recorded pairs yet (the file may be mid-creation)."""
    try:
        return store.exists() and bool(linked_pairs(store))
    except sqlite3.Error:
        return False


def pairs_of(rows: list[dict[str, str]], *outcomes: str) -> set[tuple[str, str]]:
    return {(r["sourceTicketId"], r["linkedTicketId"]) for r in rows if r["outcome"] in outcomes}


def assert_already_linked(row: dict[str, str], linked_at: str) -> None:
    """What the issue promises for a pair an earlier night linked."""
    assert row["outcome"] == "already-linked", row
    assert row["success"] == "true"
    assert row["attempts"] == "0"
    assert row["linked_at"] == linked_at
    assert row["http_status"] == row["error"] == ""
    assert all(v == "" for k, v in row.items() if k.startswith("ticket.")), row


def night(server: Sandbox, *args: str | Path, **kwargs: Any) -> tuple[int, Any]:
    """One run; returns the requests it sent and the click result."""
    before = len(server.requests)
    result = run_against(server, *args, *FAST, **kwargs)
    return len(server.requests) - before, result


def runs_json(*args: str | Path) -> list[dict[str, Any]]:
    result = invoke("runs", "--json", *args)
    assert result.exit_code == 0, result.stderr
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def run_python(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m bulklink ARGS`` to the end, as cron would run it."""
    return subprocess.run(
        [sys.executable, "-m", "bulklink", *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- three nights --------------------------------------------------------------------------


def test_three_nights_send_only_the_new_pairs(tmp_path: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(tmp_path / "export.csv", 50)
    report = tmp_path / "export.results.csv"

    requests, first = night(sandbox, "run", src)
    assert (requests, first.exit_code) == (50, 0), first.stderr
    night1 = read_report(report)
    assert {r["outcome"] for r in night1} == {"linked"}
    stamps = [r["linked_at"] for r in night1]
    for stamp in stamps:  # this run's own link time, in the store's format
        datetime.strptime(stamp, STAMP)

    requests, second = night(sandbox, "run", src)
    assert (requests, second.exit_code) == (0, 0), second.stderr
    assert "50 pairs are already linked" in second.stderr
    assert "already-linked 50" in second.stderr  # the end-of-run summary
    night2 = read_report(report)
    assert_rows_once(night2, input_pairs(50))
    for row, stamp in zip(night2, stamps, strict=True):
        assert_already_linked(row, stamp)

    # The export grows by one row before the third night.
    pairs_csv(src, 51)
    requests, third = night(sandbox, "run", src)
    assert (requests, third.exit_code) == (1, 0), third.stderr
    assert sent(sandbox, len(sandbox.requests) - 1) == [("T00051", "TL00051")]
    night3 = read_report(report)
    assert_rows_once(night3, input_pairs(51))
    for row, stamp in zip(night3[:50], stamps, strict=True):
        assert_already_linked(row, stamp)
    assert night3[50]["outcome"] == "linked" and night3[50]["linked_at"]
    assert set(linked_pairs(default_store())) == set(input_pairs(51))

    shown = invoke("report", report, "--json")
    assert shown.exit_code == 0, shown.stderr
    counts = json.loads(shown.stdout)["counts"]
    assert (counts["already-linked"], counts["linked"]) == (50, 1)


def test_duplicates_of_an_already_linked_row_succeed_with_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = write_csv(tmp_path / "in.csv", [HEADER, ["A1", "B1"], ["A2", "B2"], ["A1", "B1"]])
    report = tmp_path / "in.results.csv"
    assert night(sandbox, "run", src)[1].exit_code == 0
    first = read_report(report)

    requests, result = night(sandbox, "run", src)
    assert (requests, result.exit_code) == (0, 0), result.stderr
    rows = read_report(report)
    assert_already_linked(rows[0], first[0]["linked_at"])
    assert rows[2]["outcome"] == "duplicate"
    assert rows[2]["success"] == "true"
    assert "row 1" in rows[2]["error"]
    assert rows[2]["linked_at"] == ""


def test_failed_and_skipped_pairs_are_sent_again_the_next_night(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    rows = [HEADER, ["A1", "B1"], ["MISSING2", "B2"], ["A3", "B3"], ["A4", "MISSING4"]]
    rows += [[f"C{i}", f"D{i}"] for i in range(5, 11)]
    src = write_csv(tmp_path / "in.csv", rows)
    report = tmp_path / "in.results.csv"
    store = default_store()

    # Night 1: a canary of 5 pairs; two of them are unknown to the server (404).
    requests, first = night(sandbox, "run", src, "--limit", "5", "--max-retries", "0")
    assert (requests, first.exit_code) == (5, 1), first.stderr
    outcomes = [r["outcome"] for r in read_report(report)]
    assert outcomes == ["linked", "failed", "linked", "failed", "linked"] + ["skipped"] * 5
    assert set(linked_pairs(store)) == {("A1", "B1"), ("A3", "B3"), ("C5", "D5")}

    # Night 2: the same command without --limit: the failures and the skipped, not the rest.
    since = len(sandbox.requests)
    requests, second = night(sandbox, "run", src, "--max-retries", "0")
    assert second.exit_code == 1, second.stderr
    assert sorted(sent(sandbox, since)) == sorted(
        [("MISSING2", "B2"), ("A4", "MISSING4")] + [(f"C{i}", f"D{i}") for i in range(6, 11)]
    )
    report2 = read_report(report)
    assert [r["outcome"] for r in report2][:5] == [
        "already-linked", "failed", "already-linked", "failed", "already-linked",
    ]  # fmt: skip
    linked = linked_pairs(store)
    assert ("MISSING2", "B2") not in linked and ("A4", "MISSING4") not in linked
    assert len(linked) == 8

    # The tickets appear on the server; the nightly command alone finishes the job.
    sandbox.config.unknown_prefix = ""
    since = len(sandbox.requests)
    requests, third = night(sandbox, "run", src)
    assert third.exit_code == 0, third.stderr
    assert sorted(sent(sandbox, since)) == [("A4", "MISSING4"), ("MISSING2", "B2")]
    assert {r["outcome"] for r in read_report(report)} == {"linked", "already-linked"}
    assert len(linked_pairs(store)) == 10


@pytest.mark.parametrize("store", ["the store", "--no-state"])
def test_retry_of_a_second_night_sends_only_its_failures_with_or_without_the_store(
    tmp_path: Path, sandbox: Sandbox, store: str
) -> None:
    """An ``already-linked`` row is linked: ``retry`` keeps it as it keeps a ``linked``
    one, so a report carried to another host (or its store gone) resends none of them."""
    src = pairs_csv(tmp_path / "export.csv", 20)
    report = tmp_path / "export.results.csv"
    assert night(sandbox, "run", src)[1].exit_code == 0
    write_csv(src, [HEADER, *input_pairs(20), ("MISSING1", "B1")])
    requests, second = night(sandbox, "run", src, "--max-retries", "0")
    assert (requests, second.exit_code) == (1, 1), second.stderr
    sandbox.config.unknown_prefix = ""
    since = len(sandbox.requests)
    extra = ["--no-state"] if store == "--no-state" else []
    retried = run_against(sandbox, "retry", report, *extra, *FAST)
    assert retried.exit_code == 0, retried.stderr
    assert sent(sandbox, since) == [("MISSING1", "B1")]
    outcomes = [r["outcome"] for r in read_report(report)]
    assert outcomes == ["already-linked"] * 20 + ["linked"]


def test_relink_sends_every_pair_and_updates_the_record(tmp_path: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(tmp_path / "in.csv", 20)
    report = tmp_path / "in.results.csv"
    store = default_store()
    assert night(sandbox, "run", src)[1].exit_code == 0
    first_run = linked_pairs(store)[("T00001", "TL00001")][1]

    # Pretend the pairs were linked long ago, as the README's sqlite3 shell would show.
    db = sqlite3.connect(store)
    with db:
        db.execute("UPDATE linked_pairs SET linked_at = '2020-01-02T03:04:05Z'")
    db.close()
    assert night(sandbox, "run", src)[0] == 0
    assert {r["linked_at"] for r in read_report(report)} == {"2020-01-02T03:04:05Z"}

    requests, result = night(sandbox, "run", src, "--relink")
    assert (requests, result.exit_code) == (20, 0), result.stderr
    rows = read_report(report)
    assert {r["outcome"] for r in rows} == {"linked"}
    after = linked_pairs(store)
    assert set(after) == set(input_pairs(20))
    newest = runs_json()[0]
    for row in rows:
        linked_at, run = after[(row["sourceTicketId"], row["linkedTicketId"])]
        assert linked_at == row["linked_at"] != "2020-01-02T03:04:05Z"
        assert run == newest["id"] != first_run
    assert all(count == 2 for count in sandbox.link_counts.values())


def test_dry_run_counts_pairs_already_linked_and_creates_no_store(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 10)
    store = default_store()
    result = run_against(sandbox, "run", src, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would send 10" in result.stdout
    assert not store.parent.exists(), "a dry run created the state store's folder"

    assert night(sandbox, "run", src)[1].exit_code == 0
    pairs_csv(src, 13)
    snapshot = store.read_bytes()
    before = len(sandbox.requests)
    result = run_against(sandbox, "run", src, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would send 3" in result.stdout
    assert "skipped as already linked 10" in result.stdout
    assert len(sandbox.requests) == before
    assert store.read_bytes() == snapshot
    assert runs_json() and len(runs_json()) == 1  # a dry run is not a run

    result = run_against(sandbox, "run", src, "--dry-run", "--no-state")
    assert "would send 13" in result.stdout and "already linked" not in result.stdout


def test_dry_run_with_an_api_key_and_no_org_sees_the_runs_scope(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """An API key without an org ID scopes the store by the key: a dry run must too."""
    server = start_sandbox(token=None, api_key="key-SECRET-1", org_id=None)
    src = pairs_csv(tmp_path / "in.csv", 4)
    key_file = tmp_path / "key.txt"
    key_file.write_text("key-SECRET-1\n", encoding="utf-8")
    key_file.chmod(0o600)
    no_token = {"THENA_TOKEN": "", "THENA_ORG_ID": ""}
    ways: list[tuple[str, str | Path]] = [
        ("--api-key-file", key_file),
        ("--api-key", "key-SECRET-1"),
    ]
    for how, expected in zip(ways, (4, 0), strict=True):  # the same key: the same scope
        requests, result = night(server, "run", src, *how, env=no_token)
        assert (requests, result.exit_code) == (expected, 0), result.stderr
        result = run_against(server, "run", src, *how, "--dry-run", env=no_token)
        assert result.exit_code == 0, result.stderr
        assert "would send 0" in result.stdout and "already linked 4" in result.stdout
    result = run_against(server, "run", src, "--dry-run", env={**no_token, "THENA_API_KEY": "k2"})
    assert "would send 4" in result.stdout  # another key: another scope


# -- run history ---------------------------------------------------------------------------


def test_runs_lists_recent_runs_newest_first(tmp_path: Path, sandbox: Sandbox) -> None:
    assert invoke("runs").stdout.strip() == "no runs recorded"
    assert runs_json() == []
    assert not default_store().exists(), "listing runs created a store"

    good = pairs_csv(tmp_path / "good.csv", 4)
    bad = write_csv(tmp_path / "bad.csv", [HEADER, ["A1", "B1"], ["MISSING", "B2"]])
    assert night(sandbox, "run", good)[1].exit_code == 0
    assert night(sandbox, "run", bad, "--max-retries", "0")[1].exit_code == 1
    assert night(sandbox, "run", good)[1].exit_code == 0

    listed = runs_json()
    assert [r["id"] for r in listed] == sorted((r["id"] for r in listed), reverse=True)
    assert len(listed) == 3
    for record in listed:
        assert {"id", "started", "finished", "input", "report", "counts", "exit_code"} <= set(
            record
        )
        started = datetime.strptime(record["started"], STAMP)
        assert started <= datetime.strptime(record["finished"], STAMP)
    newest, failed, oldest = listed
    assert newest["input"] == str(good) and newest["report"] == str(tmp_path / "good.results.csv")
    assert newest["counts"]["already-linked"] == 4 and newest["exit_code"] == 0
    assert oldest["counts"]["linked"] == 4 and oldest["exit_code"] == 0
    assert failed["input"] == str(bad) and failed["exit_code"] == 1
    assert (failed["counts"]["linked"], failed["counts"]["failed"]) == (1, 1)

    assert [r["id"] for r in runs_json("--limit", "2")] == [newest["id"], failed["id"]]

    text = invoke("runs", "--limit", "2")
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"#{newest['id']} ") and "exit 0" in lines[0]
    assert "already-linked 4" in lines[0] and "good.results.csv" in lines[0]
    assert lines[1].startswith(f"#{failed['id']} ") and "exit 1" in lines[1]
    assert "failed 1" in lines[1]


@pytest.mark.slow
def test_the_history_keeps_no_token_and_no_webhook_url(tmp_path: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    hook = "http://127.0.0.1:9/hooks/SECRET-PATH-42"  # not called: a good night is silent
    done = run_python(
        "run", src, "--token", TOKEN, f"--notify={hook}", *FAST, env=child_env(sandbox, token=False)
    )
    assert done.returncode == 0, done.stderr
    [record] = runs_json()
    line = record["command_line"]
    assert line.startswith("bulklink run ") and str(src) in line
    assert "--token '***'" in line and "'--notify=***'" in line
    for secret in (TOKEN, "SECRET-PATH-42", hook):
        assert secret not in line
        assert secret not in done.stderr and secret not in done.stdout
    raw = b"".join(p.read_bytes() for p in default_store().parent.iterdir())
    assert TOKEN.encode() not in raw and b"SECRET-PATH-42" not in raw


# -- several processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_on_different_reports_share_one_store_at_once(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    # The first row of each is answered after 2 s, so each run lasts that long at least
    # from its first request: they overlap unless one started 2 s after the other.
    hold = 2.0
    server = start_sandbox(
        latency=0.01, script={"A00001": [Reply(delay=hold)], "B00001": [Reply(delay=hold)]}
    )
    store = tmp_path / "shared.sqlite3"
    inputs = [pairs_csv(tmp_path / "a.csv", 60, "A"), pairs_csv(tmp_path / "b.csv", 60, "B")]
    procs = [
        spawn(server, "run", src, "--state", store, "--concurrency", "4", *FAST) for src in inputs
    ]
    for proc in procs:
        with proc:
            _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    first = {json.loads(r.body)["sourceTicketId"]: r.t for r in server.requests}
    assert abs(first["A00001"] - first["B00001"]) < hold, "the two runs did not overlap"
    expected = set(input_pairs(60, "A")) | set(input_pairs(60, "B"))
    assert set(linked_pairs(store)) == expected
    listed = runs_json("--state", store)
    assert sorted(r["input"] for r in listed) == sorted(map(str, inputs))
    assert all(r["exit_code"] == 0 for r in listed)


@pytest.mark.slow
def test_kill9_mid_run_then_the_same_command(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.05)
    n, concurrency = 200, 4
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    store = default_store()
    args = ("run", src, "--concurrency", str(concurrency), *FAST)

    with spawn(server, *args) as proc:
        wait_until(lambda: line_count(journal_of(report)) >= 60, "60 journaled rows")
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == SIGKILLED
    # Whatever reached the store (a batch is committed every few seconds) was linked.
    recorded = set(linked_pairs(store))
    assert recorded <= set(server.link_counts), "the store holds a pair the server never linked"
    assert len(server.link_counts) < n
    [killed] = runs_json()
    assert killed["finished"] is None and killed["exit_code"] is None
    assert "(did not finish)" in invoke("runs").stdout

    server.config.latency = 0
    result = run_against(server, *args)
    assert result.exit_code == 0, result.stderr
    rows = read_report(report)
    assert_rows_once(rows, input_pairs(n))
    assert {r["outcome"] for r in rows} <= {"linked", "already-linked"}
    assert pairs_of(rows, "linked", "already-linked") <= set(server.link_counts)
    assert set(linked_pairs(store)) == set(server.link_counts) == set(input_pairs(n))
    # At most the requests in flight at the kill were linked twice.
    assert sum(1 for c in server.link_counts.values() if c > 1) <= concurrency
    assert not journal_of(report).exists()


# -- where the store lives -----------------------------------------------------------------


def test_default_location_and_modes(tmp_path: Path, sandbox: Sandbox) -> None:
    store = default_store()
    assert not store.parent.exists()
    assert night(sandbox, "run", pairs_csv(tmp_path / "in.csv", 3))[1].exit_code == 0
    assert store.is_file()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert len(linked_pairs(store)) == 3


def test_the_variable_and_the_option_choose_the_store(tmp_path: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    by_env, by_option = tmp_path / "env" / "s.sqlite3", tmp_path / "opt.sqlite3"
    env = {"BULKLINK_STATE": str(by_env)}
    assert night(sandbox, "run", src, env=env)[1].exit_code == 0
    assert len(linked_pairs(by_env)) == 3
    assert stat.S_IMODE(by_env.stat().st_mode) == 0o600
    assert night(sandbox, "run", src, env=env)[0] == 0

    # --state beats the variable: a new store, so the pairs are sent again.
    requests, result = night(sandbox, "run", src, "--state", by_option, env=env)
    assert (requests, result.exit_code) == (3, 0), result.stderr
    assert len(linked_pairs(by_option)) == 3
    assert len(runs_json("--state", by_option)) == 1
    history = invoke("runs", "--json", env=env)
    assert len(json.loads(history.stdout)) == 2
    assert not default_store().exists()


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _text_file(path: Path) -> None:
    path.write_text("source,linked\nA,B\n", encoding="utf-8")


def _other_apps_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('keep me')")
    db.commit()
    db.close()


@pytest.mark.parametrize("make", [_random_bytes, _text_file, _other_apps_db])
def test_a_corrupt_store_is_one_line_exit_2_nothing_sent_nothing_changed(
    tmp_path: Path, sandbox: Sandbox, make: Callable[[Path], None]
) -> None:
    store = tmp_path / "state.sqlite3"
    make(store)
    snapshot = store.read_bytes()
    src = pairs_csv(tmp_path / "in.csv", 5)
    for args in (
        ("run", src, "--state", store, *FAST),
        ("run", src, "--state", store, "--dry-run"),
        ("runs", "--state", store),
    ):
        result = run_against(sandbox, *args)
        assert result.exit_code == 2, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("bulklink: error: "), result.stderr
        assert str(store) in lines[0]
    assert sandbox.requests == []
    assert store.read_bytes() == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "state.sqlite3"]


def test_no_state_and_sandbox_leave_the_default_store_untouched(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 4)
    store = default_store()
    for _ in range(2):
        requests, result = night(sandbox, "run", src, "--no-state")
        assert (requests, result.exit_code) == (4, 0), result.stderr
    assert not store.parent.exists()

    result = invoke("run", src, "--sandbox", *FAST)
    assert result.exit_code == 0, result.stderr
    assert {r["outcome"] for r in read_report(tmp_path / "in.results.csv")} == {"linked"}
    assert not store.parent.exists()

    # With a store in place they still neither read nor write it.
    assert night(sandbox, "run", src)[1].exit_code == 0
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.parent.iterdir()}
    assert night(sandbox, "run", src, "--no-state")[0] == 4
    assert invoke("run", src, "--sandbox", *FAST).exit_code == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.parent.iterdir()} == files

    # A sandbox run given a store of its own records in the simulator's scope.
    own = tmp_path / "sandbox.sqlite3"
    assert invoke("run", src, "--sandbox", "--state", own, *FAST).exit_code == 0
    assert len(linked_pairs(own)) == 4
    result = invoke("run", src, "--sandbox", "--state", own, *FAST)
    assert "4 pairs are already linked" in result.stderr


# -- scopes --------------------------------------------------------------------------------


def test_a_scope_is_the_base_url_and_the_org(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    any_org = start_sandbox(org_id=None)
    other = start_sandbox(org_id=None)
    src = pairs_csv(tmp_path / "in.csv", 5)
    org_a, org_b = {"THENA_ORG_ID": "org_a"}, {"THENA_ORG_ID": "org_b"}

    assert night(any_org, "run", src, env=org_a)[0] == 5
    assert night(any_org, "run", src, env=org_a)[0] == 0
    assert night(any_org, "run", src, env=org_b)[0] == 5  # another org
    assert night(other, "run", src, env=org_a)[0] == 5  # another base URL (port)
    assert night(other, "run", src, env=org_a)[0] == 0
    # The same server spelt differently is the same scope.
    shouting = any_org.url.replace("http://", "HTTP://") + "/"
    assert night(any_org, "run", src, env={**org_b, "THENA_BASE_URL": shouting})[0] == 0

    db = sqlite3.connect(default_store())
    scopes = db.execute("SELECT base_url, org_id FROM scopes").fetchall()
    db.close()
    assert sorted(scopes) == sorted(
        [(any_org.url, "org_a"), (any_org.url, "org_b"), (other.url, "org_a")]
    )


def test_retry_records_what_it_links(tmp_path: Path, sandbox: Sandbox) -> None:
    src = write_csv(tmp_path / "in.csv", [HEADER, ["A1", "B1"], ["MISSING2", "B2"], ["A3", "B3"]])
    report = tmp_path / "in.results.csv"
    assert night(sandbox, "run", src, "--max-retries", "0")[1].exit_code == 1
    # A second night: two already-linked rows and the same failure, in the report retried.
    assert night(sandbox, "run", src, "--max-retries", "0")[1].exit_code == 1
    before = read_report(report)
    assert [r["outcome"] for r in before] == ["already-linked", "failed", "already-linked"]

    sandbox.config.unknown_prefix = ""
    since = len(sandbox.requests)
    requests, result = night(sandbox, "retry", report)
    assert (requests, result.exit_code) == (1, 0), result.stderr
    assert sent(sandbox, since) == [("MISSING2", "B2")]
    after = read_report(report)
    assert [r["outcome"] for r in after] == ["already-linked", "linked", "already-linked"]
    assert after[0] == before[0] and after[2] == before[2]  # kept exactly as they were
    assert ("MISSING2", "B2") in linked_pairs(default_store())
    newest = runs_json()[0]
    assert newest["command"] == "retry" and newest["exit_code"] == 0
    assert newest["report"] == str(report)
    assert (newest["counts"]["linked"], newest["counts"]["already-linked"]) == (1, 2)

    requests, result = night(sandbox, "run", src)
    assert (requests, result.exit_code) == (0, 0), result.stderr
    assert {r["outcome"] for r in read_report(report)} == {"already-linked"}


def test_exit_0_when_every_row_is_linked_already_linked_or_a_duplicate_of_one(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = write_csv(tmp_path / "in.csv", [HEADER, ["A1", "B1"], ["A1", "B1"]])
    assert night(sandbox, "run", src)[1].exit_code == 0
    write_csv(src, [HEADER, ["A1", "B1"], ["A2", "B2"], ["A1", "B1"], ["A2", "B2"]])
    requests, result = night(sandbox, "run", src)
    assert (requests, result.exit_code) == (1, 0), result.stderr
    outcomes = [r["outcome"] for r in read_report(tmp_path / "in.results.csv")]
    assert outcomes == ["already-linked", "linked", "duplicate", "duplicate"]


@pytest.mark.slow
def test_kill9_then_a_changed_input_sends_nothing_the_killed_run_linked(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """The journal of a killed run is not resumed for another input, but the pairs it
    linked reach the store before it is replaced: none of them is sent again."""
    server = start_sandbox(latency=0.05)
    n = 200
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--concurrency", "4", *FAST)
    with spawn(server, *args) as proc:
        # Killed early: most of what it linked is in the journal only, not yet the store.
        wait_until(lambda: line_count(journal_of(report)) >= 30, "30 journaled rows")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == SIGKILLED
    linked_before = set(server.link_counts)
    assert linked_before

    with src.open("a", encoding="utf-8") as fh:  # tonight's export has one more row
        fh.write("NEW00001,NEWL00001\n")
    server.config.latency = 0
    since = len(server.requests)
    result = run_against(server, *args)
    assert result.exit_code == 0, result.stderr
    assert "starting fresh" in result.stderr
    again = set(sent(server, since)) & linked_before
    # Only the requests in flight at the kill (not yet journaled) may be sent again.
    assert len(again) <= 4, sorted(again)
    rows = read_report(report)
    assert len(rows) == n + 1 and {r["outcome"] for r in rows} <= {"linked", "already-linked"}


@pytest.mark.slow
def test_a_killed_runs_links_are_kept_for_its_own_org_when_another_org_starts_fresh(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """A run against org B on the same report discarded org A's killed journal, and its
    pairs with it: the next night against org A sent them all again."""
    server = start_sandbox(latency=0.05, org_id=None)
    n = 120
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--concurrency", "4", *FAST)
    with spawn(server, *args, "--org-id", "orgA") as proc:
        wait_until(lambda: line_count(journal_of(report)) >= 30, "30 journaled rows")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == SIGKILLED
    linked_by_a = set(server.link_counts)
    server.config.latency = 0
    other = run_against(server, *args, "--org-id", "orgB")
    assert other.exit_code == 0, other.stderr
    assert "starting fresh" in other.stderr
    since = len(server.requests)
    again = run_against(server, *args, "--org-id", "orgA")
    assert again.exit_code == 0, again.stderr
    resent = set(sent(server, since)) & linked_by_a
    assert len(resent) <= 4, sorted(resent)  # only those in flight at the kill
    assert len(sent(server, since)) <= n - len(linked_by_a) + 4


@pytest.mark.slow
def test_a_dry_run_after_a_killed_run_counts_what_the_rerun_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """It said 'would send 100' and listed rows 1 to 5, while the rerun resumed the
    journal and sent the other half."""
    server = start_sandbox(latency=0.05)
    n = 100
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--concurrency", "1", "--no-state", *FAST)
    with spawn(server, *args) as proc:
        wait_until(lambda: line_count(journal_of(report)) >= 20, "20 journaled rows")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    done = line_count(journal_of(report)) - 1  # the header
    server.config.latency = 0
    since = len(server.requests)
    preview = run_against(server, *args, "--dry-run")
    assert preview.exit_code == 0, preview.stderr
    assert f"would send {n - done}," in preview.stdout
    assert f"resuming {done} rows done by an earlier run" in preview.stdout
    assert f"row {done + 1}: PATCH" in preview.stdout and "row 1: PATCH" not in preview.stdout
    assert len(server.requests) == since  # nothing sent
    result = run_against(server, *args)
    assert result.exit_code == 0, result.stderr
    assert len(server.requests) - since == n - done
