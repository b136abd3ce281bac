"""Files that change under a run, outputs that are the input, names that are not UTF-8,
reports edited by people, odd streams: the rows sent are the rows validated, and the
report tells the truth (issue 18)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from bulklink import console as console_module
from bulklink.console import Console
from bulklink.sandbox import Reply, Sandbox
from bulklink.tables import inputs
from bulklink.tables.inputs import Chunk, Snapshot, Table
from tests.helpers import (
    FAST_UNPACED,
    HEAD,
    ROOT,
    Receiver,
    child_env,
    files_in,
    ids,
    input_pairs,
    invoke,
    linked_from,
    make_xlsx,
    one_line_usage_error,
    pairs_csv,
    read_any,
    read_report,
    run,
    run_against,
    sent_checked,
    wait_until,
    write_csv,
)

# -- the input changes while the run reads it --------------------------------------------------

PAIRS = input_pairs(6)


def _rewrite(path: Path) -> None:
    """The same size, every row now a self-link: what a rerun export in place looks like."""
    text = path.read_text()
    path.write_text(text.replace("TL", "T0"))


def _truncate(path: Path) -> None:
    with path.open("rb+") as fh:
        fh.truncate(len(fh.readline()) + 16)


def _replace(path: Path) -> None:
    new = pairs_csv(path.with_name("new.csv"), 3, prefix="N")
    new.replace(path)


def _grow(path: Path) -> None:
    with path.open("a") as fh:
        fh.write("X1,Y1\nX2,Y2\n")


def _remove(path: Path) -> None:
    path.unlink()


CHANGES = {
    "rewritten": _rewrite,
    "truncated": _truncate,
    "renamed": _replace,
    "grown": _grow,
    "removed": _remove,
}


def change_in_pass(
    monkeypatch: pytest.MonkeyPatch, path: Path, change: Callable[[Path], None], at: int
) -> None:
    """``change(path)`` once the run has read ``at`` chunks (2 rows each) over both passes
    (validation, then sending), at that deterministic moment rather than after a sleep."""
    original = Table.chunks
    read = [0]

    def chunks(self: Table, chunk_rows: int | None = None) -> Iterator[Chunk]:
        for chunk in original(self, chunk_rows):
            yield chunk
            read[0] += 1
            if read[0] == at:
                change(path)

    monkeypatch.setattr(inputs, "CHUNK_ROWS", 2)
    monkeypatch.setattr(Table, "chunks", chunks)


def changed_run(
    monkeypatch: pytest.MonkeyPatch, server: Sandbox, folder: Path, how: str, at: int
) -> tuple[Path, Result]:
    """A run of :data:`PAIRS` whose input changes ``how`` after ``at`` chunks were read."""
    src = pairs_csv(folder / "in.csv", len(PAIRS))
    change_in_pass(monkeypatch, src, CHANGES[how], at)
    return src, run(server, src, "--concurrency", "1")


@pytest.mark.parametrize("how", sorted(CHANGES))
def test_a_file_changed_before_sending_is_refused_and_nothing_sent(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, tmp_path: Path, how: str
) -> None:
    src, result = changed_run(monkeypatch, sandbox, tmp_path, how, at=3)  # all validated
    line = one_line_usage_error(result)
    assert line == f"bulklink: error: input is still changing (being written?): {src}"
    assert sandbox.requests == []
    assert "in.results.csv" not in files_in(tmp_path)


@pytest.mark.parametrize("how", sorted(CHANGES))
def test_a_file_changed_after_sending_began_stops_the_run_with_every_row_accounted(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, tmp_path: Path, how: str
) -> None:
    src, result = changed_run(monkeypatch, sandbox, tmp_path, how, at=4)  # 1 chunk sent
    assert result.exit_code == 1, result.stderr
    assert f"stopped: the input changed while the run read it: {src}" in result.stderr
    assert sent_checked(sandbox) == PAIRS[:2]  # validated pairs of the snapshot only
    rows = read_report(tmp_path / "in.results.csv")
    assert ids(rows) == PAIRS
    assert [r["outcome"] for r in rows] == ["linked"] * 2 + ["skipped"] * 4
    assert all("the input changed" in r["error"] for r in rows[2:])
    assert [n for n in files_in(tmp_path) if "bulklink-input" in n] == []  # snapshot gone


@pytest.mark.parametrize("how", ["rewritten", "renamed", "grown"])
def test_a_file_of_one_chunk_changed_while_its_rows_are_sent_stops_the_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, how: str
) -> None:
    # Every row was read before the change: only a watch of the file itself can see it.
    server = start_sandbox(latency=0.05)
    src = pairs_csv(tmp_path / "in.csv", 40)

    def change() -> None:
        wait_until(lambda: len(server.requests) >= 2, "the first requests")
        CHANGES[how](src)

    changer = threading.Thread(target=change)
    changer.start()
    result = run(server, src, "--concurrency", "1")
    changer.join()
    assert result.exit_code == 1, result.stderr
    assert f"stopped: the input changed while the run read it: {src}" in result.stderr
    rows = read_report(tmp_path / "in.results.csv")
    assert ids(rows) == input_pairs(40)  # the snapshot's rows, each accounted for
    assert rows[-1]["outcome"] == "skipped" and "the input changed" in rows[-1]["error"]
    assert len(server.requests) < 40


def test_a_file_still_being_written_while_copied_is_refused(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 4)
    copy = Snapshot._copy_stream

    def copy_then_grow(self: Snapshot, source: io.BufferedReader, out: io.BufferedWriter) -> int:
        copied = copy(self, source, out)
        _grow(src)  # the export writes its next rows while we copy
        return copied

    monkeypatch.setattr(Snapshot, "_copy_stream", copy_then_grow)
    line = one_line_usage_error(run(sandbox, src))
    assert "input is still changing (being written?)" in line
    assert sandbox.requests == []
    assert files_in(tmp_path) == ["in.csv"]  # no report, no snapshot left


def test_a_full_disk_while_taking_the_snapshot_is_exit_74_and_leaves_no_copy(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, tmp_path: Path
) -> None:
    def full(self: Snapshot, source: io.BufferedReader, out: io.BufferedWriter) -> int:
        out.write(b"part of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Snapshot, "_copy_stream", full)
    src = pairs_csv(tmp_path / "in.csv", 4)
    result = run(sandbox, src)
    assert result.exit_code == 74, result.stderr
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert sandbox.requests == []
    assert files_in(tmp_path) == ["in.csv"]


def test_a_report_changed_while_retry_validates_it_is_refused(
    monkeypatch: pytest.MonkeyPatch, start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T00002": [Reply(status=503)] * 10})
    src = pairs_csv(tmp_path / "in.csv", 4)
    assert run(server, src, "--max-retries", "0").exit_code == 1
    report = tmp_path / "in.results.csv"
    before = report.read_bytes()
    server.requests.clear()
    change_in_pass(monkeypatch, report, _truncate, at=2)
    line = one_line_usage_error(run_against(server, "retry", report, *FAST_UNPACED))
    assert "input is still changing (being written?)" in line
    assert server.requests == []
    first_line = before.index(b"\n") + 1
    assert report.read_bytes() == before[: first_line + 16]  # as truncated: retry wrote none


# -- carried columns that clash, through a run and two retries ---------------------------------


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_clashing_columns_keep_their_values_through_two_retries_and_report_counts(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str
) -> None:
    # T00002 fails until the second retry; a self-link and a 404 stay as they are.
    server = start_sandbox(script={"T00002": [Reply(status=503)] * 2})
    clash = ["outcome", "success", "row", "error", "ticket.title", "http_status"]
    mine = ["linked", "true", "99", "none", "my title", "200"]
    rows = [["S1", "L1"], ["T00002", "TL00002"], ["S3", "S3"], ["MISSING4", "L4"]]
    src = write_csv(tmp_path / "in.csv", [[*HEAD, *clash], *[[*r, *mine] for r in rows]])
    out = tmp_path / f"out{fmt}"
    carried = [f"input.{name}" for name in clash]
    wanted = [
        ["linked", "failed", "invalid", "failed"],
        ["linked", "failed", "invalid", "failed"],
        ["linked", "linked", "invalid", "failed"],
    ]
    commands = [("run", src, "-o", out), ("retry", out), ("retry", out)]
    for command, expected in zip(commands, wanted, strict=True):
        result = run_against(server, *command, "--max-retries", "0", *FAST_UNPACED)
        assert result.exit_code == 1, result.stderr
        header, got = read_any(out)
        assert [c for c in header if c.startswith("input.")] == carried
        assert [r["outcome"] for r in got] == expected
        assert [str(r["success"]).lower() for r in got] == [
            str(o == "linked").lower() for o in expected
        ]
        assert [int(r["row"]) for r in got] == [1, 2, 3, 4]
        assert [[str(r[c]) for c in carried] for r in got] == [mine] * 4
        report = invoke("report", out)
        counts = dict.fromkeys(("linked", "failed", "invalid"), 0)
        for outcome in expected:
            counts[outcome] += 1
        assert f"linked {counts['linked']}, failed {counts['failed']}, invalid 1" in report.stdout
    assert got[1]["ticket.title"] == "Ticket T00002"  # bulklink's own, not the input's


# -- shapes: a long header, empty trailing columns, runaway IDs ---------------------------------


def test_a_header_over_64_kib_is_read_whole(sandbox: Sandbox, tmp_path: Path) -> None:
    names = [f"column_name_{i:06d}" for i in range(6000)]  # ~115 KB, the IDs last
    pairs = input_pairs(3)
    src = write_csv(
        tmp_path / "in.csv", [[*names, *HEAD], *[[*("x" * len(names)), *p] for p in pairs]]
    )
    rows = linked_from(sandbox, src, pairs)
    assert list(rows[0])[-len(names) :] == names
    assert [r["column_name_005999"] for r in rows] == ["x"] * 3


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_a_header_over_csvs_field_limit_is_read_whole(
    sandbox: Sandbox, tmp_path: Path, delimiter: str
) -> None:
    # Over 128 KiB the header is one field too long for csv under every other delimiter.
    names = [f"column_name_{i:06d}" for i in range(8000)]  # ~150 KB, the IDs last
    pairs = input_pairs(2)
    rows = [[*names, *HEAD], *[["", *names[1:], *p] for p in pairs]]
    rows = linked_from(sandbox, write_csv(tmp_path / "in.csv", rows, delimiter), pairs)
    assert list(rows[0])[-len(names) :] == names


def test_a_header_row_over_16_mib_is_refused_in_one_line(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("sourceTicketId,linkedTicketId," + "x" * (16 << 20))
    line = one_line_usage_error(run(sandbox, src))
    assert line == f"bulklink: error: {src}: the header row is longer than 16 MiB"
    assert sandbox.requests == []


def test_empty_trailing_columns_are_dropped_and_filled_ones_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    src.write_text(
        "sourceTicketId,linkedTicketId,note,,,,\n"
        "A1,B1,n1,,,,\n"
        "A2,B2,n2,,late,,\n"  # the fifth column holds a value in one row: kept
        "A3,B3,n3,,,,\n"
    )
    rows = linked_from(sandbox, src, [("A1", "B1"), ("A2", "B2"), ("A3", "B3")])
    carried = list(rows[0])[-2:]
    assert carried == ["note", "column5"]
    assert [r["column5"] for r in rows] == ["", "late", ""]
    assert "column4" not in rows[0] and "column7" not in rows[0]


def test_retry_drops_empty_trailing_columns_a_spreadsheet_added_to_the_report(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T00002": [Reply(status=503)]})
    src = pairs_csv(tmp_path / "in.csv", 3)
    assert run(server, src, "--max-retries", "0").exit_code == 1
    report = tmp_path / "in.results.csv"
    lines = report.read_text().splitlines()
    report.write_text("".join(f"{line},,\n" for line in lines))  # saved with two more
    result = run_against(server, "retry", report, *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    header, rows = read_any(report)
    assert header == lines[0].split(",")
    assert [r["outcome"] for r in rows] == ["linked"] * 3


def test_an_id_over_256_characters_is_invalid_and_never_sent(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T00003": [Reply(status=503)]})
    edge, long = "E" * 256, "L" * 257
    src = write_csv(
        tmp_path / "in.csv",
        [HEAD, [edge, "B1"], ["A2", long], ["T00003", "TL00003"]],
    )
    result = run(server, src, "--max-retries", "0")
    assert result.exit_code == 1, result.stderr
    assert sent_checked(server) == [(edge, "B1"), ("T00003", "TL00003")]
    report = tmp_path / "in.results.csv"
    rows = read_report(report)
    assert rows[1]["outcome"] == "invalid"
    assert rows[1]["error"] == "linked ticket ID is longer than 256 characters"
    # retry applies the same rule: the failed row, edited to a runaway ID, is not sent.
    header, rows = read_any(report)
    rows[2]["sourceTicketId"] = "S" * 1000
    write_csv(report, [header, *[list(r.values()) for r in rows]])
    server.requests.clear()
    assert run_against(server, "retry", report, *FAST_UNPACED).exit_code == 1
    assert server.requests == []
    again = read_report(report)
    assert again[2]["outcome"] == "invalid"
    assert again[2]["error"] == "source ticket ID is longer than 256 characters"


# -- side files that would destroy the input ----------------------------------------------------


def _spellings(tmp_path: Path, src: Path) -> dict[str, Path]:
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.csv")
    (tmp_path / "soft.csv").symlink_to(src)
    return {
        "same": src,
        "spelled": tmp_path / "sub" / ".." / src.name,
        "hard link": tmp_path / "hard.csv",
        "symlink": tmp_path / "soft.csv",
    }


SIDE_OPTIONS = ["--summary-json", "--metrics-file", "--log-file", "--state"]
ROLES = {"--state": "the state store", "-o": "the report"}  # as the refusal names them


@pytest.mark.parametrize("spelling", ["same", "spelled", "hard link", "symlink"])
@pytest.mark.parametrize("option", SIDE_OPTIONS)
def test_an_output_that_is_the_input_is_refused_before_anything(
    sandbox: Sandbox, tmp_path: Path, option: str, spelling: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    before = src.read_bytes()
    path = _spellings(tmp_path, src)[spelling]
    result = run(sandbox, src, option, path)
    # A rename replaces a symbolic link at a summary's or metrics' name, never its target.
    if spelling == "symlink" and option in ("--summary-json", "--metrics-file"):
        assert result.exit_code == 0, result.stderr
        assert not path.is_symlink()
    else:
        line = one_line_usage_error(result)
        if spelling == "symlink" and option == "--log-file":  # refused on its own account
            assert line.endswith("is a symbolic link; bulklink never writes through one")
        else:
            assert f"{ROLES.get(option, option)} {path} is the same file as the input" in line
        assert sandbox.requests == []
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("-o", "--summary-json"),
        ("-o", "--metrics-file"),
        ("-o", "--log-file"),
        ("--summary-json", "--metrics-file"),
        ("--metrics-file", "--log-file"),
        ("--summary-json", "--state"),
    ],
)
def test_two_outputs_that_are_one_file_are_refused(
    sandbox: Sandbox, tmp_path: Path, first: str, second: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.csv"
    (tmp_path / "sub").mkdir()
    result = run(sandbox, src, first, out, second, tmp_path / "sub" / ".." / "out.csv")
    line = one_line_usage_error(result)
    assert f"{ROLES.get(second, second)} {tmp_path}/sub/../out.csv is the same file as" in line
    assert line.endswith(f"choose another path for {ROLES.get(second, second)}")
    assert sandbox.requests == []
    assert not out.exists() or out.read_bytes() == b""  # a log is opened before the check


@pytest.mark.parametrize("option", SIDE_OPTIONS)
@pytest.mark.parametrize("side", [".lock", ".journal"])
def test_an_output_at_the_reports_lock_or_journal_is_refused(
    sandbox: Sandbox, tmp_path: Path, option: str, side: str
) -> None:
    # The lock is removed when the run ends: a summary or log written there was lost, and
    # a lock replaced by a summary's rename let a second run in.
    src = pairs_csv(tmp_path / "in.csv", 2)
    path = tmp_path / f"./in.results.csv{side}"
    line = one_line_usage_error(run(sandbox, src, option, path))
    what = "the lock file" if side == ".lock" else "the journal"
    assert f"{ROLES.get(option, option)} {path} is the same file as {what}" in line
    assert sandbox.requests == []


def test_retry_refuses_a_summary_that_is_its_report_and_a_journal_as_the_store(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 2)
    assert run(sandbox, src).exit_code == 0
    report = tmp_path / "in.results.csv"
    before = report.read_bytes()
    sandbox.requests.clear()
    for option, path, roles in [
        ("--summary-json", report, ("--summary-json", "the report")),
        ("--state", tmp_path / "in.results.csv.journal", ("the journal", "the state store")),
    ]:
        result = run_against(sandbox, "retry", report, option, path, *FAST_UNPACED)
        line = one_line_usage_error(result)
        assert "is the same file as" in line and all(role in line for role in roles)
    assert sandbox.requests == [] and report.read_bytes() == before


# -- names that are not UTF-8 -------------------------------------------------------------------


def test_names_that_are_not_utf8_work_everywhere(
    sandbox: Sandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Bytes paths, as an old Samba share gives them: the store's history names the same
    file, and everything that must be text shows the byte escaped."""
    root = os.fsencode(tmp_path)
    folder = root + b"/d\xe9"
    os.mkdir(folder)
    src = root + b"/caf\xe9.csv"
    pairs_csv(Path(os.fsdecode(src)), 3)
    args = [
        b"run", src, b"-o", folder + b"/r\xe9.xlsx", b"--state", root + b"/st\xe9.db",
        b"--summary-json", folder + b"/s\xe9.json", b"--metrics-file", root + b"/m\xe9.prom",
        b"--log-file", root + b"/l\xe9.log", b"--job", b"j\xe9", b"--rate", b"0",
        b"--notify", receiver.url.encode(), b"--notify-on", b"always",
    ]  # fmt: skip
    env = child_env(sandbox)
    done = subprocess.run(
        [sys.executable, "-m", "bulklink", *args], env=env, cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(sent_checked(sandbox)) == input_pairs(3)
    assert b"report: " + os.fsencode(tmp_path) + b"/d\\xe9/r\\xe9.xlsx" in done.stderr
    log = Path(os.fsdecode(root + b"/l\xe9.log")).read_bytes()
    assert b"caf\\xe9.csv" in log or b"r\\xe9.xlsx" in log
    log.decode("utf-8")  # valid UTF-8
    metrics = Path(os.fsdecode(root + b"/m\xe9.prom")).read_text(encoding="utf-8")
    assert 'job="j\\\\xe9"' in metrics
    (notice,) = receiver.bodies
    assert "j\\xe9" in notice["text"]  # shown escaped to people ...
    assert notice["summary"]["report"] == f"{tmp_path}/d\\xe9/r\\xe9.xlsx"  # ... to tools
    rows = read_any(Path(os.fsdecode(folder + b"/r\xe9.xlsx")))[1]
    assert [r["outcome"] for r in rows] == ["linked"] * 3
    runs = subprocess.run(
        [sys.executable, "-m", "bulklink", "runs", "--json", "--state", root + b"/st\xe9.db"],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert runs.returncode == 0, runs.stderr
    import json

    (record,) = json.loads(runs.stdout)
    assert os.fsencode(record["input"]) == src  # the same file, byte for byte
    assert os.fsencode(record["job"]) == b"j\xe9"


# -- reports edited by people -------------------------------------------------------------------


def _failed_run(server: Sandbox, tmp_path: Path, fmt: str) -> Path:
    """A report of 5 rows: 1 and 2 linked, 3 failed (503), 4 a repeat of 3, 5 invalid."""
    src = write_csv(
        tmp_path / "in.csv",
        [HEAD, ["A1", "B1"], ["A2", "B2"], ["T3", "L3"], ["T3", "L3"], ["A5", ""]],
    )
    out = tmp_path / f"out{fmt}"
    result = run(server, src, "-o", out, "--max-retries", "0")
    assert result.exit_code == 1, result.stderr
    return out


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_retry_rebuilds_the_columns_it_owns_when_they_were_deleted(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str
) -> None:
    server = start_sandbox(script={"T3": [Reply(status=503)]})
    out = _failed_run(server, tmp_path, fmt)
    header, rows = read_any(out)
    gone = {"http_status", "attempts", "error", "linked_at", "ticket.title", "ticket.status"}
    keep = [c for c in header if c not in gone]
    _rewrite_report(out, keep, [{c: r[c] for c in keep} for r in rows])
    counted = invoke("report", out)
    assert counted.exit_code == 1, counted.output
    assert "linked 2, failed 1, invalid 1, duplicate 1" in counted.stdout
    result = run_against(server, "retry", out, *FAST_UNPACED)
    assert result.exit_code == 1, result.stderr  # the invalid row stays unsuccessful
    header, rows = read_any(out)
    assert {"http_status", "attempts", "ticket.title", "ticket.status"} <= set(header)
    assert [r["outcome"] for r in rows] == ["linked", "linked", "linked", "duplicate", "invalid"]
    assert rows[2]["ticket.title"] == "Ticket T3" and str(rows[2]["http_status"]) == "200"
    assert rows[3]["error"] == "duplicate of row 3"


def _rewrite_report(path: Path, header: list[str], rows: list[dict[str, object]]) -> None:
    """The report saved again as someone left it (columns deleted, rows re-sorted)."""
    if path.suffix == ".csv":
        write_csv(
            path, [header, *[["" if r[c] is None else str(r[c]) for c in header] for r in rows]]
        )
    elif path.suffix == ".xlsx":
        make_xlsx(path, {"Rows": [header, *[[r[c] for c in header] for r in rows]]})
    else:
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_retry_refuses_a_report_without_its_outcome_columns_in_one_line(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T3": [Reply(status=503)]})
    out = _failed_run(server, tmp_path, ".csv")
    header, rows = read_any(out)
    keep = [c for c in header if c not in ("outcome", "success")]
    _rewrite_report(out, keep, rows)
    server.requests.clear()
    line = one_line_usage_error(run_against(server, "retry", out, *FAST_UNPACED))
    assert line.endswith("is not a bulklink report: no column success, outcome")
    assert server.requests == []


def test_a_duplicate_note_cites_the_row_value_after_rows_were_deleted_and_resorted(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(script={"T3": [Reply(status=503)] * 2})
    out = _failed_run(server, tmp_path, ".csv")
    header, rows = read_any(out)
    _rewrite_report(out, header, [rows[4], rows[3], rows[2], rows[0]])  # row 2 deleted
    result = run_against(server, "retry", out, "--max-retries", "0", *FAST_UNPACED)
    assert result.exit_code == 1, result.stderr
    rows = read_report(out)
    assert [r["row"] for r in rows] == ["5", "4", "3", "1"]
    # row 4 comes first now: it is sent, and row 3 is its repeat.
    assert [r["outcome"] for r in rows] == ["invalid", "failed", "duplicate", "linked"]
    assert rows[2]["error"].startswith("duplicate of row 4")


# -- odd inputs that deserve a clear word --------------------------------------------------------


def test_run_with_standard_input_closed_is_one_line_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m bulklink run - -o out.csv --sandbox <&-', sys.executable],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "bulklink: error: standard input is closed: give the input file, or pipe it in"
    ]
    assert files_in(tmp_path) == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["pairs.csv", "pairs"])
def test_a_fifo_is_read_as_a_stream(sandbox: Sandbox, tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    pairs = input_pairs(4)
    text = "".join(f"{s},{t}\n" for s, t in [tuple(HEAD), *pairs])

    def feed() -> None:
        with fifo.open("w") as fh:
            fh.write(text)

    writer = threading.Thread(target=feed)
    writer.start()
    out = tmp_path / "out.csv"
    result = run(sandbox, fifo, "-o", out)
    writer.join()
    assert result.exit_code == 0, result.stderr
    assert sorted(sent_checked(sandbox)) == pairs
    assert ids(read_report(out)) == pairs


@pytest.mark.parametrize("given", [(), ("--delimiter", ";"), ("--delimiter", ",")])
def test_excels_sep_line_is_the_delimiter_not_the_header(
    sandbox: Sandbox, tmp_path: Path, given: tuple[str, ...]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("sep=;\r\nsourceTicketId;linkedTicketId;note\r\nA1;B1;x,y\r\nA2;B2;z\r\n")
    result = run(sandbox, src, *given)
    if given == ("--delimiter", ","):  # the user's word wins; the sep line is still no header
        assert "no source ticket ID column found" in one_line_usage_error(result)
        return
    assert result.exit_code == 0, result.stderr
    rows = read_report(tmp_path / "in.results.csv")
    assert ids(rows) == [("A1", "B1"), ("A2", "B2")]
    assert [r["note"] for r in rows] == ["x,y", "z"]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_excels_sep_line_is_read_with_every_line_end(
    sandbox: Sandbox, tmp_path: Path, end: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(end.join(["sep=;", "sourceTicketId;linkedTicketId", "A1;B1", ""]).encode())
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("A1", "B1")]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("term", "bar"), [("dumb", False), ("xterm-256color", True)])
def test_a_dumb_terminal_gets_log_lines_not_a_bar(
    monkeypatch: pytest.MonkeyPatch, term: str, bar: bool
) -> None:
    monkeypatch.setenv("TERM", term)
    monkeypatch.setattr(console_module, "LOG_EVERY", 0.0)
    stream = _Terminal()
    console = Console(stream=stream)
    console.start_progress(10)
    console.progress(5, 1)
    console.finish_progress(10)
    shown = stream.getvalue()
    assert ("\r" in shown) is bar
    assert ("progress: 5/10 rows" in shown) is not bar


def test_an_input_name_of_any_valid_length_works(sandbox: Sandbox, tmp_path: Path) -> None:
    """The default report, journal, lock, snapshot and temporary files derive names that
    fit whatever the input's name (a name of 250 bytes: its own report's would not)."""
    src = pairs_csv(tmp_path / ("é" * 123 + ".csv"), 3)
    out = tmp_path / ("r" * 240 + ".csv")
    for extra in ((), ("-o", out)):
        sandbox.requests.clear()
        result = run(sandbox, src, *extra, "--no-state")
        assert result.exit_code == 0, result.stderr
        assert sorted(sent_checked(sandbox)) == input_pairs(3)
    names = files_in(tmp_path)
    assert len(names) == 3 and out.name in names and src.name in names
    (default,) = set(names) - {out.name, src.name}
    assert default.startswith("é" * 100) and default.endswith(".results.csv")
    assert ids(read_report(tmp_path / default)) == input_pairs(3)


# -- line ends and header names: other cases of shifted cells ------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_a_file_of_cr_line_ends_keeps_a_rows_empty_first_cell_after_a_blank_line(
    sandbox: Sandbox, tmp_path: Path, delimiter: str
) -> None:
    """pandas' parser dropped the empty first cell of a line after a blank line ended by a
    CR alone (a classic Mac export): ``,T2,L2,L9`` was sent as the pair L2 -> L9."""
    src = tmp_path / "in.csv"
    lines = [["note", *HEAD, "other"], ["n1", "T1", "L1", "o1"], [], ["", "T2", "L2", "L9"]]
    lines += [["  "], ["", "T3", "L3", ""]]
    src.write_bytes("".join(delimiter.join(cells) + "\r" for cells in lines).encode())
    result = run(sandbox, src, "--delimiter", delimiter)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), ("T2", "L2"), ("T3", "L3")]
    rows = read_report(tmp_path / "in.results.csv")
    assert [(r["note"], r["other"]) for r in rows] == [("n1", "o1"), ("", "L9"), ("", "")]


def test_a_file_mixing_line_ends_that_would_be_read_shifted_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """With LF line ends too, no one line end can be given to the parser: a blank line
    ended by a CR alone before a leading empty cell is refused, naming the line."""
    src = tmp_path / "in.csv"
    src.write_bytes(b"note,sourceTicketId,linkedTicketId,other\nn1,T1,L1,o1\n\r,T2,L2,L9\n")
    line = one_line_usage_error(run(sandbox, src))
    assert "line 3 is blank and ends in a carriage return alone" in line
    assert sandbox.requests == []


def test_a_lone_cr_inside_a_quoted_cell_of_a_crlf_file_is_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b'note,sourceTicketId,linkedTicketId\r\n"a\rb",T1,L1\r\n\r\n,T2,L2\r\n')
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), ("T2", "L2")]
    assert [r["note"] for r in read_report(tmp_path / "in.results.csv")] == ["a\rb", ""]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_a_header_name_that_deduplication_would_make_twice_is_made_unique(
    sandbox: Sandbox, tmp_path: Path, suffix: str
) -> None:
    """``note``, ``note.1``, ``note``: the second ``note`` became ``note.1`` too, which
    refused the CSV and ended an .xlsx run with exit 70."""
    header = [*HEAD, "note", "note.1", "note"]
    rows = [["S1", "L1", "first", "second", "third"]]
    if suffix == ".csv":
        src = write_csv(tmp_path / "in.csv", [header, *rows])
    else:
        src = make_xlsx(tmp_path / "in.xlsx", {"S": [header, *rows]})
    result = run(sandbox, src, "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("S1", "L1")]
    row = read_report(tmp_path / "out.csv")[0]
    assert (row["note"], row["note.1"], row["note.2"]) == ("first", "second", "third")


def test_a_cr_only_file_longer_than_the_header_limit_is_read(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header's end was looked for as an LF only: every CR-only file over the limit
    (16 MiB, made small here) was refused as 'the header row is longer than' it."""
    monkeypatch.setattr(inputs, "_HEADER_MAX", 1 << 17)
    src = tmp_path / "in.csv"
    pairs = [(f"S{i:07d}", f"L{i:07d}") for i in range(12_000)]
    src.write_bytes("\r".join([",".join(HEAD), *(",".join(p) for p in pairs), ""]).encode())
    assert src.stat().st_size > 1 << 17
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert len(sandbox.requests) == len(pairs)


def test_a_mixed_encoding_refusal_names_the_line_in_a_cr_only_file(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"sourceTicketId,linkedTicketId\rT\xc3\xa91,L1\rT2,L2\rT\xe93,L3\r")
    assert "line 4 is not UTF-8" in one_line_usage_error(run(sandbox, src))
    assert sandbox.requests == []


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_a_stray_quote_that_would_hide_rows_in_one_cell_is_refused(
    sandbox: Sandbox, tmp_path: Path, delimiter: str
) -> None:
    """A dump that quotes nothing, a title starting with a quote: the lines up to the next
    quote were read as one cell, and their pairs were neither sent nor reported."""
    lines = [
        ["title", *HEAD], ['"Urgent: printer', "T1", "L1"], ["Login fails", "T2", "L2"],
        ['Screen 27" flickers', "T3", "L3"], ["Mail down", "T5", "L5"],
    ]  # fmt: skip
    src = tmp_path / ("in.tsv" if delimiter == "\t" else "in.csv")
    src.write_text("".join(delimiter.join(cells) + "\n" for cells in lines))
    line = one_line_usage_error(run(sandbox, src))
    assert "lines 2-4 were read as one cell" in line and "stray quote" in line
    assert sandbox.requests == []


def test_a_quoted_cell_spanning_lines_with_delimiters_in_it_is_read(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    # And a quote closed before more text within one line: a quirk that hides no row.
    src.write_text(
        'note,sourceTicketId,linkedTicketId\n"ok"x,T0,L0\n"one, two,\nthree, four",T1,L1\nx,T2,L2\n'
    )
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T0", "L0"), ("T1", "L1"), ("T2", "L2")]
    assert read_report(tmp_path / "in.results.csv")[1]["note"] == "one, two,\nthree, four"


@pytest.mark.parametrize(
    ("codec", "first"),
    [("cp932", "チケット1"), ("cp932", "ﾁｹｯﾄ2"), ("cp949", "티켓1"), ("big5", "票1"),
     ("gb18030", "北京工单1")],
)  # fmt: skip
def test_an_east_asian_csv_read_as_cp1252_is_refused_and_read_with_its_encoding(
    sandbox: Sandbox, tmp_path: Path, codec: str, first: str
) -> None:
    """Excel's "CSV" on Japanese, Korean or Chinese Windows is no UTF-8: read as cp1252,
    ``チケット1`` went out as ``ƒ`ƒPƒbƒg1`` and was reported linked."""
    src = tmp_path / "in.csv"
    src.write_bytes(f"sourceTicketId,linkedTicketId,note\nT1,L1,x\n{first},L2,番\n".encode(codec))
    line = one_line_usage_error(run(sandbox, src))
    assert "look like East Asian text read in the wrong encoding (row 2:" in line
    assert "--encoding: cp932 (Japanese)" in line
    assert sandbox.requests == []
    result = run(sandbox, src, "--encoding", codec)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1"), (first, "L2")]


@pytest.mark.parametrize("first", ["Müller", "Grüße", "AÇÃO", "GRÖßE", "ÉTÉ-3", "Þór-2", "Ñoño"])
def test_a_cp1252_csv_with_accented_ids_is_still_read_as_cp1252(
    sandbox: Sandbox, tmp_path: Path, first: str
) -> None:
    """Short IDs of accented letters decode as Chinese or Korean too: they are letters
    read as cp1252, not the symbols a double-byte file's bytes make."""
    src = tmp_path / "in.csv"
    src.write_bytes(f"sourceTicketId,linkedTicketId\n{first},L1\nx,L2\n".encode("cp1252"))
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [(first, "L1"), ("x", "L2")]


@pytest.mark.parametrize("option", ["--log-file", "--summary-json", "--metrics-file"])
@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal"])
def test_an_output_at_the_state_stores_sqlite_file_is_refused_and_left_alone(
    sandbox: Sandbox, tmp_path: Path, option: str, side: str
) -> None:
    """SQLite takes ``<store>-wal`` and ``-shm`` as its own: it reset or removed them,
    and the log the user named there with them, and the run said exit 0."""
    src = pairs_csv(tmp_path / "in.csv", 2)
    store = tmp_path / "st.db"
    named = tmp_path / f"st.db{side}"
    named.write_text("last month of log lines\n")
    line = one_line_usage_error(run(sandbox, src, "--state", store, option, named))
    assert f"{option} {named} is the same file as the state store's {side} file" in line
    assert named.read_text() == "last month of log lines\n"
    assert sandbox.requests == []


@pytest.mark.parametrize(
    "text",
    [
        'title\tsourceTicketId\tlinkedTicketId\n"Urgent: printer\tT1\tL1\nLogin fails\tT2\tL2\n'
        'Screen 27"\tT3\tL3\nMail down\tT5\tL5\n',
        'sourceTicketId,linkedTicketId,note\nT1,L1,"Printer 27\nT2,L2,x\nT3,L3,Mail"\nT4,L4,y\n',
    ],
    ids=["tsv, closed before a tab", "csv, the last column"],
)
def test_a_stray_quote_closed_before_a_delimiter_that_hides_rows_is_refused(
    sandbox: Sandbox, tmp_path: Path, text: str
) -> None:
    """The strict reading takes a quote closed right before a delimiter: the rows between
    were neither sent nor reported, exit 0."""
    src = tmp_path / ("in.tsv" if "\t" in text else "in.csv")
    src.write_text(text)
    line = one_line_usage_error(run(sandbox, src))
    assert "row 1's" in line and "spans lines that are rows of their own" in line
    assert sandbox.requests == []


def test_a_note_with_commas_on_its_lines_is_read(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text('n,sourceTicketId,linkedTicketId\n"Call back\nTomorrow,ASAP,thanks",T1,L1\n')
    result = run(sandbox, src)
    assert result.exit_code == 0, result.output
    assert sent_checked(sandbox) == [("T1", "L1")]
