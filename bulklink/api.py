"""The library's front door for files: ``run_job``, ``retry_job``, ``dry_run``.

``link_pairs`` (pairs in, results out) lives in :mod:`bulklink.stream` and
``read_report`` in :mod:`bulklink.readback`; all are exported by :mod:`bulklink`.
The CLI is a thin layer over these. They take the CLI's options as keyword arguments
(snake_case), never call ``sys.exit`` and print nothing unless given a console; failures
are exceptions from :mod:`bulklink.errors`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bulklink.assembly import Layout
from bulklink.console import Console
from bulklink.credentials import preflight
from bulklink.errors import DiskError, InputError, UsageError
from bulklink.inputs import DUPLICATE, INVALID_REASONS, SEND, Plan, ReadOptions, Table, scan
from bulklink.job import Job, execute, resolve_report, signals_raise
from bulklink.lock import hold
from bulklink.models import Pair, Summary
from bulklink.options import (
    DEFAULT_BASE_URL,
    Connection,
    Control,
    JobArgs,
    Output,
    RunSettings,
    job_args,
)
from bulklink.readback import kept_rows, open_report


@dataclass(slots=True)
class DryRun:
    """What ``--dry-run`` found: per-outcome counts, invalid rows, requests it would send."""

    input: str
    rows: int
    counts: dict[str, int]
    invalid_rows: list[tuple[int, str]]
    sample_requests: list[Pair] = field(default_factory=list)
    url: str = ""


def _spool_stdin(spool: Path) -> Path:
    """Standard input saved to a file: read twice (validation, then the run), and a
    crashed run can be resumed by feeding the same content again (same hash)."""
    try:
        with spool.open("wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh)
        if spool.stat().st_size == 0:
            raise InputError("standard input is empty")
    except BaseException as exc:  # a signal, Ctrl-C, a full disk: no copy of the input left
        spool.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DiskError(exc, spool) from exc
        raise
    return spool


def run_job(
    input: str | Path,
    output: str | Path | None = None,
    *,
    source_col: str | None = None,
    linked_col: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    base_url: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    sandbox: bool = False,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    fresh: bool = False,
    handle_signals: bool = False,
    give_up_after: float | str | None = "10m",
    deadline: float | str | None = None,
    summary_json: str | Path | None = None,
    console: Console | None = None,
) -> Summary:
    """Link every pair in ``input`` and write the report; what ``bulklink run`` does.

    The keyword arguments are the CLI's options in snake_case (see
    :class:`~bulklink.options.JobArgs`); unset credentials and base URL come from the
    same ``THENA_*`` variables as in the CLI. ``give_up_after`` (default ``"10m"``) and
    ``deadline`` (default off) take seconds or ``"90s"``, ``"10m"``, ``"2h"``; ``0``,
    ``"off"`` or None turn them off.
    Resumes from the journal of an interrupted run on the same input and report, holds
    the report's lock, and raises :class:`~bulklink.errors.BulklinkError` subclasses
    (after writing the report when the run had started).
    """
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    stdin = str(input) == "-"
    if stdin and output is None:
        raise UsageError("reading from standard input ('-') needs -o/--output")
    report = resolve_report(None if stdin else Path(input), Path(output) if output else None)
    job = _Prepared.build(report, f"bulklink run {input}", console, job_args(locals()))
    with hold(report, job.command), signals_raise(handle_signals):
        spool = _spool_stdin(report.with_name(f".{report.name}.stdin.csv")) if stdin else None
        try:
            table = Table(spool or Path(input), read)
            return _execute(scan(table), Layout(passthrough=list(table.other_cols)), job)
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
    sandbox: bool = False,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    fresh: bool = False,
    handle_signals: bool = False,
    give_up_after: float | str | None = "10m",
    deadline: float | str | None = None,
    summary_json: str | Path | None = None,
    console: Console | None = None,
) -> Summary:
    """Resend a report's ``failed`` and ``skipped`` rows; rewrite it (or ``output``) in place."""
    source = Path(report)
    target = resolve_report(None, Path(output) if output is not None else source)
    job = _Prepared.build(target, f"bulklink retry {report}", console, job_args(locals()))
    with contextlib.ExitStack() as locks:
        # The report read is locked too: another run writing it, or another retry of it
        # (even to a different -o), would send the same rows twice.
        if source.resolve() != target.resolve():
            locks.enter_context(hold(source, job.command))
        locks.enter_context(hold(target, job.command))
        locks.enter_context(signals_raise(handle_signals))
        table, layout = open_report(source)
        return _execute(scan(table, keep=kept_rows), layout, job)


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(value, value)
    if len(value) != 1:
        raise UsageError("--delimiter must be one character (or 'tab')")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """A run's options turned into checked value objects, before the input is read."""

    connection: Connection
    settings: RunSettings
    control: Control
    output: Output
    console: Console
    command: str

    @classmethod
    def build(
        cls, report: Path, command: str, console: Console | None, options: JobArgs
    ) -> _Prepared:
        """The one place ``run`` and ``retry`` check their options."""
        console = console or Console.silent()
        connection = Connection.build(options)
        console.redact = connection.auth.redact
        return cls(
            connection=connection,
            settings=RunSettings.build(options),
            control=Control.build(options),
            output=Output.build(report, options),
            console=console,
            command=command,
        )


def _execute(plan: Plan, layout: Layout, prepared: _Prepared) -> Summary:
    settings, limit = prepared.settings, prepared.control.limit
    to_send = plan.to_send if limit is None else min(plan.to_send, limit)
    seconds = to_send / settings.rate if settings.rate > 0 else 0.0
    connection = prepared.connection
    warning = preflight(connection.auth, seconds) if not connection.sandbox else ""
    if warning:
        prepared.console.info(warning)
    job = Job(
        plan=plan,
        layout=layout,
        connection=connection,
        settings=settings,
        control=prepared.control,
        output=prepared.output,
        console=prepared.console,
        command=prepared.command,
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
    limit: int | None = None,
) -> DryRun:
    """Read and validate ``input`` and say what a run would send; touches nothing."""
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    if str(input) == "-":
        with tempfile.TemporaryDirectory() as tmp:
            spool = _spool_stdin(Path(tmp) / "stdin.csv")
            return _describe(scan(Table(spool, read)), "-", base_url, limit)
    return _describe(scan(Table(Path(input), read)), str(input), base_url, limit)


def _describe(plan: Plan, name: str, base_url: str | None, limit: int | None) -> DryRun:
    counts = {
        "send": plan.counts.get(SEND, 0),
        "invalid": sum(plan.counts.get(code, 0) for code in INVALID_REASONS),
        "duplicate": plan.counts.get(DUPLICATE, 0),
    }
    if limit is not None and counts["send"] > limit:
        counts["send"] = limit
        counts["not sent (--limit)"] = plan.counts.get(SEND, 0) - limit
    return DryRun(
        name,
        plan.rows,
        counts,
        plan.invalid_examples[:20],
        plan.send_examples,
        (base_url or os.environ.get("THENA_BASE_URL", "").strip() or DEFAULT_BASE_URL).rstrip("/"),
    )
