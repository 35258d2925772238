"""Archive names, the archives of one target, and putting a finished archive in place.

An archive is `<target>-<YYYYMMDDTHHMMSS>.<microseconds>Z.zip`: the target's name,
then a UTC timestamp that sorts as text.  Only files matching a target's exact
pattern are ever treated as its archives, so a person's own zips, another
target's archives and the original script's files are never touched.
Work in progress lives under `.<target>-<timestamp>Z.<what>.partial`, which no
reader mistakes for a finished backup.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

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


def _pattern(target: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(target)}-{_STAMP_PATTERN}\.zip")


def _partial_pattern(target: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target)}-{_STAMP_PATTERN}\.[a-z0-9-]+\.partial")


def parse_when(target: str, filename: str) -> datetime | None:
    """The UTC time in an archive's name, or None when the name is not this target's."""
    match = _pattern(target).fullmatch(filename)
    if not match:
        return None
    try:
        moment = datetime.strptime(match.group(1), _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return moment.replace(microsecond=int(match.group(2)))


def list_archives(destination: Path, target: str) -> list[Archive]:
    """The target's finished archives in `destination`, oldest first."""
    found = []
    for path in _children(destination):
        when = parse_when(target, path.name)
        if when is not None:
            found.append(Archive(when, path))
    return sorted(found)


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def next_time(now: datetime, existing: list[Archive], tolerance: timedelta = FUTURE_TOLERANCE) -> datetime:
    """`now`, or just after the newest archive when the clock has not moved past it.

    Two runs in one microsecond, or a clock a little behind another machine's, must
    neither overwrite an archive nor produce a name that sorts before one just made.
    Archives dated beyond `tolerance` after `now` were made by a clock that ran ahead:
    they are ignored here, so a new archive is named by this clock and cannot be pushed
    towards the year 9999 (nor past it, into an OverflowError).
    """
    present = [archive.when for archive in existing if archive.when <= now + tolerance]
    if present and max(present) >= now:
        return max(present) + timedelta(microseconds=1)
    return now


def partial_path(destination: Path, target: str, when: datetime, what: str) -> Path:
    return destination / f".{target}-{stamp(when)}.{what}.partial"


def stale_partials(destination: Path, target: str) -> list[Path]:
    """Work left by an interrupted run of this target (only call while holding its lock)."""
    pattern = _partial_pattern(target)
    return [path for path in _children(destination) if pattern.fullmatch(path.name)]


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
    if sys.platform == "win32":
        return False
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without flock: the lock file is the only guard
    finally:
        os.close(descriptor)  # and with it the shared lock just taken
    return False


def busy_partials(destination: Path, target: str) -> list[Path]:
    """This target's partial archives that a live run is writing (only its lock file was lost)."""
    return [path for path in stale_partials(destination, target) if path.name.endswith(".zip.partial") and in_use(path)]


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
