"""``--log-file`` is a file of ours like the report's: never written through a link."""

from __future__ import annotations

from pathlib import Path

from bulklink.sandbox import Sandbox
from tests.conftest import pairs_csv, run_against


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
