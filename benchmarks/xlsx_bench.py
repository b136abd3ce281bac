"""xlsx against CSV (issue 21): nights and retry with spreadsheets in and out, as ratios.

    python benchmarks/xlsx_bench.py                    # 200,000 rows, this tree only
    python benchmarks/xlsx_bench.py --before 68f652b   # the same, and the code of a commit
    python benchmarks/xlsx_bench.py --rows 20000

For each version of the code (this tree, and with ``--before REV`` the ``bulklink``
package of that commit, run from an exported copy by the same Python), and each format
(CSV in and out, xlsx in and out): night 1 links every row of a fresh input with a fresh
state store (``--rate 0 --concurrency 64``), night 2 is the same command over the
unchanged file and store (nothing sent); ``retry`` reads and rewrites night 2's report
(every row already linked: few cells a row), ``retry night 1`` a copy of night 1's (every
row linked, with its ticket: some 40 cells a row); neither has anything to resend.
Printed per run: wall seconds and peak RSS, and per version
the xlsx/CSV ratios against the goals: night 2 <= 2x, night 1 <= 1.3x, retry <= 2x,
peak RSS < 300 MB. The machine is shared: compare the ratios of one run, not seconds
across runs. The server is nginx on 127.0.0.1 with a fixed ticket (bench.py's), else a
``bulklink sandbox`` subprocess; nothing goes anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench

GOALS = {"night 1": 1.3, "night 2": 2.0, "retry": 2.0, "retry night 1": 2.0}
PEAK_GOAL_MB = 300


def xlsx_copy(csv_path: Path) -> Path:
    """The CSV's pairs as a workbook, as a spreadsheet export would write them."""
    import xlsxwriter

    path = csv_path.with_suffix(".xlsx")
    if path.exists():
        return path
    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = book.add_worksheet("pairs")
    with csv_path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            sheet.write_row(n, 0, line.rstrip("\n").split(","))
    book.close()
    return path


def export(rev: str, into: Path) -> Path:
    """The ``bulklink`` package of commit ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(bench.ROOT), "archive", rev, "bulklink"],
        check=True,
        capture_output=True,
    ).stdout
    target = into / f"src-{rev}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


@contextlib.contextmanager
def server(work: Path) -> Iterator[bench.Server]:
    nginx = shutil.which("nginx")
    if nginx:
        with bench.nginx_server(nginx, work) as found:
            yield found
    else:
        with bench.sandbox_server(bench.find_bulklink()) as found:
            yield found


def runs(src: Path | None, url: str, work: Path, inputs: dict[str, Path]) -> dict[str, bench.Proc]:
    """Night 1, night 2 and retry for each format, with the code at ``src`` (None: this tree)."""
    results = {}
    for fmt, path in inputs.items():
        home = work / f"state-{fmt}-{'before' if src else 'after'}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "BULKLINK_STATE"}
        env.update(
            XDG_STATE_HOME=str(home),
            THENA_TOKEN=bench.TOKEN,
            THENA_ORG_ID=bench.ORG,
            THENA_BASE_URL=url,
        )
        if src is not None:
            env["PYTHONPATH"] = str(src)
        report = work / f"report-{fmt}.{fmt}"
        report.unlink(missing_ok=True)
        first = work / f"night1-{fmt}.{fmt}"
        base = [sys.executable, "-m", "bulklink"]
        opts = ["--rate", "0", "--concurrency", "64", "--no-progress", "-q"]
        steps: tuple[tuple[str, list[str | Path]], ...] = (
            ("night 1", ["run", path, "-o", report, *opts]),
            ("night 2", ["run", path, "-o", report, *opts]),
            ("retry", ["retry", report, *opts]),
            ("retry night 1", ["retry", first, *opts]),
        )
        for name, args in steps:
            proc = bench.measure([*base, *args], env=env, timeout=1800)
            proc.check(f"{fmt} {name}")
            results[f"{fmt} {name}"] = proc
            if name == "night 1":
                shutil.copyfile(report, first)
            bench.log(f"  {fmt} {name}: {proc.wall:.1f} s, peak {proc.peak_rss / bench.MB:.0f} MB")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--before", metavar="REV", help="also measure the code of this commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv_in = bench.make_input(work / "pairs.csv", args.rows)
        inputs = {"csv": csv_in, "xlsx": xlsx_copy(csv_in)}
        versions: dict[str, Path | None] = {"after": None}
        if args.before:
            versions = {"before": export(args.before, work), **versions}
        # ``python -m`` puts the working folder first on sys.path: not this checkout's.
        os.chdir(work)
        with server(work) as found:
            bench.log(f"server: {found.description}")
            table = {name: runs(src, found.url, work, inputs) for name, src in versions.items()}
    print(f"\n{args.rows:,} rows; xlsx time / CSV time (goal), peak RSS xlsx (goal < 300 MB)")
    for name, results in table.items():
        for step, goal in GOALS.items():
            xl, cs = results[f"xlsx {step}"], results[f"csv {step}"]
            ratio = xl.wall / cs.wall
            mark = "ok" if ratio <= goal and xl.peak_rss < PEAK_GOAL_MB * bench.MB else "MISSED"
            print(
                f"{name:7} {step:13} csv {cs.wall:6.1f} s  xlsx {xl.wall:6.1f} s  "
                f"{ratio:4.2f}x (<= {goal}x)  peak {xl.peak_rss / bench.MB:4.0f} MB "
                f"(csv {cs.peak_rss / bench.MB:.0f})  {mark}"
            )


if __name__ == "__main__":
    main()
