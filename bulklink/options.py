"""Options as small typed value objects, each built and checked once, with library names.

A run is described by four of them: where and as whom to call (:class:`Connection`), how
hard to push (:class:`RunSettings`), what drives and ends the run (:class:`Control`) and
where its results go besides the report (:class:`Output`). The public functions take
keyword arguments typed by the ``TypedDict``\\ s below, so a new option is one field
here, one line in its ``build`` and one click option, not four signatures.

Every ``THENA_*`` and ``BULKLINK_*`` variable is read here, so the CLI and the Python
API give them the same meaning (the CLI adds no ``envvar=`` of its own).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

from bulklink.errors import UsageError
from bulklink.net.credentials import Auth, resolve_auth
from bulklink.urls import DEFAULT_BASE_URL, check_url

#: The environment variables bulklink reads, and what each means (the README's table).
ENVIRONMENT = {
    "THENA_BASE_URL": "API base URL (--base-url)",
    "THENA_TOKEN": "Bearer token (--token / --token-file)",
    "THENA_API_KEY": "API key sent as x-api-key (--api-key / --api-key-file)",
    "THENA_ORG_ID": "organization ID sent as x-org-id (--org-id)",
    "BULKLINK_STATE": "the state store's path (--state)",
    "BULKLINK_NOTIFY_URL": "webhook for notices (--notify); a secret: only its host is shown",
    "XDG_STATE_HOME": "where the default state store lives (bulklink/state.sqlite3 in it)",
}


class ConnectionArgs(TypedDict, total=False):
    """Where to send and with which credentials (see :meth:`Connection.build`)."""

    base_url: str | None
    token: str | None
    token_file: str | Path | None
    api_key: str | None
    api_key_file: str | Path | None
    org_id: str | None
    sandbox: bool
    allow_http: bool


class TrafficArgs(TypedDict, total=False):
    """How hard to push (see :meth:`RunSettings.build`)."""

    rate: float
    concurrency: int | str | None
    max_retries: int
    timeout: float
    backoff: float


class ControlArgs(TypedDict, total=False):
    """What drives and bounds a run over a file (see :meth:`Control.build`)."""

    limit: int | None
    fresh: bool
    handle_signals: bool
    give_up_after: float | str | None
    deadline: float | str | None


class StateArgs(TypedDict, total=False):
    """The cross-run state store (see :meth:`StateOptions.build`)."""

    state: str | Path | None
    no_state: bool
    relink: bool


class OutputArgs(TypedDict, total=False):
    """Where a run's results go besides the report (see :meth:`Output.build`)."""

    summary_json: str | Path | None
    metrics_file: str | Path | None
    notify: str | None
    notify_on: str
    job: str | None


class StreamArgs(ConnectionArgs, TrafficArgs, total=False):
    """Everything :func:`bulklink.link_pairs` takes."""


class JobArgs(StreamArgs, ControlArgs, StateArgs, OutputArgs, total=False):
    """Everything :func:`bulklink.run_job` and :func:`bulklink.retry_job` take."""


_JOB_KEYS = frozenset(JobArgs.__annotations__)


def job_args(values: Mapping[str, Any]) -> JobArgs:
    """The options among a public function's arguments (its ``locals()``), as one typed dict.

    The public functions keep explicit keyword arguments (for ``help()`` and IDEs); this
    keeps them from re-listing each one to pass it on.
    """
    return cast(JobArgs, {k: v for k, v in values.items() if k in _JOB_KEYS})


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """The API to call and the credentials to call it with."""

    base_url: str
    auth: Auth
    sandbox: bool = False
    allow_http: bool = False

    @classmethod
    def build(cls, args: ConnectionArgs, env: Mapping[str, str] | None = None) -> Connection:
        """Options first, then their ``THENA_*`` variables; checked before anything is sent."""
        env = os.environ if env is None else env
        sandbox = bool(args.get("sandbox", False))
        base_url = args.get("base_url") or env.get("THENA_BASE_URL", "").strip() or DEFAULT_BASE_URL
        auth = resolve_auth(
            token=args.get("token"),
            token_file=args.get("token_file"),
            api_key=args.get("api_key"),
            api_key_file=args.get("api_key_file"),
            org_id=args.get("org_id"),
            sandbox=sandbox,
            env=env,
        )
        allow_http = bool(args.get("allow_http", False))
        if not sandbox:
            base_url = check_url(base_url, what="--base-url", allow_http=allow_http)
        return cls(base_url=base_url.rstrip("/"), auth=auth, sandbox=sandbox, allow_http=allow_http)

    @contextlib.asynccontextmanager
    async def endpoint(self) -> AsyncGenerator[str]:
        """The base URL to call: the embedded sandbox's when asked for, else the configured one."""
        if not self.sandbox:
            yield self.base_url
            return
        from bulklink.sandbox import Sandbox, SandboxConfig

        async with Sandbox(SandboxConfig(record=False)) as sandbox:
            yield sandbox.url


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """How hard to push: the knobs that shape traffic."""

    rate: float = 10.0
    concurrency: int | None = None  # None: auto
    max_retries: int = 5
    timeout: float = 30.0
    backoff: float = 0.5  # first retry delay in seconds; doubles each time, with jitter
    backoff_cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff: spreads retries so they don't arrive together."""
        return random.uniform(0, min(self.backoff_cap, self.backoff * 2 ** (attempt - 1)))

    @classmethod
    def build(cls, args: TrafficArgs) -> RunSettings:
        """Each value checked with a message naming its option."""
        rate = float(args.get("rate", 10.0))
        if rate < 0:
            raise UsageError("--rate must be 0 (no limit) or more")
        concurrency = args.get("concurrency", "auto")
        if concurrency is None or concurrency == "auto":
            workers = None
        else:
            try:
                workers = int(concurrency)
            except ValueError:
                raise UsageError("--concurrency must be a number or 'auto'") from None
            if not 1 <= workers <= 10_000:
                raise UsageError("--concurrency must be between 1 and 10000")
        max_retries = int(args.get("max_retries", 5))
        if max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        timeout = float(args.get("timeout", 30.0))
        if timeout <= 0:
            raise UsageError("--timeout must be more than 0 seconds")
        backoff = float(args.get("backoff", 0.5))
        if backoff < 0:
            raise UsageError("--backoff must be 0 or more seconds")
        return cls(
            rate=rate,
            concurrency=workers,
            max_retries=max_retries,
            timeout=timeout,
            backoff=backoff,
        )


DEFAULT_GIVE_UP_AFTER = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Control:
    """What drives and bounds a run over a file: canary size, resume, signals, time.

    ``give_up_after`` and ``deadline`` live here, not in :class:`RunSettings`: they do
    not shape traffic, they end a run over a file (as ``--limit`` does), and the job,
    which owns the run's lifetime, enforces them. ``None`` turns either off.
    """

    limit: int | None = None
    fresh: bool = False
    handle_signals: bool = False
    #: Seconds without an answer that settles a row (only 429s, 5xx, timeouts...) after
    #: which the run stops as SIGTERM stops it.
    give_up_after: float | None = DEFAULT_GIVE_UP_AFTER
    #: Seconds from the start after which nothing more is sent (a wall-clock budget).
    deadline: float | None = None

    @classmethod
    def build(cls, args: ControlArgs) -> Control:
        limit = args.get("limit")
        if limit is not None and limit < 0:
            raise UsageError("--limit must be 0 or more")
        return cls(
            limit=limit,
            fresh=bool(args.get("fresh", False)),
            handle_signals=bool(args.get("handle_signals", False)),
            give_up_after=parse_duration(
                args.get("give_up_after", DEFAULT_GIVE_UP_AFTER), "--give-up-after"
            ),
            deadline=parse_duration(args.get("deadline"), "--deadline"),
        )


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: float | str | None, option: str) -> float | None:
    """``90s``, ``10m``, ``2h``, ``1h30m`` or plain seconds; ``0``, ``off`` or None: no limit."""
    import re

    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if text in ("off", "none", "never", ""):
            return None
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?)", text)
        if parts is None:
            raise UsageError(
                f"{option} must be a duration such as 90s, 10m, 2h or 1h30m "
                f"(plain seconds, or 0/off for none), got {value!r}"
            )
        if text[-1] in _UNITS:
            found = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
            seconds = sum(float(n) * _UNITS[unit] for n, unit in found)
        else:
            seconds = float(text)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise UsageError(f"{option} must be 0 (off) or more")
    return seconds or None


@dataclass(frozen=True, slots=True, kw_only=True)
class StateOptions:
    """Which state store a run reads and writes (``path`` None: none at all)."""

    path: Path | None = None
    relink: bool = False

    @classmethod
    def build(
        cls, args: StateArgs, *, sandbox: bool, env: Mapping[str, str] | None = None
    ) -> StateOptions:
        """``--state``, else ``BULKLINK_STATE``, else the platform's state folder.

        ``--no-state`` uses none; a ``--sandbox`` run uses none unless ``--state`` names
        one, so trying the tool never mixes simulated links into the real record.
        """
        env = os.environ if env is None else env
        relink = bool(args.get("relink", False))
        state = args.get("state")
        if args.get("no_state", False):
            if state is not None:
                raise UsageError("give --state or --no-state, not both")
            return cls(path=None, relink=relink)
        if state is not None:
            return cls(path=Path(state).expanduser(), relink=relink)
        if sandbox:
            return cls(path=None, relink=relink)
        from bulklink.state.store import resolve_state_path

        return cls(path=resolve_state_path(None, env), relink=relink)


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """The report and what is written or sent beside it for people and monitoring."""

    report: Path
    summary_json: Path | None = None
    metrics_file: Path | None = None
    notify_url: str | None = field(default=None, repr=False)  # a secret: only its host shows
    notify_on: str = "problems"
    job: str = ""

    @classmethod
    def build(
        cls,
        report: Path,
        args: OutputArgs,
        *,
        allow_http: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Output:
        from bulklink.tables.report.writers import report_format

        env = os.environ if env is None else env
        report_format(report)
        summary_json = _in_existing_folder(args.get("summary_json"), "--summary-json")
        metrics_file = _in_existing_folder(args.get("metrics_file"), "--metrics-file")
        notify_url = (args.get("notify") or env.get("BULKLINK_NOTIFY_URL", "")).strip() or None
        notify_on = args.get("notify_on", "problems")
        if notify_on not in ("problems", "always"):
            raise UsageError("--notify-on must be 'problems' or 'always'")
        if notify_url is not None:
            check_url(notify_url, what="--notify", allow_http=allow_http, secret=True)
        job = (args.get("job") or "").strip() or report.stem
        return cls(
            report=report,
            summary_json=summary_json,
            metrics_file=metrics_file,
            notify_url=notify_url,
            notify_on=notify_on,
            job=job,
        )


def _in_existing_folder(value: str | Path | None, flag: str) -> Path | None:
    path = Path(value) if value is not None else None
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{flag}: no such folder {path.parent}")
    return path
