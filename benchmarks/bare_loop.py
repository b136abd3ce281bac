"""The baseline bulklink's overhead is measured against: a bare hand-written linking loop.

    python benchmarks/bare_loop.py INPUT.csv OUTPUT.csv --url http://127.0.0.1:PORT --concurrency 64

What it does is the least a report-writing linker must do, and nothing more: the csv module
reads the (source, linked) pairs; ONE ``aiohttp.ClientSession`` sends them; a fixed pool of
``--concurrency`` worker tasks pulls pairs from a shared iterator (no task per row), each
request also bounded by an ``asyncio.Semaphore``; every answer is read, parsed with
``json.loads``, and written as a CSV row holding the HTTP status and every field of ``data``.
No retries, no journal, no rate limiter, no input validation, rows written as they finish.

The client's HTTP set-up (session-wide headers, connector limit) mirrors bulklink's own, so
the comparison measures what bulklink adds on top of the same HTTP work.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

LINK_PATH = "/v1/tickets/link"


def read_pairs(path: Path) -> Iterator[tuple[int, str, str]]:
    """(row number, source, linked) for every data row; columns found by header name."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        src_at = header.index("sourceTicketId")
        dst_at = header.index("linkedTicketId")
        for number, row in enumerate(reader, 1):
            yield number, row[src_at].strip(), row[dst_at].strip()


async def link_all(
    pairs: Iterator[tuple[int, str, str]],
    out: Any,
    url: str,
    headers: dict[str, str],
    concurrency: int,
    no_cookies: bool = False,
) -> tuple[int, int]:
    """Send every pair; returns (rows answered 2xx, rows not)."""
    writer = csv.writer(out)
    writer.writerow(["row", "sourceTicketId", "linkedTicketId", "http_status", "error", "data..."])
    semaphore = asyncio.Semaphore(concurrency)
    counts = [0, 0]
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=30),
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar() if no_cookies else None,
    ) as session:

        async def worker() -> None:
            # The iterator is shared: each pair goes to exactly one worker. A generator is
            # safe here because next() never awaits.
            for number, source, linked in pairs:
                body = json.dumps({"sourceTicketId": source, "linkedTicketId": linked}).encode()
                async with semaphore:
                    try:
                        async with session.patch(url, data=body) as resp:
                            status = resp.status
                            raw = await resp.read()
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        counts[1] += 1
                        writer.writerow([number, source, linked, "", type(exc).__name__])
                        continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    obj = None
                data = obj.get("data") if isinstance(obj, dict) else None
                ok = 200 <= status < 300 and isinstance(data, dict)
                counts[0 if ok else 1] += 1
                cells = list(data.values()) if isinstance(data, dict) else []
                writer.writerow([number, source, linked, status, "" if ok else "failed", *cells])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--no-cookies",
        action="store_true",
        help="use aiohttp.DummyCookieJar, as bulklink does (like-for-like HTTP settings)",
    )
    parser.add_argument("--token", default=os.environ.get("THENA_TOKEN", "bench-token"))
    parser.add_argument("--org-id", default=os.environ.get("THENA_ORG_ID", "org_bench"))
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    if not url.endswith(LINK_PATH):
        url += LINK_PATH
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {args.token}",
        "x-org-id": args.org_id,
    }
    t0 = time.perf_counter()
    with args.output.open("w", newline="", encoding="utf-8") as out:
        ok, failed = asyncio.run(
            link_all(
                read_pairs(args.input),
                out,
                url,
                headers,
                max(1, args.concurrency),
                args.no_cookies,
            )
        )
    elapsed = time.perf_counter() - t0
    print(
        f"bare_loop: {ok} ok, {failed} failed in {elapsed:.2f}s "
        f"({(ok + failed) / elapsed if elapsed else 0:.0f} rows/s)",
        file=sys.stderr,
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
