"""The library's front door: ``run_job``, ``retry_job``, ``link_pairs``, ``read_report``.

The CLI is a thin layer over these. They take the CLI's options as keyword arguments
(snake_case), never call ``sys.exit`` and print nothing unless given a console; failures
are exceptions from :mod:`bulklink.errors`.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bulklink.assembly import ErrorTally, Layout
from bulklink.client import DEFAULT_BASE_URL, Auth, Client
from bulklink.console import Console
from bulklink.credentials import preflight, resolve_auth
from bulklink.errors import CredentialsRejected, InputError, UsageError
from bulklink.inputs import DUPLICATE, INVALID_REASONS, SEND, Chunk, Plan, ReadOptions, Table, scan
from bulklink.job import Job, execute, resolve_report
from bulklink.lock import hold
from bulklink.models import (
    RESULT_COLUMNS,
    TICKET_COLUMNS,
    LinkResult,
    Outcome,
    Pair,
    Result,
    Summary,
)
from bulklink.report import report_format, unneutralize
from bulklink.runner import AUTO_CAP, CREDENTIALS_REJECTED, Runner, RunSettings


def _settings(
    rate: float, concurrency: int | str | None, max_retries: int, timeout: float, backoff: float
) -> RunSettings:
    if rate < 0:
        raise UsageError("--rate must be 0 (no limit) or more")
    if concurrency in (None, "auto"):
        workers = None
    else:
        try:
            workers = int(concurrency)
        except ValueError:
            raise UsageError("--concurrency must be a number or 'auto'") from None
        if not 1 <= workers <= 10_000:
            raise UsageError("--concurrency must be between 1 and 10000")
    if max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    if backoff < 0:
        raise UsageError("--backoff must be 0 or more seconds")
    return RunSettings(
        rate=rate, concurrency=workers, max_retries=max_retries, timeout=timeout, backoff=backoff
    )


@dataclass(slots=True)
class DryRun:
    """What ``--dry-run`` found: per-outcome counts, invalid rows, requests it would send."""

    input: str
    rows: int
    would_send: int
    counts: dict[str, int]
    invalid_rows: list[tuple[int, str]]
    sample_requests: list[Pair] = field(default_factory=list)
    url: str = ""


def _spool_stdin(report: Path) -> Path:
    """Standard input saved beside the report, so a crashed run can be resumed by content."""
    spool = report.with_name(f".{report.name}.stdin.csv")
    with spool.open("wb") as fh:
        shutil.copyfileobj(sys.stdin.buffer, fh)
    return spool


def run_job(
    input: str | Path,
    output: str | Path | None = None,
    *,
    base_url: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    source_col: str | None = None,
    linked_col: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    limit: int | None = None,
    fresh: bool = False,
    sandbox: bool = False,
    summary_json: str | Path | None = None,
    console: Console | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Link every pair in ``input`` and write the report; what ``bulklink run`` does.

    Resumes from the journal of an interrupted run on the same input and report, holds
    the report's lock, and raises :class:`~bulklink.errors.BulklinkError` subclasses
    (after writing the report when the run had started).
    """
    console = console or Console.silent()
    settings = _settings(rate, concurrency, max_retries, timeout, backoff)
    auth = resolve_auth(
        token=token,
        token_file=token_file,
        api_key=api_key,
        api_key_file=api_key_file,
        org_id=org_id,
        sandbox=sandbox,
    )
    console.redact = auth.redact
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    stdin = str(input) == "-"
    if stdin and output is None:
        raise UsageError("reading from standard input ('-') needs -o/--output")
    report = resolve_report(None if stdin else Path(input), Path(output) if output else None)
    common = _Common(
        report,
        auth,
        base_url,
        settings,
        console,
        limit,
        fresh,
        sandbox,
        summary_json,
        handle_signals,
        f"bulklink run {input}",
    )
    with hold(report, common.command):
        spool = _spool_stdin(report) if stdin else None
        try:
            table = Table(spool or Path(input), read)
            return _execute(scan(table), Layout(passthrough=list(table.other_cols)), common)
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)


def retry_job(
    report: str | Path,
    output: str | Path | None = None,
    *,
    base_url: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    fresh: bool = False,
    sandbox: bool = False,
    summary_json: str | Path | None = None,
    console: Console | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Resend a report's ``failed`` and ``skipped`` rows; rewrite it (or ``output``) in place."""
    console = console or Console.silent()
    settings = _settings(rate, concurrency, max_retries, timeout, backoff)
    auth = resolve_auth(
        token=token,
        token_file=token_file,
        api_key=api_key,
        api_key_file=api_key_file,
        org_id=org_id,
        sandbox=sandbox,
    )
    console.redact = auth.redact
    source = Path(report)
    target = resolve_report(None, Path(output) if output is not None else source)
    common = _Common(
        target,
        auth,
        base_url,
        settings,
        console,
        limit,
        fresh,
        sandbox,
        summary_json,
        handle_signals,
        f"bulklink retry {report}",
    )
    with hold(target, common.command):
        table, layout = open_report(source)
        return _execute(scan(table, keep=_kept), layout, common)


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(value, value)
    if len(value) != 1:
        raise UsageError("--delimiter must be one character (or 'tab')")
    return value


@dataclass(frozen=True, slots=True)
class _Common:
    """The options ``run`` and ``retry`` share, checked, before the input is read."""

    report: Path
    auth: Auth
    base_url: str | None
    settings: RunSettings
    console: Console
    limit: int | None
    fresh: bool
    sandbox: bool
    summary_json: str | Path | None
    handle_signals: bool
    command: str

    def __post_init__(self) -> None:
        report_format(self.report)
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        if not self.sandbox:
            Client(self.base_url or DEFAULT_BASE_URL, self.auth)  # checks the URL's shape


def _execute(plan: Plan, layout: Layout, common: _Common) -> Summary:
    settings, limit = common.settings, common.limit
    to_send = plan.to_send if limit is None else min(plan.to_send, limit)
    seconds = to_send / settings.rate if settings.rate > 0 else 0.0
    warning = preflight(common.auth, seconds) if not common.sandbox else ""
    if warning:
        common.console.info(warning)
    job = Job(
        plan=plan,
        layout=layout,
        report=common.report,
        auth=common.auth,
        base_url=common.base_url or DEFAULT_BASE_URL,
        settings=settings,
        console=common.console,
        command=common.command,
        fresh=common.fresh,
        limit=limit,
        sandbox=common.sandbox,
        handle_signals=common.handle_signals,
        summary_json=Path(common.summary_json) if common.summary_json else None,
    )
    return execute(job)


def dry_run(
    input: str | Path,
    *,
    base_url: str | None = None,
    source_col: str | None = None,
    linked_col: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> DryRun:
    """Read and validate ``input`` and say what a run would send; touches nothing."""
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    if str(input) == "-":
        with tempfile.TemporaryDirectory() as tmp:
            spool = Path(tmp) / "stdin.csv"
            spool.write_bytes(sys.stdin.buffer.read())
            return _describe(scan(Table(spool, read)), "-", base_url)
    return _describe(scan(Table(Path(input), read)), str(input), base_url)


def _describe(plan: Plan, name: str, base_url: str | None) -> DryRun:
    counts = {
        "send": plan.counts.get(SEND, 0),
        "invalid": sum(plan.counts.get(code, 0) for code in INVALID_REASONS),
        "duplicate": plan.counts.get(DUPLICATE, 0),
    }
    return DryRun(
        name,
        plan.rows,
        counts["send"],
        counts,
        plan.invalid_examples[:20],
        plan.send_examples,
        (base_url or DEFAULT_BASE_URL).rstrip("/"),
    )


# -- reports read back ---------------------------------------------------------------
REQUIRED = ("row", "sourceTicketId", "linkedTicketId", "success", "outcome", "attempts")


def open_report(path: Path) -> tuple[Table, Layout]:
    """A report written by ``run`` as a table, with its result columns told apart."""
    table = Table(path, ReadOptions("sourceTicketId", "linkedTicketId"), report=True)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{path} is not a bulklink report: no column {', '.join(missing)}")
    ours = set(RESULT_COLUMNS) | set(TICKET_COLUMNS)
    extra = [
        c.removeprefix("ticket.")
        for c in table.columns
        if c.startswith("ticket.") and c not in ours
    ]
    passthrough = [c for c in table.other_cols if c not in ours and not c.startswith("ticket.")]
    return table, Layout(passthrough=passthrough, extra_fields=extra, retry=True)


def _kept(chunk: Chunk) -> list[bool]:
    """Rows ``retry`` leaves alone: linked, invalid, and duplicates of a linked row."""
    outcomes = chunk.columns["outcome"]
    success = chunk.columns["success"]
    keep = []
    for outcome, ok in zip(outcomes, success, strict=True):
        outcome = str(outcome).strip()
        if outcome not in {o.value for o in Outcome}:
            raise InputError(f"unknown outcome {outcome!r} in the report")
        keep.append(
            outcome in ("linked", "invalid")
            or (outcome == "duplicate" and str(ok).strip().lower() == "true")
        )
    return keep


def read_report(report: str | Path) -> Summary:
    """Counts, failures by error and rows to retry, from a report in any format; no network."""
    path = Path(report)
    table, _ = open_report(path)
    summary = Summary(report=str(path))
    tally = ErrorTally()
    unsuccessful = 0
    for chunk in table.chunks():
        cols = chunk.columns
        for at, outcome in enumerate(cols["outcome"]):
            outcome = str(outcome).strip()
            if outcome not in summary.counts:
                raise InputError(
                    f"{path}: unknown outcome {outcome!r} in row {at + chunk.start + 1}"
                )
            summary.counts[outcome] += 1
            if str(cols["success"][at]).strip().lower() != "true":
                unsuccessful += 1
                if outcome != "duplicate":
                    error = cols["error"][at] if "error" in cols else ""
                    row = cols["row"][at]
                    tally.add(
                        int(row) if str(row).isdigit() else row,
                        unneutralize(str(error or "")),
                        chunk.source[at],
                        chunk.linked[at],
                    )
        summary.rows += len(chunk)
    summary.errors = tally.groups()
    summary.retryable_rows = summary.counts["failed"] + summary.counts["skipped"]
    summary.exit_code = 1 if unsuccessful else 0
    return summary


async def _each(
    pairs: Iterable[tuple[str, str]] | AsyncIterable[tuple[str, str]],
) -> AsyncIterator[tuple[str, str]]:
    if isinstance(pairs, AsyncIterable):
        async for pair in pairs:
            yield pair
    else:
        for pair in pairs:
            yield pair


async def link_pairs(
    pairs: Iterable[tuple[str, str]] | AsyncIterable[tuple[str, str]],
    *,
    base_url: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
) -> AsyncIterator[LinkResult]:
    """Link ``(source, linked)`` pairs in the caller's event loop, yielding each result.

    Results come in completion order, one per pair. A blank ID or a self-link is
    ``invalid`` and not sent. Rate limit, retries and the stop on 401/403 work as in
    ``run``: after a rejection the remaining pairs come out ``skipped`` and then
    :class:`~bulklink.errors.CredentialsRejected` is raised. No journal, report or lock:
    the caller owns the results.
    """
    settings = _settings(rate, concurrency, max_retries, timeout, backoff)
    auth = resolve_auth(
        token=token,
        token_file=token_file,
        api_key=api_key,
        api_key_file=api_key_file,
        org_id=org_id,
    )
    source = _each(pairs)
    ids: dict[int, tuple[str, str]] = {}
    done: asyncio.Queue[Result | None] = asyncio.Queue()
    counter = 0

    async def feed() -> AsyncIterator[list[Pair]]:
        nonlocal counter
        async for raw_source, raw_linked in source:
            counter += 1
            pair = Pair(counter, str(raw_source).strip(), str(raw_linked).strip())
            ids[counter] = (pair.source, pair.linked)
            if not pair.source or not pair.linked or pair.source == pair.linked:
                reason = (
                    "blank ticket ID"
                    if pair.source == "" or pair.linked == ""
                    else ("source and linked ticket are the same")
                )
                done.put_nowait(Result(counter, Outcome.INVALID, None, reason, 0))
                continue
            yield [pair]

    def as_link(result: Result) -> LinkResult:
        s, d = ids.pop(result.row)
        return LinkResult(
            s, d, result.outcome, result.http_status, result.error, result.attempts, result.ticket
        )

    async with Client(
        base_url or DEFAULT_BASE_URL,
        auth,
        timeout=settings.timeout,
        max_connections=settings.concurrency or AUTO_CAP,
    ) as client:
        runner = Runner(client, settings, done.put_nowait)
        task = asyncio.create_task(runner.run(feed()))
        task.add_done_callback(lambda _: done.put_nowait(None))
        try:
            while (result := await done.get()) is not None:
                yield as_link(result)
            await task
            while not done.empty():  # invalid pairs queued after the runner finished
                item = done.get_nowait()
                if item is not None:
                    yield as_link(item)
        finally:
            if not task.done():
                runner.stop("the caller stopped reading results")
                await task
    if runner.stop_reason == CREDENTIALS_REJECTED:
        async for raw_source, raw_linked in source:
            yield LinkResult(
                str(raw_source).strip(),
                str(raw_linked).strip(),
                Outcome.SKIPPED,
                None,
                f"not attempted: {CREDENTIALS_REJECTED}",
                0,
                None,
            )
        raise CredentialsRejected("the API rejected the credentials (HTTP 401/403)")
