"""Webhook notices and the metrics file (issue 10), end to end: real runs over loopback HTTP
against the sandbox, through the CLI, with a webhook receiver on 127.0.0.1 that records
what it is sent.

When a notice goes out (a failure, the first good night after one, never an ordinary good
night unless ``--notify-on always``), what it says, what a dead or slow receiver costs, that
no secret reaches it and that its URL reaches no file; and the Prometheus file as a parser
reads it back after real runs, including runs refused before they started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from prometheus_client.parser import text_string_to_metric_families

import bulklink.net.notify
from bulklink.net.notify import literal_values
from bulklink.sandbox import Reply, Sandbox
from bulklink.state.lock import hold
from tests.helpers import FAST_UNPACED as FAST
from tests.helpers import (
    HEAD,
    HOOK_PATH,
    HOOK_QUERY,
    Receiver,
    invoke,
    pairs_csv,
    run_against,
    spawn,
    wait_until,
    write_csv,
)

OUTCOMES = {"linked", "failed", "invalid", "duplicate", "skipped", "already-linked"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- helpers -------------------------------------------------------------------------------


def mixed_csv(path: Path) -> Path:
    """Two pairs that link and one the server does not know (404)."""
    return write_csv(path, [HEAD, ["A1", "B1"], ["MISSING2", "B2"], ["A3", "B3"]])


def metric_values(path: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The metrics file as prometheus_client's parser reads it: name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def one(values: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    [(_labels, value)] = values[name]
    return value


def stamp_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- when a notice goes out ----------------------------------------------------------------


def test_a_failure_notice_says_what_a_human_needs(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = mixed_csv(tmp_path / "nightly.csv")
    report = tmp_path / "nightly.results.csv"
    summary_file = tmp_path / "summary.json"
    common = ("--notify", receiver.url, "--max-retries", "0", *FAST)
    result = run_against(sandbox, "run", src, "--summary-json", summary_file, *common)
    assert result.exit_code == 1, result.stderr
    [body] = receiver.bodies
    lines = body["text"].splitlines()
    assert lines[0] == "bulklink nightly.results: 1 of 3 rows not linked (exit 1)"
    assert "linked 2, failed 1, invalid 0, duplicate 0, skipped 0, already-linked 0" in lines[1]
    assert "top errors:" in lines
    assert any(line.startswith("  1 x HTTP 404") for line in lines), lines
    assert lines[-2].startswith("duration: ") and lines[-2].endswith("s")
    assert lines[-1] == f"report: {report}"
    # The notice's copy is the file's with every string shown literally (no links, pings).
    assert body["summary"] == literal_values(json.loads(summary_file.read_text(encoding="utf-8")))
    assert body["summary"]["counts"]["failed"] == 1 and body["summary"]["exit_code"] == 1

    # --job names it instead of the report's stem.
    result = run_against(sandbox, "run", src, "--job", "ticket-links", *common)
    assert result.exit_code == 1, result.stderr
    assert receiver.bodies[1]["text"].startswith("bulklink ticket-links: 1 of 3 rows not linked")


def test_problem_recovery_then_silence_per_report(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = mixed_csv(tmp_path / "nightly.csv")
    other = write_csv(tmp_path / "other.csv", [HEAD, ["O1", "P1"], ["MISSING8", "P8"]])
    common = ("--notify", receiver.url, "--max-retries", "0", *FAST)

    def night(path: Path) -> int:
        return run_against(sandbox, "run", path, *common).exit_code

    sandbox.config.unknown_prefix = ""
    assert night(src) == 0
    assert receiver.raw == [], "an ordinary good night sent a notice"

    sandbox.config.unknown_prefix = "MISSING"
    write_csv(src, [HEAD, ["A1", "B1"], ["MISSING9", "B9"]])
    assert night(src) == 1
    assert night(src) == 1  # still failing: still needs a human
    assert night(other) == 1
    assert [b["text"].split(":")[0] for b in receiver.bodies] == [
        "bulklink nightly.results",
        "bulklink nightly.results",
        "bulklink other.results",
    ]
    assert all("1 of 2 rows not linked (exit 1)" in b["text"] for b in receiver.bodies)

    sandbox.config.unknown_prefix = ""
    assert night(src) == 0
    recovery = receiver.bodies[-1]
    assert len(receiver.raw) == 4
    first = recovery["text"].splitlines()[0]
    assert first.startswith("bulklink nightly.results: recovered: every row linked (exit 0)")
    assert "after a failed run (exit 1)" in first
    assert recovery["summary"]["exit_code"] == 0

    assert night(src) == 0
    assert len(receiver.raw) == 4, "the night after a recovery sent a notice"


def test_a_retry_that_fixes_the_report_is_a_recovery(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = mixed_csv(tmp_path / "nightly.csv")
    report = tmp_path / "nightly.results.csv"
    common = ("--notify", receiver.url, "--max-retries", "0", *FAST)
    assert run_against(sandbox, "run", src, *common).exit_code == 1
    sandbox.config.unknown_prefix = ""
    result = run_against(sandbox, "retry", report, *common)
    assert result.exit_code == 0, result.stderr
    problem, recovery = receiver.bodies
    assert problem["text"].startswith("bulklink nightly.results: 1 of 3 rows not linked")
    assert recovery["text"].startswith("bulklink nightly.results: recovered: every row linked")
    assert recovery["summary"]["report"] == str(report)


def test_notify_on_always_sends_after_every_run(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    for _ in range(2):
        result = run_against(
            sandbox, "run", src, "--notify", receiver.url, "--notify-on", "always", *FAST
        )
        assert result.exit_code == 0, result.stderr
    assert [b["text"].splitlines()[0] for b in receiver.bodies] == [
        "bulklink in.results: every row linked (exit 0)",
        "bulklink in.results: every row linked (exit 0)",
    ]
    assert receiver.bodies[1]["summary"]["counts"]["already-linked"] == 3


def test_the_variable_works_like_the_option(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = mixed_csv(tmp_path / "in.csv")
    env = {"BULKLINK_NOTIFY_URL": receiver.url}
    result = run_against(sandbox, "run", src, "--max-retries", "0", *FAST, env=env)
    assert result.exit_code == 1, result.stderr
    [body] = receiver.bodies
    assert body["text"].startswith("bulklink in.results: 1 of 3 rows not linked")
    assert "hook-SECRET" not in result.stderr


# -- a receiver that fails -----------------------------------------------------------------


@pytest.mark.slow
def test_dead_and_slow_webhooks_warn_once_keep_the_exit_code_and_end(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead webhook, then a slow one that answers 500 twice at once and then nothing for
    longer than the notice timeout: the run ends after one timed-out try. The timeout is
    the library's setting (no CLI flag), shortened here so the test waits 0.5 s, not 10."""
    monkeypatch.setattr(bulklink.net.notify, "DEFAULT_TIMEOUT", 0.5)
    dead = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}?{HOOK_QUERY}"
    src = mixed_csv(tmp_path / "dead.csv")
    log = tmp_path / "run.log"
    started = time.monotonic()
    result = run_against(
        sandbox, "run", src, "--notify", dead, "--max-retries", "0", "--log-file", log, *FAST
    )
    took = time.monotonic() - started
    assert result.exit_code == 1, result.stderr  # the run's own
    warnings = [line for line in result.stderr.splitlines() if "notice" in line]
    assert warnings == [
        "warning: the notice to 127.0.0.1 was not delivered: cannot connect"
        " (Connection refused) (3 tries)"
    ]
    assert "Traceback" not in result.stderr
    assert warnings[0] in log.read_text(encoding="utf-8")
    assert took < 15, f"a dead webhook held the run for {took:.1f}s"

    receiver.answers = [500, 500, (500, 30.0)]
    slow_src = pairs_csv(tmp_path / "slow.csv", 3)
    started = time.monotonic()
    slow = run_against(
        sandbox, "run", slow_src, "--notify", receiver.url, "--notify-on", "always", *FAST
    )
    took = time.monotonic() - started
    assert slow.exit_code == 0, slow.stderr
    assert [line for line in slow.stderr.splitlines() if "notice" in line] == [
        "warning: the notice to 127.0.0.1 was not delivered: no answer within 0.5s (3 tries)"
    ]
    assert "Traceback" not in slow.stderr and "hook-SECRET" not in slow.stderr + slow.stdout
    assert len(receiver.raw) == 3
    assert took < 25, f"a slow webhook held the run for {took:.1f}s"


# -- secrets -------------------------------------------------------------------------------

ODD_TOKEN = 'tok"SE\\CRET&<x>%+1'


def secret_forms(secret: str) -> list[str]:
    return [secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)]


def test_no_secret_in_any_body_and_the_webhook_url_in_no_file(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    # The API echoes the token back in its error messages, in every form.
    echoes = [
        Reply(400, {"statusCode": 400, "message": f"bad header Bearer {ODD_TOKEN}"}),
        Reply(400, {"statusCode": 400, "message": f"echo {json.dumps(ODD_TOKEN)}"}),
        Reply(400, {"statusCode": 400, "message": f"see /x?t={quote(ODD_TOKEN, safe='')}"}),
    ]
    server = start_sandbox(
        token=ODD_TOKEN, script={f"E{i}": [reply] for i, reply in enumerate(echoes)}
    )
    src = write_csv(
        tmp_path / "in.csv", [HEAD, ["A1", "B1"], ["E0", "F0"], ["E1", "F1"], ["E2", "F2"]]
    )
    state = tmp_path / "state.sqlite3"
    files = {
        "log": tmp_path / "run.log",
        "summary": tmp_path / "summary.json",
        "metrics": tmp_path / "m.prom",
    }
    result = run_against(
        server, "run", src, "--notify", receiver.url, "--notify-on", "always", "--state", state,
        "--log-file", files["log"], "--summary-json", files["summary"],
        "--metrics-file", files["metrics"], "--max-retries", "0", *FAST,
        env={"THENA_TOKEN": ODD_TOKEN},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    [raw] = receiver.raw
    body = json.loads(raw)
    assert body["summary"]["counts"]["failed"] == 3
    wire = [raw.decode("utf-8"), json.dumps(body, ensure_ascii=False), body["text"]]
    for text in wire:
        for form in secret_forms(ODD_TOKEN):
            assert form not in text, f"{form!r} reached the webhook"

    # The webhook URL (a secret) never reaches a file or a stream, only its host.
    report = tmp_path / "in.results.csv"
    written = [result.stdout, result.stderr, raw.decode("utf-8")]
    written += [p.read_text(encoding="utf-8") for p in (*files.values(), report)]
    written.append(state.read_bytes().decode("latin-1"))
    db = sqlite3.connect(state)
    written += [repr(row) for row in db.execute("SELECT * FROM runs").fetchall()]
    db.close()
    for text in written:
        for secret in ("hook-SECRET-path", "qs-SECRET-value", receiver.url):
            assert secret not in text
        for form in secret_forms(ODD_TOKEN):
            assert form not in text, f"{form!r} written out"


def test_plain_http_webhook_elsewhere_is_refused_before_anything_is_sent(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    url = "http://hooks.example.invalid/services/hook-SECRET-path"
    for how in (("--notify", url), ()):
        env = {} if how else {"BULKLINK_NOTIFY_URL": url}
        result = run_against(sandbox, "run", src, *how, *FAST, env=env)
        assert result.exit_code == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("bulklink: error: ") and "hooks.example.invalid" in line
        assert "hook-SECRET" not in line
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()


# -- the metrics file ----------------------------------------------------------------------


def test_metrics_file_after_real_runs(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={"N2": [Reply(429)]})  # one 429, then linked
    metrics = tmp_path / "bulklink.prom"
    src = write_csv(tmp_path / "in.csv", [HEAD, ["A1", "B1"]])
    args = ("--metrics-file", metrics, "--job", "links", "--max-retries", "2", *FAST)
    first = run_against(server, "run", src, *args)
    assert first.exit_code == 0, first.stderr
    [good_night] = [r for r in json.loads(invoke("runs", "--json").stdout)]
    success = stamp_seconds(good_night["finished"])
    assert one(metric_values(metrics), "bulklink_last_success_timestamp_seconds") == pytest.approx(
        success, abs=1.5
    )

    # The next night holds every outcome.
    write_csv(
        src,
        [
            HEAD,
            ["A1", "B1"],  # already-linked
            ["N1", "M1"],  # linked
            ["N2", "M2"],  # linked after a 429
            ["MISSING3", "M3"],  # failed (404)
            ["", "M4"],  # invalid
            ["N1", "M1"],  # duplicate
            ["N5", "M5"],  # skipped (--limit)
        ],
    )
    before = len(server.requests)
    second = run_against(server, "run", src, "--limit", "3", *args)
    assert second.exit_code == 1, second.stderr
    requests = len(server.requests) - before
    finished = time.time()

    values = metric_values(metrics)
    for name, samples in values.items():
        assert all(labels["job"] == "links" for labels, _ in samples), name
    rows = {labels["outcome"]: value for labels, value in values["bulklink_last_run_rows"]}
    assert rows == {
        "linked": 2, "failed": 1, "invalid": 1, "duplicate": 1, "skipped": 1, "already-linked": 1,
    }  # fmt: skip
    assert set(rows) == OUTCOMES
    assert one(values, "bulklink_last_run_exit_code") == 1
    assert 0 < one(values, "bulklink_last_run_duration_seconds") < 30
    assert finished - 30 < one(values, "bulklink_last_run_finished_timestamp_seconds") <= finished
    assert one(values, "bulklink_last_run_requests") == requests == 4
    assert one(values, "bulklink_last_run_throttled_requests") == 1
    # A failed night keeps the time of the last good one, from the store.
    assert one(values, "bulklink_last_success_timestamp_seconds") == success


def test_a_run_refused_for_bad_input_notifies_and_writes_metrics(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = write_csv(tmp_path / "in.csv", [["foo", "bar"], ["1", "2"]])  # no ID columns
    metrics = tmp_path / "m.prom"
    result = run_against(
        sandbox, "run", src, "--notify", receiver.url, "--metrics-file", metrics, *FAST
    )
    assert result.exit_code == 2, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("bulklink: error: ")]
    assert sandbox.requests == []
    [body] = receiver.bodies
    assert body["text"].startswith("bulklink in.results: usage or input error; nothing was sent")
    assert body["summary"]["exit_code"] == 2
    assert line.removeprefix("bulklink: error: ") in body["text"]
    values = metric_values(metrics)
    assert one(values, "bulklink_last_run_exit_code") == 2
    rows = {labels["outcome"]: value for labels, value in values["bulklink_last_run_rows"]}
    assert rows == dict.fromkeys(OUTCOMES, 0)
    assert all(labels["job"] == "in.results" for v in values.values() for labels, _ in v)
    assert one(values, "bulklink_last_success_timestamp_seconds") == 0  # never succeeded
    [refused] = json.loads(invoke("runs", "--json").stdout)
    assert refused["exit_code"] == 2 and refused["command_line"].startswith("bulklink run ")

    # Fixed the next night: a recovery.
    pairs_csv(src, 2)
    result = run_against(
        sandbox, "run", src, "--notify", receiver.url, "--metrics-file", metrics, *FAST
    )
    assert result.exit_code == 0, result.stderr
    assert "recovered" in receiver.bodies[-1]["text"].splitlines()[0]
    good = json.loads(invoke("runs", "--json").stdout)[0]

    # Broken again: the last success stays that night's.
    write_csv(src, [["foo", "bar"], ["1", "2"]])
    result = run_against(
        sandbox, "run", src, "--notify", receiver.url, "--metrics-file", metrics, *FAST
    )
    assert result.exit_code == 2, result.stderr
    values = metric_values(metrics)
    assert one(values, "bulklink_last_run_exit_code") == 2
    last = one(values, "bulklink_last_success_timestamp_seconds")
    assert last == stamp_seconds(good["finished"])
    assert len(receiver.raw) == 3


@pytest.mark.parametrize(
    ("refusal", "env", "args"),
    [
        ("no token", {"THENA_TOKEN": None}, ()),
        ("a token file missing", {"THENA_TOKEN": None}, ("--token-file", "{tmp}/nope")),
        ("no org ID", {"THENA_ORG_ID": None}, ()),
        ("a plain http base URL", {"THENA_BASE_URL": "http://10.1.2.3:9"}, ()),
        ("a CA bundle missing", {"BULKLINK_CA_BUNDLE": "/nonexistent"}, ()),
        ("a proxy it cannot use", {"BULKLINK_PROXY": "socks5://127.0.0.1:1"}, ()),
        ("click's own check", {}, ("--rate", "-1")),
        ("an option's value", {}, ("--deadline", "5x")),
        ("the webhook itself", {}, ("--notify", "ftp://x")),
        ("two files that are one", {}, ("--log-file", "{tmp}/in.csv")),
    ],
)
def test_every_refused_night_is_in_the_files_the_history_and_ends_in_a_recovery(
    tmp_path: Path,
    sandbox: Sandbox,
    receiver: Receiver,
    refusal: str,
    env: dict[str, str | None],
    args: tuple[str, ...],
) -> None:
    """The typical broken night (a token file gone after a rotation, a variable lost): the
    dashboard, the summary JSON and ``bulklink runs`` say exit 2, and the next good night
    sends the recovery notice."""
    src = pairs_csv(tmp_path / "in.csv", 3)
    metrics, summary = tmp_path / "m.prom", tmp_path / "s.json"
    outputs = ("--metrics-file", metrics, "--summary-json", summary, "--job", "nightly", *FAST)

    def night(*extra: str, **env: str | None) -> int:
        given: list[str | Path] = [*outputs, "--notify", receiver.url, *extra]
        return run_against(sandbox, "run", src, *given, env=env).exit_code

    assert night() == 0
    wrong = [a.format(tmp=tmp_path) for a in args]
    result = run_against(sandbox, "run", src, *outputs, "--notify", receiver.url, *wrong, env=env)
    assert result.exit_code == 2, result.stderr
    assert sandbox.requests[3:] == [], refusal
    assert one(metric_values(metrics), "bulklink_last_run_exit_code") == 2
    written = json.loads(summary.read_text(encoding="utf-8"))
    assert written["exit_code"] == 2
    assert written["stopped"] in result.stderr
    bad, good = json.loads(invoke("runs", "--json").stdout)
    assert (bad["exit_code"], good["exit_code"]) == (2, 0)
    assert bad["job"] == "nightly" and bad["command_line"].startswith("bulklink run ")
    assert night() == 0
    assert "recovered" in receiver.bodies[-1]["text"].splitlines()[0]


def test_a_refused_night_writes_no_output_that_is_another_file(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Outputs the run's own checks refuse (one file twice, the input) are left alone by
    the refusal's summary and metrics; the history still has the night."""
    src = pairs_csv(tmp_path / "in.csv", 3)
    before = src.read_bytes()
    shared = tmp_path / "shared"
    shared.write_text("the previous night's\n", encoding="utf-8")
    result = run_against(
        sandbox, "run", src, "--summary-json", shared, "--metrics-file", shared, *FAST,
        env={"THENA_TOKEN": None},
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert shared.read_text(encoding="utf-8") == "the previous night's\n"
    result = run_against(
        sandbox, "run", src, "--summary-json", src, "--metrics-file", tmp_path / "m.prom", *FAST,
        env={"THENA_TOKEN": None},
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert src.read_bytes() == before
    assert one(metric_values(tmp_path / "m.prom"), "bulklink_last_run_exit_code") == 2
    assert [r["exit_code"] for r in json.loads(invoke("runs", "--json").stdout)] == [2, 2]


def test_a_refused_dry_run_writes_and_sends_nothing(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    metrics = tmp_path / "m.prom"
    result = run_against(
        sandbox, "run", src, "--dry-run", "--rate", "-1", "--metrics-file", metrics,
        "--notify", receiver.url,
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert not metrics.exists() and receiver.raw == []
    assert json.loads(invoke("runs", "--json").stdout) == []


def test_a_run_stopped_by_sigterm_notifies_and_writes_metrics_with_its_exit_code(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], receiver: Receiver
) -> None:
    server = start_sandbox(latency=0.05)
    src = pairs_csv(tmp_path / "in.csv", 100)
    metrics = tmp_path / "m.prom"
    args = ("run", src, "--notify", receiver.url, "--metrics-file", metrics, "--concurrency", "2")
    with spawn(server, *args, *FAST) as proc:
        wait_until(lambda: len(server.requests) >= 6, "6 requests")
        os.kill(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    [body] = receiver.bodies
    assert "stopped by SIGTERM" in body["text"].splitlines()[0]
    assert body["summary"]["exit_code"] == 143 and body["summary"]["counts"]["skipped"] > 0
    values = metric_values(metrics)
    assert one(values, "bulklink_last_run_exit_code") == 143
    rows = {labels["outcome"]: value for labels, value in values["bulklink_last_run_rows"]}
    assert rows["linked"] == len(server.link_counts) and rows["skipped"] == 100 - rows["linked"]


def test_a_run_refused_for_a_store_it_cannot_use_notifies_and_writes_metrics(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    store = tmp_path / "state.sqlite3"
    store.write_text("not a database\n", encoding="utf-8")
    src = pairs_csv(tmp_path / "in.csv", 3)
    metrics, summary = tmp_path / "m.prom", tmp_path / "s.json"
    result = run_against(
        sandbox, "run", src, "--state", store, "--notify", receiver.url, "--metrics-file", metrics,
        "--summary-json", summary, *FAST,
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("bulklink: error: ") and str(store) in line
    assert sandbox.requests == []
    assert store.read_text(encoding="utf-8") == "not a database\n"
    [body] = receiver.bodies
    assert body["text"].startswith("bulklink in.results: usage or input error; nothing was sent")
    assert str(store) in body["text"]
    assert body["summary"] == json.loads(summary.read_text(encoding="utf-8"))
    assert one(metric_values(metrics), "bulklink_last_run_exit_code") == 2


def test_a_run_refused_because_another_holds_the_report_only_notifies(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    report = tmp_path / "in.results.csv"
    metrics, summary = tmp_path / "m.prom", tmp_path / "s.json"
    with hold(report, "bulklink run (the other one)"):
        result = run_against(
            sandbox, "run", src, "--notify", receiver.url, "--metrics-file", metrics,
            "--summary-json", summary, *FAST,
        )  # fmt: skip
    assert result.exit_code == 75, result.stderr
    [body] = receiver.bodies
    assert body["summary"]["exit_code"] == 75
    assert "another run still holds the report" in body["text"]
    assert not metrics.exists() and not summary.exists()
    assert sandbox.requests == []
    assert json.loads(invoke("runs", "--json").stdout) == []
