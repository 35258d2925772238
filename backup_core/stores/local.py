"""Stores on the file system: a target's destination folder, and a folder remote (a NAS, a USB disk).

The destination holds `<target>-<stamp>.zip` directly; the runner writes new
archives there itself (write, read back, rename into place) and `put` is that
rename.  A folder remote holds `<prefix><target>/<name>` with a `<name>.sha256`
beside each copy, in the format `sha256sum -c` reads, so its bytes can be
checked later with or without this tool.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from pathlib import Path

from backup_core.errors import command
from backup_core.sources.held import read_own
from backup_core.stores import archives
from backup_core.stores.base import Progress, Stored, StoreError, foreign, parse, recorded_host, sha256_of, this_host

_COPY_CHUNK = 1 << 20


class LocalStore:
    """A target's destination folder on this machine."""

    name = "local"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> str:
        return str(self.folder)

    def list(self, target: str) -> list[Stored]:
        if self.folder.is_symlink() and not self.folder.exists():
            # Not "no archive yet": a link to a share that is not mounted hides the archives.
            raise StoreError(
                f"local destination {self.folder} is a link to {self.folder.readlink()}, which does not exist "
                "(is it mounted?)"
            )
        return _listing(self.folder, target)

    def put(self, target: str, file: Path, name: str, sha256: str, progress: Progress | None = None) -> Stored:
        archives.place(file, self.folder / name)
        found = parse(target, name, (self.folder / name).stat().st_size)
        assert found is not None, name
        return found

    def delete(self, target: str, stored: Stored) -> bool:
        (self.folder / stored.name).unlink(missing_ok=True)
        return True

    def fetch(self, target: str, stored: Stored, scratch: Path) -> Path:
        return self.folder / stored.name

    def check(self, target: str, stored: Stored) -> str | None:
        return None if (self.folder / stored.name).is_file() else f"{stored.name} is missing from {self.folder}"

    def checked(self, target: str, stored: Stored) -> str:
        return "it is there"

    def vouched(self, target: str, stored: Stored) -> str | None:
        return self.check(target, stored)  # the runner wrote, read back and renamed each one itself

    def recorded(self, target: str, stored: Stored) -> str | None:
        return None  # archives here are checked by reading them (verify), not against a record

    def sender(self, target: str, stored: Stored) -> str:
        return ""  # this host's own folder


class FolderStore:
    """A folder remote: copies under <path>/<prefix><target>/, each with its SHA-256 beside it."""

    def __init__(self, name: str, root: Path, prefix: str = "", max_bandwidth: int | None = None) -> None:
        self.name, self.root, self.prefix = name, root, prefix
        self.max_bandwidth = max_bandwidth  # bytes per second: a share on a busy network, a USB disk

    def describe(self) -> str:
        return str(self.root / self.prefix) if self.prefix else str(self.root)

    def _folder(self, target: str) -> Path:
        return self.root / f"{self.prefix}{target}"

    def list(self, target: str) -> list[Stored]:
        if not self.root.is_dir():
            raise StoreError(f"remote {self.name}: {self.root} is not a folder (is the disk mounted?)")
        folder = self._folder(target)
        try:
            return _listing(folder, target)
        except NotADirectoryError:
            raise StoreError(
                f"remote {self.name}: {folder} is a file where the target's folder of copies should be; move it away"
            ) from None
        except OSError as exc:
            raise StoreError(f"remote {self.name}: cannot list {folder}: {_reason(exc)}") from None

    def put(self, target: str, file: Path, name: str, sha256: str, progress: Progress | None = None) -> Stored:
        folder = self._folder(target)
        final, partial = folder / name, folder / f".{name}.partial"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(final):
                if not final.is_file() or final.is_symlink():
                    # A link would be hashed and counted through, though no copy is there.
                    raise StoreError(
                        f"remote {self.name}: {final} is not a file (a link or a folder); it was neither "
                        "followed nor overwritten, and no copy is counted there: move it away"
                    )
                return self._existing(target, final, sha256)
            # A partial copy of this archive is a run's that was killed (this one holds the
            # target's lock): it is begun again, not taken for someone's file.
            archives.remove(partial)
            _clear_stale_copies(folder, target)
            written = _copy(file, partial, progress, self.max_bandwidth)
            # What reached the remote disk must be what was verified here: hash it once more
            # from the copy, not from what we meant to write.
            if written != sha256 or sha256_of(partial) != sha256:
                raise StoreError(
                    f"remote {self.name}: the copy of {name} differs from the verified archive "
                    "(checksum mismatch); nothing was kept"
                )
            # The host in a file of its own: BusyBox's sha256sum -c fails on any other line.  Plain
            # \n on Windows too: a share's copies are checked from other systems (`name\r` is missing).
            _write_record(_host_file(final), recorded_host(this_host()) + "\n")
            _write_record(_sidecar(final), f"{sha256}  {name}\n")
            _place_new(partial, final)
            archives.sync_folder(folder)
        except OSError as exc:
            raise StoreError(f"remote {self.name}: cannot write {final}: {_reason(exc)}") from None
        finally:
            archives.remove(partial)
        stored = parse(target, name, final.stat().st_size)
        assert stored is not None, name
        return stored

    def _existing(self, target: str, final: Path, sha256: str) -> Stored:
        # A copy from an earlier run that stopped before it could say so: keep it if it is the same.
        recorded = _recorded(final)
        if recorded in (sha256, None) and sha256_of(final) == sha256:
            if recorded is None:
                # Its record is gone (deleted by hand, or by a sync tool), but its bytes are the
                # verified archive's, just hashed: record them again rather than call it foreign.
                _write_record(_sidecar(final), f"{sha256}  {final.name}\n")
            stored = parse(target, final.name, final.stat().st_size)
            assert stored is not None
            return stored
        unrecorded = (
            f"it has no recorded checksum either ({_sidecar(final).name} is missing); " if recorded is None else ""
        )
        raise StoreError(
            f"remote {self.name}: {final} already exists with other content; it was not overwritten "
            f"({unrecorded}check it with `{command(f'verify --remote {self.name}')}`, then move or delete it)"
        )

    def delete(self, target: str, stored: Stored) -> bool:
        path = self._folder(target) / stored.name
        try:
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
            _host_file(path).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"remote {self.name}: cannot delete {path}: {_reason(exc)}") from None
        return True

    def fetch(self, target: str, stored: Stored, scratch: Path) -> Path:
        return self._folder(target) / stored.name

    def check(self, target: str, stored: Stored) -> str | None:
        path = self._folder(target) / stored.name
        recorded = _recorded(path)
        if recorded is None:
            return f"{stored.name} has no recorded checksum ({_sidecar(path).name} is missing or unreadable)"
        try:
            actual = sha256_of(path)
        except OSError as exc:
            return f"cannot read {path}: {_reason(exc)}"
        if actual != recorded:
            return f"{stored.name} does not match the checksum recorded when it was copied: it was changed or damaged"
        return None

    def checked(self, target: str, stored: Stored) -> str:
        return "its SHA-256, read in full, matches the one recorded at upload"

    def recorded(self, target: str, stored: Stored) -> str | None:
        return _recorded(self._folder(target) / stored.name)

    def sender(self, target: str, stored: Stored) -> str:
        return _recorded_host(self._folder(target) / stored.name)

    def vouched(self, target: str, stored: Stored) -> str | None:
        path = self._folder(target) / stored.name
        if _recorded(path) is None:
            return f"{stored.name} has no recorded checksum ({_sidecar(path).name} is missing or unreadable)"
        if other := foreign(stored.name, _recorded_host(path)):
            return other
        # put() writes the checksum after the copy is whole, so a copy newer than it was touched
        # since: by a rewrite, or only by a copy of the share that did not keep times.  Only
        # then are its bytes read, to tell the two apart.
        try:
            if path.stat().st_mtime_ns <= _sidecar(path).stat().st_mtime_ns:
                return None
        except OSError as exc:
            return f"cannot read {path}: {_reason(exc)}"
        return self.check(target, stored)


def _listing(folder: Path, target: str) -> list[Stored]:
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        stored = parse(target, entry.name)
        if stored is not None and entry.is_file(follow_symlinks=False):
            found.append(Stored(stored.when, stored.name, entry.stat(follow_symlinks=False).st_size))
    return sorted(found)


# A copy being written has its time moved by every write, even through a slow link: one left
# untouched this long was begun by a run that was killed.  A day, not an hour: a share may
# show an open file's old time until it is closed, and hosts wrongly sharing a prefix upload
# to the same folder.
_STALE_COPY = 24 * 3600


def _clear_stale_copies(folder: Path, target: str) -> None:
    """Remove the partial copies of the target's other archives, and the scratch files of their
    records, that killed runs left: nothing else would (only a copy of the same archive begins
    again from its own), and the keep may never want that archive again."""
    now = time.time()
    for entry in os.scandir(folder):
        name = entry.name
        # A copy's, or a scratch of its checksum or host file (see _write_record).
        suffix = next((end for end in (".partial", ".sha256.tmp", ".host.tmp") if name.endswith(end)), None)
        if suffix is None or not name.startswith(f".{target}-"):
            continue
        if parse(target, name[1 : -len(suffix)]) is None:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_COPY:
                archives.remove(Path(entry.path))
        except OSError:
            continue  # gone meanwhile, or not ours to judge


def _sidecar(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def _host_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.host")


def _write_record(path: Path, text: str) -> None:
    """Write a copy's checksum or host file whole, under a scratch name renamed over it: opened
    in place, a named pipe under its name held the run (and the target's lock) for ever.
    Plain \n on Windows too: a share's copies are checked from other systems (`name\r` is missing)."""
    scratch = path.with_name(f".{path.name}.tmp")
    try:
        scratch.write_text(text, encoding="utf-8", newline="\n")
        scratch.replace(path)
    finally:
        archives.remove(scratch)


def _recorded_host(path: Path) -> str:
    """The host recorded beside a copy; "" for none (a copy made before hosts were recorded)."""
    try:
        return read_own(_host_file(path)).strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _recorded(path: Path) -> str | None:
    try:
        text = read_own(_sidecar(path))
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(" ", 1)[0].strip()
    return digest if len(digest) == 64 else None


def _copy(source: Path, partial: Path, progress: Progress | None, max_bandwidth: int | None = None) -> str:
    """Copy to a new file, at most `max_bandwidth` bytes a second, fsync it, and return the SHA-256 of what was read."""
    digest = hashlib.sha256()
    started, sent = time.monotonic(), 0
    with source.open("rb") as reader, archives.create_private(partial) as writer:
        while block := reader.read(_COPY_CHUNK):
            digest.update(block)
            writer.write(block)
            sent += len(block)
            if progress:
                progress(len(block))
            if max_bandwidth:
                # Ahead of the allowed rate: wait until the bytes sent so far are due.
                time.sleep(max(0.0, sent / max_bandwidth - (time.monotonic() - started)))
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def _place_new(partial: Path, final: Path) -> None:
    """Rename into place, never over an existing file (a hard link refuses to replace one)."""
    try:
        os.link(partial, final)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise StoreError(f"{final} appeared while it was copied; it was not overwritten") from None
        # A file system without hard links (FAT on a USB disk, some shares): check, then move.
        if final.exists():
            raise StoreError(f"{final} appeared while it was copied; it was not overwritten") from None
        shutil.move(partial, final)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the remote"
    return exc.strerror or str(exc)
