"""The one classifier of answers: the status, body and header tables as unit tests, then
what a run does with redirects and answers too large to hold, against servers on
127.0.0.1 that misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from bulklink.net.client import (
    MAX_SERVER_WAIT,
    Client,
    Verdict,
    classify,
    server_wait,
)
from bulklink.net.credentials import resolve_auth
from bulklink.options import ConnectionOptions
from bulklink.sandbox import Reply, Sandbox
from tests import helpers as h

# -- status, body and header tables -----------------------------------------------------------


TICKET = {"id": "T1", "title": "Ticket T1", "ticketId": 7, "customFieldValues": []}


def jbytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def nest(status: int, message: str) -> bytes:
    """A NestJS-style error body."""
    return jbytes({"statusCode": status, "message": message, "error": "Error"})


@pytest.mark.parametrize(
    ("status", "body", "verdict", "needles"),
    [
        pytest.param(
            200,
            jbytes({"status": True, "message": "Success", "timestamp": "x", "data": TICKET}),
            Verdict.LINKED,
            [],
            id="200-status-true",
        ),
        pytest.param(200, b"<html>down for maintenance</html>", Verdict.FAIL,
                     ["down for maintenance"], id="200-not-json"),
        pytest.param(
            200,
            jbytes({"status": False, "message": "Link rejected by workflow", "data": None}),
            Verdict.FAIL,
            ["Link rejected by workflow"],
            id="200-status-false",
        ),
        pytest.param(400, jbytes(h.NEST_400), Verdict.FAIL, h.NEST_400["message"], id="400-list"),
        pytest.param(404, jbytes(h.NEST_404), Verdict.FAIL, ["Ticket not found: T9"], id="404"),
        pytest.param(409, jbytes(h.NEST_409), Verdict.FAIL, ["already linked"], id="409"),
        pytest.param(422, jbytes(h.NEST_422), Verdict.FAIL, ["is archived"], id="422"),
        pytest.param(401, nest(401, "Unauthorized"), Verdict.ABORT, [], id="401"),
        pytest.param(403, nest(403, "Forbidden resource"), Verdict.FORBIDDEN, [], id="403"),
        pytest.param(408, b"", Verdict.RETRY, [], id="408"),
        pytest.param(429, nest(429, "Too Many Requests"), Verdict.RETRY, [], id="429"),
        pytest.param(500, nest(500, "Internal server error"), Verdict.RETRY, [], id="500"),
        pytest.param(502, h.NGINX_502.encode(), Verdict.RETRY, ["502 Bad Gateway"], id="502"),
        pytest.param(503, nest(503, "Service Unavailable"), Verdict.RETRY, [], id="503"),
        pytest.param(504, b"Gateway Timeout", Verdict.RETRY, [], id="504"),
    ],
)  # fmt: skip
def test_classify(status: int, body: bytes, verdict: Verdict, needles: list[str]) -> None:
    answer = classify(status, CIMultiDict({"content-type": "application/json"}), body)
    assert answer.verdict is verdict
    assert answer.http_status == status
    for needle in needles:
        assert needle in answer.error
    if verdict is Verdict.LINKED:
        assert answer.ticket == TICKET
        assert answer.error == ""
    else:
        assert answer.ticket is None
        assert answer.error  # every failure says something


def test_classify_html_502_is_a_short_text() -> None:
    answer = classify(502, CIMultiDict({"content-type": "text/html"}), h.NGINX_502.encode())
    assert "502 Bad Gateway" in answer.error
    assert "<" not in answer.error and "\n" not in answer.error
    assert len(answer.error) <= 300


def _http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(lambda: {"retry-after": "7"}, 7.0, id="retry-after-seconds"),
        pytest.param(lambda: {"retry-after": _http_date(20)}, 20.0, id="retry-after-date"),
        pytest.param(
            lambda: {
                "x-ratelimit-limit": "100",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(int(time.time()) + 12),
            },
            12.0,
            id="x-ratelimit-reset-unix-seconds",
        ),
        pytest.param(
            lambda: {"retry-after": "3", "x-ratelimit-reset": str(int(time.time()) + 40)},
            3.0,
            id="retry-after-wins",
        ),
    ],
)
def test_classify_429_wait(headers: Callable[[], dict[str, str]], expected: float) -> None:
    body = jbytes({"statusCode": 429, "message": "ThrottlerException: Too Many Requests"})
    answer = classify(429, CIMultiDict(headers()), body)
    assert answer.verdict is Verdict.RETRY
    assert answer.wait is not None
    assert expected - 1.5 <= answer.wait <= expected + 0.5


def test_classify_503_ignores_the_rate_window_but_honours_retry_after() -> None:
    """A 503's X-RateLimit-Reset is the end of a rate window, not advice about the outage."""
    reset = {"x-ratelimit-reset": str(int(time.time()) + 40)}
    body = jbytes({"statusCode": 503, "message": "Service Unavailable"})
    assert classify(503, CIMultiDict(reset), body).wait is None
    answer = classify(503, CIMultiDict({**reset, "retry-after": "2"}), body)
    assert answer.verdict is Verdict.RETRY
    assert answer.wait == 2.0


def test_classify_tells_401_from_403() -> None:
    assert classify(401, {}, b"{}").verdict is Verdict.ABORT
    assert classify(403, {}, b"{}").verdict is Verdict.FORBIDDEN


def test_nothing_any_server_said_crashes_a_json_parse() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert classify(404, {}, deep).verdict is Verdict.FAIL
    assert classify(200, {}, deep).verdict is Verdict.FAIL


@pytest.mark.parametrize("depth", [10, 900, 990, 5000])
def test_a_deeply_nested_answer_is_scrubbed_or_refused(depth: int) -> None:
    client = Client(
        "https://api.example", resolve_auth(ConnectionOptions(token=h.ODD_TOKEN, org_id=h.ORG))
    )
    echo = "".join(f"\\u{ord(c):04x}" for c in h.ODD_TOKEN)
    body = ("[" * depth + f'"{echo}"' + "]" * depth).encode()
    scrubbed = client.scrub(body)
    assert h.ODD_TOKEN not in scrubbed.decode() and echo not in scrubbed.decode()
    answer = classify(404, {}, scrubbed)
    assert answer.verdict is Verdict.FAIL and h.ODD_TOKEN not in answer.error


# -- odd wait headers are ignored, never fatal ------------------------------------------------


@pytest.mark.parametrize("value", h.ODD_SECONDS)
def test_server_wait_is_total(value: str) -> None:
    for name in ("Retry-After", "X-RateLimit-Reset"):
        for limited in (True, False):
            wait = server_wait({name: value}, rate_limited=limited)
            assert wait is None or 0.0 <= wait <= MAX_SERVER_WAIT, (name, wait)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "²"}, None),
        ({"Retry-After": "nan", "X-RateLimit-Reset": "4"}, 4.0),
        ({"Retry-After": "12345678901234567890"}, MAX_SERVER_WAIT),  # huge: capped
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": " 7 "}, 7.0),
        ({"X-RateLimit-Reset": "1e309"}, None),
        ({"X-RateLimit-Reset": "-5"}, None),
        ({"X-RateLimit-Reset": "99999999999999999999"}, MAX_SERVER_WAIT),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0),  # in the past
    ],
)
def test_server_wait_ignores_nonsense_and_caps_the_huge(
    headers: dict[str, str], expected: float | None
) -> None:
    assert server_wait(headers, now=1_700_000_000.0) == expected


# -- redirects are never followed -------------------------------------------------------------


LINK = "/v1/tickets/link"


def sources(server: Sandbox) -> list[str]:
    return [str(json.loads(r.body)["sourceTicketId"]) for r in server.requests]


@dataclass
class Hostile:
    """A server on 127.0.0.1 in a thread; ``hits`` records every request, any method/path."""

    url: str
    hits: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def hostile(handler: Handler) -> Iterator[Hostile]:
    server = Hostile("")

    async def record(request: web.Request) -> web.StreamResponse:
        server.hits.append((request.method, request.path_qs, dict(request.headers)))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    thread = threading.Thread(target=loop.run_forever, name="hostile", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def linked_ok(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"status": True, "message": "Success", "data": {"id": "X"}})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("form", ["absolute", "scheme-relative"])
def test_a_redirect_to_another_origin_is_never_followed_and_stops_the_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, status: int, form: str
) -> None:
    with hostile(linked_ok) as other:
        target = other.url + LINK
        location = target if form == "absolute" else target.removeprefix("http:")
        n = 12
        script = {
            f"T{i:05d}": [Reply(status, headers={"Location": location})] for i in range(1, n + 1)
        }
        server = start_sandbox(script=script)
        out = tmp_path / "out.csv"
        result = h.run_against(
            server, "run", h.pairs_csv(tmp_path / "in.csv", n), "-o", out,
            "--rate", "0", "--concurrency", "2", *h.FAST,
        )  # fmt: skip
        assert other.hits == []  # not one request, with or without the key
    assert result.exit_code == 1, result.stderr
    rows = h.read_report(out)
    sent = set(sources(server))
    assert 3 <= len(sent) <= 4  # stops after 3 redirects; one more may be in flight
    for row in rows:
        if row["sourceTicketId"] in sent:
            assert row["outcome"] == "failed" and row["attempts"] == "1", row
            assert row["http_status"] == str(status)
            assert f"the API redirected to {target}: set --base-url to {other.url}" in row["error"]
        else:
            assert row["outcome"] == "skipped" and row["attempts"] == "0", row
            assert "redirects" in row["error"] and "--base-url" in row["error"]
    assert f"the API redirected to {target}" in result.stderr


def test_a_redirect_after_successes_fails_only_its_row(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    with hostile(linked_ok) as other:
        script = {"T00005": [Reply(307, headers={"Location": other.url + LINK})]}
        server = start_sandbox(script=script)
        out = tmp_path / "out.csv"
        result = h.run_against(
            server, "run", h.pairs_csv(tmp_path / "in.csv", 10), "-o", out,
            "--rate", "0", "--concurrency", "1", *h.FAST,
        )  # fmt: skip
        assert other.hits == []
    assert result.exit_code == 1, result.stderr
    outcomes = [r["outcome"] for r in h.read_report(out)]
    assert outcomes == ["linked"] * 4 + ["failed"] + ["linked"] * 5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"Location": "https://other.example/v1/tickets/link"},
                     "the API redirected to https://other.example/v1/tickets/link: "
                     "set --base-url to https://other.example", id="absolute"),
        pytest.param({"Location": "/api/v1/tickets/link"},
                     "the API redirected to https://api.example/api/v1/tickets/link: "
                     "set --base-url to https://api.example/api", id="relative-path"),
        pytest.param({"Location": "//other.example/v1/tickets/link"},
                     "redirected to https://other.example/v1/tickets/link", id="scheme-relative"),
        pytest.param({"Location": "https://other.example/login?next=/"},
                     "redirected to https://other.example/login?next=/: check --base-url",
                     id="elsewhere"),
        pytest.param({}, "redirect without a Location: check --base-url", id="no-location"),
        pytest.param({"Location": "   "}, "redirect without a Location", id="blank-location"),
        pytest.param({"Location": "http://[::1"}, "redirected to http://[::1", id="unparsable"),
    ],
)  # fmt: skip
def test_classify_names_where_a_redirect_points(headers: dict[str, str], expected: str) -> None:
    answer = classify(307, headers, b"", url="https://api.example/v1/tickets/link")
    assert answer.verdict is Verdict.REDIRECT
    assert expected in answer.error


# -- answers too large to hold ----------------------------------------------------------------


BOMB_MB = 300


@cache
def _deflate_zeros(megabytes: int) -> bytes:
    """A raw deflate stream of ``megabytes`` MiB of zeros, about 1 KB per MiB.

    After a full flush the compressor starts afresh, so one compressed MiB repeats.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return piece * megabytes + compressor.flush()


def _checksums(megabytes: int) -> tuple[int, int]:
    crc, adler, zeros = 0, 1, bytes(1 << 20)
    for _ in range(megabytes):
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    return crc, adler


@cache
def bomb(kind: str, megabytes: int = BOMB_MB) -> bytes:
    raw = _deflate_zeros(megabytes)
    if kind == "deflate-raw":
        return raw
    crc, adler = _checksums(megabytes)
    if kind == "deflate":
        return b"\x78\xda" + raw + struct.pack(">I", adler)
    size = (megabytes << 20) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", crc, size)


@cache
def gzip_members(megabytes: int = BOMB_MB) -> bytes:
    """Many small gzip members, one MiB each: gzip -d inflates them all."""
    one = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = one.compress(bytes(1 << 20)) + one.flush()
    return member * megabytes


def test_the_bombs_are_real() -> None:
    for kind, wbits in (("gzip", 31), ("deflate", 15), ("deflate-raw", -15)):
        data = bomb(kind)
        assert len(data) < 400_000
        inflater = zlib.decompressobj(wbits)
        assert len(inflater.decompress(data, 9 << 20)) == 9 << 20  # and it goes on
        assert 0 < len(inflater.unconsumed_tail) < len(data)
    assert len(gzip_members()) < 400_000


BIG_ANSWERS = {
    "gzip": Reply(200, bomb("gzip"), {"Content-Encoding": "gzip"}),
    "x-gzip": Reply(200, bomb("gzip"), {"Content-Encoding": "x-gzip"}),
    "gzip-members": Reply(200, gzip_members(), {"Content-Encoding": "gzip"}),
    "deflate": Reply(200, bomb("deflate"), {"Content-Encoding": "deflate"}),
    "deflate-raw": Reply(200, bomb("deflate-raw"), {"Content-Encoding": "deflate"}),
    "gzip-on-a-404": Reply(404, bomb("gzip"), {"Content-Encoding": "gzip"}),
    "gzip-on-a-503": Reply(503, bomb("gzip"), {"Content-Encoding": "gzip"}),
    "plain-9mb": Reply(200, b" " * (9 << 20)),
}


@pytest.mark.parametrize("kind", list(BIG_ANSWERS))
def test_an_answer_larger_than_8_mb_fails_its_row_and_is_not_retried(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, kind: str
) -> None:
    reply = BIG_ANSWERS[kind]
    server = start_sandbox(script={"T00002": [reply] * 3})
    out = tmp_path / "out.csv"
    result = h.run_against(
        server, "run", h.pairs_csv(tmp_path / "in.csv", 3), "-o", out, "--rate", "0", *h.FAST
    )
    assert result.exit_code == 1, result.stderr
    rows = h.read_report(out)
    assert [r["outcome"] for r in rows] == ["linked", "failed", "linked"]
    assert rows[1]["error"] == f"HTTP {reply.status} answer larger than 8 MB"
    assert rows[1]["attempts"] == "1" and rows[1]["http_status"] == str(reply.status)
    assert sources(server).count("T00002") == 1


async def endless(request: web.Request) -> web.StreamResponse:
    """A chunked 200 with no Content-Length that would go on for 64 MB."""
    await request.read()
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(64):
            await response.write(b" " * (1 << 20))
        await response.write_eof()
    return response


async def brotli(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"})


async def corrupt_gzip(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=b"\x1f\x8b\x08\x00garbage!", headers={"Content-Encoding": "gzip"})


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (endless, "HTTP 200 answer larger than 8 MB"),
        (brotli, "HTTP 200 answer encoded as 'br', which bulklink did not ask for"),
        (corrupt_gzip, "HTTP 200 the answer's gzip data is corrupt"),
    ],
)
def test_an_answer_that_cannot_be_read_fails_once(
    tmp_path: Path, handler: Handler, error: str
) -> None:
    with hostile(handler) as server:
        out = tmp_path / "out.csv"
        env = {"THENA_TOKEN": h.TOKEN, "THENA_ORG_ID": h.ORG, "THENA_BASE_URL": server.url}
        result = h.invoke("run", h.pairs_csv(tmp_path / "in.csv", 1), "-o", out, *h.FAST, env=env)
        assert len(server.hits) == 1
    assert result.exit_code == 1, result.stderr
    (row,) = h.read_report(out)
    assert (row["outcome"], row["error"], row["attempts"]) == ("failed", error, "1")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_answer_is_read(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, coding: str
) -> None:
    body = json.dumps({"status": True, "message": "ok", "data": {"id": "X", "title": "zipped"}})
    wbits = 31 if coding == "gzip" else 15
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    packed = compressor.compress(body.encode()) + compressor.flush()
    server = start_sandbox(script={"T00001": [Reply(200, packed, {"Content-Encoding": coding})]})
    out = tmp_path / "out.csv"
    result = h.run_against(server, "run", h.pairs_csv(tmp_path / "in.csv", 1), "-o", out, *h.FAST)
    assert result.exit_code == 0, result.stderr
    assert h.read_report(out)[0]["ticket.title"] == "zipped"
    assert server.requests[0].header("accept-encoding") == "gzip, deflate"


@pytest.mark.slow
def test_memory_stays_bounded_with_bombs_in_flight(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """12 gzip bombs (300 MB each inflated) at once: the whole process peaks under 300 MB."""
    n = 12
    reply = Reply(200, bomb("gzip"), {"Content-Encoding": "gzip"})
    server = start_sandbox(script={f"T{i:05d}": [reply] for i in range(1, n + 1)})
    out = tmp_path / "out.csv"
    code = (
        "import resource, runpy, sys\n"
        "try:\n"
        "    runpy.run_module('bulklink', run_name='__main__')\n"
        "finally:\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    print(f'peak-kb {peak}', file=sys.stderr)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(h.ROOT),
        "THENA_TOKEN": h.TOKEN,
        "THENA_ORG_ID": h.ORG,
        "THENA_BASE_URL": server.url,
    }
    args = ["run", str(h.pairs_csv(tmp_path / "in.csv", n)), "-o", str(out), "--rate", "0"]
    args += ["--concurrency", str(n), *h.FAST]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    rows = h.read_report(out)
    assert {r["error"] for r in rows} == {"HTTP 200 answer larger than 8 MB"}
    assert len(server.requests) == n
    peak_mb = int(re.findall(r"peak-kb (\d+)", proc.stderr)[-1]) / 1024
    assert peak_mb < 300, peak_mb
