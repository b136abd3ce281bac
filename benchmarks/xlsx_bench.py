"""Peak memory and time of writing a large xlsx report (issue 13), without the network.

    python benchmarks/xlsx_bench.py               # 200,000 rows
    python benchmarks/xlsx_bench.py --rows 20000

Rows go through the report writer exactly as a run's assembler hands them over (a
mix of linked, failed, invalid, duplicate and already-linked rows, the linked ones
carrying the sandbox's full ticket), then the workbook is committed: the rows sheet,
the Summary sheet and its chart. Printed: the time to hand the rows over, the time of the commit,
the process's peak RSS before the commit and at the end (``ru_maxrss``), and the
report's size. The memory goal for a 200,000-row run is 300 MB (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bulklink.models import Outcome
from bulklink.sandbox import success_body
from bulklink.tables.report.schema import TICKET_COLUMNS, Layout, ReportRow, split_ticket
from bulklink.tables.report.writers import open_writer


def peak_mb() -> float:
    """The process's high-water RSS (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def rows(n: int) -> Any:
    """(head, ticket, extras, others) as the assembler writes them: of every 10 rows one
    fails, one is invalid, one a duplicate and one already linked (the state store)."""
    none_ticket = [None] * len(TICKET_COLUMNS)
    stamp = "2026-12-01T02:30:00Z"
    for row in range(1, n + 1):
        source, linked = f"{row:07d}", f"L{row:07d}"
        kind = row % 10
        if kind == 3:
            error = f"Ticket {source} not found"
            head = ReportRow(row, source, linked, False, Outcome.FAILED, 404, error, 1, "")
            yield head, none_ticket, None, [f"note {row}"]
        elif kind == 6:
            error = "sourceTicketId is blank"
            head = ReportRow(row, "", linked, False, Outcome.INVALID, None, error, 0, "")
            yield head, none_ticket, None, [f"note {row}"]
        elif kind == 9:
            error = f"duplicate of row {row - 1}"
            head = ReportRow(row, source, linked, True, Outcome.DUPLICATE, 200, error, 0, "")
            yield head, none_ticket, None, [f"note {row}"]
        elif kind == 4:
            head = ReportRow(row, source, linked, True, Outcome.ALREADY_LINKED, None, "", 0, stamp)
            yield head, none_ticket, None, [f"note {row}"]
        else:
            ticket = json.loads(success_body(source, time.time()))["data"]
            cells, extras = split_ticket(ticket)
            head = ReportRow(row, source, linked, True, Outcome.LINKED, 200, "", 1, stamp)
            yield head, cells, extras, [f"n{row}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.xlsx"
        writer = open_writer(out, Layout(["note"]))
        t0 = time.perf_counter()
        for head, ticket, extras, others in rows(args.rows):
            writer.write(*writer.schema.cells(head, ticket, extras, others))
        t1 = time.perf_counter()
        before = peak_mb()
        writer.commit()
        t2 = time.perf_counter()
        size = out.stat().st_size
    print(f"rows                     {args.rows:,}")
    print(f"rows handed to writer    {t1 - t0:.1f} s")
    print(f"commit (both sheets)     {t2 - t1:.1f} s")
    print(f"peak RSS before commit   {before:.0f} MB")
    print(f"peak RSS at the end      {peak_mb():.0f} MB  (goal for 200,000 rows: < 300 MB)")
    print(f"report size              {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
