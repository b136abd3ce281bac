"""The README's first run works: the sample against the embedded sandbox."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import invoke, read_report

SAMPLES = Path(__file__).parent.parent / "samples"


def test_sample_run_shows_every_outcome(tmp_path: Path) -> None:
    sample = shutil.copy(SAMPLES / "pairs.csv", tmp_path / "pairs.csv")
    result = invoke("run", sample, "--sandbox", "--rate", "0")
    assert result.exit_code == 1, result.stderr
    rows = read_report(tmp_path / "pairs.results.csv")
    outcomes = {r["outcome"] for r in rows}
    assert outcomes == {"linked", "failed", "invalid", "duplicate"}
    assert "report: " in result.stderr.splitlines()[-1]
