"""The state store on its own: location and modes, refusals, scopes, batches, crashes, history."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bulklink.errors import StoreError, UsageError
from bulklink.state.scope import Scope
from bulklink.state.store import Store, default_state_path, resolve_state_path
from bulklink.text import utc_stamp

ROOT = Path(__file__).resolve().parents[1]
THENA = Scope("https://platform.thena.ai", "org_1")
T1 = "2026-11-25T02:00:00Z"
T2 = "2026-11-26T02:00:00Z"


def ids(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"{prefix}S{i:026d}", f"{prefix}L{i:026d}") for i in range(n)]


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """A child Python with this checkout's ``bulklink`` first on its path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def linked_in(path: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return set(db.execute("SELECT source, linked FROM linked_pairs"))


# -- location and permissions ---------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="XDG paths are the Linux rule")
def test_default_location_is_under_xdg_state_home_with_private_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = default_state_path()
    assert path == tmp_path / "xdg" / "bulklink" / "state.sqlite3"
    with Store.open(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(sys.platform != "linux", reason="XDG paths are the Linux rule")
def test_without_xdg_state_home_the_store_is_under_home_local_state(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": "relative/is/ignored"}
    assert default_state_path(env) == tmp_path / ".local/state/bulklink/state.sqlite3"


def test_state_option_beats_the_variable_which_beats_the_default(tmp_path: Path) -> None:
    env = {"BULKLINK_STATE": str(tmp_path / "env.sqlite3"), "HOME": str(tmp_path)}
    assert resolve_state_path(tmp_path / "opt.sqlite3", env) == tmp_path / "opt.sqlite3"
    assert resolve_state_path(None, env) == tmp_path / "env.sqlite3"
    assert resolve_state_path(None, {"HOME": str(tmp_path)}) == default_state_path(
        {"HOME": str(tmp_path)}
    )


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with Store.open(tmp_path / "s.sqlite3"):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_open_existing_creates_nothing(tmp_path: Path) -> None:
    assert Store.open_existing(tmp_path / "no" / "s.sqlite3") is None
    assert not (tmp_path / "no").exists()


# -- refusals: symlinks, foreign and damaged files ------------------------------------------


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_at_the_store_path_is_refused_and_never_written_through(
    tmp_path: Path, dangling: bool
) -> None:
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("precious\n")
    path = tmp_path / "state.sqlite3"
    path.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link") as info:
        Store.open(path)
    assert str(path) in str(info.value)
    assert (target.read_text() == "precious\n") if not dangling else not target.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_symlink_at_a_side_file_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "state.sqlite3"
    with Store.open(path) as store:
        store.record_linked(THENA, [("A", "B", T1)], None)
    target = tmp_path / "victim"
    (tmp_path / f"state.sqlite3{suffix}").symlink_to(target)
    with pytest.raises(StoreError, match=f"state.sqlite3{suffix} is a symbolic link"):
        Store.open(path)
    assert not target.exists()


def _other_app_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    sqlite3.connect(path).close()


def _truncated_store(path: Path) -> None:
    with Store.open(path) as store:
        store.record_linked(THENA, [(s, t, T1) for s, t in ids("X", 3000)], None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _newer_store(path: Path) -> None:
    with Store.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(os.urandom(8192)), "not a bulklink state store"),
        (lambda p: p.write_text("sourceTicketId,linkedTicketId\nA,B\n"), "not an SQLite"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 40), "not a bulklink"),
        (_other_app_db, "another application"),
        (_truncated_store, "is damaged"),
        (_newer_store, "newer bulklink"),
    ],
    ids=["random-bytes", "text-file", "short-header", "other-app", "truncated", "newer"],
)
def test_a_file_that_is_not_a_usable_store_is_one_line_and_left_untouched(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "state.sqlite3"
    make(path)  # type: ignore[operator]
    before = path.read_bytes()
    others = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StoreError) as info:
        Store.open(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == others


def test_a_directory_at_the_store_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        Store.open(tmp_path / "state.sqlite3")


# -- linked pairs -----------------------------------------------------------------------------


def test_record_and_look_up_round_trip(tmp_path: Path) -> None:
    pairs = ids("R", 50)
    with Store.open(tmp_path / "s.sqlite3") as store:
        run = store.start_run("run", scope=THENA, report="r.csv", command_line="bulklink run")
        assert store.record_linked(THENA, [(s, t, T1) for s, t in pairs[:30]], run) == 30
        asked = [*pairs[25:], pairs[0], ("nope", "never")]
        got = store.linked_times(THENA, asked)
        assert got == [T1] * 5 + [None] * 20 + [T1, None]
        assert store.count_linked(THENA) == 30
    with Store.open(tmp_path / "s.sqlite3") as store:
        assert store.linked_times(THENA, pairs[:2]) == [T1, T1]


def test_lookups_beyond_one_probe_chunk_stay_aligned(tmp_path: Path) -> None:
    pairs = ids("C", 45_000)
    with Store.open(tmp_path / "s.sqlite3") as store:
        store.record_linked(THENA, [(s, t, T1) for s, t in pairs[::3]], None)
        got = store.linked_times(THENA, iter(pairs))
    assert got == [T1 if i % 3 == 0 else None for i in range(len(pairs))]


def test_a_pair_linked_in_one_scope_never_counts_for_another(tmp_path: Path) -> None:
    pair = [("SRC", "LNK")]
    with Store.open(tmp_path / "s.sqlite3") as store:
        store.record_linked(THENA, [("SRC", "LNK", T1)], None)
        for other in (
            Scope("https://platform.thena.ai", "org_2"),
            Scope("https://staging.thena.ai", "org_1"),
            Scope("https://platform.thena.ai/v2", "org_1"),
            Scope("sandbox:", "org_1"),
            Scope("https://platform.thena.ai"),
        ):
            assert store.linked_times(other, pair) == [None], other
        # The same server spelled differently is the same scope.
        same = Scope("HTTPS://Platform.Thena.AI:443/", "org_1")
        assert same == THENA
        assert store.linked_times(same, pair) == [T1]


def test_relink_updates_the_time_and_run_that_the_readme_query_shows(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    source, linked = "CT4NVX0K10YJQ3X0185THN9R6H9M3", "CT4NVX0K10YJQ3X0185THN9R6H9M4"
    with Store.open(path) as store:
        first = store.start_run("run", scope=THENA, report="a.csv", command_line="bulklink run")
        store.record_linked(THENA, [(source, linked, T1)], first)
        second = store.start_run("run", scope=THENA, report="a.csv", command_line="--relink")
        store.record_linked(THENA, [(source, linked, T2)], second)
        assert store.linked_times(THENA, [(source, linked)]) == [T2]
        assert store.count_linked(THENA) == 1
    # The README's example query answers the question.
    doc = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    query = re.search(r'state\.sqlite3 "\n(.*?)"\n', doc, re.DOTALL)
    assert query is not None
    with sqlite3.connect(path) as db:
        row = db.execute(query.group(1)).fetchone()
    assert row[:2] == (T2, second)
    assert row[4:] == ("--relink", "https://platform.thena.ai", "org_1")


def test_batches_of_several_statements_replace_or_keep_every_row(tmp_path: Path) -> None:
    # 610 rows: two statements of 250 rows, then 110 one by one; a pair twice in a batch.
    pairs = ids("M", 600)
    path = tmp_path / "s.sqlite3"
    with Store.open(path) as store:
        first = store.start_run("run", scope=THENA, report="a.csv", command_line="one")
        rows = [(s, t, T1) for s, t in pairs[:300]]
        assert store.record_linked(THENA, rows + rows[:10], first) == 310
        kept = [(s, t, T2) for s, t in pairs]  # half known: those keep T1 and the first run
        assert store.record_linked(THENA, kept, None, replace=False) == 300
        assert store.linked_times(THENA, pairs) == [T1] * 300 + [T2] * 300
        second = store.start_run("run", scope=THENA, report="a.csv", command_line="two")
        assert store.record_linked(THENA, [(s, t, T2) for s, t in pairs[::-1]], second) == 600
        assert store.linked_times(THENA, pairs) == [T2] * 600
        assert store.count_linked(THENA) == 600
    with sqlite3.connect(path) as db:
        runs = db.execute("SELECT run_id, count(*) FROM linked_pairs GROUP BY run_id").fetchall()
    assert runs == [(second, 600)]


@pytest.mark.parametrize(
    "rows",
    [
        [("A", "B", T1), ("C", "D")],
        [("A", "B", T1, "X"), ("C", "D")],  # six values in all: would shift into two rows
    ],
)
def test_a_row_of_the_wrong_size_is_refused_before_anything_is_written(
    tmp_path: Path, rows: list[tuple[str, str, str]]
) -> None:
    with Store.open(tmp_path / "s.sqlite3") as store:
        with pytest.raises(ValueError, match="source, linked, linked_at"):
            store.record_linked(THENA, rows, None)
        assert store.count_linked(THENA) == 0


def test_a_failed_batch_records_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite3") as store:
        rows: list[tuple[str, str, str]] = [("A", "B", T1), ("C", None, T1)]  # type: ignore[list-item]
        with pytest.raises(StoreError):
            store.record_linked(THENA, rows, None)
        assert store.linked_times(THENA, [("A", "B")]) == [None]


def test_utc_stamp_is_seconds_with_z() -> None:
    when = datetime(2026, 11, 26, 3, 4, 5, 678, tzinfo=UTC)
    assert utc_stamp(when) == "2026-11-26T03:04:05Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_stamp())


# -- two processes, crashes -------------------------------------------------------------------

WRITER = """
    import sys, time
    from pathlib import Path
    from bulklink.state.scope import Scope
    from bulklink.state.store import Store
    path, prefix, gate = sys.argv[1:]
    while not Path(gate).exists():
        time.sleep(0.005)
    scope = Scope("https://platform.thena.ai", "org_1")
    with Store.open(path) as store:
        run = store.start_run("run", scope=scope, report=prefix + ".csv", command_line="x")
        for b in range(50):
            rows = [(f"{prefix}S{b}-{i}", f"{prefix}L{b}-{i}", "2026-11-26T02:00:00Z")
                    for i in range(100)]
            store.record_linked(scope, rows, run)
        store.finish_run(run, counts={"linked": 5000}, exit_code=0)
"""


def test_two_processes_record_into_one_store_at_once(tmp_path: Path) -> None:
    path, gate = tmp_path / "s.sqlite3", tmp_path / "go"
    children = [python(WRITER, str(path), prefix, str(gate)) for prefix in ("A", "B")]
    gate.touch()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    with Store.open(path) as store:
        for prefix in ("A", "B"):
            pairs = [
                (f"{prefix}S{b}-{i}", f"{prefix}L{b}-{i}") for b in range(50) for i in range(100)
            ]
            assert None not in store.linked_times(THENA, pairs)
        assert store.count_linked(THENA) == 10_000
        assert [r.exit_code for r in store.runs()] == [0, 0]


CRASHER = """
    import os, sys
    from bulklink.state.scope import Scope
    from bulklink.state.store import Store
    path, when = sys.argv[1:]
    scope = Scope("https://platform.thena.ai", "org_1")
    store = Store.open(path)
    store.record_linked(scope, [("DONE", "BATCH", "2026-11-26T02:00:00Z")], None)
    if when == "after-commit":
        os._exit(9)
    rows = [(f"S{i}", f"L{i}", "2026-11-26T02:00:00Z") for i in range(20_000)]
    with store._write() as db:
        db.executemany(
            "INSERT INTO linked_pairs (scope_id, source, linked, linked_at) "
            "VALUES ((SELECT id FROM scopes), ?, ?, ?)", rows)
        os._exit(9)  # killed mid-batch: inserted, never committed
"""


@pytest.mark.parametrize("when", ["mid-batch", "after-commit"])
def test_a_killed_writer_leaves_whole_batches_and_an_openable_store(
    tmp_path: Path, when: str
) -> None:
    path = tmp_path / "s.sqlite3"
    child = python(CRASHER, str(path), when)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 9, err
    assert (tmp_path / "s.sqlite3-wal").exists()  # the crash left its WAL behind
    with Store.open(path) as store:
        assert store.linked_times(THENA, [("DONE", "BATCH"), ("S0", "L0")]) == [T2, None]
        assert store.count_linked(THENA) == 1
        store.record_linked(THENA, [("S0", "L0", T2)], None)
    assert linked_in(path) == {("DONE", "BATCH"), ("S0", "L0")}


# -- run history ------------------------------------------------------------------------------


def test_run_history_round_trip_order_and_lookups(tmp_path: Path) -> None:
    day = [datetime(2026, 11, d, 2, 0, 0, tzinfo=UTC) for d in range(20, 30)]
    report = tmp_path / "nightly.results.csv"
    with Store.open(tmp_path / "s.sqlite3") as store:
        assert store.runs() == [] and store.last_finished_run(report) is None
        assert store.last_success("nightly") is None
        a = store.start_run(
            "run",
            scope=THENA,
            report=report,
            input=tmp_path / "nightly.csv",
            input_hash="ab12",
            job="nightly",
            command_line="bulklink run nightly.csv --token-file ***",
            started=day[0],
        )
        store.finish_run(a, counts={"linked": 3, "failed": 1}, exit_code=1, finished=day[1])
        b = store.start_run(
            "retry",
            scope=THENA,
            report=report,
            job="nightly",
            command_line="bulklink retry",
            started=day[2],
        )
        store.finish_run(b, counts={"linked": 1, "already-linked": 3}, exit_code=0, finished=day[3])
        other = store.start_run(
            "run",
            scope=Scope("sandbox:"),
            report=tmp_path / "o.csv",
            command_line="bulklink run o.csv --sandbox",
            started=day[4],
        )
        killed = store.start_run(
            "run",
            scope=THENA,
            report=report,
            job="nightly",
            command_line="bulklink run",
            started=day[5],
        )

        assert [r.id for r in store.runs()] == [killed, other, b, a]
        assert [r.id for r in store.runs(limit=2)] == [killed, other]
        first = store.runs()[-1]
        assert first.command == "run" and first.started == day[0] and first.finished == day[1]
        assert first.input == str(tmp_path / "nightly.csv") and first.input_hash == "ab12"
        assert first.report == str(report) and first.job == "nightly"
        assert (first.base_url, first.org_id) == ("https://platform.thena.ai", "org_1")
        assert first.counts == {"linked": 3, "failed": 1} and first.exit_code == 1
        assert first.command_line == "bulklink run nightly.csv --token-file ***"

        last = store.last_run(report)
        assert last is not None and last.id == killed and last.finished is None
        assert last.exit_code is None and last.counts == {}
        finished = store.last_finished_run(report)
        assert finished is not None and finished.id == b
        assert store.last_success("nightly") == day[3]
        assert store.last_success("other job") is None

        as_json = store.runs()[2].to_json()
        assert as_json["started"] == "2026-11-22T02:00:00Z"
        assert {"id", "started", "finished", "input", "report", "counts", "exit_code"} <= set(
            as_json
        )


def test_the_run_commits_its_batch_once_it_is_large_or_old(tmp_path: Path) -> None:
    from bulklink.state.ledger import FLUSH_EVERY, FLUSH_PAIRS, Ledger

    with Store.open(tmp_path / "s.sqlite3") as store:
        ledger = Ledger(store, THENA)
        record = ledger.on_linked
        assert record is not None
        assert not ledger.due(10 * FLUSH_EVERY)  # nothing waiting: no empty transaction
        record(("A", "B", T1))
        assert not ledger.due(FLUSH_EVERY / 2)
        assert ledger.due(FLUSH_EVERY)
        for n in range(FLUSH_PAIRS - 1):
            record((f"S{n}", f"L{n}", T1))
        assert ledger.due(0.0)
        ledger.flush()
        assert not ledger.due(10 * FLUSH_EVERY)
        assert store.count_linked(THENA) == FLUSH_PAIRS
    assert Ledger(None, THENA).on_linked is None  # --no-state: nothing to record into
