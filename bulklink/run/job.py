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
from dataclasses import dataclass, field
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
    StoreError,
    StoreLocked,
    UsageError,
)
from bulklink.models import BudgetSeen, Outcome, Pair, Summary
from bulklink.net.client import Client
from bulklink.net.connection import Connection
from bulklink.options import RetryOptions
from bulklink.run.assembly import Assembler
from bulklink.run.pacing import auto_rate_plan
from bulklink.run.publish import Output, write_summary_json
from bulklink.run.runner import CREDENTIALS_REJECTED, INTERNAL_ERROR, Runner, describe_refusals
from bulklink.state.journal import Journal, hand_over_links, journal_path
from bulklink.state.ledger import Ledger
from bulklink.state.scope import Scope
from bulklink.tables.inputs import SEND, Chunk, Plan
from bulklink.tables.report.schema import MAX_DROPPED_NAMES, MAX_EXTRA_FIELDS, Layout, RunInfo
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
    lifetime: Lifetime = field(default_factory=lambda: Lifetime(False))

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
    average_rate: float = 0.0
    budget: BudgetSeen | None = None
    #: A signal the caller's thread took while the run's loop is in a thread of its own.
    forwarded: int = 0


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
        _run_to_completion(
            lambda: _run(job, journal, assembler, ending, t0),
            lambda signum: setattr(ending, "forwarded", ending.forwarded or signum),
            STOP_SIGNALS if job.options.handle_signals else (signal.SIGINT,),
        )
    except BaseException as exc:
        job.lifetime.after_sending()
        # A write failed past the runner (the report's own file, as the rest was written
        # as skipped): what was done still goes to the history, summary JSON and metrics.
        summary = _summary(job, assembler, journal, ending, started, t0)
        _give_up_report(job, ending, writer, journal, exc, summary)
    job.lifetime.after_sending()
    summary = _summary(job, assembler, journal, ending, started, t0)
    error = _stop_error(job, ending, summary)
    try:  # the summary first: the xlsx report has a sheet for it
        writer.commit(RunInfo.from_summary(summary, job.input_name))
    except BaseException as exc:
        _give_up_report(job, ending, writer, journal, exc, summary)
    if writer.schema.dropped:
        job.console.error(
            f"warning: the API sent {_count_of(writer.schema.dropped)} more undocumented ticket "
            f"fields than the report has columns for ({MAX_EXTRA_FIELDS}): they are not in it"
        )
    error = error or job.lifetime.late(summary, "the report and the state store are written")
    error = _record(job, ending, summary, error)
    if ending.stop_reason or error is not None:
        journal.close()  # kept: a rerun resumes from it
    else:
        journal.remove()
    error = _last_writes(job, summary, error)
    if error is not None:
        raise error from ending.bug
    return summary


def _count_of(dropped: set[str]) -> str:
    shown = f"{len(dropped):,}"
    return shown if len(dropped) < MAX_DROPPED_NAMES else f"{shown} or"


def _summary(
    job: Job,
    assembler: Assembler,
    journal: Journal,
    ending: _Ending,
    started: datetime,
    t0: float,
) -> Summary:
    """The run's end; rows no result was written for (a run cut short by a failed write)
    count as ``skipped``, so the counts always add up to the input's rows."""
    counts = {o.value: assembler.counts.get(o.value, 0) for o in Outcome}
    counts[Outcome.SKIPPED.value] += job.plan.rows - sum(counts.values())
    return Summary(
        report=str(job.report),
        rows=job.plan.rows,
        counts=counts,
        errors=assembler.errors.groups(),
        retryable_rows=counts["failed"] + counts["skipped"],
        resumed_rows=journal.resumed,
        started=utc_stamp(started),
        finished=utc_stamp(),
        elapsed=time.monotonic() - t0,
        exit_code=1 if assembler.unsuccessful else 0,
        stopped=ending.stop_reason,
        requests=ending.requests,
        throttled=ending.throttled,
        average_rate=ending.average_rate,
        budget=ending.budget,
    )


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
            path = job.ledger.path or "the state store"
            error = DiskError(
                _as_os_error(exc), path, summary, message=store_note(exc, job.report) or None
            )
    return error


def store_note(exc: BaseException, report: Path) -> str:
    """What a locked store means for the run: no full disk, and the pairs are safe."""
    if not isinstance(exc, StoreLocked):
        return ""
    return (
        f"{exc}: another process (an sqlite3 shell, a VACUUM) held it; the linked pairs are "
        f"kept in the journal {journal_path(report)}, and the same command records them "
        "and sends none of them again"
    )


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
    job: Job,
    ending: _Ending,
    writer: ReportWriter,
    journal: Journal,
    exc: BaseException,
    summary: Summary | None = None,
) -> NoReturn:
    """No report can be installed: drop the half-written one, keep the journal, say why.

    With the run's ``summary`` (the report was complete but could not be installed: a
    full disk), the error carries it, and the history records the run's end with it: the
    summary JSON and the metrics say what was done, not that nothing was.
    """
    _discard(writer)
    if isinstance(exc, Exception) and not isinstance(exc, BulklinkError):
        error = _failure(job, ending, exc, summary)
        if summary is not None:
            summary.exit_code = error.exit_code
            summary.stopped = summary.stopped or str(error)
            summary.report = ""  # none was installed
            _record(job, ending, summary, error)
            _last_writes(job, summary, error)
        journal.close()
        raise error from (ending.bug or exc)
    journal.close()
    raise exc


def _as_os_error(exc: BaseException) -> OSError:
    """A failure to write as the disk error it is: a store error says which, if any."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, StoreError) and exc.os_error is not None:
        return exc.os_error
    return OSError(errno.EIO, str(exc))


def _discard(writer: ReportWriter) -> None:
    """Drop the half-written report; on a full disk closing it fails too, so try each step."""
    with contextlib.suppress(OSError):
        writer.discard()
    with contextlib.suppress(OSError):
        writer.tmp.unlink(missing_ok=True)


def _run_to_completion(
    make: Callable[[], Coroutine[Any, Any, _T]],
    forward: Callable[[int], None],
    signals: tuple[int, ...],
) -> _T:
    """``asyncio.run``, or in a thread of its own when the caller's thread runs a loop already
    (a notebook, an async application): the job then blocks its caller, as any call does.

    There the signals reach the caller's thread, not the run's loop: while it waits,
    ``signals`` (Ctrl-C's at least) are handed to ``forward``, which stops the run as in
    the plain case, and the caller's handlers are put back after.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with (
        contextlib.ExitStack() as handlers,
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bulklink") as pool,
    ):
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                previous = signal.signal(sig, lambda signum, frame: forward(signum))
                if previous is not None:
                    handlers.callback(signal.signal, sig, previous)
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
            rate_headers=job.options.auto_rate,
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
        self.runner.pacer.note = job.console.info
        if job.options.auto_rate:
            job.console.info(auto_rate_plan(job.options))
        self.loop = asyncio.get_running_loop()
        journal.attach(self.loop.call_soon, lambda error: self.disk_failed(error, journal.path))
        self.flushed = time.monotonic()  # when the store's batch was last committed
        self.committing: asyncio.Task[None] | None = None  # the batch a worker thread writes
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
            # What the run did, however it ends (a failed write may end it here).
            self.ending.stop_reason, self.ending.halted = runner.stop_reason, runner.halted
            pacer = runner.pacer
            self.ending.requests, self.ending.throttled = pacer.requests, pacer.throttled
            self.ending.average_rate = pacer.average_rate
            self.ending.budget = pacer.budget.seen() if pacer.budget is not None else None
            if self.committing is not None:  # its error, if any, is the run's too
                await self.committing
            if deadline is not None:
                deadline.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
            stream.close()
        self.journal.sync()
        job.console.finish_progress(self.assembler.done_this_run)

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
                if self.ending.forwarded and not self.ending.signum:
                    self.on_signal(self.ending.forwarded)
                job.console.progress(self.assembler.done_this_run, runner.in_flight)
                self.check_health()
                await self.watch_input()
                self.flush_store()
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
        # Requests waiting for an answer are no success: a server that never answers
        # is given up on as one that refuses.
        if give_up is None or quiet < give_up or runner.stop_reason:
            return
        if runner.refusals:
            runner.stop(
                f"gave up: the API refused everything for {format_duration(give_up)} "
                f"({describe_refusals(runner.refusals)})"
            )
        elif runner.in_flight:
            runner.stop(
                f"gave up: no answer settled a row for {format_duration(give_up)} "
                f"({runner.in_flight} requests waiting for an answer)"
            )
        elif runner.held:  # rows to send, none let through: a budget that allows nothing
            runner.stop(
                f"gave up: the pace allowed no request for {format_duration(give_up)} "
                "(the API's rate-limit headers left nothing to spend)"
            )

    async def watch_input(self) -> None:
        """An input that changes while rows are sent stops the run, also when every row
        was read before the change (a file of one chunk); the stat is off the event loop."""
        snapshot = self.job.plan.table.snapshot
        if snapshot is None or self.runner.stop_reason:
            return
        if await asyncio.to_thread(snapshot.changed):
            self.runner.stop(_input_changed(self.job))

    def flush_store(self) -> None:
        """The store's batch, when :meth:`Ledger.due`, in a worker thread.

        A task of its own, one at a time: the ticker never waits for a locked store, the
        run's end waits for it (so a batch still waiting for a lock is neither lost nor its
        error ignored), and a batch that failed goes back for the next try.
        """
        ledger = self.job.ledger
        now = time.monotonic()
        busy = self.committing is not None and not self.committing.done()
        if ledger.active and not busy and ledger.due(now - self.flushed):
            self.flushed = now
            self.committing = asyncio.create_task(self.commit(ledger.take()))

    async def commit(self, batch: list[tuple[str, str, str]]) -> None:
        """One batch; a store another process holds is tried again (next tick, the end)."""
        ledger = self.job.ledger
        try:
            await asyncio.to_thread(ledger.commit, batch)
        except (OSError, BulklinkError) as exc:
            ledger.restore(batch)  # the journal holds them meanwhile
            if not isinstance(exc, StoreLocked):
                self.disk_failed(_as_os_error(exc), ledger.path or Path("the state store"))


def _install_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> list[int]:
    if threading.current_thread() is not threading.main_thread():
        return []
    handled: list[int] = []
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, handler, sig)
        handled.append(sig)
    return handled


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


class _CutShort(KeyboardInterrupt):
    """Raised by a signal inside :meth:`Lifetime.cut_short` outside an event loop; not an
    ``Exception``, so no ``except Exception`` on the way turns it into a warning."""


class Lifetime:
    """bulklink's SIGINT, SIGTERM and SIGHUP handling for the whole run (the CLI's, in the
    main thread), in three phases.

    Before sending, SIGTERM and SIGHUP raise :class:`Interrupted` (their default action
    would end the process before any ``finally``: a spooled copy of standard input would
    stay beside the report); SIGINT raises already. While sending, the event loop's own
    handlers stop the run. After sending (:meth:`after_sending`) a signal is recorded,
    never fatal: the report, the store and the summary line are still written, and work
    that can be dropped (the notice, the metrics) runs :meth:`cut_short`.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.sending_done = False
        self.signum = 0  # the first signal after sending
        self._cutting = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Lifetime:
        # SIGINT's handler is kept too: the event loop, removing its own, leaves Python's
        # default in its place, not the caller's.
        previous = signal.getsignal(signal.SIGINT) if self.enabled else None
        if previous is not None:
            self._previous[signal.SIGINT] = previous
        self._install((signal.SIGTERM, signal.SIGHUP))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _install(self, signals: tuple[int, ...]) -> None:
        if self.enabled:
            for sig in signals:
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def after_sending(self) -> None:
        """The event loop is gone (its handlers with it): signals are recorded from now on."""
        self.sending_done = True
        self._install(STOP_SIGNALS)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.sending_done:
            raise Interrupted(f"interrupted by {name} before anything was sent", signum)
        self.signum = self.signum or signum
        if self._cutting:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # plain code (the metrics): leave it here and now
                raise _CutShort from None
            # An event loop (the notice): its tasks cancelled, so asyncio.run ends cleanly.
            loop.call_soon_threadsafe(_cancel_all, loop)

    def cut_short(self, work: Callable[[], object]) -> None:
        """Run ``work`` that a signal after sending drops: not at all once one has come
        (it is recorded in :attr:`signum`), and cut short when one comes meanwhile."""
        if self.signum:
            return
        self._cutting = True
        try:
            work()
        except (_CutShort, asyncio.CancelledError):
            pass
        finally:
            self._cutting = False

    def late(self, summary: Summary, what: str) -> Interrupted | None:
        """The error a signal after sending ends the run with (its exit code, 128 + signal)."""
        if not self.signum or summary.exit_code >= 128:
            return None
        name = signal.Signals(self.signum).name
        summary.exit_code = 128 + self.signum
        return Interrupted(f"interrupted by {name} after the sending: {what}", self.signum, summary)


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
