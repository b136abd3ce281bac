"""The library's front door for files: ``run_job``, ``retry_job``, ``dry_run``.

``link_pairs`` (pairs in, results out) lives in :mod:`bulklink.stream` and
``read_report`` in :mod:`bulklink.readback`; all are exported by :mod:`bulklink`.
The CLI is a thin layer over these. They take the CLI's options as keyword arguments
(snake_case), never call ``sys.exit`` and print nothing unless given a console; failures
are exceptions from :mod:`bulklink.errors`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bulklink.assembly import Layout
from bulklink.client import DEFAULT_BASE_URL, Client
from bulklink.console import Console
from bulklink.credentials import Auth, preflight, resolve_auth
from bulklink.errors import InputError, UsageError
from bulklink.inputs import DUPLICATE, INVALID_REASONS, SEND, Plan, ReadOptions, Table, scan
from bulklink.job import Job, execute, resolve_report
from bulklink.lock import hold
from bulklink.models import Pair, Summary
from bulklink.readback import kept_rows, open_report
from bulklink.report import report_format
from bulklink.runner import RunSettings, settings_from


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
    with spool.open("wb") as fh:
        shutil.copyfileobj(sys.stdin.buffer, fh)
    if spool.stat().st_size == 0:
        spool.unlink()
        raise InputError("standard input is empty")
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
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    stdin = str(input) == "-"
    if stdin and output is None:
        raise UsageError("reading from standard input ('-') needs -o/--output")
    report = resolve_report(None if stdin else Path(input), Path(output) if output else None)
    common = _Common.build(
        report, f"bulklink run {input}", console, base_url, token, token_file, api_key,
        api_key_file, org_id, rate, concurrency, max_retries, timeout, backoff, limit, fresh,
        sandbox, summary_json, handle_signals,
    )  # fmt: skip
    with hold(report, common.command):
        spool = _spool_stdin(report.with_name(f".{report.name}.stdin.csv")) if stdin else None
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
    source = Path(report)
    target = resolve_report(None, Path(output) if output is not None else source)
    common = _Common.build(
        target, f"bulklink retry {report}", console, base_url, token, token_file, api_key,
        api_key_file, org_id, rate, concurrency, max_retries, timeout, backoff, limit, fresh,
        sandbox, summary_json, handle_signals,
    )  # fmt: skip
    with contextlib.ExitStack() as locks:
        # The report read is locked too: another run writing it, or another retry of it
        # (even to a different -o), would send the same rows twice.
        if source.resolve() != target.resolve():
            locks.enter_context(hold(source, common.command))
        locks.enter_context(hold(target, common.command))
        table, layout = open_report(source)
        return _execute(scan(table, keep=kept_rows), layout, common)


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

    @classmethod
    def build(
        cls,
        report: Path,
        command: str,
        console: Console | None,
        base_url: str | None,
        token: str | None,
        token_file: str | Path | None,
        api_key: str | None,
        api_key_file: str | Path | None,
        org_id: str | None,
        rate: float,
        concurrency: int | str | None,
        max_retries: int,
        timeout: float,
        backoff: float,
        limit: int | None,
        fresh: bool,
        sandbox: bool,
        summary_json: str | Path | None,
        handle_signals: bool,
    ) -> _Common:
        """The one place ``run`` and ``retry`` turn their options into checked objects."""
        console = console or Console.silent()
        settings = settings_from(rate, concurrency, max_retries, timeout, backoff)
        auth = resolve_auth(
            token=token,
            token_file=token_file,
            api_key=api_key,
            api_key_file=api_key_file,
            org_id=org_id,
            sandbox=sandbox,
        )
        console.redact = auth.redact
        return cls(report, auth, base_url, settings, console, limit, fresh, sandbox,
                   summary_json, handle_signals, command)  # fmt: skip

    def __post_init__(self) -> None:
        report_format(self.report)
        if self.summary_json is not None and not Path(self.summary_json).parent.is_dir():
            raise UsageError(f"--summary-json: no such folder {Path(self.summary_json).parent}")
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
        (base_url or DEFAULT_BASE_URL).rstrip("/"),
    )
