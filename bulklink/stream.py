"""``link_pairs``: the runner for callers who hold pairs, not files (Airflow, notebooks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Iterable

from bulklink.errors import Blocked, CredentialsRejected
from bulklink.models import LinkResult, Outcome, Pair, Result
from bulklink.net.client import Client
from bulklink.net.connection import Connection, connect
from bulklink.options import StreamOptions, streaming_entry
from bulklink.run.runner import AUTO_CAP, CREDENTIALS_REJECTED, Runner
from bulklink.tables.inputs import caller_pair

#: What a caller may hand in for an ID: text, a number, or a blank (None, or NaN from pandas).
IdLike = str | int | float | None
PairLike = tuple[IdLike, IdLike]


async def _each(
    pairs: Iterable[PairLike] | AsyncIterable[PairLike],
) -> AsyncGenerator[PairLike]:
    if isinstance(pairs, AsyncIterable):
        async for pair in pairs:
            yield pair
    else:
        for pair in pairs:
            yield pair


@contextlib.asynccontextmanager
async def endpoint(connection: Connection) -> AsyncGenerator[str]:
    """The base URL to call: the embedded sandbox's when asked for, else the configured one.

    Here, in the public surface, because only it may import the simulator.
    """
    if not connection.sandbox:
        yield connection.base_url
        return
    from bulklink.sandbox import Sandbox, SandboxConfig  # aiohttp.web: only when asked for

    async with Sandbox(SandboxConfig(record=False)) as sandbox:
        yield sandbox.url


@streaming_entry(StreamOptions)
async def link_pairs(
    pairs: Iterable[PairLike] | AsyncIterable[PairLike], options: StreamOptions
) -> AsyncGenerator[LinkResult]:
    """Link ``(source, linked)`` pairs in the caller's event loop, yielding each result.

    The keyword arguments are the connection and traffic options of ``run``. Results
    come in completion order, one per pair. IDs are trimmed text, an int or a whole float
    below 10**15 as its digits, ``None`` and NaN blank; a blank ID, a self-link and any
    other value (a bool, ``1e20``, bytes) are ``invalid`` and not sent. Rate limit,
    retries and the stop on 401/403 work as in ``run``: after a rejection the remaining
    pairs come out ``skipped`` and then
    :class:`~bulklink.errors.CredentialsRejected` is raised (after a TLS failure or a
    proxy's 407, :class:`~bulklink.errors.Blocked`). No journal, report or
    lock: the caller owns the results.
    """
    connection = connect(options)
    stream = _Stream(_each(pairs))
    async with (
        endpoint(connection) as base_url,
        Client(
            base_url,
            connection.auth,
            allow_http=connection.allow_http or connection.sandbox,
            timeout=options.timeout,
            max_connections=options.workers or AUTO_CAP,
            proxies=connection.api_proxies,
            trust=connection.trust,
            rate_headers=options.auto_rate,
        ) as client,
    ):
        runner = Runner(client, options, stream.done.put_nowait)
        task = asyncio.create_task(runner.run(stream.feed()))
        task.add_done_callback(lambda _: stream.done.put_nowait(None))
        try:
            async for result in stream.results(task):
                yield result
        finally:
            if not task.done():
                runner.stop("the caller stopped reading results")
                await task
    if runner.halted:
        async for result in stream.rest_skipped(f"not attempted: {runner.halted}"):
            yield result
        raise Blocked(runner.halted)
    if runner.stop_reason == CREDENTIALS_REJECTED:
        async for result in stream.rest_skipped(f"not attempted: {CREDENTIALS_REJECTED}"):
            yield result
        raise CredentialsRejected("the API rejected the credentials (HTTP 401/403)")


class _Stream:
    """The caller's pairs numbered on the way in, and results matched back on the way out."""

    def __init__(self, source: AsyncGenerator[PairLike]) -> None:
        self.source = source
        self.ids: dict[int, tuple[str, str]] = {}
        self.done: asyncio.Queue[Result | None] = asyncio.Queue()
        self.counter = 0

    async def feed(self) -> AsyncGenerator[list[Pair]]:
        """What the runner sends; invalid pairs go straight to the results."""
        async for raw_source, raw_linked in self.source:
            self.counter += 1
            source, linked, reason = caller_pair(raw_source, raw_linked)
            pair = Pair(self.counter, source, linked)
            self.ids[self.counter] = (source, linked)
            if reason is not None:
                self.done.put_nowait(Result(self.counter, Outcome.INVALID, None, reason, 0))
                continue
            yield [pair]

    async def results(self, task: asyncio.Task[None]) -> AsyncGenerator[LinkResult]:
        """Results until the runner ends (``None`` marks it), then the invalid ones queued late."""
        while (result := await self.done.get()) is not None:
            yield self._as_link(result)
        await task
        while not self.done.empty():
            item = self.done.get_nowait()
            if item is not None:
                yield self._as_link(item)

    async def rest_skipped(self, why: str) -> AsyncGenerator[LinkResult]:
        """The pairs never read from the caller, each ``skipped``: one result per pair."""
        async for raw_source, raw_linked in self.source:
            source, linked, _ = caller_pair(raw_source, raw_linked)
            yield LinkResult(source, linked, Outcome.SKIPPED, None, why, 0, None)

    def _as_link(self, result: Result) -> LinkResult:
        s, d = self.ids.pop(result.row)
        return LinkResult(
            s, d, result.outcome, result.http_status, result.error, result.attempts, result.ticket
        )
