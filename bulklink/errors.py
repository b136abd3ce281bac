"""The exceptions bulklink raises, one tree so callers can catch what they mean.

    BulklinkError                 base of everything below; ``exit_code`` is the CLI's
    ├── UsageError                bad options or environment (exit 2)
    │   ├── TokenExpiredError     the Bearer JWT's ``exp`` is in the past (exit 2)
    │   └── StoreError            the state store cannot be used as it is (exit 2)
    │       └── StoreLocked       another process held it past the busy timeout
    ├── InputError                the input file cannot be used; nothing was sent (exit 2)
    ├── LockedError               another run holds the report's lock (exit 75)
    ├── CredentialsRejected       the API answered 401/403; the run stopped (exit 3)
    ├── Blocked                   the server's certificate or the TLS handshake failed,
    │                             or the proxy refused us (407); the run stopped (exit 3)
    ├── Interrupted               SIGINT/SIGTERM/SIGHUP stopped the run (exit 130/143/129)
    ├── DiskError                 a file could not be written (a full disk, a state store
    │                             locked by another process); the run stopped, the
    │                             journal keeps what was written (exit 74)
    └── InternalError             a bug in bulklink itself stopped the run (exit 70)

The last five carry the :class:`~bulklink.models.Summary` of the run so far when they
come out of :func:`bulklink.run_job` and the report was still written (``None`` when it
could not be). Messages never contain the token or API key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulklink.models import Summary

#: Where an :class:`InternalError` asks to be reported.
REPORT_BUGS_TO = "the bulklink maintainers"


class BulklinkError(Exception):
    """Base of every error bulklink raises on purpose."""

    exit_code: int = 1


class UsageError(BulklinkError):
    """Options or environment do not make a runnable job."""

    exit_code = 2


class SameFileError(UsageError):
    """Two roles of a run (the input, the report, ``--log-file``...) given one file;
    ``roles`` names every role that shares a file with another."""

    def __init__(self, message: str, roles: tuple[str, ...]) -> None:
        super().__init__(message)
        self.roles = roles


class TokenExpiredError(UsageError):
    """The Bearer token's JWT ``exp`` claim is already past: sending would only collect 401s."""


class StoreError(UsageError):
    """The state store cannot be used as it is; nothing was sent and nothing overwritten.

    ``os_error`` is the disk's error behind it when SQLite gave one (a full disk, an I/O
    error), so that a run stopped by it says what any other full disk says (exit 74).
    """

    def __init__(self, message: str, *, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class StoreLocked(StoreError):
    """Another process (an ``sqlite3`` shell, a ``VACUUM``) held the store past the busy
    timeout: nothing is wrong with the disk, so the message must not say so."""


class InputError(BulklinkError):
    """The input file is missing, unreadable, of an unknown kind or lacks the ID columns."""

    exit_code = 2


class LockedError(BulklinkError):
    """Another process is working on the same report; two runs would trample each other."""

    exit_code = 75


class Stopped(BulklinkError):
    """A run that stopped early but still wrote its report."""

    def __init__(self, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class CredentialsRejected(Stopped):
    """The API answered 401 or 403: the token, key or org is wrong, so no row can succeed."""

    exit_code = 3


class Blocked(Stopped):
    """No request can succeed until a person acts: the server could not be trusted (its
    certificate did not verify, the TLS handshake failed) or the proxy answered 407."""

    exit_code = 3


class Interrupted(Stopped):
    """A signal stopped the run; undone rows are ``skipped`` and the journal allows a resume.

    SIGHUP (a dropped ssh session) counts as SIGTERM does; the exit code is 128 + signal.
    """

    def __init__(self, message: str, signum: int, summary: Summary | None = None) -> None:
        super().__init__(message, summary)
        self.signum = signum
        self.exit_code = 128 + signum


class DiskError(Stopped):
    """A write failed (journal, report, summary or log): sending stopped at once.

    Every result written before it is in the journal, so the same command, run again once
    there is room, resumes; ``path`` is the file that could not be written.
    """

    exit_code = 74  # EX_IOERR

    def __init__(
        self,
        error: OSError,
        path: Path | str,
        summary: Summary | None = None,
        *,
        message: str | None = None,
    ) -> None:
        super().__init__(message or f"{error.strerror or error}: {path}", summary)
        self.path = Path(path)


class InternalError(Stopped):
    """Something unexpected was raised inside bulklink: a bug, not the data or the API.

    The run stopped as a signal stops it (requests in flight finished, the report
    written with the rest ``skipped``, the journal kept); ``__cause__`` holds the original
    exception and its traceback.
    """

    exit_code = 70  # EX_SOFTWARE
