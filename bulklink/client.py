"""The HTTP edge: one session per run, one PATCH per call, one classifier for every answer.

aiohttp's exceptions stop here: :meth:`Client.link` turns every answer and every
transport failure into an :class:`Answer` whose :class:`Verdict` tells the runner what
to do (retry, fail the row, or abort the run). Nothing here knows about rows or files.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp

from bulklink.credentials import Auth
from bulklink.errors import UsageError

LINK_PATH = "/v1/tickets/link"
DEFAULT_BASE_URL = "https://platform.thena.ai"
MAX_SERVER_WAIT = 300.0  # seconds; a longer Retry-After is capped so a nightly run still ends
_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


class Verdict(enum.Enum):
    LINKED = "linked"
    RETRY = "retry"  # transient: 5xx, 408, 429, timeout, connection error
    FAIL = "fail"  # the row cannot succeed as sent: other 4xx, 2xx without status true
    ABORT = "abort"  # 401/403: no row can succeed with these credentials


class Answer(NamedTuple):
    """One attempt's classified outcome; ``wait`` is the server's requested pause, if any.

    A named tuple, not a frozen dataclass: one is built per request, and a frozen
    dataclass pays an ``object.__setattr__`` per field.
    """

    verdict: Verdict
    http_status: int | None
    error: str = ""
    ticket: dict[str, Any] | None = None
    body: bytes | None = None
    wait: float | None = None

    @property
    def throttled(self) -> bool:
        return self.http_status == 429


def describe_body(body: bytes) -> str:
    """The server's message from a NestJS error body, or a short excerpt of anything else."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = _TAGS.sub(" ", body[:2000].decode("utf-8", "replace"))
        text = _SPACE.sub(" ", text).strip()
        return text[:200] + ("..." if len(text) > 200 else "")
    if isinstance(obj, dict):
        message = obj.get("message") or obj.get("error") or obj.get("detail")
        if isinstance(message, list):
            return "; ".join(str(m) for m in message)
        if message is not None:
            return str(message)
    return _SPACE.sub(" ", json.dumps(obj))[:200]


def server_wait(
    headers: Mapping[str, str], now: float | None = None, *, rate_limited: bool = True
) -> float | None:
    """Seconds the server asks us to wait: Retry-After first, then X-RateLimit-Reset.

    The reset time only means something on a 429 (``rate_limited``): on a 503 it is just
    the end of the current rate window, not advice about the outage.
    """
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after:
        value = retry_after.strip()
        if value.isdigit():
            return min(float(value), MAX_SERVER_WAIT)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return min(max(when - now, 0.0), MAX_SERVER_WAIT)
    reset = headers.get("X-RateLimit-Reset") if rate_limited else None
    if reset:
        try:
            stamp = float(reset)
        except ValueError:
            return None
        # Thena documents UNIX seconds; small values are read as seconds from now.
        delta = stamp - now if stamp > 1e9 else stamp
        return min(max(delta, 0.0), MAX_SERVER_WAIT)
    return None


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """Every HTTP answer goes through here once; the table in the tests pins it down."""
    if 200 <= status < 300:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return Answer(
                Verdict.FAIL, status, f"HTTP {status} but not JSON: {describe_body(body)}"
            )
        if isinstance(obj, dict) and obj.get("status") is True:
            data = obj.get("data")
            return Answer(
                Verdict.LINKED, status, "", data if isinstance(data, dict) else None, body
            )
        message = describe_body(body) if isinstance(obj, dict) else "unexpected JSON"
        return Answer(Verdict.FAIL, status, f"HTTP {status} status false: {message}")
    message = describe_body(body)
    error = f"HTTP {status} {message}".rstrip()
    if status in (401, 403):
        return Answer(Verdict.ABORT, status, error)
    if status == 429:
        return Answer(Verdict.RETRY, status, error, wait=server_wait(headers))
    if status == 408 or status >= 500:
        return Answer(Verdict.RETRY, status, error, wait=server_wait(headers, rate_limited=False))
    return Answer(Verdict.FAIL, status, error)


def classify_exception(exc: BaseException, timeout: float) -> Answer:
    """Transport failures, most specific first; all of them are worth another try."""
    if isinstance(exc, asyncio.TimeoutError):
        return Answer(Verdict.RETRY, None, f"timeout after {timeout:g}s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Answer(Verdict.RETRY, None, "connection broke while reading the answer")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Answer(Verdict.RETRY, None, "server closed the connection")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Answer(Verdict.RETRY, None, f"cannot connect: {exc.os_error.strerror or exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Answer(Verdict.RETRY, None, f"connection error: {type(exc).__name__}")
    raise exc


class Client:
    """Owns the run's single ``aiohttp.ClientSession``; use as ``async with``."""

    def __init__(
        self, base_url: str, auth: Auth, *, timeout: float = 30.0, max_connections: int = 256
    ) -> None:
        base = base_url.rstrip("/")
        if not re.match(r"^https?://[^/\s]+", base):
            raise UsageError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.url = base + LINK_PATH
        self.auth = auth
        self.timeout = timeout
        self._max_connections = max_connections
        self._secrets = [
            secret.encode() for secret in (auth.token, auth.api_key) if secret and len(secret) >= 4
        ]
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.auth.headers(),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),  # the API authenticates by header
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def link(self, source: str, linked: str) -> Answer:
        """One PATCH; never raises for anything the network or the server can do."""
        assert self._session is not None, "use Client as 'async with'"
        payload = json.dumps({"sourceTicketId": source, "linkedTicketId": linked}).encode()
        try:
            async with self._session.patch(self.url, data=payload) as resp:
                body = await resp.read()
                for secret in self._secrets:  # a server that echoes the credential back
                    if secret in body:
                        body = body.replace(secret, b"***")
                return classify(resp.status, resp.headers, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return classify_exception(exc, self.timeout)
