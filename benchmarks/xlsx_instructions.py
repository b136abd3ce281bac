"""The xlsx report's rows sheet alone, in instructions a row: repeatable on a noisy VM.

    .venv/bin/python benchmarks/xlsx_instructions.py [SMALL LARGE]   # default 1000 4000 rows

``write_workbook`` writes SMALL and then LARGE rows under ``valgrind --tool=callgrind``,
once with linked rows (the fast server's ticket: 40 of 42 cells filled) and once with
already-linked rows (7 filled), to an in-memory file; the slope between the two sizes is
the cost a row, start-up and the Summary sheet cancelling out. Needs valgrind.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench
from instructions import callgrind, two_sizes


def rows(count: int, kind: str) -> list[list[object]]:
    """Report rows as the writer gets them: bulklink's cells, then the ticket's."""
    from bulklink.models import TICKET_FIELDS

    if kind == "linked":
        ticket = json.loads(bench.ticket_body())["data"]
        head: list[object] = [True, "linked", 200, "", 1]
        cells = [ticket.get(name) for name in TICKET_FIELDS]
    else:
        head, cells = [True, "already-linked", None, "", 0], [None] * len(TICKET_FIELDS)
    return [
        [n, f"CT{n:027X}", f"CT{n + 7:027X}", *head, "2026-12-03T10:00:00Z", *cells]
        for n in range(1, count + 1)
    ]


def write(count: int, kind: str) -> None:
    from bulklink.tables.report.schema import RESULT_COLUMNS, TICKET_COLUMNS
    from bulklink.tables.report.xlsx import write_workbook

    table = rows(count, kind)
    write_workbook(io.BytesIO(), [*RESULT_COLUMNS, *TICKET_COLUMNS], lambda: iter(table), None)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--write":  # the measured program itself
        write(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    found = two_sizes(parser, sys.argv[1:], (1000, 4000))
    if found is None:
        sys.exit(1)
    _, small, large = found
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ)
        for kind in ("linked", "already-linked"):
            counts = [
                callgrind([sys.executable, __file__, "--write", str(n), kind], env, out)
                for n in (small, large)
            ]
            per_row = (counts[1] - counts[0]) / (large - small)
            print(f"{kind:15} {per_row / 1000:8.1f}k instructions a row")


if __name__ == "__main__":
    main()
