"""HTTP behaviour over real loopback HTTP: classification, retries, 429 pauses, auth stop,
credentials, the rate and concurrency bounds, and what goes on the wire."""

from __future__ import annotations

import email.utils
import json
import math
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from multidict import CIMultiDict

from bulklink.client import Verdict, classify
from bulklink.sandbox import Reply, RequestRecord, Sandbox
from tests.conftest import ORG, TOKEN, invoke, pairs_csv, read_report, run_against, write_csv

FAST = ("--backoff", "0.01", "--no-progress")
TICKET = {"id": "T1", "title": "Ticket T1", "ticketId": 7, "customFieldValues": []}
NEST_404 = {"statusCode": 404, "message": "Ticket not found: T9", "error": "Not Found"}
NEST_400 = {
    "statusCode": 400,
    "message": ["sourceTicketId must be a string", "linkedTicketId should not be empty"],
    "error": "Bad Request",
}
NEST_409 = {"statusCode": 409, "message": "Tickets are already linked", "error": "Conflict"}
NEST_422 = {"statusCode": 422, "message": "Ticket T1 is archived", "error": "Unprocessable"}
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
    + "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
    + "<p>"
    + "lorem ipsum dolor sit amet " * 300
    + "</p>"
)


def jbytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def nest(status: int, message: str) -> bytes:
    """A NestJS-style error body."""
    return jbytes({"statusCode": status, "message": message, "error": "Error"})


def source_of(record: RequestRecord) -> str:
    return str(json.loads(record.body)["sourceTicketId"])


# -- classify: one classifier for every answer -------------------------------------------


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
        pytest.param(400, jbytes(NEST_400), Verdict.FAIL, NEST_400["message"], id="400-list"),
        pytest.param(404, jbytes(NEST_404), Verdict.FAIL, ["Ticket not found: T9"], id="404"),
        pytest.param(409, jbytes(NEST_409), Verdict.FAIL, ["already linked"], id="409"),
        pytest.param(422, jbytes(NEST_422), Verdict.FAIL, ["is archived"], id="422"),
        pytest.param(401, nest(401, "Unauthorized"), Verdict.ABORT, [], id="401"),
        pytest.param(403, nest(403, "Forbidden resource"), Verdict.FORBIDDEN, [], id="403"),
        pytest.param(408, b"", Verdict.RETRY, [], id="408"),
        pytest.param(429, nest(429, "Too Many Requests"), Verdict.RETRY, [], id="429"),
        pytest.param(500, nest(500, "Internal server error"), Verdict.RETRY, [], id="500"),
        pytest.param(502, NGINX_502.encode(), Verdict.RETRY, ["502 Bad Gateway"], id="502"),
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
    answer = classify(502, CIMultiDict({"content-type": "text/html"}), NGINX_502.encode())
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


# -- retries and failures through the CLI ------------------------------------------------


def run_pairs(
    server: Sandbox, tmp_path: Path, pairs: list[list[str]], *extra: str
) -> tuple[Result, list[dict[str, str]]]:
    inp = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *pairs])
    out = tmp_path / "out.csv"
    result = run_against(server, "run", inp, "-o", out, "--rate", "0", *FAST, *extra)
    assert out.exists(), result.stderr
    return result, read_report(out)


def test_503_503_200_is_linked_after_three_attempts(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"S1": [Reply(503), Reply(503), Reply(200)]})
    result, rows = run_pairs(server, tmp_path, [["S1", "L1"], ["S2", "L2"]])
    assert result.exit_code == 0, result.stderr
    assert rows[0]["outcome"] == "linked"
    assert rows[0]["success"] == "true"
    assert rows[0]["attempts"] == "3"
    assert rows[0]["http_status"] == "200"
    assert rows[0]["error"] == ""
    assert [source_of(r) for r in server.requests].count("S1") == 3
    assert rows[1]["attempts"] == "1"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, NEST_404, "Ticket not found: T9"),
        (400, NEST_400, "linkedTicketId should not be empty"),
        (409, NEST_409, "Tickets are already linked"),
        (422, NEST_422, "Ticket T1 is archived"),
    ],
)
def test_other_4xx_fails_at_once_with_the_server_message(
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    status: int,
    body: dict[str, Any],
    message: str,
) -> None:
    server = start_sandbox(script={"S1": [Reply(status, body=body), Reply(200)]})
    result, rows = run_pairs(server, tmp_path, [["S1", "L1"], ["S2", "L2"]])
    assert result.exit_code == 1, result.stderr
    row = rows[0]
    assert row["outcome"] == "failed"
    assert row["success"] == "false"
    assert row["attempts"] == "1"
    assert row["http_status"] == str(status)
    assert message in row["error"]
    assert [source_of(r) for r in server.requests].count("S1") == 1
    assert rows[1]["outcome"] == "linked"


def test_unknown_ticket_404_from_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    result, rows = run_pairs(sandbox, tmp_path, [["MISSING42", "L1"]])
    assert result.exit_code == 1
    assert rows[0]["outcome"] == "failed"
    assert rows[0]["http_status"] == "404"
    assert rows[0]["attempts"] == "1"
    assert "Ticket not found: MISSING42" in rows[0]["error"]
    assert len(sandbox.requests) == 1


def test_retries_exhausted(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    server = start_sandbox(script={"S1": [Reply(503) for _ in range(10)]})
    result, rows = run_pairs(server, tmp_path, [["S1", "L1"]], "--max-retries", "2")
    assert result.exit_code == 1
    row = rows[0]
    assert row["outcome"] == "failed"
    assert row["attempts"] == "3"
    assert row["http_status"] == "503"
    assert re.search(r"gave up|giving up|give up", row["error"], re.IGNORECASE), row["error"]
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("first", "options"),
    [
        pytest.param(Reply(200, delay=1.0), ("--timeout", "0.3"), id="timeout"),
        pytest.param(Reply(200, drop=True), (), id="dropped-connection"),
        pytest.param(Reply(408), (), id="408"),
        pytest.param(Reply(502, body=NGINX_502), (), id="html-502"),
    ],
)
def test_transient_failure_then_200_is_linked(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, first: Reply, options: tuple[str, ...]
) -> None:
    server = start_sandbox(script={"S1": [first, Reply(200)]})
    started = time.monotonic()
    result, rows = run_pairs(server, tmp_path, [["S1", "L1"]], *options)
    assert result.exit_code == 0, result.stderr
    assert rows[0]["outcome"] == "linked"
    assert rows[0]["attempts"] == "2"
    assert rows[0]["http_status"] == "200"
    assert len(server.requests) == 2
    if options:  # the timed-out request was abandoned, not waited for
        assert time.monotonic() - started < 0.95


def test_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inp = pairs_csv(tmp_path / "in.csv", 1)
    out = tmp_path / "out.csv"
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": f"http://127.0.0.1:{port}"}
    result = invoke("run", inp, "-o", out, "--rate", "0", "--max-retries", "2", *FAST, env=env)
    assert result.exit_code == 1, result.stderr
    (row,) = read_report(out)
    assert row["outcome"] == "failed"
    assert row["attempts"] == "3"
    assert row["http_status"] == ""
    assert re.search(r"connect", row["error"], re.IGNORECASE), row["error"]


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        pytest.param(Reply(200, body="<html>maintenance</html>"), "maintenance", id="not-json"),
        pytest.param(
            Reply(200, body={"status": False, "message": "Link refused", "data": None}),
            "Link refused",
            id="status-false",
        ),
    ],
)
def test_200_without_status_true_fails_after_one_attempt(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, reply: Reply, needle: str
) -> None:
    server = start_sandbox(script={"S1": [reply, Reply(200)]})
    result, rows = run_pairs(server, tmp_path, [["S1", "L1"]])
    assert result.exit_code == 1
    row = rows[0]
    assert row["outcome"] == "failed"
    assert row["success"] == "false"
    assert row["attempts"] == "1"
    assert row["http_status"] == "200"
    assert needle in row["error"]
    assert row["ticket.id"] == ""
    assert len(server.requests) == 1


# -- 429 pauses all dispatch --------------------------------------------------------------


def test_429_pauses_all_dispatch_until_x_ratelimit_reset(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    latency = 0.02
    # Thena's headers: UNIX seconds, no Retry-After. Whole seconds, so the pause lasts
    # (reset - arrival) which is computed below from the server's own clock.
    reset = math.ceil(time.time() + 4)
    throttled = Reply(
        429,
        headers={
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset),
        },
    )
    server = start_sandbox(latency=latency, script={"T00006": [throttled]})
    inp = pairs_csv(tmp_path / "in.csv", 24)
    out = tmp_path / "out.csv"
    result = run_against(server, "run", inp, "-o", out, "--rate", "0", "--concurrency", "4", *FAST)
    assert result.exit_code == 0, result.stderr
    rows = read_report(out)
    assert all(r["outcome"] == "linked" for r in rows)
    row6 = rows[5]
    assert row6["sourceTicketId"] == "T00006"
    assert row6["attempts"] == "2"

    reqs = server.requests
    (hit,) = [r for r in reqs if r.status == 429]
    pause = reset - hit.wall
    assert pause > 0.8, "the test's pause is too short to measure"
    # Requests already in flight when the 429 arrived reached the server at about the same
    # time; after their answers nothing may start until the reset time.
    grace = latency + 0.08
    quiet = [r for r in reqs if hit.t + grace < r.t < hit.t + pause - 0.1]
    assert quiet == [], [(r.t - hit.t, source_of(r)) for r in quiet]
    after = [r for r in reqs if r.t > hit.t + grace]
    assert after, "nothing was sent after the pause"
    assert min(r.t for r in after) >= hit.t + pause - 0.1
    retried = [r for r in reqs if source_of(r) == "T00006"]
    assert len(retried) == 2
    assert retried[1].t >= hit.t + pause - 0.1


def test_server_rate_limit_is_waited_out(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """Against the sandbox's own limiter (Thena's X-RateLimit-* headers, no Retry-After)
    every row ends linked, and after each 429 nothing new starts before its reset."""
    server = start_sandbox(rate_limit=10)
    n = 30
    inp = pairs_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.csv"
    result = run_against(server, "run", inp, "-o", out, "--rate", "0", "--concurrency", "4", *FAST)
    assert result.exit_code == 0, result.stderr
    rows = read_report(out)
    assert [r["outcome"] for r in rows] == ["linked"] * n
    reqs = server.requests
    hits = [r for r in reqs if r.status == 429]
    assert hits, "the server never throttled: the test proves nothing"
    for hit in hits:
        reset = math.floor(hit.wall) + 1  # the sandbox's windows end on whole seconds
        early = [r for r in reqs if r.t > hit.t + 0.05 and r.wall < reset - 0.05]
        assert early == [], [(round(r.wall - hit.wall, 3), source_of(r)) for r in early]
    assert len(hits) <= 2 * 4  # it learns: not a 429 storm


# -- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "env", "status"),
    [
        pytest.param({}, {"THENA_TOKEN": "wrong-TOKEN-zz9"}, 401, id="wrong-token-401"),
        pytest.param({}, {"THENA_ORG_ID": "org_other"}, 403, id="wrong-org-403"),
        pytest.param({"script": {"T00001": [Reply(401)]}}, {}, 401, id="scripted-401"),
        pytest.param({"script": {"T00001": [Reply(403)]}}, {}, 403, id="scripted-403"),
    ],
)
def test_rejected_credentials_stop_the_run(
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    config: dict[str, Any],
    env: dict[str, str],
    status: int,
) -> None:
    concurrency = 4
    n = 200
    server = start_sandbox(**config)
    inp = pairs_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", inp, "-o", out, "--rate", "0", "--concurrency", str(concurrency),
        *FAST, env=env,
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    assert re.search(r"credentials.*rejected|rejected.*credentials", result.stderr, re.I)
    assert len(server.requests) <= concurrency + 3
    assert any(r.status == status for r in server.requests)

    rows = read_report(out)
    assert [r["row"] for r in rows] == [str(i) for i in range(1, n + 1)]
    sent = {source_of(r) for r in server.requests}
    for row in rows:
        if row["sourceTicketId"] not in sent:
            assert row["outcome"] == "skipped", row
            assert row["success"] == "false"
            assert row["attempts"] == "0"
        else:
            assert row["outcome"] in ("linked", "failed", "skipped"), row
    assert sum(r["outcome"] == "skipped" for r in rows) >= n - len(server.requests)
    assert any(r["http_status"] == str(status) for r in rows)

    secrets = {TOKEN, env.get("THENA_TOKEN", TOKEN)}
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr
        for path in tmp_path.iterdir():  # the report and anything left beside it
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("missing", "present"),
    [("THENA_TOKEN", {"THENA_ORG_ID": ORG}), ("THENA_ORG_ID", {"THENA_TOKEN": TOKEN})],
)
def test_missing_credentials_exit_2_and_send_nothing(
    sandbox: Sandbox, tmp_path: Path, missing: str, present: dict[str, str]
) -> None:
    inp = pairs_csv(tmp_path / "in.csv", 3)
    result = invoke("run", inp, *FAST, env={"THENA_BASE_URL": sandbox.url, **present})
    assert result.exit_code == 2
    assert missing in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox.requests == []
    assert TOKEN not in result.stderr + result.stdout


# -- rate and concurrency, measured at the server -------------------------------------------


def max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u <= t + width) for t in times)


@pytest.mark.parametrize(
    ("rate", "n", "error_rate"),
    [
        pytest.param(20, 60, 0.0, id="20/s"),
        pytest.param(50, 100, 0.0, id="50/s"),
        pytest.param(20, 40, 0.3, id="20/s-retries-included"),
    ],
)
def test_rate_bound(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, rate: int, n: int, error_rate: float
) -> None:
    server = start_sandbox(error_rate=error_rate, seed=7)
    inp = pairs_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", inp, "-o", out, "--rate", str(rate), "--max-retries", "20", *FAST
    )
    assert result.exit_code == 0, result.stderr
    times = sorted(r.t for r in server.requests)
    if error_rate:
        assert len(times) > n  # retries happened, and they count against the rate
    else:
        assert len(times) == n
    assert max_in_window(times) <= rate + 1
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved >= 0.9 * rate, f"{achieved:.1f}/s"


def test_concurrency_bound(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    latency = 0.1
    server = start_sandbox(latency=latency)
    inp = pairs_csv(tmp_path / "in.csv", 24)
    out = tmp_path / "out.csv"
    result = run_against(server, "run", inp, "-o", out, "--rate", "0", "--concurrency", "3", *FAST)
    assert result.exit_code == 0, result.stderr
    times = sorted(r.t for r in server.requests)
    assert len(times) == 24
    # A request is in flight at the server from its arrival until its answer, >= latency
    # later; measure with a slightly shorter span so timer jitter cannot inflate the count.
    span = latency * 0.9
    peak = max(sum(1 for u in times if u <= t < u + span) for t in times)
    assert peak <= 3
    assert peak == 3  # the pool is actually used
    assert times[-1] - times[0] < 24 / 3 * latency * 2


# -- what goes on the wire -------------------------------------------------------------------


def test_headers_and_body(sandbox: Sandbox, tmp_path: Path) -> None:
    inp = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId"], ["00123", "  L-9 "], ["12345678901234567890", "X"]],
    )
    out = tmp_path / "out.csv"
    result = run_against(sandbox, "run", inp, "-o", out, "--rate", "0", *FAST)
    assert result.exit_code == 0, result.stderr
    assert len(sandbox.requests) == 2
    bodies = []
    for req in sandbox.requests:
        assert req.method == "PATCH"
        assert req.path == "/v1/tickets/link"
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        assert req.headers["x-org-id"] == ORG
        assert req.headers["content-type"].split(";")[0].strip() == "application/json"
        body = json.loads(req.body)
        assert set(body) == {"sourceTicketId", "linkedTicketId"}
        bodies.append(body)
    assert sorted(bodies, key=lambda b: b["sourceTicketId"]) == [
        {"sourceTicketId": "00123", "linkedTicketId": "L-9"},
        {"sourceTicketId": "12345678901234567890", "linkedTicketId": "X"},
    ]
