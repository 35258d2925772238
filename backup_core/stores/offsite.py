"""Offsite copies: bring a remote up to date with a target's local archives, then apply the remote's keep.

What is uploaded is chosen with the remote's own retention policy over what it
already holds plus what it lacks, so an archive the policy would delete at once
is never sent; the rest go newest first, so after a bad night the most recent
backup is offsite soonest.  Nothing is deleted from a remote unless every upload
of the run succeeded, and the newest copy is never deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup_core.errors import TargetError, UsageError, command
from backup_core.manifest import Remote, Target
from backup_core.results import OffsiteResult
from backup_core.stores import archives, retention
from backup_core.stores.base import Foreign, Progress, Store, Stored, StoreError, sha256_of
from backup_core.stores.local import FolderStore, LocalStore

if TYPE_CHECKING:  # imported where used: a backup that copies nothing verifies nothing here
    from backup_core.zip.verify import Verdict


def store_for(remote: Remote) -> Store:
    """The store a remote names, wrapped in encryption when it asks for it."""
    store: Store
    if remote.type == "s3":
        from backup_core.stores.s3 import S3Store

        store = S3Store(remote)
    else:
        assert remote.path is not None
        store = FolderStore(remote.name, remote.path, remote.prefix, remote.max_bandwidth)
    if remote.encrypted:
        from backup_core.stores.encryption import EncryptedStore

        store = EncryptedStore(store, remote.recipients)
    return store


def _stored_name(remote: Remote, archive: str) -> str:
    return archive + (".age" if remote.encrypted else "")


def _when(stored: Stored) -> datetime:
    return stored.when


def replicate(
    target: Target,
    remote: Remote,
    check: bool = False,
    prune: bool = True,
    progress: Callable[[int], Progress] | None = None,
    planned: Stored | None = None,
    now: datetime | None = None,
) -> OffsiteResult:
    """Upload what `remote` lacks of the target's local archives, then (with `prune`) apply its keep.

    `progress`, when given, is told the bytes to send and returns what to call as they go.

    In check mode nothing is sent or deleted; `planned` stands for the archive a backup would make."""
    store = store_for(remote)
    result = OffsiteResult(remote.name, store.describe())
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    local = LocalStore(target.destination)
    try:
        held = _held(store, target, remote)
        have = {stored.archive for stored in held}
        ours = local.list(target.name) + ([planned] if planned else [])
        missing = _whole_only(target, remote, [a for a in ours if a.name not in have and a is not planned], result)
        missing += [planned] if planned and planned.name not in have else []
        # A copy of the newest archive that is already there is proven, not trusted by its name:
        # put() keeps an identical one and refuses one with other bytes.  (An encrypted copy
        # cannot be compared without its key; its name carries the proof of its upload.)
        confirm = [ours[-1]] if ours and ours[-1].name in have and not remote.encrypted else []
        planned_here, unvouched = _plan(store, target, remote, held, missing, result, now)
        if check and confirm and ours[-1].name in {s.name for s in unvouched}:
            # The run itself would find it and refuse to overwrite it: say so now.
            raise StoreError(
                f"remote {remote.name}: {ours[-1].name} is already there, but not as this tool put it; "
                f"check it with `{command(f'verify --remote {remote.name}')}`, then move or delete it"
            )
        held = [s for s in held if s not in unvouched]
        wanted = set(planned_here.kept)
        uploads = [a for a in reversed(missing) if a in wanted]  # newest first
        doomed = [a for a in planned_here.deleted if a in held] if prune else []
        if doomed and (doubt := _doubt_of_newest_kept(target, remote, planned_here.kept, now, planned=planned)):
            # The copies are still sent: a backup or push is no prune, and a remote left
            # behind serves no one.  Only the deletions wait.
            result.warnings.append(doubt)
            doomed = []
        if check:
            result.uploaded = [_stored_name(remote, a.name) for a in uploads]
            result.deleted = [a.name for a in doomed]
            result.copies = len(held) + len(uploads) - len(doomed)
            return result
        advance = progress(sum(a.size for a in uploads)) if progress and uploads else None
        for archive in [*confirm, *uploads]:
            path = local.fetch(target.name, archive, target.destination)
            # An encrypted copy records its ciphertext's checksum: hashing the plaintext would be wasted.
            digest = "" if remote.encrypted else sha256_of(path)
            sent = store.put(target.name, path, _stored_name(remote, archive.name), digest, advance)
            if archive not in confirm:
                result.uploaded.append(sent.name)
                result.bytes += archive.size
        for stored in doomed:
            if store.delete(target.name, stored):
                result.deleted.append(stored.name)
            else:
                result.locked.append(stored.name)
        result.copies = len(held) + len(uploads) - len(result.deleted)
    except StoreError as exc:
        result.error = str(exc)
    except OSError as exc:
        result.error = f"remote {remote.name}: {exc.strerror or exc} ({exc.filename or target.destination})"
    except KeyboardInterrupt as exc:
        exc.offsite = result  # type: ignore[attr-defined]  # what was sent and deleted before it
        raise
    finally:
        result.seconds = time.monotonic() - started
    return result


def _whole_only(target: Target, remote: Remote, local: list[Stored], result: OffsiteResult | None) -> list[Stored]:
    """Those of `local` (archives the remote lacks) that end as whole zips.  A file under an
    archive's name that was cut short or put there by hand is neither sent nor counted toward
    the remote's keep, where it would push good copies out; a warning names it (in `result`)."""
    whole = []
    for stored in local:
        ending = archives.ending(target.destination / stored.name)
        if not ending.broken:
            whole.append(stored)  # one that cannot be read fails its upload, and says why
            continue
        if result is None:
            continue
        result.warnings.append(
            f"{stored.name} was not sent: it is not a whole archive ({ending.problem}); "
            f"check it with {command('verify')}, then move it out of {target.destination}"
        )
    return whole


def _held(store: Store, target: Target, remote: Remote) -> list[Stored]:
    """The copies of `target` in the remote's series: encrypted ones when it encrypts, plain ones
    when it does not.  Switching encryption on or off starts a new series: the copies of the
    other kind stay where they are, neither counted nor deleted (restore still reads them).
    Counted together, an archive held both ways was two copies toward the keep, and the plain
    newest was sent again beside its encrypted copy without a word."""
    return [stored for stored in store.list(target.name) if stored.encrypted == remote.encrypted]


def copies_of(target: Target, remote: Remote) -> list[str]:
    """The names of every copy of `target` on `remote`, oldest first, whichever host put it there
    and plain or encrypted: the copies a new host must restore before it backs up an empty
    folder.  Counting this host's alone, a replacement host under another name sent an archive
    of nothing, which a restore then took as the newest.  Raises StoreError (or OSError) when
    the remote cannot be asked."""
    return [s.name for s in store_for(remote).list(target.name)]


def lacking(target: Target, remote: Remote, now: datetime) -> list[str]:
    """The target's local archives that `remote` holds no good copy of: none, where its keep would
    keep one, or one this tool cannot vouch for (replaced, or changed since it was copied; bytes
    that rotted without a change of time are found only by reading them, `verify --remote`).
    Deleting one of them here could lose it; a push sends those it has none of.  StoreError when
    the remote cannot be asked."""
    store = store_for(remote)
    held = _held(store, target, remote)
    have = {stored.archive for stored in held}
    local = LocalStore(target.destination).list(target.name)
    # As replicate() plans: a broken local file is not one the remote's keep counts.
    missing = _whole_only(target, remote, [a for a in local if a.name not in have], None)
    asked = OffsiteResult(remote.name, "")
    planned, _ = _plan(store, target, remote, held, missing, asked, now)
    damaged = set(asked.unvouched)
    wanted = set(planned.kept)
    return sorted(a.name for a in local if (a in missing and a in wanted) or a.name in damaged)


def prune_remote(
    target: Target, remote: Remote, check: bool = False, now: datetime | None = None, forced: bool = False
) -> OffsiteResult:
    """Apply the remote's keep to what it holds of the target, uploading nothing."""
    store = store_for(remote)
    result = OffsiteResult(remote.name, store.describe())
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    try:
        held = _held(store, target, remote)
        planned_here, unvouched = _plan(store, target, remote, held, [], result, now)
        held = [s for s in held if s not in unvouched]
        doomed = [s for s in planned_here.deleted if s not in unvouched]
        if doomed and (doubt := _doubt_of_newest_kept(target, remote, planned_here.kept, now, forced)):
            raise StoreError(doubt)
        if check:
            result.deleted = [a.name for a in doomed]
        else:
            for stored in doomed:
                (result.deleted if store.delete(target.name, stored) else result.locked).append(stored.name)
        result.copies = len(held) - len(result.deleted)
    except StoreError as exc:
        result.error = str(exc)
    except KeyboardInterrupt as exc:
        exc.offsite = result  # type: ignore[attr-defined]  # what was deleted before it
        raise
    finally:
        result.seconds = time.monotonic() - started
    return result


def _doubt_of_newest_kept(
    target: Target,
    remote: Remote,
    kept: list[Stored],
    now: datetime,
    forced: bool = False,
    planned: Stored | None = None,
) -> str | None:
    """Why nothing may be deleted on the remote, when the newest copy its keep would keep is no
    ground for deleting older ones, as a local prune refuses (see archives.doubt); else None.
    Judged by its local twin, which an archive a push sent (made without a database, say) still
    has here.  Without this, a keep shorter on the remote than here deleted the last complete
    copy there."""
    newest = retention.newest(kept, _when, now)
    if newest is None or newest is planned:
        return None  # (a preview's archive to be, not made yet: the real run judges it)
    twin = target.destination / newest.archive
    if not twin.is_file():
        # Local retention never deletes a target's newest archive, so the newest copy lacks its
        # twin only after the local archives were lost or moved (or the destination changed).
        # It may be one made without a database: taken on trust, it let a prune delete the last
        # complete copy there.  The next backup's archive, judged here, settles it.
        if forced:
            return None
        return (
            f"remote {remote.name}: nothing was deleted there: {newest.name}, the newest copy its keep would keep, "
            f"has no archive of that name in {target.destination} to judge it by (one made without a database, "
            "or holding files that changed, is no ground for deleting older copies); the next complete backup "
            f"deletes what keep says, or run {command('prune --force')} to delete anyway"
        )
    found = archives.doubt(twin, forced)
    if found is None:
        return None
    return (
        f"remote {remote.name}: nothing was deleted there: {newest.name}, the newest copy its keep would keep, "
        f"is no ground for it: {found.why}; older copies may be the last good ones: the next complete backup "
        f"deletes what keep says{found.anyway}"
    )


def _plan(
    store: Store,
    target: Target,
    remote: Remote,
    held: list[Stored],
    missing: list[Stored],
    result: OffsiteResult,
    now: datetime,
) -> tuple[retention.Plan[Stored], list[Stored]]:
    """The remote's keep over the copies it holds and those it lacks, counting only copies this
    tool put there; and the held copies it could not vouch for.

    Every held copy the plan would keep is vouched for first (a HEAD request, a .sha256 file;
    never a download).  One that cannot be, an object someone wrote or replaced under an
    archive's name, is not counted, not deleted, and named in a warning; the plan is then made
    again without it.  So a foreign object named newer than the good copies can never make
    them look surplus, nor stop the new archive from being sent."""
    vouched: set[Stored] = set()
    unvouched: list[Stored] = []
    foreign: list[tuple[Stored, str]] = []
    while True:
        counted = [s for s in held if s not in unvouched]
        planned = retention.plan([*counted, *missing], _when, remote.keep or target.keep, now)
        doubtful = [s for s in planned.kept if s in counted and s not in vouched]
        if not doubtful:
            break
        unvouched += _doubted(store, target, remote, doubtful, vouched, result, foreign)
    # Nor is a copy deleted that this tool cannot say it put there: it may be someone's file.
    doomed = [s for s in planned.deleted if s in held and s not in vouched]
    unvouched += _doubted(store, target, remote, doomed, vouched, result, foreign)
    if foreign:
        result.warnings.append(_foreign_warning(remote, [why for _, why in foreign]))
    # What is wrong with a copy of this host's: another host's copies are only not counted.
    result.unvouched = sorted(s.archive for s in unvouched if s not in {stored for stored, _ in foreign})
    _note(result, planned)
    return planned, unvouched


def _doubted(
    store: Store,
    target: Target,
    remote: Remote,
    copies: list[Stored],
    vouched: set[Stored],
    result: OffsiteResult,
    foreign: list[tuple[Stored, str]],
) -> list[Stored]:
    """Those of `copies` the store cannot vouch for, named in warnings (another host's copies are
    added to `foreign`, for one warning); the rest join `vouched`."""
    doubted = []
    for stored in copies:
        why = store.vouched(target.name, stored)
        if why is None:
            vouched.add(stored)
            continue
        doubted.append(stored)
        if isinstance(why, Foreign):
            foreign.append((stored, why))
            continue
        result.warnings.append(
            f"{why}; it is not counted as a copy and is left in place: check it with "
            f"`{command(f'verify --remote {remote.name}')}`, then move or delete it"
        )
    return doubted


def _foreign_warning(remote: Remote, foreign: list[str]) -> str:
    # One line, not one per copy: a fleet sharing a prefix holds many of each other's copies.
    more = f" (and {len(foreign) - 1} more like it)" if len(foreign) > 1 else ""
    return (
        f"{foreign[0]}{more}: another host's copies are neither counted nor deleted here; hosts that share "
        f"remote {remote.name} and a target name must each have their own prefix (prefix: ${{BACKUP_HOST}}/), "
        "or each would prune the others' copies; if this host replaces the one that made them, set BACKUP_HOST "
        "to that host's name to take them over"
    )


def _note(result: OffsiteResult, planned: retention.Plan[Stored]) -> None:
    """Copies dated in the future and a refused deletion become the remote's warnings."""
    if planned.future:
        names = ", ".join(s.name for s in planned.future)
        result.warnings.append(f"copies dated in the future ({names}): kept, and not counted as the newest")
    result.warnings.extend(said for said in (planned.refused, planned.spared) if said)


@contextmanager
def fetched(target: str, store: Store, stored: Stored, identities: list[Any], near: Path) -> Iterator[Path]:
    """The archive's zip as a local file, downloaded and decrypted into a scratch folder in `near`
    that is removed afterwards; a copy that cannot be decrypted leaves nothing behind.  Scratch
    folders that killed runs left in `near` (a decrypted archive in each) are removed first."""
    if stored.encrypted and not identities:
        raise UsageError(
            f"{stored.name} is encrypted; pass --identity FILE (the age identity or SSH private key of a recipient)"
        )
    _clear_abandoned_scratch(near)
    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH, dir=near))
    claimed: int | None = None
    try:
        claimed = _claim_scratch(scratch)
        path = store.fetch(target, stored, scratch)
        _as_recorded(target, store, stored, path)
        if stored.encrypted:
            from backup_core.stores import encryption

            plain = scratch / stored.archive
            encryption.decrypt(path, plain, identities)
            path = plain
        yield path
    finally:
        if claimed is not None:
            os.close(claimed)  # first: Windows deletes no open file
        shutil.rmtree(scratch, ignore_errors=True)


def scratch_of(path: Path, near: Path) -> Path | None:
    """The scratch folder `fetched` made in `near` that holds `path`; None when the store handed
    over its own file (a folder remote's copy, not encrypted)."""
    folder = path.parent
    return folder if folder.parent == near and folder.name.startswith(_SCRATCH) else None


# A scratch folder holds, once claimed, a file named _IN_USE that its process holds open (and,
# on POSIX, locked) until it is done: one that no process holds was left by a run that was
# killed (SIGKILL, a power cut), with the decrypted archive in it, and nothing else removes it.
_SCRATCH = ".backup-fetch-"
_IN_USE = "in-use"


def _claim_scratch(scratch: Path) -> int | None:
    """Mark `scratch` as this process's while the returned descriptor stays open; None when this
    file system cannot say so (no flock), and the folder is then never taken for abandoned."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    if sys.platform == "win32":  # an open file cannot be deleted there: holding it open is the claim
        return os.open(scratch / _IN_USE, flags, 0o600)
    # Locked under another name, then renamed: _IN_USE is never seen unlocked while we live.
    claiming = scratch / f".{_IN_USE}"
    descriptor = os.open(claiming, flags, 0o600)
    try:
        archives.claim(descriptor)
    except OSError:
        os.close(descriptor)
        return None
    claiming.rename(scratch / _IN_USE)
    return descriptor


def _clear_abandoned_scratch(near: Path) -> None:
    """Remove the scratch folders in `near` that no live process holds (see _claim_scratch).  One
    without the claim file is left alone: it may be a moment old, or on a file system without flock."""
    try:
        entries = list(os.scandir(near))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_SCRATCH):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False) and archives.abandoned(Path(entry.path) / _IN_USE):
                shutil.rmtree(entry.path, ignore_errors=True)


@dataclass
class Newest:
    """The copy a restore takes by default, and the newer copies it passed over (why, for each).
    `damaged`: why nothing may be taken by default, when the newest copy this tool put there no
    longer matches its record (restoring an older one without a word would look like success)."""

    chosen: Stored | None
    passed: list[str]
    foreign: Foreign | None = None  # the chosen copy is another host's
    damaged: str | None = None

    def warnings(self) -> list[str]:
        said = []
        if self.passed:
            more = f" (and {len(self.passed) - 1} more newer copies like it)" if len(self.passed) > 1 else ""
            said.append(f"passed over a newer copy: {self.passed[0]}{more}")
        if self.foreign:
            said.append(f"{self.foreign}; name the copy you want with --archive")
        return said


def newest_good(store: Store, target: str, held: list[Stored], now: datetime) -> Newest:
    """The newest copy not dated in the future that this tool can vouch for, as retention and
    status count copies: an object someone else wrote under a newer archive's name must not be
    what a restore brings back.  Another host's copy is taken, with a warning (on a prefix that
    hosts share, a replacement host may want it).  A newer copy with no recorded checksum is
    passed over (not this tool's); one whose recorded checksum no longer matches is damaged:
    none is chosen, and `damaged` names it and the newest good copy older than it."""
    # Dated in the future (a clock ahead, or put there by hand): never the default, but said, as
    # a local restore says it; they were passed over without a word.
    latest = now + retention.FUTURE_TOLERANCE
    passed = [f"{s.name} is dated in the future (a clock ahead?)" for s in reversed(held) if s.when > latest]
    damaged: str | None = None
    for stored in reversed([s for s in held if s.when <= latest]):
        why = store.vouched(target, stored)
        if why is None or isinstance(why, Foreign):
            if damaged is None:
                return Newest(stored, passed, why)
            return Newest(None, passed, damaged=f"{damaged}: restore it with --archive {stored.name}")
        if damaged is None and store.recorded(target, stored) is not None:
            damaged = (
                f"{why}; it is the newest copy this tool put on remote {store.name}, so {_nothing_restored(store)}"
            )
        passed.append(why)
    if damaged is not None:
        return Newest(None, passed, damaged=f"{damaged}, and there is none on that remote: restore the local archive")
    return Newest(None, passed)


class DamagedCopy(TargetError):
    """A downloaded copy is not the bytes whose SHA-256 put() recorded; `what` says which and how,
    for a message that names another copy to take (see older_than)."""

    def __init__(self, what: str, store: Store) -> None:
        self.what, self.store = what, store
        super().__init__(
            f"{what}; nothing is taken from it (check the copies with {command(f'verify --remote {store.name}')}; "
            "take another with --archive NAME, or the local archive)"
        )

    def instead(self, older: str) -> TargetError:
        """The same failure, naming the copy to restore in its place, as newest_good does for a
        copy whose damage shows without a download."""
        return TargetError(f"{self.what}; {_nothing_restored(self.store)}: restore it with --archive {older}")


def older_than(store: Store, target: str, held: list[Stored], damaged: Stored, now: datetime) -> str | None:
    """The copy a restore would take if `damaged` and everything newer were not there, or None
    (also when the remote cannot be asked now: the damage must still be what is said)."""
    try:
        older = newest_good(store, target, [s for s in held if s.when < damaged.when], now)
    except (TargetError, OSError):  # a StoreError is a TargetError
        return None
    return None if older.chosen is None else older.chosen.name


def _nothing_restored(store: Store) -> str:
    """What a restore that found the newest copy damaged says, before naming an older one."""
    return (
        f"nothing was restored (check the copies with `{command(f'verify --remote {store.name}')}`); "
        "the newest good copy older than it may lack recent changes"
    )


def _as_recorded(target: str, store: Store, stored: Stored, path: Path) -> None:
    """Raise DamagedCopy unless `path` holds the bytes whose SHA-256 put() recorded for the copy.

    A valid zip put in a copy's place (with its metadata kept, or after its checksum file)
    would otherwise be verified and restored as if it were the backup."""
    expected = store.recorded(target, stored)
    if expected is None:
        why = "has no recorded checksum: this tool did not put it there, or it was replaced"
    elif sha256_of(path) != expected:
        why = (
            "is not the copy uploaded: its SHA-256 differs from the one recorded at upload (it was replaced or damaged)"
        )
    else:
        return
    raise DamagedCopy(f"{stored.name} on remote {store.name} {why}", store)


def download_and_verify(target: Target, store: Store, stored: Stored, identities: list[Any], how: str) -> Verdict:
    """Download (and decrypt) one remote copy, then verify it as the local verify does."""
    from backup_core.zip.verify import verify_archive

    near = target.destination if target.destination.is_dir() else Path(tempfile.gettempdir())
    with fetched(target.name, store, stored, identities, near) as path:
        return verify_archive(path, sqlite_check=how)
