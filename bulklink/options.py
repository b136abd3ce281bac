"""Every option of bulklink, once: frozen value objects that check their values when built.

Each group is a dataclass (:class:`ReadOptions`, :class:`ConnectionOptions`,
:class:`TrafficOptions`, :class:`ControlOptions`, :class:`StateOptions`,
:class:`OutputOptions`); what a public function takes is their combination by
inheritance (:class:`StreamOptions`, :class:`RetryOptions`, :class:`JobOptions`), and
:func:`entry` and its kin turn a combination's fields into that function's keyword
arguments, for the type checker and for ``help()`` alike. So an option is one field
here, one ``click.option`` in the CLI and one README row.

The values are the user's, checked but not resolved: what needs the environment or a
file (credentials, the store's path, the webhook) is resolved by the part that owns it
(:mod:`bulklink.net.connection`, :mod:`bulklink.state.store`, :mod:`bulklink.run.publish`).
This module is a leaf: it imports nothing that sends, stores or reads a table.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import inspect
import math
import numbers
import random
import re
import reprlib
import typing
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal, ParamSpec, Protocol, TypeVar

from bulklink.console import Console
from bulklink.errors import UsageError

#: The environment variables bulklink reads, and what each means (the README's table).
ENVIRONMENT = {
    "THENA_BASE_URL": "API base URL (--base-url)",
    "THENA_TOKEN": "Bearer token (--token / --token-file)",
    "THENA_API_KEY": "API key sent as x-api-key (--api-key / --api-key-file)",
    "THENA_ORG_ID": "organization ID sent as x-org-id (--org-id)",
    "BULKLINK_STATE": "the state store's path (--state)",
    "BULKLINK_NOTIFY_URL": "webhook for notices (--notify); a secret: only its host is shown",
    "BULKLINK_PROXY": "proxy for the API and webhooks (--proxy); overrides the next four",
    "HTTPS_PROXY": "proxy for https URLs, as curl reads it (also https_proxy)",
    "HTTP_PROXY": "proxy for http URLs, as curl reads it (also http_proxy)",
    "ALL_PROXY": "proxy for a scheme whose own variable is unset (also all_proxy)",
    "NO_PROXY": "hosts, domains, IPs or * that go direct (also no_proxy)",
    "BULKLINK_CA_BUNDLE": "CA certificates to trust (--ca-bundle)",
    "REQUESTS_CA_BUNDLE": "CA certificates to trust, after --ca-bundle and BULKLINK_CA_BUNDLE",
    "SSL_CERT_FILE": "CA certificates to trust, after the three above",
    "XDG_STATE_HOME": "where the default state store lives (bulklink/state.sqlite3 in it)",
}


class _Checked:
    """The root of every group: each group's ``__post_init__`` checks its own fields and
    calls ``super()``, so a combination checks all of them. This root checks first that
    each field's value is of its declared type, so the groups' checks see only those."""

    def __post_init__(self) -> None:
        group: type = type(self)
        for name, allowed, shown in _declared(group):
            value = getattr(self, name)
            if not _is(value, allowed):
                what = reprlib.repr(value) if shown else f"a value of type {type(value).__name__}"
                words = " or ".join(_WORDS.get(kind, repr(kind)) for kind in allowed)
                raise UsageError(f"--{name.replace('_', '-')} must be {words}, got {what}")
            if isinstance(value, numbers.Integral) and not isinstance(value, int):
                # numpy's integers (a DataFrame's cell): Python's own, which SQLite binds
                object.__setattr__(self, name, int(value))


#: How an error names a declared type; a ``Literal``'s values are named as themselves.
_WORDS: dict[object, str] = {
    bool: "True or False",
    int: "a whole number",
    float: "a number",
    str: "text",
    Path: "a path",
    type(None): "None",
    Console: "a bulklink.Console",
}


@functools.cache
def _declared(group: type) -> list[tuple[str, tuple[object, ...], bool]]:
    """Each option of ``group``: its name, its declared type's alternatives and whether
    its value may be shown (a secret's may not)."""
    hints = typing.get_type_hints(group)
    return [
        (f.name, _alternatives(hints[f.name]), f.repr) for f in dataclasses.fields(group) if f.init
    ]


def _alternatives(hint: object) -> tuple[object, ...]:
    """``int | None`` as ``(int, NoneType)``; ``float | Literal["auto"]`` as ``(float, "auto")``."""
    kinds = typing.get_args(hint) or (hint,)
    return tuple(
        alt
        for kind in kinds
        for alt in (typing.get_args(kind) if typing.get_origin(kind) is Literal else (kind,))
    )


#: What each declared number type takes: numpy's numbers too (a DataFrame's cells).
_NUMBERS: dict[object, type] = {float: numbers.Real, int: numbers.Integral}


def _is(value: object, allowed: tuple[object, ...]) -> bool:
    """Whether ``value`` is one of ``allowed``: a bool is no number, an int is a float
    (as for a type checker) but a float is no whole number (the CLI takes none either),
    and any text stands for a Literal's (the option's own check reads it: " Auto", "20")."""
    for kind in allowed:
        if isinstance(kind, str):
            if isinstance(value, str):
                return True
        elif isinstance(value, bool):
            if kind is bool:
                return True
        elif kind in _NUMBERS:
            if isinstance(value, _NUMBERS[kind]):
                return True
        elif isinstance(kind, type) and isinstance(value, kind):
            return True
    return False


def _finite(value: float | str, option: str) -> float:
    """A number option as a float; NaN and infinity are never meant."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{option} must be a finite number, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True)
class ReadOptions(_Checked):
    """How to read the input; the defaults detect everything."""

    source_col: str | None = None
    linked_col: str | None = None
    sheet: str | None = None
    encoding: str | None = None
    delimiter: str | None = None  # one character; "tab" (or "\t" typed as two) for a tab

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delimiter is not None:
            delimiter = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(self.delimiter, self.delimiter)
            if len(delimiter) != 1:
                raise UsageError("--delimiter must be one character (or 'tab')")
            object.__setattr__(self, "delimiter", delimiter)
        if self.encoding is not None:
            _text_encoding(self.encoding)


def _text_encoding(name: str) -> None:
    """Refuse a codec that reads no text the way the reader asks (rot13 and hex are codecs
    between other things; idna refuses to replace a bad byte)."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise UsageError(f"unknown encoding: {name}") from None
    try:  # through it and back, as the reader decodes: incrementally, bad bytes replaced
        data = "id".encode(name)
        text = codecs.getincrementaldecoder(name)("replace").decode(data, final=True)
    except (LookupError, UnicodeError, TypeError, ValueError, AssertionError):
        text = None
    if not isinstance(text, str):
        raise UsageError(
            f"--encoding {name!r} is not a text encoding bulklink can read a file in "
            "(utf-8, cp1252, utf-16, latin-1...)"
        )


@dataclass(frozen=True, kw_only=True)
class ConnectionOptions(_Checked):
    """Where to send and with which credentials; unset values come from ``THENA_*``."""

    base_url: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | Path | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_file: str | Path | None = None
    org_id: str | None = None
    sandbox: bool = False
    allow_http: bool = False
    #: ``http://[user:pass@]host:port``; ``""`` for none. Its credentials are secrets.
    proxy: str | None = field(default=None, repr=False)
    no_proxy: bool = False
    ca_bundle: str | Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sandbox and self.base_url is not None:  # the run would not go there
            raise UsageError("give --sandbox or --base-url, not both")


@dataclass(frozen=True, kw_only=True)
class TrafficOptions(_Checked):
    """How hard to push: the knobs that shape traffic."""

    #: Requests started per second at most (0: no limit), or "auto": the pace the API's
    #: rate-limit headers allow, less ``reserve`` percent of each limit.
    rate: float | Literal["auto"] = 10.0
    reserve: float = 10.0
    concurrency: int | str | None = "auto"  # a number, or "auto"/None
    max_retries: int = 5
    timeout: float = 30.0
    backoff: float = 0.5  # first retry delay in seconds; doubles each time, with jitter
    #: ``concurrency`` as the runner takes it: a number of workers, None for auto.
    workers: int | None = field(init=False, repr=False)
    #: ``rate`` as the pacer takes it: True for "auto", and the fixed rate (for auto, the
    #: one used until the API's headers say more).
    auto_rate: bool = field(init=False, repr=False)
    ceiling: float = field(init=False, repr=False)

    AUTO_FALLBACK: ClassVar[float] = 10.0  # --rate auto before (or without) the headers

    BACKOFF_CAP: ClassVar[float] = 30.0
    MAX_WORKERS: ClassVar[int] = 10_000
    #: Beyond it the doubling backoff overflows a float; nobody means a thousand retries.
    MAX_RETRIES: ClassVar[int] = 1000
    #: A day: a longer wait for one answer is a run that never ends, not a setting.
    MAX_TIMEOUT: ClassVar[float] = 86_400.0
    #: Far beyond any API's limit; larger numbers are typos (or ``1e308``).
    MAX_RATE: ClassVar[float] = 1_000_000.0
    #: Below it a request's interval overflows a float (``--rate 1e-320`` exited 70).
    MIN_RATE: ClassVar[float] = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        # Numbers as their field says (a caller may give 0 for 0.0, or --rate "20").
        auto = isinstance(self.rate, str) and self.rate.strip().lower() == "auto"
        rate = self.AUTO_FALLBACK if auto else _rate(self.rate)
        timeout, reserve = _finite(self.timeout, "--timeout"), _finite(self.reserve, "--reserve")
        backoff = _finite(self.backoff, "--backoff")
        if not 0 <= rate <= self.MAX_RATE or 0 < rate < self.MIN_RATE:
            raise UsageError(
                f"--rate must be 0 (no limit), or from {self.MIN_RATE:g} (a request every "
                f"2.8 hours) to {self.MAX_RATE:,.0f}, or 'auto', got {rate:g}"
            )
        if not 0 <= reserve < 100:
            raise UsageError("--reserve must be a percentage from 0 to less than 100")
        if not 0 <= self.max_retries <= self.MAX_RETRIES:
            raise UsageError(
                "--max-retries must be 0 or more"
                if self.max_retries < 0
                else f"--max-retries must be at most {self.MAX_RETRIES}"
            )
        if not 0 < timeout <= self.MAX_TIMEOUT:
            raise UsageError(
                f"--timeout must be more than 0 and at most {self.MAX_TIMEOUT:,.0f} seconds "
                f"(a day), got {timeout:g}"
            )
        if not 0 <= backoff <= self.BACKOFF_CAP:
            raise UsageError(
                f"--backoff must be 0 to {self.BACKOFF_CAP:g} seconds (the cap of every "
                f"retry delay), got {backoff:g}"
            )
        for name, value in (("timeout", timeout), ("backoff", backoff), ("reserve", reserve)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "rate", "auto" if auto else rate)
        object.__setattr__(self, "auto_rate", auto)
        object.__setattr__(self, "ceiling", rate)
        object.__setattr__(self, "workers", _workers(self.concurrency))

    def delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff: spreads retries so they don't arrive together."""
        return random.uniform(0, min(self.BACKOFF_CAP, self.backoff * 2 ** (attempt - 1)))


def _rate(rate: float | str) -> float:
    """A fixed --rate; the error names 'auto' when a word was given."""
    if isinstance(rate, str):
        try:
            float(rate)
        except ValueError:
            raise UsageError(f"--rate must be a number or 'auto', got {rate!r}") from None
    return _finite(rate, "--rate")


def _workers(concurrency: int | str | None) -> int | None:
    if concurrency is None or concurrency == "auto":
        return None
    try:
        workers = int(concurrency)
    except ValueError:
        raise UsageError("--concurrency must be a number or 'auto'") from None
    if not 1 <= workers <= TrafficOptions.MAX_WORKERS:
        raise UsageError(f"--concurrency must be between 1 and {TrafficOptions.MAX_WORKERS}")
    return workers


@dataclass(frozen=True, kw_only=True)
class ControlOptions(_Checked):
    """What drives and bounds a run over a file: canary size, resume, signals, time.

    ``give_up_after`` and ``deadline`` are here, not in :class:`TrafficOptions`: they do
    not shape traffic, they end a run over a file (as ``limit`` does), and the job, which
    owns the run's lifetime, enforces them. Both take seconds or ``"90s"``, ``"10m"``,
    ``"2h"``; ``0``, ``"off"`` or None turn them off.
    """

    limit: int | None = None
    fresh: bool = False
    handle_signals: bool = False  # the CLI's SIGINT/SIGTERM/SIGHUP handling (main thread)
    #: Time without an answer that settles a row (only 429s, 5xx, timeouts...) after
    #: which the run stops as SIGTERM stops it.
    give_up_after: float | str | None = "10m"
    #: Time from the start after which nothing more is sent (a wall-clock budget).
    deadline: float | str | None = None
    #: The two durations in seconds (None: off), as the job takes them.
    give_up_seconds: float | None = field(init=False, repr=False)
    deadline_seconds: float | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        give_up = parse_duration(self.give_up_after, "--give-up-after")
        object.__setattr__(self, "give_up_seconds", give_up)
        object.__setattr__(self, "deadline_seconds", parse_duration(self.deadline, "--deadline"))


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: A year: a longer bound is no bound, and loop timers would overflow far beyond it.
MAX_DURATION = 366 * 86_400.0


def parse_duration(value: float | str | None, option: str) -> float | None:
    """``90s``, ``10m``, ``2h``, ``1h30m`` or plain seconds; ``0``, ``off`` or None: no limit."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if not text:  # "$GIVE_UP_AFTER" of an unset variable: not the same as "off"
            raise UsageError(f"{option} is empty: give a duration such as 10m, or 0/off for none")
        if text in ("off", "none", "never"):
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
    if seconds < 0 or not math.isfinite(seconds):
        raise UsageError(f"{option} must be 0 (off) or more")
    if seconds > MAX_DURATION:
        raise UsageError(f"{option} must be at most 366 days (8784h), got {value!r}")
    return seconds or None


@dataclass(frozen=True, kw_only=True)
class StateOptions(_Checked):
    """Which state store a run reads and writes (see :func:`bulklink.state.store.store_path`)."""

    state: str | Path | None = None  # else BULKLINK_STATE, else the platform's state folder
    no_state: bool = False
    relink: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.no_state and self.state is not None:
            raise UsageError("give --state or --no-state, not both")


@dataclass(frozen=True, kw_only=True)
class RunsOptions(StateOptions):
    """What :func:`bulklink.list_runs` and ``bulklink runs`` take."""

    limit: int | None = 20  # None: every run

    MAX_LIMIT: ClassVar[int] = 1_000_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and not 1 <= self.limit <= self.MAX_LIMIT:
            raise UsageError(f"--limit must be from 1 to {self.MAX_LIMIT:,}, got {self.limit}")


@dataclass(frozen=True, kw_only=True)
class OutputOptions(_Checked):
    """What is written or sent beside the report, and where the run's words go."""

    summary_json: str | Path | None = None
    metrics_file: str | Path | None = None
    notify: str | None = field(default=None, repr=False)  # a secret: only its host shows
    notify_on: str = "problems"
    job: str | None = None  # the job's name in notices and metrics; default: report's stem
    console: Console | None = field(default=None, repr=False, compare=False)  # None: silent

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.notify_on not in ("problems", "always"):
            raise UsageError("--notify-on must be 'problems' or 'always'")


@dataclass(frozen=True, kw_only=True)
class StreamOptions(TrafficOptions, ConnectionOptions):
    """Everything :func:`bulklink.link_pairs` takes."""


# Bases in reverse order: a dataclass lists the fields of its last base first, and this
# order is the one ``help()`` shows.
@dataclass(frozen=True, kw_only=True)
class RetryOptions(OutputOptions, StateOptions, ControlOptions, StreamOptions):
    """Everything :func:`bulklink.retry_job` takes."""


@dataclass(frozen=True, kw_only=True)
class JobOptions(RetryOptions, ReadOptions):
    """Everything :func:`bulklink.run_job` and :func:`bulklink.dry_run` take."""


# -- public functions whose keyword arguments are an options class's fields -----------------

P = ParamSpec("P")
Opts = TypeVar("Opts", bound=_Checked)
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., object])
A = TypeVar("A")
A_contra = TypeVar("A_contra", contravariant=True)
Where = str | Path


class Entry(Protocol[A_contra, P, R_co]):
    """A public function of one positional argument and the options ``P``."""

    def __call__(self, first: A_contra, /, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class FileEntry(Protocol[P, R_co]):
    """A public function from a file to a report (``output`` None: beside the input)."""

    def __call__(
        self, path: Where, /, output: Where | None = None, *args: P.args, **kwargs: P.kwargs
    ) -> R_co: ...


def file_entry(
    options: Callable[P, Opts],
    *,
    refused: Callable[[Where, Where | None, dict[str, Any], UsageError], None] | None = None,
) -> Callable[[Callable[[Where, Where | None, Opts], R]], FileEntry[P, R]]:
    """``func(path, output, options)`` as ``func(path, output=None, **fields of options)``;
    ``refused`` hears of options refused before they could be built (to notify it)."""

    def decorate(func: Callable[[Where, Where | None, Opts], R]) -> FileEntry[P, R]:
        @functools.wraps(func)
        def wrapper(
            path: Where, /, output: Where | None = None, *args: P.args, **kwargs: P.kwargs
        ) -> R:
            _check_path(path, "the input", optional=False)
            _check_path(output, "the output", optional=True)
            try:
                built = options(*args, **kwargs)
            except UsageError as exc:
                if refused is not None:
                    refused(path, output, dict(kwargs), exc)
                raise
            return func(path, output, built)

        return _described(wrapper, func, options)

    return decorate


def _check_path(value: object, what: str, *, optional: bool) -> None:
    """A file argument is a path or text naming one (an empty one names none)."""
    if value is None and optional:
        return
    if not isinstance(value, str | PurePath) or not str(value):
        shown = "empty text" if value == "" else f"a value of type {type(value).__name__}"
        raise UsageError(f"{what} must be a path (str or pathlib.Path), got {shown}")


def entry(
    options: Callable[P, Opts],
) -> Callable[[Callable[[A, Opts], R]], Entry[A, P, R]]:
    """``func(first, options)`` as ``func(first, **fields of options)``."""

    def decorate(func: Callable[[A, Opts], R]) -> Entry[A, P, R]:
        @functools.wraps(func)
        def wrapper(first: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return func(first, options(*args, **kwargs))

        return _described(wrapper, func, options)

    return decorate


def streaming_entry(
    options: Callable[P, Opts],
) -> Callable[[Callable[[A, Opts], AsyncGenerator[T]]], Entry[A, P, AsyncGenerator[T]]]:
    """As :func:`entry` for an async generator, which stays one (and whose
    ``aclose`` reaches the wrapped generator's ``finally``)."""

    def decorate(func: Callable[[A, Opts], AsyncGenerator[T]]) -> Entry[A, P, AsyncGenerator[T]]:
        @functools.wraps(func)
        async def wrapper(first: A, /, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T]:
            async with contextlib.aclosing(func(first, options(*args, **kwargs))) as results:
                async for result in results:
                    yield result

        return _described(wrapper, func, options)

    return decorate


def _described(wrapper: C, func: Callable[..., object], options: Callable[..., object]) -> C:
    """``wrapper`` with the signature ``help()``, IDEs and ``inspect`` read: the positional
    parameters of ``func`` (named as there, passed as ``wrapper`` takes them), then every
    field of ``options`` as a keyword argument."""
    hints = typing.get_type_hints(func)
    fields = typing.get_type_hints(options)
    *own, _ = inspect.signature(func).parameters.values()
    taken = inspect.signature(wrapper, follow_wrapped=False).parameters.values()
    parameters = [
        *(
            mine.replace(annotation=hints[mine.name], kind=as_taken.kind, default=as_taken.default)
            for mine, as_taken in zip(own, taken, strict=False)
        ),
        *(
            p.replace(annotation=fields[p.name])
            for p in inspect.signature(options).parameters.values()
        ),
    ]
    described: Any = wrapper  # the attributes below are not in any type's stubs
    described.__signature__ = inspect.Signature(parameters, return_annotation=hints["return"])
    described.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": hints["return"]
    }
    name = getattr(options, "__name__", "")
    described.__doc__ = (
        f"{inspect.cleandoc(func.__doc__ or '')}\n\nThe keyword arguments are the fields "
        f"of bulklink.options.{name}, with its defaults."
    )
    return wrapper
