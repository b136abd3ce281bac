"""Per-row CPU cost of bulklink against the bare loop, in instructions: repeatable on a noisy VM.

    .venv/bin/python benchmarks/instructions.py [SMALL LARGE]      # default 500 1500 rows
    .venv/bin/python benchmarks/instructions.py --no-state         # also bulklink --no-state
    .venv/bin/python benchmarks/instructions.py --keep DIR         # keep callgrind.out files

Wall and CPU seconds swing by 20-30% between identical runs on a shared 2-core VM, which
hides a 5% change. ``valgrind --tool=callgrind`` counts instructions instead, the same
for the same program and input whatever else the machine does. Each program runs on two
input sizes against nginx on 127.0.0.1 (or the sandbox); the slope between them is the
cost per row, the intercept the fixed start-up cost. Needs valgrind (Debian: valgrind).
About two minutes at the default sizes (valgrind runs Python ~50x slower).

bulklink runs with its state store on, as by default, so the store's cost is counted; each
run has a new empty store (``XDG_STATE_HOME`` a new temp folder, ``BULKLINK_STATE``
removed): the user's store is never touched, and the larger input (whose first rows are
the smaller one's) is not skipped as already linked. ``--no-state`` adds a third program,
bulklink without a store, so the store's share of the per-row cost shows.
``--keep DIR`` copies each callgrind output there (``callgrind_annotate`` reads them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench

BARE_LOOP = Path(__file__).with_name("bare_loop.py")


def callgrind(cmd: list[str], env: dict[str, str], out: Path) -> int:
    """Instructions ``cmd`` executes under ``valgrind --tool=callgrind`` (exit 0 or 1)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode not in (0, 1) or found is None:
        raise RuntimeError(f"{cmd[:3]} failed under valgrind:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def instructions(
    cmd: list[str], env: dict[str, str], work: Path, keep: Path | None, name: str
) -> int:
    out = work / "callgrind.out"
    state_home = tempfile.mkdtemp(prefix="state-", dir=work)  # a new empty store per run
    count = callgrind(cmd, dict(env, XDG_STATE_HOME=state_home), out)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, keep / f"callgrind.{name}.out")
    return count


def two_sizes(
    parser: argparse.ArgumentParser, argv: list[str], default: tuple[int, int]
) -> tuple[argparse.Namespace, int, int] | None:
    """The options, and the two sizes whose difference is the cost a row; None when
    valgrind is missing (said on stderr)."""
    parser.add_argument("sizes", nargs="*", type=int, help=f"SMALL LARGE {list(default)}")
    args = parser.parse_args(argv)
    if len(args.sizes) not in (0, 2):
        parser.error("give both SMALL and LARGE, or neither")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return None
    small, large = args.sizes or default
    return args, small, large


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-state", action="store_true", help="also bulklink --no-state")
    parser.add_argument("--keep", type=Path, help="copy the callgrind outputs to this folder")
    chosen = two_sizes(parser, argv, (500, 1500))
    if chosen is None:
        return 2
    args, small, large = chosen
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="bulklink-instr-") as tmp:
        work = Path(tmp)
        python = sys.executable
        server_cm = (
            bench.nginx_server(nginx, work)
            if Path(nginx).exists()
            else bench.sandbox_server(bench.find_bulklink())
        )
        with server_cm as server:
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("THENA_") and k != "BULKLINK_STATE"
            }
            env.update(THENA_TOKEN=bench.TOKEN, THENA_ORG_ID=bench.ORG)
            env["THENA_BASE_URL"] = server.url
            counts: dict[tuple[str, int], int] = {}
            for rows in (small, large):
                path = bench.make_input(work / f"in{rows}.csv", rows)
                linker = [python, "-m", "bulklink", "run", str(path), "-o",
                          str(work / "report.csv"), "--rate", "0", "--concurrency", "64",
                          "--no-progress", "--fresh", "-q"]  # fmt: skip
                programs = {
                    "bulklink": linker,
                    "bare loop": [python, str(BARE_LOOP), str(path), str(work / "bare.csv"),
                                  "--url", server.url, "--concurrency", "64"],
                }  # fmt: skip
                if args.no_state:
                    programs["no-state"] = [*linker, "--no-state"]
                for name, cmd in programs.items():
                    tag = f"{name.replace(' ', '-')}.{rows}"
                    counts[name, rows] = instructions(cmd, env, work, args.keep, tag)
                    print(f"  {name}, {rows} rows: {counts[name, rows] / 1e9:.2f}G", flush=True)
    per_row = {n: (counts[n, large] - counts[n, small]) / (large - small) for n in programs}
    fixed = {n: counts[n, small] - per_row[n] * small for n in programs}
    for name in programs:
        print(f"{name:9}: {per_row[name] / 1e3:6.1f}k instructions/row, "
              f"fixed {fixed[name] / 1e9:.2f}G")  # fmt: skip
    ratio = per_row["bulklink"] / per_row["bare loop"]
    print(f"per-row ratio bulklink/bare: {ratio:.3f} (goal <= 1.25)")
    if "no-state" in programs:
        bare = per_row["bare loop"]
        store = per_row["bulklink"] - per_row["no-state"]
        print(f"per-row ratio bulklink --no-state/bare: {per_row['no-state'] / bare:.3f}")
        share = f"{store / 1e3:.1f}k instructions/row ({store / bare:.1%} of bare)"
        print(f"  the store's share: {share}")
    for rows in (50_000, 1_000_000):
        total = {n: fixed[n] + per_row[n] * rows for n in programs}
        print(f"  projected total at {rows:,} rows: {total['bulklink'] / total['bare loop']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
