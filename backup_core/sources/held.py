"""Database files a snapshot in this process holds a SQLite lock on, and reading a file's first
bytes without dropping that lock.

POSIX advisory locks belong to a process and a file, not to a descriptor: closing any
descriptor of a file drops every lock the process holds on it.  SQLite keeps its own
descriptors of a database open for that reason, but a header read elsewhere in this
process closed its own: a folder walk looking for databases, or another target's check of
the journal mode, while a snapshot of the same database was reading.  The snapshot's shared
lock vanished, a writer in another process committed in the middle of the copy, and the
snapshot was torn (two targets on one database, a folder and the database in it, are a
normal layout; with --jobs 2 they run at once).

So every header read of a possible database goes through head(), and a snapshot registers
its source with holding() before it connects: a file that is held is never opened again
here, its first bytes are taken from the registry, and a read that began before the
snapshot registered has closed its descriptor before the snapshot's connection opens.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HEAD = 100  # SQLite's file header: what any caller reads of a database's first bytes

_lock = threading.Lock()
_held: dict[tuple[int, int], tuple[int, bytes]] = {}  # (device, inode): (holders, first bytes)


def head(path: Path | str, st: os.stat_result | None = None) -> bytes:
    """The first HEAD bytes of `path` (fewer when it is shorter); raises OSError."""
    st = st or Path(path).stat()
    with _lock:
        held = _held.get((st.st_dev, st.st_ino))
        if held is not None:
            return held[1]
        with open(path, "rb") as file:  # noqa: PTH123 - a str or a Path, as the walk has it
            return file.read(HEAD)


@contextmanager
def holding(path: Path) -> Iterator[bytes]:
    """Register `path` as held by a connection of this process for the `with` block (the
    connection is opened and closed inside it); gives its first HEAD bytes."""
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    with _lock:
        count, first = _held.get(key, (0, b""))
        if not count:
            with path.open("rb") as file:
                first = file.read(HEAD)
        _held[key] = (count + 1, first)
    try:
        yield first
    finally:
        with _lock:
            count, first = _held[key]
            if count == 1:
                del _held[key]
            else:
                _held[key] = (count - 1, first)
