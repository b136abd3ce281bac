"""A whole job, from a file to a report: what ``bulklink run`` and ``retry`` do, as a library.

This is the layer that owns the run's lifetime: the lock, the journal, the input
passes, the event loop's signal handlers, the report commit and the summary. It prints
nothing itself; everything it has to say goes through a :class:`~bulklink.console.Console`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bulklink.assembly import Assembler, Layout
from bulklink.client import Client
from bulklink.console import Console
from bulklink.errors import BulklinkError, CredentialsRejected, Interrupted, UsageError
from bulklink.inputs import SEND, Chunk, Plan
from bulklink.journal import Journal, Scope, journal_path
from bulklink.ledger import Ledger
from bulklink.models import Outcome, Pair, Summary
from bulklink.options import Connection, Control, Output, RunSettings
from bulklink.report import open_writer
from bulklink.runner import CREDENTIALS_REJECTED, Runner
from bulklink.xlsx import RunInfo

_T = TypeVar("_T")
MAX_LEAD_ROWS = 200_000  # input rows read ahead of the report cursor before the feed waits
BATCH = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """Everything a run needs, resolved and checked; built by :mod:`bulklink.api`."""

    plan: Plan
    layout: Layout
    connection: Connection
    settings: RunSettings
    control: Control
    output: Output
    console: Console
    command: str
    ledger: Ledger
    input_name: str  # as the user named it ("-" for standard input)

    @property
    def report(self) -> Path:
        return self.output.report

    @property
    def limit(self) -> int | None:
        return self.control.limit


def execute(job: Job) -> Summary:
    """Run the job (its lock held by the caller); raise for aborts after writing the report."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    connection = job.connection
    scope = Scope.build(
        connection.base_url,
        connection.auth.org_id,
        sandbox=connection.sandbox,
        api_key=connection.auth.api_key,
    )
    journal, note = Journal.open(
        journal_path(job.report), job.plan.key, job.plan.rows, scope=scope, fresh=job.control.fresh
    )
    if note:
        job.console.info(note)
    writer = open_writer(job.report, job.layout.extra_fields, job.layout.passthrough)
    assembler = Assembler(job.plan, job.layout, journal, writer, on_linked=job.ledger.add)
    try:
        stop_reason, signum, traffic = _run_to_completion(lambda: _run(job, journal, assembler))
    except BaseException:
        writer.discard()
        journal.close()
        raise
    summary = Summary(
        report=str(job.report),
        rows=job.plan.rows,
        counts={o.value: assembler.counts.get(o.value, 0) for o in Outcome},
        errors=assembler.errors.groups(),
        retryable_rows=assembler.counts["failed"] + assembler.counts["skipped"],
        resumed_rows=journal.resumed,
        started=started.isoformat(timespec="seconds"),
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        elapsed=time.monotonic() - t0,
        exit_code=1 if assembler.unsuccessful else 0,
        stopped=stop_reason,
        requests=traffic[0],
        throttled=traffic[1],
    )
    error: BulklinkError | None = None
    if stop_reason == CREDENTIALS_REJECTED:
        error = CredentialsRejected(
            "the API rejected the credentials (HTTP 401/403): check the token or API key "
            "and the org ID; nothing more was sent",
            summary,
        )
    elif signum:
        error = Interrupted(f"interrupted by {signal.Signals(signum).name}", signum, summary)
    if error is not None:
        summary.exit_code = error.exit_code
    try:  # the summary first: the xlsx report has a sheet for it
        writer.commit(RunInfo.from_summary(summary, job.input_name))
    except BaseException:
        writer.discard()
        journal.close()
        raise
    # Every linked pair is in the store before the journal that also holds it goes.
    job.ledger.finish(summary.counts, summary.exit_code)
    if stop_reason:
        journal.close()  # kept: a rerun resumes from it
    else:
        journal.remove()
    if error is not None:
        raise error
    return summary


def _run_to_completion(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """``asyncio.run``, or in a thread of its own when the caller's thread runs a loop already
    (a notebook, an async application): the job then blocks its caller, as any call does."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bulklink") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _run(
    job: Job, journal: Journal, assembler: Assembler
) -> tuple[str, int, tuple[int, int]]:
    console = job.console
    to_send = journal.pending(job.plan.codes == SEND)
    if job.limit is not None:
        to_send = min(to_send, max(0, job.limit - journal.resumed))
    async with (
        job.connection.endpoint() as base_url,
        Client(
            base_url,
            job.connection.auth,
            allow_http=job.connection.allow_http or job.connection.sandbox,
            timeout=job.settings.timeout,
            max_connections=job.settings.concurrency or 256,
        ) as client,
    ):
        journal.defer = asyncio.get_running_loop().call_soon
        runner = Runner(client, job.settings, assembler.accept)
        signum = 0
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            nonlocal signum
            if signum and sig == signal.SIGINT:
                journal.flush()  # second Ctrl-C: quit now, every finished row journaled
                os._exit(130)
            if not signum:
                signum = sig
                name = signal.Signals(sig).name
                console.info(
                    f"{name}: finishing requests in flight, then writing the report "
                    "(Ctrl-C again to quit at once)"
                )
                runner.stop(f"interrupted by {name}")

        handled = _install_signals(loop, on_signal) if job.control.handle_signals else []
        ticker = asyncio.create_task(_tick(job, journal, assembler, runner, to_send))
        stream = _ChunkStream(job.plan.table.chunks())
        try:
            await runner.run(_feed(job, journal, assembler, stream, runner))
            while (chunk := await stream.get()) is not None:
                assembler.add_chunk(chunk)
        finally:
            ticker.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
            stream.close()
        if runner.stop_reason:
            assembler.skip_reason = f"not attempted: {runner.stop_reason}"
        elif job.limit is not None:
            assembler.skip_reason = f"not attempted (--limit {job.limit})"
        assembler.finish()
        journal.sync()
        console.finish_progress(assembler.done_this_run)
        traffic = (runner.pacer.requests, runner.pacer.throttled)
        return runner.stop_reason, signum, traffic


def _install_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> list[int]:
    if threading.current_thread() is not threading.main_thread():
        return []
    handled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig)
        handled.append(sig)
    return handled


async def _tick(
    job: Job, journal: Journal, assembler: Assembler, runner: Runner, total: int
) -> None:
    """Twice a second: progress and the store's batch; once a second: fsync the journal
    (both off the event loop)."""
    job.console.start_progress(total)
    last_sync = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        job.console.progress(assembler.done_this_run, runner.in_flight)
        if job.ledger.active:
            await asyncio.to_thread(job.ledger.flush)
        if time.monotonic() - last_sync >= 1.0 and journal.dirty:
            journal.dirty = False
            last_sync = time.monotonic()
            await asyncio.to_thread(journal.fsync_now)


class _ChunkStream:
    """Input chunks read in a worker thread, one ahead, so pandas never blocks the loop."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._next: asyncio.Future[Chunk | None] | None = None
        self._done = False

    def _prefetch(self) -> asyncio.Future[Chunk | None]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, next, self._chunks, None)

    async def get(self) -> Chunk | None:
        if self._done:
            return None
        future = self._next or self._prefetch()
        chunk = await future
        self._next = self._prefetch() if chunk is not None else None
        self._done = chunk is None
        return chunk

    def close(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()


async def _feed(
    job: Job, journal: Journal, assembler: Assembler, stream: _ChunkStream, runner: Runner
) -> AsyncIterator[list[Pair]]:
    """Batches of pairs still to send, in input order, honouring --limit and back-pressure."""
    codes = job.plan.codes.tobytes()
    # A canary resumed after a crash sends only what the first attempt had left of N.
    budget = None if job.limit is None else max(0, job.limit - journal.resumed)
    while (chunk := await stream.get()) is not None:
        assembler.add_chunk(chunk)
        batch: list[Pair] = []
        source, linked, start = chunk.source, chunk.linked, chunk.start
        for at in range(len(chunk)):
            index = start + at
            if codes[index] != SEND or journal.done(index + 1):
                continue
            if budget is not None:
                if budget <= 0:
                    break
                budget -= 1
            batch.append(Pair(index + 1, source[at], linked[at]))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
        if budget is not None and budget <= 0:
            return
        while assembler.lead > MAX_LEAD_ROWS and not runner.stop_reason:
            assembler.moved.clear()
            with contextlib.suppress(TimeoutError):  # wakes to notice a stop, too
                await asyncio.wait_for(assembler.moved.wait(), 0.5)


def resolve_report(input_path: Path | None, output: Path | None) -> Path:
    if output is None:
        if input_path is None:
            raise UsageError("reading from standard input needs -o/--output")
        output = input_path.with_name(f"{input_path.stem}.results.csv")
    if input_path is not None and output.resolve() == input_path.resolve():
        raise UsageError("the report would overwrite the input; choose another -o/--output")
    if not output.parent.is_dir():
        raise UsageError(f"the report's folder does not exist: {output.parent}")
    return output
