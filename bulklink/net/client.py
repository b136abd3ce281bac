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
import math
import platform
import re
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from bulklink.models import VERSION
from bulklink.net.connection import secrets_redactor
from bulklink.net.credentials import Auth
from bulklink.net.proxy import Proxies, Route, resolve_proxies
from bulklink.net.tls import Trust, resolve_trust, tls_failure
from bulklink.options import ConnectionOptions
from bulklink.text import answer_json, compact_json
from bulklink.urls import LINK_PATH, check_url, host_of

MAX_SERVER_WAIT = 300.0  # seconds; a longer Retry-After is capped so a nightly run still ends
MAX_RESET_AHEAD = 86_400.0  # seconds; a budget's reset further ahead is not believed
MAX_ANSWER = 8 * 1024 * 1024  # decompressed bytes; a ticket is about 2 KB
TOO_LARGE = "answer larger than 8 MB"
USER_AGENT = (
    f"bulklink/{VERSION} (aiohttp/{aiohttp.__version__}; python/{platform.python_version()})"
)
_CHUNK = 64 * 1024
_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Seconds as HTTP and Thena write them: ASCII digits only ('²'.isdigit() is true), no sign,
# no exponent, no 'nan' or 'inf' (all of which float() accepts).
_SECONDS = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?", re.ASCII)


class Verdict(enum.Enum):
    LINKED = "linked"
    RETRY = "retry"  # transient: 5xx, 408, 429, timeout, connection error
    FAIL = "fail"  # the row cannot succeed as sent: other 4xx, 2xx without status true
    ABORT = "abort"  # 401: no row can succeed with these credentials
    # 403: no access to this ticket, or wrong credentials; the runner tells them apart by
    # whether the same credentials have linked anything yet.
    FORBIDDEN = "forbidden"
    # 3xx, never followed (a redirect to another origin would carry the key there): the
    # row fails, and a run whose first answers are all redirects has the wrong base URL.
    REDIRECT = "redirect"
    # No row can succeed and a person must act: the server's certificate or the TLS
    # handshake failed, or the proxy refused us (407). The run stops, as on a 401.
    HALT = "halt"


#: The scopes of Thena's rate-limit headers: ``X-RateLimit-Limit`` and its variants
#: ``X-RateLimit-Limit-OrgID`` and so on, each with its own ``Remaining-*`` and ``Reset-*``.
BUDGET_SCOPES = ("", "IP", "UserID", "OrgID", "Path")
_BUDGET_HEADERS = tuple(
    tuple(
        f"X-RateLimit-{part}{'-' + scope if scope else ''}"
        for part in ("Limit", "Remaining", "Reset")
    )
    for scope in BUDGET_SCOPES
)


class Budget(NamedTuple):
    """One budget an answer advertised: ``limit`` requests a window, ``remaining`` of them
    left until ``reset`` (UNIX seconds). ``scope`` is "" for the plain headers."""

    scope: str
    limit: int
    remaining: int
    reset: float


def read_budgets(headers: Mapping[str, str], now: float | None = None) -> tuple[Budget, ...]:
    """Every complete, well-formed budget in an answer's headers; garbage is ignored.

    Reset is UNIX seconds, as Thena documents; a small value is read as seconds from now
    (as :func:`server_wait` does).
    """
    budgets = []
    for scope, (limit_name, remaining_name, reset_name) in zip(
        BUDGET_SCOPES, _BUDGET_HEADERS, strict=True
    ):
        limit = headers.get(limit_name)
        if limit is None:
            continue
        numbers = [
            _seconds(limit),
            _seconds(headers.get(remaining_name)),
            _seconds(headers.get(reset_name)),
        ]
        if None in numbers:
            continue
        most, left, reset = numbers
        assert most is not None and left is not None and reset is not None
        if most < 1 or most != int(most) or left != int(left):
            continue
        now = time.time() if now is None else now
        if reset <= 1e9:
            reset += now
        # A reset not ahead (0, a clock behind ours) tells no pace, and one more than a
        # day ahead is a wrong unit (milliseconds) or garbage: either would pace by
        # nothing or flood, so it is ignored like any other garbage.
        if not now < reset <= now + MAX_RESET_AHEAD:
            continue
        budgets.append(Budget(scope, int(most), min(int(left), int(most)), reset))
    return tuple(budgets)


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
    budgets: tuple[Budget, ...] = ()  # the rate-limit headers, for --rate auto

    @property
    def throttled(self) -> bool:
        return self.http_status == 429


def _as_is(text: str) -> str:
    return text


#: Levels of lists and objects a ticket's value may nest (a real one nests three or four);
#: deeper ones are kept as a note, since writing them out again would recurse past Python's
#: limit in the writers and the journal.
MAX_NESTING = 32
TOO_DEEP = f"(nested more than {MAX_NESTING} levels deep: not kept)"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (no recursion)."""
    level = [value]
    for _ in range(limit + 1):
        level = [
            item
            for node in level
            if isinstance(node, dict | list)
            for item in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return True


def _flattened(ticket: dict[str, Any], limit: int) -> dict[str, Any]:
    """The ticket with each value that nests too deeply replaced by :data:`TOO_DEEP`."""
    return {
        key: TOO_DEEP if _deeper_than(value, limit - 1) else value for key, value in ticket.items()
    }


def describe_body(body: bytes, redact: Callable[[str], str] = _as_is) -> str:
    """The server's message from a NestJS error body, or a short excerpt of anything else.

    ``redact`` runs before an excerpt is cut: a secret cut in two is in no spelling the
    redactor knows.
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = _TAGS.sub(" ", body[:4000].decode("utf-8", "replace"))
        text = redact(_SPACE.sub(" ", text).strip())
        return text[:200] + ("..." if len(text) > 200 else "")
    if isinstance(obj, dict):
        message = obj.get("message") or obj.get("error") or obj.get("detail")
        if isinstance(message, list):
            return "; ".join(str(m) for m in message)
        if message is not None:
            return str(message)
    return redact(_SPACE.sub(" ", json.dumps(obj)))[:200]


def _seconds(value: str | None) -> float | None:
    """A non-negative decimal in ASCII digits, else None (garbage is ignored, not fatal)."""
    if value is None or not _SECONDS.fullmatch(value := value.strip()):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) else None


def _http_date(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return when if math.isfinite(when) else None


def server_wait(
    headers: Mapping[str, str], now: float | None = None, *, rate_limited: bool = True
) -> float | None:
    """Seconds the server asks us to wait: Retry-After first, then X-RateLimit-Reset.

    Total: any header value, however odd (``²``, ``-1``, ``nan``, ``1e309``, a date in
    year 99999), gives a wait in [0, MAX_SERVER_WAIT] or None (ignored). The reset time
    only means something on a 429 (``rate_limited``): on a 503 it is just the end of the
    current rate window, not advice about the outage.
    """
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after:
        seconds = _seconds(retry_after)
        if seconds is not None:
            return min(seconds, MAX_SERVER_WAIT)
        when = _http_date(retry_after)
        if when is not None:
            return min(max(when - now, 0.0), MAX_SERVER_WAIT)
    stamp = _seconds(headers.get("X-RateLimit-Reset")) if rate_limited else None
    if stamp is None:
        return None
    # Thena documents UNIX seconds; small values are read as seconds from now.
    delta = stamp - now if stamp > 1e9 else stamp
    return min(max(delta, 0.0), MAX_SERVER_WAIT)


def _redirect(
    status: int, headers: Mapping[str, str], url: str, redact: Callable[[str], str]
) -> Answer:
    """A 3xx, not followed: say where it points, and what --base-url that would mean
    (redacted before it is cut short)."""
    location = (headers.get("Location") or "").strip()
    if not location:
        return Answer(
            Verdict.REDIRECT,
            status,
            f"HTTP {status} redirect without a Location: check --base-url",
        )
    try:
        target = urljoin(url, location) if url else location  # a relative Location
        parts = urlsplit(target)
    except ValueError:
        target, parts = location, None
    target = redact(target)
    shown = target if len(target) <= 300 else target[:300] + "..."
    hint = "check --base-url"
    if (
        parts is not None
        and parts.scheme in ("http", "https")
        and parts.path.rstrip("/").endswith(LINK_PATH)
        and not parts.query
    ):
        hint = f"set --base-url to {target.rstrip('/')[: -len(LINK_PATH)]}"
        hint = hint if len(hint) <= 330 else "set --base-url to it"
    return Answer(Verdict.REDIRECT, status, f"HTTP {status}: the API redirected to {shown}: {hint}")


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    url: str = "",
    redact: Callable[[str], str] = _as_is,
) -> Answer:
    """Every HTTP answer goes through here once; the table in the tests pins it down.

    ``url`` is the request's, to resolve a relative ``Location``; ``redact`` is applied
    to what the server said before any of it is cut short.
    """
    if 200 <= status < 300:
        try:
            obj = answer_json(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return Answer(
                Verdict.FAIL, status, f"HTTP {status} but not JSON: {describe_body(body, redact)}"
            )
        if isinstance(obj, dict) and obj.get("status") is True:
            data = obj.get("data")
            ticket = data if isinstance(data, dict) else None
            opened = body.count(b"[") + body.count(b"{")  # bounds the depth, at C speed
            if ticket is not None and opened > MAX_NESTING and _deeper_than(ticket, MAX_NESTING):
                # Linked all the same; what no report cell or journal line can hold
                # again (encoding recurses) is kept as a note, and the line holds that.
                ticket = _flattened(ticket, MAX_NESTING)
                body = json.dumps({"status": True, "data": ticket}).encode()
            return Answer(Verdict.LINKED, status, "", ticket, body)
        message = describe_body(body, redact) if isinstance(obj, dict) else "unexpected JSON"
        return Answer(Verdict.FAIL, status, f"HTTP {status} status false: {message}")
    if 300 <= status < 400:
        return _redirect(status, headers, url, redact)
    message = describe_body(body, redact)
    error = f"HTTP {status} {message}".rstrip()
    if status == 401:
        return Answer(Verdict.ABORT, status, error)
    if status == 403:
        return Answer(Verdict.FORBIDDEN, status, error)
    if status == 429:
        return Answer(Verdict.RETRY, status, error, wait=server_wait(headers))
    if status == 408 or status >= 500:
        return Answer(Verdict.RETRY, status, error, wait=server_wait(headers, rate_limited=False))
    return Answer(Verdict.FAIL, status, error)


def proxy_refused(route: Route, status: int = 407) -> Answer:
    """A 407 (or the 401 some proxies send, tinyproxy among them): the proxy wants
    credentials, or other ones; a 403: it will not connect to the API's host. Every
    request would get the same, and each retry would be one more failed login for the
    proxy's account (a lockout), so the run stops."""
    if status == 403:
        said = "it refuses to connect to the API's host: check its rules for it"
    elif route.user:
        said = f"it refused the credentials in {route.source}"
    else:
        said = f"it asks for credentials: none in {route.source}"
    return Answer(Verdict.HALT, status, f"HTTP {status} from the proxy {route.host}: {said}")


def classify_exception(
    exc: BaseException,
    timeout: float,
    *,
    host: str = "",
    trust: Trust | None = None,
    route: Route | None = None,
    redact: Callable[[str], str] = _as_is,
) -> Answer:
    """Transport failures, most specific first: TLS failures and a proxy's 407 stop the
    run (they would fail the same way every night); the rest are worth another try.
    ``redact`` is applied to what the server sent before it is cut short."""
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLCertVerificationError):
        return Answer(Verdict.HALT, None, tls_failure(exc, host, trust or Trust()))
    if route is not None and (answer := _proxy_failure(exc, route)) is not None:
        return answer
    if isinstance(exc, asyncio.TimeoutError):
        return Answer(Verdict.RETRY, None, f"timeout after {timeout:g}s")
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(
        exc.__cause__, HttpProcessingError
    ):  # a header past aiohttp's limit, a broken chunked body: the same would come back
        what = str(exc.__cause__.message).splitlines()[0] if exc.__cause__.message else ""
        return Answer(Verdict.FAIL, None, f"malformed answer: {_clip(redact(what), 120)}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Answer(Verdict.RETRY, None, "connection broke while reading the answer")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Answer(Verdict.RETRY, None, "server closed the connection")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Answer(Verdict.RETRY, None, f"cannot connect: {exc.os_error.strerror or exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Answer(Verdict.RETRY, None, f"connection error: {type(exc).__name__}")
    raise exc


def _proxy_failure(exc: BaseException, route: Route) -> Answer | None:
    """What the proxy did, when it was the proxy: a refusal stops the run, the rest retry."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status in (401, 403, 407):
            return proxy_refused(route, exc.status)
        return Answer(Verdict.RETRY, None, f"the proxy {route.host} answered HTTP {exc.status}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        why = exc.os_error.strerror or exc
        return Answer(Verdict.RETRY, None, f"cannot connect to the proxy {route.host}: {why}")
    return None


def _clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Inflater:
    """Content-Encoding undone by hand, so that no answer can inflate past MAX_ANSWER.

    aiohttp before 3.12 inflates each chunk off the wire whole: 64 KB of a gzip bomb made
    64 MB. Here every step asks zlib for at most what is left of the cap.
    """

    def __init__(self, coding: str) -> None:
        self.gzip = coding in ("gzip", "x-gzip")
        self._zlib: Any = None  # decided by the first bytes: zlib-wrapped or raw deflate
        self._done = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Up to ``room`` more bytes of plain body; zlib.error when the data is corrupt."""
        out = b""
        while data and room > len(out) and not self._done:
            if self._zlib is None:
                wbits = 31 if self.gzip else 15 if _zlib_header(data) else -15
                self._zlib = zlib.decompressobj(wbits)
            before = len(data)
            piece = self._zlib.decompress(data, room - len(out))
            out += piece
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:  # a gzip body may hold several members; deflate ends here
                data = self._zlib.unused_data
                self._zlib = None
                self._done = not self.gzip
            elif not piece and len(data) >= before:
                break  # no progress: never spin
        return out

    @property
    def truncated(self) -> bool:
        """A compressed stream was begun and not ended: the body is cut short or corrupt."""
        return self._zlib is not None


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


async def read_capped(resp: aiohttp.ClientResponse) -> bytes | str:
    """The decoded body, or why not (too large, an encoding not asked for, corrupt)."""
    sent = (resp.headers.get("Content-Encoding") or "").strip()
    coding = sent.lower()
    if coding in ("", "identity"):
        length = resp.content_length
        if length is not None and length <= MAX_ANSWER:
            return await resp.read()  # the usual case, bounded by Content-Length
        if length is not None:
            return TOO_LARGE
        inflater = None
    elif coding in ("gzip", "x-gzip", "deflate"):
        inflater = _Inflater(coding)
    else:
        # Whole and as sent: the caller redacts the message before cutting it (a header
        # may echo a secret, which lower-cased is in no spelling the redactor knows).
        return f"answer encoded as {sent!r}, which bulklink did not ask for"
    body = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            room = MAX_ANSWER + 1 - len(body)
            body += inflater.feed(chunk, room) if inflater is not None else chunk[:room]
            if len(body) > MAX_ANSWER:
                return TOO_LARGE
    except zlib.error:
        return f"the answer's {coding} data is corrupt"
    if inflater is not None and inflater.truncated:
        return f"the answer's {coding} data is corrupt"
    return bytes(body)


def as_utf8(body: bytes, charset: str | None) -> bytes:
    """An answer in UTF-8, which the redactor, the parser and the journal work on: JSON in
    UTF-16 or UTF-32 (a byte-order mark, or JSON's pattern of NULs), or a body that is no
    UTF-8 in the charset its Content-Type names (a gateway's Latin-1). A secret echoed in
    UTF-16 is in no UTF-8 spelling the redactor looks for; a body that decodes as neither
    is left as it came."""
    encoding: str = json.detect_encoding(body)
    if encoding.startswith("utf-8"):
        try:
            body.decode(encoding)
            return body
        except UnicodeDecodeError:
            if charset is None:
                return body
            encoding = charset
    try:
        return body.decode(encoding).encode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        return body


def link_body(source: str, linked: str) -> bytes:
    """The PATCH body: compact JSON (no spaces), as bulklink has always sent it."""
    return compact_json({"sourceTicketId": source, "linkedTicketId": linked}).encode()


class Client:
    """Owns the run's single ``aiohttp.ClientSession``; use as ``async with``.

    Redirects are never followed (aiohttp would carry ``x-api-key`` and ``x-org-id`` to
    another origin); answers are read up to MAX_ANSWER decoded bytes; the credentials are
    scrubbed from every answer before it is parsed or stored, in every spelling the
    redactor knows and, for JSON, after decoding; the proxies' credentials too, which a
    proxy's error page may quote.
    """

    def __init__(
        self,
        base_url: str,
        auth: Auth,
        *,
        timeout: float = 30.0,
        max_connections: int = 256,
        allow_http: bool = False,
        proxies: Proxies | None = None,
        trust: Trust | None = None,
        rate_headers: bool = True,
    ) -> None:
        """``proxies`` and ``trust`` None: from the environment, as curl reads it;
        ``rate_headers``: read each answer's rate-limit budgets (only ``--rate auto``
        paces by them)."""
        self.url = check_url(base_url, what="--base-url", allow_http=allow_http) + LINK_PATH
        self.auth = auth
        self.timeout = timeout
        proxies = proxies if proxies is not None else resolve_proxies(ConnectionOptions())
        self.route = proxies.route(self.url)
        self.redact = secrets_redactor(auth, proxies)
        self._via = self.route.request_options(self.url) if self.route else {}
        self._via["headers"] = self.auth.headers() | self._via.get("headers", {})
        self.trust = trust if trust is not None else resolve_trust(ConnectionOptions())
        self.host = host_of(self.url)
        self._max_connections = max_connections
        self._rate_headers = rate_headers
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ssl=self.trust.context()
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Accept-Encoding: what _Inflater undoes. The credentials are no session
            # headers: aiohttp copies those onto a proxy's CONNECT too (the Bearer token
            # as its Proxy-Authorization), so they go with each request (self._via).
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
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
        payload = link_body(source, linked)
        try:
            async with self._session.patch(
                self.url, data=payload, allow_redirects=False, **self._via
            ) as resp:
                status = resp.status
                if 300 <= status < 400:  # its body says nothing we need
                    body: bytes | str = b""
                else:
                    body = await read_capped(resp)
                if isinstance(body, str):  # not retried: the same answer would come back
                    answer = Answer(Verdict.FAIL, status, f"HTTP {status} {body}")
                elif status == 407 and self.route is not None:  # plain http, through it
                    answer = proxy_refused(self.route)
                else:
                    answer = self._classify(resp, status, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            answer = classify_exception(  # may quote what the server sent
                exc,
                self.timeout,
                host=self.host,
                trust=self.trust,
                route=self.route,
                redact=self.redact,
            )
        if answer.error:  # decoded text: a secret echoed in any spelling is caught here
            return answer._replace(error=_clip(self.redact(answer.error)))
        return answer

    def _classify(self, resp: aiohttp.ClientResponse, status: int, body: bytes) -> Answer:
        if not body.isascii() or 0 in body[:2]:  # else UTF-8: the usual answer
            body = as_utf8(body, resp.charset)
        answer = classify(status, resp.headers, self.scrub(body), url=self.url, redact=self.redact)
        budgets = read_budgets(resp.headers) if self._rate_headers else ()
        return answer._replace(budgets=budgets) if budgets else answer

    def scrub(self, body: bytes) -> bytes:
        return self.redact.body(body)
