"""Files bulklink writes: never through a planted link, FIFO or folder, never outside its
own names, private where they hold input or state, and the report written atomically.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bulklink._fs import refuse_unreplaceable
from bulklink.errors import UsageError
from bulklink.sandbox import Reply, Sandbox
from tests.helpers import (
    FAST,
    FAST_UNPACED,
    ORG,
    ROOT,
    TOKEN,
    N,
    assert_all_linked,
    env_for,
    input_pairs,
    interrupt_at_row_11,
    journal_of,
    one_line_error,
    pairs_csv,
    read_any,
    read_report,
    run_against,
    write_csv,
)

# -- never write outside our own files --------------------------------------------------------


VICTIM_TEXT = "precious: not bulklink's to write\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the report's folder that a planted link points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "reports"
    path.mkdir()
    return path


REFUSED = {
    "lock": "{report}.lock",
    "journal": "{report}.journal",
}


@pytest.mark.parametrize("fresh", [False, True], ids=["resume", "--fresh"])
@pytest.mark.parametrize("which", sorted(REFUSED))
def test_link_at_lock_or_journal_is_refused_naming_it(
    folder: Path, victim: Path, sandbox: Sandbox, which: str, fresh: bool
) -> None:
    src = pairs_csv(folder / "in.csv", 5)
    planted = folder / REFUSED[which].format(report="in.results.csv")
    planted.symlink_to(victim)
    result = run_against(sandbox, "run", src, *FAST_UNPACED, *(["--fresh"] if fresh else []))

    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("bulklink: error: ")
    assert str(planted) in result.stderr and "symbolic link" in result.stderr
    assert victim.read_text() == VICTIM_TEXT
    assert planted.is_symlink(), "the planted link was removed instead of reported"
    assert sandbox.requests == [], "requests were sent before the refusal"
    assert not (folder / "in.results.csv").exists()


@pytest.mark.timeout(20)  # a run that waited on the FIFO would fail here, not hang
@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("which", sorted(REFUSED))
def test_fifo_or_folder_at_lock_or_journal_is_refused_without_hanging(
    folder: Path, sandbox: Sandbox, which: str, kind: str
) -> None:
    src = pairs_csv(folder / "in.csv", 5)
    planted = folder / REFUSED[which].format(report="in.results.csv")
    if kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.mkdir()
    result = run_against(sandbox, "run", src, *FAST_UNPACED)

    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("bulklink: error: ")
    assert "Traceback" not in result.stderr
    assert str(planted) in result.stderr
    assert sandbox.requests == []


#: Names older versions wrote through, now unused, and names of today's pattern (which
#: O_EXCL would skip anyway); with whether the sweep removes a link planted there.
HARMLESS = {
    "old temporary report": (".{report}.bulklink-tmp", True),
    "old CSV merge temporary": (".{report}.merge", False),
    "old stdin spool": (".{report}.stdin.csv", False),
    "old --summary-json temporary": (".summary.json.tmp", False),
    "guessed temporary name": (".{report}.0123456789ab.bulklink-tmp", True),
    "guessed merge name": (".{report}.0123456789ab.bulklink-merge", True),
    "guessed stdin spool name": (".{report}.0123456789ab.bulklink-stdin.csv", True),
    "guessed journal temporary": (".{report}.journal.0123456789ab.bulklink-tmp", True),
}


@pytest.mark.parametrize("which", sorted(HARMLESS))
def test_link_at_a_temporary_name_is_never_written_through(
    folder: Path, victim: Path, sandbox: Sandbox, which: str
) -> None:
    """The run reads stdin (spool), gets an undocumented ticket field (CSV merge pass) and
    writes --summary-json: every temporary file is made; none goes through the link."""
    name, swept = HARMLESS[which]
    planted = folder / name.format(report="out.csv")
    planted.symlink_to(victim)
    sandbox.config.script["T00002"] = [Reply(body={"status": True, "data": {"extraField": "x"}})]
    text = "sourceTicketId,linkedTicketId\n" + "".join(f"{s},{d}\n" for s, d in input_pairs(5))
    summary = folder / "summary.json"
    result = run_against(
        sandbox,
        "run",
        "-",
        "-o",
        folder / "out.csv",
        "--summary-json",
        summary,
        *FAST_UNPACED,
        input=text,
    )

    assert result.exit_code == 0, result.stderr
    assert victim.read_text() == VICTIM_TEXT
    assert_all_linked(folder / "out.csv", 5)
    assert [r["ticket.extraField"] for r in read_report(folder / "out.csv")][:2] == ["", "x"]
    assert json.loads(summary.read_text())["counts"]["linked"] == 5
    # Links at our own temporary patterns are swept with the leftovers; others are left be.
    assert planted.is_symlink() != swept
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert leftovers == ([] if swept else [planted.name])


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl"])
def test_report_path_that_is_a_link_is_replaced_by_the_report(
    folder: Path, victim: Path, sandbox: Sandbox, suffix: str
) -> None:
    """Documented: the rename replaces the link itself; what it pointed to is left alone."""
    src = pairs_csv(folder / "in.csv", 5)
    latest = folder / f"latest{suffix}"
    latest.symlink_to(victim)
    summary = folder / "latest.json"
    summary.symlink_to(victim)
    result = run_against(
        sandbox, "run", src, "-o", latest, "--summary-json", summary, *FAST_UNPACED
    )

    assert result.exit_code == 0, result.stderr
    assert victim.read_text() == VICTIM_TEXT
    assert not latest.is_symlink() and latest.is_file()
    assert not summary.is_symlink() and json.loads(summary.read_text())["rows"] == 5
    if suffix == ".csv":
        assert_all_linked(latest, 5)


def test_leftovers_of_ours_are_swept_and_nothing_else(folder: Path, sandbox: Sandbox) -> None:
    src = pairs_csv(folder / "in.csv", 3)
    ours = [
        ".in.results.csv.0123456789ab.bulklink-tmp",
        ".in.results.csv.abcdef012345.bulklink-merge",
        ".in.results.csv.abcdef012345.bulklink-stdin.csv",
        ".in.results.csv.abcdef012345.bulklink-input",
        ".in.results.csv.journal.0123456789ab.bulklink-tmp",
        ".in.results.csv.bulklink-tmp",
    ]
    not_ours = [
        ".in.results.csv.keep",
        ".in.results.csv.0123456789ab.bulklink-tmp.bak",
        ".other.csv.0123456789ab.bulklink-tmp",
        "in.results.csv.0123456789ab.bulklink-tmp",
        ".in.results.csv.XYZ.bulklink-tmp",
    ]
    hour_ago = time.time() - 3600
    for name in ours + not_ours:
        (folder / name).write_text("left over\n")
        os.utime(folder / name, (hour_ago, hour_ago))

    result = run_against(sandbox, "run", src, *FAST_UNPACED)
    assert result.exit_code == 0, result.stderr
    assert [n for n in ours if (folder / n).exists()] == []
    assert [n for n in not_ours if not (folder / n).exists()] == []


def test_files_we_create_are_private_where_they_hold_input_or_state(
    folder: Path, sandbox: Sandbox
) -> None:
    """The lock and journal are 0600 (the journal holds ticket data and maybe a key hash)."""
    src = pairs_csv(folder / "in.csv", N)
    report = folder / "in.results.csv"
    interrupt_at_row_11(sandbox, src, report, env_for(sandbox.url))
    assert journal_of(report).stat().st_mode & 0o777 == 0o600


# -- the report is written atomically; unusable paths are usage errors ------------------------


@pytest.mark.parametrize(("fmt", "earlier"), [(".csv", True), (".xlsx", False)])
@pytest.mark.slow
def test_report_is_written_atomically(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, fmt: str, earlier: bool
) -> None:
    server = start_sandbox(latency=0.03)
    out = tmp_path / f"report{fmt}"
    old: bytes | None = None
    names = {"big.csv", out.name}
    if earlier:
        small = write_csv(
            tmp_path / "small.csv", [["sourceTicketId", "linkedTicketId"], ["A", "B"]]
        )
        names.add(small.name)
        result = run_against(server, "run", small, "-o", out, *FAST_UNPACED)
        assert result.exit_code == 0, result.stderr
        old = out.read_bytes()
    big = write_csv(
        tmp_path / "big.csv",
        [["sourceTicketId", "linkedTicketId"], *([f"S{i}", f"L{i}"] for i in range(40))],
    )
    env = {
        **os.environ,
        "THENA_TOKEN": TOKEN,
        "THENA_ORG_ID": ORG,
        "THENA_BASE_URL": server.url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulklink", "run", str(big), "-o", str(out),
         "--concurrency", "1", *FAST_UNPACED],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen: list[bytes | None] = []
    during_run = 0
    while proc.poll() is None:
        try:
            seen.append(out.read_bytes())
        except FileNotFoundError:
            seen.append(None)
        if len(server.requests) > 1 and proc.poll() is None:
            during_run += 1
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert during_run > 10, "the run ended before the report could be watched"
    final = out.read_bytes()
    allowed = {old, final}
    bad = [content for content in seen if content not in allowed]
    assert bad == [], f"{len(bad)} reads saw a partial or foreign report"
    _, rows = read_any(out)
    assert len(rows) == 40
    assert {p.name for p in tmp_path.iterdir()} == names  # no temp files left


def test_unwritable_log_and_summary_paths_are_usage_errors(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    for flag in ("--log-file", "--summary-json"):
        result = run_against(sandbox, "run", data, flag, tmp_path / "nope" / "x", *FAST)
        assert result.exit_code == 2, (flag, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()


# -- --log-file ----------------------------------------------------------------------


def test_a_link_planted_at_the_log_file_is_refused_and_its_target_untouched(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    log = tmp_path / "run.log"
    log.symlink_to(victim)
    src = pairs_csv(tmp_path / "in.csv", 3)
    result = run_against(sandbox, "run", src, "--log-file", log, "--no-progress")
    assert result.exit_code == 2, result.stderr
    assert "symbolic link" in result.stderr and str(log) in result.stderr
    assert victim.read_text() == "precious\n"
    assert sandbox.requests == [], "nothing is sent when the log cannot be opened"


def test_the_log_file_is_appended_to_and_private(tmp_path: Path, sandbox: Sandbox) -> None:
    log = tmp_path / "run.log"
    log.write_text("an earlier night\n")
    src = pairs_csv(tmp_path / "in.csv", 3)
    result = run_against(sandbox, "run", src, "--log-file", log, "--no-progress")
    assert result.exit_code == 0, result.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier night" and "linked 3" in lines[-1]
    fresh = tmp_path / "new.log"
    assert run_against(sandbox, "run", src, "--log-file", fresh, "--no-state").exit_code == 0
    assert fresh.stat().st_mode & 0o007 == 0, "others cannot read a new log"


def _node(folder: Path, kind: str) -> Path:
    """A file system node that is no regular file, made in ``folder``."""
    path = folder / f"out-{kind}.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "null device":  # the same device as /dev/null, made here (root only)
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:  # a link to a FIFO
        os.mkfifo(folder / "pipe")
        path.symlink_to(folder / "pipe")
    return path


@pytest.mark.parametrize("kind", ["fifo", "folder", "null device", "link to a fifo"])
@pytest.mark.parametrize("flag", ["-o", "--summary-json", "--metrics-file"])
def test_a_path_that_is_no_file_is_refused_before_anything_is_sent_and_left_alone(
    folder: Path, sandbox: Sandbox, kind: str, flag: str
) -> None:
    """Renaming a new file over /dev/null (cron's "I don't want it"), or over a FIFO a
    collector reads, would replace it: refused in one line, exit 2, nothing sent."""
    node = _node(folder, kind)
    before = os.lstat(node)
    result = run_against(sandbox, "run", pairs_csv(folder / "in.csv", 3), flag, node, *FAST_UNPACED)
    assert result.exit_code == 2, result.output
    said = one_line_error(result)
    assert str(node) in said and ("not a file" in said or kind == "folder"), said
    assert sandbox.requests == []
    after = os.lstat(node)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


@pytest.mark.parametrize("path", ["/dev/stdout", "/dev/null", "/proc/self/fd/1"])
def test_no_file_is_ever_made_in_the_systems_folders(path: str) -> None:
    """``/dev/stdout`` links to whatever stdout is, a regular file under cron: it would
    be replaced, as root, by the summary (checked without running: it would be destroyed)."""
    with pytest.raises(UsageError, match="where bulklink makes no file"):
        refuse_unreplaceable(Path(path), "--summary-json")
