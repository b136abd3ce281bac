"""A local simulator of Thena's ``PATCH /v1/tickets/link`` endpoint.

It exists so the client can be exercised (tests, demos, benchmarks) without touching a real
Thena org. It deliberately imports nothing from the rest of ``bulklink``: it must not share
the client's bugs. Behaviour follows Thena's public docs (the link endpoint's page and
the API introduction); where they are silent it mimics NestJS defaults, which is what
Thena appears to run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import signal
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "TICKET_FIELDS",
    "Reply",
    "RequestRecord",
    "Sandbox",
    "SandboxConfig",
    "run_forever",
    "serve_in_thread",
]

LINK_PATH = "/v1/tickets/link"

# The documented ticket fields, in the documented order (the server's own copy).
TICKET_FIELDS: tuple[str, ...] = (
    "id", "title", "ticketId", "description", "accountId", "status", "statusId", "priority",
    "priorityId", "storyPoints", "account", "teamId", "teamName", "isPrivate", "typeId", "type",
    "assignedAgent", "assignedAgentId", "assignedAgentEmail", "requestorEmail",
    "customerContactId", "customerContactFirstName", "customerContactLastName",
    "customerContactEmail", "submitterEmail", "customFieldValues", "deletedAt", "archivedAt",
    "createdAt", "updatedAt", "formId", "aiGeneratedTitle", "aiGeneratedSummary",
)  # fmt: skip

FORMULA_TITLE = '=HYPERLINK("http://example.com","click me")'
_JSON_CT = "application/json; charset=utf-8"
_TEXT_CT = "text/plain; charset=utf-8"


@dataclass
class Reply:
    """One scripted answer, to provoke a specific client code path."""

    status: int = 200
    # None = the normal answer for that status; dict is sent as JSON; str/bytes sent raw.
    body: bytes | str | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (to provoke client timeouts)
    drop: bool = False  # close the connection without an answer


@dataclass
class SandboxConfig:
    """How the simulated server behaves; the defaults mirror Thena as documented.

    ``script`` lists are consumed in place (popped as served), so tests can see what is left
    and add replies while the server runs.
    """

    token: str | None = None
    api_key: str | None = None
    org_id: str | None = None
    latency: float = 0.0
    error_rate: float = 0.0
    rate_limit: float = 0.0
    retry_after: bool = False
    #: Budget mode, like the real API's: fixed windows of ``budget_window`` seconds (aligned
    #: to UNIX time) allowing ``budget_limit`` requests per org (0: off), Thena's
    #: ``X-RateLimit-*`` headers on every answer and a 429 beyond the budget. Each of
    #: ``budget_variants`` (``{"OrgID": 30}``) is a budget of its own, with its own
    #: ``X-RateLimit-Limit-OrgID`` ... headers; a request must fit them all.
    budget_limit: int = 0
    budget_window: float = 1.0
    budget_variants: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    unknown_prefix: str = "MISSING"
    script: dict[str, list[Reply]] = field(default_factory=dict)
    record: bool = True
    #: PEM certificate chain and key: serve https (``url`` starts with ``https://``).
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass(frozen=True)
class RequestRecord:
    """What the server saw, so tests can assert on what the client actually sent."""

    t: float  # time.monotonic() at arrival (before any latency)
    wall: float  # time.time() at arrival
    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    status: int  # the status answered; 0 when the connection was dropped

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        return self.headers.get(name.lower())


def _error_body(status: int, message: str | list[str], error: str | None = None) -> bytes:
    """NestJS's default error shape."""
    if error is None:
        error = _phrase(status)
    return json.dumps({"statusCode": status, "message": message, "error": error}).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_UNAUTHORIZED = _error_body(401, "Unauthorized")
_MISSING_ORG = _error_body(401, "Missing x-org-id", "Unauthorized")
_FORBIDDEN = _error_body(403, "Forbidden resource")
_THROTTLED = _error_body(429, "ThrottlerException: Too Many Requests")
_UNAVAILABLE = _error_body(503, "Service Unavailable")
_BAD_JSON = _error_body(400, "Unexpected token in JSON body")
_SELF_LINK = _error_body(400, "Cannot link a ticket to itself")
_CANNED = {401: _UNAUTHORIZED, 403: _FORBIDDEN, 429: _THROTTLED, 503: _UNAVAILABLE}
_NOT_JSON = object()


def _iso(wall: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z, as Thena formats timestamps."""
    seconds, ms = divmod(round(wall * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _ticket(source: str, number: int, tag: str, title: str) -> dict[str, Any]:
    """A full documented ticket (only documented fields); rendered once into _TEMPLATE."""
    return {
        "id": source,
        "title": title,
        "ticketId": number,
        "description": f"Simulated ticket {source}",
        "accountId": f"ACC{tag}",
        "status": "Open",
        "statusId": "STATUS_OPEN",
        "priority": "Medium",
        "priorityId": "PRIORITY_MEDIUM",
        "storyPoints": 3,
        "account": "Acme",
        "teamId": "TEAM_SUPPORT",
        "teamName": "Support",
        "isPrivate": False,
        "typeId": "TYPE_QUESTION",
        "type": "Question",
        "assignedAgent": "Sam Agent",
        "assignedAgentId": "USER_SAM",
        "assignedAgentEmail": "sam.agent@example.com",
        "requestorEmail": "casey@example.com",
        "customerContactId": f"CC{tag}",
        "customerContactFirstName": "Casey",
        "customerContactLastName": "Customer",
        "customerContactEmail": "casey@example.com",
        "submitterEmail": "casey@example.com",
        "customFieldValues": [],
        "deletedAt": None,
        "archivedAt": None,
        "createdAt": "2024-01-01T00:00:00.000Z",
        "updatedAt": "2024-01-01T00:00:00.000Z",
        "formId": "FORM_DEFAULT",
        "aiGeneratedTitle": f"Ticket {source}",
        "aiGeneratedSummary": f"Simulated summary of ticket {source}.",
    }


# The success body is rendered once with markers, then filled per request with str.replace:
# several times cheaper than json.dumps of a 33-field dict on the benchmark hot path.
_M_TIME, _M_SRC, _M_TAG, _M_TITLE, _M_NUM = "\x00T", "\x00S", "\x00A", "\x00L", -987_654_321
_TEMPLATE = json.dumps(
    {
        "status": True,
        "message": "Success",
        "timestamp": _M_TIME,
        "data": _ticket(_M_SRC, _M_NUM, _M_TAG, _M_TITLE),
    }
)


def _esc(text: str) -> str:
    """Text escaped for use inside a JSON string literal."""
    return json.dumps(text)[1:-1]


_E_TIME, _E_SRC, _E_TAG, _E_TITLE = map(_esc, (_M_TIME, _M_SRC, _M_TAG, _M_TITLE))
_PLAIN_TITLE, _FORMULA_TITLE = "Ticket " + _E_SRC, _esc(FORMULA_TITLE)


def success_body(source: str, wall: float) -> bytes:
    """The 200 body, deterministic from the source id apart from the timestamp."""
    h = zlib.crc32(source.encode())
    title = _FORMULA_TITLE if source[:7].upper() == "FORMULA" else _PLAIN_TITLE
    return (
        _TEMPLATE.replace(_E_TIME, _iso(wall))
        .replace(str(_M_NUM), str(h % 100_000 + 1))
        .replace(_E_TAG, f"{h:08X}")
        .replace(_E_TITLE, title)
        .replace(_E_SRC, _esc(source))  # last: the id may contain marker-like text
        .encode()
    )


def _field_errors(data: object) -> list[str]:
    """class-validator style messages for the two required string fields."""
    obj = data if isinstance(data, dict) else {}
    errors: list[str] = []
    for name in ("sourceTicketId", "linkedTicketId"):
        value = obj.get(name)
        if not isinstance(value, str):
            errors.append(f"{name} must be a string")
        if value is None or value == "":
            errors.append(f"{name} should not be empty")
    return errors


class Sandbox:
    """The app plus its state; usable in-process (async) or in a thread (sync tests)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.requests: list[RequestRecord] = []
        self.link_counts: Counter[tuple[str, str]] = Counter()
        self.total = 0
        self.url = ""
        self._rng = random.Random(self.config.seed)
        self._window_start = -1
        self._window_used = 0
        # (org, variant) -> (window start, requests counted in it): shared by all clients
        self._budgets: dict[tuple[str, str], tuple[float, int]] = {}
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """A fresh aiohttp application serving the link endpoint from this sandbox's state."""
        app = web.Application()
        app.router.add_route("PATCH", LINK_PATH, self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) in the running loop; return the base URL."""
        # A short shutdown_timeout: stop() must not wait for scripted long delays.
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        context = self.config.ssl_context()
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://[{host}]:{bound}" if ":" in host else f"{scheme}://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Close the listener and all connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _rate(self, now: float) -> tuple[bool, dict[str, str]]:
        """Fixed-window limiter with Thena's X-RateLimit-* headers.

        Windows are aligned to integer UNIX seconds. Integer rates get a 1 s window allowing
        ``rate`` requests. Fractional rates never allow more than the configured rate: below
        1/s the window grows to ceil(1/rate) seconds with one request; above, the per-second
        allowance is floor(rate) (e.g. 2.5 -> 2/s).
        """
        rate = self.config.rate_limit
        if rate >= 1:
            width, limit = 1, int(rate)
        else:
            width, limit = math.ceil(1 / rate), 1
        start = int(now) // width * width
        if start != self._window_start:
            self._window_start, self._window_used = start, 0
        allowed = self._window_used < limit
        if allowed:
            self._window_used += 1
        reset = start + width
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - self._window_used),
            "X-RateLimit-Reset": str(reset),
        }
        if not allowed and self.config.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
        return allowed, headers

    def _budget(self, org: str, wall: float) -> tuple[bool, dict[str, str]]:
        """Budget mode: every budget's headers; allowed only when each has room (a refused
        request counts against none)."""
        cfg = self.config
        width = cfg.budget_window
        start = math.floor(wall / width) * width
        reset = start + width
        stamp = f"{reset:.0f}" if reset == int(reset) else f"{reset:.3f}"
        budgets = {"": cfg.budget_limit} if cfg.budget_limit > 0 else {}
        budgets.update(cfg.budget_variants)
        used = {}
        for name in budgets:
            began, count = self._budgets.get((org, name), (start, 0))
            used[name] = count if began == start else 0
        allowed = all(used[name] < limit for name, limit in budgets.items())
        headers = {}
        for name, limit in budgets.items():
            count = used[name] + allowed
            self._budgets[org, name] = (start, count)
            tail = f"-{name}" if name else ""
            headers[f"X-RateLimit-Limit{tail}"] = str(limit)
            headers[f"X-RateLimit-Remaining{tail}"] = str(max(0, limit - count))
            headers[f"X-RateLimit-Reset{tail}"] = stamp
        if not allowed and cfg.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(reset - wall)))
        return allowed, headers

    def _auth(self, request: web.Request) -> bytes | None:
        """The error body when authentication fails, else None."""
        cfg = self.config
        hdrs = request.headers
        key = hdrs.get("x-api-key", "")
        auth = hdrs.get("Authorization", "")
        if cfg.token is None and cfg.api_key is None:
            via_key = bool(key)
            via_bearer = auth.startswith("Bearer ") and bool(auth[7:].strip())
        else:
            via_key = cfg.api_key is not None and key == cfg.api_key
            via_bearer = cfg.token is not None and auth == "Bearer " + cfg.token
        if not (via_key or via_bearer):
            return _UNAUTHORIZED
        org = hdrs.get("x-org-id", "")
        if not org and not via_key:
            return _MISSING_ORG
        if org and cfg.org_id is not None and org != cfg.org_id:
            return _FORBIDDEN
        return None

    def _next_reply(self, data: Any) -> Reply | None:
        """Pop the next scripted Reply for this body's sourceTicketId, if any."""
        if not isinstance(data, dict):
            return None
        source = data.get("sourceTicketId")
        replies = self.config.script.get(source) if isinstance(source, str) else None
        return replies.pop(0) if replies else None

    def _scripted(
        self, reply: Reply, data: dict[str, Any], wall: float, rate_headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        """Turn a scripted Reply into status, body and headers."""
        status, body = reply.status, reply.body
        headers = {"Content-Type": _JSON_CT, **rate_headers}
        if body is None:
            if status == 200:
                payload = success_body(str(data.get("sourceTicketId")), wall)
            elif status == 204:
                payload = b""
            else:
                payload = _CANNED.get(status) or _error_body(status, _phrase(status))
            if status == 429 and self.config.retry_after and "Retry-After" not in headers:
                reset = int(rate_headers.get("X-RateLimit-Reset", 0))
                headers["Retry-After"] = str(max(1, math.ceil(reset - wall)))
        elif isinstance(body, dict):
            payload = json.dumps(body).encode()
        else:
            payload = body.encode() if isinstance(body, str) else body
            headers["Content-Type"] = _TEXT_CT
        headers.update(reply.headers)
        return status, payload, headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """The endpoint: decide synchronously, record, then delay and answer."""
        t, wall = time.monotonic(), time.time()
        self.total += 1
        raw = await request.read()
        decision = self._decide(request, raw, wall)
        if self.config.record:
            rec = RequestRecord(
                t, wall, request.method, request.path,
                {k.lower(): v for k, v in request.headers.items()}, raw, decision.status,
            )  # fmt: skip
            bisect.insort(self.requests, rec, key=_arrival)
            if decision.link is not None:
                self.link_counts[decision.link] += 1
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.status == 0:  # drop the connection without an answer
            if request.transport is not None:
                request.transport.close()
            # Writing to the closed transport makes aiohttp drop this quietly.
            return web.Response()
        return web.Response(status=decision.status, body=decision.body, headers=decision.headers)

    def _decide(self, request: web.Request, raw: bytes, wall: float) -> _Decision:
        """Auth, rate limit, then a scripted reply, an injected fault or the real link."""
        cfg = self.config
        decision = _Decision(delay=cfg.latency)
        decision.status, decision.body = self._decide_auth_and_rate(request, wall, decision.headers)
        if decision.status != 0:
            return decision
        try:
            data: Any = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            data = _NOT_JSON
        reply = self._next_reply(data) if cfg.script else None
        if reply is not None:
            decision.status, decision.body, decision.headers = self._scripted(
                reply, data, wall, decision.headers
            )
            decision.delay += reply.delay
            src, dst = data.get("sourceTicketId"), data.get("linkedTicketId")
            if reply.drop:
                decision.status = 0
            elif decision.status == 200 and isinstance(dst, str):
                decision.link = (str(src), dst)
        elif cfg.error_rate > 0 and self._rng.random() < cfg.error_rate:
            decision.status, decision.body = 503, _UNAVAILABLE
        else:
            decision.status, decision.body, decision.link = self._link(request, data, wall)
        return decision

    def _decide_auth_and_rate(
        self, request: web.Request, wall: float, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """Steps 1-2: auth, then the rate limit (which adds headers). 0 = carry on."""
        failure = self._auth(request)
        if failure is not None:
            return (403 if failure is _FORBIDDEN else 401), failure
        if self.config.rate_limit > 0:
            allowed, rate_headers = self._rate(wall)
            headers.update(rate_headers)
            if not allowed:
                return 429, _THROTTLED
        if self.config.budget_limit > 0 or self.config.budget_variants:
            org = request.headers.get("x-org-id") or request.headers.get("x-api-key") or ""
            allowed, rate_headers = self._budget(org, wall)
            headers.update(rate_headers)
            if not allowed:
                return 429, _THROTTLED
        return 0, b""

    def _link(
        self, request: web.Request, data: Any, wall: float
    ) -> tuple[int, bytes, tuple[str, str] | None]:
        """Steps 5-7: validate the body, look the tickets up, link."""
        is_json = request.content_type == "application/json"
        if data is _NOT_JSON and is_json:
            return 400, _BAD_JSON, None
        if not is_json:
            data = None  # NestJS leaves the body empty, so validation fails on both fields
        errors = _field_errors(data)
        if errors:
            return 400, _error_body(400, errors), None
        src: str = data["sourceTicketId"]
        dst: str = data["linkedTicketId"]
        prefix = self.config.unknown_prefix.upper()
        if prefix:
            for ticket in (src, dst):
                if ticket[: len(prefix)].upper() == prefix:
                    return 404, _error_body(404, f"Ticket not found: {ticket}"), None
        if src == dst:
            return 400, _SELF_LINK, None
        return 200, success_body(src, wall), (src, dst)


@dataclass
class _Decision:
    """What to answer one request with; status 0 drops the connection instead."""

    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": _JSON_CT})
    delay: float = 0.0
    link: tuple[str, str] | None = None


def _arrival(record: RequestRecord) -> float:
    return record.t


@contextlib.contextmanager
def serve_in_thread(config: SandboxConfig | None = None) -> Iterator[Sandbox]:
    """Run a Sandbox on 127.0.0.1 (free port) in a daemon thread with its own event loop.

    Yields it started (``url`` set) so synchronous tests can use blocking clients; stops it
    cleanly on exit.
    """
    sandbox = Sandbox(config)
    started = threading.Event()
    failure: list[BaseException] = []
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        try:
            await sandbox.start()
        except BaseException as exc:  # reported to the caller's thread below
            failure.append(exc)
            started.set()
            return
        control.append((asyncio.get_running_loop(), stop))
        started.set()
        try:
            await stop.wait()
        finally:
            await sandbox.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="sandbox", daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join()
        raise failure[0]
    loop, stop = control[0]
    try:
        yield sandbox
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


def run_forever(
    config: SandboxConfig, host: str, port: int, announce: Callable[[str], None]
) -> None:
    """Blocking: serve until SIGINT/SIGTERM (for ``bulklink sandbox``); announce(url) once up."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        sandbox = Sandbox(config)
        url = await sandbox.start(host, port)
        try:
            announce(url)
            await stop.wait()
        finally:
            await sandbox.stop()

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are unsupported
        asyncio.run(main())
