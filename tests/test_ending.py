"""How a run ends when something outside it misbehaves at the end: a state store another
process holds locked, a signal after the sending, requests that never get an answer."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bulklink.state.ledger
import bulklink.state.store
from bulklink.sandbox import Sandbox
from bulklink.state.store import Store
from tests.helpers import (
    FAST_UNPACED,
    input_pairs,
    journal_of,
    pairs_csv,
    read_report,
    run_against,
    sent,
    wait_until,
)

# -- a state store held locked by another connection ------------------------------------------


@contextlib.contextmanager
def store_held(path: Path, when: Callable[[], bool], seconds: float | None) -> Iterator[None]:
    """Another connection takes ``BEGIN EXCLUSIVE`` on the store once ``when()`` holds, as an
    admin in the ``sqlite3`` shell would, and lets go after ``seconds`` (None: at the end)."""
    release, taken = threading.Event(), threading.Event()

    def hold() -> None:
        wait_until(when, "the run to start sending")
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
    with Store.open(path) as store, store._errors():  # noqa: SLF001 - the test reads the table
        rows = store._db.execute("SELECT source, linked FROM linked_pairs").fetchall()  # noqa: SLF001
    return {(s, l) for s, l in rows}


@pytest.fixture
def short_store_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 s busy timeout (not 30 s), and a batch every 4 pairs so one is in a worker
    thread while the run goes on."""
    monkeypatch.setattr(bulklink.state.store, "BUSY_TIMEOUT", 1.0)
    monkeypatch.setattr(bulklink.state.ledger, "FLUSH_PAIRS", 4)


@pytest.mark.usefixtures("short_store_waits")
def test_a_store_locked_to_the_end_keeps_the_journal_and_the_next_run_sends_nothing(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.03)
    n, state = 30, tmp_path / "state.sqlite3"
    src = pairs_csv(tmp_path / "in.csv", n)
    report = tmp_path / "in.results.csv"
    args = ("run", src, "--state", state, "--concurrency", "1", *FAST_UNPACED)
    with store_held(state, lambda: len(server.requests) >= 2, None):
        result = run_against(server, *args)
    assert result.exit_code == 74, result.stderr
    assert "locked by another process" in result.stderr
    assert "space" not in result.stderr
    assert str(journal_of(report)) in result.stderr
    assert journal_of(report).exists()
    assert {r["outcome"] for r in read_report(report)} == {"linked"}  # all sent, none lost
    assert len(linked_pairs(state)) < n

    since = len(server.requests)
    again = run_against(server, *args)
    assert again.exit_code == 0, again.stderr
    assert sent(server, since) == []
    assert linked_pairs(state) == set(input_pairs(n))
    assert not journal_of(report).exists()


@pytest.mark.usefixtures("short_store_waits")
def test_a_batch_waiting_for_a_lock_when_sending_ends_is_in_the_store_before_exit_0(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    # The lock outlasts the first batch's busy timeout (it fails, goes back in line) and is
    # let go before the end's: every pair is in the store when the run exits 0.
    server = start_sandbox(latency=0.03)
    n, state = 24, tmp_path / "state.sqlite3"
    src = pairs_csv(tmp_path / "in.csv", n)
    args = ("run", src, "--state", state, "--concurrency", "1", *FAST_UNPACED)
    with store_held(state, lambda: len(server.requests) >= 2, 1.6):
        result = run_against(server, *args)
    assert result.exit_code == 0, result.stderr
    assert linked_pairs(state) == set(input_pairs(n))
    assert not journal_of(tmp_path / "in.results.csv").exists()
