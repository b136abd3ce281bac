"""What a run says while it works: notes, a progress bar or periodic log lines, a log file.

At a terminal the progress is a bar on stderr; without one (cron, CI, a pipe, or
``TERM=dumb``) it is a plain log line at most every ``LOG_EVERY`` seconds, never a
carriage return. ``quiet`` silences everything but errors on stderr; the log file, when
given, gets every line with a timestamp whatever ``quiet`` says. The library default
prints nothing at all.

Saying things never changes a run's result: a closed pipe on stderr (``| head -1``) is
ignored from then on, and a log file that cannot be written any more is noted in
:attr:`Console.log_failure` (for the run to stop on) instead of raising.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from bulklink.text import escape_controls, format_duration, utc_stamp

LOG_EVERY = 10.0


def _open_log(path: Path) -> int:
    """The log for appending, never through a link planted at its name; a regular file
    (created 0640) or a character device such as ``/dev/full`` or a terminal."""
    import errno
    import stat

    from bulklink.errors import UsageError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "is a symbolic link; bulklink never writes through one"
        else:
            reason = f"cannot be opened: {exc.strerror}"
        raise UsageError(f"--log-file {path} {reason}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        os.close(fd)
        raise UsageError(f"--log-file {path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


class Console:
    """Where a run's words go. ``Console.silent()`` is the library's default."""

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        quiet: bool = False,
        progress: bool | None = None,
        log_file: Path | None = None,
        redact: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.stream = stream
        self.quiet = quiet
        tty = stream is not None and stream.isatty()
        # A terminal that says it cannot move the cursor (TERM=dumb: Emacs' shell, some
        # CI consoles) would show each redraw of a bar as a new line of junk.
        dumb = os.environ.get("TERM", "") == "dumb"
        wanted = tty if progress is None else progress
        self.bar_wanted = wanted and not (quiet or dumb) and stream
        self.log_lines = (
            stream is not None
            and not quiet
            and not self.bar_wanted
            and (progress is None or progress)
        )
        self.redact = redact
        self._log: IO[str] | None = None
        self.log_path = log_file
        #: The first failed write to the log file; nothing more is written to it.
        self.log_failure: OSError | None = None
        if log_file is not None:
            self._log = os.fdopen(_open_log(log_file), "a", encoding="utf-8")
        self._bar: Any = None
        self._total = 0
        self._done = 0
        self._t0 = time.monotonic()
        self._last_line = 0.0

    @classmethod
    def silent(cls) -> Console:
        return cls()

    def _to_log(self, text: str) -> None:
        if self._log is not None:
            stamp = utc_stamp()
            try:
                self._log.write(f"{stamp} {escape_controls(text)}\n")
                self._log.flush()
            except OSError as exc:
                self.log_failure = exc
                log, self._log = self._log, None
                with contextlib.suppress(OSError):
                    log.close()

    def _print(self, text: str) -> None:
        with self._gone_quietly():
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def _gone_quietly(self) -> Iterator[None]:
        """A reader that went away (EPIPE: ``| head``; EIO: the ssh session dropped) only
        silences the stream from then on: saying things never changes a run's result."""
        try:
            yield
        except OSError:
            if self.stream is not None:
                mute(self.stream)
            self.stream = None
            self.log_lines = False
            self._bar = None

    def _say(self, text: str, *, force: bool = False) -> None:
        """One line out: redacted, then every control character made visible."""
        text = escape_controls(self.redact(text))
        self._to_log(text)
        if self.stream is not None and (force or not self.quiet):
            self._print(text)

    def trace(self, text: str) -> None:
        """To the log file only: what an operator needs later (a traceback), not now; one
        log line per line of it, so it reads as it was printed."""
        for line in self.redact(text).splitlines():
            self._to_log(line)

    def info(self, text: str) -> None:
        self._say(text)

    def error(self, text: str) -> None:
        self._say(text, force=True)

    def summary(self, text: str, *, important: bool) -> None:
        """The closing lines: shown even with ``quiet`` when something needs attention."""
        self._say(text, force=important)

    # -- progress -----------------------------------------------------------------------
    def start_progress(self, total: int) -> None:
        self._total = total
        self._t0 = self._last_line = time.monotonic()
        if self.bar_wanted and total:
            from tqdm import tqdm

            # shutil falls back to $COLUMNS/$LINES or 80x24 where a pty reports a size of
            # 0x0; tqdm's own probe would then hide the bar (no rows to draw it on).
            size = shutil.get_terminal_size()
            with self._gone_quietly():
                self._bar = tqdm(
                    total=total,
                    file=self.stream,
                    unit="row",
                    ncols=size.columns,
                    nrows=size.lines,
                    smoothing=0.1,
                    leave=False,
                )

    def progress(self, done: int, in_flight: int) -> None:
        if self._bar is not None:
            with self._gone_quietly():
                self._bar.update(done - self._done)
                self._bar.set_postfix_str(f"in flight {in_flight}", refresh=False)
        self._done = done
        now = time.monotonic()
        if self._bar is None and now - self._last_line >= LOG_EVERY and self._total:
            self._last_line = now
            line = self._line(done, now)
            self._to_log(line)
            if self.log_lines:
                self._print(line)

    def _line(self, done: int, now: float) -> str:
        elapsed = now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / self._total if self._total else 100.0
        return (
            f"progress: {done}/{self._total} rows ({pct:.1f}%), {rate:.1f} rows/s, "
            f"ETA {format_duration(round(eta))}"
        )

    def finish_progress(self, done: int) -> None:
        if self._bar is not None:
            with self._gone_quietly():
                self._bar.update(done - self._done)
                self._bar.close()
            self._bar = None
        self._done = done

    def forget_log(self) -> None:
        """Write nothing more to the log file (it is a file the run must not touch)."""
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def close(self) -> None:
        self.finish_progress(self._done)
        if self._log is not None:
            self._log.close()
            self._log = None


def mute(stream: IO[str]) -> None:
    """Point a stream whose reader went away at /dev/null, so that later writes, and the
    interpreter's flush at exit, succeed quietly instead of raising EPIPE again."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
