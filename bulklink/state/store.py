"""The state store: which pairs the API has linked, per scope, and the history of runs.

One SQLite file (standard library, WAL mode, a 30 s busy timeout) that several runs on
different reports can share at once. A pair goes in only after the server linked it, in
batches: one :meth:`Store.record_linked` call is one transaction, so a ``kill -9`` leaves
either the whole batch or none of it, and the next open recovers the WAL left behind.

Interface (all times are UTC text made by :func:`utc_stamp`, ``2026-11-26T03:00:00Z``)::

    path = resolve_state_path(state, os.environ)      # --state, else BULKLINK_STATE, else
                                                      # default_state_path()
    with Store.open(path) as store:                   # creates folder 0700 and file 0600
        scope = Scope(base_url, org_id)               # normalised; "sandbox:" is a scope too
        times = store.linked_times(scope, pairs)      # [linked_at or None] aligned with pairs
        run = store.start_run("run", scope=scope, report=..., input=..., input_hash=...,
                              job=..., command_line=..., started=None)
        store.record_linked(scope, [(source, linked, linked_at), ...], run)
        store.finish_run(run, counts={"linked": 3}, exit_code=0)
        store.runs(limit=20); store.last_run(report); store.last_finished_run(report)
        store.last_success(job)                       # datetime of the last exit-0 run
        store.count_linked(scope)
    Store.open_existing(path)                         # None when there is no store yet

Every failure (a symlink at the path or at a ``-wal``/``-shm``/``-journal`` side file, a
file that is not a bulklink store, a damaged or truncated one, one from a newer bulklink,
a lock held past the busy timeout) raises :class:`~bulklink.errors.StoreError`, a
``UsageError`` (exit 2) with a one-line message naming the path; SQLite's result code,
not its words, tells a lock (:class:`~bulklink.errors.StoreLocked`) and a full disk or an
I/O error (its ``os_error``) apart. Nothing is written to a file that is not ours.
The path is checked with ``O_NOFOLLOW`` before SQLite opens it; SQLite itself opens files
by name, so keep the store's folder writable only by its owner (the default folder is
created 0700).

The tables and what each column means are in the README ("The store's file and tables").

The file identifies itself with ``PRAGMA application_id`` (0x626C6E6B, "blnk") and
versions its schema with ``PRAGMA user_version`` (1).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any

from bulklink.errors import StoreError, StoreLocked
from bulklink.options import StateOptions
from bulklink.state.scope import Scope
from bulklink.text import parse_stamp, utc_stamp

APPLICATION_ID = 0x626C6E6B  # "blnk"
SCHEMA_VERSION = 1
#: Seconds a write waits for another process's lock before giving up (read at each open,
#: so a test can shorten it).
BUSY_TIMEOUT = 30.0
_PROBE_CHUNK = 20_000
_SIDE_FILES = ("-wal", "-shm", "-journal")
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = f"""
CREATE TABLE scopes (
    id       INTEGER PRIMARY KEY,
    base_url TEXT NOT NULL,
    org_id   TEXT NOT NULL,
    UNIQUE (base_url, org_id)
);
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    command      TEXT NOT NULL,
    started      TEXT NOT NULL,
    finished     TEXT,
    input        TEXT,
    input_hash   TEXT,
    report       TEXT NOT NULL,
    job          TEXT,
    scope_id     INTEGER NOT NULL REFERENCES scopes (id),
    counts       TEXT,
    exit_code    INTEGER,
    command_line TEXT NOT NULL
);
CREATE INDEX runs_by_report ON runs (report, id);
CREATE INDEX runs_by_job ON runs (job, exit_code, finished);
CREATE TABLE linked_pairs (
    scope_id  INTEGER NOT NULL REFERENCES scopes (id),
    source    TEXT NOT NULL,
    linked    TEXT NOT NULL,
    linked_at TEXT NOT NULL,
    run_id    INTEGER REFERENCES runs (id),
    PRIMARY KEY (scope_id, source, linked)
) WITHOUT ROWID;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


# Pairs are written by a multi-row upsert, _ROWS_PER_INSERT rows a statement, so the
# per-statement work (Python's executemany step, SQLite's statement start and halt) is paid
# once per 250 rows, not per row; and sorted by source ID alone (a str compare, not a tuple
# compare), which keeps the B-tree walk in order for less than a tuple sort costs (the
# figures: benchmarks/NOTES.md). 250 rows are 750 parameters, under the 999 of SQLite
# builds before 3.32 (SQLITE_MAX_VARIABLE_NUMBER).
_ROWS_PER_INSERT = 250
_INSERT = "INSERT INTO linked_pairs (scope_id, source, linked, linked_at, run_id) VALUES "
_ROW = "({scope}, ?, ?, ?, {run})"
#: SQLite's result codes that are the disk's errors, as the errno they stand for.
_DISK_ERRNO = {sqlite3.SQLITE_FULL: errno.ENOSPC, sqlite3.SQLITE_IOERR: errno.EIO}
_ON_CONFLICT = {
    True: " ON CONFLICT (scope_id, source, linked) "
    "DO UPDATE SET linked_at = excluded.linked_at, run_id = excluded.run_id",
    False: " ON CONFLICT (scope_id, source, linked) DO NOTHING",
}


def default_state_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/bulklink/state.sqlite3`` (Linux), the platform's state dir elsewhere."""
    env = os.environ if env is None else env
    if sys.platform in ("darwin", "win32"):
        import platformdirs  # only these platforms need it

        return platformdirs.user_state_path("bulklink", appauthor=False) / "state.sqlite3"
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        base = Path(xdg)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "state"
    return base / "bulklink" / "state.sqlite3"


def resolve_state_path(state: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """``--state`` beats ``BULKLINK_STATE``, which beats the default location."""
    chosen = os.fspath(state) if state is not None else env.get("BULKLINK_STATE", "")
    return Path(chosen).expanduser() if chosen else default_state_path(env)


def store_path(
    options: StateOptions, *, sandbox: bool, env: Mapping[str, str] | None = None
) -> Path | None:
    """The store a run uses; None: none at all.

    ``--no-state`` uses none; a ``--sandbox`` run uses none unless ``--state`` names one,
    so trying the tool never mixes simulated links into the real record.
    """
    if options.no_state or (sandbox and options.state is None):
        return None
    return resolve_state_path(options.state, os.environ if env is None else env)


@dataclass(frozen=True)
class RunRecord:
    """One ``run`` or ``retry`` as the ``runs`` table holds it."""

    id: int
    command: str
    started: datetime | None  # None: not a date (see ``unreadable``)
    finished: datetime | None
    input: str | None
    input_hash: str | None
    report: str
    job: str | None
    base_url: str
    org_id: str
    counts: dict[str, int]
    exit_code: int | None
    command_line: str
    #: Values someone edited into the history that are not what bulklink writes (a
    #: ``started`` that is no date, ``counts`` that are no object of numbers), as stored:
    #: shown as they are, marked, and never a reason for a run to stop.
    unreadable: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The object ``bulklink runs --json`` prints (unreadable values as stored)."""
        odd = self.unreadable
        return {
            "id": self.id,
            "command": self.command,
            "started": odd["started"] if "started" in odd else _stamp_text(self.started),
            "finished": odd["finished"] if "finished" in odd else _stamp_text(self.finished),
            "input": self.input,
            "input_hash": self.input_hash,
            "report": self.report,
            "job": self.job,
            "base_url": self.base_url,
            "org_id": self.org_id,
            "counts": odd.get("counts", self.counts),
            "exit_code": odd.get("exit_code", self.exit_code),
            "command_line": self.command_line,
        }


_RUN_COLUMNS = (
    "r.id, r.command, r.started, r.finished, r.input, r.input_hash, r.report, r.job, "
    "s.base_url, s.org_id, r.counts, r.exit_code, r.command_line "
    "FROM runs r JOIN scopes s ON s.id = r.scope_id"
)


def _stamp_text(when: datetime | None) -> str | None:
    return utc_stamp(when) if when is not None else None


def _read_stamp(text: Any, column: str, odd: dict[str, Any]) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        return parse_stamp(text)
    except (TypeError, ValueError):
        odd[column] = text
        return None


def _read_counts(text: Any, odd: dict[str, Any]) -> dict[str, int]:
    if text is None or text == "":
        return {}
    try:
        counts = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        counts = None
    numbers = isinstance(counts, dict) and all(type(n) is int for n in counts.values())
    if not numbers:
        odd["counts"] = text
        return {}
    return dict(counts)


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    id_, command, started, finished, input_, input_hash, report, job = row[:8]
    base_url, org_id, counts, exit_code, command_line = row[8:]
    odd: dict[str, Any] = {}
    if exit_code is not None and type(exit_code) is not int:
        odd["exit_code"], exit_code = exit_code, None
    return RunRecord(
        id=id_,
        command=command,
        started=_read_stamp(started, "started", odd),
        finished=_read_stamp(finished, "finished", odd),
        input=_from_db(input_),
        input_hash=input_hash,
        report=_from_db(report) or "",
        job=_from_db(job),
        base_url=base_url,
        org_id=org_id,
        counts=_read_counts(counts, odd),
        exit_code=exit_code,
        command_line=_from_db(command_line) or "",
        unreadable=odd,
    )


def _path_text(path: str | os.PathLike[str] | None) -> str | bytes | None:
    if path is None:
        return None
    text = os.fspath(path)
    return _db_text(text if text == "-" else os.path.abspath(text))  # noqa: PTH100 - no symlinks resolved


def _db_text(text: str | None) -> str | bytes | None:
    """A name as the store keeps it: text, or (a file name that is not UTF-8, such as
    ``caf\\xe9.csv`` from a Latin-1 share) its bytes, which :func:`_from_db` decodes back
    to the same name, so ``runs`` names the same file."""
    if text is None:
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _from_db(value: str | bytes | None) -> str | None:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class Store:
    """An open state store. Safe to share between threads (one call at a time)."""

    def __init__(self, path: Path, db: sqlite3.Connection, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db = db
        self._lock = threading.Lock()
        self._scope_ids: dict[Scope, int] = {}

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float | None = None) -> Store:
        """Open the store at ``path``, creating it (and its folder, 0700) if missing."""
        store = cls._open(Path(path), create=True, busy_timeout=busy_timeout)
        assert store is not None  # create=True opens or raises
        return store

    @classmethod
    def open_existing(
        cls, path: str | os.PathLike[str], *, busy_timeout: float | None = None
    ) -> Store | None:
        """The store at ``path`` to read, or None when there is none (``runs``,
        ``--dry-run``): opened read-only, so a store on a read-only file system (a
        mounted backup, a locked-down host) can still be looked at."""
        return cls._open(Path(path), create=False, busy_timeout=busy_timeout)

    @classmethod
    def _open(cls, path: Path, *, create: bool, busy_timeout: float | None) -> Store | None:
        busy_timeout = BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        fd = _open_file(path, create)
        if fd is None:
            return None
        try:
            header = os.pread(fd, 100, 0)
            if header:
                _check_header(path, header)
            _check_side_files(path)
            try:
                db = _connect(path, busy_timeout, read_only=not create)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the state store {path}: {exc}") from None
            store = cls(path, db, busy_timeout)
            try:
                with store._errors():
                    if create:
                        store._prepare(fd)
                    else:
                        store._check_readable(fd)
                _check_side_files(path)
            except BaseException:
                db.close()
                raise
            return store
        finally:
            os.close(fd)

    def _check_readable(self, fd: int) -> None:
        """A store opened to read: recognised, and the file that was checked."""
        app, version, tables = _identity(self._db)
        if (app, version, tables) != (0, 0, 0):
            _check_identity(self.path, app, version)
        self._check_unreplaced(fd)

    def _check_unreplaced(self, fd: int) -> None:
        st, now = os.fstat(fd), os.lstat(self.path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            raise StoreError(f"the state store {self.path} was replaced while opening it")

    def _prepare(self, fd: int) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            app, version, tables = _identity(db)
            if (app, version, tables) != (0, 0, 0):
                # SQLite itself calls a file shorter than its header says "malformed".
                _check_identity(self.path, app, version)
        finally:
            if db.in_transaction:
                db.execute("COMMIT")
        if (app, version, tables) == (0, 0, 0):
            # Created in rollback mode, so page 1 (with the application_id) is in the main
            # file before the switch to WAL: a crash never leaves an unrecognisable file.
            db.execute("BEGIN IMMEDIATE")
            try:
                app, version, tables = _identity(db)
                if (app, version, tables) == (0, 0, 0):
                    # Not executescript(): it would commit first, outside this transaction.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                db.execute("COMMIT")
                _check_identity(self.path, *_identity(db)[:2])
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed batch survives a power cut too; it costs one fsync a batch.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA temp_store = MEMORY")
        # Random IDs touch pages all over the tree: a 32 MB cache and checkpoints every
        # 40 MB of WAL (not 4 MB) make a batch cheaper (benchmarks/NOTES.md).
        db.execute("PRAGMA cache_size = -32768")
        db.execute("PRAGMA wal_autocheckpoint = 10000")
        db.execute("PRAGMA journal_size_limit = 67108864")
        self._check_unreplaced(fd)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- linked pairs -------------------------------------------------------------------

    def linked_times(self, scope: Scope, pairs: Iterable[tuple[str, str]]) -> list[str | None]:
        """``linked_at`` of each pair already linked in ``scope``, None for the others.

        The pairs go into a temporary table 20,000 at a time, joined against the primary
        key (``CROSS JOIN`` keeps the probe as the outer loop), so memory stays flat.
        """
        out: list[str | None] = []
        it = iter(pairs)
        with self._lock, self._errors():
            sid = self._scope_id(scope)
            if sid is None:
                for _ in it:
                    out.append(None)
                return out
            db = self._db
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS probe "
                "(i INTEGER PRIMARY KEY, source TEXT NOT NULL, linked TEXT NOT NULL)"
            )
            while chunk := list(islice(it, _PROBE_CHUNK)):
                base = len(out)
                out.extend([None] * len(chunk))
                db.execute("BEGIN")
                try:
                    # An empty table numbers new rows from 1 (documented by SQLite).
                    db.execute("DELETE FROM temp.probe")
                    db.executemany("INSERT INTO temp.probe (source, linked) VALUES (?, ?)", chunk)
                    for i, linked_at in db.execute(
                        "SELECT p.i, l.linked_at FROM temp.probe p CROSS JOIN linked_pairs l "
                        "ON l.scope_id = ? AND l.source = p.source AND l.linked = p.linked",
                        (sid,),
                    ):
                        out[base + i - 1] = linked_at
                    db.execute("DELETE FROM temp.probe")
                finally:
                    db.execute("COMMIT")
        return out

    def record_linked(
        self,
        scope: Scope,
        rows: Iterable[tuple[str, str, str]],
        run_id: int | None,
        *,
        replace: bool = True,
    ) -> int:
        """Record ``(source, linked, linked_at)`` rows the API linked, in one transaction.

        ``linked_at`` is :func:`utc_stamp` text. A pair already recorded takes the new time
        and run (``--relink``, or two runs linking the same pair): the latest link wins;
        with ``replace=False`` it is kept as it is (pairs recovered from a journal).
        Returns the number of rows written. Larger batches cost less a pair (random IDs;
        benchmarks/NOTES.md).
        """
        ordered: list[tuple[str, str, str]] = sorted(rows, key=itemgetter(0))
        if ordered and set(map(len, ordered)) != {3}:  # any other size would shift the rest
            raise ValueError("record_linked takes (source, linked, linked_at) rows")
        flat = list(chain.from_iterable(ordered))
        width = 3 * _ROWS_PER_INSERT
        whole = len(flat) - len(flat) % width
        with self._write() as db:
            sid = int(self._scope_id(scope, create=True) or 0)
            # The two constants are ints spliced in, so each row binds only its 3 texts.
            row = _ROW.format(scope=sid, run="NULL" if run_id is None else int(run_id))
            tail = _ON_CONFLICT[replace]
            written = 0
            if whole:
                many = _INSERT + ",".join([row] * _ROWS_PER_INSERT) + tail
                written += db.executemany(many, _slices(flat, 0, whole, width)).rowcount
            if whole < len(flat):
                written += db.executemany(
                    _INSERT + row + tail, _slices(flat, whole, len(flat), 3)
                ).rowcount
            return max(written, 0)

    def count_linked(self, scope: Scope) -> int:
        with self._lock, self._errors():
            sid = self._scope_id(scope)
            if sid is None:
                return 0
            row = self._db.execute(
                "SELECT count(*) FROM linked_pairs WHERE scope_id = ?", (sid,)
            ).fetchone()
            return int(row[0])

    def has_linked(self, scope: Scope) -> bool:
        """Whether any pair is recorded in ``scope``: a first night looks nothing up."""
        with self._lock, self._errors():
            sid = self._scope_id(scope)
            if sid is None:
                return False
            row = self._db.execute(
                "SELECT 1 FROM linked_pairs WHERE scope_id = ? LIMIT 1", (sid,)
            ).fetchone()
            return row is not None

    # -- run history --------------------------------------------------------------------

    def start_run(
        self,
        command: str,
        *,
        scope: Scope,
        report: str | os.PathLike[str],
        command_line: str,
        input: str | os.PathLike[str] | None = None,
        input_hash: str | None = None,
        job: str | None = None,
        started: datetime | None = None,
    ) -> int:
        """Record that a ``run``/``retry`` began; the id goes with its linked pairs."""
        with self._write() as db:
            sid = self._scope_id(scope, create=True)
            cur = db.execute(
                "INSERT INTO runs (command, started, input, input_hash, report, job, scope_id, "
                "command_line) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (command, utc_stamp(started), _path_text(input), input_hash,
                 _path_text(report), _db_text(job), sid, _db_text(command_line)),
            )  # fmt: skip
            assert cur.lastrowid is not None  # an INSERT always sets it
            return cur.lastrowid

    def finish_run(
        self,
        run_id: int,
        *,
        counts: Mapping[str, int],
        exit_code: int,
        finished: datetime | None = None,
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET finished = ?, counts = ?, exit_code = ? WHERE id = ?",
                (utc_stamp(finished), json.dumps(dict(counts)), exit_code, run_id),
            )

    def runs(self, limit: int | None = 20) -> list[RunRecord]:
        """The most recent runs, newest first (``limit=None``: all of them)."""
        return self._runs("1 = 1 ORDER BY r.id DESC LIMIT ?", (-1 if limit is None else limit,))

    def last_run(self, report: str | os.PathLike[str]) -> RunRecord | None:
        """The newest run on ``report``, finished or not (a killed one has no ``finished``)."""
        found = self._runs("r.report = ? ORDER BY r.id DESC LIMIT 1", (_path_text(report),))
        return found[0] if found else None

    def last_finished_run(self, report: str | os.PathLike[str]) -> RunRecord | None:
        found = self._runs(
            "r.report = ? AND r.finished IS NOT NULL ORDER BY r.id DESC LIMIT 1",
            (_path_text(report),),
        )
        return found[0] if found else None

    def last_success(self, job: str) -> datetime | None:
        """When the last run of ``job`` that exited 0 finished (for metrics)."""
        with self._lock, self._errors():
            row = self._db.execute(
                "SELECT max(finished) FROM runs WHERE job = ? AND exit_code = 0", (_db_text(job),)
            ).fetchone()
        return _read_stamp(row[0], "finished", {}) if row else None

    def _runs(self, where: str, params: tuple[Any, ...]) -> list[RunRecord]:
        with self._lock, self._errors():
            rows = self._db.execute(f"SELECT {_RUN_COLUMNS} WHERE {where}", params).fetchall()
        return [_run_record(row) for row in rows]

    # -- plumbing -----------------------------------------------------------------------

    def _scope_id(self, scope: Scope, *, create: bool = False) -> int | None:
        """The scope's row id; created only inside a write transaction (``create``)."""
        if scope in self._scope_ids:
            return self._scope_ids[scope]
        key = (scope.base_url, scope.org_id)
        query = "SELECT id FROM scopes WHERE base_url = ? AND org_id = ?"
        row = self._db.execute(query, key).fetchone()
        if row is not None:
            # Only ids read back are cached: an inserted one could still be rolled back.
            self._scope_ids[scope] = int(row[0])
            return int(row[0])
        if not create:
            return None
        cur = self._db.execute("INSERT INTO scopes (base_url, org_id) VALUES (?, ?)", key)
        assert cur.lastrowid is not None  # an INSERT always sets it
        return cur.lastrowid

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``IMMEDIATE``) so it waits, never deadlocks."""
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreLocked(
                    f"the state store {self.path} stayed locked by another process "
                    f"past the busy timeout ({self.busy_timeout:g} s)"
                ) from None
            number = _DISK_ERRNO.get(code)
            raise StoreError(
                f"the state store {self.path} cannot be used: {exc}",
                os_error=OSError(number, os.strerror(number)) if number else None,
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the state store {self.path} is damaged or truncated ({exc}); "
                "nothing was changed: move it aside to start a new one"
            ) from None


def _slices(flat: list[str], start: int, stop: int, width: int) -> list[list[str]]:
    return [flat[i : i + width] for i in range(start, stop, width)]


def _connect(path: Path, busy_timeout: float, *, read_only: bool) -> sqlite3.Connection:
    """A connection; to read only, ``mode=ro``, else (a read-only file system, where
    SQLite cannot make the WAL's shared-memory file) ``immutable=1``: nobody can be
    writing a store there."""

    def connect(target: str | Path, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=uri
        )

    if not read_only:
        return connect(path)
    uri = path.absolute().as_uri()
    db = connect(f"{uri}?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        return connect(f"{uri}?immutable=1", uri=True)


def _open_file(path: Path, create: bool) -> int | None:
    """An ``O_NOFOLLOW`` descriptor of the store file, created 0600 (folder 0700) if missing."""
    try:
        if create and not path.parent.exists():
            _private_folders(path.parent)
        while True:
            fd = _open_once(path, create)
            if fd != _RACED:
                return fd
    except FileNotFoundError:
        if not create:
            return None
        raise StoreError(f"cannot create the state store {path}: its folder is missing") from None
    except OSError as exc:
        if stat.S_ISLNK(_lmode(path)):
            raise _symlink_refused(path) from None
        raise StoreError(f"cannot open the state store {path}: {exc.strerror}") from None


def _private_folders(folder: Path) -> None:
    """Each missing folder up to ``folder`` created 0700 whatever the umask (``mkdir``'s
    mode is masked by it, and ``parents=True`` gives the parents the default mode)."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(0o700)
        except FileExistsError:
            continue  # another process made it: its mode is its own
        made.chmod(0o700)


_RACED = -2  # another process created the file between our look and our create
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_once(path: Path, create: bool) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except FileExistsError:
            return _RACED  # check what it is
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_refused(path)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"the state store {path} is not a regular file")
    return os.open(path, os.O_RDONLY | _NOFOLLOW)


def _symlink_refused(path: Path) -> StoreError:
    return StoreError(
        f"refusing to use the state store {path}: it is a symbolic link "
        "(bulklink never writes through one)"
    )


def _lmode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _check_side_files(path: Path) -> None:
    """SQLite opens ``-wal``, ``-shm`` and ``-journal`` by name: a planted link is refused."""
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        mode = _lmode(side)
        if mode and not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise StoreError(f"refusing to use the state store {path}: {side} is {kind}")


def _check_header(path: Path, header: bytes) -> None:
    """Refuse another application's file before SQLite touches it (no side files made)."""
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(
            f"{path} is not a bulklink state store (not an SQLite database); nothing was changed"
        )
    # The application_id is written with page 1 by the transaction that creates the
    # schema and never changes, so the main file's copy is current even with a WAL.
    app = int.from_bytes(header[68:72], "big")
    if app != APPLICATION_ID:
        raise StoreError(
            f"{path} is not a bulklink state store (an SQLite database of another "
            "application); nothing was changed"
        )


def _identity(db: sqlite3.Connection) -> tuple[int, int, int]:
    app = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return int(app), int(version), int(tables)


def _check_identity(path: Path, app: int, version: int) -> None:
    if app != APPLICATION_ID:
        raise StoreError(
            f"{path} is not a bulklink state store (an SQLite database of another "
            "application); nothing was changed"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the state store {path} was written by a newer bulklink (schema {version}; "
            f"this one reads up to {SCHEMA_VERSION})"
        )
    if version < 1:
        raise StoreError(f"the state store {path} is damaged (no schema version)")
