"""Webhook notices after a run: when to send one, what it says, and delivering it.

A notice is a JSON POST ``{"text": ..., "summary": ...}``: ``text`` is a few human lines
that Slack and Microsoft Teams incoming webhooks show as they are, ``summary`` is the
object ``--summary-json`` writes. Delivery never raises for anything the network or the
receiver does and never changes the run's exit code: a failure comes back as one warning
line. A webhook URL is a secret (Slack's carry their credential in the path), so every
message names only its host.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from bulklink.errors import UsageError
from bulklink.net.client import USER_AGENT
from bulklink.net.proxy import Proxies, Route, resolve_proxies
from bulklink.net.tls import Trust, resolve_trust, tls_failure
from bulklink.options import ConnectionOptions
from bulklink.redaction import Redactor, redact_value
from bulklink.text import escape_controls, format_duration
from bulklink.urls import check_url, host_of

#: Seconds each try may take: a library setting, not a CLI flag, read at each send.
DEFAULT_TIMEOUT = 10.0
DEFAULT_TRIES = 3
DEFAULT_BACKOFF = 1.0  # first retry delay; doubles per retry
TOP_ERRORS = 5
_EXCERPT = 120  # characters of a receiver's error answer worth quoting
_RETRIABLE = frozenset({408, 429})  # and every 5xx


class NoticeKind(enum.StrEnum):
    """Why a notice goes out (or not). ``ROUTINE`` is a good run reported by ``always``."""

    NONE = "none"
    PROBLEM = "problem"
    RECOVERY = "recovery"
    ROUTINE = "routine"


class NotifyOn(enum.StrEnum):
    """``--notify-on``: only when a human is needed, or after every run."""

    PROBLEMS = "problems"
    ALWAYS = "always"


def should_notify(
    mode: NotifyOn | str, exit_code: int, previous_exit_code: int | None
) -> NoticeKind:
    """One notice per change of state: problems, then the first good run after them.

    ``previous_exit_code`` is the last run's for the same report (``None``: no earlier run
    known), so an ordinary good night stays silent in ``problems`` mode.
    """
    mode = NotifyOn(mode)
    if exit_code != 0:
        return NoticeKind.PROBLEM
    if previous_exit_code is not None and previous_exit_code != 0:
        return NoticeKind.RECOVERY
    return NoticeKind.ROUTINE if mode is NotifyOn.ALWAYS else NoticeKind.NONE


# --- the body ---------------------------------------------------------------------------

_HEADLINES = {
    0: "every row linked",
    2: "usage or input error; nothing was sent",
    3: "the API refused us or could not be trusted; sending stopped",
    75: "another run still holds the report; nothing was changed",
    130: "stopped by SIGINT; the report was written",
    143: "stopped by SIGTERM; the report was written",
}


_NOT_LINKED = ("failed", "skipped", "invalid")


def _headline(summary: Mapping[str, Any], exit_code: int) -> str:
    if exit_code == 1:
        counts = summary.get("counts") or {}
        rows = summary.get("rows")
        # Rows that need work: already-linked rows and duplicates are not among them
        # (a duplicate follows its first row, which is counted).
        missing = [counts.get(name) for name in _NOT_LINKED]
        if isinstance(rows, int) and all(isinstance(n, int) for n in missing):
            return f"{sum(n for n in missing if n)} of {rows} rows not linked"
        return "some rows not linked"
    return _HEADLINES.get(exit_code, "the run failed")


_LITERAL = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "[": "\uff3b", "]": "\uff3d", "`": "\u02cb"}
)
_BARE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def literal(text: str) -> str:
    """Text from the API or a file as it reads, in Slack, Teams and Markdown alike.

    Slack reads ``<...>`` as links and mentions (``<!channel>``, ``<@U1>``): ``&``, ``<``
    and ``>`` become entities. Markdown reads ``[text](url)`` as a link: brackets become
    their fullwidth forms, so ``](`` never appears. A bare URL goes in a code span (so it
    does not link); a backtick that could end one becomes U+02CB.
    """
    text = text.translate(_LITERAL)
    return _BARE_URL.sub(lambda m: f"`{m.group()}`", text)


def literal_values(value: Any) -> Any:
    """Every string of the notice's copy of the summary made :func:`literal` (keys are ours)."""
    if isinstance(value, str):
        return literal(value)
    if isinstance(value, list | tuple):
        return [literal_values(item) for item in value]
    if isinstance(value, Mapping):
        return {k: literal_values(v) for k, v in value.items()}
    return value


def _text(
    summary: Mapping[str, Any], job: str, kind: NoticeKind, previous_exit_code: int | None
) -> str:
    exit_code = summary.get("exit_code")
    code = exit_code if isinstance(exit_code, int) else 1
    head = f"{_headline(summary, code)} (exit {code})"
    if kind is NoticeKind.RECOVERY:
        before = f" (exit {previous_exit_code})" if previous_exit_code is not None else ""
        head = f"recovered: {head}, after a failed run{before}"
    lines = [f"bulklink {job}: {head}"]
    counts = summary.get("counts") or {}
    if counts:
        tally = ", ".join(f"{name} {n}" for name, n in counts.items())
        rows = summary.get("rows")
        resumed = summary.get("resumed_rows") or 0
        done_earlier = f" ({resumed} done earlier)" if resumed else ""
        lines.append(f"{tally} | {rows} rows{done_earlier}")
    errors = [e for e in summary.get("errors") or [] if isinstance(e, Mapping)]
    if errors:
        lines.append("top errors:")
        lines.extend(f"  {e.get('count')} x {e.get('error')}" for e in errors[:TOP_ERRORS])
        if len(errors) > TOP_ERRORS:
            rest = sum(e.get("count") or 0 for e in errors[TOP_ERRORS:])
            lines.append(f"  ... and {len(errors) - TOP_ERRORS} more errors ({rest} rows)")
    stopped = summary.get("stopped")
    if stopped:
        lines.append(f"stopped: {stopped}")
    elapsed = summary.get("elapsed_seconds")
    if isinstance(elapsed, int | float):
        lines.append(f"duration: {format_duration(float(elapsed))}")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(literal(escape_controls(line)) for line in lines)


def notice_body(
    summary: Mapping[str, Any],
    job: str,
    kind: NoticeKind,
    *,
    previous_exit_code: int | None = None,
    redact: Callable[[str], str] = lambda text: text,
) -> dict[str, Any]:
    """The JSON to POST: ``text`` for people, ``summary`` (as ``--summary-json``) for tools.

    ``redact`` scrubs the token and API key; it runs over every string before the text is
    built from them (and over the text again), so no secret reaches the receiver in any form
    the redactor knows.
    """
    clean: dict[str, Any] = redact_value(dict(summary), redact)
    text = redact(_text(clean, redact(job), kind, previous_exit_code))
    return {"text": text, "summary": literal_values(clean)}


# --- delivery ---------------------------------------------------------------------------


def _describe_exception(exc: BaseException, timeout: float, route: Route | None = None) -> str:
    """aiohttp's messages may quote the whole URL; say what happened in our own words."""
    if isinstance(exc, aiohttp.ClientHttpProxyError) and route is not None:
        return f"the proxy {route.host} answered HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientProxyConnectionError) and route is not None:
        return f"cannot connect to the proxy {route.host} ({_os_reason(exc.os_error)})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake or certificate failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({_os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"bad answer ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _os_reason(error: OSError) -> str:
    # asyncio's strerror ("Connect call failed ('1.2.3.4', 443)") hides the errno's words
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or type(error).__name__


def _describe_answer(status: int, reason: str | None, body: bytes, redact: Redactor) -> str:
    text = redact(body.decode("utf-8", "replace").strip())
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "..."
    said = f": {text}" if text else ""
    redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
    return escape_controls(f"HTTP {status} {reason or ''}".rstrip() + redirect + said)


async def send_notice(
    url: str,
    body: Mapping[str, Any],
    *,
    timeout: float | None = None,
    tries: int = DEFAULT_TRIES,
    backoff: float = DEFAULT_BACKOFF,
    allow_http: bool = False,
    proxies: Proxies | None = None,
    trust: Trust | None = None,
) -> str | None:
    """POST the notice; ``None`` when delivered, else one warning line naming only the host.

    Each try has ``timeout`` seconds (None: :data:`DEFAULT_TIMEOUT`); connection failures,
    timeouts, 408, 429 and 5xx are tried again after ``backoff`` (doubling), up to ``tries``
    in all, so the whole takes at most about
    ``tries * timeout + backoff * (2 ** (tries - 1) - 1)`` seconds. Redirects are not
    followed: the body would go to a host nobody named. ``proxies`` and ``trust`` are the
    run's (None: from the environment, as curl reads it).
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    try:
        check_url(url, what="the notice URL", allow_http=allow_http, secret=True)
        proxies = proxies if proxies is not None else resolve_proxies(ConnectionOptions())
        trust = trust if trust is not None else resolve_trust(ConnectionOptions())
    except UsageError as exc:
        return _warning(url, str(exc))
    route = proxies.route(url)
    via = route.request_options(url) if route else {}
    redact = Redactor(proxies.secrets(), urls=[url])
    headers = {"User-Agent": USER_AGENT}
    why = "not tried"
    attempt = 0
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust.context()),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=headers,
        ) as session:
            for attempt in range(1, max(tries, 1) + 1):
                if attempt > 1:
                    await asyncio.sleep(backoff * 2 ** (attempt - 2))
                try:
                    async with session.post(url, json=body, allow_redirects=False, **via) as answer:
                        if 200 <= answer.status < 300:
                            return None
                        content = await answer.content.read(1024)  # a quote, never a flood
                        why = _describe_answer(answer.status, answer.reason, content, redact)
                        if answer.status not in _RETRIABLE and answer.status < 500:
                            return _warning(url, why, attempt)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    why = _describe_exception(exc, timeout, route)
                    if isinstance(exc, aiohttp.ClientSSLError):  # the same every try
                        return _warning(url, redact(tls_failure(exc, host_of(url), trust)))
    except Exception as exc:  # a notice must never break the run it reports
        why = _describe_exception(exc, timeout, route)
    return _warning(url, redact(why), attempt)


def send_notice_sync(url: str, body: Mapping[str, Any], **options: Any) -> str | None:
    """:func:`send_notice` from synchronous code, even when the caller's thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(send_notice(url, body, **options))
    outcome: list[str | None] = []
    thread = threading.Thread(
        target=lambda: outcome.append(asyncio.run(send_notice(url, body, **options))),
        name="bulklink-notice",
    )
    thread.start()
    thread.join()
    return outcome[0] if outcome else _warning(url, "the sending thread died")


def _warning(url: str, why: str, attempts: int = 1) -> str:
    tried = f" ({attempts} tries)" if attempts > 1 else ""
    return f"warning: the notice to {host_of(url)} was not delivered: {why}{tried}"
