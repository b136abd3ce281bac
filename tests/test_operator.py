"""Operator and integrator experience (issue 5): both auth modes, JWT preflight, canary runs
with --limit, stdin and read overrides, `bulklink report`, the Python API, help and shell
completion. Everything talks real HTTP to the sandbox on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import gc
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import bulklink
from bulklink.cli import cli
from bulklink.sandbox import Sandbox
from tests.conftest import ORG, TOKEN, invoke, pairs_csv, read_report, run_against, write_csv

KEY = "k-SECRET-123"
FAST = ("--rate", "0", "--backoff", "0.01", "--no-progress")
README = Path(__file__).parent.parent / "README.md"


def sent_pairs(server: Sandbox) -> list[tuple[str, str]]:
    return [
        (json.loads(r.body)["sourceTicketId"], json.loads(r.body)["linkedTicketId"])
        for r in server.requests
    ]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(**claims: Any) -> str:
    """An unsigned-looking JWT: header.payload.signature, base64url without padding."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "user_1", **claims}).encode())
    return f"{header}.{payload}.{b64url(b'not-a-real-signature')}"


def stamps(text: str) -> list[datetime]:
    """Every ``YYYY-MM-DD HH:MM:SS`` (or ``T``-separated) time in text, read as UTC."""
    found = re.findall(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})", text)
    return [datetime.fromisoformat(f"{d}T{t}+00:00") for d, t in found]


def has_count(text: str, name: str, n: int) -> bool:
    """``linked 3``, ``linked: 3``, ``linked=3`` or ``3 linked`` somewhere in text."""
    return bool(
        re.search(rf"\b{name}\b\W{{0,3}}{n}\b", text) or re.search(rf"\b{n}\W{{0,3}}{name}\b", text)
    )


def said(stderr: str, tmp_path: Path) -> str:
    """stderr without the test's directory (whose name holds words like 'warning')."""
    return stderr.replace(str(tmp_path), "<tmp>").lower()


def no_secret_anywhere(secret: str, *texts: str, files: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert secret not in text
    for path in files:
        if path.exists():
            assert secret.encode() not in path.read_bytes(), path


# -- both auth modes -------------------------------------------------------------------


@pytest.mark.parametrize("via", ["flag", "env", "file"])
@pytest.mark.parametrize("with_org", [True, False], ids=["org", "no-org"])
def test_api_key_mode_sends_x_api_key_and_no_authorization(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, via: str, with_org: bool
) -> None:
    server = start_sandbox(api_key=KEY)
    src = pairs_csv(tmp_path / "in.csv", 4)
    out, log, summary = tmp_path / "out.csv", tmp_path / "run.log", tmp_path / "summary.json"
    env = {"THENA_BASE_URL": server.url}
    args: list[str | Path] = ["run", src, "-o", out, "--log-file", log, "--summary-json", summary]
    if via == "flag":
        args += ["--api-key", KEY]
    elif via == "env":
        env["THENA_API_KEY"] = KEY
    else:
        (tmp_path / "key").write_text(KEY + "\n")
        args += ["--api-key-file", tmp_path / "key"]
    if with_org:
        env["THENA_ORG_ID"] = ORG
    result = invoke(*args, *FAST, env=env)

    assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 4
    for request in server.requests:
        assert request.header("x-api-key") == KEY
        assert request.header("authorization") is None
        assert request.header("x-org-id") == (ORG if with_org else None)
    assert {r["outcome"] for r in read_report(out)} == {"linked"}
    no_secret_anywhere(KEY, result.stdout, result.stderr, files=(out, log, summary))


def test_rejected_api_key_is_never_shown(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(api_key=KEY)
    wrong = "k-WRONG-9876543210"
    src = pairs_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.csv"
    result = invoke(
        "run", src, "-o", out, *FAST,
        env={"THENA_BASE_URL": server.url, "THENA_API_KEY": wrong},
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    assert server.requests and all(r.status == 401 for r in server.requests)
    assert all(r.header("authorization") is None for r in server.requests)
    assert {r["outcome"] for r in read_report(out)} <= {"failed", "skipped"}
    no_secret_anywhere(wrong, result.stdout, result.stderr, files=(out,))


def test_retry_in_api_key_mode(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    server = start_sandbox(api_key=KEY)
    src = pairs_csv(tmp_path / "in.csv", 6)
    report = tmp_path / "in.results.csv"
    env = {"THENA_BASE_URL": server.url, "THENA_API_KEY": KEY}
    first = invoke("run", src, "--limit", "2", *FAST, env=env)
    assert first.exit_code == 1, first.stderr
    second = invoke("retry", report, *FAST, env=env)
    assert second.exit_code == 0, second.stderr
    assert len(server.requests) == 6
    assert all(r.header("authorization") is None for r in server.requests)
    assert all(r.header("x-api-key") == KEY for r in server.requests)
    no_secret_anywhere(KEY, first.stderr, second.stderr, second.stdout, files=(report,))


@pytest.mark.parametrize("key_via", ["flag", "env", "file"])
@pytest.mark.parametrize("token_via", ["flag", "env", "file"])
def test_token_and_api_key_together_is_a_usage_error(
    sandbox: Sandbox, tmp_path: Path, token_via: str, key_via: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    env = {"THENA_BASE_URL": sandbox.url, "THENA_ORG_ID": ORG}
    args: list[str | Path] = ["run", src, *FAST]
    for via, value, flag, var in (
        (token_via, TOKEN, "--token", "THENA_TOKEN"),
        (key_via, KEY, "--api-key", "THENA_API_KEY"),
    ):
        if via == "flag":
            args += [flag, value]
        elif via == "env":
            env[var] = value
        else:
            path = tmp_path / var.lower()
            path.write_text(value)
            args += [f"{flag}-file", path]
    result = invoke(*args, env=env)

    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip(), "a usage error says what is wrong"
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()
    no_secret_anywhere(KEY, result.stdout, result.stderr)
    no_secret_anywhere(TOKEN, result.stdout, result.stderr)


# -- JWT preflight ---------------------------------------------------------------------


def test_expired_jwt_stops_before_sending(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    exp = int(time.time()) - 3 * 3600
    jwt = make_jwt(exp=exp)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", 5)
    result = run_against(server, "run", src, *FAST, env={"THENA_TOKEN": jwt})

    assert result.exit_code == 2, result.stderr
    assert "expire" in said(result.stderr, tmp_path)
    when = datetime.fromtimestamp(exp, UTC)
    assert when in stamps(result.stderr), result.stderr
    assert re.search(r"UTC|\d{2}Z\b|\+00:?00", result.stderr), "the time is said to be UTC"
    assert server.requests == []
    assert not (tmp_path / "in.results.csv").exists()
    assert jwt not in result.stderr


@pytest.mark.parametrize(("rows", "limit"), [(1, None), (100, 1)])
def test_jwt_expiring_before_the_estimated_end_warns_and_runs(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, rows: int, limit: int | None
) -> None:
    now = time.time()
    exp = int(now) + 5
    jwt = make_jwt(exp=exp)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", rows)
    extra = ["--limit", str(limit)] if limit is not None else []
    # One row to send at 0.1 rows/s: estimated to need 10 s, past the token's exp.
    result = run_against(
        server, "run", src, "--rate", "0.1", "--no-progress", *extra, env={"THENA_TOKEN": jwt}
    )

    assert result.exit_code == (0 if limit is None else 1), result.stderr
    warning = [line for line in said(result.stderr, tmp_path).splitlines() if "expire" in line]
    assert len(warning) == 1, result.stderr
    times = stamps(warning[0])
    exp_at = datetime.fromtimestamp(exp, UTC)
    assert exp_at in times, warning[0]
    assert any(t > exp_at for t in times), f"the estimated end is shown too: {warning[0]}"
    assert len(server.requests) == 1
    assert server.requests[0].header("authorization") == f"Bearer {jwt}"
    assert read_report(tmp_path / "in.results.csv")[0]["outcome"] == "linked"
    assert jwt not in result.stderr


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_jwt(exp=int(time.time()) + 30 * 86400), id="jwt-far-future"),
        pytest.param(make_jwt(), id="jwt-without-exp"),
        pytest.param(TOKEN, id="opaque"),
        pytest.param("not.a.jwt", id="dotted-opaque"),
    ],
)
def test_no_warning_for_a_good_jwt_or_a_non_jwt(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, token: str
) -> None:
    server = start_sandbox(token=token)
    src = pairs_csv(tmp_path / "in.csv", 1)
    result = run_against(
        server, "run", src, "--rate", "0.1", "--no-progress", env={"THENA_TOKEN": token}
    )
    assert result.exit_code == 0, result.stderr
    assert "warning" not in said(result.stderr, tmp_path)
    assert "expire" not in said(result.stderr, tmp_path)
    assert [r.header("authorization") for r in server.requests] == [f"Bearer {token}"]


def test_jwt_estimate_counts_only_the_rows_limit_lets_through(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """100 rows at 0.5/s would need 200 s, but --limit 1 sends one row: no warning."""
    jwt = make_jwt(exp=int(time.time()) + 60)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", 100)
    result = run_against(
        server, "run", src, "--rate", "0.5", "--limit", "1", "--no-progress",
        env={"THENA_TOKEN": jwt},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert "expire" not in said(result.stderr, tmp_path)
    assert len(server.requests) == 1


# -- canary runs: --limit then retry ---------------------------------------------------


def test_limit_then_retry_completes_the_file(sandbox: Sandbox, tmp_path: Path) -> None:
    src = pairs_csv(tmp_path / "in.csv", 20)
    report = tmp_path / "in.results.csv"
    first = run_against(sandbox, "run", src, "--limit", "5", *FAST)

    assert first.exit_code == 1, first.stderr
    assert len(sandbox.requests) == 5
    rows = read_report(report)
    assert len(rows) == 20
    assert [r["outcome"] for r in rows[:5]] == ["linked"] * 5
    assert sorted(sent_pairs(sandbox)) == [(f"T{i:05d}", f"TL{i:05d}") for i in range(1, 6)]
    for row in rows[5:]:
        assert row["outcome"] == "skipped"
        assert row["error"] == "not attempted (--limit 5)"
        assert row["attempts"] == "0"
        assert row["success"] == "false"

    second = run_against(sandbox, "retry", report, *FAST)
    assert second.exit_code == 0, second.stderr
    assert len(sandbox.requests) == 20
    assert set(sandbox.link_counts.values()) == {1}
    assert len(sandbox.link_counts) == 20
    rows = read_report(report)
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 21)]
    assert {r["outcome"] for r in rows} == {"linked"}
    assert all(r["error"] == "" and r["attempts"] == "1" for r in rows)


def test_limit_counts_only_pairs_that_would_be_sent(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId"],
            ["", "B1"],  # 1 invalid
            ["A2", "B2"],  # 2 sent
            ["A2", "B2"],  # 3 duplicate of 2
            ["A4", "A4"],  # 4 invalid (self-link)
            ["A5", "B5"],  # 5 sent
            ["A6", "B6"],  # 6 over the limit
        ],
    )
    result = run_against(sandbox, "run", src, "--limit", "2", *FAST)
    assert result.exit_code == 1, result.stderr
    assert sorted(sent_pairs(sandbox)) == [("A2", "B2"), ("A5", "B5")]
    rows = read_report(tmp_path / "in.results.csv")
    assert [r["outcome"] for r in rows] == [
        "invalid", "linked", "duplicate", "invalid", "linked", "skipped",
    ]  # fmt: skip
    assert rows[5]["error"] == "not attempted (--limit 2)"


# -- pipes: stdin, --encoding, --delimiter ----------------------------------------------


def test_stdin_input_with_output(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    data = "sourceTicketId,linkedTicketId,note\n00123,00456,keep me\nCT-1,CT-2,x\n"
    result = run_against(sandbox, "run", "-", "-o", out, *FAST, input=data)

    assert result.exit_code == 0, result.stderr
    assert sorted(sent_pairs(sandbox)) == [("00123", "00456"), ("CT-1", "CT-2")]
    rows = read_report(out)
    assert [(r["sourceTicketId"], r["linkedTicketId"], r["note"]) for r in rows] == [
        ("00123", "00456", "keep me"),
        ("CT-1", "CT-2", "x"),
    ]
    assert {r["outcome"] for r in rows} == {"linked"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"], "no spool left behind"


def test_stdin_without_output_is_a_usage_error(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_against(sandbox, "run", "-", *FAST, input="sourceTicketId,linkedTicketId\nA,B\n")
    assert result.exit_code == 2, result.stderr
    assert "-o" in result.stderr or "--output" in result.stderr
    assert sandbox.requests == []
    assert list(tmp_path.iterdir()) == []


def test_delimiter_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "semi.csv"
    src.write_text("sourceTicketId;linkedTicketId\nA,1;B,2\nC,3;D,4\n", encoding="utf-8")
    result = run_against(sandbox, "run", src, "--delimiter", ";", *FAST)
    assert result.exit_code == 0, result.stderr
    assert sorted(sent_pairs(sandbox)) == [("A,1", "B,2"), ("C,3", "D,4")]

    wrong = run_against(sandbox, "run", src, "--delimiter", ",", "--fresh", *FAST)
    assert wrong.exit_code == 2, "with ',' forced, the header is one column: no ID columns"
    assert len(sandbox.requests) == 2


def test_tab_delimiter_alias(sandbox: Sandbox, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", [["source", "linked"], ["A 1", "B 1"]], delimiter="\t")
    result = run_against(sandbox, "run", src, "--delimiter", "tab", *FAST)
    assert result.exit_code == 0, result.stderr
    assert sent_pairs(sandbox) == [("A 1", "B 1")]


def test_encoding_overrides_detection(sandbox: Sandbox, tmp_path: Path) -> None:
    text = "sourceTicketId,linkedTicketId\nCAFÉ-1,NOËL-2\n"
    cp = tmp_path / "cp.csv"
    cp.write_bytes(text.encode("cp1252"))
    result = run_against(sandbox, "run", cp, "--encoding", "cp1252", *FAST)
    assert result.exit_code == 0, result.stderr
    assert sent_pairs(sandbox) == [("CAFÉ-1", "NOËL-2")]
    assert read_report(tmp_path / "cp.results.csv")[0]["sourceTicketId"] == "CAFÉ-1"

    # A valid UTF-8 file forced to cp1252 is read as cp1252: the override wins.
    utf = tmp_path / "utf.csv"
    utf.write_bytes(text.encode("utf-8"))
    forced = run_against(sandbox, "run", utf, "--encoding", "cp1252", *FAST)
    assert forced.exit_code == 0, forced.stderr
    assert sent_pairs(sandbox)[1] == (
        "CAFÉ-1".encode().decode("cp1252"),
        "NOËL-2".encode().decode("cp1252"),
    )


def test_stdin_honours_encoding_and_delimiter(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    data = "sourceTicketId;linkedTicketId\nÉTÉ,1;HIVER,2\n".encode("cp1252")
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url}
    result = CliRunner().invoke(
        cli,
        ["run", "-", "-o", str(out), "--encoding", "cp1252", "--delimiter", ";", *FAST],
        input=data,
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert sent_pairs(sandbox) == [("ÉTÉ,1", "HIVER,2")]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["sourceTicketId"], r["outcome"]) for r in lines] == [("ÉTÉ,1", "linked")]


# -- bulklink report -------------------------------------------------------------------

MIXED = [
    ["sourceTicketId", "linkedTicketId"],
    ["A01", "B01"],  # 1 linked
    ["MISSING02", "B02"],  # 2 failed 404
    ["MISSING03", "B03"],  # 3 failed 404
    ["", "B04"],  # 4 invalid (blank)
    ["A01", "B01"],  # 5 duplicate of 1
    ["MISSING06", "B06"],  # 6 failed 404
    ["X07", "X07"],  # 7 invalid (self-link)
    ["A08", "B08"],  # 8 linked
    ["MISSING09", "B09"],  # 9 failed 404
    ["A10", "B10"],  # 10 skipped (--limit 6)
    ["A11", "B11"],  # 11 skipped
    ["", "B12"],  # 12 invalid (blank)
]
MIXED_COUNTS = {"linked": 2, "failed": 4, "invalid": 3, "duplicate": 1, "skipped": 2}


def pick(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    raise AssertionError(f"none of {names} in {sorted(data)}")


@pytest.mark.parametrize("ext", ["csv", "xlsx", "jsonl"])
def test_report_command_on_each_format(sandbox: Sandbox, tmp_path: Path, ext: str) -> None:
    src = write_csv(tmp_path / "mixed.csv", MIXED)
    out = tmp_path / f"mixed.results.{ext}"
    ran = run_against(sandbox, "run", src, "-o", out, "--limit", "6", *FAST)
    assert ran.exit_code == 1, ran.stderr
    sent = len(sandbox.requests)
    assert sent == 6

    text = invoke("report", out)
    assert text.exit_code == 1, text.stderr
    for name, n in MIXED_COUNTS.items():
        assert has_count(text.stdout, name, n), (name, n, text.stdout)

    as_json = invoke("report", out, "--json")
    assert as_json.exit_code == 1, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {k: v for k, v in pick(data, "counts").items() if v} == MIXED_COUNTS
    groups = pick(data, "errors", "failures")
    counts = [pick(g, "count") for g in groups]
    assert counts == sorted(counts, reverse=True), "most common first"
    top = groups[0]
    assert pick(top, "count") == 4 and "404" in pick(top, "error")
    # Row numbers are JSON numbers whatever the report's format (checked last, below).
    examples = [int(r) for r in pick(top, "example_rows", "rows", "examples")]
    assert examples and set(examples) <= {2, 3, 6, 9} and 2 in examples
    by_rows = {frozenset(int(r) for r in pick(g, "example_rows")) for g in groups}
    assert {frozenset({4, 12}), frozenset({10, 11}), frozenset({7})} <= by_rows
    assert sum(counts) == 4 + 3 + 2, "every unlinked row (not duplicates) is in a group"
    assert pick(data, "retryable_rows", "to_retry", "rows_to_retry") == 6

    # The text says the same: the 404 group first, with its count and example rows.
    lines = text.stdout.splitlines()
    at_404 = [i for i, line in enumerate(lines) if "404" in line]
    assert len(at_404) == 1, "the 404s form one group"
    line_404 = lines[at_404[0]]
    assert re.search(r"\b4\b", line_404) and re.search(r"\b2\b", line_404), line_404
    for group in groups[1:]:
        where = [i for i, line in enumerate(lines) if pick(group, "error") in line]
        assert where and where[0] > at_404[0], pick(group, "error")
    assert any("retry" in line and re.search(r"\b6\b", line) for line in lines), text.stdout

    assert len(sandbox.requests) == sent, "report touches no network"

    clean_src = pairs_csv(tmp_path / "clean.csv", 3)
    clean = tmp_path / f"clean.results.{ext}"
    assert run_against(sandbox, "run", clean_src, "-o", clean, *FAST).exit_code == 0
    sent = len(sandbox.requests)
    ok = invoke("report", clean)
    assert ok.exit_code == 0, ok.stderr
    assert has_count(ok.stdout, "linked", 3)
    ok_json = invoke("report", clean, "--json")
    assert ok_json.exit_code == 0
    assert json.loads(ok_json.stdout)["counts"]["linked"] == 3
    assert len(sandbox.requests) == sent

    rows_in_json = [row for g in groups for row in pick(g, "example_rows")]
    assert all(type(row) is int for row in rows_in_json), (
        f"row numbers should be JSON numbers in every format: {rows_in_json}"
    )


def test_report_command_does_not_touch_the_network_even_when_configured(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = write_csv(tmp_path / "in.csv", [["source", "linked"], ["A", "B"], ["MISSING1", "C"]])
    assert run_against(sandbox, "run", src, *FAST).exit_code == 1
    sent = len(sandbox.requests)
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url}
    result = invoke("report", tmp_path / "in.results.csv", env=env)
    assert result.exit_code == 1
    assert len(sandbox.requests) == sent


@pytest.mark.parametrize("kind", ["input-csv", "text", "missing", "jsonl-not-report"])
def test_report_command_refuses_a_non_report(tmp_path: Path, kind: str) -> None:
    if kind == "input-csv":
        path = pairs_csv(tmp_path / "in.csv", 3)
    elif kind == "text":
        path = tmp_path / "notes.csv"
        path.write_text("hello world\nthis is not a report\n")
    elif kind == "missing":
        path = tmp_path / "nope.results.csv"
    else:
        path = tmp_path / "other.jsonl"
        path.write_text('{"a": 1}\n{"a": 2}\n')
    result = invoke("report", path)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()
    assert "Traceback" not in result.stderr


# -- the Python API --------------------------------------------------------------------

PUBLIC = {
    "run_job", "retry_job", "link_pairs", "read_report", "Summary", "LinkResult", "Outcome",
    "BulklinkError", "UsageError", "TokenExpiredError", "InputError", "LockedError",
    "CredentialsRejected", "Interrupted",
}  # fmt: skip


def test_public_api_exports_and_hints() -> None:
    from bulklink import (  # noqa: F401 - the import itself is the test
        BulklinkError,
        CredentialsRejected,
        InputError,
        Interrupted,
        LinkResult,
        LockedError,
        Summary,
        TokenExpiredError,
        UsageError,
        link_pairs,
        read_report,
        retry_job,
        run_job,
    )

    assert set(bulklink.__all__) >= PUBLIC
    for name in bulklink.__all__:
        assert getattr(bulklink, name) is not None
    for error in (UsageError, InputError, LockedError, CredentialsRejected, Interrupted):
        assert issubclass(error, BulklinkError)
    assert issubclass(TokenExpiredError, UsageError)
    assert (UsageError.exit_code, InputError.exit_code) == (2, 2)
    assert (LockedError.exit_code, CredentialsRejected.exit_code) == (75, 3)
    assert typing.get_type_hints(run_job)["return"] is Summary
    assert inspect.isasyncgenfunction(link_pairs)
    assert typing.get_type_hints(link_pairs)["return"] == AsyncGenerator[LinkResult]


def test_run_job_takes_the_cli_options_in_snake_case() -> None:
    run_cmd = cli.commands["run"]
    display_only = {"help", "dry_run", "progress", "quiet", "log_file"}
    wanted = {
        p.name
        for p in run_cmd.params
        if isinstance(p, click.Option) and p.name and p.name not in display_only
    }
    params = inspect.signature(bulklink.run_job).parameters
    assert wanted <= set(params), wanted - set(params)
    for name in wanted:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY or name == "output"


def test_run_job_returns_a_summary_and_prints_nothing(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_csv(
        tmp_path / "in.csv",
        [["sourceTicketId", "linkedTicketId"], ["A1", "B1"], ["MISSING2", "B2"], ["A3", "A3"]],
    )
    out = tmp_path / "out.csv"
    summary = bulklink.run_job(
        src, out, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0, backoff=0.01
    )
    assert isinstance(summary, bulklink.Summary)
    assert summary.exit_code == 1
    counts = summary.counts
    assert (counts["linked"], counts["failed"], counts["invalid"], counts["skipped"]) == (
        1,
        1,
        1,
        0,
    )
    assert summary.rows == 3
    assert [r["outcome"] for r in read_report(out)] == ["linked", "failed", "invalid"]
    assert capsys.readouterr() == ("", "")

    clean = bulklink.run_job(
        pairs_csv(tmp_path / "clean.csv", 4),
        tmp_path / "clean.jsonl",
        base_url=sandbox.url,
        token=TOKEN,
        org_id=ORG,
        rate=0,
    )
    assert clean.exit_code == 0 and clean.counts["linked"] == 4
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == 4
    assert capsys.readouterr() == ("", "")


def test_run_job_errors_are_exceptions_of_the_hierarchy(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_sandbox()
    common: dict[str, Any] = {"base_url": server.url, "rate": 0, "backoff": 0.01}
    src = pairs_csv(tmp_path / "in.csv", 6)

    with pytest.raises(bulklink.InputError) as missing:
        bulklink.run_job(
            tmp_path / "nope.csv", tmp_path / "a.csv", token=TOKEN, org_id=ORG, **common
        )
    assert missing.value.exit_code == 2
    with pytest.raises(bulklink.UsageError):
        bulklink.run_job(src, tmp_path / "b.csv", **common)
    with pytest.raises(bulklink.TokenExpiredError) as expired:
        expired_jwt = make_jwt(exp=int(time.time()) - 60)
        bulklink.run_job(src, tmp_path / "c.csv", token=expired_jwt, org_id=ORG, **common)
    assert isinstance(expired.value, bulklink.UsageError)
    assert server.requests == []

    out = tmp_path / "locked.csv"
    lock = out.with_name(out.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(bulklink.LockedError) as locked:
            bulklink.run_job(src, out, token=TOKEN, org_id=ORG, **common)
    finally:
        os.close(fd)
    assert locked.value.exit_code == 75
    assert server.requests == []
    assert not out.exists()

    wrong = "wrong-token-0123456789"
    rejected_out = tmp_path / "rejected.csv"
    with pytest.raises(bulklink.CredentialsRejected) as rejected:
        bulklink.run_job(src, rejected_out, token=wrong, org_id=ORG, concurrency=1, **common)
    summary = rejected.value.summary
    assert summary is not None and summary.counts["skipped"] >= 1
    assert rejected.value.exit_code == 3
    assert 1 <= len(server.requests) < 6
    rows = read_report(rejected_out)
    assert len(rows) == 6 and {r["outcome"] for r in rows} <= {"failed", "skipped"}
    assert wrong not in str(rejected.value)
    assert capsys.readouterr() == ("", "")


def test_run_job_inside_a_running_event_loop(sandbox: Sandbox, tmp_path: Path) -> None:
    src = pairs_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.csv"

    async def notebook_cell() -> bulklink.Summary:
        asyncio.get_running_loop()  # we are inside a running loop
        return bulklink.run_job(src, out, base_url=sandbox.url, token=TOKEN, org_id=ORG, rate=0)

    summary = asyncio.run(notebook_cell())
    assert summary.exit_code == 0
    assert summary.counts["linked"] == 5
    assert len(sandbox.requests) == 5
    assert {r["outcome"] for r in read_report(out)} == {"linked"}


async def collect(pairs: Any, **options: Any) -> list[bulklink.LinkResult]:
    return [result async for result in bulklink.link_pairs(pairs, **options)]


@pytest.mark.parametrize("as_async", [False, True], ids=["list", "async-iterable"])
def test_link_pairs_yields_one_result_per_pair_in_the_callers_loop(
    start_sandbox: Callable[..., Sandbox], as_async: bool
) -> None:
    server = start_sandbox(latency=0.2)
    pairs = [("A1", "B1"), ("  ", "B2"), ("C3", "C3"), ("MISSING4", "B4"), ("A5", "B5")]

    async def produce() -> AsyncIterator[tuple[str, str]]:
        for pair in pairs:
            await asyncio.sleep(0)
            yield pair

    async def main() -> tuple[list[bulklink.LinkResult], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        beat = asyncio.create_task(ticker())
        try:
            results = await collect(
                produce() if as_async else pairs,
                base_url=server.url, token=TOKEN, org_id=ORG, rate=0, backoff=0.01,
            )  # fmt: skip
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return results, ticks

    results, ticks = asyncio.run(main())
    assert ticks >= 3, "the caller's loop kept running while requests were in flight"
    assert len(results) == len(pairs)
    by_source = {r.source: r for r in results}
    assert set(by_source) == {"A1", "", "C3", "MISSING4", "A5"}
    for source in ("A1", "A5"):
        ok = by_source[source]
        assert (ok.outcome, ok.http_status, ok.error, ok.attempts) == ("linked", 200, "", 1)
        assert ok.success
        assert isinstance(ok.ticket, dict) and ok.ticket["id"] == source
    for source in ("", "C3"):
        bad = by_source[source]
        assert bad.outcome == "invalid" and bad.http_status is None
        assert bad.attempts == 0 and bad.error and bad.ticket is None
    missing = by_source["MISSING4"]
    assert (missing.outcome, missing.http_status, missing.attempts) == ("failed", 404, 1)
    assert "MISSING4" in missing.error
    assert sorted(sent_pairs(server)) == [("A1", "B1"), ("A5", "B5"), ("MISSING4", "B4")]


def test_link_pairs_with_api_key(start_sandbox: Callable[..., Sandbox]) -> None:
    server = start_sandbox(api_key=KEY)
    results = asyncio.run(collect([("A", "B")], base_url=server.url, api_key=KEY, rate=0))
    assert [r.outcome for r in results] == ["linked"]
    assert server.requests[0].header("x-api-key") == KEY
    assert server.requests[0].header("authorization") is None


def test_link_pairs_with_a_wrong_token_skips_the_rest_and_raises(sandbox: Sandbox) -> None:
    pairs = [(f"S{i}", f"L{i}") for i in range(10)]
    results: list[bulklink.LinkResult] = []

    async def main() -> None:
        async for result in bulklink.link_pairs(
            pairs, base_url=sandbox.url, token="wrong-token-xyz", org_id=ORG, rate=0,
            concurrency=1,
        ):  # fmt: skip
            results.append(result)

    with pytest.raises(bulklink.CredentialsRejected) as rejected:
        asyncio.run(main())
    assert "wrong-token-xyz" not in str(rejected.value)
    assert sorted((r.source, r.linked) for r in results) == sorted(pairs)
    sent = set(sent_pairs(sandbox))
    assert 1 <= len(sent) < 10
    assert all(r.outcome == "skipped" and r.attempts == 0 for r in results if (r.source, r.linked)
               not in sent)  # fmt: skip
    assert all(r.outcome != "linked" for r in results)


@pytest.mark.parametrize("how", ["break", "aclosing"])
def test_link_pairs_stops_cleanly_when_the_caller_breaks(
    start_sandbox: Callable[..., Sandbox], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_sandbox(latency=0.05)
    pairs = [(f"S{i:04d}", f"L{i:04d}") for i in range(400)]

    async def main() -> tuple[bulklink.LinkResult, int, int]:
        options: dict[str, Any] = {"base_url": server.url, "token": TOKEN, "org_id": ORG}
        if how == "break":
            async for result in bulklink.link_pairs(pairs, rate=50, **options):
                first = result
                break
        else:
            async with contextlib.aclosing(
                bulklink.link_pairs(pairs, rate=50, **options)
            ) as results:
                async for result in results:
                    first = result
                    break
        await asyncio.sleep(0.3)
        settled = len(server.requests)
        await asyncio.sleep(0.5)
        return first, settled, len(server.requests)

    with caplog.at_level(logging.WARNING):
        first, settled, later = asyncio.run(main())
        gc.collect()
    assert first.outcome == "linked"
    assert settled == later, "no request is sent after the caller stopped reading"
    assert later < 60
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "aiohttp"))]


# -- help, examples, completion --------------------------------------------------------


def help_sections(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.fullmatch(r"\s*[A-Z][\w ]*:", line)]


@pytest.mark.parametrize("command", ["", "run", "retry", "report", "sandbox"])
def test_help_ends_with_examples(command: str) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = invoke(*args)
    assert result.exit_code == 0
    text = result.stdout
    lines = text.rstrip().splitlines()
    assert "Examples:" in text
    start = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    listings = [i for i, line in enumerate(lines) if line.strip() in ("Options:", "Commands:")]
    assert listings and start > max(listings), "the examples come after the options and commands"
    tail = [line.strip() for line in lines[start + 1 :]]
    examples: list[str] = []
    for line in tail:
        if not line:
            continue
        if examples and examples[-1].endswith("\\"):
            examples[-1] = examples[-1][:-1] + line
            continue
        if line.lower().startswith("exit code"):
            break  # a closing note on exit codes may follow the examples
        examples.append(line)
    assert 2 <= len(examples) <= 3, examples
    assert sum(e.startswith("bulklink ") for e in examples) >= 2, examples
    assert all("bulklink " in e for e in examples), examples


def test_every_run_option_has_help_text() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    entries: dict[str, str] = {}
    current = ""
    for line in lines[lines.index("Options:") + 1 :]:
        if not line.startswith("  ") or line.strip() == "Examples:":
            break
        if line.startswith("  -"):
            name, *rest = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            current = next(o for o in name.replace(",", " ").split() if o.startswith("--"))
            entries[current] = " ".join(rest).strip()
        elif current:
            entries[current] += " " + line.strip()
    names = {p.opts[-1] for p in cli.commands["run"].params if isinstance(p, click.Option)}
    assert names | {"--help"} <= set(entries), names - set(entries)
    for name, description in entries.items():
        assert len(description) > 5, f"{name} has no help text"


def test_readme_shows_completion_canary_and_python_api() -> None:
    readme = README.read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_BULKLINK_COMPLETE={shell}_source" in readme, shell
    assert "--limit 10" in readme and "bulklink retry" in readme
    assert "bulklink.run_job(" in readme and "bulklink.link_pairs(" in readme


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_generated(shell: str) -> None:
    exe = Path(sys.executable).parent / "bulklink"
    env = {**os.environ, "_BULKLINK_COMPLETE": f"{shell}_source"}
    done = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "_BULKLINK_COMPLETE" in done.stdout
    assert "complete" in done.stdout
