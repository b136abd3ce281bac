"""The assembler's memory bounds, made small: the feed waits for the report cursor, and
results far ahead of it are read back from the journal instead of held."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import bulklink.assembly
import bulklink.inputs
import bulklink.job
from bulklink.sandbox import Reply, Sandbox
from tests.conftest import pairs_csv, read_report, run_against

FAST = ("--backoff", "0.01", "--no-progress", "--rate", "0")


def test_the_feed_waits_while_the_report_cursor_is_far_behind(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulklink.inputs, "CHUNK_ROWS", 10)
    monkeypatch.setattr(bulklink.job, "MAX_LEAD_ROWS", 20)
    # Row 1 answers after 1 s: the cursor stays on it while every other row is done.
    server = start_sandbox(script={"T00001": [Reply(delay=1.0)]})
    n = 200
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--concurrency", "4", *FAST)
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
    monkeypatch.setattr(bulklink.assembly, "PENDING_IN_MEMORY", 2)
    reads = [0]
    real_read = bulklink.journal.Journal.read

    def read(self: bulklink.journal.Journal, row: int) -> bulklink.models.Result:
        reads[0] += 1
        return real_read(self, row)

    monkeypatch.setattr(bulklink.journal.Journal, "read", read)
    server = start_sandbox(script={"T00001": [Reply(delay=0.5)]})
    n = 40
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--concurrency", "8", *FAST)
    assert result.exit_code == 0, result.stderr
    assert reads[0] >= n - 1 - 2 - 8, "rows beyond the in-memory bound came from the journal"
    rows = read_report(tmp_path / "in.results.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert all(r["outcome"] == "linked" and r["ticket.id"] == r["sourceTicketId"] for r in rows)
