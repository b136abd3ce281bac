"""``--rate auto`` against the sandbox's budget mode (issue 21): how much of the API's
budget a run uses, and how often it is refused.

    .venv/bin/python benchmarks/budget.py                 # W = 5 s, L = 250, ~2 minutes
    .venv/bin/python benchmarks/budget.py --window 2 --limit 100 --windows 4

Scenarios, each against a fresh in-process sandbox on 127.0.0.1 recording every
request's arrival (wall clock), with ``bulklink run --rate auto`` (reserve 10%) in
subprocesses:

alone     one run, budget L per W s: accepted requests per full window, against what the
          run allows itself (L less the reserve); the share of answers 429.
shared    two runs of the same org at once, same budget: both together, as above.
variant   plain budget 2L, ``OrgID`` budget L (the binding one): as ``alone``, against L.
headers   a server sending no rate-limit headers: the most requests in any 1 s (<= 10).

Only full windows count (the first and last are partial: the run starts and ends in
them). Goals: alone and variant >= 97% with <= 0.1% 429; shared >= 95% with <= 0.5%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bulklink.sandbox import RequestRecord, SandboxConfig, serve_in_thread

RESERVE = 0.10


@dataclass(frozen=True)
class Figure:
    name: str
    value: str
    goal: str
    ok: bool


def make_pairs(path: Path, rows: int, tag: str) -> Path:
    lines = ["sourceTicketId,linkedTicketId"]
    lines += [f"S{tag}{i:08d},L{tag}{i:08d}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_all(url: str, inputs: Sequence[Path]) -> list[dict[str, object]]:
    """``bulklink run --rate auto`` on each input at once; their summaries."""
    env = dict(os.environ, THENA_TOKEN="bench-token", THENA_ORG_ID="org_bench")  # noqa: S106
    procs = []
    for path in inputs:
        summary = path.with_suffix(".summary.json")
        command = [sys.executable, "-m", "bulklink", "run", str(path), "--base-url", url]
        command += ["--allow-http", "--no-state", "--rate", "auto", "-q"]
        command += ["-o", str(path.with_suffix(".report.csv")), "--summary-json", str(summary)]
        procs.append((subprocess.Popen(command, env=env), summary))
    out = []
    for proc, summary in procs:
        proc.wait(timeout=600)
        out.append(json.loads(summary.read_text(encoding="utf-8")))
    return out


def window_use(requests: Sequence[RequestRecord], window: float) -> tuple[float, int, int]:
    """(accepted per full window on average, answers 429, answers) from arrival times."""
    accepted = Counter(int(r.wall // window) for r in requests if r.status != 429)
    throttled = sum(1 for r in requests if r.status == 429)
    full = sorted(accepted)[1:-1]
    mean = sum(accepted[w] for w in full) / len(full) if full else 0.0
    return mean, throttled, len(requests)


def budget_figures(
    name: str,
    config: SandboxConfig,
    inputs: Sequence[Path],
    allowed: float,
    goals: tuple[float, float],
) -> list[Figure]:
    """Run the inputs against a sandbox of ``config``; its use of ``allowed`` a window."""
    with serve_in_thread(config) as sandbox:
        summaries = run_all(sandbox.url, inputs)
        mean, throttled, answers = window_use(sandbox.requests, config.budget_window)
    share, refused = mean / allowed, throttled / max(answers, 1)
    learnt = "; ".join(f"{s['budget']['text']} at {s['average_rate']}/s" for s in summaries)  # type: ignore[index]
    least, most = goals
    return [
        Figure(
            f"{name}: budget used",
            f"{share:.1%} ({mean:.1f} of {allowed:g} a window; learnt {learnt})",
            f">= {least:.0%}",
            share >= least,
        ),
        Figure(
            f"{name}: answered 429",
            f"{refused:.2%} ({throttled} of {answers})",
            f"<= {most:.1%}",
            refused <= most,
        ),
    ]


def no_headers(work: Path) -> Figure:
    """Without rate-limit headers, auto is --rate 10: at most 10 (+1) starts in any 1 s."""
    rows = 60
    with serve_in_thread(SandboxConfig()) as sandbox:
        run_all(sandbox.url, [make_pairs(work / "plain.csv", rows, "N")])
        times = sorted(r.t for r in sandbox.requests)
    busiest = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    rate = (len(times) - 1) / (times[-1] - times[0])
    return Figure(
        f"no headers, {rows} rows: busiest 1 s",
        f"{busiest} requests (average {rate:.2f}/s)",
        "average <= 10/s, busiest <= 11 (R + 1, as --rate 10 keeps)",
        busiest <= 11 and rate <= 10.05,
    )


def figures(work: Path, window: float, limit: int, windows: int) -> list[Figure]:
    allowed = limit * (1 - RESERVE)
    rows = int(allowed * windows)
    plain = SandboxConfig(budget_limit=limit, budget_window=window)
    variant = SandboxConfig(
        budget_limit=2 * limit, budget_window=window, budget_variants={"OrgID": limit}
    )
    return [
        *budget_figures(
            "alone", plain, [make_pairs(work / "a.csv", rows, "A")], allowed, (0.97, 0.001)
        ),
        *budget_figures(
            "shared (2 runs)",
            plain,
            [make_pairs(work / f"s{i}.csv", rows // 2, f"S{i}") for i in (1, 2)],
            allowed,
            (0.95, 0.005),
        ),
        *budget_figures(
            "variant (OrgID binding)",
            variant,
            [make_pairs(work / "v.csv", rows, "V")],
            allowed,
            (0.97, 0.001),
        ),
        no_headers(work),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=5.0, help="W seconds [5]")
    parser.add_argument("--limit", type=int, default=250, help="L requests a window [250]")
    parser.add_argument("--windows", type=int, default=5, help="windows of work per run [5]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bulklink-budget-") as tmp:
        found = figures(Path(tmp), args.window, args.limit, args.windows)
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"budget L={args.limit} per W={args.window:g} s, reserve {RESERVE:.0%}; load {load}")
    width = max(len(f.name) for f in found)
    for f in found:
        print(f"{f.name:<{width}}  {f.value}  (goal {f.goal}: {'ok' if f.ok else 'MISSED'})")
    return 0 if all(f.ok for f in found) else 1


if __name__ == "__main__":
    sys.exit(main())
