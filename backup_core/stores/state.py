"""What a target's source looked like when its newest archive was made: unchanged re-runs at
the cost of a metadata walk.

`skip_unchanged` used to build a whole archive, read it back and compare it with the
previous one, so an unchanged hourly run cost a full backup.  Like restic and borg, a run
now trusts file metadata it recorded itself: after an archive is in place, a small file
`.<target>.state` beside it holds digests of every walked entry's name, kind, size,
modification and change times (nanoseconds), inode, device and mode, one for each CHUNK
entries in walk order with the chunk's first name, and the settings that decide what is
archived.  The next run walks the source (stat only, no reads), and when every chunk, the
entry count, the settings and the newest archive all match, the source is unchanged.  On a
large tree a helper process walks the last chunks meanwhile (backup_core.stores.statewalk).

Why each field: the change time catches a file rewritten with its modification time put
back (`touch -r`, `os.utime`, some sync tools), since only the kernel sets it; the inode
catches a file replaced by another of the same size and times.

Anything doubtful falls back to the content comparison, never to a wrong `ok`:

* no state, a damaged one (its own checksum), another format, other settings, or a newest
  archive that is not the one it describes (name and size);
* an entry whose change time is within `_RACY_NS` of the walk (as git's "racily clean"
  index entries): a write in the same clock tick as our read could leave every field as we
  recorded it, so such a state is written marked racy and never trusted;
* SQLite databases: a live database's files change without its content changing and the
  reverse, so a target holding one always compares snapshots by content;
* Windows, where `st_ctime` is the creation time, not the change time;
* a run that warned (a file vanished while read): the archive may not hold what was walked.

The state is written only after its archive is in place (or, after a content comparison
found nothing new, beside the archive it matched), under a temporary name renamed in one
step; it is not synced, because a lost or torn state only costs one content comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING

from backup_core.errors import TargetError
from backup_core.sources import held
from backup_core.sources.walk import Entry, entries
from backup_core.stores import statewalk

if TYPE_CHECKING:
    from backup_core.stores.archives import Archive

FORMAT = 3  # 1 held one digest of the whole walk; 2 knew the archive by its name and size alone
CHUNK = 4096  # entries a digest covers
_RACY_NS = 2_000_000_000  # covers coarse file-system clocks (FAT: 2 s) and a tick of the kernel's
_RECORD = struct.Struct("<qqqQQIB")  # size, mtime_ns, ctime_ns, inode, device, mode, kind
_WIDE = struct.Struct("<QQQQQIB")
_64 = (1 << 64) - 1


def _pack_wide(*fields: int) -> bytes:
    """A record whose times do not fit 64 signed bits (ext4 keeps times to 2446), as _RECORD's
    bytes of its fields modulo 2**64: the same bytes as _RECORD's for every value that fits.  It
    failed every run of a skip_unchanged target holding such a file."""
    *wide, mode, kind = fields
    return _WIDE.pack(*(value & _64 for value in wide), mode, kind)


_KINDS = {"dir": 0, "link": 1, "file": 2, "sqlite": 3}
_PENDING = 64 << 10
SUPPORTED = os.name != "nt"  # Windows' st_ctime is the creation time: a change would not show


def path_of(destination: Path, target: str) -> Path:
    return destination / f".{target}.state"


def settings_key(path: Path, kind: str, exclude: tuple[str, ...], level: int, inflate_check: bool) -> str:
    """What decides an archive's content besides the files: another value never matches."""
    return json.dumps([str(path), kind, list(exclude), level, inflate_check])


class Recorder:
    """The digests of entries as they are walked (the archive's own walk, or the check's), one per
    CHUNK entries with the name of the chunk's first entry.

    Chunks, not one digest of the whole walk: a check can then give the walk's second part to
    another process (see backup_core.stores.statewalk), which starts at a chunk's first name and
    compares its own chunks, while this process compares the first part.  `first` is the index
    of the first entry this recorder sees (a chunk boundary); with `expected` (the recorded
    chunks from there), each chunk is compared as it closes and the walk stops at the first
    difference: a changed source is found without walking the rest."""

    def __init__(
        self,
        settings: str,
        now_ns: int,
        first: int = 0,
        expected: list[tuple[str, str]] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._should_stop = should_stop  # asked at every chunk; True raises TargetError
        self._racy_from = now_ns - _RACY_NS
        # Records are hashed 64 KiB at a time (the same digest as one by one, at a fraction of
        # the calls): this walk is all an unchanged re-run costs.
        self._pending = bytearray()
        self._hash = hashlib.blake2b(digest_size=20)
        self.chunks: list[tuple[str, str]] = []  # closed chunks: (first name, digest)
        self._opened = ""  # the first name of the chunk being recorded
        self._expected = expected
        self.different = False  # a closed chunk differs from the expected one
        self.first = self.count = first
        self.files = self.directories = self.bytes = 0
        self.racy = False
        self.usable = SUPPORTED  # False once a database or a doubt is seen

    def add(self, entry: Entry) -> None:
        self.add_all((entry,))

    def add_all(self, walked: Iterable[Entry]) -> bool:
        """Record every entry of `walked`; False, stopping there, once a database is met or a
        chunk differs from the expected one.

        One loop for the archive's walk (an entry at a time) and the check's (the whole walk): the
        digests are computed one way only, and the check, which is all an unchanged re-run costs,
        pays no call or attribute lookup per entry."""
        pending, pack, kinds, racy_from = self._pending, _RECORD.pack, _KINDS, self._racy_from
        count, files, directories, size_sum = self.count, self.files, self.directories, self.bytes
        racy, boundary = self.racy, count + (-count % CHUNK)
        try:
            for name, _, kind, st in walked:
                if count == boundary:
                    boundary += CHUNK
                    if self._should_stop is not None and self._should_stop():
                        raise TargetError("interrupted; nothing was written")
                    # The chunk before may be closed already: finish() closes the command's part
                    # of a split check, whose rest this process may then walk after all.
                    if len(self.chunks) < (count - self.first) // CHUNK and not self._close():
                        return False
                    self._opened = name
                ctime = st.st_ctime_ns
                if ctime >= racy_from:
                    racy = True
                size = st.st_size
                pending += name.encode("utf-8", "surrogateescape")
                pending += b"\0"
                try:
                    pending += pack(size, st.st_mtime_ns, ctime, st.st_ino, st.st_dev, st.st_mode, kinds[kind])
                except struct.error:  # a time past 2262 (or before 1677): the same bytes, wrapped
                    pending += _pack_wide(size, st.st_mtime_ns, ctime, st.st_ino, st.st_dev, st.st_mode, kinds[kind])
                if len(pending) >= _PENDING:
                    self._hash.update(pending)
                    pending.clear()
                count += 1
                if kind == "file":
                    files += 1
                    size_sum += size
                elif kind == "dir":
                    directories += 1
                elif kind == "sqlite":
                    self.usable = False
                    return False
            return True
        finally:
            self.count, self.files, self.directories, self.bytes, self.racy = count, files, directories, size_sum, racy

    def _close(self) -> bool:
        """Close the chunk being recorded; False when it differs from the one expected there."""
        self._hash.update(self._pending)
        self._pending.clear()
        self.chunks.append((self._opened, self._hash.hexdigest()))
        self._hash = hashlib.blake2b(digest_size=20)
        if self._expected is not None:
            at = len(self.chunks) - 1
            if at >= len(self._expected) or tuple(self._expected[at]) != self.chunks[at]:
                self.different = True
        return not self.different

    def finish(self) -> bool:
        """Close the last chunk (once); False when any chunk differed from the expected ones."""
        if len(self.chunks) < chunks_of(self.count - self.first):
            self._close()
        return not self.different

    def merge(self, tallies: tuple[int, int, int, int, bool, bool], chunks: list[tuple[str, str]]) -> None:
        """Add the walk's last part, which another process found to hold `chunks`."""
        self.finish()
        self.chunks.extend(chunks)
        count, files, directories, size_sum, racy, usable = tallies
        self.count += count
        self.files += files
        self.directories += directories
        self.bytes += size_sum
        self.racy, self.usable = self.racy or racy, self.usable and usable

    def tallies(self) -> tuple[int, int, int, int, bool, bool]:
        """What merge() adds: entries, files, folders, bytes, racy, usable."""
        return (self.count - self.first, self.files, self.directories, self.bytes, self.racy, self.usable)


def chunks_of(count: int) -> int:
    """How many chunks `count` entries make (the last one may be short)."""
    return -(-count // CHUNK)


def _recorded_chunks(recorded: dict[str, object]) -> list[tuple[str, str]] | None:
    chunks, count = recorded.get("chunks"), recorded.get("entries")
    if not isinstance(chunks, list) or not isinstance(count, int) or len(chunks) != chunks_of(count):
        return None
    if not all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in chunks):
        return None
    return [(name, digest) for name, digest in chunks]


def unchanged(destination: Path, target: str, kind: str, settings: str, newest: Archive, now_ns: int,
              source: Path, exclude: tuple[str, ...],
              should_stop: Callable[[], bool] = lambda: False) -> Recorder | None:  # fmt: skip
    """The walk's recorder when the source provably holds what `newest` holds, else None.
    `should_stop` is asked at every chunk: a run stopped in another thread (`--jobs`) must not
    wait for the walk of a million files to end."""
    if not SUPPORTED or kind == "sqlite":
        return None
    recorded = _load(path_of(destination, target))
    if recorded is None or recorded.get("racy") or recorded.get("settings") != settings:
        return None
    chunks = _recorded_chunks(recorded)
    if chunks is None:
        return None
    try:
        now_there = _archive_identity(newest.path.stat())
    except OSError:
        return None
    if recorded.get("archive") != newest.name or recorded.get("archive_identity") != now_there:
        # Made by another run, replaced, truncated, or written over in place: by name and size
        # alone, another whole zip of the same size copied over it passed for the archive
        # described, and a changed source was reported unchanged.
        return None
    walked = Recorder(settings, now_ns, expected=chunks, should_stop=should_stop)
    walk = entries(source, kind, exclude)
    split = statewalk.split_at(len(chunks)) if kind == "folder" else 0
    if split:
        # The walk's last chunks go to a helper process; this one compares the first ones meanwhile.
        with statewalk.Helper(source, exclude, chunks[split:], split * CHUNK, now_ns) as helper:
            if not walked.add_all(islice(walk, split * CHUNK)) or walked.count != split * CHUNK:
                return None
            following = next(walk, None)
            if following is None or following.name != chunks[split][0] or not walked.finish():
                return None  # the helper's part would not begin where this one ends
            theirs = helper.result(should_stop)
        if theirs is None:  # the helper could not run: this process walks the rest
            walk = chain((following,), walk)
        elif not theirs.same:
            return None
        else:
            walk = iter(())
            walked.merge(theirs.tallies, chunks[split:])
    if not walked.add_all(walk) or not walked.finish():
        return None  # a database appeared (its content decides), or a chunk differs
    if walked.racy or walked.count != recorded.get("entries"):
        return None
    return walked


def save(destination: Path, target: str, archive: Path, walked: Recorder, when: datetime) -> None:
    """Describe `archive` (in place already) as what the source held at `walked`'s walk.

    A state that cannot be trusted is still written (marked racy, or for a target with a
    database), so an older state never outlives the archive it described."""
    if not SUPPORTED:
        return
    walked.finish()  # closes the last chunk, however short
    body = {
        "format": FORMAT,
        "archive": archive.name,
        "archive_identity": _archive_identity(archive.stat()),
        "settings": walked.settings,
        "entries": walked.count,
        "chunks": walked.chunks,
        "racy": walked.racy or not walked.usable,
    }
    text = json.dumps(body, sort_keys=True)
    line = json.dumps({"state": body, "check": _check(text)}, sort_keys=True)
    from backup_core.stores import archives  # here: the check's helper process needs none of it

    temporary = archives.partial_path(destination, target, when, "state")  # the next run removes a leftover
    temporary.write_text(line + "\n", encoding="utf-8")
    temporary.replace(path_of(destination, target))


def _archive_identity(st: os.stat_result) -> list[int]:
    """What tells the archive described from another file under its name: its size, its time,
    its inode and (POSIX) its change time, which no one can put back.  A list: JSON's shape."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns if os.name == "posix" else 0]


def _check(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _load(path: Path) -> dict[str, object] | None:
    """The recorded state, or None when missing, unreadable, damaged or of another format."""
    try:
        document = json.loads(held.read_own(path))  # a named pipe there is no state
        body = document["state"]
        if document["check"] != _check(json.dumps(body, sort_keys=True)) or body["format"] != FORMAT:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return body if isinstance(body, dict) else None
