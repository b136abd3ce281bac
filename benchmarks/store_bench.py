"""The state store's own figures (issue 9): insert and lookup time, bytes per pair.

    python benchmarks/store_bench.py               # 200,000 pairs
    python benchmarks/store_bench.py --pairs 1000000

Records N pairs of 29-character IDs (like ``CT4NVX0K10YJQ3X0185THN9R6H9M3``) in batches
of ``--batch`` (one transaction each, as a run does), in a shuffled order as a real input
arrives, then looks all of them up in chunks of 50,000 (the second night: every pair
already linked) and N pairs that are not there (a first night). Prints the time of each
and the store's size per pair once closed (WAL checkpointed). Uses a temporary folder
and deletes it; touches nothing else. Wall and CPU time are both shown: on a shared
machine the wall time is the noisier one.
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import tempfile
import time
from pathlib import Path

from bulklink.state.scope import Scope
from bulklink.state.store import Store
from bulklink.text import utc_stamp

ALPHABET = string.ascii_uppercase + string.digits
CHUNK = 50_000


def ticket_ids(n: int, rng: random.Random) -> list[str]:
    return ["CT" + "".join(rng.choices(ALPHABET, k=27)) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000, help="pairs per transaction")
    args = parser.parse_args()
    n = args.pairs
    rng = random.Random(9)
    sources, linked = ticket_ids(n, rng), ticket_ids(n, rng)
    pairs = list(zip(sources, linked, strict=True))
    scope = Scope("https://platform.thena.ai", "org_bench")
    stamp = utc_stamp()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite3"
        with Store.open(path) as store:
            run = store.start_run("run", scope=scope, report="bench.csv", command_line="bench")
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, n, args.batch):
                batch = [(s, t, stamp) for s, t in pairs[i : i + args.batch]]
                store.record_linked(scope, batch, run)
            insert, insert_cpu = time.perf_counter() - t0, time.process_time() - c0
        size = path.stat().st_size
        with Store.open(path) as store:
            t0, c0 = time.perf_counter(), time.process_time()
            hits = 0
            for i in range(0, n, CHUNK):
                found = store.linked_times(scope, pairs[i : i + CHUNK])
                hits += sum(1 for at in found if at is not None)
            lookup_hit, hit_cpu = time.perf_counter() - t0, time.process_time() - c0
            fresh = list(zip(ticket_ids(n, rng), ticket_ids(n, rng), strict=True))
            t0, c0 = time.perf_counter(), time.process_time()
            misses = 0
            for i in range(0, n, CHUNK):
                misses += store.linked_times(scope, fresh[i : i + CHUNK]).count(None)
            lookup_miss, miss_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert hits == n and misses == n, (hits, misses)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pairs                       {n:,} (29-character IDs, batches of {args.batch:,})")
    print(
        f"insert                      {insert:.2f} s wall, {insert_cpu:.2f} s CPU "
        f"({insert_cpu / n * 1e6:.1f} us CPU a pair)"
    )
    print(
        f"lookup, all already linked  {lookup_hit:.2f} s wall, {hit_cpu:.2f} s CPU "
        "(goal < 2 s for 200,000)"
    )
    print(f"lookup, none linked         {lookup_miss:.2f} s wall, {miss_cpu:.2f} s CPU")
    print(
        f"store size                  {size / 1e6:.1f} MB = {size / n:.0f} bytes/pair (goal < 250)"
    )
    print(f"peak RSS (whole benchmark)  {peak:.0f} MB")


if __name__ == "__main__":
    main()
