"""When the next request may start: the rate limit, 429 pauses and the adaptive rate.

The limiter is an ``aiolimiter.AsyncLimiter`` with capacity ``1 + slack`` and refill R/s,
where ``slack < 1`` (see :func:`bucket_capacity`) is chosen so that no window of one
second can hold more than R+1 starts (a bucket of capacity ``b`` allows at most
``b + R*T`` starts in any ``T`` seconds) while timer wake-ups that run late are absorbed
instead of lost. A bucket of capacity R would let 2R through in the first second;
capacity 1 loses every late wake-up.

Only aiolimiter's public API is used: a rate change replaces the limiter, and the new one
is filled through ``acquire`` at its first use (see :meth:`Pacer.wait`).

With ``--rate auto`` the rate comes from the API's rate-limit headers instead
(:class:`BudgetPace`): each budget's remaining requests, less the reserve and less the
requests in flight, spread evenly until its reset; the tightest budget governs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from bulklink.models import BudgetSeen
from bulklink.net.client import MAX_SERVER_WAIT, Budget
from bulklink.options import TrafficOptions

MIN_RATE = 0.5  # requests/s the adaptive rate never goes below
DECREASE = 0.9  # multiplicative decrease on a 429, applied to what the server accepted
INCREASE_EVERY = 1.0  # seconds between additive increases while no 429 arrives
SLOTS_PER_SECOND = 4
#: Seconds past a budget's reset before sending again: the server's window must have
#: turned when the first request of the next one arrives.
RESET_MARGIN = 0.02
#: Seconds a reset must move on by to start another window: resets are whole seconds, so
#: a smaller step is the same window spelt with a fraction, never a window that short.
MIN_WINDOW = 1.0
#: A budget's pace is applied when it differs from the current rate by more than this
#: fraction: each change replaces the limiter, and tiny ones would only cost that.
RETUNE = 0.02


@dataclass(slots=True)
class _Window:
    """What the freshest answers say of one budget's current window."""

    limit: int
    remaining: int
    reset: float  # UNIX seconds
    length: float | None = None  # seconds, learnt when the reset moves on
    #: Seconds the window lasts at least, before :attr:`length` is known: a request sent
    #: at ``s`` was counted in the window ending at ``reset``, so it began by ``s``.
    at_least: float = 0.0

    @property
    def span(self) -> float | None:
        """The window's length as far as known: learnt, else its lower bound."""
        return self.length if self.length is not None else (self.at_least or None)


class BudgetPace:
    """``--rate auto``: the pace the API's rate-limit budgets allow, the tightest governing.

    Answers arrive out of order, so within one window (one reset time) the lowest
    ``remaining`` is the freshest; a later reset starts the next window from its own
    ``remaining``. ``reserve`` percent of every limit is left for other clients, whose use
    shows in ``remaining`` (so two runs share a budget without talking to each other).
    """

    def __init__(self, reserve: float) -> None:
        self.reserve = reserve / 100.0
        self.windows: dict[str, _Window] = {}
        self.governing = ""  # the scope of the tightest budget at the last reckoning

    def learn(self, budgets: tuple[Budget, ...], sent: float | None = None) -> None:
        """What an answer's budgets say; ``sent`` is when its request left (UNIX seconds)."""
        for budget in budgets:
            window = self.windows.get(budget.scope)
            if window is None:
                window = self.windows[budget.scope] = _Window(
                    budget.limit, budget.remaining, budget.reset
                )
                if sent is not None:
                    window.at_least = max(0.0, budget.reset - sent)
            elif budget.reset >= window.reset + MIN_WINDOW:  # the next window
                step = budget.reset - window.reset
                window.length = step if window.length is None else min(window.length, step)
                window.limit, window.remaining, window.reset = (
                    budget.limit,
                    budget.remaining,
                    budget.reset,
                )
            elif budget.reset > window.reset - MIN_WINDOW:  # this one (a reset in ms jitters)
                window.remaining = min(window.remaining, budget.remaining)
                window.limit = budget.limit

    def pace(self, wall: float, in_flight: int) -> tuple[float, float]:
        """(rate, pause): requests per second the tightest budget allows now, and, when it
        allows none until its reset, the seconds to wait for that (else 0). The rate is
        above 0 unless there is a pause: a rate of 0 would mean no limit at all."""
        best, pause = math.inf, 0.0
        for scope, window in self.windows.items():
            left = window.reset - wall
            keep = self.reserve * window.limit
            if left <= 0:  # the window has turned, and no answer has said how it starts
                span = window.span
                if span is None:
                    continue
                # A whole window less what is in flight; with nothing to spare (more in
                # flight than the window holds), a moment for their answers to tell more.
                spare, left = window.limit - keep - in_flight, span
                rate, wait = (spare / left, 0.0) if spare >= 1 else (0.0, RESET_MARGIN)
            else:
                spare = window.remaining - keep - in_flight
                # A reset far off (a wrong clock, a header that lies) is waited for as long
                # as a Retry-After is at most: the run still ends.
                later = min(left, MAX_SERVER_WAIT) + RESET_MARGIN
                rate, wait = (spare / left, 0.0) if spare >= 1 else (0.0, later)
            if rate < best or (rate == best and wait > pause):
                best, pause, self.governing = rate, wait, scope
        return best, pause

    def seen(self) -> BudgetSeen | None:
        """The governing budget (``300 per 10 s, OrgID``), None before any answer named one."""
        window = self.windows.get(self.governing)
        if window is None:
            return None
        return BudgetSeen(window.limit, window.length, self.governing)

    def even_rate(self) -> float | None:
        """The governing budget's limit less the reserve, per second, once its window's
        length is known: the pace a window starts at before its first answer."""
        window = self.windows.get(self.governing)
        if window is None or window.span is None:
            return None
        return window.limit * (1 - self.reserve) / window.span


def auto_rate_plan(options: TrafficOptions) -> str:
    """What ``--rate auto`` will do, said before it has learnt anything."""
    return (
        f"--rate auto: {options.ceiling:g}/s until the API's rate-limit headers arrive, then "
        f"the tightest budget they name, less {options.reserve:g}% left for other clients"
    )


def bucket_capacity(rate: float) -> float:
    """Capacity keeping every 1-second window at or under ``floor(R) + 1`` starts.

    The fraction above 1 absorbs up to ~2 ms of timer lateness per start (which matters
    only at high rates: at 500/s a start is due every 2 ms) while leaving most of a
    period as margin for network jitter between our start and the server's clock (a new
    connection can take tens of ms longer than a warm one).
    """
    return 1.0 + min(0.5, 0.002 * rate) * (math.floor(rate) + 1.0 - rate)


class Pacer:
    """Gate every request start (retries included) goes through.

    ``rate`` is the ceiling asked for (0 = none). After a 429 the pacer pauses all
    dispatch until the server's reset time and lowers its own rate to a little under what
    the server accepted in the last second; it then creeps back up (AIMD) while no 429
    comes, never above the ceiling.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        budget: BudgetPace | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ceiling = rate
        #: With ``--rate auto``: the API's budgets, which govern once an answer names one;
        #: ``rate`` is the start (and the rate against a server that sends none).
        self.budget = budget
        self.wall = wall
        self.note: Callable[[str], None] | None = None  # told once what the budget is
        self._first_start: float | None = None
        self._last_answer = 0.0
        self.clock = clock
        self.current: float = rate  # 0 = unlimited
        self._limiter: AsyncLimiter | None = None
        # When the current limiter replaced another (a rate change): the new bucket counts
        # as full from then on, so the change lets no burst through. None: nothing to fill.
        self._full_since: float | None = None
        self._paused_until = 0.0
        self._last_decrease = -math.inf
        self._last_increase = 0.0
        # Answers per quarter second over the last second, newest first: what the server
        # accepted (not 429) and everything it answered.
        self._capacity = rate if rate > 0 else math.inf
        self._slot = 0
        self._accepted = [0] * SLOTS_PER_SECOND
        self._answered = [0] * SLOTS_PER_SECOND
        self._requests = 0
        self._throttled = 0
        if rate > 0:
            self._limiter = _limiter(rate)

    @property
    def requests(self) -> int:
        """Answers fed back so far: the run's requests, retries included (for metrics).

        Every attempt that got an answer counts, whatever it was (a connection error too),
        and one abandoned in flight when the run stopped (:meth:`on_abandoned`): it was sent.
        """
        return self._requests

    def on_abandoned(self) -> None:
        """A request sent and given up on at a stop: the API may have it all the same."""
        self._requests += 1

    @property
    def throttled(self) -> int:
        """How many of those answers were 429s (for metrics and the summary)."""
        return self._throttled

    @property
    def average_rate(self) -> float:
        """Requests per second from the first start until now (the end of the sending,
        when the summary reads it): a run held idle by its pace counts its idle time."""
        end = max(self._last_answer, self.clock())
        if self._first_start is None or end <= self._first_start:
            return 0.0
        return self._requests / (end - self._first_start)

    @property
    def idle(self) -> bool:
        """True when a request may start now: no limit, no pause (:meth:`wait` returns at
        once)."""
        return self._limiter is None and self._paused_until <= self.clock()

    async def wait(self) -> None:
        """Block until this request may start."""
        while True:
            delay = self._paused_until - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if self._first_start is None:
                self._first_start = self.clock()
            limiter = self._limiter
            if limiter is None:
                return
            if self._full_since is not None:
                # A replacement bucket starts empty and would let a burst through: fill it
                # to where a bucket full at the rate change has leaked down to by now. The
                # bucket is still empty, so this acquire returns without suspending.
                due = limiter.max_rate - (self.clock() - self._full_since) * self.current
                self._full_since = None
                if due > 0:
                    await limiter.acquire(min(due, limiter.max_rate))
            await limiter.acquire()
            # A token from a limiter replaced meanwhile (the rate changed) does not count.
            if limiter is self._limiter and self._paused_until <= self.clock():
                return

    def pause(self, seconds: float) -> None:
        """Hold every new request for ``seconds`` (the server's Retry-After or reset)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def on_answer(
        self,
        sent_at: float,
        throttled: bool,
        now: float | None = None,
        budgets: tuple[Budget, ...] = (),
        in_flight: int = 0,
    ) -> None:
        """Feed every answer back: 429s lower the rate, quiet seconds raise it again; with
        ``--rate auto``, the answer's budgets set it instead once one is known.

        ``now`` is the clock's reading, when the caller has just taken it; ``in_flight``
        the requests still unanswered, which the budgets count as spent.
        """
        if now is None:
            now = self.clock()
        self._requests += 1
        self._last_answer = now
        if self.budget is not None and (budgets or self.budget.windows):
            self._throttled += throttled
            self._follow(self.budget, budgets, in_flight, self.wall() - (now - sent_at))
            return
        slot = int(now * SLOTS_PER_SECOND)
        if slot != self._slot:
            self._roll(slot)
        self._answered[0] += 1
        if throttled:
            self._throttled += 1
            if sent_at >= self._last_decrease:
                self._decrease(now)
            return
        self._accepted[0] += 1
        if (
            self.current != self.ceiling
            and now - self._last_increase >= INCREASE_EVERY
            and now - self._last_decrease >= INCREASE_EVERY
        ):
            self._last_increase = now
            if self.current < 0.5 * self._capacity:
                # Far below what the server has been seen to accept (say, after a burst of
                # 429s with no accepted answers to learn from): double, like TCP's slow start.
                target = self.current * 2
            else:  # near it: creep, by a step in proportion to what the server takes
                known = self._capacity if math.isfinite(self._capacity) else self.current
                target = self.current + max(0.5, 0.02 * self.current, 0.05 * known)
            if self.ceiling > 0:
                target = min(target, self.ceiling)
            self._set_rate(target if self.ceiling > 0 or target < 10_000 else 0.0)

    def _follow(
        self, budget: BudgetPace, budgets: tuple[Budget, ...], in_flight: int, sent: float
    ) -> None:
        """The budgets' pace, or a pause until the tightest one's reset when it has none
        to spare (then the even pace of a whole window, till the next answer says more);
        ``sent`` is when the answer's request left (UNIX seconds)."""
        first = not budget.windows
        budget.learn(budgets, sent)
        rate, pause = budget.pace(self.wall(), in_flight)
        if first and self.note is not None:
            self.note(f"--rate auto: the API's budget is {budget.seen()}: pacing by it")
        if pause > 0:
            self.pause(pause)
            rate = budget.even_rate() or self.current
        elif not math.isfinite(rate):
            return
        if abs(rate - self.current) > RETUNE * self.current:
            self._set_rate(rate)

    def _roll(self, slot: int) -> None:
        """Counts per quarter second, the last second's worth kept: cheap on every answer."""
        shift = min(slot - self._slot, SLOTS_PER_SECOND)
        for counts in (self._accepted, self._answered):
            counts[shift:] = counts[: SLOTS_PER_SECOND - shift]
            counts[:shift] = [0] * shift
        self._slot = slot

    def _decrease(self, now: float) -> None:
        """To a little under what the server accepted in the last second.

        With too little accepted to go by, the rate is halved (or, with no limit yet, set
        to half of what was sent). Only one decrease per round trip: the 429s of requests
        sent before it say nothing new.
        """
        accepted = float(sum(self._accepted))
        if accepted >= 2:  # the server's own answer to "how many per second?"
            self._capacity = accepted
            target = accepted * DECREASE
            if self.current > 0:
                target = min(target, self.current * DECREASE)
        elif self.current > 0:  # nothing to learn from: halve, as AIMD does
            target = self.current / 2
        else:  # no limit yet and nothing accepted: half of what was sent
            target = sum(self._answered) / 2
        self._last_decrease = now
        self._last_increase = now
        self._set_rate(max(MIN_RATE, target))

    def _set_rate(self, rate: float) -> None:
        if rate == self.current:
            return
        self.current = rate
        # A new limiter, not a new rate on the old one: aiolimiter has no public way to
        # change a limiter's rate or capacity. Tasks waiting on the old one retry on this.
        self._limiter = _limiter(rate) if rate > 0 else None
        self._full_since = self.clock() if rate > 0 else None


def _limiter(rate: float) -> AsyncLimiter:
    """An empty bucket of capacity :func:`bucket_capacity` that leaks ``rate`` per second."""
    capacity = bucket_capacity(rate)
    return AsyncLimiter(capacity, capacity / rate)
