"""Live SQLite databases: consistent snapshots, read-only access, locks, damage and proof under load.

Every backup and restore runs the real `invoke` command in a subprocess; the
databases are written by this process or by small writer scripts in their own
processes, as an application would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, Project, Ran, integrity, names

from backup_core.errors import TargetError
from backup_core.sources import sqlite as sqlite_module

PYTHON = sys.executable


# --- helpers -------------------------------------------------------------------------------------


def make_db(path: Path, rows: int = 3, *, wal: bool = False, page_size: int | None = None) -> Path:
    """A database with a table `items` holding names 'item 1' .. 'item N', closed (nothing left in a WAL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        if page_size:
            connection.execute(f"PRAGMA page_size={page_size}")
        connection.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
        connection.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        connection.execute("CREATE INDEX items_name ON items(name)")
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO items(name) VALUES (?)", [(f"item {n}",) for n in range(1, rows + 1)])
        connection.execute("COMMIT")
    return path


@contextmanager
def wal_writer(database: Path) -> Iterator[sqlite3.Connection]:
    """An open connection that never checkpoints: what it commits stays in the -wal file."""
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    try:
        yield connection
    finally:
        connection.close()


def commit_items(connection: sqlite3.Connection, *items: str) -> None:
    for name in items:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO items(name) VALUES (?)", (name,))
        connection.execute("COMMIT")


def member_names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as opened:
        return opened.namelist()


def extract(archive: Path, member: str, folder: Path) -> Path:
    """One member written alone into `folder` (no -wal or -shm can come with it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(member).name
    with zipfile.ZipFile(archive) as opened:
        path.write_bytes(opened.read(member))
    return path


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def leftovers(folder: Path) -> list[str]:
    """Anything in a destination besides finished archives, lock files and origin records."""
    finished = {p.name for p in folder.iterdir() if p.suffix == ".zip" and not p.name.startswith(".")}
    return sorted(p.name for p in folder.iterdir() if p.name not in finished and p.suffix not in (".lock", ".origin"))


def line_for(ran: Ran, status: str, target: str) -> str:
    """The one report line for `target` with `status`; fails the test when there is none."""
    prefix = f"{status}: [{target}] =>"
    found = [line for line in ran.output.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting {prefix!r}:\n{ran.output}"
    return found[0]


def corrupt_table_page(database: Path, marker: bytes) -> None:
    """Zero the page that holds `marker`: integrity_check and quick_check both report it."""
    data = bytearray(database.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    offset = data.find(marker)
    assert offset >= page_size, "the marker must lie beyond page 1 (the schema page stays readable)"
    start = offset // page_size * page_size
    data[start : start + page_size] = bytes(page_size)
    database.write_bytes(data)


def restore_archive(project: Project, target: str, archive: Path, folder: Path) -> None:
    ran = project.invoke("restore", target, "--to", str(folder), "--archive", archive.name)
    assert ran.code == 0, ran.output


# --- one database --------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", ["sqlite", "auto"])
def test_live_wal_database_is_archived_as_one_snapshot_and_left_untouched(project: Project, declared: str) -> None:
    database = make_db(project.root / "app" / "data.db", rows=3, wal=True)
    type_line = f"type: {declared}" if declared != "auto" else ""
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: db
            path: app/data.db
            {type_line}
        """
    )
    with wal_writer(database) as writer:
        commit_items(writer, "in wal 1", "in wal 2")  # committed, only in the -wal file
        wal = Path(f"{database}-wal")
        assert wal.stat().st_size > 0
        # An open write transaction: not committed, so no snapshot may hold it.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO items(name) VALUES ('uncommitted')")
        before_db, before_wal = fingerprint(database), wal.stat().st_size

        ran = project.invoke("backup")

        assert ran.code == 0, ran.output
        assert fingerprint(database) == before_db, "the live database file was changed by the backup"
        assert wal.stat().st_size == before_wal, "the live -wal file was changed (checkpointed?) by the backup"
        writer.execute("ROLLBACK")
        assert names(database) == ["item 1", "item 2", "item 3", "in wal 1", "in wal 2"]

    (archive,) = project.archives(target="db")
    assert "1 database" in line_for(ran, "changed", "db")
    assert member_names(archive) == ["data.db"], "only the snapshot belongs in the archive, never -wal/-shm"
    copy = extract(archive, "data.db", project.root / "alone")
    assert copy.read_bytes()[:16] == b"SQLite format 3\x00"
    assert sorted(p.name for p in copy.parent.iterdir()) == ["data.db"]
    # Self-contained: everything committed is in the one file, the open transaction is not.
    assert names(copy) == ["item 1", "item 2", "item 3", "in wal 1", "in wal 2"]
    assert integrity(copy) == ["ok"]
    assert leftovers(project.root / "backups") == [], "temporary snapshots or partial archives were left behind"


def test_rollback_journal_database_with_a_pending_writer_is_snapshotted_without_its_journal(project: Project) -> None:
    database = make_db(project.root / "data.db", rows=2, wal=False)
    project.write_manifest(
        """
        version: 1
        targets:
          - name: db
            path: data.db
            type: sqlite
        """
    )
    with closing(sqlite3.connect(database, isolation_level=None)) as writer:
        # A write transaction in progress (RESERVED lock, a -journal on disk): readers are still let in.
        writer.execute("BEGIN IMMEDIATE")
        writer.executemany("INSERT INTO items(name) VALUES (?)", [(f"pending {n}",) for n in range(3)])
        journal = Path(f"{database}-journal")
        assert journal.exists()
        before = fingerprint(database)
        ran = project.invoke("backup")
        assert fingerprint(database) == before
        assert journal.exists()
        writer.execute("ROLLBACK")

    assert ran.code == 0, ran.output
    (archive,) = project.archives(target="db")
    assert member_names(archive) == ["data.db"]
    copy = extract(archive, "data.db", project.root / "alone")
    assert names(copy) == ["item 1", "item 2"], "the snapshot holds uncommitted rows"
    assert integrity(copy) == ["ok"]
    assert names(database) == ["item 1", "item 2"]


HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.execute("BEGIN EXCLUSIVE")
    connection.execute("INSERT INTO items(name) VALUES ('from the holder')")
    print("locked", flush=True)
    sys.stdin.readline()
    connection.execute("COMMIT")
    connection.close()
    print("released", flush=True)
    """
)


@contextmanager
def exclusive_lock(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding BEGIN EXCLUSIVE on a rollback-journal database until told to commit."""
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)


def test_locked_database_fails_after_busy_timeout_and_other_targets_still_run(project: Project) -> None:
    database = make_db(project.root / "data.db", rows=2)
    project.file("notes.txt", "notes\n")
    project.write_manifest(
        """
        version: 1
        targets:
          - name: db
            path: data.db
            type: sqlite
            sqlite: {busy_timeout: 1}
          - name: notes
            path: notes.txt
        """
    )
    with exclusive_lock(database):
        before = fingerprint(database)
        ran = project.invoke("backup")
        assert fingerprint(database) == before

    assert ran.code == 1, ran.output
    failed = line_for(ran, "failed", "db")
    assert "locked" in failed and str(database) in failed
    assert line_for(ran, "changed", "notes")
    assert project.archives(target="db") == []
    assert len(project.archives(target="notes")) == 1
    assert leftovers(project.root / "backups") == []
    assert names(database) == ["item 1", "item 2"]  # the holder was killed: its transaction rolled back


def test_locked_database_is_retried_until_the_lock_is_released(project: Project) -> None:
    database = make_db(project.root / "data.db", rows=2)
    marker = project.root / "backup-reached-the-database"
    touch = [PYTHON, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()", str(marker)]
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: db
            path: data.db
            type: sqlite
            sqlite: {{busy_timeout: 120}}
            hooks:
              before: [{json.dumps(touch)}]
        """
    )
    with exclusive_lock(database) as holder:
        backup = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not marker.exists() and backup.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)  # let the backup meet the lock (it is taken right after the before hook)
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("commit\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            output, _ = backup.communicate(timeout=120)
        finally:
            if backup.poll() is None:
                backup.kill()
                backup.wait()

    assert marker.exists()
    assert backup.returncode == 0, output
    (archive,) = project.archives(target="db")
    copy = extract(archive, "data.db", project.root / "alone")
    # The holder's row was committed only after the backup started: the backup waited for it.
    assert names(copy) == ["item 1", "item 2", "from the holder"]


@pytest.mark.parametrize("check", ["integrity", "quick"])
def test_snapshot_failing_its_check_fails_the_target_and_keeps_older_archives(project: Project, check: str) -> None:
    database = make_db(project.root / "data.db", rows=2000)
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: db
            path: data.db
            keep: {{last: 1}}
            sqlite: {{check: {check}}}
        """
    )
    first = project.invoke("backup")
    assert first.code == 0, first.output
    (older,) = project.archives(target="db")
    older_bytes = older.read_bytes()
    corrupt_table_page(database, b"item 1000")

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert f"{check}_check" in line_for(ran, "failed", "db")
    assert project.archives(target="db") == [older], "a damaged snapshot was archived or the old archive rotated"
    assert older.read_bytes() == older_bytes
    assert leftovers(project.root / "backups") == []


# --- databases inside a folder -------------------------------------------------------------------


def test_folder_databases_are_snapshotted_under_their_names_without_companions(project: Project) -> None:
    app = project.root / "app"
    data_bin = make_db(app / "data.bin", rows=2, wal=True)
    store = make_db(app / "store", rows=1)
    inner = make_db(app / "sub" / "inner.sqlite", rows=4, wal=True)
    project.file("app/notes.txt", "plain notes\n")
    project.file("app/store-journal", b"")  # left by journal_mode=TRUNCATE: a companion of `store`
    project.file("app/orphan.db-wal", "not beside any database\n")  # no `orphan.db`: an ordinary file
    project.write_manifest(
        """
        version: 1
        targets:
          - name: app
            path: app
        """
    )
    with wal_writer(data_bin) as writer, wal_writer(inner) as inner_writer:
        commit_items(writer, "data.bin wal row")
        commit_items(inner_writer, "inner wal row")
        for database in (data_bin, inner):
            assert Path(f"{database}-wal").stat().st_size > 0
            assert Path(f"{database}-shm").exists()
        live = {p: fingerprint(p) for p in (data_bin, store, inner)}
        wal_sizes = {p: Path(f"{p}-wal").stat().st_size for p in (data_bin, inner)}

        ran = project.invoke("backup")

        assert ran.code == 0, ran.output
        assert {p: fingerprint(p) for p in (data_bin, store, inner)} == live
        assert {p: Path(f"{p}-wal").stat().st_size for p in (data_bin, inner)} == wal_sizes

    assert "3 databases" in line_for(ran, "changed", "app")
    (archive,) = project.archives(target="app")
    assert sorted(member_names(archive)) == [
        "data.bin",
        "notes.txt",
        "orphan.db-wal",
        "store",
        "sub/",
        "sub/inner.sqlite",
    ]

    restored = project.root / "restored"
    restore_archive(project, "app", archive, restored)
    found = sorted(str(p.relative_to(restored)) for p in restored.rglob("*"))
    assert found == ["data.bin", "notes.txt", "orphan.db-wal", "store", "sub", "sub/inner.sqlite"]
    # A working data directory: every database opens, passes its check and holds what was committed.
    assert names(restored / "data.bin") == ["item 1", "item 2", "data.bin wal row"]
    assert names(restored / "store") == ["item 1"]
    assert names(restored / "sub" / "inner.sqlite") == ["item 1", "item 2", "item 3", "item 4", "inner wal row"]
    for database in ("data.bin", "store", "sub/inner.sqlite"):
        assert integrity(restored / database) == ["ok"]
    with closing(sqlite3.connect(restored / "data.bin")) as connection:
        connection.execute("INSERT INTO items(name) VALUES ('written after restore')")
        connection.commit()
    assert names(restored / "data.bin")[-1] == "written after restore"


# --- wrong paths and non-databases ---------------------------------------------------------------


@pytest.mark.parametrize("declared", ["sqlite", "auto"])
@pytest.mark.parametrize("relative", ["missing.db", "no-such-folder/missing.db"])
def test_missing_database_path_fails_and_creates_nothing(project: Project, declared: str, relative: str) -> None:
    project.file("notes.txt", "notes\n")
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: db
            path: {relative}
            type: {declared}
          - name: notes
            path: notes.txt
        """
    )
    before = set(project.snapshot_tree())

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert "missing.db" in line_for(ran, "failed", "db")
    assert line_for(ran, "changed", "notes")
    missing = project.root / relative
    assert not missing.exists(), "an empty database was created at the wrong path"
    created = {path for path in set(project.snapshot_tree()) - before if not path.startswith("backups")}
    assert created == set(), "files or folders were created outside the destination"
    assert project.archives(target="db") == []


def test_snapshot_of_a_missing_file_raises_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    with pytest.raises(TargetError, match="not found"):
        sqlite_module.snapshot(missing, tmp_path / "copy.db", busy_timeout=1)
    assert sorted(tmp_path.iterdir()) == []


NOT_DATABASES = {
    "text": b"just some text, no database\n",
    "empty": b"",  # SQLite would happily treat an empty file as an empty database
    "zeros": bytes(4096),
    "header-then-garbage": b"SQLite format 3\x00" + b"\xff" * (4096 - 16),
}


@pytest.mark.parametrize("content", NOT_DATABASES.values(), ids=NOT_DATABASES.keys())
def test_sqlite_type_on_something_that_is_not_a_database_fails(project: Project, content: bytes) -> None:
    source = project.file("data.db", content)
    project.file("notes.txt", "notes\n")
    project.write_manifest(
        """
        version: 1
        targets:
          - name: db
            path: data.db
            type: sqlite
          - name: notes
            path: notes.txt
        """
    )
    before = fingerprint(source)

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert str(source) in line_for(ran, "failed", "db")
    assert line_for(ran, "changed", "notes")
    assert fingerprint(source) == before
    assert project.archives(target="db") == []
    assert leftovers(project.root / "backups") == []


# --- proof: a busy writer, and an idle WAL -------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys
    from pathlib import Path

    database, progress, stop = sys.argv[1:4]
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA wal_autocheckpoint=0")  # every commit stays in the -wal file
    connection.execute("PRAGMA synchronous=NORMAL")
    counter = connection.execute("SELECT counter FROM state").fetchone()[0]
    scratch = Path(progress + ".tmp")
    while not os.path.exists(stop):
        counter += 1
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO log(counter, note) VALUES (?, ?)", (counter, "x" * (counter % 40)))
        connection.execute("UPDATE state SET counter = ?, updates = updates + 1", (counter,))
        connection.execute("UPDATE log SET note = note || '!' WHERE counter = ?", (counter // 2,))
        connection.execute("COMMIT")
        scratch.write_text(str(counter))
        os.replace(scratch, progress)  # the last committed counter, never half written
    os._exit(0)  # leave the WAL as it is: no closing checkpoint
    """
)
SEEDED = 100


def make_counter_db(path: Path) -> None:
    """A WAL database with counters 1..SEEDED checkpointed into the main file."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("PRAGMA page_size=1024")  # small frames: the uncheckpointed WAL grows slowly
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE log(counter INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        connection.execute("CREATE TABLE state(counter INTEGER NOT NULL, updates INTEGER NOT NULL)")
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO log VALUES (?, 'seed')", [(n,) for n in range(1, SEEDED + 1)])
        connection.execute("INSERT INTO state VALUES (?, 0)", (SEEDED,))
        connection.execute("COMMIT")
    assert not Path(f"{path}-wal").exists()


def counters(database: Path) -> tuple[int, int, int, int]:
    """(rows, max counter, state.counter, state.updates) as one transaction sees them."""
    with closing(sqlite3.connect(database)) as connection:
        rows, top = connection.execute("SELECT count(*), coalesce(max(counter), 0) FROM log").fetchone()
        counter, updates = connection.execute("SELECT counter, updates FROM state").fetchone()
    return rows, top, counter, updates


def plain_copy(database: Path, folder: Path) -> Path:
    """What a naive backup takes: the main database file alone."""
    folder.mkdir(parents=True)
    return Path(shutil.copy(database, folder / database.name))


def read_counter(progress: Path) -> int:
    return int(progress.read_text()) if progress.exists() else 0


@pytest.mark.slow
def test_backups_under_a_busy_writer_hold_every_committed_transaction(project: Project) -> None:
    database = project.root / "data.db"
    make_counter_db(database)
    progress, stop = project.root / "committed", project.root / "stop"
    project.write_manifest(
        """
        version: 1
        targets:
          - name: db
            path: data.db
            keep: {last: 10}
        """
    )
    errors = (project.root / "writer.err").open("w")
    writer = subprocess.Popen([PYTHON, "-c", WRITER, str(database), str(progress), str(stop)], stderr=errors)

    def wait_for_commits(count: int) -> None:
        deadline = time.monotonic() + 60
        while read_counter(progress) < count and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.poll() is None, f"the writer stopped: {(project.root / 'writer.err').read_text()}"
        assert read_counter(progress) >= count, "the writer made no progress"

    checked: list[tuple[Path, int]] = []
    try:
        for round_ in range(5):
            wait_for_commits(read_counter(progress) + 5000)
            n_before = read_counter(progress)

            # The naive copy, taken while the writer runs, misses transactions committed before it began.
            copy = plain_copy(database, project.root / f"plain-{round_}")
            rows, top, counter, _ = counters(copy)
            assert top < n_before, "the plain copy happened to hold every commit: the WAL is not exercised"
            assert (rows, top, counter) == (SEEDED, SEEDED, SEEDED)

            ran = project.invoke("backup")
            assert ran.code == 0, ran.output
            assert writer.poll() is None, "the writer stopped during the backup"
            checked.append((project.archives(target="db")[-1], n_before))
        n_last = read_counter(progress)
    finally:
        stop.touch()
        writer.wait(timeout=60)
        errors.close()

    assert len({archive for archive, _ in checked}) == 5
    for round_, (archive, n_before) in enumerate(checked):
        folder = project.root / f"restored-{round_}"
        restore_archive(project, "db", archive, folder)
        restored = folder / "data.db"
        assert integrity(restored) == ["ok"], archive.name
        rows, top, counter, updates = counters(restored)
        # Every transaction committed before the backup began is there, and nothing half done.
        assert top >= n_before, f"{archive.name}: counter {top} < {n_before} committed before the backup"
        assert top <= n_last
        assert rows == top, f"{archive.name}: counters missing below {top}"
        assert counter == top and updates == top - SEEDED, f"{archive.name}: torn transaction"
        with closing(sqlite3.connect(restored)) as connection:
            present = connection.execute("SELECT count(*) FROM log WHERE counter <= ?", (n_before,)).fetchone()[0]
        assert present == n_before

    verified = project.invoke("verify")
    assert verified.code == 0, verified.output


def test_idle_wal_database_backup_has_the_transactions_a_plain_copy_lacks(project: Project) -> None:
    database = project.root / "data.db"
    make_counter_db(database)
    project.write_manifest(
        """
        version: 1
        targets:
          - name: db
            path: data.db
        """
    )
    with wal_writer(database) as connection:  # open, never checkpointing: the 50 commits stay in the WAL
        for counter in range(SEEDED + 1, SEEDED + 51):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO log VALUES (?, 'idle')", (counter,))
            connection.execute("UPDATE state SET counter = ?, updates = updates + 1", (counter,))
            connection.execute("COMMIT")
        wal = Path(f"{database}-wal")
        before_db, before_wal = fingerprint(database), wal.stat().st_size

        copy = plain_copy(database, project.root / "plain")
        ran = project.invoke("backup")

        assert ran.code == 0, ran.output
        assert fingerprint(database) == before_db
        assert wal.stat().st_size == before_wal

    assert counters(copy) == (SEEDED, SEEDED, SEEDED, 0), "the plain copy should lack all 50 transactions"
    (archive,) = project.archives(target="db")
    restored = project.root / "restored"
    restore_archive(project, "db", archive, restored)
    assert integrity(restored / "data.db") == ["ok"]
    assert counters(restored / "data.db") == (SEEDED + 50, SEEDED + 50, SEEDED + 50, 50)


def _write_from_another_process(database: Path) -> subprocess.CompletedProcess[str]:
    """One INSERT committed by another process, which gives up at once if the database is locked."""
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0)\n"
        "c.execute('INSERT INTO t VALUES (1)')\n"
        "c.commit()\n"
    )
    return subprocess.run([sys.executable, "-c", script, str(database)], capture_output=True, text=True, check=False)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX advisory locks")
@pytest.mark.parametrize("reader", ["the walk's header read", "another snapshot's header read"])
def test_reading_a_held_databases_header_keeps_the_snapshots_lock(tmp_path: Path, reader: str) -> None:
    # POSIX locks belong to the process: the walk's (or another target's) open and close of the
    # database dropped a snapshot's shared lock, so with --jobs 2 a writer committed in the middle
    # of a copy and the snapshot was torn.  Here the snapshot's read transaction is held open
    # while the same process reads the header as those do; a writer must still be locked out.
    from backup_core.sources import held, walk

    database = tmp_path / "app.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("CREATE TABLE t (x)")
        db.commit()
    with held.holding(database):
        live = sqlite3.connect(f"{sqlite_module.file_uri(database)}?mode=ro", uri=True, isolation_level=None)
        try:
            live.execute("BEGIN")
            live.execute("SELECT count(*) FROM t").fetchone()  # the shared lock a snapshot holds
            if reader == "the walk's header read":
                assert walk.is_sqlite(database)
            else:
                with held.holding(database) as first:
                    assert first[:16] == walk.SQLITE_HEADER
            written = _write_from_another_process(database)
        finally:
            live.close()
    assert written.returncode != 0 and "database is locked" in written.stderr, written.stderr
    assert _write_from_another_process(database).returncode == 0  # and once the snapshot is done, it may


@pytest.mark.parametrize("journal", ["wal", "persist"])
def test_a_full_destination_during_a_snapshot_is_named_as_such(project: Project, small_fs: Path, journal: str) -> None:
    # It said "snapshot of <source> failed: database or disk is full" (as if the database's own
    # disk were full), or, beside a persistent journal, that a writer left a hot journal.
    database = project.root / "app.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", ((os.urandom(500).hex(),) for _ in range(4000)))
        db.commit()
        if journal == "persist":
            db.execute("INSERT INTO t VALUES (1)")  # leaves a non-empty -journal behind
            db.commit()
    folder = small_fs / f"full-{os.getpid()}"
    folder.mkdir()
    try:
        filler = folder / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:  # all but a little
                out.write(b"\0" * (1 << 20))
                out.flush()
        os.truncate(filler, max(0, filler.stat().st_size - (256 << 10)))  # room for a little, not the copy
        project.write_manifest(f"version: 1\ntargets: [{{name: app, path: app.db, destination: {folder}}}]\n")
        ran = project.invoke("backup")
        assert ran.code == 1, ran.output
        assert f"disk full writing the snapshot of {database} to {folder}" in ran.output, ran.output
        assert "hot journal" not in ran.output
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(sys.platform == "win32", reason="a FIFO stands in for a file on a hung mount")
def test_a_header_read_that_hangs_holds_up_no_other_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The registry's lock was held across the read: one file on a hung mount stalled every
    # target's walk and snapshot.  The hung read is one that waits until the test lets it go
    # (a FIFO did it once; sources are now opened without waiting, so a FIFO no longer hangs).
    import threading

    from backup_core.sources import held

    hung = tmp_path / "hung"
    hung.write_bytes(b"x")
    database = tmp_path / "app.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    release, reading = threading.Event(), threading.Event()
    read_start = held.read_start

    def hanging(path: Path | str, count: int) -> bytes:
        if Path(path) == hung:
            reading.set()
            release.wait(60)
        return read_start(path, count)

    monkeypatch.setattr(held, "read_start", hanging)
    waiting = threading.Thread(target=held.head, args=(hung,), daemon=True)
    waiting.start()
    assert reading.wait(30), "the read never began"
    seen: list[bytes] = []

    def other_file() -> None:
        seen.append(held.head(database)[:16])
        with held.holding(database) as first:
            seen.append(first[:16])

    other = threading.Thread(target=other_file, daemon=True)
    other.start()
    other.join(timeout=30)  # not a speed goal: without the fix it never returns at all
    try:
        assert not other.is_alive(), "a read of another file waited for the hung one"
        assert seen == [b"SQLite format 3\0"] * 2
    finally:
        release.set()  # let the hung read end
        waiting.join(timeout=10)


def test_a_live_database_declared_type_file_is_refused_while_its_log_holds_what_the_file_lacks(
    project: Project,
) -> None:
    # type: file copied the database file alone: the committed rows still in its -wal were not
    # in the archive, without a word, and with skip_unchanged it stayed `ok` for ever.
    database = project.root / "data" / "app.db"
    database.parent.mkdir()
    live = sqlite3.connect(database, isolation_level=None)
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("PRAGMA wal_autocheckpoint=0")
        live.execute("CREATE TABLE t (x INTEGER)")
        live.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
        project.write_manifest(
            "version: 1\ntargets: [{name: db, path: data/app.db, type: file, skip_unchanged: true}]\n"
        )

        refused = project.invoke("backup")

        assert refused.code == 1, refused.output
        said = f"source {database} is an SQLite database whose app.db-wal holds what is not in the file yet"
        assert said in refused.stdout and "remove type: file (or write type: sqlite)" in refused.stdout
        assert project.archives() == []
        project.write_manifest("version: 1\ntargets: [{name: db, path: data/app.db, skip_unchanged: true}]\n")
        assert project.invoke("backup").code == 0
    finally:
        live.close()
    (archive,) = project.archives()
    restored = project.root / "restored.db"
    restored.write_bytes(zipfile.ZipFile(archive).read("app.db"))
    with closing(sqlite3.connect(restored)) as copy:
        assert copy.execute("SELECT count(*) FROM t").fetchone() == (100,)
    # Closed, its log checkpointed and gone: the file alone is the database, copied as declared.
    project.write_manifest("version: 1\ntargets: [{name: db, path: data/app.db, type: file}]\n")
    assert project.invoke("backup").code == 0
