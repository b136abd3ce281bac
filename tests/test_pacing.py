"""Pacing in fake time: the R+1 bound, throughput, 429 pauses and the adaptive rate.

Every test runs on an event loop whose clock is fake (``run_in_fake_time``, helpers.py):
ten seconds of traffic take milliseconds.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_right
from collections.abc import Callable

import pytest

from bulklink.net.client import MAX_SERVER_WAIT, Budget
from bulklink.run.pacing import MIN_RATE, RESET_MARGIN, BudgetPace, Pacer, bucket_capacity
from tests.helpers import START, Clock, run_in_fake_time


class Traffic:
    """Workers that start requests through a pacer, as the runner's do, and what they did.

    Each request is answered ``latency`` seconds after it starts; ``server`` says whether
    the answer is a 429 and, if so, how long to pause (the server's reset), as the runner
    passes it on.
    """

    def __init__(
        self,
        pacer: Pacer,
        clock: Clock,
        *,
        workers: int,
        latency: float = 0.05,
        server: Callable[[float], float | None] | None = None,
    ) -> None:
        self.pacer, self.clock = pacer, clock
        self.workers, self.latency, self.server = workers, latency, server
        self.starts: list[float] = []
        self.throttled: list[float] = []
        self.answered = 0
        # (index into starts at the change, time, new rate) for every rate change
        self.changes: list[tuple[int, float, float]] = []

    async def run(self, seconds: float) -> None:
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self) -> None:
        pacer, clock = self.pacer, self.clock
        while True:
            if not pacer.idle:
                await pacer.wait()
            sent = clock.now
            self.starts.append(sent)
            await asyncio.sleep(self.latency)
            pause = self.server(sent) if self.server else None
            before = pacer.current
            pacer.on_answer(sent, pause is not None)
            self.answered += 1
            if pause is not None:
                self.throttled.append(sent)
                pacer.pause(pause)
            if pacer.current != before:
                self.changes.append((len(self.starts), clock.now, pacer.current))

    def between(self, start: float, end: float) -> int:
        """Starts at ``start`` or later and before ``end``."""
        return bisect_right(self.starts, end - 1e-9) - bisect_right(self.starts, start - 1e-9)


def max_in_any_second(starts: list[float]) -> int:
    """The most starts in any closed 1-second window."""
    return max(bisect_right(starts, t + 1.0) - i for i, t in enumerate(starts))


# -- the bound and throughput at a fixed rate ------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "late"),
    [
        *((rate, 0.0) for rate in [1, 5, 20, 100, 500]),
        # At 500/s a start is due every 2 ms: the bucket's slack absorbs timers firing late.
        pytest.param(500, 0.0002, id="500-timers-late-0.2ms"),
    ],
)
def test_no_second_holds_more_than_r_plus_1_and_throughput_is_kept(rate: int, late: float) -> None:
    async def main(clock: Clock) -> Traffic:
        pacer = Pacer(rate, clock=clock)
        # a pool sized as --concurrency auto sizes it for 20 ms answers
        traffic = Traffic(pacer, clock, workers=math.ceil(rate * 0.02 * 1.5) + 2, latency=0.02)
        await traffic.run(10.0)
        return traffic

    traffic = run_in_fake_time(main, late=late)
    assert max_in_any_second(traffic.starts) <= rate + 1
    assert traffic.between(START, START + 10.0) >= 0.97 * rate * 10
    assert traffic.pacer.current == rate  # no 429: the rate never moved


def test_bucket_capacity_keeps_r_plus_1_for_fractional_rates() -> None:
    """Capacity b allows b + R starts in a second: under floor(R) + 2 for every R."""
    for rate in [0.5, 1.0, 1.5, 2.9, 10.99, 19.5, 99.9, 250.5, 499.99, 500.0, 2000.0]:
        capacity = bucket_capacity(rate)
        assert 1.0 <= capacity <= 1.5
        assert capacity + rate < math.floor(rate) + 2


def test_fractional_rate_bound_and_throughput() -> None:
    async def main(clock: Clock) -> Traffic:
        traffic = Traffic(Pacer(2.5, clock=clock), clock, workers=3)
        await traffic.run(10.0)
        return traffic

    traffic = run_in_fake_time(main)
    assert max_in_any_second(traffic.starts) <= 3
    assert traffic.between(START, START + 10.0) >= 0.97 * 25


# -- a 429 pauses all dispatch ----------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, 10])
def test_pause_holds_every_start_until_the_reset_then_dispatch_resumes(rate: float) -> None:
    async def main(clock: Clock) -> tuple[Traffic, int, float, list[bool]]:
        pacer = Pacer(rate, clock=clock)
        traffic = Traffic(pacer, clock, workers=4)
        running = asyncio.create_task(traffic.run(8.0))
        await asyncio.sleep(2.0)
        idle = [pacer.idle]
        pacer.pause(3.0)
        paused_at, reset = len(traffic.starts), clock.now + 3.0
        pacer.pause(1.0)  # a shorter pause never cuts a longer one short
        idle.append(pacer.idle)
        await asyncio.sleep(3.0)
        idle.append(pacer.idle)
        await running
        return traffic, paused_at, reset, idle

    traffic, paused_at, reset, idle = run_in_fake_time(main)
    before, after = traffic.starts[:paused_at], traffic.starts[paused_at:]
    assert before and after
    assert min(after) >= reset  # nothing started between the pause and the reset
    # ...and then it resumes at once: the first start at the reset (plus one period when
    # limited: the bucket did not fill while paused) and the rate after it as before.
    assert min(after) <= reset + (1 / rate if rate else 0.0) + 1e-6
    assert traffic.between(reset, reset + 3.0) >= 0.97 * 3 * (rate or 4 / 0.05)
    if rate == 0:
        assert idle == [True, False, True]  # the --rate 0 fast path is off only while paused


# -- the adaptive rate, answer by answer ------------------------------------------------------
# Times are multiples of 1/64 s so that every difference is exact in binary.


def answers(pacer: Pacer, clock: Clock, times: list[float], *, throttled: bool = False) -> None:
    """Feed answers arriving at ``times``, each sent 1/16 s earlier."""
    for t in times:
        clock.now = t
        pacer.on_answer(t - 1 / 16, throttled)


def throttled_after(rate: float, accepted: list[float]) -> tuple[Pacer, Clock]:
    """A pacer at ``rate`` that had answers accepted at ``accepted``, then a 429 at 0.75 s."""
    clock = Clock()
    pacer = Pacer(rate, clock=clock)
    answers(pacer, clock, accepted)
    answers(pacer, clock, [START + 0.75], throttled=True)
    return pacer, clock


def rates_after(pacer: Pacer, clock: Clock, times: list[float]) -> list[float]:
    """The pacer's rate after each of accepted answers arriving at ``times``."""
    seen = []
    for t in times:
        answers(pacer, clock, [t])
        seen.append(pacer.current)
    return seen


def spread(n: int, start: float, step: float = 1 / 32) -> list[float]:
    return [start + i * step for i in range(n)]


def test_429_drops_the_rate_to_nine_tenths_of_what_the_server_accepted_in_the_last_second() -> None:
    clock = Clock()
    pacer = Pacer(100, clock=clock)
    answers(pacer, clock, spread(30, START - 2))  # more than a second ago: forgotten
    answers(pacer, clock, spread(20, START))  # accepted within the last second
    answers(pacer, clock, [START + 0.75], throttled=True)
    assert pacer.current == 18.0  # 0.9 x 20 accepted
    assert (pacer.requests, pacer.throttled) == (51, 1)


def test_429_never_raises_the_rate_even_when_more_was_accepted() -> None:
    clock = Clock()
    pacer = Pacer(10, clock=clock)
    answers(pacer, clock, spread(15, START))
    answers(pacer, clock, [START + 0.5], throttled=True)
    assert pacer.current == 9.0  # 0.9 x the current rate, not 0.9 x 15


def test_429_with_too_little_accepted_halves_once_per_round_trip_down_to_the_floor() -> None:
    clock = Clock()
    pacer = Pacer(10, clock=clock)
    answers(pacer, clock, [START])  # one accepted answer: too little to go by
    answers(pacer, clock, [START + 0.25], throttled=True)
    assert pacer.current == 5.0
    # 429s for requests sent before that decrease say nothing new
    clock.now = START + 0.5
    pacer.on_answer(START + 0.125, True)
    pacer.on_answer(START + 0.25 - 1 / 64, True)
    assert pacer.current == 5.0
    seen = []
    for i in range(1, 6):  # each one sent after the previous decrease
        t = START + 0.25 + 0.5 * i
        clock.now = t
        pacer.on_answer(t - 1 / 8, True)
        seen.append(pacer.current)
    assert seen == [2.5, 1.25, 0.625, MIN_RATE, MIN_RATE]
    assert (pacer.requests, pacer.throttled) == (9, 8)


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [(0, MIN_RATE), (1, 1.0), (5, 4.5)],
    ids=["nothing-accepted", "half-of-what-was-answered", "nine-tenths-of-accepted"],
)
def test_429_with_no_limit_sets_one(accepted: int, expected: float) -> None:
    clock = Clock()
    pacer = Pacer(0, clock=clock)
    assert pacer.idle
    answers(pacer, clock, spread(accepted, START))
    answers(pacer, clock, [START + 0.5], throttled=True)
    assert pacer.current == expected
    assert not pacer.idle


def test_recovery_creeps_by_a_twentieth_of_what_the_server_took_once_a_second() -> None:
    pacer, clock = throttled_after(100, spread(20, START))
    assert pacer.current == 18.0
    # an accepted answer every 1/4 s for 4 s
    seen = rates_after(pacer, clock, spread(16, START + 1, 0.25))
    # nothing within a second of the decrease, then +1 (0.05 x 20 accepted) per second
    assert seen == [18.0] * 3 + [19.0] * 4 + [20.0] * 4 + [21.0] * 4 + [22.0]


def test_recovery_step_grows_with_what_the_server_takes() -> None:
    pacer, clock = throttled_after(1000, spread(400, START, 1 / 1024))
    assert pacer.current == 360.0
    answers(pacer, clock, [START + 2, START + 3, START + 4])
    assert pacer.current == 420.0  # +20 a second: 0.05 x 400


def test_recovery_doubles_while_far_below_what_the_server_took_then_creeps() -> None:
    pacer, clock = throttled_after(100, spread(40, START, 1 / 64))
    assert pacer.current == 36.0
    for t in [START + 2.5, START + 4, START + 5.5]:  # a storm: 429s, nothing accepted
        answers(pacer, clock, [t], throttled=True)
    assert pacer.current == 4.5
    seen = rates_after(pacer, clock, spread(6, START + 6.5, 1.0))
    # doubling while under half of the 40/s the server took, then +2 (0.05 x 40) a second
    assert seen == [9.0, 18.0, 36.0, 38.0, 40.0, 42.0]


def test_recovery_never_goes_above_the_ceiling() -> None:
    pacer, clock = throttled_after(20, spread(20, START))
    seen = [pacer.current, *rates_after(pacer, clock, spread(5, START + 2, 1.0))]
    assert seen == [18.0, 19.0, 20.0, 20.0, 20.0, 20.0]


def test_recovery_with_no_ceiling_doubles_back_to_unlimited() -> None:
    clock = Clock()
    pacer = Pacer(0, clock=clock)
    answers(pacer, clock, [START], throttled=True)
    seen = rates_after(pacer, clock, spread(15, START + 1, 1.0))
    assert seen == [MIN_RATE * 2**i for i in range(1, 15)] + [0.0]
    assert pacer.idle  # back on the fast path


# -- rate changes in traffic -------------------------------------------------------------------


def test_a_rate_change_lets_no_burst_through() -> None:
    """The new bucket counts as full from the change: its rate holds from that moment."""

    async def main(clock: Clock) -> Traffic:
        pacer = Pacer(20, clock=clock)
        traffic = Traffic(pacer, clock, workers=4)
        running = asyncio.create_task(traffic.run(6.0))
        await asyncio.sleep(1.5)
        pacer.on_answer(clock.now, True)  # a 429 with no pause: down to 0.9 x 20
        traffic.changes.append((len(traffic.starts), clock.now, pacer.current))
        await running  # then it creeps back up, +1 a second
        return traffic

    traffic = run_in_fake_time(main)
    rates = [rate for _, _, rate in traffic.changes]
    assert len(rates) >= 3 and rates[0] < 20 and rates == sorted(rates)  # down, then up
    for index, at, rate in traffic.changes:
        after = [t for t in traffic.starts[index:] if t <= at + 0.9]
        assert len(after) <= math.floor(0.9 * rate + 1e-9), (at, rate)


def test_against_a_server_that_takes_20_a_second_the_run_settles_just_under_it() -> None:
    """--rate 100 against a fixed window of 20/s (the sandbox's model): few 429s.

    It settles into a cycle of about 10 s: a 429 when the rate has crept above 20, a
    1-second pause, down to 0.9 x the ~16 counted in the last 0.75-1 s, creeping back at
    +0.8/s. That holds about 16/s, with one 429 per cycle.
    """
    used: dict[int, int] = {}

    def server(sent: float) -> float | None:
        second = math.floor(sent)
        used[second] = used.get(second, 0) + 1
        # Retry-After: whole seconds to the window's end, at least 1
        return None if used[second] <= 20 else float(max(1, math.ceil(second + 1 - sent)))

    async def main(clock: Clock) -> Traffic:
        traffic = Traffic(Pacer(100, clock=clock), clock, workers=10, server=server)
        await traffic.run(30.0)
        return traffic

    traffic = run_in_fake_time(main)
    last_20s = traffic.between(START + 10, START + 30)
    throttled = sum(1 for t in traffic.throttled if t >= START + 10)
    assert max_in_any_second(traffic.starts) <= 101
    assert last_20s >= 0.75 * 20 * 20  # 16/s: see above
    assert throttled <= 0.02 * last_20s
    assert traffic.pacer.requests == traffic.answered
    assert traffic.pacer.throttled == len(traffic.throttled)


@pytest.mark.parametrize(
    ("budgets", "in_flight", "rate", "pause", "governing"),
    [
        # 100 left of 300 for 10 s, 30 kept back: 7/s; 10 in flight count as spent: 6/s.
        ([Budget("", 300, 100, 1010.0)], 0, 7.0, 0.0, ""),
        ([Budget("", 300, 100, 1010.0)], 10, 6.0, 0.0, ""),
        # The tightest governs, whichever header it came in.
        ([Budget("", 300, 100, 1010.0), Budget("OrgID", 50, 25, 1005.0)], 0, 4.0, 0.0, "OrgID"),
        # Only the reserve left: nothing until the reset (and a margin past it).
        ([Budget("", 300, 30, 1004.0)], 0, 0.0, 4.0 + RESET_MARGIN, ""),
    ],
)
def test_the_budget_pace_spreads_what_remains_less_reserve_and_in_flight(
    budgets: list[Budget], in_flight: int, rate: float, pause: float, governing: str
) -> None:
    pace = BudgetPace(10)
    pace.learn(tuple(budgets))
    assert pace.pace(1000.0, in_flight) == pytest.approx((rate, pause))
    assert pace.governing == governing


def test_the_budget_pace_takes_the_freshest_remaining_and_learns_the_window() -> None:
    pace = BudgetPace(0)
    pace.learn((Budget("", 100, 40, 1010.0), Budget("", 100, 60, 1010.0)))  # out of order
    assert pace.pace(1000.0, 0) == pytest.approx((4.0, 0.0))
    assert pace.even_rate() is None and str(pace.seen()) == "100 per window"
    pace.learn((Budget("", 100, 99, 1020.0), Budget("", 100, 5, 1010.0)))  # a late old one
    assert pace.pace(1010.5, 0) == pytest.approx((99 / 9.5, 0.0))
    assert pace.even_rate() == 10.0 and str(pace.seen()) == "100 per 10 s"
    # Past the reset with no answer from the new window yet: the even pace of a window.
    assert pace.pace(1021.0, 0) == (10.0, 0.0)


def test_a_turned_window_with_more_in_flight_than_it_holds_pauses_never_unlimits() -> None:
    """A server clock behind ours puts every reset in the past: with more in flight than a
    window holds, the pace is a short pause, not a rate of 0 (which is no limit)."""
    pace = BudgetPace(10)
    pace.learn((Budget("", 5, 5, 1000.0),))
    pace.learn((Budget("", 5, 5, 1001.0),))  # the window is 1 s long
    assert pace.pace(1031.0, 2) == pytest.approx((2.5, 0.0))  # 5 less 0.5 kept, less 2
    assert pace.pace(1031.0, 5) == (0.0, RESET_MARGIN)


def test_a_reset_far_off_is_waited_for_at_most_as_long_as_a_retry_after() -> None:
    pace = BudgetPace(10)
    pace.learn((Budget("", 300, 0, 1000.0 + 365 * 86400),))
    assert pace.pace(1000.0, 0) == (0.0, MAX_SERVER_WAIT + RESET_MARGIN)


def test_a_reset_that_moves_by_a_fraction_of_a_second_is_the_same_window() -> None:
    """Resets are whole seconds; one spelt with a jittering fraction starts no window of
    a few milliseconds (whose pace would be thousands a second)."""
    pace = BudgetPace(0)
    pace.learn((Budget("", 20, 10, 1010.0),))
    pace.learn((Budget("", 20, 8, 1010.4),))
    assert pace.even_rate() is None  # no window length learnt
    assert pace.pace(1000.0, 0) == pytest.approx((8 / 10, 0.0))  # the fresher remaining


def test_before_a_window_is_seen_to_turn_its_length_is_at_least_what_the_first_answer_says() -> (
    None
):
    """A request sent at 1000 was counted in the window ending at 1002: the window lasts
    2 s at least, so once it has turned (answers lag under latency) the pace is that of a
    2 s window, not the 10/s of no headers (a sandbox at 1.5 s latency answered 19 of 79
    requests 429)."""
    pace = BudgetPace(10)
    pace.learn((Budget("", 10, 9, 1002.0),), sent=1000.0)
    assert pace.even_rate() == pytest.approx(4.5)
    assert pace.pace(1002.5, 0) == pytest.approx((4.5, 0.0))  # turned: a whole window of 2 s
