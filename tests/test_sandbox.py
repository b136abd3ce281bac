"""The sandbox must behave like Thena's link endpoint over real HTTP, or client tests lie."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulklink.sandbox import (
    TICKET_FIELDS,
    Reply,
    RequestRecord,
    Sandbox,
    SandboxConfig,
    serve_in_thread,
)

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"Authorization": "Bearer tok", "x-org-id": "org1", "Content-Type": "application/json"}
PAIR = {"sourceTicketId": "CT1", "linkedTicketId": "CT2"}


def call(
    url: str,
    body: Any = PAIR,
    headers: dict[str, str] | None = None,
    method: str = "PATCH",
    timeout: float = 5.0,
    path: str = "/v1/tickets/link",
) -> tuple[int, Message, Any]:
    """One blocking request; returns status, headers and the decoded JSON (or raw bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(method, path, data, GOOD if headers is None else headers)
        resp = conn.getresponse()
        status, msg, raw = resp.status, resp.headers, resp.read()
    finally:
        conn.close()
    try:
        return status, msg, json.loads(raw)
    except ValueError:
        return status, msg, raw


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with serve_in_thread(SandboxConfig(token="tok", org_id="org1")) as sb:
        yield sb


def test_success_body_has_every_documented_field(sandbox: Sandbox) -> None:
    status, hdrs, body = call(sandbox.url)
    assert status == 200
    assert hdrs["Content-Type"].startswith("application/json")
    assert body["status"] is True
    assert body["message"] == "Success"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    assert list(body["data"]) == list(TICKET_FIELDS)
    assert body["data"]["id"] == "CT1"
    assert isinstance(body["data"]["ticketId"], int)
    assert body["data"]["customFieldValues"] == []
    assert sandbox.link_counts == {("CT1", "CT2"): 1}
    assert "X-RateLimit-Limit" not in hdrs
    # Deterministic from the source id.
    assert call(sandbox.url)[2]["data"] == body["data"]
    assert sandbox.link_counts[("CT1", "CT2")] == 2


def test_formula_title_for_csv_injection_demos(sandbox: Sandbox) -> None:
    _, _, body = call(sandbox.url, {"sourceTicketId": "formula-1", "linkedTicketId": "CT2"})
    assert body["data"]["title"] == '=HYPERLINK("http://example.com","click me")'


def test_odd_ids_are_escaped_properly(sandbox: Sandbox) -> None:
    odd = 'CT "quoted" \\ back\\u0000T \u0000S é'  # JSON escapes and the template's markers
    status, _, body = call(sandbox.url, {"sourceTicketId": odd, "linkedTicketId": "CT2"})
    assert status == 200
    assert body["data"]["id"] == odd
    assert body["data"]["title"] == f"Ticket {odd}"


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"x-org-id": "org1"}, 401, "Unauthorized"),
        ({"Authorization": "Bearer nope", "x-org-id": "org1"}, 401, "Unauthorized"),
        ({"Authorization": "tok", "x-org-id": "org1"}, 401, "Unauthorized"),
        ({"x-api-key": "tok", "x-org-id": "org1"}, 401, "Unauthorized"),
        ({"Authorization": "Bearer tok"}, 401, "Missing x-org-id"),
        ({"Authorization": "Bearer tok", "x-org-id": "other"}, 403, "Forbidden resource"),
    ],
)
def test_auth_failures(
    sandbox: Sandbox, headers: dict[str, str], status: int, message: str
) -> None:
    got, _, body = call(sandbox.url, headers={**headers, "Content-Type": "application/json"})
    assert got == status
    assert body["statusCode"] == status
    assert body["message"] == message
    assert body["error"] == ("Forbidden" if status == 403 else "Unauthorized")
    assert not sandbox.link_counts


def test_api_key_needs_no_authorization_or_org() -> None:
    with serve_in_thread(SandboxConfig(token="tok", api_key="key", org_id="org1")) as sb:
        ct = {"Content-Type": "application/json"}
        assert call(sb.url, headers={"x-api-key": "key", **ct})[0] == 200
        assert call(sb.url, headers={"x-api-key": "key", "x-org-id": "org1", **ct})[0] == 200
        assert call(sb.url, headers={"x-api-key": "key", "x-org-id": "x", **ct})[0] == 403
        assert call(sb.url, headers={"x-api-key": "bad", **ct})[0] == 401
        assert call(sb.url)[0] == 200  # the bearer token still works


def test_unconfigured_auth_still_requires_some_credentials() -> None:
    with serve_in_thread() as sb:
        ct = {"Content-Type": "application/json"}
        assert call(sb.url, headers=ct)[0] == 401
        assert call(sb.url, headers={"Authorization": "Bearer ", "x-org-id": "o", **ct})[0] == 401
        assert call(sb.url, headers={"Authorization": "Bearer x", "x-org-id": "o", **ct})[0] == 200
        assert call(sb.url, headers={"x-api-key": "anything", **ct})[0] == 200


@pytest.mark.parametrize(
    ("body", "content_type", "messages"),
    [
        (b"not json", "application/json", None),
        ({"sourceTicketId": "CT1"}, "application/json", ["linkedTicketId must be a string"]),
        ({"sourceTicketId": "", "linkedTicketId": "CT2"}, "application/json", None),
        ({"sourceTicketId": 5, "linkedTicketId": "CT2"}, "application/json", None),
        ([1, 2], "application/json", ["sourceTicketId must be a string"]),
        (PAIR, "text/plain", ["sourceTicketId must be a string"]),
    ],
)
def test_bad_bodies_are_400(
    sandbox: Sandbox, body: Any, content_type: str, messages: list[str] | None
) -> None:
    status, _, got = call(sandbox.url, body, headers={**GOOD, "Content-Type": content_type})
    assert status == 400
    assert got["statusCode"] == 400
    assert got["error"] == "Bad Request"
    if messages is not None:
        assert isinstance(got["message"], list)
        assert set(messages) <= set(got["message"])
    assert not sandbox.link_counts


def test_unknown_tickets_and_self_links(sandbox: Sandbox) -> None:
    for src, dst, bad in [("missing-1", "CT2", "missing-1"), ("CT1", "MISSINGx", "MISSINGx")]:
        status, _, body = call(sandbox.url, {"sourceTicketId": src, "linkedTicketId": dst})
        assert status == 404
        assert body == {
            "statusCode": 404,
            "message": f"Ticket not found: {bad}",
            "error": "Not Found",
        }
    status, _, body = call(sandbox.url, {"sourceTicketId": "CT1", "linkedTicketId": "CT1"})
    assert (status, body["message"]) == (400, "Cannot link a ticket to itself")
    assert not sandbox.link_counts


def test_script_503_503_then_200_then_normal() -> None:
    script = {"CT1": [Reply(503), Reply(503), Reply(200)]}
    with serve_in_thread(SandboxConfig(script=script)) as sb:
        statuses = [call(sb.url)[0] for _ in range(4)]
        assert statuses == [503, 503, 200, 200]
        assert call(sb.url, {"sourceTicketId": "CT9", "linkedTicketId": "CT2"})[0] == 200
        assert sb.link_counts == {("CT1", "CT2"): 2, ("CT9", "CT2"): 1}
        assert [r.status for r in sb.requests] == [503, 503, 200, 200, 200]
        assert script["CT1"] == []


def test_script_custom_bodies_and_headers() -> None:
    script = {
        "CT1": [
            Reply(502, "<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
            Reply(429, {"oops": 1}, {"Retry-After": "7"}),
            Reply(500),
        ]
    }
    with serve_in_thread(SandboxConfig(script=script)) as sb:
        status, hdrs, body = call(sb.url)
        assert (status, hdrs["Content-Type"], body) == (
            502,
            "text/html",
            b"<html>Bad Gateway</html>",
        )
        status, hdrs, body = call(sb.url)
        assert (status, hdrs["Retry-After"], body) == (429, "7", {"oops": 1})
        status, _, body = call(sb.url)
        assert status == 500
        assert body == {
            "statusCode": 500,
            "message": "Internal Server Error",
            "error": "Internal Server Error",
        }
        assert not sb.link_counts


def test_drop_is_a_connection_error(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(SandboxConfig(script={"CT1": [Reply(drop=True)]})) as sb:
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            call(sb.url)
        assert call(sb.url)[0] == 200
        assert [r.status for r in sb.requests] == [0, 200]
        assert sb.link_counts == {("CT1", "CT2"): 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_delay_provokes_a_client_timeout_but_the_link_happened() -> None:
    with serve_in_thread(SandboxConfig(script={"CT1": [Reply(delay=1.0)]})) as sb:
        with pytest.raises(TimeoutError):
            call(sb.url, timeout=0.2)
        assert sb.link_counts == {("CT1", "CT2"): 1}


def _fire_in_one_window(url: str, n: int) -> list[tuple[int, Message, Any]]:
    """n requests inside a single UNIX second (start just after a boundary; retry if slow)."""
    for _ in range(3):
        now = time.time()
        time.sleep(1 - now % 1 + 0.02)
        second = int(time.time())
        results = [call(url) for _ in range(n)]
        if int(time.time()) == second:
            return results
    pytest.fail("could not fit the requests in one second")


@pytest.mark.parametrize("retry_after", [False, True])
def test_rate_limit_429_with_headers(retry_after: bool) -> None:
    with serve_in_thread(SandboxConfig(rate_limit=5, retry_after=retry_after)) as sb:
        results = _fire_in_one_window(sb.url, 6)
        statuses = [s for s, _, _ in results]
        assert statuses[-6:] == [200] * 5 + [429]
        tail = results[-6:]
        reset = int(tail[0][1]["X-RateLimit-Reset"])
        assert reset == int(sb.requests[-1].wall) + 1
        assert [h["X-RateLimit-Remaining"] for _, h, _ in tail] == ["4", "3", "2", "1", "0", "0"]
        assert all(h["X-RateLimit-Limit"] == "5" for _, h, _ in tail)
        _, hdrs, body = tail[-1]
        assert body == {
            "statusCode": 429,
            "message": "ThrottlerException: Too Many Requests",
            "error": "Too Many Requests",
        }
        if retry_after:
            assert hdrs["Retry-After"] == "1"
        else:
            assert "Retry-After" not in hdrs
        assert sb.requests[-1].status == 429


def test_budget_mode_is_per_org_with_variants_and_resets() -> None:
    config = SandboxConfig(budget_limit=4, budget_window=2.0, budget_variants={"OrgID": 3})
    with serve_in_thread(config) as sb:
        other = {**GOOD, "x-org-id": "org_other"}
        results = [*_fire_in_one_window(sb.url, 4), call(sb.url, headers=other)]
        assert [s for s, _, _ in results] == [200, 200, 200, 429, 200]
        plain = [h["X-RateLimit-Remaining"] for _, h, _ in results]
        org = [h["X-RateLimit-Remaining-OrgID"] for _, h, _ in results]
        assert (plain, org) == (["3", "2", "1", "1", "3"], ["2", "1", "0", "0", "2"])
        _, headers, _ = results[0]
        assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Limit-OrgID"]) == ("4", "3")
        reset = int(headers["X-RateLimit-Reset"])
        assert reset % 2 == 0 and 0 < reset - sb.requests[0].wall <= 2
        assert headers["X-RateLimit-Reset-OrgID"] == str(reset)
        time.sleep(reset - time.time() + 0.01)  # the next window starts afresh
        status, headers, _ = call(sb.url)
        assert (status, headers["X-RateLimit-Remaining-OrgID"]) == (200, "2")


@pytest.mark.parametrize(
    ("rate", "limit", "width"), [(5, 5, 1), (2.5, 2, 1), (0.5, 1, 2), (0.3, 1, 4)]
)
def test_fractional_rates_never_exceed_the_rate(rate: float, limit: int, width: int) -> None:
    sb = Sandbox(SandboxConfig(rate_limit=rate))
    start = 1_800_000_000.0  # a multiple of every width here
    results = [sb._rate(start + 0.1 + i * 0.001) for i in range(limit + 1)]
    assert [ok for ok, _ in results] == [True] * limit + [False]
    assert results[0][1]["X-RateLimit-Limit"] == str(limit)
    assert results[0][1]["X-RateLimit-Reset"] == str(int(start) + width)
    assert sb._rate(start + width + 0.1)[0]  # next window


def test_requests_are_recorded_with_lowercase_headers() -> None:
    with serve_in_thread(SandboxConfig(latency=0.05)) as sb:
        t0 = time.monotonic()
        call(sb.url)
        assert time.monotonic() - t0 >= 0.05
        call(sb.url, headers={"Content-Type": "application/json"})
        first, second = sb.requests
        assert isinstance(first, RequestRecord)
        assert (first.method, first.path, first.status) == ("PATCH", "/v1/tickets/link", 200)
        assert first.headers["authorization"] == "Bearer tok"
        assert first.headers["x-org-id"] == "org1"
        assert first.header("X-Org-Id") == "org1"
        assert all(k == k.lower() for k in first.headers)
        assert json.loads(first.body) == PAIR
        assert first.t <= second.t
        assert second.status == 401
        assert sb.total == 2


def test_record_off_keeps_only_the_total() -> None:
    with serve_in_thread(SandboxConfig(record=False)) as sb:
        for _ in range(3):
            assert call(sb.url)[0] == 200
        assert sb.total == 3
        assert sb.requests == []
        assert not sb.link_counts


def test_error_rate_is_seeded() -> None:
    def run() -> list[int]:
        with serve_in_thread(SandboxConfig(error_rate=0.5, seed=7)) as sb:
            return [call(sb.url)[0] for _ in range(20)]

    first = run()
    assert set(first) == {200, 503}
    assert run() == first
    with serve_in_thread(SandboxConfig(error_rate=1.0)) as sb:
        status, _, body = call(sb.url)
        assert (status, body["message"]) == (503, "Service Unavailable")


def test_other_methods_and_paths(sandbox: Sandbox) -> None:
    assert call(sandbox.url, method="POST")[0] == 405
    assert call(sandbox.url, method="GET", path="/v1/nope")[0] == 404


def test_in_process_async_with_aiohttp_client() -> None:
    async def main() -> None:
        config = SandboxConfig(token="tok", script={"CT1": [Reply(drop=True)]})
        async with Sandbox(config) as sb, aiohttp.ClientSession() as session:
            assert sb.url.startswith("http://127.0.0.1:")
            url = sb.url + "/v1/tickets/link"
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.patch(url, json=PAIR, headers=GOOD) as resp:
                    await resp.read()
            async with session.patch(url, json=PAIR, headers=GOOD) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"]["id"] == "CT1"

    asyncio.run(main())


@pytest.mark.slow
def test_run_forever_stops_on_sigterm() -> None:
    code = (
        "from bulklink.sandbox import SandboxConfig, run_forever\n"
        "run_forever(SandboxConfig(), '127.0.0.1', 0, lambda u: print(u, flush=True))\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        try:
            headers = {"x-api-key": "k", "Content-Type": "application/json"}
            assert call(url, headers=headers)[0] == 200
        finally:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.strip() == "stopped"
