"""The ``bulklink`` command: parse options, call :mod:`bulklink.api`, map errors to exit codes.

Heavy libraries (pandas, aiohttp) are imported inside the commands that need them, so
``bulklink --help`` starts quickly.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from bulklink.options import RunsOptions  # a leaf: no heavy library

if TYPE_CHECKING:
    from bulklink.console import Console
    from bulklink.models import Summary
    from bulklink.state.store import RunRecord

F = TypeVar("F", bound=Callable[..., Any])
EXIT_CODES = """\b
Exit codes: 0 every row linked (or a duplicate of a linked row); 1 some rows not
linked (also after --give-up-after or --deadline stopped the run); 2 usage or input
error, nothing sent; 3 the API refused us or could not be trusted (credentials
rejected, a certificate or TLS failure, a proxy's 407): a person must act (run
stopped); 70 internal error (a bug; rerun to resume); 74 a file could not be written,
e.g. a full disk, or the state store stayed locked (rerun to resume); 75 another run
holds the report or the input; 129/130/143 stopped by SIGHUP/SIGINT/SIGTERM."""


class _Group(click.Group):
    """Click's own refusals (a bad option value, an unknown option) as one line, as ours,
    and, for ``run`` and ``retry``, notified as every refused run is."""

    raw_args: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.raw_args = tuple(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            self._notify_refusal(ctx, exc)
            _fail(exc.format_message(), exc.exit_code)

    def _notify_refusal(self, ctx: click.Context, exc: click.UsageError) -> None:
        """The command line's own words for its webhook, its values taken as typed."""
        name, *rest = self.raw_args or [""]
        command = self.commands.get(name) if name in ("run", "retry") else None
        if command is None:
            return
        sub = click.Context(command, parent=ctx, info_name=name, resilient_parsing=True)
        try:
            values = command.make_parser(sub).parse_args(rest)[0]
        except click.UsageError:
            return
        given = {str(k): v for k, v in values.items()}
        if given.get("dry_run"):
            return  # a dry run writes and sends nothing, refused or not
        first = given.get("input" if name == "run" else "report")
        if isinstance(first, str):
            from bulklink.api import notify_refused_command
            from bulklink.errors import UsageError

            refusal = UsageError(exc.format_message())
            notify_refused_command(name, first, given.get("output"), given, refusal)


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


#: Where to send and as whom; the THENA_* variables are read by the library itself.
connection_options = _apply(
    [
        click.option(
            "--base-url",
            help="API base URL.  [env var: THENA_BASE_URL; default: https://platform.thena.ai]",
        ),
        click.option(
            "--token",
            metavar="TOKEN",
            help="Bearer token.  [env var: THENA_TOKEN] Prefer the variable or "
            "--token-file: a token on the command line is visible to other users in "
            "the process list.",
        ),
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Read the Bearer token from this file.",
        ),
        click.option(
            "--api-key",
            metavar="KEY",
            help="Send x-api-key instead of a Bearer token (app keys are what Thena "
            "recommends for production).  [env var: THENA_API_KEY] Prefer the variable "
            "or --api-key-file.",
        ),
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Read the API key from this file.",
        ),
        click.option(
            "--org-id",
            help="Organization ID sent as x-org-id (required with a Bearer token).  "
            "[env var: THENA_ORG_ID]",
        ),
        click.option(
            "--sandbox",
            is_flag=True,
            help="Run against the embedded API simulator on 127.0.0.1 (no token "
            "needed): try the tool safely.",
        ),
        click.option(
            "--allow-http",
            is_flag=True,
            help="Allow a plain http:// base URL or webhook on a host other than "
            "loopback (the token then crosses the network in clear).",
        ),
        click.option(
            "--proxy",
            metavar="URL",
            help="Send to the API and webhooks through this http:// proxy (https goes "
            "through a CONNECT tunnel); credentials in it (http://user:pass@host:3128) are "
            "sent as Proxy-Authorization and never shown. '' = none. Overrides "
            "HTTPS_PROXY, HTTP_PROXY and NO_PROXY, which are read as curl reads them.  "
            "[env var: BULKLINK_PROXY]",
        ),
        click.option(
            "--no-proxy",
            is_flag=True,
            help="Use no proxy, whatever the environment says.",
        ),
        click.option(
            "--ca-bundle",
            type=click.Path(path_type=Path),  # a folder is refused by bulklink, in one line
            help="Trust the CA certificates in this PEM file (a company's TLS-inspecting "
            "proxy's CA, say) instead of the system's. Verification is never turned off.  "
            "[env var: BULKLINK_CA_BUNDLE, then REQUESTS_CA_BUNDLE, then SSL_CERT_FILE]",
        ),
    ]
)


class _Rate(click.ParamType):  # type: ignore[type-arg]
    """``--rate``: a number of requests per second (0 or more), or ``auto``."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or str(value).strip().lower() == "auto":
            return value if isinstance(value, float) else "auto"
        try:
            rate = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'auto'.", param, ctx)
        if not rate >= 0 or rate == float("inf"):
            self.fail(f"{value!r} is not a finite number of 0 or more, or 'auto'.", param, ctx)
        return rate


class _Measure(click.FloatRange):
    """A number in a range, never NaN: NaN passes every comparison, so click's range
    alone lets ``nan`` through (the run's options check it in their value objects; the
    sandbox's have none)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number.", param, ctx)
        return number


#: How hard to push.
traffic_options = _apply(
    [
        click.option(
            "--rate",
            type=_Rate(),
            default=10.0,
            show_default=True,
            metavar="R|auto",
            help="At most this many requests started per second, retries included; "
            "0 = no limit. Lowered automatically while the server answers 429. 'auto': "
            "the pace the API's X-RateLimit-* headers allow (the tightest budget, less "
            "--reserve), 10/s until they arrive or if it sends none.",
        ),
        click.option(
            "--reserve",
            type=click.FloatRange(0, 100, max_open=True),
            default=10.0,
            show_default=True,
            metavar="PCT",
            help="With --rate auto: percent of each rate limit left unused for other "
            "clients of the org (Thena's UI, other integrations).",
        ),
        click.option(
            "--concurrency",
            default="auto",
            show_default=True,
            metavar="N|auto",
            help="Requests in flight at most. 'auto' starts at 16 and grows (up to "
            "256) to 1.5 x rate x latency, so a slow API still gets the full rate (with "
            "--rate 0: while every request slot is busy).",
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            default=5,
            show_default=True,
            help="Retries of a transient failure (5xx, 408, 429, timeout, "
            "connection error) before the row fails.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            help="Seconds allowed for one request.",
        ),
        click.option(
            "--backoff",
            type=click.FloatRange(min=0),
            default=0.5,
            show_default=True,
            help="First retry delay in seconds; doubles per retry (capped at 30 s), "
            "with random jitter.",
        ),
    ]
)

#: What drives and bounds a run over a file.
control_options = _apply(
    [
        click.option(
            "--limit",
            type=click.IntRange(min=0),
            default=None,
            help="Send only the first N pairs that would be sent (a canary run); the "
            "rest are 'skipped' so `bulklink retry` can finish the job.",
        ),
        click.option(
            "--fresh",
            is_flag=True,
            help="Ignore the journal of an interrupted earlier run and start over.",
        ),
        click.option(
            "--give-up-after",
            default="10m",
            show_default=True,
            metavar="DURATION",
            help="Stop as SIGTERM does (the rest 'skipped', exit 1) when no request has "
            "succeeded for this long because the API answered only 429, 5xx or nothing: "
            "90s, 10m, 2h or seconds; 0 or 'off' never gives up.",
        ),
        click.option(
            "--deadline",
            default=None,
            metavar="DURATION",
            help="Wall-clock budget for the whole run: past it nothing more is sent, "
            "requests in flight finish, the rest is 'skipped' (exit 1), so tonight's run "
            "ends before tomorrow's starts.  [default: none]",
        ),
    ]
)

#: The cross-run record of linked pairs and runs.
state_options = _apply(
    [
        click.option(
            "--state",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The state store (SQLite) that remembers linked pairs and runs across "
            "nights; pairs already linked there are not sent again.  [env var: "
            "BULKLINK_STATE; default: $XDG_STATE_HOME/bulklink/state.sqlite3; a --sandbox "
            "run uses none unless given]",
        ),
        click.option(
            "--no-state",
            is_flag=True,
            help="Neither read nor write a state store: send every pair.",
        ),
        click.option(
            "--relink",
            is_flag=True,
            help="Send every pair even if the store says it is linked (after links were "
            "removed in Thena), and update its record.",
        ),
    ]
)

#: What the run says and writes besides the report.
output_options = _apply(
    [
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bar on stderr.  [default: on when stderr is a terminal; "
            "otherwise a log line every 10 s]",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            help="Print nothing on success; on failure only the summary and errors.",
        ),
        click.option(
            "--log-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Append timestamped log lines (progress, notes, summary) here.",
        ),
        click.option(
            "--summary-json",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write a machine-readable summary here (counts, top errors, "
            "timestamps, elapsed seconds, report path, exit code).",
        ),
        click.option(
            "--metrics-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the run's metrics here in the Prometheus text format, for "
            "node_exporter's textfile collector (atomically).",
        ),
        click.option(
            "--notify",
            metavar="URL",
            help="POST a JSON notice (Slack/Teams webhook) when a run needs attention. "
            "The URL is a secret: only its host is ever shown.  [env var: "
            "BULKLINK_NOTIFY_URL]",
        ),
        click.option(
            "--notify-on",
            type=click.Choice(["problems", "always"]),
            default="problems",
            show_default=True,
            help="'problems': after a non-zero exit and at the first good run after one "
            "(a recovery); 'always': after every run.",
        ),
        click.option(
            "--job",
            metavar="NAME",
            help="The job's name in notices and metrics.  [default: the report's stem]",
        ),
    ]
)


def job_options(func: F) -> F:
    """Every option ``run`` and ``retry`` share, in help order."""
    return connection_options(traffic_options(control_options(state_options(output_options(func)))))


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  bulklink run samples/pairs.csv --sandbox
  THENA_TOKEN=... THENA_ORG_ID=... bulklink run pairs.csv --rate 20
  bulklink retry pairs.results.csv""",
)
@click.version_option(package_name="bulklink")
def cli() -> None:
    """Link Thena tickets in bulk from a CSV or Excel file of (source, linked) pairs."""


def _console(quiet: bool, progress: bool | None, log_file: Path | None) -> Console:
    from bulklink.console import Console
    from bulklink.errors import BulklinkError

    try:
        return Console(stream=sys.stderr, quiet=quiet, progress=progress, log_file=log_file)
    except BulklinkError as exc:  # an unwritable --log-file
        _fail(str(exc), exc.exit_code)


def _fail(message: str, code: int) -> NoReturn:
    echo(f"bulklink: error: {message}", err=True)
    sys.exit(code)


def echo(message: str, *, err: bool = False, raw: bool = False) -> None:
    """``click.echo`` for which a reader that went away (``| head``) changes nothing.

    Standard output is the product of the commands that write it (``runs``, ``report``,
    ``--dry-run``): a write to it that fails otherwise (a full disk) is exit 74, not an
    empty file and exit 0. Text from data (IDs, server messages) has its control
    characters shown escaped, so it cannot drive the terminal; ``raw`` is for JSON,
    which escapes them itself.
    """
    if not raw:
        from bulklink.text import escape_controls

        message = escape_controls(message)
    try:
        click.echo(message, err=err)
    except OSError as exc:
        from bulklink.console import mute

        mute(sys.stderr if err else sys.stdout)
        if not err and not isinstance(exc, BrokenPipeError):
            _fail(f"cannot write standard output: {exc.strerror or exc}", 74)


def _print_summary(console: Console, summary: Summary) -> None:
    important = summary.exit_code != 0
    for group in summary.errors:
        rows = ", ".join(str(r) for r in group.example_rows)
        more = ", ..." if group.count > len(group.example_rows) else ""
        console.summary(
            f"  {group.count} x {group.error}  (rows {rows}{more})", important=important
        )
    if summary.stopped and summary.exit_code <= 1:  # a bounded run's stop (the others said)
        console.summary(f"bulklink: stopped: {summary.stopped}", important=True)
    counts = ", ".join(f"{name} {n}" for name, n in summary.counts.items())
    resumed = f" ({summary.resumed_rows} done earlier)" if summary.resumed_rows else ""
    pace = ""
    if summary.budget is not None:
        pace = f" | budget {summary.budget}, {summary.average_rate:.1f}/s used"
    console.summary(
        f"{counts} | {summary.rows} rows{resumed} in {summary.elapsed:.1f}s{pace} | "
        f"report: {summary.report or 'none written'}",
        important=important,
    )


def _run_and_report(console: Console, call: Callable[[], Summary]) -> None:
    from bulklink.errors import Blocked, BulklinkError, DiskError, InternalError, Stopped

    try:
        try:
            summary = call()
        except Stopped as exc:  # the run ended early: its summary line is still shown
            if isinstance(exc, InternalError):
                _internal_error(console, exc)
            else:
                label = "error: " if isinstance(exc, DiskError | Blocked) else ""
                console.error(f"bulklink: {label}{console.redact(str(exc))}")
            if exc.summary is not None:
                _print_summary(console, exc.summary)  # the summary line stays the last
            sys.exit(exc.exit_code)
        except BulklinkError as exc:
            console.error(f"bulklink: error: {console.redact(str(exc))}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:  # Ctrl-C before any request went out (reading the input)
            console.error("bulklink: interrupted before anything was sent")
            sys.exit(130)
        except OSError as exc:  # a file bulklink could not read or write, outside the run
            where = f": {exc.filename}" if exc.filename else ""
            console.error(f"bulklink: error: {exc.strerror or exc}{where}")
            sys.exit(74)
        except Exception as exc:  # a bug outside the run itself: still no traceback
            wrapped = InternalError(
                "internal error (a bug in bulklink, not in your data or the API): "
                f"{type(exc).__name__}: {exc}"
            )
            wrapped.__cause__ = exc
            _internal_error(console, wrapped)
            sys.exit(wrapped.exit_code)
        _print_summary(console, summary)
        if console.log_failure is not None:  # the log failed while saying the summary
            console.error(f"bulklink: error: {console.log_failure.strerror}: {console.log_path}")
            sys.exit(74)
        sys.exit(summary.exit_code)
    finally:
        console.close()


def _internal_error(console: Console, exc: BaseException) -> None:
    """One line on stderr; the traceback goes to the log file only."""
    import traceback

    from bulklink.errors import REPORT_BUGS_TO

    cause = exc.__cause__ or exc
    console.trace("".join(traceback.format_exception(cause)).rstrip())
    where = (
        f"the traceback is in {console.log_path}"
        if console.log_path is not None and console.log_failure is None
        else "run with --log-file to keep the traceback"
    )
    console.error(
        f"bulklink: {console.redact(str(exc))}; the journal is kept, so the same command "
        f"resumes. Please report it to {REPORT_BUGS_TO} ({where})."
    )


@cli.command(
    epilog=EXIT_CODES
    + """

\b
Examples:
  bulklink run samples/pairs.csv --sandbox
  bulklink run tickets.xlsx --sheet Links --dry-run
  bulklink run export.csv --rate 20 --limit 10    # a canary run of 10 rows""",
)
@click.argument("input", metavar="INPUT", type=click.Path(allow_dash=True, dir_okay=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The report (.csv, .xlsx or .jsonl).  [default: INPUT's stem + .results.csv, beside it]",
)
@click.option(
    "--source-col",
    help="Column of source ticket IDs.  [default: detected: "
    "sourceTicketId, Source Ticket ID, source_ticket_id, source]",
)
@click.option("--linked-col", help="Column of linked ticket IDs.  [default: detected likewise]")
@click.option("--sheet", help="Excel sheet to read.  [default: the first]")
@click.option(
    "--encoding", help="CSV encoding.  [default: UTF-8 (with or without BOM), else cp1252]"
)
@click.option(
    "--delimiter", help="CSV delimiter ('tab' for a tab).  [default: detected among , ; tab |]"
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read and validate only: print what would be sent; send nothing and write nothing.",
)
@job_options
def run(
    input: str,
    output: Path | None,
    dry_run: bool,
    progress: bool | None,
    quiet: bool,
    log_file: Path | None,
    **options: Any,
) -> None:
    """Link every (source, linked) pair in INPUT (.csv, .tsv or .xlsx; '-' = CSV on stdin).

    Writes a report with one row per input row. An interrupted run (crash, kill, Ctrl-C)
    resumes where it stopped when run again with the same input and report.
    """
    from bulklink.errors import BulklinkError

    if dry_run:
        from bulklink.api import dry_run as plan

        try:
            info = plan(input, output, **options)
        except BulklinkError as exc:
            _fail(str(exc), exc.exit_code)
        _print_dry_run(info)
        return
    from bulklink.api import run_job

    console = _console(quiet, progress, log_file)
    _run_and_report(
        console,
        lambda: run_job(input, output, console=console, handle_signals=True, **options),
    )


def _print_dry_run(info: Any) -> None:
    held = info.counts.get("not sent (--limit)", 0)
    echo(
        f"{info.input}: {info.rows} rows: would send {info.counts['send']}, "
        f"invalid {info.counts['invalid']}, duplicate {info.counts['duplicate']}"
        + (
            f", skipped as already linked {info.counts['already linked']}"
            if info.counts["already linked"]
            else ""
        )
        + (f", skipped by --limit {held}" if held else "")
        + (
            f", resuming {info.counts['done earlier']} rows done by an earlier run"
            if info.counts.get("done earlier")
            else ""
        )
        + " (nothing sent)"
    )
    echo(info.network)
    if info.pace:
        echo(info.pace)
    if info.invalid_rows:
        echo("invalid rows:")
        for row, reason in info.invalid_rows:
            echo(f"  row {row}: {reason}")
        if info.counts["invalid"] > len(info.invalid_rows):
            echo(f"  ... and {info.counts['invalid'] - len(info.invalid_rows)} more")
    if info.sample_requests:
        from bulklink.net.client import link_body  # aiohttp: not imported for --help

        echo("first requests:")
        for pair in info.sample_requests:
            body = link_body(pair.source, pair.linked).decode()  # exactly what is sent
            echo(f"  row {pair.row}: PATCH {info.url}/v1/tickets/link {body}")


@cli.command(
    epilog=EXIT_CODES
    + """

\b
Examples:
  bulklink retry pairs.results.csv
  bulklink retry nightly.xlsx -o nightly.retried.xlsx --rate 5""",
)
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the updated report here.  [default: rewrite REPORT in place]",
)
@job_options
def retry(
    report: Path,
    output: Path | None,
    progress: bool | None,
    quiet: bool,
    log_file: Path | None,
    **options: Any,
) -> None:
    """Resend the failed and skipped rows of REPORT (written by `run`, any format).

    Linked, invalid and duplicate rows are kept exactly as they were; `attempts`
    accumulates.
    """
    from bulklink.api import retry_job

    console = _console(quiet, progress, log_file)
    _run_and_report(
        console,
        lambda: retry_job(report, output, console=console, handle_signals=True, **options),
    )


@cli.command(
    epilog="""Exit code: 0 if every row is linked, 1 otherwise, 2 if REPORT cannot be read.

\b
Examples:
  bulklink report pairs.results.csv
  bulklink report nightly.xlsx --json | jq .counts"""
)
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")
def report(report: Path, as_json: bool) -> None:
    """Summarize REPORT without touching the network: counts, failures by error, rows to retry."""
    from bulklink.errors import BulklinkError
    from bulklink.tables.report.reader import read_report

    try:
        info = read_report(report)
    except BulklinkError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        echo(json.dumps(info.to_dict(), indent=2), raw=True)
    else:
        echo(
            f"{report}: {info.rows} rows: " + ", ".join(f"{k} {v}" for k, v in info.counts.items())
        )
        if info.errors:
            echo("failures by error (most common first):")
            for group in info.errors:
                rows = ", ".join(str(r) for r in group.example_rows)
                echo(f"  {group.count} x {group.error}  (e.g. rows {rows})")
        if info.retryable_rows:
            echo(f"{info.retryable_rows} rows to retry: bulklink retry {report}")
        else:
            echo("nothing to retry")
    sys.exit(0 if info.all_linked else 1)


@cli.command(
    epilog="""\b
Examples:
  bulklink runs
  bulklink runs --limit 5 --json | jq '.[0].counts'
  bulklink runs --state /srv/bulklink/state.sqlite3"""
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The state store.  [env var: BULKLINK_STATE; default: "
    "$XDG_STATE_HOME/bulklink/state.sqlite3]",
)
@click.option(
    "--limit",
    type=click.IntRange(1, RunsOptions.MAX_LIMIT),
    default=20,
    show_default=True,
    help="Show at most this many runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs.")
def runs(state: Path | None, limit: int, as_json: bool) -> None:
    """List recent runs from the state store, newest first (no network)."""
    from bulklink.api import list_runs
    from bulklink.errors import BulklinkError

    try:
        records = list_runs(state=state, limit=limit)
    except BulklinkError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        echo(json.dumps([r.to_json() for r in records], indent=2), raw=True)
        return
    if not records:
        echo("no runs recorded")
        return
    for r in records:
        echo(_run_line(r))


def _run_line(r: RunRecord) -> str:
    """One run of the history; a value someone edited in is shown as stored, marked ``?``."""
    odd = {name: f"?{value!r}" for name, value in r.unreadable.items()}
    counts = odd.get("counts") or ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
    started = odd.get("started") or (f"{r.started:%Y-%m-%d %H:%M:%SZ}" if r.started else "?")
    finished = odd.get("finished") or (
        r.finished.strftime("%H:%M:%SZ") if r.finished else "(did not finish)"
    )
    code = f" exit {odd['exit_code']}" if "exit_code" in odd else ""
    code = code or ("" if r.exit_code is None else f" exit {r.exit_code}")
    return f"#{r.id} {started} - {finished}{code} {r.command} {r.report}: {counts or 'no rows'}"


@cli.command(
    epilog="""\b
Examples:
  bulklink sandbox --port 8080
  bulklink sandbox --budget 300/10 --budget-variant OrgID=200
  bulklink sandbox --token secret --org-id org_1   # then: THENA_BASE_URL=http://127.0.0.1:8080"""
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port (0 = any free one).",
)
@click.option(
    "--latency",
    type=_Measure(0, 3600),
    default=0.0,
    show_default=True,
    help="Seconds added to every answer.",
)
@click.option(
    "--error-rate",
    type=_Measure(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of requests answered with a transient 503.",
)
@click.option(
    "--rate-limit",
    type=_Measure(0, 1_000_000),
    default=0.0,
    show_default=True,
    help="Requests per second allowed before answering 429 with X-RateLimit-* "
    "headers (0 = no limit).",
)
@click.option(
    "--budget",
    metavar="N/S",
    help="Budget mode, like the real API's: N requests per org in fixed windows of S "
    "seconds (aligned to UNIX time), X-RateLimit-* headers on every answer, 429 beyond.",
)
@click.option(
    "--budget-variant",
    multiple=True,
    metavar="SCOPE=N",
    help="A budget of its own (IP, UserID, OrgID or Path) of N per window, with its "
    "X-RateLimit-*-SCOPE headers; repeatable.",
)
@click.option("--retry-after", is_flag=True, help="Add Retry-After to 429s (Thena does not).")
@click.option("--token", help="Require this Bearer token (default: accept any).")
@click.option("--api-key", help="Accept this x-api-key.")
@click.option("--org-id", help="Require this x-org-id.")
@click.option(
    "--unknown-prefix",
    default="MISSING",
    show_default=True,
    help="Ticket IDs starting with this answer 404.",
)
@click.option("--seed", type=int, help="Seed for the fault injection.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve https with this PEM certificate (chain); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key (PEM) of --tls-cert.",
)
def sandbox(
    host: str,
    port: int,
    latency: float,
    error_rate: float,
    rate_limit: float,
    budget: str | None,
    budget_variant: tuple[str, ...],
    retry_after: bool,
    token: str | None,
    api_key: str | None,
    org_id: str | None,
    unknown_prefix: str,
    seed: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve a local simulator of Thena's link endpoint (PATCH /v1/tickets/link)."""
    from bulklink.sandbox import SandboxConfig, run_forever

    if (tls_cert is None) != (tls_key is None):
        _fail("give --tls-cert and --tls-key together", 2)
    config = SandboxConfig(
        token=token,
        api_key=api_key,
        org_id=org_id,
        latency=latency,
        error_rate=error_rate,
        rate_limit=rate_limit,
        **_budget(budget, budget_variant),
        retry_after=retry_after,
        seed=seed,
        unknown_prefix=unknown_prefix,
        record=False,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    try:
        run_forever(
            config,
            host,
            port,
            lambda url: echo(f"sandbox listening on {url} (Ctrl-C to stop)", err=True),
        )
    except OSError as exc:  # a port in use, a host not this machine's, a bad certificate
        import ssl

        if isinstance(exc, ssl.SSLError):
            _fail(f"--tls-cert/--tls-key cannot be loaded: {exc.reason or exc}", 2)
        _fail(f"the sandbox cannot listen on {host} port {port}: {exc.strerror or exc}", 2)


def _budget(spec: str | None, variants: tuple[str, ...]) -> dict[str, Any]:
    """``--budget 300/10`` and ``--budget-variant OrgID=200`` as SandboxConfig fields."""
    limit, _, window = (spec or "0/1").partition("/")
    try:
        seconds = float(window)
    except ValueError:
        seconds = 0.0
    if not limit.isdigit() or not 0 < seconds < float("inf"):
        raise click.BadParameter(f"{spec!r}: give N/S, e.g. 300/10", param_hint="--budget")
    found = {}
    for variant in variants:
        scope, _, most = variant.partition("=")
        if scope not in ("IP", "UserID", "OrgID", "Path") or not most.isdigit():
            raise click.BadParameter(
                f"{variant!r}: give SCOPE=N, SCOPE one of IP, UserID, OrgID, Path",
                param_hint="--budget-variant",
            )
        found[scope] = int(most)
    return {"budget_limit": int(limit), "budget_window": seconds, "budget_variants": found}


def main() -> None:
    # numpy's OpenBLAS would start a thread per core at import, for linear algebra
    # bulklink never does; on a small machine they only take CPU from the event loop.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        cli(prog_name="bulklink")
    except OSError as exc:  # click's own --help or --version text, on a full disk
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EPIPE):
            raise
        from bulklink.console import mute

        mute(sys.stdout)
        if isinstance(exc, BrokenPipeError):
            sys.exit(0)
        _fail(f"cannot write standard output: {exc.strerror or exc}", 74)
