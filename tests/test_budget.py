"""``--rate auto`` over loopback against the sandbox's budget mode (issue 21).

What is checked comes from the server's side: the arrival time (wall clock) and status of
every request it recorded, counted per budget window. Windows are short (1 s) and budgets
small, so each run takes two or three seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import bulklink
from bulklink.models import Summary
from bulklink.net.client import Budget, read_budgets
from bulklink.sandbox import Reply, Sandbox
from tests.helpers import FAST, ORG, TOKEN, invoke, pairs_csv, read_report, run_against

AUTO = (*FAST, "--rate", "auto", "--no-state")


def per_window(server: Sandbox, width: float = 1.0, *, agent: str | None = None) -> Counter[int]:
    """Requests the server accepted per budget window (of one client, by its x-org-id)."""
    return Counter(
        int(r.wall // width)
        for r in server.requests
        if r.status != 429 and (agent is None or r.header("x-test-run") == agent)
    )


def statuses(server: Sandbox) -> Counter[int]:
    return Counter(r.status for r in server.requests)


def auto_run(server: Sandbox, tmp_path: Path, rows: int, *extra: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    """``bulklink run --rate auto`` of ``rows`` pairs: exit code, stderr, the summary JSON."""
    summary = tmp_path / "summary.json"
    src = pairs_csv(tmp_path / "in.csv", rows)
    result = run_against(server, "run", src, *AUTO, "--summary-json", summary, *extra)
    return result.exit_code, result.stderr, json.loads(summary.read_text())


@pytest.mark.parametrize(
    ("config", "allowed", "says"),
    [
        ({"budget_limit": 40}, 36, "40 per 1 s"),
        ({"budget_limit": 100, "budget_variants": {"OrgID": 40}}, 36, "40 per 1 s, OrgID"),
    ],
    ids=["plain", "tighter-OrgID-variant"],
)
def test_auto_spends_the_tightest_budget_evenly_and_leaves_the_reserve(
    start_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    config: dict[str, object],
    allowed: int,
    says: str,
) -> None:
    server = start_sandbox(budget_window=1.0, **config)
    code, stderr, summary = auto_run(server, tmp_path, 100)
    assert code == 0, stderr
    assert statuses(server) == {200: 100}
    windows = per_window(server)
    # Every window keeps the reserve (10% of 40) for other clients ...
    assert max(windows.values()) <= allowed, windows
    # ... and the full ones (not the first and last, where the run starts and ends) use
    # nearly all the rest, spread over the window rather than in a burst at its start.
    full = sorted(windows)[1:-1]
    assert full and all(windows[w] >= 0.85 * allowed for w in full), windows
    for w in full:
        halves = Counter(
            r.wall % 1.0 < 0.5 for r in server.requests if int(r.wall) == w and r.status == 200
        )
        assert halves[True] <= 0.7 * windows[w], (w, halves)
    assert summary["budget"]["text"] == says
    assert summary["average_rate"] > 20
    assert f"budget {says}, " in stderr.splitlines()[-1]  # the summary line
    assert f"--rate auto: the API's budget is {says.replace('1 s', 'window')}" in stderr


def test_two_runs_share_one_budget(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    """Each run sees the other's use in Remaining: together within the budget, each a share."""
    server = start_sandbox(budget_limit=40, budget_window=1.0, token=None, org_id=None)
    summaries: dict[str, Summary] = {}

    def one(name: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        summaries[name] = bulklink.run_job(
            pairs_csv(folder / "in.csv", 60, prefix=name),
            base_url=server.url,
            token=TOKEN,
            org_id=ORG,
            rate="auto",
            no_state=True,
            allow_http=True,
        )

    threads = [threading.Thread(target=one, args=(name,)) for name in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(summaries) == ["A", "B"]
    assert all(s.exit_code == 0 and s.counts["linked"] == 60 for s in summaries.values())
    assert statuses(server)[429] == 0
    windows = per_window(server)
    assert max(windows.values()) <= 36, windows  # together, the reserve kept
    both = [w for w in sorted(windows)[1:-1] if len(runs_in(server, w)) == 2]
    assert both, "the runs did not overlap"
    for w in both:  # each within its share: neither takes it all
        assert min(runs_in(server, w).values()) >= 5, (w, runs_in(server, w))
    assert all(str(s.budget) == "40 per 1 s" for s in summaries.values())


def runs_in(server: Sandbox, window: int) -> Counter[str]:
    """Requests per run (the first letter of the source ID) accepted in one window."""
    return Counter(
        json.loads(r.body)["sourceTicketId"][0]
        for r in server.requests
        if int(r.wall) == window and r.status == 200
    )


def test_without_headers_auto_is_rate_10(sandbox: Sandbox, tmp_path: Path) -> None:
    code, stderr, summary = auto_run(sandbox, tmp_path, 25)
    assert code == 0, stderr
    times = sorted(r.t for r in sandbox.requests)
    busiest = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    assert busiest <= 11  # R + 1, the bound --rate 10 keeps
    assert (len(times) - 1) / (times[-1] - times[0]) <= 10.05
    assert summary["budget"] is None
    assert "--rate auto: 10/s until the API's rate-limit headers arrive" in stderr
    assert " | budget " not in stderr


def test_a_429_still_pauses_everything_until_the_reset(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """Another client spent the budget: the 429's Retry-After holds every request."""
    server = start_sandbox(budget_limit=200, budget_window=1.0)
    server.config.script["T00005"] = [Reply(429, headers={"Retry-After": "1"})]
    code, stderr, summary = auto_run(server, tmp_path, 30)
    assert code == 0, stderr
    [refused] = [r for r in server.requests if r.status == 429]
    later = [r.t for r in server.requests if r.t > refused.t + 0.05]  # not in flight with it
    assert later and min(later) >= refused.t + 0.95
    assert summary["throttled"] == 1 and summary["counts"]["linked"] == 30


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_metrics_say_what_the_run_learnt(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(budget_limit=100, budget_window=1.0, budget_variants={"OrgID": 50})
    metrics = tmp_path / "m.prom"
    code, stderr, _ = auto_run(server, tmp_path, 20, "--metrics-file", str(metrics))
    assert code == 0, stderr
    text = metrics.read_text()
    assert 'bulklink_last_run_budget_limit{job="in.results",scope="OrgID"} 50.0' in text
    assert "bulklink_last_run_average_rate{" in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert (checked.returncode, checked.stderr) == (0, b"")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "IN", "--rate", "fast"), "'fast' is not a number or 'auto'"),
        (("run", "IN", "--reserve", "100"), "'--reserve': 100.0 is not in the range 0<=x<100"),
        (("sandbox", "--budget", "300"), "'300': give N/S, e.g. 300/10"),
        (("sandbox", "--budget", "300/0"), "give N/S"),
        (("sandbox", "--budget-variant", "Org=3"), "SCOPE one of IP, UserID, OrgID, Path"),
        (("sandbox", "--error-rate", "nan"), "'--error-rate': 'nan' is not a number."),
        (("sandbox", "--latency", "NaN"), "'--latency': 'NaN' is not a number."),
        (("sandbox", "--rate-limit", "nan"), "'--rate-limit': 'nan' is not a number."),
        (("sandbox", "--latency", "inf"), "inf is not in the range 0<=x<=3600"),
    ],
)
def test_bad_pacing_options_are_refused_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 1)
    result = invoke(*(src if a == "IN" else a for a in args))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.stderr


def test_dry_run_says_how_auto_will_pace(tmp_path: Path) -> None:
    result = invoke(
        "run", pairs_csv(tmp_path / "in.csv", 3), "--dry-run", "--rate", "auto", "--reserve", "20"
    )
    assert result.exit_code == 0, result.stderr
    assert "--rate auto: 10/s until the API's rate-limit headers arrive" in result.stdout
    assert "less 20% left for other clients" in result.stdout


NOW = 1_900_000_000.0  # UNIX seconds, as an answer's Reset is


@pytest.mark.parametrize(
    ("headers", "budgets"),
    [
        (
            {
                "X-RateLimit-Limit": "300",
                "X-RateLimit-Remaining": "12",
                "X-RateLimit-Reset": "1900000010",
            },
            [Budget("", 300, 12, 1900000010.0)],
        ),
        (  # a variant of its own; Reset small: seconds from now
            {
                "X-RateLimit-Limit-OrgID": "50",
                "X-RateLimit-Remaining-OrgID": "0",
                "X-RateLimit-Reset-OrgID": "4",
            },
            [Budget("OrgID", 50, 0, NOW + 4)],
        ),
        ({"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "-1", "X-RateLimit-Reset": "9"}, []),
        ({"X-RateLimit-Limit": "nan", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "9"}, []),
        ({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "1"}, []),  # no reset
        (
            {
                "X-RateLimit-Limit-Path": "10",
                "X-RateLimit-Remaining-Path": "99",
                "X-RateLimit-Reset-Path": "1",
            },
            [Budget("Path", 10, 10, NOW + 1)],
        ),
        # A reset that is not ahead (0: "now"; a server clock behind ours) paces by
        # nothing; one more than a day ahead (milliseconds, garbage) by nearly nothing.
        ({"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "0"}, []),
        (
            {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "5",
                "X-RateLimit-Reset": str(int(NOW) - 30),
            },
            [],
        ),
        (
            {
                "X-RateLimit-Limit": "10",
                "X-RateLimit-Remaining": "10",
                "X-RateLimit-Reset": "1900000010000",
            },
            [],
        ),
        (
            {
                "X-RateLimit-Limit": "10",
                "X-RateLimit-Remaining": "10",
                "X-RateLimit-Reset": "99999999999999",
            },
            [],
        ),
    ],
)
def test_rate_limit_headers_are_read_totally(
    headers: dict[str, str], budgets: list[Budget]
) -> None:
    assert list(read_budgets(headers, now=NOW)) == budgets


def test_a_budget_that_allows_nothing_for_long_is_given_up_on(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """Remaining 0 until a reset an hour away (a quota spent, or a header that lies): the
    pause is cut to the 300 s a Retry-After gets, and --give-up-after ends the run
    with the rows skipped for the next one, instead of a night idle with the lock held."""
    import time

    spent = {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time()) + 3600),
    }
    server = start_sandbox(script={"T00001": [Reply(200, headers=spent)]})
    src = pairs_csv(tmp_path / "in.csv", 5)
    started = time.monotonic()
    result = run_against(
        server, "run", src, "--rate", "auto", "--give-up-after", "2s", "--concurrency", "1", *FAST
    )
    assert time.monotonic() - started < 30, "the run waited for the reset"
    assert result.exit_code == 1, result.output
    assert "gave up: the pace allowed no request for 2s" in result.stderr
    assert len(server.requests) == 1
    rows = [r["outcome"] for r in read_report(tmp_path / "in.results.csv")]
    assert rows == ["linked"] + ["skipped"] * 4
    used = re.search(r"budget 100 per window, ([0-9.]+)/s used", result.stderr)
    assert used is not None and float(used.group(1)) < 1, result.stderr  # 1 in 2 s or more
