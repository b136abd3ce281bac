"""A whole job, from a file to a report: what ``bulklink run`` and ``retry`` do, as a library.

This is the layer that owns the run's lifetime: the journal, the input passes, the
event loop's signal handlers, the bounds on time (``--give-up-after``, ``--deadline``),
what a failed write or a bug does to a run, the report commit and the summary. It prints
nothing itself; everything it has to say goes through a :class:`~bulklink.console.Console`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np

from bulklink._fs import side_path
from bulklink.console import Console
from bulklink.errors import (
    Blocked,
    BulklinkError,
    CredentialsRejected,
    DiskError,
    InternalError,
    Interrupted,
    UsageError,
)
from bulklink.models import Outcome, Pair, Summary
from bulklink.net.client import Client
from bulklink.net.connection import Connection
from bulklink.options import RetryOptions
from bulklink.run.assembly import Assembler
from bulklink.run.publish import Output, write_summary_json
from bulklink.run.runner import CREDENTIALS_REJECTED, INTERNAL_ERROR, Runner, describe_refusals
from bulklink.state.journal import Journal, hand_over_links, journal_path
from bulklink.state.ledger import Ledger
from bulklink.state.scope import Scope
from bulklink.tables.inputs import SEND, Chunk, Plan
from bulklink.tables.report.schema import Layout, RunInfo
from bulklink.tables.report.writers import ReportWriter, open_writer
from bulklink.text import format_duration, utc_stamp

_T = TypeVar("_T")
MAX_LEAD_ROWS = 200_000  # input rows read ahead of the report cursor before the feed waits
BATCH = 1024
#: What stops a run cleanly: Ctrl-C, cron's and systemd's timeout, a dropped ssh session.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """Everything a run needs, resolved and checked; built by :mod:`bulklink.api`.

    ``options`` are the run's own (traffic, control); ``connection`` and ``output`` are
    what its connection and output options resolved to. ``endpoint`` yields the base URL
    to call for the run's duration (the public surface's: it may start the sandbox).
    """

    plan: Plan
    layout: Layout
    options: RetryOptions
    connection: Connection
    endpoint: Callable[[], AbstractAsyncContextManager[str]]
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
        return self.options.limit


@dataclass(slots=True)
class _Ending:
    """How a run ended beyond its counts: what stopped it, and what went wrong."""

    stop_reason: str = ""
    halted: str = ""  # what made every request fail (TLS, a proxy's 407): exit 3
    signum: int = 0
    disk: tuple[OSError, Path] | None = None  # the first write that failed, and where
    bug: BaseException | None = None  # the first unexpected exception
    requests: int = 0  # answers the API gave, retries included
    throttled: int = 0  # of which 429


def execute(job: Job) -> Summary:
    """Run the job (its lock held by the caller); raise for aborts after writing the report.

    However it ends, every finished row is in the journal first. A failed write or a bug
    stops dispatch as a signal does; the report is still written when it can be (else
    discarded, never half-written), and the journal is kept, so the same command resumes.
    """
    started = datetime.now(UTC)
    t0 = time.monotonic()
    journal = _open_journal(job)
    try:
        writer = open_writer(job.report, job.layout)
    except BaseException as exc:
        journal.close()
        if isinstance(exc, OSError):
            raise DiskError(exc, exc.filename or job.report) from exc
        raise
    ending = _Ending()
    assembler = Assembler(job.plan, job.layout, journal, writer, on_linked=job.ledger.on_linked)
    try:
        _run_to_completion(lambda: _run(job, journal, assembler, ending, t0))
    except BaseException as exc:
        _give_up_report(job, ending, writer, journal, exc)
    summary = Summary(
        report=str(job.report),
        rows=job.plan.rows,
        counts={o.value: assembler.counts.get(o.value, 0) for o in Outcome},
        errors=assembler.errors.groups(),
        retryable_rows=assembler.counts["failed"] + assembler.counts["skipped"],
        resumed_rows=journal.resumed,
        started=utc_stamp(started),
        finished=utc_stamp(),
        elapsed=time.monotonic() - t0,
        exit_code=1 if assembler.unsuccessful else 0,
        stopped=ending.stop_reason,
        requests=ending.requests,
        throttled=ending.throttled,
    )
    error = _stop_error(job, ending, summary)
    try:  # the summary first: the xlsx report has a sheet for it
        writer.commit(RunInfo.from_summary(summary, job.input_name))
    except BaseException as exc:
        _give_up_report(job, ending, writer, journal, exc)
    error = _record(job, ending, summary, error)
    if ending.stop_reason or error is not None:
        journal.close()  # kept: a rerun resumes from it
    else:
        journal.remove()
    error = _last_writes(job, summary, error)
    if error is not None:
        raise error from ending.bug
    return summary


def _open_journal(job: Job) -> Journal:
    """The report's journal, scoped to where this run links; a mismatch starts fresh."""
    scope = scope_of(job.connection)
    path = journal_path(job.report)
    try:
        journal, note = Journal.open(
            path, job.plan.key, job.plan.rows, scope=scope, fresh=job.options.fresh
        )
    except OSError as exc:
        raise DiskError(exc, path) from exc
    if note:
        job.console.info(note)
    return journal


def scope_of(connection: Connection) -> Scope:
    """Where this connection's links count, for the journal and the store alike."""
    auth = connection.auth
    return Scope.build(
        connection.base_url, auth.org_id, sandbox=connection.sandbox, api_key=auth.api_key
    )


def recover_links(report: Path, connection: Connection, ledger: Ledger) -> None:
    """Before the input is checked against the store: the pairs a killed run on this report
    linked (its journal) are put in the store, whether or not its journal is resumed."""
    if ledger.active:
        hand_over_links(journal_path(report), scope_of(connection), ledger.keep_linked)


def _stop_error(job: Job, ending: _Ending, summary: Summary) -> BulklinkError | None:
    """What the run ends with beyond its counts (its exit code goes into the summary)."""
    error: BulklinkError | None = None
    if ending.bug is not None or ending.disk is not None:
        error = _failure(job, ending, ending.bug, summary)
    elif ending.halted:
        error = Blocked(f"{ending.halted}; nothing more was sent", summary)
    elif ending.stop_reason == CREDENTIALS_REJECTED:
        error = CredentialsRejected(
            "the API rejected the credentials (HTTP 401/403): check the token or API key "
            "and the org ID; nothing more was sent",
            summary,
        )
    elif ending.signum:
        name = signal.Signals(ending.signum).name
        error = Interrupted(f"interrupted by {name}", ending.signum, summary)
    if error is not None:
        summary.exit_code = error.exit_code
    return error


def _record(
    job: Job, ending: _Ending, summary: Summary, error: BulklinkError | None
) -> BulklinkError | None:
    """Every linked pair into the store, before the journal that also holds them goes."""
    try:
        job.ledger.finish(summary.counts, summary.exit_code)
    except (OSError, BulklinkError) as exc:
        ending.stop_reason = ending.stop_reason or "the state store could not be written"
        if error is None:
            summary.exit_code = DiskError.exit_code
            error = DiskError(_as_os_error(exc), job.ledger.path or "the state store", summary)
    return error


def _last_writes(job: Job, summary: Summary, error: BulklinkError | None) -> BulklinkError | None:
    """``--summary-json``, and the log's health: a write that failed is a disk error."""
    if job.output.summary_json is not None:
        try:
            write_summary_json(job.output.summary_json, summary)
        except (OSError, UsageError) as exc:
            if error is None:
                summary.exit_code = DiskError.exit_code
                error = DiskError(_as_os_error(exc), job.output.summary_json, summary)
    log_failure = job.console.log_failure
    if error is None and log_failure is not None:
        summary.exit_code = DiskError.exit_code
        error = DiskError(log_failure, job.console.log_path or "--log-file", summary)
    return error


def _failure(
    job: Job, ending: _Ending, exc: BaseException | None, summary: Summary | None
) -> BulklinkError:
    """The error a run that went wrong ends with: a failed write first, then a bug."""
    if ending.disk is not None:
        return DiskError(*ending.disk, summary)
    if isinstance(exc, OSError):
        return DiskError(exc, exc.filename or job.report, summary)
    bug = ending.bug or exc
    what = f"{type(bug).__name__}: {bug}" if bug is not None else "unknown"
    return InternalError(
        f"internal error (a bug in bulklink, not in your data or the API): {what}", summary
    )


def _give_up_report(
    job: Job, ending: _Ending, writer: ReportWriter, journal: Journal, exc: BaseException
) -> NoReturn:
    """No report can be installed: drop the half-written one, keep the journal, say why."""
    _discard(writer)
    journal.close()
    if isinstance(exc, Exception) and not isinstance(exc, BulklinkError):
        raise _failure(job, ending, exc, None) from (ending.bug or exc)
    raise exc


def _as_os_error(exc: BaseException) -> OSError:
    """A store failure as the disk error it is (SQLite reports a full disk in words)."""
    if isinstance(exc, OSError):
        return exc
    full = "full" in str(exc)
    return OSError(
        errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full else str(exc)
    )


def _discard(writer: ReportWriter) -> None:
    """Drop the half-written report; on a full disk closing it fails too, so try each step."""
    with contextlib.suppress(OSError):
        writer.discard()
    with contextlib.suppress(OSError):
        writer.tmp.unlink(missing_ok=True)


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
    job: Job, journal: Journal, assembler: Assembler, ending: _Ending, t0: float
) -> None:
    async with (
        job.endpoint() as base_url,
        Client(
            base_url,
            job.connection.auth,
            allow_http=job.connection.allow_http or job.connection.sandbox,
            timeout=job.options.timeout,
            max_connections=job.options.workers or 256,
            proxies=job.connection.api_proxies,
            trust=job.connection.trust,
        ) as client,
    ):
        await _Run(job, journal, assembler, ending, client).go(t0)


class _Run:
    """One run in its event loop: dispatch, the ticker, signals, time bounds, and the end."""

    def __init__(
        self, job: Job, journal: Journal, assembler: Assembler, ending: _Ending, client: Client
    ) -> None:
        self.job, self.journal, self.assembler, self.ending = job, journal, assembler, ending
        self.runner = Runner(client, job.options, assembler.accept)
        self.loop = asyncio.get_running_loop()
        journal.attach(self.loop.call_soon, lambda error: self.disk_failed(error, journal.path))
        self.flushed = time.monotonic()  # when the store's batch was last committed
        assembler.defer = self.loop.call_soon

    def disk_failed(self, error: OSError, path: Path) -> None:
        """The first failed write stops dispatch at once; in-flight requests finish."""
        if self.ending.disk is None:
            self.ending.disk = (error, path)
            self.runner.stop(f"cannot write {path}: {error.strerror or error}")

    def on_signal(self, sig: int) -> None:
        if self.ending.signum and sig == signal.SIGINT:
            self.journal.flush()  # second Ctrl-C: quit now, every finished row journaled
            os._exit(130)
        if not self.ending.signum:
            self.ending.signum = sig
            name = signal.Signals(sig).name
            self.job.console.info(
                f"{name}: finishing requests in flight, then writing the report "
                "(Ctrl-C again to quit at once)"
            )
            self.runner.stop(f"interrupted by {name}")

    async def go(self, t0: float) -> None:
        job, options, loop, runner = self.job, self.job.options, self.loop, self.runner
        handled = _install_signals(loop, self.on_signal) if options.handle_signals else []
        deadline = None
        if options.deadline_seconds is not None:
            left = max(0.0, options.deadline_seconds - (time.monotonic() - t0))
            reason = f"--deadline {format_duration(options.deadline_seconds)} reached"
            deadline = loop.call_later(left, runner.stop, reason)
        ticker = asyncio.create_task(self.tick())
        stream = _ChunkStream(job.plan.table.chunks())
        try:
            await self.dispatch(stream)
            await self.drain(stream)
        finally:
            ticker.cancel()
            if deadline is not None:
                deadline.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
            stream.close()
        self.journal.sync()
        job.console.finish_progress(self.assembler.done_this_run)
        self.ending.stop_reason, self.ending.halted = runner.stop_reason, runner.halted
        self.ending.requests, self.ending.throttled = runner.pacer.requests, runner.pacer.throttled

    async def dispatch(self, stream: _ChunkStream) -> None:
        """Send everything; a failed write or a bug stops the run as a signal does."""
        runner = self.runner
        try:
            await runner.run(_feed(self.job, self.journal, self.assembler, stream, runner))
        except BulklinkError:
            raise
        except OSError as exc:  # the report's file, or the input read again
            path = Path(os.fsdecode(exc.filename)) if exc.filename else self.job.report
            self.disk_failed(exc, path)
        except Exception as exc:  # a bug: the runner stopped everyone; report what is done
            self.ending.bug = exc
            runner.stop(INTERNAL_ERROR)

    async def drain(self, stream: _ChunkStream) -> None:
        """The rest of the input into the report: unsent rows ``skipped`` with the reason."""
        assembler, job = self.assembler, self.job
        if self.runner.stop_reason:
            assembler.skip_reason = f"not attempted: {self.runner.stop_reason}"
        elif job.limit is not None:
            assembler.skip_reason = f"not attempted (--limit {job.limit})"
        while (chunk := await stream.get()) is not None:
            assembler.add_chunk(chunk)
        # The rows read back, a slice per turn: each sleep(0) lets one slice run.
        while assembler.catching_up:  # noqa: ASYNC110 - polls per turn, not per event
            await asyncio.sleep(0)
        assembler.finish()

    async def tick(self) -> None:
        """Twice a second: progress, the give-up rule, the log's health and the store's
        batch; once a second: fsync the journal (both off the event loop). A bug here stops
        the run as one in a worker."""
        job, journal, runner = self.job, self.journal, self.runner
        to_send = journal.pending(job.plan.codes == SEND)
        if job.limit is not None:
            to_send = min(to_send, max(0, job.limit - journal.resumed))
        try:
            job.console.start_progress(to_send)
            last_sync = time.monotonic()
            while True:
                await asyncio.sleep(0.5)
                job.console.progress(self.assembler.done_this_run, runner.in_flight)
                self.check_health()
                await self.watch_input()
                await self.flush_store()
                if time.monotonic() - last_sync >= 1.0 and journal.take_dirty():
                    last_sync = time.monotonic()
                    try:
                        await asyncio.to_thread(journal.fsync_now)
                    except OSError as exc:
                        journal.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.ending.bug is None:
                self.ending.bug = exc
            runner.stop(INTERNAL_ERROR)

    def check_health(self) -> None:
        """A log that cannot be written is a disk failure; a refusing API is given up on."""
        console, runner = self.job.console, self.runner
        if console.log_failure is not None:
            self.disk_failed(console.log_failure, console.log_path or Path("--log-file"))
        give_up = self.job.options.give_up_seconds
        quiet = runner.clock() - runner.last_progress
        if give_up is not None and runner.refusals and quiet >= give_up:
            runner.stop(
                f"gave up: the API refused everything for {format_duration(give_up)} "
                f"({describe_refusals(runner.refusals)})"
            )

    async def watch_input(self) -> None:
        """An input that changes while rows are sent stops the run, also when every row
        was read before the change (a file of one chunk); the stat is off the event loop."""
        snapshot = self.job.plan.table.snapshot
        if snapshot is None or self.runner.stop_reason:
            return
        if await asyncio.to_thread(snapshot.changed):
            self.runner.stop(_input_changed(self.job))

    async def flush_store(self) -> None:
        """The store's batch, when :meth:`Ledger.due` (off the event loop)."""
        ledger = self.job.ledger
        now = time.monotonic()
        if ledger.active and ledger.due(now - self.flushed):
            self.flushed = now
            try:
                await asyncio.to_thread(ledger.commit, ledger.take())
            except (OSError, BulklinkError) as exc:
                self.disk_failed(_as_os_error(exc), ledger.path or Path("the state store"))


def _install_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> list[int]:
    if threading.current_thread() is not threading.main_thread():
        return []
    handled: list[int] = []
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, handler, sig)
        handled.append(sig)
    return handled


@contextlib.contextmanager
def signals_raise(enabled: bool) -> Iterator[None]:
    """Until a run's own handlers take over: SIGTERM and SIGHUP raise :class:`Interrupted`.

    Their default action ends the process on the spot, before any ``finally`` (a spooled
    copy of standard input would stay beside the report); SIGINT raises already.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        raise Interrupted(f"interrupted by {name} before anything was sent", signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def _input_changed(job: Job) -> str:
    return f"the input changed while the run read it: {job.plan.table.name}"


async def _feed(
    job: Job, journal: Journal, assembler: Assembler, stream: _ChunkStream, runner: Runner
) -> AsyncIterator[list[Pair]]:
    """Batches of pairs still to send, in input order, honouring --limit and back-pressure."""
    codes = job.plan.codes
    # A canary resumed after a crash sends only what the first attempt had left of N.
    budget = [None if job.limit is None else max(0, job.limit - journal.resumed)]
    while (chunk := await stream.get()) is not None:
        assembler.add_chunk(chunk)
        if chunk.input_changed:  # what is left may not be what was validated: stop
            runner.stop(_input_changed(job))
            return
        async for batch in _batches(chunk, codes, journal, budget):
            yield batch
        if budget[0] is not None and budget[0] <= 0:
            return
        while assembler.lead > MAX_LEAD_ROWS and not runner.stop_reason:
            assembler.moved.clear()
            with contextlib.suppress(TimeoutError):  # wakes to notice a stop, too
                await asyncio.wait_for(assembler.moved.wait(), 0.5)


async def _batches(
    chunk: Chunk, codes: np.ndarray[Any, Any], journal: Journal, budget: list[int | None]
) -> AsyncIterator[list[Pair]]:
    """One chunk's pairs to send, ``BATCH`` at a time; ``budget`` is what --limit has left.

    Which rows to send is found for the whole chunk at once (numpy), not row by row: a
    resume skips the rows done before without a Python step each.
    """
    wanted = codes[chunk.start : chunk.end] == SEND
    ats: list[int] = np.flatnonzero(wanted & journal.undone(chunk.start, chunk.end)).tolist()
    left = budget[0]
    if left is not None:
        ats = ats[: max(left, 0)]
        budget[0] = left - len(ats)
    source, linked, first = chunk.source, chunk.linked, chunk.start + 1
    for i in range(0, len(ats), BATCH):
        yield [Pair(first + at, source[at], linked[at]) for at in ats[i : i + BATCH]]


def resolve_report(input_path: Path | None, output: Path | None) -> Path:
    if output is None:
        if input_path is None:
            raise UsageError("reading from standard input needs -o/--output")
        output = side_path(input_path.with_name(input_path.stem), ".results.csv")
    if input_path is not None and output.resolve() == input_path.resolve():
        raise UsageError("the report would overwrite the input; choose another -o/--output")
    if not output.parent.is_dir():
        raise UsageError(f"the report's folder does not exist: {output.parent}")
    return output
