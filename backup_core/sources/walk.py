"""What a target's path holds: the entries to archive, in a stable order.

A folder is walked with os.scandir, sorted by name so archives are reproducible.
Symbolic links are archived as links (never followed): following them could
leave the tree, loop, or archive the same data twice.  SQLite databases are
recognised by their header, not their name, and their -wal, -shm and -journal
companions are left out because the database is archived as a snapshot.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

from backup_core.errors import TargetError

SQLITE_HEADER = b"SQLite format 3\x00"
_COMPANIONS = ("-wal", "-shm", "-journal")


class Entry(NamedTuple):
    """One thing to archive: a folder, a link, a file or a database."""

    name: str  # the member name: relative, forward slashes
    path: str  # a string, not a Path: building 100,000 Path objects costs more than the walk
    kind: str  # "dir", "link", "file" or "sqlite"
    stat: os.stat_result


def is_sqlite(path: Path, st: os.stat_result | None = None) -> bool:
    """True when `path` starts with the SQLite header."""
    if not _could_be_sqlite(st or path.stat()):
        return False
    try:
        with path.open("rb") as source:
            return source.read(16) == SQLITE_HEADER
    except OSError:
        return False


def _could_be_sqlite(st: os.stat_result) -> bool:
    # Every database file is a whole number of pages of at least 512 bytes; checking
    # the size first spares opening every file of a large tree.
    return st.st_size >= 512 and not st.st_size % 512


def kind_of(path: Path, declared: str) -> str:
    """Resolve a target's type ("auto" becomes file, folder or sqlite); fail on a missing path."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise TargetError(f"source not found: {path}; check the path in the manifest") from None
    except PermissionError:
        raise TargetError(f"permission denied on {path}; run as a user that can read it") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = path.stat()  # a target that is itself a link is followed: the operator named it
        except FileNotFoundError:
            raise TargetError(f"source {path} is a link to nothing; check the path in the manifest") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        # Reading a FIFO would wait forever; a device is not data to back up.
        raise TargetError(f"source {path} is not a file or a folder (a FIFO, socket or device); check the path")
    actual = "folder" if stat.S_ISDIR(st.st_mode) else "file"
    if declared == "folder" and actual != "folder":
        raise TargetError(f"source {path} is not a folder but the manifest says type: folder")
    if declared in ("file", "sqlite") and actual == "folder":
        raise TargetError(f"source {path} is a folder but the manifest says type: {declared}")
    if declared == "sqlite":
        if not is_sqlite(path, st):
            raise TargetError(f"source {path} is not an SQLite database (no SQLite header)")
        return "sqlite"
    if declared == "auto" and actual == "file" and is_sqlite(path, st):
        return "sqlite"
    return actual


def entries(path: Path, kind: str, exclude: tuple[str, ...] = ()) -> Iterator[Entry]:
    """Yield what to archive for a target whose path is of `kind`."""
    if kind != "folder":
        yield Entry(path.name, str(path), kind, path.stat())
        return
    yield from _walk(path, "", exclude)


def _excluded(relative: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(relative if "/" in p else name, p.rstrip("/")) for p in patterns)


def matches(relative: str, patterns: tuple[str, ...]) -> bool:
    """Whether a member name matches any of `patterns`, as `exclude` matches (for `critical`)."""
    relative = relative.rstrip("/")
    return _excluded(relative, relative.rsplit("/", 1)[-1], patterns)


_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT
_TYPE_BITS = 0o170000  # stat.S_IFMT's mask


def _is_junction(entry: os.DirEntry[str], st: os.stat_result) -> bool:
    # Windows junctions look like folders to lstat on Python before 3.12.
    return bool(getattr(st, "st_file_attributes", 0) & _REPARSE_POINT) or bool(
        getattr(entry, "is_junction", lambda: False)()
    )


def _as_link(st: os.stat_result) -> os.stat_result:
    fields = list(st[:10])
    fields[0] = stat.S_IFLNK | 0o777
    return os.stat_result(fields)


# POSIX needs one lstat per entry either way, so a folder's listing keeps names alone: a
# folder of 1,000,000 files then holds 1,000,000 names while it is walked, not as many
# directory entries and stat results (about 700 bytes each).  Windows' listing carries
# each entry's metadata, which a separate stat would fetch again at a far higher cost.
_STAT_FROM_LISTING = os.name == "nt"


def _listing(folder: Path) -> list[str] | list[os.DirEntry[str]]:
    with os.scandir(folder) as scan:
        if _STAT_FROM_LISTING:
            return sorted(scan, key=lambda e: e.name)
        return sorted(entry.name for entry in scan)


def _walk(folder: Path, prefix: str, exclude: tuple[str, ...]) -> Iterator[Entry]:
    # Depth first with a stack of folders being walked, not recursion: a tree 1,500 folders deep
    # is legal, and recursion would hit Python's limit (RecursionError) long before the disk's.
    stack = [_entries(folder, prefix, exclude)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if entry.kind == "dir":
            stack.append(_entries(Path(entry.path), entry.name, exclude))


def _entries(folder: Path, prefix: str, exclude: tuple[str, ...]) -> Iterator[Entry]:
    """The entries of one folder in name order, each stat-ed as it is reached (not its subfolders')."""
    try:
        listing = _listing(folder)
    except PermissionError:
        raise TargetError(f"permission denied listing {folder}; fix its permissions or add it to exclude") from None
    except FileNotFoundError:
        if prefix:
            return  # a subfolder removed while we walked: nothing left to archive
        raise TargetError(f"source not found: {folder}; check the path in the manifest") from None
    base = os.path.join(folder, "")  # noqa: PTH118 - a str per entry: a Path each would cost more than the walk
    # In name order a database comes before its -wal, -shm and -journal (a name sorts before
    # any name it starts), so one pass finds the database before it meets its companions.
    databases: set[str] = set()
    for item in listing:
        name = item if isinstance(item, str) else item.name
        relative = prefix + name
        if exclude and _excluded(relative, name, exclude):
            continue
        if databases and any(name.endswith(s) and name[: -len(s)] in databases for s in _COMPANIONS):
            continue
        path = base + name
        try:
            st = os.lstat(path) if isinstance(item, str) else item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished between listing and stat
        # Hot for a million files: the type's bits compared once, no helper call per entry.
        kind = st.st_mode & _TYPE_BITS
        if kind == stat.S_IFDIR and not isinstance(item, str) and _is_junction(item, st):
            yield Entry(relative, path, "link", _as_link(st))  # a Windows junction: a link, not followed
            continue
        if kind == stat.S_IFREG:
            size = st.st_size
            if size >= 512 and not size % 512 and is_sqlite(Path(path), st):  # see _could_be_sqlite
                databases.add(name)
                yield Entry(relative, path, "sqlite", st)
            else:
                yield Entry(relative, path, "file", st)
        elif kind == stat.S_IFDIR:
            yield Entry(relative + "/", path, "dir", st)
        elif kind == stat.S_IFLNK:
            yield Entry(relative, path, "link", st)
        # sockets, fifos and devices are not data: skipped
