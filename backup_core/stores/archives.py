"""Archive names, the archives of one target, and putting a finished archive in place.

An archive is `<target>-<YYYYMMDDTHHMMSS>.<microseconds>Z.zip`: the target's name,
then a UTC timestamp that sorts as text.  Only files matching a target's exact
pattern are ever treated as its archives, so a person's own zips, another
target's archives and the original script's files are never touched.
Work in progress lives under `.<target>-<timestamp>Z.<what>.partial`, which no
reader mistakes for a finished backup.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, NamedTuple

from backup_core.errors import TargetError, command
from backup_core.sources.held import OPEN_SOURCE, read_own
from backup_core.stores.retention import FUTURE_TOLERANCE

if sys.platform != "win32":
    import fcntl

_STAMP = "%Y%m%dT%H%M%S"
_STAMP_PATTERN = r"(\d{8}T\d{6})\.(\d{6})Z"


@dataclass(frozen=True, order=True)
class Archive:
    """A finished archive of a target, ordered by the time in its name."""

    when: datetime
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def stamp(when: datetime) -> str:
    return f"{when.astimezone(timezone.utc).strftime(_STAMP)}.{when.microsecond:06d}Z"


def archive_name(target: str, when: datetime) -> str:
    return f"{target}-{stamp(when)}.zip"


# One pattern for every target, its name compared after the match: a run of 1,000 targets
# would otherwise compile two patterns per target.  The time stamp's fixed width leaves a
# name one way to split.
_ARCHIVE = re.compile(rf"(.+)-{_STAMP_PATTERN}\.zip", re.DOTALL)
_PARTIAL = re.compile(rf"\.(.+)-{_STAMP_PATTERN}\.[a-z0-9-]+\.partial", re.DOTALL)


def parse_when(target: str, filename: str) -> datetime | None:
    """The UTC time in an archive's name, or None when the name is not this target's."""
    match = _ARCHIVE.fullmatch(filename)
    if not match or match.group(1) != target:
        return None
    # Sliced, not strptime: that costs 20 µs a name, three names a target, and the pattern
    # has already fixed every digit's place.  datetime() refuses a month 13 as strptime does.
    stamp = match.group(2)
    try:
        return datetime(
            int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
            int(stamp[13:15]), int(match.group(3)), tzinfo=timezone.utc,
        )  # fmt: skip
    except ValueError:
        return None


def list_archives(destination: Path, target: str, names: list[str] | None = None) -> list[Archive]:
    """The target's finished archives in `destination`, oldest first; `names`: its listing, if taken."""
    found = []
    prefix = f"{target}-"
    for name in listing(destination) if names is None else names:
        # The cheap test first: a folder shared by 1,000 targets holds thousands of other names.
        if name.startswith(prefix):
            when = parse_when(target, name)
            if when is not None:
                found.append(Archive(when, destination / name))
    return sorted(found)


# One listing of a folder serves every target of a run that shares it (1,000 targets in one
# folder would otherwise list it 1,000 times), kept only while a run goes on (see
# one_listing_per_run).
@dataclass
class _Listing:
    changed: int  # the folder's mtime just before it was listed
    names: list[str]
    by_target: dict[str, list[str]] | None = None  # built when the listing is first reused

    def of(self, target: str) -> list[str]:
        """The names that may be `target`'s archives or partials, from an index built once."""
        if self.by_target is None:
            self.by_target = {}
            for name in self.names:
                owner = _owner(name)
                if owner is not None:
                    self.by_target.setdefault(owner, []).append(name)
        return self.by_target.get(target, [])


def _owner(name: str) -> str | None:
    """The target whose archive or partial `name` is; None if it is neither."""
    match = _ARCHIVE.fullmatch(name) or _PARTIAL.fullmatch(name)
    return match.group(1) if match else None


_listings: dict[Path, _Listing] = {}
_listings_lock = threading.Lock()
_runs = [0]  # runs going on in this process


@contextmanager
def one_listing_per_run() -> Iterator[None]:
    """Within this, target_names() may reuse a listing of the same folder; each target is run once."""
    with _listings_lock:
        _runs[0] += 1
    try:
        yield
    finally:
        with _listings_lock:
            _runs[0] -= 1
            if not _runs[0]:
                _listings.clear()


# Close events can carry one time stamp: two seconds apart on FAT, one on file systems that
# store whole seconds.  A file system that stores fractions stamps from a clock that moves
# every kernel tick (1 to 10 ms on Linux) or finer (NTFS: 100 ns), so a tenth of a second is
# ten of the slowest ticks.  With two seconds for every file system, a 1,000-target run in
# one folder listed it again for nearly every target of the run after it (their lock files
# were all touched within two seconds of the folder's last change): 2 ms a target.
_COARSE_TICK_NS = 2_000_000_000
_FINE_TICK_NS = 100_000_000


def _tick(stamp_ns: int) -> int:
    """How far apart two events stamped alike may be, judged by one of the file system's stamps."""
    return _COARSE_TICK_NS if stamp_ns % 1_000_000_000 == 0 else _FINE_TICK_NS


def listing(folder: Path) -> list[str]:
    """The names in `folder` (none if it does not exist yet), listed now."""
    try:
        changed = folder.stat().st_mtime_ns  # before listing: a change after it shows as newer
        names = os.listdir(folder)  # noqa: PTH208 - names only: a Path per name costs more than the listing
    except FileNotFoundError:
        return []
    with _listings_lock:
        if _runs[0]:
            _listings[folder] = _Listing(changed, names)
    return names


def target_names(folder: Path, target: str, marker: Path, marker_created: bool) -> list[str]:
    """The names in `folder` that may be `target`'s archives or partials.

    `marker` is the target's lock file.  A listing taken earlier in this run is reused when
    it is provably current for that target: only a run holding the target's lock adds or
    removes its archives, and such a run touches the lock file after it did (mark_changed),
    and again, creating it if it was deleted, once its partial archive exists (mark_writing).
    A marker touched after the folder last changed before the listing may mean a change the
    listing missed, so the folder is listed again.  Both times come from the folder's own
    file system, so a server whose clock differs from ours cannot fool it.
    `marker_created`: this run has just created the marker, so it says nothing (it may have
    been deleted under a live run whose partial came after the listing): list again.
    """
    if not marker_created:
        with _listings_lock:
            cached = _listings.get(folder) if _runs[0] else None
        if cached is not None:
            try:
                touched: int | None = marker.stat().st_mtime_ns
            except FileNotFoundError:
                touched = 0  # never locked here (check mode): no run of this tool changed the target's archives
            except OSError:
                touched = None
            if touched is not None and touched < cached.changed - _tick(cached.changed):
                with _listings_lock:  # jobs > 1: one thread builds the index
                    return cached.of(target)
    prefixes = (f"{target}-", f".{target}-")
    return [name for name in listing(folder) if name.startswith(prefixes)]


def mark_changed(marker: Path) -> None:
    """Say that this target's archives changed: other runs' listings of the folder are stale for it."""
    # Failing, the others miss our change until their next run: they keep an archive longer.
    with contextlib.suppress(OSError):
        os.utime(marker)


def mark_writing(marker: Path) -> None:
    """Say, once this target's partial archive exists, that other runs' listings may lack it.

    A run that finds the marker newer than its listing lists the folder again, and so sees
    the partial and that it is in use.  The marker is created again if a person deleted it:
    a run that then creates it lists the folder again too (see target_names).
    """
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o666))
    os.utime(marker)


def next_time(now: datetime, existing: list[Archive], tolerance: timedelta = FUTURE_TOLERANCE) -> datetime:
    """`now`, or just after the newest archive when the clock has not moved past it.

    Two runs in one microsecond, or a clock a little behind another machine's, must
    neither overwrite an archive nor produce a name that sorts before one just made.
    Archives dated beyond `tolerance` after `now` were made by a clock that ran ahead:
    they are ignored here, so a new archive is named by this clock and cannot be pushed
    towards the year 9999 (nor past it, into an OverflowError).
    """
    present = [archive.when for archive in existing if archive.when <= now + tolerance]
    moment = max(present) + timedelta(microseconds=1) if present and max(present) >= now else now
    # An archive dated just past the tolerance may hold that very name (one microsecond past it,
    # when the newest sits exactly at it): step past every name taken.
    taken = {archive.when for archive in existing}
    while moment in taken:
        moment += timedelta(microseconds=1)
    return moment


_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, counts, size, offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")


class Ending(NamedTuple):
    """How a file ends, as a zip should: what is wrong with it (None: it is whole), and its comment."""

    problem: str | None
    comment: bytes = b""
    readable: bool = True  # False: the file could not be read, so nothing is known of its shape
    members: int = 0  # of a whole zip: the entries its end record counts

    @property
    def broken(self) -> bool:
        """Known not to end as a whole zip (a file that could not be read is not judged)."""
        return self.readable and self.problem is not None


def ending(path: Path) -> Ending:
    """Whether `path` ends as a whole zip does: an end-of-central-directory record (written last,
    its comment running exactly to the end of the file) pointing at a central directory that is
    there.  Reads the last 64 KiB and a few bytes: cheap enough to ask of an archive that
    retention is about to trust as the newest, whatever its size (parsing its directory could
    take seconds)."""
    try:
        if (odd := not_a_file(path)) is not None:
            return Ending(odd)
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size - (_END.size + 0xFFFF))
            file.seek(start)
            tail = file.read()
            # The record whose comment ends where the file does: the signature's bytes may also
            # stand inside a comment (it holds file names and error text).
            at = tail.rfind(b"PK\x05\x06")
            while at >= 0 and not (
                len(tail) - at >= _END.size and at + _END.size + _END.unpack_from(tail, at)[7] == len(tail)
            ):
                at = tail.rfind(b"PK\x05\x06", 0, at)
            if at < 0:
                return Ending(_no_end(file, tail, start, size))
            _, _, _, _, count, length, offset, _ = _END.unpack_from(tail, at)
            comment = tail[at + _END.size :]
            end = start + at
            if 0xFFFFFFFF in (offset, length) or count == 0xFFFF:  # ZIP64: the real figures are in its own record
                if at < _ZIP64_LOCATOR.size or tail[at - _ZIP64_LOCATOR.size : at - 16] != b"PK\x06\x07":
                    return Ending("its ZIP64 end record is missing", comment)
                where = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)[2]
                file.seek(where)
                record = file.read(_ZIP64_END.size)
                if len(record) < _ZIP64_END.size or record[:4] != b"PK\x06\x06":
                    return Ending("its ZIP64 end record is missing", comment)
                count, length, offset = _ZIP64_END.unpack(record)[7:10]
                end = where
            if offset + length != end:
                return Ending("its central directory is not where its end record says", comment)
            if count:
                file.seek(offset)
                if file.read(4) != b"PK\x01\x02":
                    return Ending("its central directory is not where its end record says", comment)
    except OSError as exc:
        return Ending(f"it cannot be read ({exc.strerror or exc})", readable=False)
    except (ValueError, OverflowError):  # a ZIP64 locator pointing past any possible offset
        return Ending("its ZIP64 end record is missing")
    return Ending(None, comment, members=count)


def not_a_file(path: Path) -> str | None:
    """What `path` is when it is no regular file (so no archive this tool made), told without
    opening it, or None for a file.  Put there by hand: a link may point anywhere (or nowhere),
    and opening a named pipe waits for a writer that never comes.  Raises OSError when `path`
    cannot be looked at."""
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe")]
    return f"it is {next((words for test, words in kinds if test(mode)), 'a special file')}, not a file"


class Doubt(NamedTuple):
    """Why an archive is no ground for deleting older ones (see doubt)."""

    why: str
    forceable: bool  # only its comment speaks against it: prune --force goes past it

    @property
    def anyway(self) -> str:
        """The advice that ends a refusal: how to delete all the same, where that is allowed."""
        return f", or run {command('prune --force')} to delete anyway" if self.forceable else ""


def doubt(path: Path, forced: bool = False) -> Doubt | None:
    """Why the archive at `path` is no ground for deleting older ones, or None: it does not end as
    a whole zip (or cannot be read), or its comment says a database was left out of it or files in
    it changed while they were read (see packing.unsettled_note; not asked when `forced`, as
    prune --force asks).  Retention trusts the newest archive it keeps by its name: an older one
    may be the last that holds what this one lacks.  One read of the archive's end."""
    from backup_core.zip.packing import unsettled_note

    found = ending(path)
    if found.problem is not None:
        return Doubt(f"it is not a whole archive ({found.problem})", forceable=False)
    note = None if forced else unsettled_note(found.comment)
    return Doubt(note, forceable=True) if note is not None else None


def _no_end(file: BinaryIO, tail: bytes, start: int, size: int) -> str:
    """Why no end record ends the file: bytes after a whole zip's own end record (appended, or
    left of a longer file), else none at all.  A record counts as the archive's own only when
    its central directory ends right before it and begins where it says: a stored member (a
    .zip or .docx in the tree) carries end records of its own, and one of those in a cut-short
    archive is no reason to speak of appended bytes."""
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0:
        if len(tail) - at >= _END.size:
            _, _, _, _, _, length, offset, comment = _END.unpack_from(tail, at)
            after = len(tail) - (at + _END.size + comment)
            if after > 0 and offset + length == start + at:
                file.seek(offset)
                if file.read(4) == b"PK\x01\x02":
                    return f"it has {after} bytes after the end of its zip (appended to it, or left of a longer file)"
        at = tail.rfind(b"PK\x05\x06", 0, at)
    return f"it is {size} bytes with no end of a zip: empty, cut short or not a zip"


def file_in_the_way(path: Path) -> Path | None:
    """The file standing where `path` or a folder on its way must be a folder, if any: mkdir
    names none ("File exists"), which reads as if the last name were the problem."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def create_private(path: Path, buffering: int = -1) -> BinaryIO:
    """Create `path` new, for writing, readable by its owner only, whatever the umask: an
    archive (here, in a folder remote, decrypted for a restore) holds the server's secrets.
    Never over an existing file, and never through a link planted at its name."""
    # One call, so that the file object owns the descriptor from the start.  Made in two steps
    # (os.open, then os.fdopen, closing the descriptor by hand if that failed), a signal's
    # KeyboardInterrupt raised as fdopen returned closed it twice: once as the new object was
    # dropped, once by hand.  The second close failed with "Bad file descriptor" (a database
    # snapshot stopped by SIGTERM reported that instead of the interrupt), or could shut a
    # file that had taken the number meanwhile.  An interrupt inside the opener can still leak
    # the descriptor until the run ends, which it is about to.  Holding interrupts back around
    # the call would prevent that, but would also leave an open that blocks (a hung network
    # mount) deaf to Ctrl-C and SIGTERM.  "x" is O_CREAT | O_EXCL.
    return open(path, "xb", buffering=buffering, opener=owner_only)


def owner_only(path: str, flags: int) -> int:
    """An opener for open(): a file it creates is readable and writable by its owner only."""
    return os.open(path, flags, 0o600)


def partial_path(destination: Path, target: str, when: datetime, what: str) -> Path:
    return destination / f".{target}-{stamp(when)}.{what}.partial"


def stale_partials(destination: Path, target: str, names: list[str] | None = None) -> list[Path]:
    """Work left by an interrupted run of this target (only call while holding its lock)."""
    prefix = f".{target}-"
    found = listing(destination) if names is None else names
    return [destination / name for name in found if name.startswith(prefix) and _partial_of(name) == target]


def _partial_of(name: str) -> str | None:
    match = _PARTIAL.fullmatch(name)
    return match.group(1) if match else None


def claim(descriptor: int) -> None:
    """Mark the open partial archive `descriptor` as being written by this process, until closed.

    The target's lock file is the first guard against two runs, but a person can delete it
    while a run works; the next run would then take the first run's partial for a stale one
    and delete it.  An flock on the partial itself (POSIX) says "alive" whatever happened to
    the lock file, and is released by the kernel when the process dies.  Windows needs none:
    a file open for writing there cannot be deleted.
    """
    if sys.platform != "win32":
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


def in_use(path: Path) -> bool:
    """Whether a live run is writing the partial archive `path` (see claim)."""
    return sys.platform != "win32" and _held(path) is True


def abandoned(path: Path) -> bool:
    """Whether `path`, a file a process claimed (see claim), is known to be held by none now: its
    process ended.  False when it is held, missing, or the file system cannot say (no flock).
    On Windows the file is deleted if it can be, which only a file no process holds open can."""
    if sys.platform == "win32":
        try:
            path.unlink()
        except OSError:
            return False
        return True
    return _held(path) is False


def _held(path: Path) -> bool | None:
    """POSIX: whether a live process holds an flock on `path` (see claim); None when that cannot
    be told (the file is missing or unreadable, or the file system has no flock: the lock file
    is then the only guard)."""
    try:
        descriptor = os.open(path, OPEN_SOURCE)  # a named pipe under its name must not hold us
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(descriptor)  # and with it the shared lock just taken
    return False


def busy_partials(destination: Path, target: str, names: list[str] | None = None) -> list[Path]:
    """This target's partial archives that a live run is writing (only its lock file was lost);
    `names`: the folder's listing, current for this target (see target_names), if taken."""
    return [
        path for path in stale_partials(destination, target, names)
        if path.name.endswith(".zip.partial") and in_use(path)
    ]  # fmt: skip


def place(partial: Path, final: Path) -> None:
    """Atomically rename a finished archive into place, never over an existing file."""
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    for attempt in range(10):
        try:
            partial.replace(final)
            break
        except PermissionError:
            # Windows: an indexer or virus scanner may hold the new file for a moment.
            if sys.platform != "win32" or attempt == 9:
                raise
            time.sleep(0.1 * (attempt + 1))
    sync_folder(final.parent)


def remove(path: Path) -> bool:
    """Delete `path` if it exists; False if it could not be (the next run's clean-up retries)."""
    for attempt in range(10):
        try:
            path.unlink(missing_ok=True)
            return True
        except PermissionError:
            # Windows: a process that held it open (a worker, a virus scanner) may take a moment.
            if sys.platform != "win32" or attempt == 9:
                return False
            time.sleep(0.1 * (attempt + 1))
        except OSError:
            return False
    return False


def sync_folder(folder: Path) -> None:
    """Make a rename or deletion in `folder` durable (POSIX; Windows has no folder handles)."""
    if sys.platform == "win32":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- where a target's archives come from ------------------------------------------------------
# Archives are found by the target's name alone: two manifests, or two hosts sharing a folder,
# that give a target the same name and destination would each rotate and restore the other's.


def _origin_path(destination: Path, target: str) -> Path:
    return destination / f".{target}.origin"


class OriginUnreadable(TargetError):
    """The record of where a target's archives come from is there, but cannot be read."""


def origin(destination: Path, target: str) -> tuple[str, str] | None:
    """The host and source path recorded for the target's archives in `destination`, or None when
    none is recorded.  Raises OriginUnreadable for a record that is there but cannot be read or
    is empty or garbled: taken for none, it let another manifest's run adopt the archives and
    rotate them away."""
    where = _origin_path(destination, target)
    try:
        text = read_own(where)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OriginUnreadable(f"{where} cannot be read ({exc.strerror or exc})") from None
    # Lines as written on Windows before this was written with \n only: host\r\npath\r\n.
    host, _, rest = text.partition("\n")
    host, path = host.removesuffix("\r"), rest.partition("\n")[0].removesuffix("\r")
    if not host.strip() or not path.strip():
        raise OriginUnreadable(f"{where} is empty or damaged")
    return host, path


def made_elsewhere(destination: Path, target: str, source: Path, host: str) -> str | None:
    """ "from PATH" or "from PATH on host HOST" when the target's archives in `destination` were
    recorded as made of another source than `source` on `host`; None when they were not, or
    nothing is recorded.  Raises OriginUnreadable as origin() does."""
    found = origin(destination, target)
    if found is None or alike(found, (host, str(source))):
        return None
    made = f"from {found[1]}"
    return made if alike((found[0], ""), (host, "")) else f"{made} on host {found[0]}"


def alike(one: tuple[str, str], other: tuple[str, str]) -> bool:
    """Whether two origins (host, source path) are the same: host names ignore case, as DNS
    does; Windows paths too."""
    paths = (one[1].casefold(), other[1].casefold()) if os.name == "nt" else (one[1], other[1])
    return one[0].casefold() == other[0].casefold() and paths[0] == paths[1]


def record_origin(destination: Path, target: str, host: str, path: str) -> None:
    """Record (atomically) that the target's archives in `destination` come from `path` on `host`."""
    final = _origin_path(destination, target)
    scratch = final.with_name(f"{final.name}.tmp")
    try:
        scratch.write_text(f"{host}\n{path}\n", encoding="utf-8", errors="surrogateescape", newline="\n")
        scratch.replace(final)
    except OSError:
        remove(scratch)
        raise


# --- an unchanged source, found so ----------------------------------------------------------------
# With skip_unchanged, a run that finds the source unchanged writes no archive: the newest one
# keeps its old date, and `status` judged the target by that date, failing a max_age of 26h
# three days after the last change although every run since had checked the source.  Such a
# run records here which archive it found the source matching, and when.


def _confirmed_path(destination: Path, target: str) -> Path:
    return destination / f".{target}.unchanged"


def confirm(destination: Path, target: str, archive: str, when: datetime) -> None:
    """Record that the source was found to hold what `archive` holds, at `when` (atomically:
    a torn record would read as none).  OSError when it cannot be written."""
    final = _confirmed_path(destination, target)
    scratch = final.with_name(f"{final.name}.tmp")  # one writer: the run holding the target's lock
    try:
        scratch.write_text(f"{archive}\n{when.astimezone(timezone.utc).isoformat()}\n", encoding="utf-8")
        scratch.replace(final)  # os.replace: atomic on Windows too
    except OSError:
        remove(scratch)
        raise


def confirmation(destination: Path, target: str) -> tuple[str, datetime] | None:
    """The archive a run last found the source unchanged from, and when; None when there is no
    (readable) record."""
    try:
        archive, when = _confirmed_path(destination, target).read_text(encoding="utf-8").split("\n")[:2]
        moment = datetime.fromisoformat(when)
    except (OSError, ValueError):
        return None
    return (archive, moment) if moment.tzinfo is not None else None
