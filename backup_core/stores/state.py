"""What a target's source looked like when its newest archive was made: unchanged re-runs at
the cost of a metadata walk.

`skip_unchanged` used to build a whole archive, read it back and compare it with the
previous one, so an unchanged hourly run cost a full backup.  Like restic and borg, a run
now trusts file metadata it recorded itself: after an archive is in place, a small file
`.<target>.state` beside it holds a digest of every walked entry's name, kind, size,
modification and change times (nanoseconds), inode, device and mode, with the settings
that decide what is archived.  The next run walks the source (stat only, no reads), and
when the digest, the settings and the newest archive all match, the source is unchanged.

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
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from backup_core.sources.walk import Entry, entries
from backup_core.stores import archives
from backup_core.stores.archives import Archive

FORMAT = 1
_RACY_NS = 2_000_000_000  # covers coarse file-system clocks (FAT: 2 s) and a tick of the kernel's
_RECORD = struct.Struct("<qqqQQIB")  # size, mtime_ns, ctime_ns, inode, device, mode, kind
_KINDS = {"dir": 0, "link": 1, "file": 2, "sqlite": 3}
_PENDING = 64 << 10
SUPPORTED = os.name != "nt"  # Windows' st_ctime is the creation time: a change would not show


def path_of(destination: Path, target: str) -> Path:
    return destination / f".{target}.state"


def settings_key(path: Path, kind: str, exclude: tuple[str, ...], level: int, inflate_check: bool) -> str:
    """What decides an archive's content besides the files: another value never matches."""
    return json.dumps([str(path), kind, list(exclude), level, inflate_check])


class Recorder:
    """The digest of entries as they are walked (the archive's own walk, or the check's)."""

    def __init__(self, settings: str, now_ns: int) -> None:
        self.settings = settings
        self._hash = hashlib.blake2b(settings.encode("utf-8", "surrogateescape"), digest_size=20)
        self._racy_from = now_ns - _RACY_NS
        # Records are hashed 64 KiB at a time (the same digest as one by one, at a fraction of
        # the calls): this walk is all an unchanged re-run costs.
        self._pending = bytearray()
        self.count = 0
        self.files = self.directories = self.bytes = 0
        self.racy = False
        self.usable = SUPPORTED  # False once a database or a doubt is seen

    def add(self, entry: Entry) -> None:
        self.add_all((entry,))

    def add_all(self, walked: Iterable[Entry]) -> bool:
        """Record every entry of `walked`; False, stopping there, once a database is met.

        One loop for the archive's walk (an entry at a time) and the check's (the whole walk): the
        digest is computed one way only, and the check, which is all an unchanged re-run costs,
        pays no call or attribute lookup per entry."""
        pending, pack, kinds, racy_from = self._pending, _RECORD.pack, _KINDS, self._racy_from
        count, files, directories, size_sum = self.count, self.files, self.directories, self.bytes
        racy = self.racy
        try:
            for name, _, kind, st in walked:
                ctime = st.st_ctime_ns
                if ctime >= racy_from:
                    racy = True
                size = st.st_size
                pending += name.encode("utf-8", "surrogateescape")
                pending += b"\0"
                pending += pack(size, st.st_mtime_ns, ctime, st.st_ino, st.st_dev, st.st_mode, kinds[kind])
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

    def digest(self) -> str:
        self._hash.update(self._pending)
        self._pending.clear()
        return self._hash.hexdigest()


def unchanged(destination: Path, target: str, kind: str, settings: str, newest: Archive, now_ns: int,
              source: Path, exclude: tuple[str, ...]) -> Recorder | None:  # fmt: skip
    """The walk's recorder when the source provably holds what `newest` holds, else None."""
    if not SUPPORTED or kind == "sqlite":
        return None
    recorded = _load(path_of(destination, target))
    if recorded is None or recorded.get("racy") or recorded.get("settings") != settings:
        return None
    try:
        size = newest.path.stat().st_size
    except OSError:
        return None
    if recorded.get("archive") != newest.name or recorded.get("archive_size") != size:
        return None  # made by another run, replaced, or truncated: not the archive described
    walked = Recorder(settings, now_ns)
    if not walked.add_all(entries(source, kind, exclude)):
        return None  # a database appeared: its content decides
    if walked.racy or walked.count != recorded.get("entries") or walked.digest() != recorded.get("digest"):
        return None
    return walked


def save(destination: Path, target: str, archive: Path, walked: Recorder, when: datetime) -> None:
    """Describe `archive` (in place already) as what the source held at `walked`'s walk.

    A state that cannot be trusted is still written (marked racy, or for a target with a
    database), so an older state never outlives the archive it described."""
    if not SUPPORTED:
        return
    body = {
        "format": FORMAT,
        "archive": archive.name,
        "archive_size": archive.stat().st_size,
        "settings": walked.settings,
        "entries": walked.count,
        "digest": walked.digest(),
        "racy": walked.racy or not walked.usable,
    }
    text = json.dumps(body, sort_keys=True)
    line = json.dumps({"state": body, "check": _check(text)}, sort_keys=True)
    temporary = archives.partial_path(destination, target, when, "state")  # the next run removes a leftover
    temporary.write_text(line + "\n", encoding="utf-8")
    temporary.replace(path_of(destination, target))


def _check(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _load(path: Path) -> dict[str, object] | None:
    """The recorded state, or None when missing, unreadable, damaged or of another format."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        body = document["state"]
        if document["check"] != _check(json.dumps(body, sort_keys=True)) or body["format"] != FORMAT:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return body if isinstance(body, dict) else None
