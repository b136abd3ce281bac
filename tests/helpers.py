"""Helpers shared by several test modules: CLI runs in-process and in a subprocess, what the
server received, input files and the one pair generator, the one report reader, one-line
errors, credentials, a webhook receiver, a scripted linker and fake time for the runner.

Fixtures that hand these out live in ``conftest.py``; everything else is here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import openpyxl
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from bulklink import models
from bulklink.cli import cli
from bulklink.models import TICKET_FIELDS, Pair
from bulklink.net.client import Answer, Verdict
from bulklink.options import TrafficOptions
from bulklink.run.runner import Runner
from bulklink.sandbox import Reply, Sandbox

TOKEN = "tok-SECRET-abc123"
ORG = "org_test"
# Options for CLI runs in tests: retries after 10 ms, no progress bar on stderr.
FAST = ("--backoff", "0.01", "--no-progress")
# The same without the rate limit, where pacing is not what the test is about.
FAST_UNPACED = (*FAST, "--rate", "0")
ROOT = Path(__file__).resolve().parent.parent
SIGKILLED = -signal.SIGKILL  # a subprocess's returncode after kill -9


# -- the CLI in-process; input files and the one pair generator --------------------------------


def invoke(
    *args: str | Path, env: dict[str, str] | None = None, input: str | None = None
) -> Result:
    """Run the CLI in-process, as a user would type it; stdout and stderr kept apart."""
    return CliRunner().invoke(
        cli, [str(a) for a in args], env=env, input=input, catch_exceptions=False
    )


def env_for(url: str, **extra: str) -> dict[str, str]:
    """Valid credentials for the server at ``url``, as the environment gives them."""
    return {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": url, **extra}


def run_against(server: Sandbox, *args: str | Path, **kwargs: Any) -> Result:
    """``bulklink run ...`` against a sandbox with valid credentials from the environment."""
    env = env_for(server.url, **(kwargs.pop("env", {}) or {}))
    return invoke(*args, env=env, **kwargs)


def write_csv(
    path: Path, rows: Sequence[Sequence[str]], delimiter: str = ",", encoding: str = "utf-8"
) -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def input_pairs(n: int, prefix: str = "T") -> list[tuple[str, str]]:
    """``n`` distinct valid pairs: ``(T00001, TL00001)`` and on."""
    return [(f"{prefix}{i:05d}", f"{prefix}L{i:05d}") for i in range(1, n + 1)]


def pairs_csv(path: Path, n: int, prefix: str = "T") -> Path:
    """A CSV input of :func:`input_pairs`."""
    return write_csv(path, [["sourceTicketId", "linkedTicketId"], *input_pairs(n, prefix)])


# -- the one report reader ---------------------------------------------------------------------


def read_any(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a report in any format, cells as the file holds them (an empty
    xlsx cell reads back as None)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            return header, [dict(zip(header, row, strict=True)) for row in reader]
    if path.suffix == ".xlsx":
        book = openpyxl.load_workbook(path)
        try:
            lines = list(book.worksheets[0].iter_rows(values_only=True))
        finally:
            book.close()
        header = [str(c) for c in lines[0]]
        return header, [dict(zip(header, row, strict=True)) for row in lines[1:]]
    text = path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(rows[0]), rows


def read_report(path: Path) -> list[dict[str, Any]]:
    """The rows of a report in any format (see :func:`read_any`)."""
    return read_any(path)[1]


# -- runs in a subprocess; what the server received; the files beside a report ----------------


def child_env(server: Sandbox, *, token: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THENA_")}
    env.update(THENA_ORG_ID=ORG, THENA_BASE_URL=server.url)
    if token:
        env["THENA_TOKEN"] = TOKEN
    return env


def spawn(server: Sandbox, *args: str | Path, token: bool = True) -> subprocess.Popen[str]:
    """``python -m bulklink ARGS`` in its own session, so signals reach only it."""
    return subprocess.Popen(
        [sys.executable, "-m", "bulklink", *map(str, args)],
        env=child_env(server, token=token),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def journal_of(report: Path) -> Path:
    return report.with_name(report.name + ".journal")


def lock_of(report: Path) -> Path:
    return report.with_name(report.name + ".lock")


def sent(server: Sandbox, since: int = 0) -> list[tuple[str, str]]:
    """(source, linked) of every request the server received from index ``since`` on."""
    out = []
    for rec in server.requests[since:]:
        body = json.loads(rec.body)
        out.append((body["sourceTicketId"], body["linkedTicketId"]))
    return out


def assert_rows_once(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> None:
    """Every input row exactly once, in input order, with its IDs."""
    assert [int(r["row"]) for r in rows] == list(range(1, len(pairs) + 1))
    # (an empty xlsx cell reads back as None)
    ids = [(r["sourceTicketId"] or "", r["linkedTicketId"] or "") for r in rows]
    assert ids == pairs


def done_earlier(stderr: str) -> list[int]:
    """Numbers on the stderr lines that report rows already done by an earlier run."""
    found: list[int] = []
    for line in stderr.splitlines():
        if re.search(r"already done|done earlier|resum", line, re.IGNORECASE):
            found += [int(n) for n in re.findall(r"\d+", line)]
    return found


# -- a run interrupted by a 401 at row 11, rows 1-10 journaled --------------------------------


N = 50


def interrupt_at_row_11(server: Sandbox, src: Path, report: Path, env: dict[str, str]) -> None:
    """Rows 1-10 linked and journaled, then a 401: exit 3, the journal kept for a resume."""
    server.config.script["T00011"] = [Reply(status=401)]
    result = invoke("run", src, "-o", report, "--concurrency", "1", *FAST_UNPACED, env=env)
    assert result.exit_code == 3, result.stderr
    assert sent(server) == input_pairs(N)[:11]
    assert journal_of(report).exists()


def assert_all_linked(report: Path, n: int = N) -> None:
    rows = read_report(report)
    assert [(r["sourceTicketId"], r["linkedTicketId"]) for r in rows] == input_pairs(n)
    assert {r["outcome"] for r in rows} == {"linked"}


# -- odd values a server may send -------------------------------------------------------------


ODD_TOKEN = 'tok"en\\back/sl+a=sh&x%41<y>~'

ODD_SECONDS = [
    "²", "٣", "-1", "-0.5", "+5", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "1e3",
    "0x10", "1_0", "1,5", "9" * 400, "", "  ", "five", "3 s", "Fri, 31 Dec 99999 23:59:59 GMT",
    "Mon, 99 Foo 2024 99:99:99 GMT", "Sun, 06 Nov 1994 08:49:37 +9999", "\x00",
]  # fmt: skip


# -- error bodies as servers send them --------------------------------------------------------


NEST_404 = {"statusCode": 404, "message": "Ticket not found: T9", "error": "Not Found"}

NEST_400 = {
    "statusCode": 400,
    "message": ["sourceTicketId must be a string", "linkedTicketId should not be empty"],
    "error": "Bad Request",
}

NEST_409 = {"statusCode": 409, "message": "Tickets are already linked", "error": "Conflict"}

NEST_422 = {"statusCode": 422, "message": "Ticket T1 is archived", "error": "Unprocessable"}

NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
    + "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
    + "<p>"
    + "lorem ipsum dolor sit amet " * 300
    + "</p>"
)


# -- input files, their reports and one-line errors -------------------------------------------


HEAD = ["sourceTicketId", "linkedTicketId"]

RESULT_COLUMNS = [
    "row",
    "sourceTicketId",
    "linkedTicketId",
    "success",
    "outcome",
    "http_status",
    "error",
    "attempts",
    "linked_at",
]

TICKET_COLUMNS = [f"ticket.{name}" for name in TICKET_FIELDS]


def sent_checked(server: Sandbox) -> list[tuple[str, str]]:
    """The (source, linked) pairs the server received, in arrival order; IDs must be strings."""
    pairs = []
    for request in server.requests:
        assert request.method == "PATCH"
        assert request.path == "/v1/tickets/link"
        body = json.loads(request.body)
        assert set(body) == {"sourceTicketId", "linkedTicketId"}, body
        assert isinstance(body["sourceTicketId"], str), body
        assert isinstance(body["linkedTicketId"], str), body
        pairs.append((body["sourceTicketId"], body["linkedTicketId"]))
    return pairs


def report_of(path: Path) -> list[dict[str, Any]]:
    """The rows of the CSV report beside the input ``path``."""
    return read_report(path.with_name(f"{path.stem}.results.csv"))


def linked_from(server: Sandbox, path: Path, expected: list[tuple[str, str]]) -> list[Any]:
    """Run the input ``path``: exit 0, the server got exactly ``expected`` (in any order);
    the rows of the report beside it."""
    result = run(server, path)
    assert result.exit_code == 0, result.output
    assert sorted(sent_checked(server)) == expected
    return report_of(path)


def report_header(path: Path) -> list[str]:
    return read_any(path.with_name(f"{path.stem}.results.csv"))[0]


def ids(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["sourceTicketId"], r["linkedTicketId"]) for r in rows]


def one_line_error(result: Result) -> str:
    """stderr must be one clear line, never a traceback."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def make_xlsx(
    path: Path,
    sheets: Mapping[str, Sequence[Sequence[object]]],
    active: int = 0,
    hidden: Sequence[str] = (),
) -> Path:
    """A workbook of ``sheets`` (name: rows) in order, those named in ``hidden`` hidden."""
    wb = openpyxl.Workbook()
    for sheet in list(wb.worksheets):
        wb.remove(sheet)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
        if name in hidden:
            ws.sheet_state = "hidden"
    wb.active = active
    wb.save(path)
    return path


def run(
    server: Sandbox, path: Path, *extra: str | Path, env: dict[str, str] | None = None
) -> Result:
    """``bulklink run path`` against ``server``, fast; ``env`` added to the credentials."""
    return run_against(server, "run", path, *FAST_UNPACED, *extra, env=env)


def one_line_usage_error(result: Result) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bulklink: error: "), lines[0]
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# -- credentials ------------------------------------------------------------------------------


KEY = "k-SECRET-123"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(**claims: Any) -> str:
    """An unsigned-looking JWT: header.payload.signature, base64url without padding."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "user_1", **claims}).encode())
    return f"{header}.{payload}.{b64url(b'not-a-real-signature')}"


def no_secret_anywhere(secret: str, *texts: str, files: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert secret not in text
    for path in files:
        if path.exists():
            assert secret.encode() not in path.read_bytes(), path


# -- answers holding custom tickets -------------------------


CUSTOM_FIELDS = [{"id": "CF1", "name": "Region", "value": 'EMEA, "north"'}, {"id": "CF2"}]


def custom_ticket(source: str, **extra: Any) -> dict[str, Any]:
    """Every documented field, with values of each JSON type, plus ``extra``."""
    ticket: dict[str, Any] = {name: f"{name} of {source}" for name in TICKET_FIELDS}
    ticket.update(
        id=source,
        title=f"Custom title {source}",
        ticketId=4242,
        storyPoints=5,
        isPrivate=True,
        customFieldValues=CUSTOM_FIELDS,
        deletedAt=None,
        archivedAt=None,
    )
    ticket.update(extra)
    return ticket


def answer_with(ticket: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": True,
        "message": "Success",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "data": ticket,
    }


# -- a webhook receiver ------------------------------------------------------------------------


HOOK_PATH = "/services/T0001/B0002/hook-SECRET-path"
HOOK_QUERY = "sig=qs-SECRET-value"


@dataclass
class Receiver:
    """A webhook on 127.0.0.1: records every POST, answers ``answers`` in turn, then 200.

    An answer is a status, or ``(status, seconds)`` to hold it first (a slow receiver). The
    answer's text is ``text``, or else echoes the URL called, which no warning may repeat.
    """

    url: str = ""
    raw: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    answers: list[int | tuple[int, float]] = field(default_factory=list)
    text: str = ""
    release: asyncio.Event | None = None

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(raw) for raw in self.raw]

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        self.raw.append(await request.read())
        answer = self.answers.pop(0) if self.answers else 200
        status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
        if delay and self.release is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), delay)
        return web.Response(status=status, text=self.text or f"oops at {request.path_qs}")


@contextlib.contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` served from a thread of its own (so the CLI can be run here), its
    URL carrying secrets in path and query; held answers are let go at the end."""
    receiver = Receiver()

    async def serve(ready: Callable[[], None], stop: asyncio.Event) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}{HOOK_PATH}?{HOOK_QUERY}"
        receiver.release = asyncio.Event()
        ready()
        await stop.wait()
        receiver.release.set()
        await runner.cleanup()

    with in_thread("receiver", serve):
        yield receiver


@contextlib.contextmanager
def in_thread(
    name: str, serve: Callable[[Callable[[], None], asyncio.Event], Coroutine[Any, Any, None]]
) -> Iterator[None]:
    """``serve(ready, stop)`` in a daemon thread with its own event loop: entered once it
    calls ``ready()``; on exit ``stop`` is set and the thread joined."""
    ready = threading.Event()
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))
        await serve(ready.set, stop)

    thread = threading.Thread(target=lambda: asyncio.run(main()), name=name, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        loop, stop = control[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


# -- fake time: an event loop whose clock jumps to the next timer --------------------------------


T = TypeVar("T")
START = 100.0  # fake time at which every test starts (not 0, as time.monotonic is not)


class Clock:
    """The fake time, shared by the pacer and the event loop."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: where the loop would wait ``timeout`` seconds, time jumps instead.

    ``late`` is added to every such wait, as a busy machine wakes timers late. Every pass
    of the loop also takes a nanosecond, as real ones do: aiolimiter re-arms its timer for
    a float-rounding remainder of a token, which frozen time would never pay off.
    """

    def __init__(self, clock: Clock, late: float) -> None:
        super().__init__()
        self.clock, self.late = clock, late

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing ready")
        self.clock.now += (timeout + self.late if timeout > 0 else 0.0) + 1e-9
        result: list[tuple[Any, int]] = super().select(0)
        return result


class _FakeTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: Clock, late: float) -> None:
        self.clock = clock
        super().__init__(_JumpingSelector(clock, late))

    def time(self) -> float:
        return self.clock.now


def run_in_fake_time(main: Callable[[Clock], Coroutine[Any, Any, T]], *, late: float = 0.0) -> T:
    clock = Clock()
    loop = _FakeTimeLoop(clock, late)
    try:
        return loop.run_until_complete(main(clock))
    finally:
        loop.close()


# -- the runner without HTTP: a scripted linker --------------------------------------------------


class ScriptedLinker:
    """A :class:`~bulklink.run.runner.Linker` without HTTP: each source ID gets the answers
    in ``script`` in turn (an exception is raised instead), then ``Answer(LINKED, 200)``.

    Every call is recorded with the ``clock``'s time; an answer comes ``latency`` seconds
    after it was asked for, as a server's would.
    """

    def __init__(
        self,
        script: Mapping[str, Sequence[Answer | BaseException]] | None = None,
        *,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.script = {source: list(answers) for source, answers in (script or {}).items()}
        self.latency, self.clock = latency, clock
        self.calls: list[tuple[str, float]] = []  # (source, when) of every attempt
        self.answered: list[str] = []  # the source of every attempt that got an answer

    async def link(self, source: str, linked: str) -> Answer:
        self.calls.append((source, self.clock()))
        queued = self.script.get(source)
        answer = queued.pop(0) if queued else Answer(Verdict.LINKED, 200)
        if isinstance(answer, BaseException):
            raise answer
        if self.latency:
            await asyncio.sleep(self.latency)
        self.answered.append(source)
        return answer

    def sources(self) -> list[str]:
        """The source ID of every attempt, in the order they were made."""
        return [source for source, _ in self.calls]


async def run_runner(
    linker: ScriptedLinker, n: int, clock: Callable[[], float] = time.monotonic, **settings: Any
) -> tuple[Runner, dict[int, models.Result]]:
    """Run :func:`input_pairs` (n) through a :class:`Runner` on ``linker``: the runner and
    its results by row. ``settings`` are :class:`TrafficOptions` fields (unpaced, no backoff
    and one worker unless given)."""
    settings = {"rate": 0, "backoff": 0, "concurrency": 1, **settings}
    results: dict[int, models.Result] = {}

    def note(result: models.Result) -> None:
        assert result.row not in results, f"row {result.row} reported twice"
        results[result.row] = result

    async def feed() -> Any:
        yield [Pair(row, *pair) for row, pair in enumerate(input_pairs(n), start=1)]

    runner = Runner(linker, TrafficOptions(**settings), note, clock=clock)
    await runner.run(feed())
    return runner, results


# -- proxies: tinyproxy, and a CONNECT proxy for what tinyproxy cannot show ----------------------


@dataclass
class ConnectProxy:
    """A small proxy on 127.0.0.1, for what tinyproxy cannot show: it records each
    request's first line and ``Proxy-Authorization`` (``seen``) and its whole head
    (``heads``); answers 407 unless that is ``expect`` (None: any); else tunnels a CONNECT,
    or forwards a plain http request (absolute URL) without its proxy header."""

    url: str = ""
    expect: str | None = None
    seen: list[tuple[str, str]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    refusal: bytes = b"407 Proxy Authentication Required"  # what a mismatch is answered

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.heads.append(raw)
        first, *lines = raw.split("\r\n")
        auth = next((ln.split(":", 1)[1].strip() for ln in lines if _is_proxy_auth(ln)), "")
        self.seen.append((first, auth))
        method, target, version = first.split(" ", 2)
        if self.expect is not None and auth != self.expect:
            writer.write(b"HTTP/1.1 " + self.refusal + b"\r\nContent-Length: 0\r\n")
            writer.write(b'Proxy-Authenticate: Basic realm="test"\r\nConnection: close\r\n\r\n')
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # one request, then the connection closes
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
            kept = [ln for ln in lines if ln and not _is_proxy_auth(ln)]
            kept = [ln for ln in kept if not ln.lower().startswith("connection:")]
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            head = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
            up_writer.write("\r\n".join(head).encode("latin-1"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


def _is_proxy_auth(line: str) -> bool:
    return line.lower().startswith("proxy-authorization:")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.contextmanager
def serve_connect_proxy(expect: str | None = None) -> Iterator[ConnectProxy]:
    """A :class:`ConnectProxy` served from a thread of its own."""
    proxy = ConnectProxy(expect=expect)

    async def serve(ready: Callable[[], None], stop: asyncio.Event) -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready()
        async with server:
            await stop.wait()

    with in_thread("proxy", serve):
        yield proxy


@dataclass
class Tinyproxy:
    """Debian's tinyproxy on a free loopback port; ``log`` is its log file."""

    url: str
    log: Path

    def requests(self) -> list[str]:
        """The request lines it logged (``CONNECT 127.0.0.1:4433 HTTP/1.1``, ...)."""
        found = re.findall(r"Request \(file descriptor \d+\): (.+)", self.log.read_text())
        return [line.strip() for line in found]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def run_tinyproxy(folder: Path) -> Iterator[Tinyproxy]:
    """tinyproxy in the foreground with a generated config (every CONNECT port allowed);
    the test is skipped only where tinyproxy is not installed (``.ci/run`` installs it)."""
    import shutil

    program = shutil.which("tinyproxy")
    if program is None:
        pytest.skip("tinyproxy is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "tinyproxy.log"
    config = folder / "tinyproxy.conf"
    config.write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Info\n'
        f'PidFile "{folder / "tinyproxy.pid"}"\nMaxClients 50\nAllow 127.0.0.1\n'
    )
    process = subprocess.Popen([program, "-d", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: log.exists() and "Accepting connections" in log.read_text(), "tinyproxy")
        yield Tinyproxy(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(10)


# -- TLS: CAs and certificates made in the test ---------------------------------------------------


@dataclass
class Certs:
    """A trustme CA, written out as a bundle, and a way to issue server certificates."""

    folder: Path
    ca: Any = None  # trustme.CA
    bundle: Path = Path()

    def server(self, *hosts: str, **options: Any) -> dict[str, Path]:
        """``tls_cert``/``tls_key`` for a sandbox, for ``hosts`` (default 127.0.0.1)."""
        cert = self.ca.issue_cert(*(hosts or ("127.0.0.1",)), **options)
        name = f"server-{len(list(self.folder.glob('server-*.pem')))}"
        chain, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
        cert.private_key_pem.write_to_path(str(key))
        return {"tls_cert": chain, "tls_key": key}


def make_certs(folder: Path) -> Certs:
    trustme = pytest.importorskip("trustme")
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    bundle = folder / f"ca-{len(list(folder.glob('ca-*.pem')))}.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return Certs(folder, ca, bundle)
