"""The job's small interface to the state store: what to skip, what to record, the history.

A run asks the ledger which of its pairs are already linked in its scope (before
sending anything), tells it each pair the API linked (batched: committed from the job's
ticker once ``FLUSH_PAIRS`` are waiting or ``FLUSH_EVERY`` seconds have passed, and at
the end, since a transaction costs an fsync and random keys cost less in large
batches), and opens and closes its row in the run
history. With no store (``--no-state``, a sandbox run) the same calls do nothing, so
the job has one code path.

What a ``kill -9`` can cost: the pairs of the last uncommitted batch are in the journal
(every linked row is journaled before it counts), and the same command resumes from it
and records them then.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bulklink.models import Summary
from bulklink.state.scope import Scope
from bulklink.state.store import RunRecord, Store

# A killed run's pairs since the last flush are in its journal, so these bound only the
# work of the next run's recovery and how late ``bulklink runs`` and a concurrent run on
# another report see them; larger batches cost less a pair (benchmarks/NOTES.md).
FLUSH_PAIRS = 5_000  # about 2.5 s of an unpaced run against a fast server
FLUSH_EVERY = 30.0  # seconds, for a paced run: 300 pairs at --rate 10


class Ledger:
    """One run's use of the store; every method is a no-op without one."""

    def __init__(self, store: Store | None, scope: Scope, *, relink: bool = False) -> None:
        self._store = store
        self.scope = scope
        self.relink = relink
        self.run_id: int | None = None
        self._batch: list[tuple[str, str, str]] = []

    @classmethod
    def open(cls, path: Path | None, scope: Scope, *, relink: bool = False) -> Ledger:
        """Open the store at ``path``, if any (raises :class:`~bulklink.errors.StoreError`)."""
        store = Store.open(path) if path is not None else None
        return cls(store, scope, relink=relink)

    @property
    def active(self) -> bool:
        return self._store is not None

    @property
    def path(self) -> Path | None:
        return self._store.path if self._store is not None else None

    @property
    def lookup(self) -> Callable[[list[str], list[str]], list[str | None]] | None:
        """What the input scan asks about each valid pair; None: send them all (no store,
        ``--relink``, or nothing recorded yet in this scope: the first night asks nothing)."""
        if self._store is None or self.relink or not self._store.has_linked(self.scope):
            return None
        return self._linked_times

    def _linked_times(self, source: list[str], linked: list[str]) -> list[str | None]:
        assert self._store is not None
        return self._store.linked_times(self.scope, zip(source, linked, strict=True))

    def record_refusal(
        self, command: str, *, report: Path, job: str, summary: Summary, command_line: str
    ) -> None:
        """A run that never started (bad input, bad options): in the history all the same,
        so the next good night is a recovery."""
        if self._store is not None:
            self.begin(
                command,
                report=report,
                input=None,
                input_hash=None,
                job=job,
                command_line=command_line,
            )
            self.finish(summary.counts, summary.exit_code)

    def previous_run(self, report: Path) -> RunRecord | None:
        """The last finished run on this report, for recovery notices (before :meth:`begin`)."""
        return self._store.last_finished_run(report) if self._store is not None else None

    def last_success(self, job: str) -> datetime | None:
        return self._store.last_success(job) if self._store is not None else None

    def begin(
        self,
        command: str,
        *,
        report: Path,
        input: str | None,
        input_hash: str | None,
        job: str,
        command_line: str,
    ) -> None:
        if self._store is not None:
            self.run_id = self._store.start_run(
                command,
                scope=self.scope,
                report=report,
                command_line=command_line,
                input=input,
                input_hash=input_hash,
                job=job,
            )

    @property
    def on_linked(self) -> Callable[[tuple[str, str, str]], None] | None:
        """What to call with ``(source, linked, linked_at)`` for each pair the API linked
        (committed by the next :meth:`flush`); None without a store."""
        return self.add if self._store is not None else None

    def add(self, pair: tuple[str, str, str]) -> None:
        """One linked pair for the next batch (on the event loop)."""
        self._batch.append(pair)

    def keep_linked(self, scope: Scope, pairs: list[tuple[str, str, str]]) -> None:
        """Pairs an earlier, killed run linked in ``scope`` (from its journal): recorded
        unless known, so a discarded journal loses no link; which run linked them is not
        known."""
        if self._store is not None:
            self._store.record_linked(scope, pairs, None, replace=False)

    def due(self, seconds_since_flush: float) -> bool:
        """Whether the ticker should commit the batch now."""
        waiting = len(self._batch)
        return waiting >= FLUSH_PAIRS or (waiting > 0 and seconds_since_flush >= FLUSH_EVERY)

    def take(self) -> list[tuple[str, str, str]]:
        """The pairs added so far, for :meth:`commit`; later ones start a new batch.

        Called on the event loop, so the batch a worker thread commits is never the list
        the loop appends to.
        """
        batch, self._batch = self._batch, []
        return batch

    def restore(self, batch: list[tuple[str, str, str]]) -> None:
        """A batch whose :meth:`commit` failed, back in front of the next one: a pair leaves
        memory only once it is in the store (the journal keeps it meanwhile)."""
        self._batch[:0] = batch

    def commit(self, batch: list[tuple[str, str, str]]) -> None:
        """Record a batch from :meth:`take`: one transaction (safe in a worker thread)."""
        if self._store is not None and batch:
            self._store.record_linked(self.scope, batch, self.run_id)

    def flush(self) -> None:
        """Commit the pairs added so far, here and now (kept for the next try if it fails)."""
        batch = self.take()
        try:
            self.commit(batch)
        except BaseException:
            self.restore(batch)
            raise

    def finish(self, counts: dict[str, int], exit_code: int) -> None:
        if self._store is not None and self.run_id is not None:
            self.flush()
            self._store.finish_run(self.run_id, counts=counts, exit_code=exit_code)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
