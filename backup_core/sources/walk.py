"""What a target's path holds: the entries to archive, in a stable order.

A folder is walked with os.scandir, sorted by name so archives are reproducible.
Symbolic links are archived as links (never followed): following them could
leave the tree, loop, or archive the same data twice.  SQLite databases are
recognised by their header, not their name, and their -wal, -shm and -journal
companions are left out because the database is archived as a snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
from collections.abc import Callable, Iterator
from fnmatch import translate
from itertools import chain
from pathlib import Path
from typing import NamedTuple

from backup_core.errors import TargetError
from backup_core.sources import held

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
    st = st or path.stat()
    if not _could_be_sqlite(st):
        return False
    try:
        # Through held.head: opening and closing a database a snapshot of this process is
        # reading would drop the snapshot's lock (see backup_core.sources.held).
        return held.head(path, st)[:16] == SQLITE_HEADER
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
        raise _not_found(path) from None
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
    if declared == "file" and actual == "file" and is_sqlite(path, st) and (pending := _pending_log(path)):
        # Copied byte for byte, a database whose log still holds committed transactions (or a
        # transaction half written, for a hot journal) lacked them, in silence; and with
        # skip_unchanged, the database file alone unchanged, it was `ok` for ever.
        raise TargetError(
            f"source {path} is an SQLite database whose {pending.name} holds what is not in the file yet; "
            "copied as type: file it would lack it: remove type: file (or write type: sqlite) to snapshot it"
        )
    return actual


_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # a rollback journal's header, zeroed once committed


def _pending_log(database: Path) -> Path | None:
    """The database's -wal when it is not empty (what it holds may not be in the file yet), or
    its -journal when its header is live (a transaction half written, or one to roll back;
    journal_mode=PERSIST keeps a journal whose header is zeroed)."""
    wal, journal = (database.with_name(database.name + suffix) for suffix in ("-wal", "-journal"))
    with contextlib.suppress(OSError):
        if wal.stat().st_size > 0:
            return wal
    with contextlib.suppress(OSError):
        if held.read_start(journal, 8) == _JOURNAL_MAGIC:
            return journal
    return None


def entries(path: Path, kind: str, exclude: tuple[str, ...] = (), start: str = "") -> Iterator[Entry]:
    """What to archive for a target whose path is of `kind`, as it is walked.

    With `start` (a member name), the walk's entries from that one on, as the whole walk would
    give them, with two differences that only make such a walk differ from the whole one (which
    is all the unchanged check needs to know): when `start` or a folder on its way is gone, it
    gives nothing; and a database's -wal, -shm and -journal are left out only when the database
    itself comes after `start` in its folder."""
    if kind != "folder":
        return _single(path, kind)
    return _walk(path, "", exclude, start)  # the walk itself, not a generator around it: one less step an entry


def _single(path: Path, kind: str) -> Iterator[Entry]:
    # A target that is itself a link is followed (the operator named it): it is read at the
    # file the link names, since files are never opened through a link (see held.OPEN_MEMBER).
    read = os.path.realpath(path) if path.is_symlink() else str(path)
    yield Entry(path.name, read, kind, path.stat())  # stat-ed when asked for, as a walk's entries are


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str, str], bool]:
    """Whether (relative path, name) matches any of `patterns`: a pattern with a slash is
    matched against the path from the target's root, any other against the name alone, each
    as fnmatchcase matches it (a trailing slash dropped).

    Each group is one regular expression, an alternation of the patterns: one match a name, not
    one fnmatch call a pattern (with ten patterns, 0.8 µs a name instead of 9; seconds over a
    million files, whose unchanged re-run is nothing but this walk)."""

    def alternation(group: list[str]) -> Callable[[str], object] | None:
        return re.compile("|".join(translate(p.rstrip("/")) for p in group)).match if group else None

    by_path = alternation([p for p in patterns if "/" in p])
    by_name = alternation([p for p in patterns if "/" not in p])
    return lambda relative, name: bool((by_name and by_name(name)) or (by_path and by_path(relative)))


def matches(relative: str, patterns: tuple[str, ...]) -> bool:
    """Whether a member name matches any of `patterns`, as `exclude` matches (for `critical`)."""
    relative = relative.rstrip("/")
    return bool(patterns) and _matcher(patterns)(relative, relative.rsplit("/", 1)[-1])


_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT
_MOUNT_POINT = 0xA0000003  # IO_REPARSE_TAG_MOUNT_POINT: a junction
_TYPE_BITS = 0o170000  # stat.S_IFMT's mask


def _is_junction(entry: os.DirEntry[str], st: os.stat_result) -> bool:
    # Windows junctions look like folders to lstat on Python before 3.12.  A folder can be a
    # reparse point without being a link (a OneDrive or deduplicated folder): only the mount
    # point tag is a junction, or such folders were archived as links that cannot be read.
    if getattr(st, "st_file_attributes", 0) & _REPARSE_POINT:
        tag = getattr(st, "st_reparse_tag", None)
        if tag is not None:
            return bool(tag == _MOUNT_POINT)
    return bool(getattr(entry, "is_junction", lambda: False)())


def _as_link(st: os.stat_result) -> os.stat_result:
    fields = list(st[:10])
    fields[0] = stat.S_IFLNK | 0o777
    return os.stat_result(fields)


# POSIX needs one lstat per entry either way, so a folder's listing keeps names alone: a
# folder of 1,000,000 files then holds 1,000,000 names while it is walked, not as many
# directory entries and stat results (about 700 bytes each).  Windows' listing carries
# each entry's metadata, which a separate stat would fetch again at a far higher cost.
_STAT_FROM_LISTING = os.name == "nt"

# On POSIX each folder is opened once and its entries are stat-ed relative to it (fstatat):
# the kernel resolves one name instead of the whole path for every entry (a quarter off the
# stat calls of a bare walk of the benchmark tree), and the walk is all an unchanged re-run
# costs.  A subfolder is opened without following a link, so a folder swapped for a link
# while we walk is not followed out of the tree.  Open folders are capped: below that depth
# (a tree 1,500 folders deep is legal, and the usual limit is 1,024 open files), or when
# descriptors run out, folders are read by path, as on Windows.
_BY_DESCRIPTOR = not _STAT_FROM_LISTING and os.stat in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_MAX_OPEN_FOLDERS = 64
_OPEN_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_SUBFOLDER = _OPEN_FOLDER | getattr(os, "O_NOFOLLOW", 0)
_GONE = -1
# Removed, replaced by a file, or by a link (ELOOP on Linux, EMLINK on FreeBSD): a folder gone.
_NOT_A_FOLDER_NOW = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EMLINK)


def _listing(folder: str) -> Iterator[str | os.DirEntry[str]]:
    with os.scandir(folder) as scan:
        if _STAT_FROM_LISTING:
            return iter(sorted(scan, key=lambda e: e.name))
        return iter(sorted(entry.name for entry in scan))


# A folder being walked: its listing still to go, its descriptor (None: read by path), its path
# ending in a separator, and its member names' prefix.
_Level = tuple[Iterator[str | os.DirEntry[str]], int | None, str, str]


def _walk(folder: Path, prefix: str, exclude: tuple[str, ...], start: str = "") -> Iterator[Entry]:
    """Every entry under `folder` in name order, depth first, each stat-ed as it is reached.

    One generator with a stack of the folders being walked, not one per folder nor recursion:
    a tree 1,500 folders deep is legal and would pass Python's recursion limit, and every
    generator an entry passes through costs time on the walk an unchanged re-run consists of."""
    levels: list[_Level] = []
    excluded = _matcher(exclude) if exclude else None
    lstat, make = os.lstat, tuple.__new__  # Entry's own __new__ is a Python call: twice the cost
    try:
        _descend(levels, str(folder), prefix, _open_root(folder) if _BY_DESCRIPTOR else None)
        if start and not _seek(levels, start):
            return
        while levels:
            items, fd, base, prefix = levels[-1]
            for item in items:
                name = item if isinstance(item, str) else item.name
                relative = prefix + name
                if excluded is not None and excluded(relative, name):
                    continue
                # A database's -wal, -shm and -journal: its snapshot holds what they hold.  Also
                # when the database itself is excluded (it has a target of its own): alone they
                # restore nothing, and opening -shm in this process would drop the read lock a
                # snapshot of it holds there (see held).  Rare names: elsewhere it costs nothing.
                if name.endswith(_COMPANIONS) and _beside_its_database(base, name):
                    continue
                path = base + name
                try:
                    if fd is not None:
                        st = lstat(name, dir_fd=fd)
                    elif isinstance(item, str):
                        st = lstat(path)
                    else:
                        st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished between listing and stat
                # Hot for a million files: the type's bits compared once, no helper call per entry.
                kind = st.st_mode & _TYPE_BITS
                if kind == stat.S_IFREG:
                    size = st.st_size
                    if size >= 512 and not size % 512 and is_sqlite(Path(path), st):  # see _could_be_sqlite
                        yield make(Entry, (relative, path, "sqlite", st))
                    else:
                        yield make(Entry, (relative, path, "file", st))
                elif kind == stat.S_IFDIR:
                    if not isinstance(item, str) and _is_junction(item, st):
                        yield make(Entry, (relative, path, "link", _as_link(st)))  # a Windows junction: not followed
                        continue
                    yield make(Entry, (relative + "/", path, "dir", st))
                    sub = None
                    if fd is not None and len(levels) < _MAX_OPEN_FOLDERS:
                        sub = _open_subfolder(fd, path)
                        if sub == _GONE:
                            continue
                    if _descend(levels, path, relative + "/", sub):
                        break  # into the subfolder; this folder's listing goes on after it
                elif kind == stat.S_IFLNK:
                    yield make(Entry, (relative, path, "link", st))
                # sockets, fifos and devices are not data: skipped
            else:  # this folder is done
                levels.pop()
                if fd is not None:
                    os.close(fd)
    finally:
        for level in levels:  # a walk stopped early (a database found, an error) closes what it opened
            if level[1] is not None:
                os.close(level[1])


def _beside_its_database(base: str, name: str) -> bool:
    """Whether `name` (ending in -wal, -shm or -journal) lies beside the SQLite database it
    belongs to, in the folder whose path ends in `base`."""
    database = base + name[: -len(next(s for s in _COMPANIONS if name.endswith(s)))]
    try:
        st = os.lstat(database)  # as the walk judges it: a link to a database is a link
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and is_sqlite(Path(database), st)


def _seek(levels: list[_Level], start: str) -> bool:
    """Position a walk whose top folder is listed at member `start`: each folder on the way is
    entered without being yielded, its listing left just after it.  False when the way is gone
    (a folder on it removed, or now a file or a link): the walk then yields nothing from there."""
    names = start.rstrip("/").split("/")
    for depth, name in enumerate(names, 1):
        items, fd, base, prefix = levels[-1]
        for item in items:
            found = item if isinstance(item, str) else item.name
            if found >= name:
                break
        else:
            return False
        if depth == len(names):
            levels[-1] = (chain((item,), items), fd, base, prefix)
            return True
        if found != name:
            return False
        sub = None
        if fd is not None and len(levels) < _MAX_OPEN_FOLDERS:
            sub = _open_subfolder(fd, base + name)
            if sub == _GONE:
                return False
        # Read by path (no descriptor to spare): a folder now a link must not be followed either.
        if sub is None and (not os.path.isdir(base + name) or os.path.islink(base + name)):  # noqa: PTH112, PTH114
            return False
        if not _descend(levels, base + name, prefix + name + "/", sub):
            return False
    return True  # pragma: no cover - the loop returns at the last name


def _descend(levels: list[_Level], folder: str, prefix: str, fd: int | None) -> bool:
    """List `folder` and put it on top of the walk; False when it is gone.  `fd` (the folder
    opened, or None to read it by path) is the stack's to close once pushed, closed here if not."""
    base = os.path.join(folder, "")  # noqa: PTH118 - a str per entry: a Path each would cost more than the walk
    try:
        if fd is not None:
            try:
                levels.append((iter(sorted(os.listdir(fd))), fd, base, prefix))  # noqa: PTH208 - names only
                return True
            except OSError as exc:
                os.close(fd)
                fd = None
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                # Listing takes a descriptor of its own: ours is given back and the folder read by path.
        levels.append((_listing(folder), None, base, prefix))
        return True
    except PermissionError:
        raise _denied(folder) from None
    except FileNotFoundError:
        if prefix and not _past_windows_limit(folder):
            return False  # a subfolder removed while we walked: nothing left to archive
        if prefix:
            # Windows answers "not found" for a folder whose path is too long to use: taken for
            # one removed while we walked, its contents were left out in silence.
            raise TargetError(
                f"cannot list {folder}: its path is {len(folder)} characters, longer than Windows allows "
                "without long paths; enable them (LongPathsEnabled) or exclude it"
            ) from None
        raise _not_found(folder) from None


def _past_windows_limit(folder: str) -> bool:
    """Whether Windows may refuse `folder` for its length alone (248 for a folder, without the
    \\\\?\\ prefix or long paths enabled)."""
    return os.name == "nt" and len(folder) >= 248 and not folder.startswith("\\\\?\\")


def _not_found(source: Path | str) -> TargetError:
    return TargetError(f"source not found: {source}; check the path in the manifest")


def _denied(folder: str) -> TargetError:
    return TargetError(f"permission denied listing {folder}; fix its permissions or add it to exclude")


def _open_root(folder: Path) -> int:
    try:
        return os.open(folder, _OPEN_FOLDER)  # a target that is itself a link is followed, as kind_of does
    except PermissionError:
        raise _denied(str(folder)) from None
    except FileNotFoundError:
        raise _not_found(folder) from None


def _open_subfolder(parent: int, path: str) -> int | None:
    """A subfolder opened by its name within its open parent; _GONE when it is no longer there as
    a folder (removed, or swapped for a link or a file since it was stat-ed: O_NOFOLLOW refuses
    the link); None, to read it by path, when this process has no descriptor to spare."""
    try:
        return os.open(os.path.basename(path), _OPEN_SUBFOLDER, dir_fd=parent)  # noqa: PTH119 - a str, as Entry.path
    except PermissionError:
        raise _denied(path) from None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        if exc.errno in _NOT_A_FOLDER_NOW:
            return _GONE
        raise
