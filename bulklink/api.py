"""The library's front door for files: ``run_job``, ``retry_job``, ``dry_run``.

``link_pairs`` (pairs in, results out) lives in :mod:`bulklink.stream` and
``read_report`` in :mod:`bulklink.tables.report.reader`; all are exported by :mod:`bulklink`.
The CLI is a thin layer over these. They take the CLI's options as keyword arguments
(snake_case), never call ``sys.exit`` and print nothing unless given a console; failures
are exceptions from :mod:`bulklink.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bulklink._fs import create_temp
from bulklink.console import Console
from bulklink.errors import BulklinkError, DiskError, InputError, LockedError, UsageError
from bulklink.models import Pair, Summary
from bulklink.net.credentials import preflight, resolve_auth
from bulklink.options import (
    Connection,
    Control,
    JobArgs,
    Output,
    RunSettings,
    StateOptions,
    job_args,
)
from bulklink.redaction import Redactor
from bulklink.run.job import Job, execute, recover_links, resolve_report, signals_raise
from bulklink.run.publish import publish
from bulklink.state.ledger import Ledger
from bulklink.state.lock import hold
from bulklink.state.scope import Scope
from bulklink.state.store import RunRecord, Store
from bulklink.tables.inputs import (
    ALREADY,
    DUPLICATE,
    INVALID_REASONS,
    SEND,
    Plan,
    ReadOptions,
    Table,
    scan,
)
from bulklink.tables.report.reader import kept_rows, open_report
from bulklink.tables.report.schema import Layout
from bulklink.text import utc_stamp
from bulklink.urls import DEFAULT_BASE_URL


@dataclass(slots=True)
class DryRun:
    """What ``--dry-run`` found: per-outcome counts, invalid rows, requests it would send."""

    input: str
    rows: int
    counts: dict[str, int]
    invalid_rows: list[tuple[int, str]]
    sample_requests: list[Pair] = field(default_factory=list)
    url: str = ""


def _spool_stdin(beside: Path) -> Path:
    """Standard input saved to a new file beside ``beside``: read twice (validation, then
    the run), and a crashed run can be resumed by feeding the same content again (same
    hash). The name is unpredictable and created with ``O_EXCL``, so never a planted link.
    A signal, Ctrl-C or a full disk leaves no copy of the input behind."""
    fd, spool = create_temp(beside, "stdin.csv", 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh)
            empty = fh.tell() == 0
    except BaseException as exc:
        spool.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DiskError(exc, spool) from exc
        raise
    if empty:
        spool.unlink()
        raise InputError("standard input is empty")
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
    allow_http: bool = False,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    fresh: bool = False,
    handle_signals: bool = False,
    state: str | Path | None = None,
    no_state: bool = False,
    relink: bool = False,
    give_up_after: float | str | None = "10m",
    deadline: float | str | None = None,
    summary_json: str | Path | None = None,
    metrics_file: str | Path | None = None,
    notify: str | None = None,
    notify_on: str = "problems",
    job: str | None = None,
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
    prepared = _Prepared.build(report, f"bulklink run {input}", console, job_args(locals()))

    def work(ledger: Ledger) -> Summary:
        spool = _spool_stdin(report) if stdin else None
        try:
            table = Table(spool or Path(input), read)
            recover_links(report, prepared.connection, ledger)
            plan = scan(table, linked_times=ledger.lookup)
            layout = Layout(passthrough=list(table.other_cols))
            return _execute(plan, layout, prepared, ledger, "run", str(input))
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)

    return _published(prepared, [report], work)


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
    allow_http: bool = False,
    rate: float = 10.0,
    concurrency: int | str | None = "auto",
    max_retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    fresh: bool = False,
    handle_signals: bool = False,
    state: str | Path | None = None,
    no_state: bool = False,
    relink: bool = False,
    give_up_after: float | str | None = "10m",
    deadline: float | str | None = None,
    summary_json: str | Path | None = None,
    metrics_file: str | Path | None = None,
    notify: str | None = None,
    notify_on: str = "problems",
    job: str | None = None,
    console: Console | None = None,
) -> Summary:
    """Resend a report's ``failed`` and ``skipped`` rows; rewrite it (or ``output``) in place."""
    source = Path(report)
    target = resolve_report(None, Path(output) if output is not None else source)
    prepared = _Prepared.build(target, f"bulklink retry {report}", console, job_args(locals()))

    def work(ledger: Ledger) -> Summary:
        table, layout = open_report(source)
        recover_links(target, prepared.connection, ledger)
        plan = scan(table, keep=kept_rows, linked_times=ledger.lookup)
        return _execute(plan, layout, prepared, ledger, "retry", str(report))

    # The report read is locked too: another run writing it, or another retry of it
    # (even to a different -o), would send the same rows twice.
    same = source.resolve() == target.resolve()
    return _published(prepared, [target] if same else [source, target], work)


def _published(
    prepared: _Prepared, locks: list[Path], work: Callable[[Ledger], Summary]
) -> Summary:
    """Run ``work`` holding the report locks and the state store, then publish its end.

    The summary JSON, metrics and notice go out however the run ended, including input
    errors (a bad nightly export needs a human). A run refused because another holds the
    report publishes only a notice: the run at work owns the files and the history.
    """
    output, console = prepared.output, prepared.console
    summary: Summary | None = None
    refused = False  # it never started: the job wrote no summary JSON
    with contextlib.ExitStack() as stack:
        try:
            for path in locks:
                stack.enter_context(hold(path, prepared.command))
        except LockedError as exc:
            _publish_refusal(prepared, exc)
            raise
        stack.enter_context(signals_raise(prepared.control.handle_signals))
        try:
            ledger = Ledger.open(prepared.state, prepared.connection)
        except BulklinkError as exc:  # a store that cannot be used: as bad input is
            _publish_refusal(prepared, exc, files=True)
            raise
        stack.callback(ledger.close)
        previous = ledger.previous_run(output.report)
        try:
            summary = work(ledger)
            return summary
        except BulklinkError as exc:
            summary = getattr(exc, "summary", None)
            if summary is None:  # it never started: record and publish the refusal
                summary, refused = _refused(output.report, exc), True
                ledger.record_refusal(
                    prepared.command.split()[1],
                    report=output.report,
                    job=output.job,
                    summary=summary,
                    command_line=prepared.command_line,
                )
            raise
        finally:
            if summary is not None:
                publish(
                    output,
                    summary,
                    console,
                    previous_exit_code=previous.exit_code if previous else None,
                    last_success=ledger.last_success(output.job),
                    redact=prepared.console.redact,
                    allow_http=prepared.connection.allow_http,
                    summary_json=refused,
                )


def _refused(report: Path, exc: BulklinkError) -> Summary:
    now = utc_stamp()
    return Summary(
        report=str(report), started=now, finished=now, exit_code=exc.exit_code, stopped=str(exc)
    )


def _publish_refusal(prepared: _Prepared, exc: BulklinkError, *, files: bool = False) -> None:
    """A run refused before it could use the store. Another run holding the report: a
    notice only (a night overran; the files are the other run's). A store that cannot be
    used (``files``): the notice, the metrics and the summary JSON, as for bad input."""
    output = prepared.output
    if not files:
        if output.notify_url is None:
            return
        output = dataclasses.replace(output, summary_json=None, metrics_file=None)
    publish(
        output,
        _refused(prepared.output.report, exc),
        prepared.console,
        previous_exit_code=None,
        last_success=None,
        redact=prepared.console.redact,
        allow_http=prepared.connection.allow_http,
        summary_json=files,
    )


#: Options whose value is a secret: the run history keeps the option, not the value.
_SECRET_OPTIONS = ("--token", "--api-key", "--notify")


def command_line(default: str) -> str:
    """The command as typed when bulklink is the program (else ``default``), secrets out."""
    argv = sys.argv
    program = Path(argv[0]) if argv else Path()
    # ``python -m bulklink`` runs bulklink/__main__.py; another module's __main__ (pytest,
    # a user's script calling run_job) has a command line that is not bulklink's.
    ours = program.name == "bulklink" or program.parts[-2:] == ("bulklink", "__main__.py")
    if not ours:
        return default
    words: list[str] = ["bulklink"]
    hide = False
    for word in argv[1:]:
        name = word.split("=", 1)[0]
        if hide:
            words.append("***")
        elif name in _SECRET_OPTIONS and "=" in word:
            words.append(f"{name}=***")
        else:
            words.append(word)
        hide = not hide and word in _SECRET_OPTIONS
    return shlex.join(words)


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
    state: StateOptions
    output: Output
    console: Console
    command: str
    command_line: str  # for the run history: credentials and the webhook removed

    @classmethod
    def build(
        cls, report: Path, command: str, console: Console | None, options: JobArgs
    ) -> _Prepared:
        """The one place ``run`` and ``retry`` check their options."""
        console = console or Console.silent()
        connection = Connection.build(options)
        output = Output.build(report, options, allow_http=connection.allow_http)
        # The webhook URL is a secret too: aiohttp's messages may quote it.
        console.redact = connection.auth.redact | Redactor(urls=[output.notify_url])
        for warning in connection.auth.warnings:  # shown even with -q, as ssh does
            console.error(warning)
        return cls(
            connection=connection,
            settings=RunSettings.build(options),
            control=Control.build(options),
            state=StateOptions.build(options, sandbox=connection.sandbox),
            output=output,
            console=console,
            command=command,
            command_line=connection.auth.redact(command_line(command)),
        )


def _execute(
    plan: Plan, layout: Layout, prepared: _Prepared, ledger: Ledger, kind: str, input_name: str
) -> Summary:
    settings, limit = prepared.settings, prepared.control.limit
    to_send = plan.to_send if limit is None else min(plan.to_send, limit)
    seconds = to_send / settings.rate if settings.rate > 0 else 0.0
    connection = prepared.connection
    warning = preflight(connection.auth, seconds) if not connection.sandbox else ""
    if warning:
        prepared.console.info(warning)
    already = plan.counts.get(ALREADY, 0)
    if already:
        prepared.console.info(
            f"{already} pairs are already linked (state store {ledger.path}): not sending them"
        )
    ledger.begin(
        kind,
        report=prepared.output.report,
        input=None if input_name == "-" else input_name,
        input_hash=plan.table.digest or None,
        job=prepared.output.job,
        command_line=prepared.command_line,
    )
    job = Job(
        plan=plan,
        layout=layout,
        connection=connection,
        settings=settings,
        control=prepared.control,
        output=prepared.output,
        console=prepared.console,
        command=prepared.command,
        ledger=ledger,
        input_name=input_name,
    )
    return execute(job)


def list_runs(state: str | Path | None = None, limit: int | None = 20) -> list[RunRecord]:
    """Recent runs from the state store, newest first; an empty list when there is none."""
    path = StateOptions.build({"state": state}, sandbox=False).path
    assert path is not None  # no --no-state here
    store = Store.open_existing(path)
    if store is None:
        return []
    with store:
        return store.runs(limit)


def dry_run(
    input: str | Path,
    *,
    base_url: str | None = None,
    org_id: str | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    sandbox: bool = False,
    state: str | Path | None = None,
    no_state: bool = False,
    relink: bool = False,
    source_col: str | None = None,
    linked_col: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    limit: int | None = None,
) -> DryRun:
    """Read and validate ``input`` and say what a run would send; sends and writes nothing.

    With a state store (as a run would use it), pairs it holds as linked in the run's
    scope are counted as ``already linked``; the store is only read, never created.
    """
    read = ReadOptions(source_col, linked_col, sheet, encoding, _delimiter(delimiter))
    options = StateOptions.build(
        {"state": state, "no_state": no_state, "relink": relink}, sandbox=sandbox
    )
    url = base_url or os.environ.get("THENA_BASE_URL", "").strip() or DEFAULT_BASE_URL
    org = org_id or os.environ.get("THENA_ORG_ID", "").strip()
    with contextlib.ExitStack() as stack:
        store = Store.open_existing(options.path) if options.path is not None else None
        if store is not None:
            stack.enter_context(store)
        key = _scope_key(api_key, api_key_file) if not (org or sandbox) else None
        scope = Scope.build(url, org, sandbox=sandbox, api_key=key)
        ledger = Ledger(store, scope, relink=options.relink)
        if str(input) == "-":
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            path, name = _spool_stdin(Path(tmp) / "stdin"), "-"
        else:
            path, name = Path(input), str(input)
        plan = scan(Table(path, read), linked_times=ledger.lookup)
        return _describe(plan, name, "<sandbox>" if sandbox else url, limit)


def _scope_key(api_key: str | None, api_key_file: str | Path | None) -> str | None:
    """The API key a run would send: without an org ID it scopes the store. A dry run
    needs no credentials, so none (or a token) is no error here."""
    try:
        return resolve_auth(api_key=api_key, api_key_file=api_key_file).api_key
    except UsageError:
        return None


def _describe(plan: Plan, name: str, url: str, limit: int | None) -> DryRun:
    counts = {
        "send": plan.counts.get(SEND, 0),
        "invalid": sum(plan.counts.get(code, 0) for code in INVALID_REASONS),
        "duplicate": plan.counts.get(DUPLICATE, 0),
        "already linked": plan.counts.get(ALREADY, 0),
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
        url.rstrip("/"),
    )
