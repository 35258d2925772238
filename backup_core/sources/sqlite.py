"""Consistent snapshots of live SQLite databases, and their integrity checks.

Copying `data.db` (even with its -wal and -shm) while an application writes can
miss every transaction still in the WAL or capture torn pages.  SQLite's online
backup API copies the database as one transaction sees it.  It is run in one
step (pages=-1): copied in small steps, the backup restarts whenever another
connection commits and, under a steady writer, never finishes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from backup_core.errors import TargetError
from backup_core.sources import held

CHECK_PRAGMAS = {"integrity": "integrity_check", "quick": "quick_check"}


def snapshot(
    source: Path, destination: Path, busy_timeout: float, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """Copy the live database `source` into the new file `destination`, consistently.

    The copy is one call into SQLite that neither signals nor `interrupt()` can cut short,
    so it runs in a thread of its own: when `should_stop` turns true (or Ctrl-C arrives)
    the caller stops waiting at once and abandons the copy, whose file it removes; the
    thread's read transaction ends with the copy, or with the process.
    """
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            _snapshot(source, destination, busy_timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name="sqlite-snapshot", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.05)
        if worker.is_alive() and should_stop():
            raise TargetError(f"interrupted while snapshotting {source}; the partial snapshot was removed")
    if outcome and outcome[0] is not None:
        raise outcome[0]


def _snapshot(source: Path, destination: Path, busy_timeout: float) -> None:
    if not source.is_file():
        # mode=ro never creates a file, but say plainly what is wrong.
        raise TargetError(f"database not found: {source}; check the path in the manifest")
    companions = (Path(f"{source}-wal"), Path(f"{source}-shm"))
    # Registered as held for as long as a connection is open: no other part of this process
    # may open and close the file meanwhile, or the connection's lock is gone (see held).
    with held.holding(source) as first:
        in_wal_mode = first[18:20] == b"\x02\x02"  # file format versions 2: WAL
        if in_wal_mode and not any(p.exists() for p in companions):
            # No connection has this database open (an open WAL connection keeps its -wal and
            # -shm), and a read-only WAL reader would leave an empty -wal and -shm beside it. Read
            # it as immutable instead, then make sure nobody opened it meanwhile; if someone did,
            # the usual locked read below starts over.
            before = _identity(source)
            _copy(source, destination, "mode=ro&immutable=1", busy_timeout)
            if not any(p.exists() for p in companions) and _identity(source) == before:
                return
        # Read-only: the backup never writes to the live database or checkpoints its WAL.
        _copy(source, destination, "mode=ro", busy_timeout)


def file_uri(path: Path) -> str:
    """An SQLite URI for `path`, whatever characters it holds.

    Path.as_uri() writes a Windows share as file://server/share/..., which SQLite refuses
    (it accepts no authority); with an empty authority the share goes in the path instead.
    """
    text = path.resolve().as_posix()
    return "file://" + quote(text if text.startswith("/") else "/" + text, safe="/:")


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _copy(source: Path, destination: Path, options: str, busy_timeout: float) -> None:
    deadline = time.monotonic() + busy_timeout
    try:
        live = sqlite3.connect(f"{file_uri(source)}?{options}", uri=True, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise TargetError(f"cannot open database {source}: {exc}") from None
    try:
        _begin_read(live, source, busy_timeout, deadline)
        # mode=rw: the caller created the file; if it was removed meanwhile (an interrupted run
        # abandoned this copy), SQLite must not create it again behind the clean-up's back.
        copy = sqlite3.connect(f"{file_uri(destination)}?mode=rw", uri=True, isolation_level=None)
        # The copy is a private temporary file, made durable later as part of the archive:
        # neither a rollback journal nor an fsync of its own buys anything.
        copy.execute("PRAGMA journal_mode=OFF")
        copy.execute("PRAGMA synchronous=OFF")
        try:
            # The read transaction begun above pins one consistent view for the whole copy.
            live.backup(copy, pages=-1)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise TargetError(_why_failed(source, destination, exc)) from None
    finally:
        live.close()


def _why_failed(source: Path, destination: Path, exc: sqlite3.Error) -> str:
    """The one line for a copy that failed: the live database is opened read-only, so a full
    disk is the snapshot's, in the destination (it read as if the database's own disk were)."""
    message = str(exc)
    if "full" in message:
        return (
            f"disk full writing the snapshot of {source} to {destination.parent}; free some space there "
            "(or choose another destination), then back up again"
        )
    return _hot_journal(source, message) or f"snapshot of {source} failed: {message}"


def _begin_read(live: sqlite3.Connection, source: Path, busy_timeout: float, deadline: float) -> None:
    # Taking the read lock ourselves, under the busy timeout, turns a locked database into
    # a clear failure: the backup API would otherwise retry a busy source forever.
    while True:
        try:
            live.execute("BEGIN")
            live.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.DatabaseError as exc:
            live.execute("ROLLBACK") if live.in_transaction else None
            message = str(exc)
            if ("locked" in message or "busy" in message) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if "locked" in message or "busy" in message:
                raise TargetError(
                    f"database {source} stayed locked for {busy_timeout:g}s; retry later or raise sqlite.busy_timeout"
                ) from None
            if "not a database" in message or "malformed" in message:
                raise TargetError(f"{source} is not a usable SQLite database: {message}") from None
            raise TargetError(_hot_journal(source, message) or f"cannot read database {source}: {message}") from None


def _hot_journal(source: Path, message: str) -> str | None:
    """The sentence for a database a crashed writer left with a rollback journal to replay.

    A read-only connection must replay that journal before it reads and cannot: SQLite
    says "attempt to write a readonly database", which points the operator the wrong way.
    Only that error: a live writer's journal (or a PERSIST one) is there for other failures too.
    """
    journal = Path(f"{source}-journal")
    if "readonly" not in message or not journal.is_file() or journal.stat().st_size == 0:
        return None
    return (
        f"database {source} has a hot journal ({journal.name}, left by a writer that stopped mid-transaction); "
        f"open it once with its application or `sqlite3 {source} 'PRAGMA quick_check'` as a user that can "
        "write to it, which rolls the unfinished transaction back, then back up again"
    )


def check(database: Path, how: str) -> str | None:
    """Run the configured check on a private copy; None when it passes, else what it found."""
    if how == "none":
        return None
    try:
        # Read-write on purpose: a copy of a WAL database needs its -shm to be opened, and
        # SQLite removes the -wal and -shm it made when this, the only connection, closes.
        connection = sqlite3.connect(database)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = connection.execute(f"PRAGMA {CHECK_PRAGMAS[how]}").fetchall()
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        connection.close()
    # A damaged database can give a hundred rows, some of several lines: the first few say enough.
    found = [line.strip() for row in rows for line in str(row[0]).splitlines() if line.strip()]
    if found == ["ok"]:
        return None
    more = f" (and {len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
    return "; ".join(line[:200] for line in found[:_SHOWN]) + more


_SHOWN = 3  # lines of a failed check shown in a message
