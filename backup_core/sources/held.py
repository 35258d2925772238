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
The lock guards the registry only, never a read: a file on a hung mount holds up the
threads that want that file, not every target of the run.

Windows locks belong to the handle, and its listings give no inode: there nothing is held.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How a source file is opened to be read.  Without waiting: opening a FIFO to read waits for a
# writer, and a file the walk saw, replaced by a FIFO before it is read, held the run (and its
# target's lock) for ever; no effect on a regular file's reads.  Binary: Windows would
# otherwise translate line ends.
OPEN_SOURCE = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
# How a file found by a walk is opened: never through a link.  A file swapped for a link
# between the walk and the read was read through it, out of the tree (a link to another user's
# secret archived under the file's name, as a regular file).  The walk's own inode is checked
# too (see packing): a link further up the path is caught that way.
OPEN_MEMBER = OPEN_SOURCE | getattr(os, "O_NOFOLLOW", 0)
# What opening a link with O_NOFOLLOW raises: ELOOP on Linux, EMLINK on FreeBSD, EFTYPE on NetBSD.
LINK_REFUSED = frozenset({errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP)})

HEAD = 100  # SQLite's file header: what any caller reads of a database's first bytes
_POSIX = os.name == "posix"

_changed = threading.Condition()
# (device, inode): [holders, first bytes, or None while the first holder reads them]
_held: dict[tuple[int, int], list[object]] = {}
_reading: dict[tuple[int, int], int] = {}  # (device, inode): head() reads under way


def _key(st: os.stat_result) -> tuple[int, int] | None:
    # An inode of 0 (some network file systems) identifies nothing: such files are not tracked.
    return (st.st_dev, st.st_ino) if _POSIX and st.st_ino else None


def head(path: Path | str, st: os.stat_result | None = None) -> bytes:
    """The first HEAD bytes of `path` (fewer when it is shorter); raises OSError."""
    key = _key(st or Path(path).stat())
    if key is not None:
        with _changed:
            while key in _held and _held[key][1] is None:
                _changed.wait()  # its first holder is reading them: they come from the registry
            if key in _held:
                return _held[key][1]  # type: ignore[return-value]
            _reading[key] = _reading.get(key, 0) + 1
    try:
        return read_start(path, HEAD)
    finally:
        if key is not None:
            with _changed:
                _reading[key] -= 1
                if not _reading[key]:
                    del _reading[key]
                    _changed.notify_all()


def read_own(path: Path) -> str:
    """The text of a small file this tool keeps beside the archives (a record, a checksum),
    opened without waiting: a named pipe put under its name held the run, and with it the
    target's lock, for ever, and every later run was "skipped".  OSError when it cannot be
    read, or is no regular file."""
    descriptor = os.open(path, OPEN_SOURCE)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file: a named pipe, a folder or a device", str(path))
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read(1 << 20).decode("utf-8", errors="surrogateescape")
    finally:
        os.close(descriptor)


def read_start(path: Path | str, count: int) -> bytes:
    """The first `count` bytes of `path`, or none when it is not a regular file (by the time it
    is opened): opened without waiting, so a FIFO put in a file's place never blocks."""
    descriptor = os.open(path, OPEN_SOURCE)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return b""
        parts: list[bytes] = []
        while count > 0 and (part := os.read(descriptor, count)):  # a network file system may give less
            parts.append(part)
            count -= len(part)
        return b"".join(parts)
    finally:
        os.close(descriptor)


@contextmanager
def holding(path: Path) -> Iterator[bytes]:
    """Register `path` as held by a connection of this process for the `with` block (the
    connection is opened and closed inside it); gives its first HEAD bytes."""
    key = _key(path.stat())
    if key is None:
        yield read_start(path, HEAD)
        return
    with _changed:
        while _reading.get(key):
            _changed.wait()  # a read that began before: its descriptor must be closed first
        entry = _held.setdefault(key, [0, None])
        entry[0] += 1  # type: ignore[operator]
        reader = entry[1] is None and entry[0] == 1
    try:
        if reader:
            # Registered, and no connection of this process has the file open yet: safe to read.
            try:
                first = read_start(path, HEAD)
            except BaseException:
                with _changed:
                    entry[1] = b""  # no waiter stays blocked; it reads nothing that is not there
                    _changed.notify_all()
                raise
            with _changed:
                entry[1] = first
                _changed.notify_all()
        else:
            with _changed:
                while entry[1] is None:
                    _changed.wait()
                first = entry[1]  # type: ignore[assignment]
        yield first
    finally:
        with _changed:
            entry[0] -= 1  # type: ignore[operator]
            if not entry[0]:
                del _held[key]
                _changed.notify_all()
