"""Servers that misbehave on purpose, over loopback: redirects, plain http, echoed secrets,
odd credential files, answers too large to hold, odd headers, control characters, 403s.

Each test covers a class of problem (parametrised over its members), through the CLI or
``bulklink.run_job``, and asserts what the user sees and what every server received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import json
import os
import platform
import re
import stat
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import web

import bulklink
from bulklink.client import (
    MAX_SERVER_WAIT,
    Client,
    Verdict,
    check_url,
    classify,
    server_wait,
)
from bulklink.console import escape_controls
from bulklink.credentials import resolve_auth, secret_forms
from bulklink.errors import UsageError
from bulklink.sandbox import Reply, Sandbox, success_body
from tests.conftest import ORG, TOKEN, invoke, pairs_csv, read_report, run_against, write_csv

FAST = ("--backoff", "0.01", "--no-progress")
LINK = "/v1/tickets/link"
ROOT = Path(__file__).resolve().parent.parent


def sources(server: Sandbox) -> list[str]:
    return [str(json.loads(r.body)["sourceTicketId"]) for r in server.requests]


# -- a server that records everything, for what the sandbox cannot do ----------------------


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


# -- 1. redirects are never followed ------------------------------------------------------


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
        result = run_against(
            server, "run", pairs_csv(tmp_path / "in.csv", n), "-o", out,
            "--rate", "0", "--concurrency", "2", *FAST,
        )  # fmt: skip
        assert other.hits == []  # not one request, with or without the key
    assert result.exit_code == 1, result.stderr
    rows = read_report(out)
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
        result = run_against(
            server, "run", pairs_csv(tmp_path / "in.csv", 10), "-o", out,
            "--rate", "0", "--concurrency", "1", *FAST,
        )  # fmt: skip
        assert other.hits == []
    assert result.exit_code == 1, result.stderr
    outcomes = [r["outcome"] for r in read_report(out)]
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


# -- 2. plain http only to loopback ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://platform.thena.ai", "HTTPS://platform.thena.ai/", "http://127.0.0.1:8080",
        "http://127.5.6.7", "http://[::1]:80", "http://localhost:1", "http://LOCALHOST",
        "http://[::ffff:127.0.0.1]:9",
    ],
)  # fmt: skip
def test_check_url_accepts_https_and_loopback_http(url: str) -> None:
    assert check_url(url, what="--base-url", allow_http=False) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1", "http://example.com", "HTTP://example.com", "http://localhost.evil.com",
        "http://127.0.0.1.evil.com", "http://127.0.0.1@evil.com", "http://0.0.0.0:80",
        "http://[::]:80", "http://127.1", "http://2130706433",
    ],
)  # fmt: skip
def test_check_url_refuses_plain_http_off_loopback(url: str) -> None:
    with pytest.raises(UsageError, match="use https://"):
        check_url(url, what="--base-url", allow_http=False)
    assert check_url(url, what="--base-url", allow_http=True)


@pytest.mark.parametrize(
    "url",
    ["ftp://x", "platform.thena.ai", "https://", "https://h/?a=1", "https://h:x", "https://h#f"],
)
def test_check_url_refuses_what_is_not_a_base_url(url: str) -> None:
    with pytest.raises(UsageError, match="--base-url"):
        check_url(url, what="--base-url", allow_http=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])  # noqa: S104 - connected to, not bound
def test_plain_http_base_url_off_loopback_is_refused_before_sending(
    sandbox: Sandbox, tmp_path: Path, host: str
) -> None:
    """0.0.0.0 and [::] reach this machine's listener, but are not loopback by address."""
    port = sandbox.url.rsplit(":", 1)[1]
    inp = pairs_csv(tmp_path / "in.csv", 3)
    result = run_against(
        sandbox, "run", inp, *FAST, env={"THENA_BASE_URL": f"http://{host}:{port}"}
    )
    assert result.exit_code == 2
    assert "use https://" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sandbox.requests == []
    with pytest.raises(UsageError, match="plain http"):
        bulklink.run_job(
            inp, tmp_path / "lib.csv", base_url=f"http://{host}:{port}", token=TOKEN, org_id=ORG
        )
    assert sandbox.requests == []


def test_plain_http_to_a_remote_address_is_refused(tmp_path: Path) -> None:
    inp = pairs_csv(tmp_path / "in.csv", 3)
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": "http://10.0.0.1"}
    result = invoke("run", inp, *FAST, env=env)
    assert result.exit_code == 2
    assert "http://10.0.0.1" in result.stderr and "use https://" in result.stderr
    assert not (tmp_path / "in.results.csv").exists()


# -- 3. an echoed secret is redacted in every spelling, in every output ------------------------

ODD_TOKEN = 'tok"en\\back/sl+a=sh&x%41<y>~'


def _json_literal(text: str) -> str:
    return json.dumps(text)[1:-1]


ECHOES: dict[str, tuple[str, str]] = {
    # name: (the text a JSON decoder yields, how the server spells it in the JSON string)
    "json-escaped": (ODD_TOKEN, _json_literal(ODD_TOKEN)),
    "all-unicode-escapes": (ODD_TOKEN, "".join(f"\\u{ord(c):04x}" for c in ODD_TOKEN)),
    "slash-escaped": (ODD_TOKEN, _json_literal(ODD_TOKEN).replace("/", "\\/")),
    "url-encoded": (quote(ODD_TOKEN, safe=""), quote(ODD_TOKEN, safe="")),
    "url-encoded-plus": (quote_plus(ODD_TOKEN), quote_plus(ODD_TOKEN)),
    "url-lower-hex": (
        (low := re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(ODD_TOKEN, safe=""))),
        low,
    ),
    "base64": (base64.b64encode(ODD_TOKEN.encode()).decode(),) * 2,
    "html": (html.escape(ODD_TOKEN), _json_literal(html.escape(ODD_TOKEN))),
}


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
@pytest.mark.parametrize("echo", list(ECHOES))
def test_an_echoed_token_never_reaches_any_output(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, echo: str, fmt: str
) -> None:
    decoded, spelled = ECHOES[echo]
    failure = f'{{"statusCode":404,"message":"no access for {spelled}","error":"Not Found"}}'
    success = f'{{"status":true,"message":"ok","data":{{"id":"X","title":"hi {spelled}"}}}}'
    text = f"<html><body>bad token {html.escape(ODD_TOKEN)} {decoded}</body></html>"
    script = {
        "T00001": [Reply(404, failure.encode())],
        "T00002": [Reply(200, success.encode())],
        "T00003": [Reply(400, text)],
    }
    server = start_sandbox(token=ODD_TOKEN, script=script)
    out, log, summary = tmp_path / f"out{fmt}", tmp_path / "run.log", tmp_path / "summary.json"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 4), "-o", out, "--rate", "0",
        "--log-file", log, "--summary-json", summary, *FAST, env={"THENA_TOKEN": ODD_TOKEN},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert "no access for ***" in result.stderr
    outputs = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "report": out.read_text(encoding="utf-8"),
        "log": log.read_text(encoding="utf-8"),
        "summary": summary.read_text(encoding="utf-8"),
    }
    needles = {ODD_TOKEN, decoded, _json_literal(ODD_TOKEN), _json_literal(decoded)}
    leaks = [(name, n) for name, t in outputs.items() for n in needles if n in t]
    assert leaks == []
    if fmt == ".csv":
        rows = read_report(out)
        assert rows[1]["outcome"] == "linked" and rows[1]["ticket.title"] == "hi ***"
        assert rows[0]["error"] == "HTTP 404 no access for ***"


def test_every_spelling_of_a_secret_is_redacted() -> None:
    auth = resolve_auth(token=ODD_TOKEN, org_id=ORG)
    for form in secret_forms(ODD_TOKEN):
        assert auth.redact(f"a {form} b") == "a *** b", form
    assert auth.redact("ordinary words") == "ordinary words"


# -- 4. token and key files ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n", id="utf8-bom-crlf"),
        pytest.param(TOKEN.encode("utf-16"), id="utf16-bom"),
        pytest.param(TOKEN.encode("utf-32"), id="utf32-bom"),
        pytest.param(b"\n  \t" + TOKEN.encode() + b"  \n\n", id="whitespace"),
        pytest.param(b"\xef\xbb\xbf\xc2\xa0" + TOKEN.encode() + b"\xc2\xa0", id="bom-nbsp"),
    ],
)
def test_a_token_file_as_editors_save_it_works(
    sandbox: Sandbox, tmp_path: Path, content: bytes
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    token_file.chmod(0o600)
    inp = pairs_csv(tmp_path / "in.csv", 2)
    result = invoke(
        "run", inp, "--token-file", token_file, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert {r.header("authorization") for r in sandbox.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--token-file", f"Bearer {TOKEN}\n", 'holds "Bearer ..."; put only the token in the file'),
        ("--token-file", f"bearer\t{TOKEN}", 'holds "Bearer ..."'),
        ("--token-file", f"Authorization: Bearer {TOKEN}", 'holds "Bearer ..."'),
        ("--api-key-file", f"x-api-key: {TOKEN}", "holds a header line (x-api-key: ...)"),
        ("--token-file", f"{TOKEN}\u200b", "U+200B"),
        ("--token-file", f"tok {TOKEN}", "a space"),
        ("--token-file", f"{TOKEN}\nsecond-line", "control character"),
    ],
)  # fmt: skip
def test_a_token_file_holding_more_than_the_token_is_refused(
    sandbox: Sandbox, tmp_path: Path, option: str, content: str, message: str
) -> None:
    path = tmp_path / "cred"
    path.write_text(content, encoding="utf-8")
    result = invoke(
        "run", pairs_csv(tmp_path / "in.csv", 2), option, path, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and TOKEN not in result.stderr
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"THENA_TOKEN": f"Bearer {TOKEN}"}, 'THENA_TOKEN holds "Bearer ..."; set it to the token'),
        ({"THENA_API_KEY": f"Bearer {TOKEN}"}, 'THENA_API_KEY holds "Bearer ..."'),
    ],
)  # fmt: skip
def test_a_variable_holding_bearer_is_refused(
    sandbox: Sandbox, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    full = {"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url, **env}
    result = invoke("run", pairs_csv(tmp_path / "in.csv", 2), *FAST, env=full)
    assert result.exit_code == 2
    assert message in result.stderr and TOKEN not in result.stderr
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"tok\xff\xfeen-123", "is not UTF-8 text", id="latin1-bytes"),
        pytest.param(b"\xc3(" + TOKEN.encode(), "is not UTF-8 text", id="broken-sequence"),
        pytest.param(b"\xff\xfe" + b"\x00\xd8", "is not UTF-16-LE text", id="utf16-lone-surrogate"),
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"\xef\xbb\xbf \r\n", "is empty", id="only-bom"),
        pytest.param(b"x" * 70_000, "larger than 64 KB", id="huge"),
    ],
)  # fmt: skip
def test_an_unusable_token_file_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    result = invoke(
        "run", pairs_csv(tmp_path / "in.csv", 2), "--token-file", path, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("bulklink: error: ") and result.stderr.count("\n") == 1
    assert sandbox.requests == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, ""), (0o400, ""), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")],
)
def test_a_credential_file_others_can_read_gives_a_warning(
    tmp_path: Path, mode: int, warned: str
) -> None:
    for option in ("--token-file", "--api-key-file"):
        path = tmp_path / option.strip("-")
        path.write_text(TOKEN)
        path.chmod(mode)
        if option == "--token-file":
            auth = resolve_auth(token_file=path, org_id=ORG)
        else:
            auth = resolve_auth(api_key_file=path)
        if warned:
            assert auth.warnings == (
                f"warning: {option} {path} is {warned} by others; chmod 600 it",
            )
        else:
            assert auth.warnings == ()
        assert all(TOKEN not in w for w in auth.warnings)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# -- 5. User-Agent -----------------------------------------------------------------------------


def test_requests_say_who_is_calling(sandbox: Sandbox, tmp_path: Path) -> None:
    result = run_against(sandbox, "run", pairs_csv(tmp_path / "in.csv", 2), *FAST)
    assert result.exit_code == 0, result.stderr
    expected = (
        f"bulklink/{bulklink.__version__} (aiohttp/{aiohttp.__version__}; "
        f"python/{platform.python_version()})"
    )
    assert {r.header("user-agent") for r in sandbox.requests} == {expected}
    assert re.fullmatch(r"bulklink/\S+ \(aiohttp/\S+; python/\d+\.\d+\.\d+\S*\)", expected)


# -- 6. answers too large to hold ----------------------------------------------------------------

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
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 3), "-o", out, "--rate", "0", *FAST
    )
    assert result.exit_code == 1, result.stderr
    rows = read_report(out)
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
        env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": server.url}
        result = invoke("run", pairs_csv(tmp_path / "in.csv", 1), "-o", out, *FAST, env=env)
        assert len(server.hits) == 1
    assert result.exit_code == 1, result.stderr
    (row,) = read_report(out)
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
    result = run_against(server, "run", pairs_csv(tmp_path / "in.csv", 1), "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert read_report(out)[0]["ticket.title"] == "zipped"
    assert server.requests[0].header("accept-encoding") == "gzip, deflate"


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
        "PYTHONPATH": str(ROOT),
        "THENA_TOKEN": TOKEN,
        "THENA_ORG_ID": ORG,
        "THENA_BASE_URL": server.url,
    }
    args = ["run", str(pairs_csv(tmp_path / "in.csv", n)), "-o", str(out), "--rate", "0"]
    args += ["--concurrency", str(n), *FAST]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    rows = read_report(out)
    assert {r["error"] for r in rows} == {"HTTP 200 answer larger than 8 MB"}
    assert len(server.requests) == n
    peak_mb = int(re.findall(r"peak-kb (\d+)", proc.stderr)[-1]) / 1024
    assert peak_mb < 300, peak_mb


# -- 7. odd headers are ignored, never fatal -----------------------------------------------

ODD_SECONDS = [
    "²", "٣", "-1", "-0.5", "+5", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "1e3",
    "0x10", "1_0", "1,5", "9" * 400, "", "  ", "five", "3 s", "Fri, 31 Dec 99999 23:59:59 GMT",
    "Mon, 99 Foo 2024 99:99:99 GMT", "Sun, 06 Nov 1994 08:49:37 +9999", "\x00",
]  # fmt: skip


@pytest.mark.parametrize("value", ODD_SECONDS)
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


@pytest.mark.parametrize("status", [429, 503])
def test_odd_wait_headers_do_not_crash_a_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, status: int
) -> None:
    """Each odd value once, as Retry-After and as X-RateLimit-Reset, then a 200.

    A 429 lowers the adaptive rate (to 0.5/s), so the 429 run is one reply (only the first
    of each header counts); server_wait_is_total above covers every value alone.
    """
    ignored = [v for v in ODD_SECONDS if server_wait({"Retry-After": v}) is None]
    assert len(ignored) > 15
    rows = 1 if status == 429 else len(ignored)
    script = {
        f"T{i:05d}": [
            Reply(status, headers={"Retry-After": ignored[i - 1], "X-RateLimit-Reset": v}),
            Reply(200),
        ]
        for i, v in enumerate(reversed(ignored[:rows]), start=1)
    }
    server = start_sandbox(script=script)
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", rows), "-o", out, "--rate", "0", *FAST
    )
    assert result.exit_code == 0, result.stderr
    assert {(r["outcome"], r["attempts"]) for r in read_report(out)} == {("linked", "2")}


# -- 8. control characters never reach the terminal or the log ------------------------------

CONTROLS = {
    "osc-retitle": "\x1b]0;pwned\x07",
    "clear-screen": "\x1b[2J\x1b[H",
    "carriage-return": "\rlinked 100 | all good",
    "newline": "\nlinked 100 | all good",
    "backspace": "abc\x08\x08\x08",
    "del": "x\x7fy",
    "c1-csi": "\x9b31mred",
    "bidi-override": "\u202eevil\u202c",
    "bidi-isolate": "\u2066x\u2069",
    "line-separator": "a\u2028b",
}
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@pytest.mark.parametrize("kind", list(CONTROLS))
def test_control_characters_are_escaped_on_stderr_and_in_the_log(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, kind: str
) -> None:
    hostile_text = f"Ticket {CONTROLS[kind]} gone"
    script = {"T00001": [Reply(404, {"statusCode": 404, "message": hostile_text})]}
    server = start_sandbox(script=script)
    out, log = tmp_path / "out.csv", tmp_path / "run.log"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 2), "-o", out, "--log-file", log, *FAST
    )
    assert result.exit_code == 1, result.stderr
    logged = log.read_text(encoding="utf-8")
    for text in (result.stderr, logged):
        assert not RAW.search(text), repr(text)
        assert escape_controls(hostile_text) in text
        assert len(text.splitlines()) == text.count("\n")  # no line of the server's own
    assert read_report(out)[0]["error"] == f"HTTP 404 {hostile_text}"  # the data as it came


def test_escape_controls_is_visible_and_idempotent() -> None:
    assert escape_controls("a\x1b[2Jb\u202ec\x9b\n") == "a\\x1b[2Jb\\u202ec\\x9b\\x0a"
    assert escape_controls(escape_controls("\x07")) == "\\x07"
    assert escape_controls("plain text, é, 日本") == "plain text, é, 日本"


# -- 9. a 403 for one ticket is not a credentials failure ---------------------------------------


def forbidden(ticket: str) -> Reply:
    message = f"You do not have access to ticket {ticket}"
    return Reply(403, {"statusCode": 403, "message": message, "error": "Forbidden"})


@pytest.mark.parametrize(
    ("rows_403", "exit_code"),
    [
        pytest.param([10], 1, id="one-after-successes"),
        pytest.param([5, 10, 15], 1, id="several-apart"),
        pytest.param([10, 11], 1, id="two-in-a-row"),
        pytest.param([10, 11, 12], 3, id="three-in-a-row-stop"),
        pytest.param([1], 3, id="before-any-success-stop"),
    ],
)
def test_a_403_after_successes_fails_only_its_row(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, rows_403: list[int], exit_code: int
) -> None:
    n = 20
    server = start_sandbox(script={f"T{i:05d}": [forbidden(f"T{i:05d}")] for i in rows_403})
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", n), "-o", out,
        "--rate", "0", "--concurrency", "1", *FAST,
    )  # fmt: skip
    assert result.exit_code == exit_code, result.stderr
    rows = read_report(out)
    if exit_code == 1:
        for i, row in enumerate(rows, start=1):
            if i in rows_403:
                assert row["outcome"] == "failed" and row["attempts"] == "1", row
                assert row["http_status"] == "403"
                assert row["error"] == f"HTTP 403 You do not have access to ticket T{i:05d}"
            else:
                assert row["outcome"] == "linked", row
        assert len(server.requests) == n
        assert "credentials" not in result.stderr.lower()
    else:
        last = rows_403[-1]
        assert len(server.requests) == last
        assert [r["outcome"] for r in rows[last:]] == ["skipped"] * (n - last)
        assert rows[last - 1]["outcome"] == "skipped" and rows[last - 1]["http_status"] == "403"
        assert re.search(r"rejected the credentials", result.stderr)


def test_a_401_after_successes_still_stops_the_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T00010": [Reply(401)]})
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 20), "-o", out,
        "--rate", "0", "--concurrency", "1", *FAST,
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    assert len(server.requests) == 10
    assert [r["outcome"] for r in read_report(out)] == ["linked"] * 9 + ["skipped"] * 11


def test_classify_tells_401_from_403() -> None:
    assert classify(401, {}, b"{}").verdict is Verdict.ABORT
    assert classify(403, {}, b"{}").verdict is Verdict.FORBIDDEN


def test_nothing_any_server_said_crashes_a_json_parse() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert classify(404, {}, deep).verdict is Verdict.FAIL
    assert classify(200, {}, deep).verdict is Verdict.FAIL


@pytest.mark.parametrize("depth", [10, 900, 990, 5000])
def test_a_deeply_nested_answer_is_scrubbed_or_refused(depth: int) -> None:
    client = Client("https://api.example", resolve_auth(token=ODD_TOKEN, org_id=ORG))
    echo = "".join(f"\\u{ord(c):04x}" for c in ODD_TOKEN)
    body = ("[" * depth + f'"{echo}"' + "]" * depth).encode()
    scrubbed = client.scrub(body)
    assert ODD_TOKEN not in scrubbed.decode() and echo not in scrubbed.decode()
    answer = classify(404, {}, scrubbed)
    assert answer.verdict is Verdict.FAIL and ODD_TOKEN not in answer.error


@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".xlsx"])
def test_lone_surrogates_in_answers_never_cost_the_report(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    """``"\\ud800"`` is valid JSON but no text: shown as U+FFFD, and every format is written."""
    ticket = json.loads(success_body("S1", 0.0))
    ticket["data"]["title"] = "half \ud800 a pair"
    body = json.dumps(ticket).encode()  # ensure_ascii: the lone surrogate as an escape
    error = b'{"statusCode": 404, "message": "no \\udfff ticket", "error": "Not Found"}'
    server = start_sandbox(script={"S1": [Reply(200, body=body)], "S2": [Reply(404, body=error)]})
    inp = write_csv(
        tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["S1", "L1"], ["S2", "L2"]]
    )
    out = tmp_path / f"out{fmt}"
    result = run_against(server, "run", inp, "-o", out, "--backoff", "0.01", "--no-progress")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = invoke("report", out, "--json")
    assert json.loads(summary.stdout)["counts"]["linked"] == 1
    if fmt != ".xlsx":  # a zip: its text is compressed
        assert "\ufffd" in out.read_text(encoding="utf-8")
