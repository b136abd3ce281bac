"""bulklink's performance benchmark (issue 4): every goal measured in one run, one table.

    .venv/bin/python benchmarks/bench.py            # the full run (about 10 minutes)
    .venv/bin/python benchmarks/bench.py --quick    # smaller inputs (about 3 minutes)
    .venv/bin/python benchmarks/bench.py --only overhead startup

Measurements (names for ``--only``):

overhead  bulklink ``run --rate 0 --concurrency 64`` vs ``benchmarks/bare_loop.py`` on the
          same input against the fast server, alternating A B A B (3 rounds, medians):
          wall and CPU time ratios.
rate      ``--rate R`` for R in 20, 100, 500 against an in-process sandbox recording
          arrival times: achieved rate and the most requests in any 1-second window.
latency   sandbox answering after 300 ms, ``--rate 100``, default concurrency: rows/s.
limit     sandbox allowing 20 requests/s (429 beyond), ``--rate 100``: rows/s, 429 share.
memory    peak RSS of ``--dry-run`` on 1,000,000 rows, and of real runs of 200,000 and
          1,000,000 rows (``--quick``: not the last) against the fast server.
nights    the nightly job (issue 9): night 1 links a 200,000-row file (``--quick``: 50,000)
          against the fast server with ``--rate 0 --concurrency 64``; night 2 is the same
          command over the unchanged file with the same state store. Requests counted at
          the server (nginx ``stub_status``, else an in-process sandbox recording them):
          night 2 sends none and takes under 20 s; peak RSS under 300 MB both nights; the
          store (file plus ``-wal`` after the run) under 250 bytes a pair.
million   the second night of a 1,000,000-row file (``--quick``: 200,000): night 1 links
          it (CSV) into a fresh store; night 2 reruns it unchanged as CSV, then as xlsx in
          and out (the same code path, with whatever xlsx engine bulklink has): wall,
          peak RSS, the store's bytes a pair.
budget    ``benchmarks/budget.py``: ``--rate auto`` against the sandbox's budget mode
          (W = 5 s, L = 250; ``--quick``: W = 2 s, L = 100): alone, two runs sharing one
          budget, an OrgID variant binding, and no headers.
startup   ``bulklink --help``, median of 10.

The state store is on in every run, as it is by default, so its cost is in every figure;
but each run gets a store of its own (``XDG_STATE_HOME`` set to a new folder under the
work directory, ``BULKLINK_STATE`` removed): no run reads or writes the user's store, and
no run skips pairs an earlier run linked, except the second night, which is about that.

The fast server is nginx on 127.0.0.1 answering every PATCH with one fixed ticket body
(``benchmarks/nginx.conf.template``) when ``nginx`` is on PATH, else a ``bulklink sandbox``
subprocess (which records nothing). Child processes are measured from outside: wall time,
CPU time (user + sys, from ``os.wait4``) and peak RSS (the kernel's high-water mark
``VmHWM``, polled every 50 ms; psutil's RSS where /proc is missing). Nothing here sends
traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BARE_LOOP = HERE / "bare_loop.py"
NGINX_TEMPLATE = HERE / "nginx.conf.template"
LINK_PATH = "/v1/tickets/link"
TOKEN = "bench-token"  # noqa: S105 - any token passes the local servers
ORG = "org_bench"
MB = 1024 * 1024
NAMES = (
    "overhead", "rate", "latency", "limit", "memory", "nights", "million", "budget", "startup"
)  # fmt: skip
STATE_FILE = Path("bulklink") / "state.sqlite3"  # under XDG_STATE_HOME


# -- measuring a child process ---------------------------------------------------------------


@dataclass(slots=True)
class Proc:
    """One finished child process, measured from outside."""

    cmd: list[str]
    rc: int
    wall: float  # seconds from spawn to exit
    cpu: float  # user + sys seconds of the child (and any children it waited for)
    peak_rss: int  # bytes
    stdout: str
    stderr: str

    def check(self, what: str) -> None:
        if self.rc != 0:
            tail = self.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"{what} exited {self.rc}: " + " | ".join(tail))


def _rss_sample(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), else its current RSS; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        text = ""
    best = 0
    for line in text.splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            best = max(best, int(line.split()[1]) * 1024)
    if best or text:
        return best
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # gone, or psutil missing: nothing to sample
        return 0


def measure(
    cmd: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 900.0
) -> Proc:
    """Run ``cmd`` to completion: exact wall and CPU time (os.wait4), peak RSS polled."""
    argv = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        reaped: dict[str, Any] = {}
        done = threading.Event()

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(end=time.perf_counter(), status=status, usage=usage)
            done.set()

        reaper = threading.Thread(target=reap, name="reaper", daemon=True)
        reaper.start()
        peak = 0
        killed = False
        try:
            while not done.wait(0.05):
                peak = max(peak, _rss_sample(proc.pid))
                if not killed and time.perf_counter() - t0 > timeout:
                    proc.kill()
                    killed = True
        except BaseException:
            proc.kill()
            reaper.join()
            proc.returncode = -9
            raise
        reaper.join()
        proc.returncode = os.waitstatus_to_exitcode(reaped["status"])
        usage = reaped["usage"]
        if peak == 0:
            peak = usage.ru_maxrss * 1024
        out.seek(0)
        err.seek(0)
        result = Proc(
            argv,
            proc.returncode,
            reaped["end"] - t0,
            usage.ru_utime + usage.ru_stime,
            peak,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )
    if killed:
        raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(argv[:3])} ...")
    return result


# -- inputs ------------------------------------------------------------------------------------


def make_xlsx_input(csv_path: Path) -> Path:
    """The same pairs as an .xlsx file (openpyxl's write-only mode), once per size."""
    xlsx = csv_path.with_suffix(".xlsx")
    if xlsx.exists():
        return xlsx
    import csv

    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("pairs")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            sheet.append(row)
    book.save(xlsx)
    return xlsx


def make_input(path: Path, rows: int, seed: int = 4) -> Path:
    """``rows`` distinct pairs of 29-character upper-case IDs, like real Thena ticket IDs."""
    if path.exists():
        return path
    rng = random.Random(seed)
    bits = rng.getrandbits
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write("sourceTicketId,linkedTicketId\n")
        left = rows
        while left:
            n = min(left, 20_000)
            fh.write("".join(f"CT{bits(108):027X},CT{bits(108):027X}\n" for _ in range(n)))
            left -= n
    tmp.replace(path)
    return path


def ticket_body() -> bytes:
    """The fixed 200 answer of the fast server: the sandbox's own full documented ticket."""
    from bulklink.sandbox import success_body

    return success_body("CT356A192B7913B04C54574D18C28", 0.0)


# -- servers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    url: str
    description: str
    served: Callable[[], int] | None = None  # requests the server has answered so far


class NginxCount:
    """Requests nginx has served so far, from its ``stub_status`` total, less the status
    requests made here (each counts itself and every earlier one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked = 0

    def __call__(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/nginx_status")
            resp = conn.getresponse()
            text = resp.read().decode("ascii", "replace")
        finally:
            conn.close()
        self.asked += 1
        # "Active connections: 1\nserver accepts handled requests\n 5 5 7\nReading: ..."
        match = re.search(r"accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", text)
        if resp.status != 200 or match is None:
            raise RuntimeError(f"nginx stub_status answered {resp.status}: {text[:200]!r}")
        return int(match.group(3)) - self.asked


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {limit:.0f}s")


def check_server(url: str) -> int:
    """One PATCH like bulklink's; the size of the answer (raises unless it is a linked ticket)."""
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
    if match is None:
        raise RuntimeError(f"refusing to benchmark against {url}: 127.0.0.1 only")
    conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
    try:
        payload = json.dumps({"sourceTicketId": "CTCHECK1", "linkedTicketId": "CTCHECK2"})
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {TOKEN}",
            "x-org-id": ORG,
        }
        conn.request("PATCH", LINK_PATH, payload, headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    obj = json.loads(raw)
    if resp.status != 200 or obj.get("status") is not True or not isinstance(obj.get("data"), dict):
        raise RuntimeError(f"fast server answered {resp.status}: {raw[:200]!r}")
    if "json" not in (resp.getheader("Content-Type") or ""):
        raise RuntimeError("fast server does not answer with Content-Type application/json")
    return len(raw)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def nginx_server(nginx: str, work: Path) -> Iterator[Server]:
    """nginx in the foreground (daemon off), as the current user, prefix and pid in ``work``."""
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    body = ticket_body().decode()
    if any(ch in body for ch in "'\\$"):
        raise RuntimeError("the fixed body cannot go in an nginx single-quoted string")
    user_line = ""
    if os.geteuid() == 0:  # workers would otherwise drop to 'nobody'
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        user_line = f"user {user} {grp.getgrgid(os.getegid()).gr_name};"
    version_out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    nginx_version = (version_out.stderr or version_out.stdout).strip().split("/")[-1]
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            string.Template(NGINX_TEMPLATE.read_text()).substitute(
                prefix=prefix, port=port, body=body, user_line=user_line
            )
        )
        log = prefix / "error.log"
        with (prefix / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            _wait_listening(port, proc, "nginx", 10)
        except RuntimeError as exc:
            _stop(proc)
            last_error = f"{exc}: " + " | ".join(
                (prefix / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
            )
            continue
        try:
            url = f"http://127.0.0.1:{port}"
            size = check_server(url)
            yield Server(
                url,
                f"nginx {nginx_version} on {url} (1 worker, fixed {size}-byte ticket body)",
                NginxCount(port),
            )
        finally:
            _stop(proc)
        return
    raise RuntimeError(f"nginx would not start: {last_error}")


@contextlib.contextmanager
def sandbox_server(bulklink: Path) -> Iterator[Server]:
    """``bulklink sandbox --port 0`` (a subprocess; it never records requests)."""
    proc = subprocess.Popen(
        [str(bulklink), "sandbox", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline and b"\n" not in line:
            ready, _, _ = select.select([proc.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        match = re.search(rb"listening on (http://127\.0\.0\.1:\d+)", line)
        if match is None:
            raise RuntimeError(f"bulklink sandbox did not start: {line[-300:]!r}")
        url = match.group(1).decode()
        size = check_server(url)
        yield Server(url, f"bulklink sandbox subprocess on {url} (record off, {size}-byte body)")
    finally:
        _stop(proc)


# -- the benchmark ---------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    name: str
    figure: str
    goal: str = "-"
    ok: bool | None = None  # None: information only

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else "pass" if self.ok else "FAIL"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _mb(size: int) -> str:
    return f"{size / MB:.0f} MB"


def _window_max(times: Sequence[float], width: float = 1.0) -> int:
    """The most arrivals in any window [t_i, t_i + width]."""
    best = j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] <= start + width:
            j += 1
        best = max(best, j - i)
    return best


@dataclass
class Bench:
    quick: bool
    work: Path
    server_choice: str
    bulklink: Path
    rows: list[Row] = field(default_factory=list)
    errors: int = 0
    server_note: str = ""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _fast: Server | None = None

    # -- plumbing ----------------------------------------------------------------------
    def add(self, name: str, figure: str, goal: str = "-", ok: bool | None = None) -> None:
        row = Row(name, figure, goal, ok)
        self.rows.append(row)
        log(f"  {name}: {figure}  [{goal}] {row.verdict}")

    def env(self, base_url: str | None = None, state_home: Path | None = None) -> dict[str, str]:
        """The caller's environment (but its proxies), our credentials, and a state store
        of the run's own.

        ``state_home`` is the ``XDG_STATE_HOME`` to use; None: a new, empty one.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("THENA_") and k not in ("BULKLINK_STATE", "BULKLINK_PROXY")
        }
        env["NO_PROXY"] = env["no_proxy"] = "*"  # loopback only, never through a proxy
        env.update(THENA_TOKEN=TOKEN, THENA_ORG_ID=ORG)
        env["XDG_STATE_HOME"] = str(state_home if state_home is not None else self.state_home())
        if base_url is not None:
            env["THENA_BASE_URL"] = base_url
        return env

    def state_home(self) -> Path:
        """A new empty ``XDG_STATE_HOME`` under the work directory."""
        return Path(tempfile.mkdtemp(prefix="state-", dir=self.work))

    def fast(self) -> Server:
        """The server that is never the bottleneck; started once, on first use."""
        if self._fast is not None:
            return self._fast
        nginx = shutil.which("nginx") if self.server_choice != "sandbox" else None
        if self.server_choice == "nginx" and nginx is None:
            raise RuntimeError("--server nginx: nginx is not on PATH")
        server: Server | None = None
        if nginx is not None:
            try:
                server = self._stack.enter_context(nginx_server(nginx, self.work))
            except (RuntimeError, OSError, ValueError) as exc:
                if self.server_choice == "nginx":
                    raise
                self.server_note = f" (nginx failed to start: {exc}; fell back to the sandbox)"
        else:
            self.server_note = " (nginx not on PATH)" if self.server_choice == "auto" else ""
        if server is None:
            server = self._stack.enter_context(sandbox_server(self.bulklink))
        self._fast = server
        log(f"fast server: {server.description}{self.server_note}")
        return server

    def close(self) -> None:
        self._stack.close()

    def input(self, rows: int) -> Path:
        return make_input(self.work / f"pairs-{rows}.csv", rows)

    def run_bulklink(
        self,
        input_path: Path,
        base_url: str,
        *options: str,
        timeout: float = 900.0,
        state_home: Path | None = None,
        keep_report: bool = False,
    ) -> tuple[Proc, dict[str, Any]]:
        """``bulklink run`` as a subprocess; its report and journal are removed afterwards
        (unless ``keep_report``: the next night finds last night's report, as a cron job does).

        ``state_home``: the ``XDG_STATE_HOME`` of the run's store; None: a new, empty one.
        """
        report = self.report_path(input_path)
        summary = self.work / f"{input_path.stem}.summary.json"
        cmd: list[str | Path] = [self.bulklink, "run", input_path, "-o", report, "--no-progress"]
        cmd += ["--summary-json", summary, *options]
        try:
            proc = measure(cmd, env=self.env(base_url, state_home), timeout=timeout)
            if proc.rc != 1:  # 1: some rows not linked; the figures show how many
                proc.check("bulklink run")
            info: dict[str, Any] = json.loads(summary.read_text())
        finally:
            summary.unlink(missing_ok=True)
            if not keep_report:
                self.remove_report(report)
        return proc, info

    def report_path(self, input_path: Path) -> Path:
        return self.work / f"{input_path.stem}.report{input_path.suffix}"

    @staticmethod
    def remove_report(report: Path) -> None:
        for leftover in (
            report,
            report.with_name(report.name + ".journal"),
            report.with_name(f".{report.name}.bulklink-tmp"),
        ):
            leftover.unlink(missing_ok=True)

    def run_bare(self, input_path: Path, base_url: str, *extra: str) -> Proc:
        out = self.work / f"{input_path.stem}.bare.csv"
        cmd: list[str | Path] = [sys.executable, BARE_LOOP, input_path, out, "--url", base_url]
        cmd += ["--concurrency", "64", *extra]
        try:
            proc = measure(cmd, env=self.env(base_url), timeout=900)
            proc.check("bare_loop")
        finally:
            out.unlink(missing_ok=True)
        return proc

    # -- 1. overhead ---------------------------------------------------------------------
    def overhead(self) -> None:
        rows = 10_000 if self.quick else 50_000
        server = self.fast()
        path = self.input(rows)
        warm = self.input(2_000)
        opts = ("--rate", "0", "--concurrency", "64")
        self.run_bulklink(warm, server.url, *opts)  # warm the page cache and the server
        self.run_bare(warm, server.url)
        a: list[Proc] = []
        b: list[Proc] = []
        for n in range(3):
            proc, info = self.run_bulklink(path, server.url, *opts)
            linked = info["counts"].get("linked", 0)
            if linked != rows:
                raise RuntimeError(f"bulklink linked {linked} of {rows} rows: {info['counts']}")
            a.append(proc)
            bare = self.run_bare(path, server.url)
            b.append(bare)
            log(
                f"  round {n + 1}/3: bulklink {proc.wall:.2f}s wall {proc.cpu:.2f}s CPU | "
                f"bare {bare.wall:.2f}s wall {bare.cpu:.2f}s CPU"
            )
        wall_a, wall_b = _median([p.wall for p in a]), _median([p.wall for p in b])
        cpu_a, cpu_b = _median([p.cpu for p in a]), _median([p.cpu for p in b])
        for label, procs, wall, cpu in (
            ("bulklink", a, wall_a, cpu_a),
            ("bare loop", b, wall_b, cpu_b),
        ):
            rss = _median([p.peak_rss for p in procs])
            walls = sorted(p.wall for p in procs)
            self.add(
                f"overhead {rows:,} rows: {label}",
                f"{rows / wall:,.0f} rows/s, wall {wall:.2f} s ({walls[0]:.2f}-{walls[-1]:.2f}), "
                f"CPU {cpu:.2f} s, peak RSS {_mb(int(rss))}",
            )
        for what, key, goal in (("wall", "wall", 1.25), ("CPU", "cpu", 1.25)):
            ratio = _median([getattr(p, key) for p in a]) / _median([getattr(p, key) for p in b])
            rounds = ", ".join(
                f"{getattr(x, key) / getattr(y, key):.2f}" for x, y in zip(a, b, strict=True)
            )
            best = min(getattr(p, key) for p in a) / min(getattr(p, key) for p in b)
            self.add(
                f"overhead: {what} ratio bulklink/bare",
                f"{ratio:.2f}x (medians; per round {rounds}; best-of-3 {best:.2f}x)",
                f"<= {goal:.2f}x",
                ratio <= goal,
            )

    # -- 2. rate fidelity ---------------------------------------------------------------
    def rate(self) -> None:
        from bulklink.sandbox import SandboxConfig, serve_in_thread

        for rate in (20, 100, 500):
            rows = rate * (5 if self.quick else 12)
            path = self.input(rows)
            with serve_in_thread(SandboxConfig(record=True, token=None)) as sandbox:
                _, info = self.run_bulklink(path, sandbox.url, "--rate", str(rate))
                times = sorted(r.t for r in sandbox.requests)
            n = len(times)
            achieved = (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0
            peak = _window_max(times)
            cap = rate + 1 if rate <= 50 else 1.02 * rate
            linked = info["counts"].get("linked", 0)
            self.add(
                f"rate {rate}/s: achieved",
                f"{achieved:.1f}/s ({achieved / rate:.1%} of R; {n} requests, {linked} linked)",
                f">= {0.97 * rate:g}/s",
                achieved >= 0.97 * rate,
            )
            self.add(
                f"rate {rate}/s: max in a 1 s window",
                str(peak),
                f"<= {cap:g}",
                peak <= cap,
            )

    # -- 3. latency hidden ----------------------------------------------------------------
    def latency(self) -> None:
        from bulklink.sandbox import SandboxConfig, serve_in_thread

        rows = 600 if self.quick else 1500
        path = self.input(rows)
        with serve_in_thread(SandboxConfig(record=True, token=None, latency=0.3)) as sandbox:
            proc, info = self.run_bulklink(path, sandbox.url, "--rate", "100")
            times = sorted(r.t for r in sandbox.requests)
        linked = info["counts"].get("linked", 0)
        elapsed = float(info["elapsed_seconds"])
        per_s = linked / elapsed
        served = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        self.add(
            f"latency 0.3 s, --rate 100, auto: {rows} rows",
            f"{per_s:.1f} rows/s ({linked} linked in {elapsed:.1f} s; server saw "
            f"{served:.1f}/s; {rows / proc.wall:.1f}/s incl. start-up)",
            ">= 90/s",
            per_s >= 90 and linked == rows,
        )

    # -- 4. server limit ------------------------------------------------------------------
    def limit(self) -> None:
        from bulklink.sandbox import SandboxConfig, serve_in_thread

        rows = 300 if self.quick else 600
        path = self.input(rows)
        with serve_in_thread(SandboxConfig(record=True, token=None, rate_limit=20)) as sandbox:
            _, info = self.run_bulklink(path, sandbox.url, "--rate", "100", timeout=300)
            statuses = [r.status for r in sandbox.requests]
        linked = info["counts"].get("linked", 0)
        elapsed = float(info["elapsed_seconds"])
        per_s = linked / elapsed
        throttled = statuses.count(429)
        share = throttled / len(statuses) if statuses else 1.0
        self.add(
            f"server limit 20/s, --rate 100: {rows} rows",
            f"{per_s:.1f} rows/s ({linked} linked in {elapsed:.1f} s)",
            ">= 18/s",
            per_s >= 18 and linked == rows,
        )
        self.add(
            "server limit 20/s: answered 429",
            f"{share:.1%} ({throttled} of {len(statuses)} requests)",
            "<= 5%",
            share <= 0.05,
        )

    # -- 5. memory ------------------------------------------------------------------------
    def memory(self) -> None:
        big = 1_000_000
        log(f"  generating {big:,} rows ...")
        path = self.input(big)
        proc = measure([self.bulklink, "run", path, "--dry-run"], env=self.env(), timeout=300)
        proc.check("bulklink run --dry-run")
        self.add(
            f"memory: --dry-run {big:,} rows: peak RSS",
            _mb(proc.peak_rss),
            "< 400 MB",
            proc.peak_rss < 400 * MB,
        )
        self.add(
            f"memory: --dry-run {big:,} rows: wall",
            f"{proc.wall:.1f} s (CPU {proc.cpu:.1f} s)",
            "< 20 s",
            proc.wall < 20,
        )
        server = self.fast()
        sizes = [(200_000, 300)] if self.quick else [(200_000, 300), (big, 500)]
        for rows, goal in sizes:
            run, info = self.run_bulklink(
                self.input(rows), server.url, "--rate", "0", "--concurrency", "64", timeout=1200
            )
            linked = info["counts"].get("linked", 0)
            self.add(
                f"memory: run {rows:,} rows: peak RSS",
                f"{_mb(run.peak_rss)} ({rows / run.wall:,.0f} rows/s, wall {run.wall:.1f} s, "
                f"{linked:,} linked)",
                f"< {goal} MB",
                run.peak_rss < goal * MB and linked == rows,
            )

    # -- 6. nights -----------------------------------------------------------------------
    def nights(self) -> None:
        rows = 50_000 if self.quick else 200_000
        path = self.input(rows)
        fast = self.fast()
        with contextlib.ExitStack() as stack:
            if fast.served is not None:
                server = fast
            else:  # the sandbox subprocess counts nothing: one in this process that does
                from bulklink.sandbox import SandboxConfig, serve_in_thread

                sandbox = stack.enter_context(
                    serve_in_thread(SandboxConfig(record=True, token=None))
                )
                server = Server(sandbox.url, "sandbox (in-process)", lambda: len(sandbox.requests))
            self._nights(path, rows, server)

    def _nights(self, path: Path, rows: int, server: Server) -> None:
        assert server.served is not None
        home = self.state_home()
        store = home / STATE_FILE
        opts = ("--rate", "0", "--concurrency", "64")
        try:
            for night in (1, 2):
                before = server.served()
                proc, info = self.run_bulklink(
                    path, server.url, *opts, timeout=1200, state_home=home, keep_report=True
                )
                sent = server.served() - before
                size = sum(
                    f.stat().st_size
                    for f in (store, store.with_name(store.name + "-wal"))
                    if f.exists()
                )
                counts = info["counts"]
                log(f"  night {night}: rc {proc.rc}, {sent:,} requests, counts {counts}")
                self._night_rows(night, rows, proc, sent, counts, size)
        finally:
            self.remove_report(self.report_path(path))

    def _night_rows(
        self, night: int, rows: int, proc: Proc, sent: int, counts: dict[str, int], size: int
    ) -> None:
        done = counts.get("linked" if night == 1 else "already-linked", 0)
        outcome = "linked" if night == 1 else "already-linked"
        expect_sent = rows if night == 1 else 0
        name = f"nights {rows:,} rows: night {night}"
        self.add(
            f"{name}: requests sent",
            f"{sent:,} ({done:,} {outcome}; rc {proc.rc})",
            f"= {expect_sent:,}",
            sent == expect_sent and done == rows and proc.rc == 0,
        )
        wall_goal = 20.0 if night == 2 else None
        self.add(
            f"{name}: wall",
            f"{proc.wall:.1f} s (CPU {proc.cpu:.1f} s, {rows / proc.wall:,.0f} rows/s)",
            "-" if wall_goal is None else f"< {wall_goal:.0f} s",
            None if wall_goal is None else proc.wall < wall_goal,
        )
        self.add(f"{name}: peak RSS", _mb(proc.peak_rss), "< 300 MB", proc.peak_rss < 300 * MB)
        self.add(
            f"{name}: store size",
            f"{size / MB:.1f} MB incl. -wal = {size / rows:.0f} bytes/pair",
            "< 250 B/pair",
            size / rows < 250,
        )

    # -- 7. a million rows, second night --------------------------------------------------
    def million(self) -> None:
        rows = 200_000 if self.quick else 1_000_000
        path = self.input(rows)
        home = self.state_home()
        store = home / STATE_FILE
        url = self.fast().url
        opts = ("--rate", "0", "--concurrency", "64")
        first, info = self.run_bulklink(path, url, *opts, timeout=3600, state_home=home)
        linked = info["counts"].get("linked", 0)
        self.add(
            f"million: night 1, {rows:,} rows CSV",
            f"{first.wall:.0f} s, {linked:,} linked, peak RSS {_mb(first.peak_rss)}",
        )
        size = sum(
            f.stat().st_size for f in (store, store.with_name(store.name + "-wal")) if f.exists()
        )
        self.add(
            f"million: store at {rows:,} pairs",
            f"{size / MB:.0f} MB = {size / rows:.0f} bytes/pair",
            "< 250 B/pair",
            size / rows < 250,
        )
        xlsx = make_xlsx_input(path)
        for name, source in (("CSV", path), ("xlsx in and out", xlsx)):
            proc, info = self.run_bulklink(source, url, *opts, timeout=3600, state_home=home)
            held = info["counts"].get("already-linked", 0)
            self.add(
                f"million: night 2, {rows:,} rows {name}",
                f"{proc.wall:.1f} s (CPU {proc.cpu:.1f} s), peak RSS {_mb(proc.peak_rss)}, "
                f"{held:,} already-linked",
                "-",
                held == rows and info["requests"] == 0,
            )

    # -- 8. budget use under --rate auto -------------------------------------------------
    def budget(self) -> None:
        import budget

        window, limit = (2.0, 100) if self.quick else (5.0, 250)
        log(f"  budget L={limit} per W={window:g} s, reserve {budget.RESERVE:.0%}")
        for figure in budget.figures(self.work, window, limit, 5):
            goal = figure.goal
            self.add(f"budget {limit}/{window:g} s: {figure.name}", figure.value, goal, figure.ok)

    # -- 9. start-up ------------------------------------------------------------------------
    def startup(self) -> None:
        walls = []
        for _ in range(10):
            proc = measure([self.bulklink, "--help"], env=self.env(), timeout=60)
            proc.check("bulklink --help")
            walls.append(proc.wall)
        median = _median(walls)
        self.add(
            "start-up: bulklink --help (median of 10)",
            f"{median:.3f} s (min {min(walls):.3f}, max {max(walls):.3f})",
            "< 0.3 s",
            median < 0.3,
        )


# -- reporting ---------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def machine_lines() -> list[str]:
    cores = os.cpu_count() or 0
    physical = ""
    with contextlib.suppress(Exception):
        import psutil  # type: ignore[import-untyped,unused-ignore]

        physical = f", {psutil.cpu_count(logical=False)} physical"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    try:
        bl_version = version("bulklink")
    except PackageNotFoundError:
        bl_version = "not installed"
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "bulklink") else ""
    try:
        aiohttp_version = version("aiohttp")
    except PackageNotFoundError:
        aiohttp_version = "?"
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = " (load average at start: {:.2f} {:.2f} {:.2f})".format(*os.getloadavg())
    return [
        f"machine: {_cpu_model()}, {cores} logical cores{physical} ({usable} usable){mem}, "
        f"{platform.system()} {platform.release()}{load}",
        f"python:  {platform.python_version()} ({sys.executable})",
        f"bulklink: {bl_version} (git {commit or '?'}{dirty}), aiohttp {aiohttp_version}",
    ]


def table(rows: Sequence[Row]) -> str:
    head = Row("measurement", "figure", "goal")
    cells = [(r.name, r.figure, r.goal, r.verdict) for r in [head, *rows]]
    cells[0] = (head.name, head.figure, head.goal, "result")
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for n, (name, figure, goal, verdict) in enumerate(cells):
        lines.append(f"{name:<{widths[0]}}  {figure:<{widths[1]}}  {goal:<{widths[2]}}  {verdict}")
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def find_bulklink() -> Path:
    beside = Path(sys.executable).with_name("bulklink")
    if beside.exists():
        return beside
    found = shutil.which("bulklink")
    if found is None:
        raise SystemExit("bench: cannot find the bulklink command (install the package)")
    return Path(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="bulklink's performance benchmark (issue 4).",
        epilog="Measurements: " + ", ".join(NAMES),
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs (~3 minutes)")
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help="run only these")
    parser.add_argument(
        "--server",
        choices=("auto", "nginx", "sandbox"),
        default="auto",
        help="fast server: nginx if on PATH (auto), or force one",
    )
    parser.add_argument(
        "--out", type=Path, help="work directory for inputs and reports [default: a temp dir]"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers and children started here are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        work = args.out.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="bulklink-bench-"))
    bench = Bench(args.quick, work, args.server, find_bulklink())
    header = machine_lines()
    for line in header:
        log(line)
    selected = [n for n in NAMES if args.only is None or n in args.only]
    t0 = time.monotonic()
    try:
        for name in selected:
            log(f"[{name}]")
            step: Callable[[], None] = getattr(bench, name)
            started = time.monotonic()
            try:
                step()
            except Exception as exc:
                bench.errors += 1
                traceback.print_exc(file=sys.stderr)
                bench.add(name, f"ERROR: {exc}", ok=False)
            log(f"  ({time.monotonic() - started:.0f}s)")
    finally:
        bench.close()
        if args.out is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    mode = "--quick" if args.quick else "full"
    server = bench._fast.description + bench.server_note if bench._fast else "not needed"
    print("\n".join(header))
    print(f"fast server: {server}")
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"run: {mode}, {time.monotonic() - t0:.0f} s total, load average at end {load}")
    print()
    print(table(bench.rows))
    failed = sum(1 for r in bench.rows if r.ok is False)
    print(f"\n{failed} of {sum(1 for r in bench.rows if r.ok is not None)} goals missed")
    return 2 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
