"""The state store's CPU cost per linked pair, in instructions (callgrind), repeatable.

    python benchmarks/store_instructions.py                       # 1,000 and 3,000 pairs
    python benchmarks/store_instructions.py --flush-every 2500 5000 15000

Records N pairs of 29-character random IDs the way a run does (``Ledger.on_linked`` for each,
``Ledger.flush`` every ``--flush-every`` pairs, as a long run's batches of
``ledger.FLUSH_PAIRS`` are, and at the end), with a new store in a temporary folder, under
``valgrind --tool=callgrind``, at two sizes; then the same without a store. The
difference of the two slopes is the store's cost per pair. Needs valgrind. About a
minute at the default sizes.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from instructions import callgrind, two_sizes

from bulklink.state.ledger import Ledger
from bulklink.state.scope import Scope
from bulklink.state.store import Store

ROWS_PER_SECOND = 500  # pairs sharing one linked_at, as at a run's typical rate


def record(n: int, flush_every: int, with_store: bool) -> None:
    """What one valgrind run measures: N pairs through the ledger (no store: the loop)."""
    rng = random.Random(n)
    ids = ["CT" + format(rng.getrandbits(108), "027X") for _ in range(2 * n)]
    start = int(time.time())
    stamps = [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + k))
        for k in range(n // ROWS_PER_SECOND + 1)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "state.sqlite3") if with_store else None
        ledger = Ledger(store, Scope("https://platform.thena.ai", "org_bench"))
        ledger.begin(
            "run", report=Path("r.csv"), input="i.csv", input_hash="-", job="j", command_line="x"
        )
        add = ledger.on_linked
        for i in range(n):
            if add is not None:
                add((ids[2 * i], ids[2 * i + 1], stamps[i // ROWS_PER_SECOND]))
            if flush_every and (i + 1) % flush_every == 0:
                ledger.flush()
        ledger.finish({"linked": n}, 0)
        ledger.close()


def instructions(n: int, flush_every: int, with_store: bool) -> int:
    child = [sys.executable, __file__, "--child", str(n), str(flush_every), str(int(with_store))]
    with tempfile.TemporaryDirectory() as tmp:
        return callgrind(child, dict(os.environ), Path(tmp) / "out")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        record(int(argv[1]), int(argv[2]), argv[3] == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flush-every", type=int, default=0, help="pairs a batch [0: at the end]")
    chosen = two_sizes(parser, argv, (1000, 3000))
    if chosen is None:
        return 2
    args, small, large = chosen
    slopes = {}
    for with_store in (False, True):
        low = instructions(small, args.flush_every, with_store)
        high = instructions(large, args.flush_every, with_store)
        slopes[with_store] = (high - low) / (large - small)
    batches = f"batches of {args.flush_every:,}" if args.flush_every else "one batch at the end"
    print(f"pairs            {small:,} and {large:,} ({batches})")
    print(f"loop, no store   {slopes[False]:,.0f} instructions a pair")
    print(f"with the store   {slopes[True]:,.0f} instructions a pair")
    print(f"the store        {slopes[True] - slopes[False]:,.0f} instructions a pair")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
