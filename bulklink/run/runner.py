"""The run itself: a bounded pool of workers, pacing, retries with backoff, and stopping.

Workers pull pairs from a shared feed; each makes its requests one at a time, so the
number of workers is the number of requests in flight. With ``concurrency=None`` (auto)
the pool starts at 16 and grows, up to 256, to what Little's law asks for: rate x
latency. Results are handed to ``on_result`` as they finish; the runner keeps none.

The runner needs of the HTTP edge only :class:`Linker` (``link(source, linked) ->
Answer``), so a test can drive it with any object that answers. It keeps, for whoever
bounds the run, the time of the last answer that settled a row and what the API
answered instead since then (:attr:`Runner.refusals`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bulklink.models import Outcome, Pair, Result
from bulklink.net.client import Answer, Verdict
from bulklink.options import TrafficOptions
from bulklink.run.pacing import BudgetPace, Pacer
from bulklink.text import utc_stamp

CREDENTIALS_REJECTED = "credentials rejected"
WRONG_BASE_URL = "the API answers with redirects: check --base-url"
#: Redirects answered before anything was linked that stop the run (the base URL is wrong).
REDIRECT_STOP = 3
#: 403s in a row (no success between) that stop the run even after successes.
FORBIDDEN_STREAK = 3
AUTO_START = 16
AUTO_CAP = 256
INTERNAL_ERROR = "internal error"
#: Seconds a request in flight still gets once the run is stopped (or its timeout, if
#: shorter); then it is abandoned and its row ``skipped``. A server that never answers
#: cannot hold a stopped run (a library setting: tests shorten it).
STOP_GRACE = 5.0


class Linker(Protocol):
    """What the runner needs of the HTTP edge: one attempt, classified; never raises for
    anything the network or the server can do (:class:`~bulklink.net.client.Client`)."""

    async def link(self, source: str, linked: str) -> Answer: ...


class Runner:
    """Links every pair from a feed of batches; one instance per run."""

    def __init__(
        self,
        client: Linker,
        settings: TrafficOptions,
        on_result: Callable[[Result], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_result = on_result
        self.clock = clock
        budget = BudgetPace(settings.reserve) if settings.auto_rate else None
        self.pacer = Pacer(settings.ceiling, clock=clock, budget=budget)
        self.stop_reason = ""
        #: Why no row can succeed when an answer said so (Verdict.HALT): a TLS failure, a
        #: proxy's 407. A person must act; the run ends as on rejected credentials.
        self.halted = ""
        self.in_flight = 0
        self.latency = 0.0  # moving average of answer times, for the auto pool size
        self.linked = 0  # rows linked this run: proof that the credentials work
        self._forbidden_streak = 0
        self._redirects = 0
        #: When an answer last settled a row (linked, or failed for a reason of its own);
        #: with :attr:`refusals`, what a give-up rule needs.
        self.last_progress = clock()
        #: Retryable answers since then, by status (``"429"``) or kind (``"timeout ..."``).
        self.refusals: Counter[str] = Counter()
        self._queue: deque[Pair] = deque()
        self._feed: AsyncIterator[list[Pair]] | None = None
        self._feed_done = False
        self._refill = asyncio.Lock()
        self._workers: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()
        self._asking: set[asyncio.Task[None]] = set()  # workers waiting for an answer
        self._abandon: asyncio.TimerHandle | None = None
        self.abandoned = False

    @property
    def held(self) -> int:
        """Workers waiting for their turn (a backoff, the pacer): rows that would go."""
        return len(self._waiting)

    def stop(self, reason: str) -> None:
        """Dispatch nothing new; requests in flight finish, waiting ones give up."""
        if self.stop_reason:
            return
        self.stop_reason = reason
        for task in self._waiting:
            task.cancel()
        with contextlib.suppress(RuntimeError):  # no loop: nothing is in flight either
            grace = min(STOP_GRACE, self.settings.timeout)
            self._abandon = asyncio.get_running_loop().call_later(grace, self._give_up_waiting)

    def _give_up_waiting(self) -> None:
        """The grace after a stop is over: requests still unanswered are abandoned."""
        self.abandoned = True
        for task in self._asking:
            task.cancel()

    async def run(self, feed: AsyncIterator[list[Pair]]) -> None:
        """Link everything the feed yields, until it ends or :meth:`stop`.

        Anything unexpected raised in a worker (a bug) stops the others as :meth:`stop`
        does, and is raised here once the requests in flight have finished.
        """
        self._feed = feed
        self.last_progress = self.clock()
        size = self.settings.workers or AUTO_START
        for _ in range(size):
            self._spawn()
        sizer = None
        if self.settings.workers is None:
            sizer = asyncio.create_task(self._autosize())
        try:
            while self._workers:
                done, _ = await asyncio.wait(
                    set(self._workers), return_when=asyncio.FIRST_EXCEPTION
                )
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                if failed:  # a bug, not a network fault: stop everyone and let it surface
                    self.stop(INTERNAL_ERROR)
                    await asyncio.gather(*self._workers, return_exceptions=True)
                    self._queue.clear()  # undone: the caller accounts for them
                    raise failed[0].exception()  # type: ignore[misc]
        finally:
            if sizer is not None:
                sizer.cancel()
            if self._abandon is not None:
                self._abandon.cancel()
            queued = list(self._queue)
            self._queue.clear()
            for pair in queued:
                self.on_result(self._unsent(pair, 0, None))

    def _spawn(self) -> None:
        task = asyncio.create_task(self._worker())
        self._workers.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Forget a finished worker, its exception looked at: a worker that fails after
        the first (a full disk fails them all) is no longer waited on, and asyncio would
        print each one's traceback as never retrieved."""
        self._workers.discard(task)
        if not task.cancelled():
            task.exception()

    async def _autosize(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            rate = self.pacer.current
            if self._feed_done or self.stop_reason:
                continue
            if rate > 0:  # Little's law: in flight = rate x latency, with some headroom
                want = min(AUTO_CAP, math.ceil(rate * self.latency * 1.5) + 2)
            elif self.in_flight >= 0.9 * len(self._workers):  # no limit: grow while saturated
                want = min(AUTO_CAP, len(self._workers) + AUTO_START)
            else:
                continue
            for _ in range(want - len(self._workers)):
                self._spawn()

    async def _next(self) -> Pair | None:
        if self._queue:
            return self._queue.popleft()
        async with self._refill:
            while not self._queue and not self._feed_done and not self.stop_reason:
                assert self._feed is not None
                batch = await anext(self._feed, None)
                if batch is None:
                    self._feed_done = True
                else:
                    self._queue.extend(batch)
        return self._queue.popleft() if self._queue and not self.stop_reason else None

    async def _worker(self) -> None:
        """Pairs one after another, each to its end."""
        task = asyncio.current_task()
        assert task is not None
        while not self.stop_reason:
            pair = await self._next()
            if pair is None:
                return
            self.on_result(await self._attempts(task, pair))

    async def _attempts(self, task: asyncio.Task[None], pair: Pair) -> Result:
        """Paced attempts at one pair until an answer settles it, or a stop."""
        attempts = 0
        last: Answer | None = None
        while True:
            if not await self._wait_turn(task, attempts, last) or self.stop_reason:
                return self._unsent(pair, attempts, last)
            attempts += 1
            proven = self.linked > 0  # the credentials had linked a row before this
            sent = self.clock()
            self.in_flight += 1
            self._asking.add(task)
            try:
                last = await self.client.link(pair.source, pair.linked)
            except asyncio.CancelledError:
                if not self.abandoned:
                    raise
                task.uncancel()
                return self._abandoned(pair, attempts)
            finally:
                self.in_flight -= 1
                self._asking.discard(task)
            self._observe(last, sent, self.clock())
            result = self._settle(pair, last, attempts, proven)
            if result is not None:
                return result

    async def _wait_turn(
        self, task: asyncio.Task[None], attempts: int, last: Answer | None
    ) -> bool:
        """Backoff before a retry, then the pacer; False when a stop came meanwhile."""
        self._waiting.add(task)
        try:
            if attempts and not last_throttled(last):
                await asyncio.sleep(wait_before_retry(last, attempts, self.settings))
            await self.pacer.wait()
        except asyncio.CancelledError:
            if not self.stop_reason:
                raise
            task.uncancel()
            return False
        finally:
            self._waiting.discard(task)
        return True

    def _observe(self, answer: Answer, sent: float, now: float) -> None:
        """What every answer teaches: latency, the pacer's rate, progress or refusal."""
        # Moving average of answer times; the first answer sets it outright so the
        # auto-sized pool reaches rate x latency within the first fraction of a second.
        self.latency += (now - sent - self.latency) * (0.1 if self.latency else 1.0)
        if answer.verdict is Verdict.RETRY:
            self.pacer.on_answer(sent, answer.throttled, now, answer.budgets, self.in_flight)
            self.refusals[refusal_kind(answer)] += 1
        else:  # never a 429
            self.pacer.on_answer(sent, False, now, answer.budgets, self.in_flight)
            self.last_progress = now
            if self.refusals:
                self.refusals.clear()

    def _settle(self, pair: Pair, answer: Answer, attempts: int, proven: bool) -> Result | None:
        """The row's result for an answer, or None to try again."""
        verdict = answer.verdict
        if verdict is Verdict.LINKED:
            self.linked += 1
            self._forbidden_streak = 0
            return Result(
                pair.row,
                Outcome.LINKED,
                answer.http_status,
                "",
                attempts,
                answer.ticket,
                answer.body,
                utc_stamp(),
                pair.source,
                pair.linked,
            )
        if verdict is Verdict.FORBIDDEN:
            # After the same credentials linked others, a lone 403 is about this ticket.
            self._forbidden_streak += 1
            if proven and self._forbidden_streak < FORBIDDEN_STREAK:
                return Result(pair.row, Outcome.FAILED, answer.http_status, answer.error, attempts)
            verdict = Verdict.ABORT
        if verdict is Verdict.REDIRECT and not self.linked:
            self._redirects += 1
            if self._redirects >= REDIRECT_STOP:
                self.stop(WRONG_BASE_URL)
        if verdict is Verdict.ABORT or verdict is Verdict.HALT:
            return self._halt(pair, answer, attempts, verdict)
        if verdict is not Verdict.RETRY:
            return Result(pair.row, Outcome.FAILED, answer.http_status, answer.error, attempts)
        if answer.throttled:
            wait = answer.wait if answer.wait is not None else self.settings.delay(attempts)
            self.pacer.pause(wait)
        if attempts > self.settings.max_retries:
            error = f"{answer.error} (gave up after {attempts} attempts)"
            return Result(pair.row, Outcome.FAILED, answer.http_status, error, attempts)
        return None

    def _halt(self, pair: Pair, answer: Answer, attempts: int, verdict: Verdict) -> Result:
        """Stop the run: no row can succeed (credentials rejected, TLS failed, a proxy's
        407). Not this row's fault, and not final: ``skipped`` stays out of the journal, so
        the rerun once a person has acted (or ``retry``) sends it again."""
        if verdict is Verdict.HALT:
            self.halted = self.halted or answer.error
            self.stop(answer.error)
            error = answer.error
        else:
            self.stop(CREDENTIALS_REJECTED)
            error = f"{CREDENTIALS_REJECTED}: {answer.error}"
        return Result(pair.row, Outcome.SKIPPED, answer.http_status, error, attempts)

    def _abandoned(self, pair: Pair, attempts: int) -> Result:
        self.pacer.on_abandoned()
        grace = min(STOP_GRACE, self.settings.timeout)
        why = f"no answer {grace:g}s after the run stopped ({self.stop_reason}): abandoned"
        return Result(pair.row, Outcome.SKIPPED, None, why, attempts)

    def _unsent(self, pair: Pair, attempts: int, last: Answer | None) -> Result:
        why = f"not attempted: {self.stop_reason or 'run stopped'}"
        if last is not None:
            why = f"stopped before retrying ({self.stop_reason}); last: {last.error}"
        return Result(pair.row, Outcome.SKIPPED, last.http_status if last else None, why, attempts)


def refusal_kind(answer: Answer) -> str:
    """``"429"``, ``"503"``; for an answer without a status, its error (``"timeout after 30s"``)."""
    if answer.http_status is not None:
        return str(answer.http_status)
    return answer.error or "no answer"


def describe_refusals(refusals: Counter[str]) -> str:
    """``429 x 120, 503 x 4``: the most common first."""
    return ", ".join(f"{kind} x {count}" for kind, count in refusals.most_common())


def last_throttled(answer: Answer | None) -> bool:
    return answer is not None and answer.throttled


def wait_before_retry(answer: Answer | None, attempts: int, settings: TrafficOptions) -> float:
    """The server's Retry-After when it gave one, else the backoff for this attempt."""
    if answer is not None and answer.wait is not None:
        return answer.wait
    return settings.delay(attempts)
