"""After a run, whatever its end: the summary JSON, the metrics file and the webhook notice.

Each is best effort and independent: a failure is one warning (on the console and in the
log) and never changes the run's exit code, so the report and the exit code stay what
monitoring and cron act on. Runs that never started (bad input, another run holding the
report) are published too: a nightly export that fails to read needs a human as much as
one that fails to link.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bulklink._fs import write_atomically
from bulklink.console import Console
from bulklink.errors import BulklinkError, UsageError
from bulklink.models import Summary
from bulklink.net.connection import Connection
from bulklink.net.proxy import Proxies, resolve_proxies
from bulklink.net.tls import Trust, resolve_trust
from bulklink.options import OutputOptions, RetryOptions
from bulklink.redaction import Redactor
from bulklink.tables.report.writers import report_format
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


def notify_refusal(
    report: Path, options: RetryOptions, summary: Summary, console: Console, *, secrets: Redactor
) -> None:
    """A run refused while its options were being resolved (a missing ``--metrics-file``
    folder, a bad base URL): the notice alone, when the webhook and the network options
    are valid themselves, so a typo in a crontab does not silence the job."""
    url = (options.notify or os.environ.get("BULKLINK_NOTIFY_URL", "")).strip()
    if not url:
        return
    try:
        check_url(url, what="--notify", allow_http=options.allow_http, secret=True)
        proxies, trust = resolve_proxies(options), resolve_trust(options)
    except UsageError:
        return  # the webhook itself is what was refused, or it cannot be reached as asked
    output = Output(
        report=report,
        notify_url=url,
        notify_on=options.notify_on,
        job=(options.job or "").strip() or report.stem,
    )
    redact = Redactor(proxies.secrets(), urls=[url]) | secrets
    _notify(output, summary, console, None, redact, options.allow_http, proxies, trust)


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
    summary_json: bool = False,
) -> None:
    """Write ``--metrics-file`` (and ``--summary-json`` when the run did not get to it);
    send the notice when one is due."""
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
