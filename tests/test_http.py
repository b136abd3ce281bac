"""HTTP behaviour over real loopback HTTP: retries, 429 pauses, a credentials stop (and a
403 that is not one), the rate and concurrency bounds measured at the server, what goes
on the wire, and plain http only to loopback.
"""

from __future__ import annotations

import json
import math
import platform
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import Result

import bulklink
from bulklink.errors import UsageError
from bulklink.net.client import server_wait
from bulklink.sandbox import Reply, RequestRecord, Sandbox
from bulklink.urls import check_url
from tests.helpers import (
    FAST,
    NEST_400,
    NEST_404,
    NEST_409,
    NEST_422,
    NGINX_502,
    ODD_SECONDS,
    ORG,
    TOKEN,
    input_pairs,
    invoke,
    pairs_csv,
    read_report,
    run_against,
    write_csv,
)

# -- retries and failures ---------------------------------------------------------------------


def source_of(record: RequestRecord) -> str:
    return str(json.loads(record.body)["sourceTicketId"])


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


# -- 429 pauses all dispatch ------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_rate_adapts_to_429s(tmp_path: Path, start_sandbox: Callable[..., Sandbox]) -> None:
    server = start_sandbox(rate_limit=20)
    # 5 s at the server's 20/s: the first 429, the slower rate and a probe back up to it.
    n = 100
    src = pairs_csv(tmp_path / "in.csv", n)
    result = run_against(server, "run", src, "--rate", "100", "--no-progress")
    assert result.exit_code == 0, result.stderr
    rows = read_report(tmp_path / "in.results.csv")
    assert {r["outcome"] for r in rows} == {"linked"}
    statuses = [rec.status for rec in server.requests]
    throttled = statuses.count(429)
    assert throttled <= 0.10 * len(statuses), f"{throttled} of {len(statuses)} requests got 429"
    assert server.link_counts == dict.fromkeys(input_pairs(n), 1)


# -- credentials rejected or missing; a 403 for one ticket is not a credentials failure -------


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


# -- rate and concurrency, measured at the server ---------------------------------------------


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
@pytest.mark.slow
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


def test_without_a_rate_limit_the_auto_pool_grows_past_its_start(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(latency=0.2)
    data = pairs_csv(tmp_path / "in.csv", 400)
    started = time.monotonic()
    result = run_against(server, "run", data, "--rate", "0", *FAST)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    # Requests in flight at the server: arrivals less than one latency apart overlap.
    times = sorted(r.t for r in server.requests)
    peak = max(sum(1 for u in times if t <= u < t + 0.2) for t in times)
    assert peak > 16
    assert elapsed < 400 / 16 * 0.2  # what a pool stuck at 16 would need


# -- what goes on the wire --------------------------------------------------------------------


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


def test_requests_say_who_is_calling(sandbox: Sandbox, tmp_path: Path) -> None:
    result = run_against(sandbox, "run", pairs_csv(tmp_path / "in.csv", 2), *FAST)
    assert result.exit_code == 0, result.stderr
    expected = (
        f"bulklink/{bulklink.__version__} (aiohttp/{aiohttp.__version__}; "
        f"python/{platform.python_version()})"
    )
    assert {r.header("user-agent") for r in sandbox.requests} == {expected}
    assert re.fullmatch(r"bulklink/\S+ \(aiohttp/\S+; python/\d+\.\d+\.\d+\S*\)", expected)


# -- plain http only to loopback --------------------------------------------------------------


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
        "http://127.0.0.1.evil.com", "http://0.0.0.0:80",
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
