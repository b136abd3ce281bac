"""What the command line shows: exit codes and the summary, what a terminal, a scheduler
and a log file see, dry runs, ``bulklink report``, help texts and completion.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import (
    Callable,
)
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest

from bulklink.cli import cli
from bulklink.sandbox import Reply, Sandbox
from bulklink.text import escape_controls
from tests.helpers import (
    FAST,
    FAST_UNPACED,
    HEAD,
    ORG,
    ROOT,
    TOKEN,
    invoke,
    make_xlsx,
    one_line_usage_error,
    pairs_csv,
    read_report,
    run,
    run_against,
    spawn,
    write_csv,
)

# -- exit codes and the summary ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "code"),
    [
        pytest.param([["S1", "L1"], ["S2", "L2"]], 0, id="all-linked"),
        pytest.param([["S1", "L1"], ["S2", "L2"], ["S1", "L1"]], 0, id="duplicate-of-linked"),
        pytest.param([["S1", "L1"], ["MISSING2", "L2"]], 1, id="one-failed"),
        pytest.param([["S1", "L1"], ["S2", "S2"]], 1, id="one-self-link"),
        pytest.param([["S1", "L1"], ["", "L2"]], 1, id="one-blank"),
        pytest.param([["MISSING1", "L1"], ["MISSING1", "L1"]], 1, id="duplicate-of-failed"),
    ],
)
def test_exit_codes(sandbox: Sandbox, tmp_path: Path, pairs: list[list[str]], code: int) -> None:
    inp = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], *pairs])
    out = tmp_path / "out.csv"
    result = run_against(sandbox, "run", inp, "-o", out, *FAST_UNPACED)
    assert result.exit_code == code, result.stderr
    assert len(read_report(out)) == len(pairs)


def has_count(text: str, name: str, n: int) -> bool:
    """``linked 3``, ``linked: 3``, ``linked=3`` or ``3 linked`` somewhere in text."""
    return bool(
        re.search(rf"\b{name}\b\W{{0,3}}{n}\b", text) or re.search(rf"\b{n}\W{{0,3}}{name}\b", text)
    )


@pytest.mark.parametrize("rate", ["1e-320", "0.00001"])
def test_a_rate_too_small_to_pace_is_refused_before_anything(
    sandbox: Sandbox, tmp_path: Path, rate: str
) -> None:
    # 1e-320 passed the check, then aiolimiter divided by its rate, 0.0: exit 70.
    result = run(sandbox, pairs_csv(tmp_path / "in.csv", 2), "--rate", rate)
    line = one_line_usage_error(result)
    assert line.startswith("bulklink: error: --rate must be 0 (no limit), or from 0.0001")
    assert sandbox.requests == []


@pytest.mark.parametrize("explicit_output", [True, False])
def test_summary_last_line(sandbox: Sandbox, tmp_path: Path, explicit_output: bool) -> None:
    inp = write_csv(
        tmp_path / "in.csv",
        [
            ["sourceTicketId", "linkedTicketId"],
            ["S1", "L1"],
            ["S2", "L2"],
            ["MISSING3", "L3"],
            ["S4", "S4"],
            ["S1", "L1"],
        ],
    )
    out = tmp_path / "chosen.csv" if explicit_output else tmp_path / "in.results.csv"
    args = ("-o", out) if explicit_output else ()
    result = run_against(sandbox, "run", inp, *args, *FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    assert out.exists()
    last = result.stderr.strip().splitlines()[-1]
    for name, n in (("linked", 2), ("failed", 1), ("invalid", 1), ("duplicate", 1)):
        assert has_count(last, name, n), (name, last)
    assert re.search(r"\d+(\.\d+)?\s?(s|sec|seconds)\b|\d+:\d\d", last), last
    assert str(out) in last or (not explicit_output and out.name in last), last


def test_the_summary_line_is_the_last_line_after_a_credentials_stop(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 5)
    result = run_against(sandbox, "run", data, *FAST, env={"THENA_TOKEN": "wrong-token-123"})
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert "rejected the credentials" in result.stderr
    assert lines[-1].startswith("linked 0,") and "report: " in lines[-1]


def test_summary_json_and_stderr_group_errors_most_common_first(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    server = start_sandbox(script={"F0001": [Reply(status=503)] * 10})
    rows = [["sourceTicketId", "linkedTicketId"]]
    rows += [["F0001", "L0"], ["T0001", "L1"], ["MISSING1", "L2"], ["T0002", "L3"]]
    rows += [["MISSING2", "L4"], ["T0003", "L5"], ["MISSING3", "L6"], ["T0004", "L7"]]
    src = write_csv(tmp_path / "in.csv", rows)
    report = tmp_path / "report.csv"
    summary = tmp_path / "summary.json"
    result = run_against(
        server, "run", src, "-o", report, "--summary-json", summary, "--max-retries", "1", *FAST
    )
    assert result.exit_code == 1, result.stderr

    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["counts"] == {
        "linked": 4,
        "failed": 4,
        "invalid": 0,
        "duplicate": 0,
        "skipped": 0,
        "already-linked": 0,
    }
    errors = data["errors"]
    assert [e["count"] for e in errors] == [3, 1]
    assert "404" in errors[0]["error"] and "503" in errors[1]["error"]
    started = datetime.fromisoformat(data["started"])
    finished = datetime.fromisoformat(data["finished"])
    assert started.tzinfo is not None and started <= finished
    assert 0 <= data["elapsed_seconds"] <= (finished - started).total_seconds() + 2
    assert Path(data["report"]).resolve() == report.resolve()
    assert data["exit_code"] == 1

    groups = re.findall(r"^\s*(\d+) x (.+)$", result.stderr, re.MULTILINE)
    assert [int(count) for count, _ in groups] == [3, 1], result.stderr
    assert groups[0][1].startswith("HTTP 404") and "503" in groups[1][1]


# -- what the terminal, a scheduler and the log see -------------------------------------------


def test_no_terminal_no_carriage_returns_quiet_and_log_file(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 20)
    report = tmp_path / "in.results.csv"
    # A real pipe, default progress setting: what cron sees.
    with spawn(sandbox, "run", src, "--rate", "0") as proc:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "\r" not in err and "\r" not in out
    assert "report:" in err

    no_progress = run_against(sandbox, "run", src, "--rate", "0", "--no-progress")
    assert no_progress.exit_code == 0
    assert "\r" not in no_progress.stderr

    log = tmp_path / "bulklink.log"
    quiet = run_against(sandbox, "run", src, "--rate", "0", "-q", "--log-file", log)
    assert quiet.exit_code == 0
    assert quiet.stdout == "" and quiet.stderr == ""
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines
    stamp = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
    assert all(stamp.match(line) for line in lines), lines
    assert any(str(report) in line for line in lines)

    bad = write_csv(tmp_path / "bad.csv", [["source", "linked"], ["T1", "L1"], ["MISSING9", "L9"]])
    failed = run_against(sandbox, "run", bad, "-q", "--log-file", log, *FAST)
    assert failed.exit_code == 1
    assert "1 x HTTP 404" in failed.stderr
    assert "bad.results.csv" in failed.stderr
    assert "bad.results.csv" in log.read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_even_when_it_reports_no_size(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    """stderr on a pty (size 0x0, as under `script` or some CI runners): the bar shows."""
    import os
    import pty
    import subprocess
    import sys

    server = start_sandbox(latency=0.02)
    data = pairs_csv(tmp_path / "in.csv", 60)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THENA_")}
    env.update(THENA_TOKEN=TOKEN, THENA_ORG_ID=ORG, THENA_BASE_URL=server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(data), "--rate", "40"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            block = os.read(master, 4096)
        except OSError:  # the child closed the pty
            break
        if not block:
            break
        seen += block
    os.close(master)
    assert proc.wait(timeout=30) == 0
    text = seen.decode("utf-8", "replace")
    assert "row/s" in text and "/60" in text
    assert text.rstrip().splitlines()[-1].startswith("linked 60,")


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


def test_sample_crontab_runs_with_token_file_metrics_and_notice_url_from_a_file() -> None:
    crontab = (ROOT / "samples" / "crontab").read_text(encoding="utf-8")
    entries = [line for line in crontab.splitlines() if line.strip() and not line.startswith("#")]
    jobs = [line for line in entries if re.match(r"^(\S+\s+){5}", line) and "=" not in line[:20]]
    assert jobs, "no cron entry"
    job = " ".join(jobs)
    assert "bulklink run" in job and "--metrics-file" in job
    assert "--notify " not in job  # the URL is a secret: from a root-only env file
    assert not any("BULKLINK_NOTIFY_URL" in line for line in entries)
    assert "--token-file" in job
    assert "--token " not in job
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^#+ .*[Ss]chedul", readme, re.MULTILINE)


# -- dry run ----------------------------------------------------------------------------------


def test_dry_run_reports_and_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [HEAD, ["V1", "W1"]]
    for i in range(25):  # rows 2..26, alternating reasons
        rows.append(["", f"X{i}"] if i % 2 == 0 else [f"Y{i}", f"Y{i}"])
    rows += [["V2", "W2"], ["V1", "W1"], ["V3", "W3"], ["V2", "W2"]]  # rows 27..30
    path = write_csv(tmp_path / "pairs.csv", rows)
    report = tmp_path / "pairs.results.csv"
    old = b"row,sourceTicketId\r\n1,OLD\r\n\xff not even utf-8\n"
    report.write_bytes(old)
    before = sorted(p.name for p in tmp_path.iterdir())

    result = run(sandbox, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sandbox.requests == []
    assert report.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    out = result.stdout
    assert re.search(r"\bsend\D{0,3}3\b", out), out
    assert re.search(r"\binvalid\D{0,3}25\b", out), out
    assert re.search(r"\bduplicate\D{0,3}2\b", out), out
    for row in range(2, 22):  # the first 20 invalid rows, each with its reason
        reason = "(blank|empty|missing)" if row % 2 == 0 else "(same|itself|self)"
        assert re.search(rf"\brow {row}\b[^\n]*{reason}", out), (row, out)
    for row in range(22, 27):
        assert not re.search(rf"\brow {row}\b", out), (row, out)
    assert re.search(r"\b5\b[^\n]*(more|other|not shown)", out), out
    # the first requests that would be sent, with their bodies
    assert '{"sourceTicketId":"V1","linkedTicketId":' in out, out  # exactly as sent
    assert "W1" in out and "V2" in out
    assert TOKEN not in result.output


def test_dry_run_counts_what_a_limit_holds_back(tmp_path: Path) -> None:
    data = pairs_csv(tmp_path / "in.csv", 30)
    result = invoke("run", data, "--dry-run", "--limit", "3")
    assert result.exit_code == 0
    assert "would send 3" in result.stdout and "skipped by --limit 27" in result.stdout


# -- bulklink report --------------------------------------------------------------------------


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
    ran = run_against(sandbox, "run", src, "-o", out, "--limit", "6", *FAST_UNPACED)
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
    assert run_against(sandbox, "run", clean_src, "-o", clean, *FAST_UNPACED).exit_code == 0
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
    assert run_against(sandbox, "run", src, *FAST_UNPACED).exit_code == 1
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


def test_report_on_a_file_that_is_not_a_report_says_so(tmp_path: Path) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    for path in (data, other):
        result = invoke("report", path)
        assert result.exit_code == 2
        assert "not a bulklink report" in result.stderr, result.stderr


# -- help, examples, completion ---------------------------------------------------------------


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


README = Path(__file__).parent.parent / "README.md"


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


def test_the_sandbox_on_a_port_in_use_or_with_a_bad_certificate_is_one_line(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Each ended in a traceback (exit 1)."""
    port = sandbox.url.rsplit(":", 1)[1]
    busy = invoke("sandbox", "--port", port)
    assert busy.exit_code == 2, busy.output
    assert (
        busy.stderr.strip().splitlines() == [busy.stderr.strip()]
        and "address already in use" in busy.stderr
    )
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    tls = invoke("sandbox", "--port", "0", "--tls-cert", bad, "--tls-key", bad)
    assert tls.exit_code == 2, tls.output
    assert tls.stderr.startswith("bulklink: error: --tls-cert/--tls-key cannot be loaded")
    assert "Traceback" not in busy.output + tls.output


# -- commands whose output is their product ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("runs",),
        ("runs", "--json"),
        ("report", "{report}"),
        ("report", "--json", "{report}"),
        ("run", "{src}", "--dry-run"),
        ("--help",),  # click's own text: a traceback, exit 1
        ("--version",),
        ("run", "--help"),
    ],
)
def test_a_command_whose_output_cannot_be_written_says_so_and_exits_74(
    tmp_path: Path, sandbox: Sandbox, command: tuple[str, ...]
) -> None:
    """``bulklink runs --json > runs.json`` on a full disk: a wrapper must not get exit 0
    and an empty file to parse."""
    src = pairs_csv(tmp_path / "in.csv", 3)
    assert run_against(sandbox, "run", src, *FAST_UNPACED).exit_code == 0
    args = [a.format(src=src, report=tmp_path / "in.results.csv") for a in command]
    with Path("/dev/full").open("w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "bulklink", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 74, proc.stderr
    assert proc.stderr.splitlines() == [
        "bulklink: error: cannot write standard output: No space left on device"
    ]


@pytest.mark.parametrize(
    ("suffix", "option", "value"),
    [
        (".csv", "--sheet", "Pairs"),
        (".xlsx", "--encoding", "utf-16"),
        (".xlsx", "--delimiter", ";"),
    ],
)
def test_an_option_the_inputs_kind_cannot_use_is_refused_not_ignored(
    sandbox: Sandbox, tmp_path: Path, suffix: str, option: str, value: str
) -> None:
    """``--sheet`` on a CSV, ``--encoding`` on an .xlsx were taken and ignored: the run
    did not do what was asked, and said nothing."""
    rows = [["sourceTicketId", "linkedTicketId"], ["A1", "B1"]]
    if suffix == ".csv":
        src = write_csv(tmp_path / "in.csv", rows)
    else:
        src = make_xlsx(tmp_path / "in.xlsx", {"Pairs": rows})
    line = one_line_usage_error(run(sandbox, src, option, value))
    assert line.startswith(f"bulklink: error: {option} is for ")
    assert sandbox.requests == []


def test_an_empty_duration_is_refused_not_taken_for_off(sandbox: Sandbox, tmp_path: Path) -> None:
    """``--give-up-after "$GIVE_UP"`` with the variable unset turned the give-up off."""
    src = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["A1", "B1"]])
    line = one_line_usage_error(run(sandbox, src, "--give-up-after", ""))
    assert "--give-up-after is empty" in line
    assert sandbox.requests == []


def test_sandbox_and_base_url_together_are_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    """The run went to the embedded sandbox and the --base-url given was never used."""
    src = write_csv(tmp_path / "in.csv", [["sourceTicketId", "linkedTicketId"], ["A1", "B1"]])
    result = invoke("run", src, "--sandbox", "--base-url", sandbox.url)
    assert one_line_usage_error(result).endswith("give --sandbox or --base-url, not both")
    assert sandbox.requests == []
