"""After a run, whatever its end: the summary JSON, the metrics file and the webhook notice.

Each is best effort and independent: a failure is one warning (on the console and in the
log) and never changes the run's exit code, so the report and the exit code stay what
monitoring and cron act on. Runs that never started (bad input, a missing token, an
option refused) are published too, by :func:`publish_refusal` alone: a nightly export that
fails to read needs a human as much as one that fails to link.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bulklink._fs import refuse_same_files, refuse_unreplaceable, write_atomically
from bulklink.console import Console
from bulklink.errors import BulklinkError, LockedError, SameFileError, UsageError
from bulklink.models import Summary
from bulklink.net.connection import Connection
from bulklink.net.proxy import Proxies, resolve_proxies
from bulklink.net.tls import Trust, resolve_trust
from bulklink.options import OutputOptions, RetryOptions
from bulklink.redaction import Redactor
from bulklink.state.journal import journal_path
from bulklink.state.ledger import Ledger
from bulklink.state.lock import lock_path
from bulklink.state.scope import Scope
from bulklink.state.store import store_path
from bulklink.tables.report.writers import report_format
from bulklink.text import utc_stamp
from bulklink.urls import check_url


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """The report and what is written or sent beside it, resolved and checked."""

    report: Path
    summary_json: Path | None = None
    metrics_file: Path | None = None
    notify_url: str | None = field(default=None, repr=False)  # a secret: only its host shows
    notify_on: str = "problems"
    job: str = ""


def output_for(
    report: Path,
    options: OutputOptions,
    *,
    allow_http: bool = False,
    env: Mapping[str, str] | None = None,
) -> Output:
    """The options' paths checked and the webhook from ``BULKLINK_NOTIFY_URL`` when unset."""
    env = os.environ if env is None else env
    report_format(report)
    summary_json = _in_existing_folder(options.summary_json, "--summary-json")
    metrics_file = _in_existing_folder(options.metrics_file, "--metrics-file")
    notify_url = (options.notify or env.get("BULKLINK_NOTIFY_URL", "")).strip() or None
    if notify_url is not None:
        check_url(notify_url, what="--notify", allow_http=allow_http, secret=True)
    return Output(
        report=report,
        summary_json=summary_json,
        metrics_file=metrics_file,
        notify_url=notify_url,
        notify_on=options.notify_on,
        job=(options.job or "").strip() or report.stem,
    )


def run_files(
    input: Path | None,
    report: Path,
    summary_json: Path | None,
    metrics_file: Path | None,
    log: Path | None,
    store: Path | None,
) -> list[tuple[str, Path | None, bool]]:
    """Every file a run reads or writes, as :func:`~bulklink._fs.refuse_same_files` takes
    them (``False``: written by a rename, which replaces a symbolic link at the name)."""
    return [
        ("the input", input, True),
        ("the report", report, False),
        # The report's own side files before the paths a user gives, so that a
        # refusal names the option to change; a lock that is another file is no lock.
        ("the journal", journal_path(report), True),
        ("the lock file", lock_path(report), True),
        # SQLite's own files beside the store: it resets a -wal it cannot read and
        # removes both -wal and -shm on closing, whatever they held.
        *((f"the state store's {side} file", _beside(store, side), True) for side in _SQLITE_SIDES),
        ("--summary-json", summary_json, False),
        ("--metrics-file", metrics_file, False),
        ("--log-file", log, True),
        ("the state store", store, True),
    ]


_SQLITE_SIDES = ("-wal", "-shm", "-journal")


def _beside(store: Path | None, side: str) -> Path | None:
    return None if store is None else store.with_name(store.name + side)


def refuse_unusable_files(files: Sequence[tuple[str, Path | None, bool]]) -> None:
    """No two of a run's files may be one file, and none renamed into place may be a
    device, a pipe or a folder."""
    refuse_same_files(files)
    for what, path, follows in files:
        if path is not None and not follows:
            refuse_unreplaceable(path, what)


def refused(report: Path, exc: BulklinkError) -> Summary:
    """The summary of a run that never started: no rows, the refusal's exit code and why."""
    now = utc_stamp()
    return Summary(
        report=str(report), started=now, finished=now, exit_code=exc.exit_code, stopped=str(exc)
    )


def publish_refusal(
    exc: BulklinkError,
    report: Path,
    options: RetryOptions,
    *,
    command: str,
    command_line: str,
    scope: Scope,
    input: Path | None = None,
    secrets: Callable[[str], str] = str,
    ledger: Ledger | None = None,
    store: bool = True,
) -> None:
    """The one place a run refused before it started is published: the history row, the
    summary JSON, the metrics and the notice, each as far as its own options are valid, so
    the night a token file goes missing is on the dashboard and the next good one is a
    recovery. ``ledger``: the run's own, when it holds one; ``store`` False: the store is
    what was refused. Another run holding the report (:class:`LockedError`) gets the
    notice alone: the files and the history are the other run's."""
    console = options.console or Console.silent()
    summary = refused(report, exc)
    files = not isinstance(exc, LockedError)
    path = _store_of(options) if files and store and ledger is None else None
    # Nothing is written to a file the run's own checks refuse (two roles one file, a device).
    summary_json, metrics_file = _path_of(options.summary_json), _path_of(options.metrics_file)
    taken: tuple[str, ...] = ()
    try:
        refuse_same_files(
            run_files(input, report, summary_json, metrics_file, console.log_path, path)
        )
    except SameFileError as clash:
        taken = clash.roles
    job = (options.job or "").strip() or report.stem
    notice = _webhook(options)
    output = Output(
        report=report,
        summary_json=_writable(summary_json, "--summary-json", taken) if files else None,
        metrics_file=_writable(metrics_file, "--metrics-file", taken) if files else None,
        notify_url=notice[0] if notice else None,
        notify_on=options.notify_on,
        job=job,
    )
    previous, last_success = None, None
    with contextlib.ExitStack() as stack:
        if path is not None and not any(role.startswith("the state store") for role in taken):
            with contextlib.suppress(BulklinkError, OSError):  # a store it cannot use: no row
                ledger = stack.enter_context(contextlib.closing(Ledger.open(path, scope)))
        if ledger is not None and files:
            try:
                found = ledger.previous_run(report)
                previous = found.exit_code if found else None
                ledger.record_refusal(
                    command.split()[1],
                    report=report,
                    job=job,
                    summary=summary,
                    command_line=command_line,
                )
                last_success = ledger.last_success(job)
            except (OSError, BulklinkError) as error:
                console.error(f"warning: cannot record the run in {ledger.path}: {error}")
    write_records(output, summary, console, last_success=last_success, summary_json=True)
    if notice is not None:
        url, proxies, trust = notice
        hide = Redactor(proxies.secrets(), urls=[url])
        _notify(
            output,
            summary,
            console,
            previous,
            lambda text: secrets(hide(text)),
            options.allow_http,
            proxies,
            trust,
        )


def _path_of(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _writable(path: Path | None, flag: str, taken: tuple[str, ...]) -> Path | None:
    """``path`` when a refused run may write it: in a folder that exists, no other role's
    file, and no device or folder."""
    if path is None or flag in taken or not path.parent.is_dir():
        return None
    try:
        refuse_unreplaceable(path, flag)
    except UsageError:
        return None
    return path


def _store_of(options: RetryOptions) -> Path | None:
    try:
        return store_path(options, sandbox=options.sandbox)
    except BulklinkError:
        return None


def _webhook(options: RetryOptions) -> tuple[str, Proxies, Trust] | None:
    """The webhook and the way there, when they are valid themselves."""
    url = (options.notify or os.environ.get("BULKLINK_NOTIFY_URL", "")).strip()
    if not url:
        return None
    try:
        check_url(url, what="--notify", allow_http=options.allow_http, secret=True)
        return url, resolve_proxies(options), resolve_trust(options)
    except UsageError:
        return None  # the webhook itself is what was refused, or it cannot be reached as asked


def _in_existing_folder(value: str | Path | None, flag: str) -> Path | None:
    path = Path(value) if value is not None else None
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{flag}: no such folder {path.parent}")
    return path


def write_summary_json(path: os.PathLike[str] | str, summary: Summary) -> None:
    """Atomically, so a monitor polling the file never reads half of it."""
    content = json.dumps(summary.to_dict(), indent=2) + "\n"
    write_atomically(Path(path), content.encode(), 0o644)


def publish(
    output: Output,
    summary: Summary,
    console: Console,
    *,
    previous_exit_code: int | None,
    last_success: datetime | None,
    redact: Callable[[str], str],
    connection: Connection,
) -> None:
    """Write ``--metrics-file``; send the notice when one is due."""
    write_records(output, summary, console, last_success=last_success)
    if output.notify_url is not None:
        _notify(
            output,
            summary,
            console,
            previous_exit_code,
            redact,
            connection.allow_http,
            connection.proxies,
            connection.trust,
        )


def write_records(
    output: Output,
    summary: Summary,
    console: Console,
    *,
    last_success: datetime | None,
    summary_json: bool = False,
) -> None:
    """``--metrics-file`` (and ``--summary-json`` when the run did not get to it, or wrote
    it before a late signal changed its exit code); a failure is a warning."""
    if summary_json and output.summary_json is not None:
        try:
            write_summary_json(output.summary_json, summary)
        except (OSError, BulklinkError) as exc:
            console.error(f"warning: cannot write --summary-json {output.summary_json}: {exc}")
    if output.metrics_file is not None:
        from bulklink.run.metrics import render_metrics, write_metrics

        finished = time.time()
        content = render_metrics(
            job=output.job,
            counts=summary.counts,
            exit_code=summary.exit_code,
            duration_seconds=summary.elapsed,
            finished_timestamp=finished,
            last_success_timestamp=(finished if summary.exit_code == 0 else _stamp(last_success)),
            requests=summary.requests,
            throttled=summary.throttled,
            average_rate=summary.average_rate,
            budget=summary.budget,
        )
        warning = write_metrics(output.metrics_file, content)
        if warning:
            console.error(warning)


def _notify(
    output: Output,
    summary: Summary,
    console: Console,
    previous_exit_code: int | None,
    redact: Callable[[str], str],
    allow_http: bool,
    proxies: Proxies,
    trust: Trust,
) -> None:
    from bulklink.net.notify import NoticeKind, notice_body, send_notice_sync, should_notify

    assert output.notify_url is not None
    kind = should_notify(output.notify_on, summary.exit_code, previous_exit_code)
    if kind is NoticeKind.NONE:
        return
    body = notice_body(
        summary.to_dict(),
        output.job,
        kind,
        previous_exit_code=previous_exit_code,
        redact=redact,
    )
    warning = send_notice_sync(
        output.notify_url,
        body,
        allow_http=allow_http,
        proxies=proxies,
        trust=trust,
    )
    if warning:
        console.error(warning)


def _stamp(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None
