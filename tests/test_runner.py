"""The runner's decisions without HTTP: retries, giving up, stopping on bad credentials or
a wrong base URL, and 429 pauses and the adaptive rate on the fake clock.

The runner is driven by a scripted linker (the ``linker`` fixture): the answers are the
classifier's, so only the runner's logic is under test. The end-to-end layer over real
HTTP is test_http.py and test_classify.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from bulklink.models import Outcome, Result
from bulklink.net.client import Answer, Verdict
from bulklink.run.runner import CREDENTIALS_REJECTED, WRONG_BASE_URL, Runner
from tests.helpers import START, Clock, ScriptedLinker, run_in_fake_time, run_runner

LINKED = Answer(Verdict.LINKED, 200)
TIMEOUT = Answer(Verdict.RETRY, None, "timeout after 30s")
UNAUTHORIZED = Answer(Verdict.ABORT, 401, "HTTP 401 Unauthorized")
FORBIDDEN = Answer(Verdict.FORBIDDEN, 403, "HTTP 403 Forbidden")
MOVED = Answer(Verdict.REDIRECT, 301, "HTTP 301 Moved Permanently")


def run(linker: ScriptedLinker, n: int, **settings: Any) -> tuple[Runner, dict[int, Result]]:
    return asyncio.run(run_runner(linker, n, **settings))


def outcomes(results: dict[int, Result]) -> list[str]:
    return [results[row].outcome.value for row in sorted(results)]


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transient",
    [Answer(Verdict.RETRY, status, f"HTTP {status}") for status in (408, 500, 502, 503, 504)]
    + [TIMEOUT, Answer(Verdict.RETRY, None, "cannot connect")],
    ids=lambda answer: str(answer.http_status or answer.error),
)
def test_a_transient_answer_is_tried_again_until_linked(
    linker: ScriptedLinker, transient: Answer
) -> None:
    linker.script["T00002"] = [transient, transient]
    runner, results = run(linker, 3)
    assert outcomes(results) == ["linked"] * 3
    assert results[2].attempts == 3 and results[1].attempts == 1
    assert linker.sources() == ["T00001", "T00002", "T00002", "T00002", "T00003"]
    assert runner.stop_reason == ""


@pytest.mark.parametrize(
    "final",
    [Answer(Verdict.FAIL, status, f"HTTP {status} said no") for status in (400, 404, 409, 422)]
    + [Answer(Verdict.FAIL, 200, "HTTP 200 without status true")],
    ids=lambda answer: str(answer.http_status),
)
def test_a_final_answer_fails_the_row_at_once_and_the_run_goes_on(
    linker: ScriptedLinker, final: Answer
) -> None:
    linker.script["T00002"] = [final, LINKED]
    runner, results = run(linker, 3)
    assert outcomes(results) == ["linked", "failed", "linked"]
    assert (results[2].http_status, results[2].error) == (final.http_status, final.error)
    assert results[2].attempts == 1
    assert linker.sources() == ["T00001", "T00002", "T00003"]
    assert runner.stop_reason == ""


def test_retries_give_up_after_max_retries_with_the_last_error(linker: ScriptedLinker) -> None:
    linker.script["T00001"] = [Answer(Verdict.RETRY, 503, "HTTP 503")] * 10
    _, results = run(linker, 2, max_retries=2)
    assert outcomes(results) == ["failed", "linked"]
    assert results[1].attempts == 3
    assert results[1].error == "HTTP 503 (gave up after 3 attempts)"
    assert linker.sources().count("T00001") == 3


# -- what stops a run -------------------------------------------------------------------------


def test_a_401_skips_its_row_and_stops_the_run(linker: ScriptedLinker) -> None:
    linker.script["T00003"] = [UNAUTHORIZED]
    runner, results = run(linker, 6)
    assert runner.stop_reason == CREDENTIALS_REJECTED
    assert outcomes(results) == ["linked", "linked", "skipped", "skipped", "skipped", "skipped"]
    assert results[3].error == "credentials rejected: HTTP 401 Unauthorized"
    assert results[4].error == "not attempted: credentials rejected"
    assert linker.sources() == ["T00001", "T00002", "T00003"]


def test_a_403_before_anything_linked_stops_the_run(linker: ScriptedLinker) -> None:
    linker.script["T00001"] = [FORBIDDEN]
    runner, results = run(linker, 3)
    assert runner.stop_reason == CREDENTIALS_REJECTED
    assert outcomes(results) == ["skipped"] * 3
    assert linker.sources() == ["T00001"]


def test_after_links_a_403_fails_its_row_and_three_in_a_row_stop(linker: ScriptedLinker) -> None:
    for source in ("T00002", "T00004", "T00005", "T00006"):
        linker.script[source] = [FORBIDDEN]
    runner, results = run(linker, 8)
    # T00002 alone is about that ticket; T00004-06 in a row are about the credentials.
    assert outcomes(results) == ["linked", "failed", "linked", "failed", "failed"] + ["skipped"] * 3
    assert results[2].error == "HTTP 403 Forbidden"
    assert runner.stop_reason == CREDENTIALS_REJECTED
    assert linker.sources()[-1] == "T00006"


def test_redirects_before_anything_linked_stop_the_run_naming_the_base_url(
    linker: ScriptedLinker,
) -> None:
    for source in ("T00001", "T00002", "T00003"):
        linker.script[source] = [MOVED]
    runner, results = run(linker, 5)
    assert runner.stop_reason == WRONG_BASE_URL
    assert outcomes(results) == ["failed"] * 3 + ["skipped"] * 2
    assert linker.sources() == ["T00001", "T00002", "T00003"]


def test_redirects_after_a_link_fail_only_their_rows(linker: ScriptedLinker) -> None:
    for source in ("T00002", "T00003", "T00004"):
        linker.script[source] = [MOVED]
    runner, results = run(linker, 5)
    assert runner.stop_reason == ""
    assert outcomes(results) == ["linked", "failed", "failed", "failed", "linked"]


# -- 429s on the fake clock -------------------------------------------------------------------


def test_a_429_pauses_every_worker_until_the_servers_reset(linker: ScriptedLinker) -> None:
    """Four workers: after the 429's answer nothing starts until its wait is over, then the
    throttled row is sent again. (Workers whose answers came in the same instant as the 429
    may have started their next row before it was read: the grace.)"""
    linker.latency = 0.02
    linker.script["T00006"] = [Answer(Verdict.RETRY, 429, "HTTP 429", wait=3.0)]

    async def main(clock: Clock) -> dict[int, Result]:
        linker.clock = clock
        _, results = await run_runner(linker, 24, clock=clock, concurrency=4)
        return results

    results = run_in_fake_time(main)
    assert outcomes(results) == ["linked"] * 24
    assert results[6].attempts == 2
    (first, again) = [t for source, t in linker.calls if source == "T00006"]
    answered, grace = first + linker.latency, 0.001
    assert not [t for _, t in linker.calls if answered + grace < t < answered + 3.0]
    assert again >= answered + 3.0


def test_against_a_server_that_takes_20_a_second_the_runner_settles_under_it() -> None:
    """--rate 100 against a fixed window of 20/s: the runner's own pacer, fed by its
    answers, comes down to what the server takes, with few 429s and every row linked."""
    used: dict[int, int] = {}

    class Windowed(ScriptedLinker):
        async def link(self, source: str, linked: str) -> Answer:
            second = math.floor(self.clock())
            used[second] = used.get(second, 0) + 1
            if used[second] > 20:  # Retry-After: whole seconds to the window's end
                self.script[source] = [
                    Answer(Verdict.RETRY, 429, "HTTP 429", wait=float(second + 1) - self.clock())
                ]
            return await super().link(source, linked)

    async def main(clock: Clock) -> tuple[Runner, dict[int, Result]]:
        return await run_runner(
            Windowed(clock=clock, latency=0.05), 600, clock=clock, rate=100, concurrency=10
        )

    runner, results = run_in_fake_time(main)
    assert all(r.outcome is Outcome.LINKED for r in results.values())
    assert len(results) == 600
    assert runner.pacer.throttled <= 0.05 * runner.pacer.requests
    assert runner.pacer.current < 25
    assert max(used.values()) <= 101
    assert sum(used.values()) == runner.pacer.requests
    assert max(used) - START >= 600 / 21  # never faster than the server takes
