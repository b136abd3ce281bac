"""The library's front door for files: ``run_job``, ``retry_job``, ``dry_run``.

``link_pairs`` (pairs in, results out) lives in :mod:`bulklink.stream` and
``read_report`` in :mod:`bulklink.tables.report.reader`; all are exported by :mod:`bulklink`.
The CLI is a thin layer over these. They take the CLI's options as keyword arguments
(snake_case: the fields of :mod:`bulklink.options`' classes), never call ``sys.exit``
and print nothing unless given a console; failures are exceptions from
:mod:`bulklink.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulklink.console import Console
from bulklink.errors import BulklinkError, LockedError, SameFileError, UsageError
from bulklink.models import Pair, Summary
from bulklink.net.connection import Connection, chosen_base_url, connect, describe_network
from bulklink.net.credentials import chosen_org_id, preflight, resolve_auth
from bulklink.net.proxy import resolve_proxies
from bulklink.net.tls import resolve_trust
from bulklink.options import (
    ConnectionOptions,
    JobOptions,
    RetryOptions,
    RunsOptions,
    Where,
    file_entry,
)
from bulklink.redaction import Redactor
from bulklink.run.job import (
    Job,
    Lifetime,
    execute,
    recover_links,
    resolve_report,
    scope_of,
)
from bulklink.run.pacing import auto_rate_plan
from bulklink.run.publish import (
    Output,
    output_for,
    publish,
    publish_refusal,
    refuse_unusable_files,
    run_files,
    write_records,
)
from bulklink.state.journal import journal_path, resumable_rows
from bulklink.state.ledger import Ledger
from bulklink.state.lock import hold, hold_input, hold_read
from bulklink.state.scope import Scope
from bulklink.state.store import RunRecord, Store, store_path
from bulklink.stream import endpoint
from bulklink.tables.inputs import (
    ALREADY,
    DUPLICATE,
    INVALID_REASONS,
    SEND,
    Plan,
    Snapshot,
    Table,
    scan,
)
from bulklink.tables.report.reader import carried_columns, kept_rows, open_report
from bulklink.tables.report.schema import Layout
from bulklink.tables.report.xlsx import refuse_beyond_limits


@dataclass(slots=True)
class DryRun:
    """What ``--dry-run`` found: per-outcome counts, invalid rows, requests it would send."""

    input: str
    rows: int
    counts: dict[str, int]
    invalid_rows: list[tuple[int, str]]
    sample_requests: list[Pair] = field(default_factory=list)
    url: str = ""
    network: str = ""  # which proxy (host only) and CA certificates a run would use
    pace: str = ""  # with --rate auto, how the run will pace itself (it learns the rest)


def notify_refused_command(
    command: str, first: Where, output: Where | None, given: Mapping[str, Any], exc: UsageError
) -> None:
    """A command refused before its options existed (click's checks, a value the options
    refuse, a report folder that is missing): published as every refusal is, from what
    the command says of its outputs, store and webhook, so a typo in a crontab does not
    silence the job."""
    keys = (
        *("notify", "notify_on", "job", "summary_json", "metrics_file", "state", "no_state"),
        *("base_url", "token", "token_file", "api_key", "api_key_file", "org_id", "sandbox"),
        *("allow_http", "proxy", "no_proxy", "ca_bundle", "console"),
    )
    try:
        options = RetryOptions(**{k: given[k] for k in keys if given.get(k) is not None})
    except (BulklinkError, TypeError, ValueError):
        return  # the outputs, the store or the webhook are what was refused
    report = Path(output) if output else Path(first)  # retry's, and a refused -o
    if command == "run" and not output:
        with contextlib.suppress(BulklinkError):  # the run's default report's name
            report = resolve_report(None if str(first) == "-" else Path(first), None)
    read = str(first) != "-" and (command == "run" or output is not None)
    words = f"bulklink {command} {os.fsdecode(first)}"
    _publish_refusal(exc, report, options, words, Path(first) if read else None)


def _publish_refusal(
    exc: BulklinkError, report: Path, options: RetryOptions, command: str, input: Path | None
) -> None:
    """A run refused before it could connect: where it would have linked, as far as its
    options say, for the history."""
    secrets = Redactor([options.token, options.api_key])
    try:
        scope = scope_of(connect(options))
    except BulklinkError:
        url = chosen_base_url(options).rstrip("/")
        try:
            org = chosen_org_id(options)
        except BulklinkError:  # an org ID no header can hold: what was refused, maybe
            org = None
        scope = Scope.build(url, org, sandbox=options.sandbox)
    publish_refusal(
        exc,
        report,
        options,
        command=command,
        command_line=secrets(command_line(command)),
        scope=scope,
        input=input,
        secrets=secrets,
    )


@file_entry(JobOptions, refused=functools.partial(notify_refused_command, "run"))
def run_job(input: str | Path, output: str | Path | None, options: JobOptions) -> Summary:
    """Link every pair in ``input`` and write the report; what ``bulklink run`` does.

    The keyword arguments are the CLI's options in snake_case; unset credentials and
    base URL come from the same ``THENA_*`` variables as in the CLI. Resumes from the
    journal of an interrupted run on the same input and report, holds the report's lock,
    and raises :class:`~bulklink.errors.BulklinkError` subclasses (after writing the
    report when the run had started).
    """
    stdin = str(input) == "-"
    if stdin and output is None:
        raise UsageError("reading from standard input ('-') needs -o/--output")
    try:
        report = resolve_report(None if stdin else Path(input), Path(output) if output else None)
    except UsageError as exc:
        fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        notify_refused_command("run", input, output, fields, exc)
        raise
    given = None if stdin else Path(input)
    prepared = _prepare(report, f"bulklink run {os.fsdecode(input)}", options, given)

    def work(ledger: Ledger) -> Summary:
        with Snapshot(input, beside=report) as snapshot:
            table = Table(snapshot, options)
            recover_links(report, prepared.connection, ledger)
            plan = scan(table, linked_times=ledger.lookup)
            layout = Layout(passthrough=list(table.other_cols))
            return _execute(plan, layout, prepared, ledger, "run", os.fsdecode(input))

    return _published(prepared, [report], work, input=None if stdin else Path(input))


@file_entry(RetryOptions, refused=functools.partial(notify_refused_command, "retry"))
def retry_job(report: str | Path, output: str | Path | None, options: RetryOptions) -> Summary:
    """Resend a report's ``failed`` and ``skipped`` rows; rewrite it (or ``output``) in place.

    The options are :func:`run_job`'s but the input ones.
    """
    source = Path(report)
    target = resolve_report(None, Path(output) if output is not None else source)
    same = source.resolve() == target.resolve()
    command = f"bulklink retry {os.fsdecode(report)}"
    prepared = _prepare(target, command, options, None if same else source)

    def work(ledger: Ledger) -> Summary:
        with Snapshot(source, beside=target) as snapshot:
            table, layout = open_report(snapshot)
            recover_links(target, prepared.connection, ledger)
            plan = scan(table, keep=kept_rows, linked_times=ledger.lookup)
            layout.passthrough = carried_columns(table)
            return _execute(plan, layout, prepared, ledger, "retry", os.fsdecode(report))

    # The report read is locked too: another run writing it, or another retry of it
    # (even to a different -o), would send the same rows twice.
    return _published(prepared, [target], work, read=None if same else source)


def _published(
    prepared: _Prepared,
    locks: list[Path],
    work: Callable[[Ledger], Summary],
    *,
    input: Path | None = None,
    read: Path | None = None,
) -> Summary:
    """Run ``work`` holding the report locks and the state store, then publish its end;
    ``read`` is a report only read (``retry`` to another ``-o``), held too.

    The summary JSON, metrics and notice go out however the run ended, including input
    errors (a bad nightly export needs a human). A run refused because another holds the
    report publishes only a notice: the run at work owns the files and the history.
    """
    output, console = prepared.output, prepared.console
    summary: Summary | None = None
    refusal: BulklinkError | None = None  # it never started: the job published nothing
    with contextlib.ExitStack() as stack:
        try:
            for path in locks:
                stack.enter_context(hold(path, prepared.command))
            if read is not None:
                stack.enter_context(hold_read(read, prepared.command))
            if input is not None:  # another report's run on it would send it all again
                stack.enter_context(hold_input(input))
        except LockedError as exc:  # a notice only: the files are the other run's
            _refused_run(prepared, exc)
            raise
        lifetime = stack.enter_context(prepared.lifetime)
        try:
            ledger = Ledger.open(
                prepared.store_path,
                scope_of(prepared.connection),
                relink=prepared.options.relink,
            )
        except BulklinkError as exc:  # a store that cannot be used: as bad input is
            _refused_run(prepared, exc, store=False)
            raise
        stack.callback(ledger.close)
        previous = ledger.previous_run(output.report)
        try:
            summary = work(ledger)
        except BulklinkError as exc:
            summary = getattr(exc, "summary", None)
            refusal = exc if summary is None else None
            raise
        finally:
            if refusal is not None:
                failed = refusal
                lifetime.cut_short(lambda: _refused_run(prepared, failed, ledger=ledger))
            elif summary is not None:
                ended = summary
                lifetime.cut_short(
                    lambda: publish(
                        output,
                        ended,
                        console,
                        previous_exit_code=previous.exit_code if previous else None,
                        last_success=ledger.last_success(output.job),
                        redact=prepared.console.redact,
                        connection=prepared.connection,
                    )
                )
        late = lifetime.late(summary, "the report and the state store are written; "
                             "the notice and the metrics may not be")  # fmt: skip
        if late is not None:
            _amend(prepared, ledger, summary)
            raise late
        return summary


def _amend(prepared: _Prepared, ledger: Ledger, summary: Summary) -> None:
    """A signal during the notice or the metrics changed the run's exit code after the
    history and the summary JSON were written: all of them say the process's code."""
    try:
        ledger.finish(summary.counts, summary.exit_code)
        last_success = ledger.last_success(prepared.output.job)
    except (OSError, BulklinkError) as exc:
        prepared.console.error(f"warning: cannot record the run's exit code: {exc}")
        last_success = None
    write_records(
        prepared.output, summary, prepared.console, last_success=last_success, summary_json=True
    )


def _refused_run(
    prepared: _Prepared, exc: BulklinkError, *, ledger: Ledger | None = None, store: bool = True
) -> None:
    """A run refused once its options were resolved: another run holds the report, the
    store cannot be used (``store`` False) or the input is bad (with the run's ``ledger``)."""
    publish_refusal(
        exc,
        prepared.output.report,
        prepared.options,
        command=prepared.command,
        command_line=prepared.command_line,
        scope=scope_of(prepared.connection),
        input=prepared.input,
        secrets=prepared.console.redact,
        ledger=ledger,
        store=store,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """A run's options and what they resolve to, checked before the input is read."""

    options: RetryOptions
    connection: Connection
    store_path: Path | None
    output: Output
    console: Console
    command: str
    command_line: str  # for the run history: credentials and the webhook removed
    lifetime: Lifetime  # the signal handling, for the whole run
    input: Path | None  # the file read, when it is not the report


def _prepare(report: Path, command: str, options: RetryOptions, input: Path | None) -> _Prepared:
    """The one place ``run`` and ``retry`` resolve their options; no two of the files a
    run reads and writes may be one file (checked before anything is written). A refusal
    here is published as every refusal is."""
    console = options.console or Console.silent()
    try:
        connection = connect(options)
        output = output_for(report, options, allow_http=connection.allow_http)
        store = store_path(options, sandbox=connection.sandbox)
        refuse_unusable_files(
            run_files(
                input, report, output.summary_json, output.metrics_file, console.log_path, store
            )
        )
    except BulklinkError as exc:
        if isinstance(exc, SameFileError) and "--log-file" in exc.roles:
            console.forget_log()  # not a word more into the file it would destroy
        _publish_refusal(exc, report, options, command, input)
        raise
    # The webhook URL is a secret too: aiohttp's messages may quote it.
    console.redact = connection.redact | Redactor(urls=[output.notify_url])
    for warning in connection.auth.warnings:  # shown even with -q, as ssh does
        console.error(warning)
    console.trace(connection.describe(output.notify_url))  # the log's, not stderr's
    return _Prepared(
        options=options,
        connection=connection,
        store_path=store,
        output=output,
        console=console,
        command=command,
        command_line=console.redact(command_line(command)),
        lifetime=Lifetime(options.handle_signals),
        input=input,
    )


def _execute(
    plan: Plan, layout: Layout, prepared: _Prepared, ledger: Ledger, kind: str, input_name: str
) -> Summary:
    options = prepared.options
    refuse_beyond_limits(prepared.output.report, plan.rows, plan.longest)
    limit = options.limit
    to_send = plan.to_send if limit is None else min(plan.to_send, limit)
    seconds = to_send / options.ceiling if options.ceiling > 0 else 0.0
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
        options=options,
        connection=connection,
        endpoint=lambda: endpoint(connection),
        output=prepared.output,
        console=prepared.console,
        command=prepared.command,
        ledger=ledger,
        input_name=input_name,
        lifetime=prepared.lifetime,
    )
    return execute(job)


def list_runs(state: str | Path | None = None, limit: int | None = 20) -> list[RunRecord]:
    """Recent runs from the state store, newest first; an empty list when there is none."""
    options = RunsOptions(state=state, limit=limit)
    path = store_path(options, sandbox=False)
    assert path is not None  # no --no-state here
    store = Store.open_existing(path)
    if store is None:
        return []
    with store:
        return store.runs(options.limit)


@file_entry(JobOptions)
def dry_run(input: str | Path, output: str | Path | None, options: JobOptions) -> DryRun:
    """Read and validate ``input`` and say what a run would send; sends and writes nothing.

    It takes :func:`run_job`'s arguments, so the same ones can be tried first; it uses
    the read, state and scope options, ``limit`` and ``fresh``. With a state store (as a
    run would use it), pairs it holds as linked in the run's scope are counted as
    ``already linked``; the store is only read, never created. Rows the journal beside
    the report (``output``'s, else the input's default) holds, which the run would
    resume, are counted as ``done earlier`` and not listed.
    """
    sandbox = options.sandbox
    path = store_path(options, sandbox=sandbox)
    url = chosen_base_url(options)
    org = chosen_org_id(options)
    network = describe_network(
        resolve_proxies(options), resolve_trust(options), url, sandbox=sandbox
    )
    with contextlib.ExitStack() as stack:
        store = Store.open_existing(path) if path is not None else None
        if store is not None:
            stack.enter_context(store)
        key = _scope_key(options) if not (org or sandbox) else None
        scope = Scope.build(url, org, sandbox=sandbox, api_key=key)
        ledger = Ledger(store, scope, relink=options.relink)
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        snapshot = stack.enter_context(Snapshot(input, beside=Path(tmp) / "input"))
        plan = scan(Table(snapshot, options), linked_times=ledger.lookup)
        name = "-" if str(input) == "-" else os.fsdecode(input)
        done = None if options.fresh else _resumable(input, output, plan, scope)
        found = _describe(plan, name, "<sandbox>" if sandbox else url, options.limit, done)
        pace = auto_rate_plan(options) if options.auto_rate else ""
        return dataclasses.replace(found, network=network, pace=pace)


def _scope_key(options: ConnectionOptions) -> str | None:
    """The API key a run would send: without an org ID it scopes the store. A dry run
    needs no credentials, so none (or a token) is no error here."""
    key_only = dataclasses.replace(options, token=None, token_file=None, sandbox=False)
    try:
        return resolve_auth(key_only).api_key
    except UsageError:
        return None


def _resumable(input: str | Path, output: str | Path | None, plan: Plan, scope: Scope) -> Any:
    """The journal's rows a run would resume (see :func:`resumable_rows`), or None."""
    try:
        stdin = str(input) == "-"
        report = resolve_report(None if stdin else Path(input), Path(output) if output else None)
        return resumable_rows(journal_path(report), plan.key, plan.rows, scope)
    except BulklinkError:  # what the run itself would refuse, and say
        return None


def _pairs_at(plan: Plan, indices: Any) -> list[Pair]:
    """The pairs of the input's rows at ``indices`` (0-based, ascending), read again."""
    wanted = [int(i) for i in indices]
    pairs: list[Pair] = []
    for chunk in plan.table.chunks() if wanted else ():
        while wanted and wanted[0] < chunk.end:
            at = wanted.pop(0) - chunk.start
            pairs.append(Pair(chunk.start + at + 1, chunk.source[at], chunk.linked[at]))
        if not wanted:
            break
    return pairs


def _describe(plan: Plan, name: str, url: str, limit: int | None, done: Any = None) -> DryRun:
    """The dry run's counts and examples, as a run with ``limit`` would send, less the
    rows ``done`` (a journal's offsets) says an earlier run finished."""
    earlier = 0
    examples = plan.send_examples
    if done is not None:
        import numpy as np

        finished = np.frombuffer(done, dtype=np.int64) >= 0
        left = (plan.codes == SEND) & ~finished
        earlier = plan.counts.get(SEND, 0) - int(np.count_nonzero(left))
        examples = _pairs_at(plan, np.flatnonzero(left)[: len(plan.send_examples)])
    counts = {
        "send": plan.counts.get(SEND, 0) - earlier,
        "invalid": sum(plan.counts.get(code, 0) for code in INVALID_REASONS),
        "duplicate": plan.counts.get(DUPLICATE, 0),
        "already linked": plan.counts.get(ALREADY, 0),
        "done earlier": earlier,
    }
    if limit is not None and counts["send"] > limit:
        counts["not sent (--limit)"] = counts["send"] - limit
        counts["send"] = limit
    return DryRun(
        name,
        plan.rows,
        counts,
        plan.invalid_examples[:20],
        examples[:limit],  # a run sends the first ``limit`` (None: all)
        url.rstrip("/"),
    )
