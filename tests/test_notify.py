"""Webhook notices and the metrics file: what is sent when, what a receiver gets, what a
failure looks like; and a metrics file a Prometheus parser reads back whole.

The receiver (the ``receiver`` fixture) is a small aiohttp.web app on 127.0.0.1 in a
thread of its own, scripted per test to answer slowly, with errors, or not at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulklink.errors import UsageError
from bulklink.net.notify import (
    NoticeKind,
    notice_body,
    send_notice,
    send_notice_sync,
    should_notify,
)
from bulklink.run.metrics import render_metrics, write_metrics
from bulklink.urls import check_url
from tests.helpers import HOOK_PATH, HOOK_QUERY, Receiver

TOKEN = 'tok"SE\\CRET&<x>'


def summary(exit_code: int = 1, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "report": "/srv/bulklink/reports/nightly.results.csv",
        "rows": 100,
        "counts": {"linked": 93, "failed": 5, "invalid": 2, "duplicate": 0, "skipped": 0},
        "errors": [
            {"error": "HTTP 404 Ticket not found", "count": 4, "example_rows": [3, 9]},
            {
                "error": "timeout after 30s (gave up after 6 attempts)",
                "count": 1,
                "example_rows": [17],
            },
            {"error": "blank ID", "count": 2, "example_rows": [40, 41]},
        ],
        "retryable_rows": 5,
        "resumed_rows": 0,
        "started": "2025-01-02T02:30:00+00:00",
        "finished": "2025-01-02T02:31:02+00:00",
        "elapsed_seconds": 62.4,
        "exit_code": exit_code,
        "stopped": "",
    }
    data.update(extra)
    return data


def send(url: str, body: dict[str, Any], **options: Any) -> tuple[str | None, float]:
    started = time.monotonic()
    outcome = asyncio.run(send_notice(url, body, **options))
    return outcome, time.monotonic() - started


# --- when ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "exit_code", "previous", "kind"),
    [
        ("problems", 1, None, NoticeKind.PROBLEM),
        ("problems", 1, 1, NoticeKind.PROBLEM),  # still failing: still a human needed
        ("problems", 3, 0, NoticeKind.PROBLEM),
        ("problems", 143, 0, NoticeKind.PROBLEM),
        ("problems", 0, 1, NoticeKind.RECOVERY),
        ("problems", 0, 143, NoticeKind.RECOVERY),
        ("problems", 0, 0, NoticeKind.NONE),  # an ordinary good night
        ("problems", 0, None, NoticeKind.NONE),  # the first run ever, all linked
        ("always", 0, 0, NoticeKind.ROUTINE),
        ("always", 0, None, NoticeKind.ROUTINE),
        ("always", 0, 1, NoticeKind.RECOVERY),
        ("always", 1, 0, NoticeKind.PROBLEM),
    ],
)
def test_should_notify(mode: str, exit_code: int, previous: int | None, kind: NoticeKind) -> None:
    assert should_notify(mode, exit_code, previous) is kind


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sometimes"):
        should_notify("sometimes", 0, None)


# --- what ---------------------------------------------------------------------------------


def test_failure_notice_reaches_the_receiver(receiver: Receiver) -> None:
    data = summary(exit_code=1)
    body = notice_body(data, "nightly", NoticeKind.PROBLEM)
    outcome, _ = send(receiver.url, body, allow_http=False)
    assert outcome is None
    [got] = receiver.bodies
    assert got["summary"] == data
    lines = got["text"].splitlines()
    assert lines[0] == "bulklink nightly: 7 of 100 rows not linked (exit 1)"
    assert "linked 93, failed 5, invalid 2, duplicate 0, skipped 0 | 100 rows" in lines
    assert "top errors:" in lines
    assert "  4 x HTTP 404 Ticket not found" in lines
    assert "  2 x blank ID" in lines
    assert "duration: 1m02s" in lines
    assert lines[-1] == "report: /srv/bulklink/reports/nightly.results.csv"
    assert receiver.paths == [f"{HOOK_PATH}?{HOOK_QUERY}"]


def test_recovery_notice_says_so(receiver: Receiver) -> None:
    data = summary(
        exit_code=0,
        counts={"linked": 100, "failed": 0, "invalid": 0, "duplicate": 0, "skipped": 0},
        errors=[],
        elapsed_seconds=4.2,
    )
    body = notice_body(data, "nightly", NoticeKind.RECOVERY, previous_exit_code=3)
    assert send_notice_sync(receiver.url, body) is None
    [got] = receiver.bodies
    assert got["text"].splitlines() == [
        "bulklink nightly: recovered: every row linked (exit 0), after a failed run (exit 3)",
        "linked 100, failed 0, invalid 0, duplicate 0, skipped 0 | 100 rows",
        "duration: 4.2s",
        "report: /srv/bulklink/reports/nightly.results.csv",
    ]


def test_text_is_one_line_per_item_and_cannot_ping_a_slack_channel() -> None:
    data = summary(errors=[{"error": "HTTP 500 <!channel> a\nb\x1b[2J", "count": 1}])
    text = notice_body(data, "nightly", NoticeKind.PROBLEM)["text"]
    assert "  1 x HTTP 500 &lt;!channel&gt; a\\x0ab\\x1b\uff3b2J" in text.splitlines()
    assert "\x1b" not in text


def test_no_secret_in_any_form_in_the_body(receiver: Receiver) -> None:
    """The redactor stands in for the run's: every string goes through it, text built after."""
    forms = (TOKEN, json.dumps(TOKEN)[1:-1], quote(TOKEN, safe=""), quote(TOKEN))

    def redact(text: str) -> str:
        for form in forms:
            text = text.replace(form, "***")
        return text

    data = summary(
        errors=[
            {"error": f"HTTP 400 bad header Bearer {TOKEN}", "count": 3, "example_rows": [1]},
            {"error": f"HTTP 400 echoed {json.dumps(TOKEN)}", "count": 2, "example_rows": [2]},
            {"error": f"see /x?t={quote(TOKEN, safe='')}", "count": 1, "example_rows": [5]},
        ],
        stopped=f"credentials {TOKEN} rejected",
    )
    data[f"odd key {TOKEN}"] = [TOKEN, {"nested": TOKEN}]
    body = notice_body(data, f"job-{TOKEN}", NoticeKind.PROBLEM, redact=redact)
    assert send_notice_sync(receiver.url, body) is None
    [got] = receiver.bodies
    for wire in (json.dumps(got), json.dumps(got, ensure_ascii=False), got["text"]):
        for form in forms:
            assert form not in wire
    assert "Bearer ***" in got["text"]


# --- delivery -----------------------------------------------------------------------------


def test_500_then_200_is_delivered_on_the_second_try(receiver: Receiver) -> None:
    receiver.answers = [500]
    outcome, _ = send(receiver.url, {"text": "t"}, backoff=0.01)
    assert outcome is None
    assert len(receiver.bodies) == 2


def test_persistent_500_gives_one_warning_naming_only_the_host(receiver: Receiver) -> None:
    receiver.answers = [500, 503, 500, 500]
    outcome, _ = send(receiver.url, {"text": "t"}, backoff=0.01)
    assert len(receiver.bodies) == 3  # tries, no more
    assert outcome is not None
    assert outcome.startswith(
        "warning: the notice to 127.0.0.1 was not delivered: HTTP 500 Internal Server Error"
    )
    assert outcome.endswith("(3 tries)")
    assert "\n" not in outcome
    assert "SECRET" not in outcome  # neither the path nor the query, even echoed back


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (404, "HTTP 404 Not Found: oops at ***"),  # a 4xx is not retried
        (307, "HTTP 307 Temporary Redirect (redirects are not followed)"),
    ],
)
def test_an_answer_that_cannot_change_is_tried_once(
    receiver: Receiver, status: int, said: str
) -> None:
    receiver.answers = [status]
    outcome, _ = send(receiver.url, {"text": "t"}, backoff=0.01)
    assert len(receiver.bodies) == 1
    assert outcome is not None
    assert said in outcome


@pytest.mark.parametrize(
    "query",
    [
        # Power Automate: aiohttp sends (and the receiver echoes) %2F as / and %7E as ~
        "api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Sig%7EVal%41ue-x9Q2",
        "code=AbC%2FdEf%2BgHi%3D%3D&clientId=default",  # Azure Functions
    ],
)
def test_a_secret_query_respelled_by_aiohttp_is_redacted_when_echoed(
    receiver: Receiver, query: str
) -> None:
    receiver.answers = [404]
    url = receiver.url.split("?")[0] + "?" + query
    outcome, _ = send(url, {"text": "t"}, backoff=0.01)
    assert outcome is not None and outcome.startswith("warning: the notice to 127.0.0.1")
    [echoed] = receiver.paths  # what the receiver saw: aiohttp's spelling, not ours
    assert echoed != HOOK_PATH + "?" + query
    for secret in ("Sig~ValAue-x9Q2", "Sig%7EVal%41ue-x9Q2", "AbC/dEf+gHi==", "AbC%2FdEf"):
        assert secret not in outcome, outcome
    assert "SECRET" not in outcome


def test_dead_webhook_gives_one_warning_in_bounded_time() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}{HOOK_PATH}"
    outcome, took = send(url, {"text": "t"}, timeout=0.5, backoff=0.01)
    assert outcome == (
        "warning: the notice to 127.0.0.1 was not delivered: cannot connect"
        " (Connection refused) (3 tries)"
    )
    assert took < 3 * 0.5 + 0.03 + 1.0


def test_slow_webhook_gives_one_warning_in_bounded_time(receiver: Receiver) -> None:
    receiver.answers = [(200, 30.0)] * 3
    outcome, took = send(receiver.url, {"text": "t"}, timeout=0.2, backoff=0.01)
    assert outcome == (
        "warning: the notice to 127.0.0.1 was not delivered: no answer within 0.2s (3 tries)"
    )
    assert len(receiver.bodies) == 3
    assert took < 3 * 0.2 + 0.03 + 2.0


def test_sync_sending_works_inside_a_running_loop(receiver: Receiver) -> None:
    async def from_async_code() -> str | None:
        return send_notice_sync(receiver.url, {"text": "t"})

    assert asyncio.run(from_async_code()) is None
    assert receiver.bodies == [{"text": "t"}]


def test_a_flood_of_an_answer_is_quoted_not_read(receiver: Receiver) -> None:
    receiver.answers = [400]
    receiver.text = "x" * 5_000_000 + "\n\x1b[2J"
    outcome, _ = send(receiver.url, {"text": "t"})
    assert outcome is not None
    assert outcome.startswith(
        "warning: the notice to 127.0.0.1 was not delivered: HTTP 400 Bad Request: xxx"
    )
    assert len(outcome) < 300


# --- the URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T/B/x",
        "http://127.0.0.1:9/hook",
        "http://127.8.9.10/hook",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
        "http://LOCALHOST:1/hook",
    ],
)
def test_https_or_loopback_is_accepted(url: str) -> None:
    check_url(url, what="--notify", allow_http=False, secret=True)


PLAIN_HTTP_ELSEWHERE = [
    "http://hooks.slack.com/services/T/B/hook-SECRET",
    "http://10.0.0.5/services/hook-SECRET",
    "http://localhost.evil.example/hook-SECRET",
    "http://[::ffff:8.8.8.8]/hook-SECRET",
]
NOT_A_WEBHOOK = [
    "ftp://example.com/hook-SECRET",
    "hooks.slack.com/services/hook-SECRET",
    "https:///hook-SECRET",
    "https://example.com:99999/hook-SECRET",
    "https://example.com/hook SECRET",
    "https://example.com/hook\nSECRET",
]


@pytest.mark.parametrize("url", PLAIN_HTTP_ELSEWHERE + NOT_A_WEBHOOK)
def test_a_refused_url_is_one_line_naming_only_the_host(url: str) -> None:
    """Plain http elsewhere is refused unless allowed; a URL no webhook has, always."""
    with pytest.raises(UsageError) as caught:
        check_url(url, what="--notify", allow_http=False, secret=True)
    message = str(caught.value)
    assert "SECRET" not in message
    assert "\n" not in message
    if url in PLAIN_HTTP_ELSEWHERE:
        assert message.startswith("--notify must use https://")
        check_url(url, what="--notify", allow_http=True, secret=True)


def test_send_refuses_plain_http_to_another_host_with_a_warning() -> None:
    outcome, _ = send("http://hooks.example.com/services/hook-SECRET", {"text": "t"})
    assert outcome is not None
    assert outcome.startswith("warning: the notice to hooks.example.com was not delivered:")
    assert "SECRET" not in outcome


# --- metrics ------------------------------------------------------------------------------

COUNTS = {
    "linked": 93,
    "failed": 5,
    "invalid": 2,
    "duplicate": 0,
    "skipped": 0,
    "already-linked": 7,
}


def metrics(path: Path, **overrides: Any) -> str | None:
    options: dict[str, Any] = {
        "job": "nightly",
        "counts": COUNTS,
        "exit_code": 1,
        "duration_seconds": 62.4,
        "finished_timestamp": 1_735_785_062.5,
        "last_success_timestamp": 1_735_698_600.0,
        "requests": 130,
        "throttled": 4,
    }
    options.update(overrides)
    return write_metrics(path, render_metrics(**options))


def test_metrics_file_parses_back_with_every_outcome_and_the_job_label(tmp_path: Path) -> None:
    target = tmp_path / "bulklink_nightly.prom"
    assert metrics(target) is None
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    samples = [s for f in families.values() for s in f.samples]
    assert all(s.labels["job"] == "nightly" for s in samples)
    rows = {s.labels["outcome"]: s.value for s in families["bulklink_last_run_rows"].samples}
    assert rows == COUNTS
    values = {f.name: f.samples[0].value for f in families.values() if len(f.samples) == 1}
    assert values == {
        "bulklink_last_run_exit_code": 1,
        "bulklink_last_run_duration_seconds": 62.4,
        "bulklink_last_run_finished_timestamp_seconds": 1_735_785_062.5,
        "bulklink_last_success_timestamp_seconds": 1_735_698_600.0,
        "bulklink_last_run_requests": 130,
        "bulklink_last_run_throttled_requests": 4,
        "bulklink_last_run_average_rate": 0.0,
    }
    assert all(f.type == "gauge" for f in families.values())
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_never_succeeded_is_zero_so_an_age_alert_fires(tmp_path: Path) -> None:
    target = tmp_path / "m.prom"
    assert metrics(target, last_success_timestamp=None) is None
    [family] = [
        f
        for f in text_string_to_metric_families(target.read_text())
        if f.name == "bulklink_last_success_timestamp_seconds"
    ]
    assert family.samples[0].value == 0


def test_metrics_write_is_atomic_and_replaces_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "bulklink_nightly.prom"
    target.symlink_to(victim)
    assert metrics(target) is None
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink()
    assert "bulklink_last_run_rows" in target.read_text()
    assert metrics(target, exit_code=0) is None  # a second write replaces the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bulklink_nightly.prom", "victim"]


def test_metrics_failure_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    outcome = metrics(tmp_path / "missing-folder" / "m.prom")
    assert outcome is not None
    assert outcome.startswith("warning: the metrics file ")
    assert outcome.endswith("was not written: No such file or directory")
    if os.geteuid() != 0:  # root writes anywhere
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
        assert metrics(folder / "m.prom") is not None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ro") == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_metrics_file_passes_promtool(tmp_path: Path) -> None:
    target = tmp_path / "m.prom"
    assert metrics(target, job='odd "job" \\ name\n') is None
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=target.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")
