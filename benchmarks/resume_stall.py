"""The longest the event loop stalls while a run resumes with many rows already done.

    python benchmarks/resume_stall.py [DONE]        # default 150000 rows done, 1000 to send

A resumed run reads every done row back from the journal into the report. Done in one
go, that blocks the event loop (no request is started or answered meanwhile) for
seconds; the goal is no stall over 100 ms. The script writes an input and a journal of
DONE finished rows, then resumes it against the sandbox (a subprocess, so it takes no
GIL from the run) with a probe task in the run's own loop that wakes every 10 ms and
records how late it woke. The run has a state store of its own in the temporary
folder (on, as by default, so recording the resumed rows is part of the run).
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bulklink.run.job
from bulklink.api import run_job
from bulklink.models import Outcome, Result
from bulklink.options import ReadOptions
from bulklink.sandbox import success_body
from bulklink.state.journal import Journal, journal_path
from bulklink.state.scope import Scope
from bulklink.tables.inputs import Table, scan

sys.path.insert(0, str(Path(__file__).parent))

import bench

TICK = 0.01
GOAL = 0.100


def main(argv: list[str]) -> int:
    done = int(argv[0]) if argv else 150_000
    rows = done + 1000
    with tempfile.TemporaryDirectory(prefix="bulklink-stall-") as tmp:
        src = Path(tmp) / "in.csv"
        with src.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["sourceTicketId", "linkedTicketId"])
            out.writerows([f"T{i:07d}", f"L{i:07d}"] for i in range(1, rows + 1))
        report = Path(tmp) / "in.results.csv"

        lags: list[float] = []

        async def probe() -> None:
            loop = asyncio.get_running_loop()
            while True:
                before = loop.time()
                await asyncio.sleep(TICK)
                lags.append(loop.time() - before - TICK)

        real_run = bulklink.run.job._run

        async def measured(*args: Any) -> Any:
            task = asyncio.create_task(probe())
            try:
                return await real_run(*args)
            finally:
                task.cancel()

        bulklink.run.job._run = measured  # type: ignore[assignment]
        with bench.sandbox_server(bench.find_bulklink()) as server:
            plan = scan(Table(src, ReadOptions()))
            scope = Scope.build(server.url, bench.ORG, sandbox=False)
            journal, _ = Journal.open(journal_path(report), plan.key, plan.rows, scope=scope)
            body = success_body("T0000001", time.time())
            ticket = json.loads(body)["data"]
            journal.defer = lambda flush: None
            for row in range(1, done + 1):
                journal.record(Result(row, Outcome.LINKED, 200, "", 1, ticket, body))
                if row % 10_000 == 0:
                    journal.flush()
            journal.close()

            t0 = time.monotonic()
            summary = run_job(
                src,
                base_url=server.url,
                token=bench.TOKEN,
                org_id=bench.ORG,
                rate=0,
                no_proxy=True,  # loopback only, whatever the environment's proxies
                state=Path(tmp) / "state.sqlite3",  # on, as by default, but not the user's
            )
            elapsed = time.monotonic() - t0
    worst = max(lags, default=0.0)
    print(
        f"resumed {summary.resumed_rows} done rows, sent {rows - summary.resumed_rows}, "
        f"{elapsed:.1f}s; event loop: {len(lags)} ticks, longest stall {worst * 1000:.0f} ms "
        f"(goal < {GOAL * 1000:.0f} ms): {'met' if worst < GOAL else 'NOT met'}"
    )
    return 0 if worst < GOAL else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
