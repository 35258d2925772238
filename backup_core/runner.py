"""Run the selected targets: back up, prune or verify each, and collect one result per target.

Every target runs even when an earlier one fails; each holds a lock on its own
archives while it works; results come back in manifest order whatever order the
targets finished in.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import filelock

from backup_core import hooks
from backup_core.errors import NOW_VARIABLE, BackupError, TargetError, command
from backup_core.manifest import Hooks, Manifest, Remote, Target
from backup_core.results import CHANGED, FAILED, OK, SKIPPED, OffsiteResult, RunResult, TargetResult
from backup_core.sources import sqlite
from backup_core.sources import walk as sources
from backup_core.stores import archives, base, offsite, retention, state
from backup_core.stores.archives import Archive
from backup_core.stores.base import Stored

# The zip writer, its workers, compression and the read-back are imported by the first target
# that writes or verifies an archive: an unchanged re-run (a metadata walk) needs none of them.
if TYPE_CHECKING:
    from backup_core.zip.writer import ZipWriter

_DATA = ("file", "sqlite")  # entry kinds that carry bytes
# A file the packer found to begin as a database without being whole pages of one (packing.torn_database).
_CUT_SHORT = "begins as a SQLite database but is not a whole number of pages, so it is damaged or was cut short"
_NEW = "(new archive)"  # what check mode calls the archive a run would make
# Below this much data an archive is synced once, in line: for 1,000 small targets a second
# sync and a thread to run it cost more than the overlap they buy.
_SYNC_TWICE_FROM = 16 << 20
# A big archive is also flushed to disk every this much data while it is written, on the same
# thread: the disk then works while the cores compress, and the sync that must pass before the
# rename has only the last stretch left (0.9 s of waiting for 700 MB on a slow disk, before).
_FLUSH_EVERY = 128 << 20
_flush = getattr(os, "fdatasync", os.fsync)  # data and size; the final fsync does the rest
_stopping = threading.Event()  # set when the run is interrupted; targets in other threads stop


class Observer(Protocol):
    """What a reporter hears while a run goes on (results themselves come back as data)."""

    wants_totals: bool
    follows_targets: bool  # it hears files and progress (started, advanced, file): targets stay in this process

    def started(self, target: Target, total_bytes: int | None) -> None: ...
    def advanced(self, target: Target, done_bytes: int) -> None: ...
    def file(self, target: Target, name: str) -> None: ...
    def uploading(self, target: Target, remote: str, total_bytes: int) -> Callable[[int], None]: ...
    def finished(self, result: TargetResult) -> None: ...


class _Silent:
    wants_totals = False
    follows_targets = False

    def started(self, target: Target, total_bytes: int | None) -> None: ...
    def advanced(self, target: Target, done_bytes: int) -> None: ...
    def file(self, target: Target, name: str) -> None: ...
    def uploading(self, target: Target, remote: str, total_bytes: int) -> Callable[[int], None]:
        return lambda sent: None

    def finished(self, result: TargetResult) -> None: ...


@dataclass
class Options:
    check: bool = False  # preview only: write, delete and lock nothing
    force: bool = False  # archive even when the source is unchanged
    jobs: int = 1
    latest: bool = False  # verify: only the newest archive of each target
    remote: str | None = None  # verify, push: this remote of each target instead of the local archives
    download: bool = False  # verify --remote: download and verify in full, not only the recorded checksum
    identities: list[Any] = field(default_factory=list)  # verify --remote --download of encrypted copies
    observer: Observer = field(default_factory=_Silent)


def utc_now() -> datetime:
    """The current UTC time, or the time in $BACKUP_NOW."""
    fixed = os.environ.get(NOW_VARIABLE)
    if fixed:
        moment = datetime.fromisoformat(fixed.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)


# --- the run -------------------------------------------------------------------------------------


def run(command: str, manifest: Manifest, targets: list[Target], options: Options) -> RunResult:
    """Run `command` (backup, prune or verify) on `targets`; never raises for a target's failure."""
    work = PER_TARGET[command]
    outcome = RunResult(command, manifest.file, options.check, order=[t.name for t in targets])
    started = time.monotonic()
    run_hooks = manifest.hooks if command == "backup" and not options.check else Hooks()

    begun: list[str] = []  # targets handed to their work, in order

    def one(target: Target) -> list[TargetResult]:
        begun.append(target.name)
        results = work(target, options)
        for result in results:
            options.observer.finished(result)
        return results

    _stopping.clear()
    base.forget_unanswered()
    hooked = bool(run_hooks.before or run_hooks.after)
    with _run_lock(manifest, targets, hooked) as held:
        if not held or (hooked and _all_busy(targets)):
            # Another run of this manifest, or holding every target: this one's hooks (stop the
            # app, start the app) would start the app in the middle of the other run's backup.
            what = "another run of this manifest is running" if not held else "another run is working on this target"
            why = f"{what} (lock_timeout to wait longer); the run's hooks were not run"
            _without_running(targets, SKIPPED, why, outcome, options)
        else:
            _run_held(command, targets, options, run_hooks, one, begun, outcome)
    outcome.seconds = time.monotonic() - started
    return outcome


@contextmanager
def _run_lock(manifest: Manifest, targets: list[Target], needed: bool) -> Iterator[bool]:
    """Hold the manifest's run lock while a run with run-level hooks works; yield whether it is held.

    Target locks are taken as each target starts, after the run's `before` hook: two overlapping
    runs each stopped the app, and the first to finish started it again while the other was
    still archiving.  A run with such hooks waits for another run of the same manifest as long
    as its targets' longest lock_timeout, then skips every target.  The lock file lies beside
    the manifest, or in the temporary folder when that folder cannot be written."""
    if not needed:
        yield True
        return
    wait = max((t.lock_timeout for t in targets), default=0)
    lock = None
    for path in _run_lock_paths(manifest.file):
        if not _ours(path):
            continue  # another user's file: holding it would make every run of ours skip
        candidate = _file_lock(path)
        try:
            candidate.acquire(timeout=wait)
        except filelock.Timeout:
            yield False
            return
        except OSError:
            continue  # a folder this user cannot write: the next place
        lock = candidate
        break
    try:
        yield True  # without any place to lock, as before: the target locks still guard the archives
    finally:
        if lock is not None:
            lock.release()


def _run_lock_paths(manifest: Path) -> list[Path]:
    import hashlib
    import tempfile

    resolved = manifest.resolve()
    keyed = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    user = f"{os.getuid()}-" if hasattr(os, "getuid") else ""
    shared = Path(tempfile.gettempdir()) / f"backup-run-{user}{keyed}.lock"
    return [resolved.with_name(f".{resolved.name}.run.lock"), shared]


def _ours(path: Path) -> bool:
    """Whether a lock file is this user's to take (or not there yet); on POSIX, a file someone
    else made in a shared temporary folder is not."""
    if not hasattr(os, "getuid"):
        return True
    try:
        return path.stat().st_uid in (os.getuid(), 0)
    except OSError:
        return True


def _run_held(
    command: str,
    targets: list[Target],
    options: Options,
    run_hooks: Hooks,
    one: Callable[[Target], list[TargetResult]],
    begun: list[str],
    outcome: RunResult,
) -> None:
    """The run itself: the run's before hook, every target, then its after or on_failure hooks."""
    try:
        try:
            hooks.run_hooks("before", run_hooks.before, {"BACKUP_STATUS": "running"})
        except TargetError as exc:
            outcome.errors.append(f"run not started: {exc}")
            # Every target went without its backup: the recap (and whatever reads it, such as
            # the Ansible module's summary) must count them failed, not show nothing at all.
            why = "not backed up: the run's before hook failed (see the run's error)"
            _without_running(targets, FAILED, why, outcome, options)
        else:
            with _created_locks_lock:
                _created_locks.clear()  # what a run created says nothing about an earlier one
            with archives.one_listing_per_run():
                if _spreading(command, options, len(targets)):
                    _run_spread(command, targets, options, one, outcome)
                else:
                    _run_all(targets, options.jobs, one, outcome)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: targets at work stopped and removed their partial archives; the
        # run's on_failure hooks still run (a `before` hook may have stopped a service).
        _stopping.set()
        outcome.interrupted = True
        outcome.errors.append(
            "interrupted; verify changes nothing, and the archives not yet read were not checked"
            if command == "verify"
            else "interrupted; nothing more was archived, placed or rotated"
        )
        # A target the interrupt unwound through has no result of its own: it failed, and the
        # recap must count it so, not show it as never run.
        reported = {result.name for result in outcome.results}
        for name in dict.fromkeys(n for n in begun if n not in reported):
            cut = TargetResult(name)
            cut.fail(
                "interrupted before its archives were all read"
                if command == "verify"
                else "interrupted before it finished; nothing more was placed or rotated"
            )
            outcome.results.append(cut)
            options.observer.finished(cut)
    hooks.run_closing_hooks(
        run_hooks,
        lambda: {"BACKUP_STATUS": FAILED if outcome.failed else OK, "BACKUP_ERROR": _run_error(outcome)},
        lambda: outcome.failed,
        lambda exc: outcome.errors.append(str(exc)),
    )


def _without_running(targets: list[Target], status: str, why: str, outcome: RunResult, options: Options) -> None:
    """A result for each of `targets`, none of which ran: `status` (skipped or failed), because `why`."""
    for target in targets:
        result = TargetResult(target.name, status)
        if status == FAILED:
            result.fail(why)
        else:
            result.reason = why
        outcome.results.append(result)
        options.observer.finished(result)


def _run_error(outcome: RunResult) -> str:
    """BACKUP_ERROR for the run's hooks: the run's own problems, else each failed target's."""
    if outcome.errors:
        return "; ".join(outcome.errors)
    return "; ".join(f"{r.name}: {r.error}" for r in outcome.results if r.status == FAILED and r.error)


_pausing = threading.Lock()
_paused = [0, False]  # archives being written, and whether the collector ran before the first


@contextmanager
def _collector_paused() -> Iterator[None]:
    # An archive's members are tens of thousands of small objects that live to its end: the
    # cyclic garbage collector would walk them again and again (a tenth of a big backup's
    # time) and free nothing.  It is paused while any archive is written (--jobs writes
    # several at once) and runs again once none is.
    with _pausing:
        if _paused[0] == 0:
            _paused[1] = gc.isenabled()
            gc.disable()
        _paused[0] += 1
    try:
        yield
    finally:
        with _pausing:
            _paused[0] -= 1
            if _paused[0] == 0 and _paused[1]:
                gc.enable()


def _run_all(targets: list[Target], jobs: int, one: Callable[[Target], list[TargetResult]], outcome: RunResult) -> None:
    """Run every target, `jobs` at a time; results land in manifest order."""
    jobs = max(1, min(jobs, len(targets)))
    if jobs == 1:
        # In this thread, so Ctrl-C unwinds through the target's clean-up at once.
        for target in targets:
            outcome.results.extend(one(target))
            if _stopping.is_set():
                raise KeyboardInterrupt
        return
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="target")
    futures: list[Future[list[TargetResult]]] = []
    collected = 0
    try:
        # Submitted inside the try: a signal while the later targets are handed out (a loaded
        # machine can keep this thread waiting long enough for the first to be well under way)
        # must still wait for the running ones and keep what they report.
        for target in targets:
            futures.append(pool.submit(one, target))
        for future in futures:
            outcome.results.extend(future.result())
            collected += 1
    except BaseException:
        # Ctrl-C: running targets stop at their next piece of data and remove their partial
        # archive; what they, and those already done, report is kept, in manifest order.
        _stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures[collected:]:
            if future.done() and not future.cancelled() and future.exception() is None:
                outcome.results.extend(future.result())
        raise
    pool.shutdown()
    if _stopping.is_set():
        raise KeyboardInterrupt


def _spreading(command: str, options: Options, count: int) -> bool:
    """Whether targets run in child processes too (see backup_core.fanout)."""
    if min(options.jobs, count) <= 1:
        return False  # without importing fanout and pickle: most runs, and every unchanged re-run
    from backup_core import fanout

    return command in fanout.COMMANDS and count >= fanout.SPREAD_FROM and not options.observer.follows_targets


def _run_spread(
    command: str,
    targets: list[Target],
    options: Options,
    one: Callable[[Target], list[TargetResult]],
    outcome: RunResult,
) -> None:
    from backup_core import fanout

    done: list[list[TargetResult] | None] = [None] * len(targets)
    settings = {"check": options.check, "force": options.force}
    try:
        fanout.run(
            targets, min(options.jobs, len(targets)), one, done, command, settings, options.observer.finished, _stopping
        )
    finally:
        # In manifest order; a target never started (the run was stopped) has no line.
        outcome.results.extend(result for results in done if results for result in results)
    if _stopping.is_set():
        raise KeyboardInterrupt


def stop() -> None:
    """Ask every target at work to stop (a signal arrived): they stop within a piece of data."""
    _stopping.set()


def stopped() -> bool:
    return _stopping.is_set()


def _describe(exc: BaseException, target: Target) -> str:
    """A known failure as one sentence; OS errors named by what they mean to an operator."""
    if isinstance(exc, BackupError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename or target.destination
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full writing to {target.destination}; free some space or choose another destination"
        if isinstance(exc, PermissionError):
            if exc.filename and not os.path.lexists(exc.filename):
                # A file being made (a partial archive): the folder refused it, not the file.
                folder = Path(exc.filename).parent
                return (
                    f"permission denied making files in {folder}; fix its permissions or run as a user that can "
                    "write there"
                )
            return f"permission denied on {where}; fix its permissions or run as a user that can use it"
        if exc.errno == errno.EROFS:
            return f"{where} is on a read-only file system; choose another destination"
        if exc.filename and isinstance(exc, (FileExistsError, NotADirectoryError)):
            # mkdir of the destination (or of a folder on its way) found a file there, or a link
            # to nothing: a share that is not mounted, most often.
            link = Path(where)
            if link.is_symlink() and not link.exists():
                return (
                    f"{where} is a link to {link.readlink()}, which does not exist (is it mounted?); "
                    "fix the link or choose another destination"
                )
            # The file in the way may be a folder on the way (destfile/sub with destfile a file).
            blocker = archives.file_in_the_way(link) or link
            try:
                regular = stat.S_ISREG(blocker.lstat().st_mode)
            except OSError:
                regular = True
            if not regular:  # /dev/null: no advice to remove a device, a pipe or a socket
                return f"{blocker} is not a folder (a device, pipe or socket); choose another destination"
            return f"{blocker} is a file where a folder is needed; remove it or choose another destination"
        if exc.errno == errno.ELOOP:
            return f"{where} leads through a loop of symbolic links; fix the links, or name the folder itself"
        if exc.errno == errno.ENOENT and exc.filename:
            # The destination's folder could not be made (under /proc, say): the source is named elsewhere.
            return (
                f"cannot make or use {where}: no such file or folder, and it cannot be created there; "
                "check the path (the destination, or a folder on its way)"
            )
        # Any other: the system's words, and where; a line, never a traceback.
        return f"{exc.strerror or exc} ({where}); check the path and run the backup again"
    return f"unexpected error: {type(exc).__name__}: {exc}"


@contextmanager
def _locked(target: Target, result: TargetResult) -> Iterator[list[str] | None]:
    """Hold this target's lock and yield the destination's names that may be the target's (see
    _listing); yield None (and mark the result skipped) when another run has it."""
    target.destination.mkdir(parents=True, exist_ok=True)
    # One lock per destination and target: two targets sharing a folder never wait on each other.
    path = _lock_path(target)
    # A folder or lock file we cannot write to is a failure, not "another run".  Opening, not
    # touching: the lock file's time says when the target's archives last changed (see
    # archives.listing).
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        with _created_locks_lock:
            _created_locks.add(path)
    except FileExistsError:
        # Looked at before it is opened: a link is never followed ("a loop of symbolic links"
        # was all it said), and a named pipe held the run for ever while every later run said
        # "another run is working on this target".  Opened without waiting all the same.
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise TargetError(
                f"{path} is a symbolic link, not a lock file; move it away (the next run makes its lock file again)"
            ) from None
        if not stat.S_ISREG(mode):
            raise TargetError(
                f"{path} is not a regular file; move it away (the next run makes its lock file again)"
            ) from None
        os.close(os.open(path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0)))
    lock = _file_lock(path)
    try:
        lock.acquire(timeout=target.lock_timeout)
    except filelock.Timeout:
        result.status = SKIPPED
        waited = f" after waiting {target.lock_timeout:g}s" if target.lock_timeout else ""
        result.reason = f"another run is working on this target{waited} (lock_timeout to wait longer)"
        yield None
        return
    try:
        names = _listing(target)
        busy = archives.busy_partials(target.destination, target.name, names)
        if busy:
            # The lock file was deleted under a live run: its partial archive must not be
            # taken for a stale one, and two runs must not work on one target.
            result.status = SKIPPED
            result.reason = (
                f"another run is writing {busy[0].name}, though the lock file {path.name} was deleted "
                "under it; never delete lock files while a run works"
            )
            yield None
            return
        yield names
    finally:
        lock.release()


_created_locks: set[Path] = set()  # lock files this run created: no other run changed those targets since
_created_locks_lock = threading.Lock()


def _file_lock(path: Path) -> filelock.FileLock:
    # On Windows the library deletes the lock file on release unless told to keep it: its time
    # (see _locked) would go with it, and a run opening it just then would fail.  Kept there only:
    # on POSIX keeping it also turns off the library's fallback for file systems without locks.
    return filelock.FileLock(path, preserve_lock_file=os.name == "nt")


def _all_busy(targets: list[Target]) -> bool:
    """Whether another run holds the lock of every target, none of which would wait for it."""
    for target in targets:
        path = _lock_path(target)
        if target.lock_timeout or not path.is_file():
            return False
        probe = _file_lock(path)
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            continue
        except OSError:
            return False  # the target's own run says what is wrong
        probe.release()
        return False
    return bool(targets)


def _lock_path(target: Target) -> Path:
    return target.destination / f".{target.name}.lock"


def _listing(target: Target) -> list[str]:
    """The destination's names that may be the target's, from this run's listing when it is
    current for this target."""
    marker = _lock_path(target)
    with _created_locks_lock:
        created = marker in _created_locks
    return archives.target_names(target.destination, target.name, marker, created)


def _guarded(target: Target, result: TargetResult, body: Callable[[], None]) -> TargetResult:
    started = time.monotonic()
    try:
        body()
    except Exception as exc:  # one target's failure, whatever it is, must not stop the run
        result.fail(_describe(exc, target))
    result.seconds = time.monotonic() - started
    return result


# --- backup --------------------------------------------------------------------------------------


def backup_target(target: Target, options: Options) -> TargetResult:
    """Archive one target, then rotate its old archives; failures become the result's error."""
    result = TargetResult(target.name)

    def body() -> None:
        if options.check:
            _preview(target, sources.kind_of(target.path, target.type), options, result)
            return
        with _locked(target, result) as names:
            if names is None:
                return
            now_there: list[Archive] | None = None
            try:
                hooks.run_hooks(
                    "before", target.hooks.before, _hook_variables(target, result, "running"), _stopping.is_set
                )
                # After the before hooks: one of them may be what mounts or prepares the source.
                kind = sources.kind_of(target.path, target.type)
                now_there = _archive(target, kind, options, result, names)
                if kind != "folder" and target.exclude and sources.matches(target.path.name, target.exclude):
                    # exclude picks files out of a folder: a file target is its file, archived
                    # all the same, which the operator who wrote `exclude: ['*']` did not expect.
                    result.warnings.append(
                        f"exclude matches {target.path.name}, but a target that is one file is archived whatever "
                        "exclude says (it picks files out of a folder)"
                    )
            except KeyboardInterrupt as exc:
                # Stopped (Ctrl-C, SIGTERM): a before hook may have stopped a service that
                # on_failure starts again.  The run stops after this target.  An interrupt
                # that comes through _archive says what it left; before that, nothing was written.
                _stopping.set()
                result.fail(str(exc) if exc.args else "interrupted; nothing was written")
            except Exception as exc:  # see _guarded
                result.fail(_describe(exc, target))
                if result.archive is None:
                    result.bytes_out = 0  # what the removed partial held is no archive's size
            _closing_hooks(target, result, options.observer, now_there)

    return _guarded(target, result, body)


def _closing_hooks(
    target: Target, result: TargetResult, observer: Observer, now_there: list[Archive] | None = None
) -> None:
    """after (on success), then offsite copies and rotation, then on_failure if anything failed on the way;
    `now_there`: the target's archives after this run placed its own, when known."""

    def copy_and_rotate() -> None:
        # After the after hooks: a service they start again need not wait for an upload.  An
        # archive holding a file that changed while it was read may be torn: it goes offsite
        # (it is the newest there is) but deletes nothing, here or there.
        # An archive of nothing (a folder emptied and taken as such with --force, or a path
        # changed to an empty folder and adopted with --force) deletes no archive that holds
        # files, and no remote copy (what a copy holds is not read): each later run of the
        # empty folder rotated one more full archive away, here and on the remotes.
        empty = result.status == CHANGED and not (result.files or result.links)
        _copy_offsite(target, result, observer, prune=not result.changed and not empty)
        # Old archives go only once everything the operator asked for has succeeded, offsite
        # copies included, and never after an interrupt.
        if result.status != CHANGED or result.changed:
            return
        if _stopping.is_set():
            result.warnings.append("interrupted before old archives were rotated; the next run rotates them")
            return
        # A local archive whose copy on a remote is damaged or replaced may be its only good copy.
        spare = {name for copy in result.offsite for name in copy.unvouched}
        try:
            spared = _rotate(target, result, now_there, spare=spare, keep_full=empty)
        except KeyboardInterrupt:
            # While old archives were judged or deleted (a large one takes a while to free): the
            # new archive stays, and the line says so, and what went, rather than the run's
            # "nothing more was placed or rotated" over a result with no archive.
            _stopping.set()
            went = (
                f"{len(result.deleted)} old archive(s) deleted before it" if result.deleted else "nothing was rotated"
            )
            made = result.archive.name if result.archive else "its archive"
            result.fail(f"interrupted after {made} was made; {went}")
            return
        except OSError as exc:
            result.fail(f"archive made, but rotating old archives failed: {_describe(exc, target)}")
            return
        if spared:
            result.warnings.append(_spared(spared, "kept"))

    hooks.run_closing_hooks(
        target.hooks,
        lambda: _hook_variables(target, result),
        lambda: result.status == FAILED,
        lambda exc: _hook_failed(result, exc),
        then=copy_and_rotate,
    )


def _offsite_result(result: TargetResult, copy: OffsiteResult) -> None:
    result.offsite.append(copy)
    result.warnings.extend(f"remote {copy.remote}: {warning}" for warning in copy.warnings)


def _copy_offsite(target: Target, result: TargetResult, observer: Observer, prune: bool = True) -> None:
    """Bring every remote of the target up to date; a remote that fails fails the target, archive kept."""
    for remote in target.offsite:
        if _stopping.is_set():  # interrupted in another thread: send nothing more
            break
        progress = functools.partial(observer.uploading, target, remote.name)
        try:
            copy = offsite.replicate(target, remote, prune=prune, progress=progress, now=utc_now())
        except KeyboardInterrupt as exc:
            # Mid-upload (Ctrl-C, SIGTERM): the store removed what it had begun; the run stops
            # after this target, which failed: the operator asked for a copy and has none.  What
            # went up, and what went from the remote, before it is said (it was not).
            _stopping.set()
            copy = getattr(exc, "offsite", None) or OffsiteResult(remote.name, remote.describe())
            copy.error = f"remote {remote.name}: interrupted{_done_there(copy)}"
        _offsite_result(result, copy)
    failures = [copy.error for copy in result.offsite if copy.error]
    if failures:
        kept = f"; the local archive {result.archive.name} is kept" if result.archive else ""
        result.fail(f"offsite copy failed: {'; '.join(failures)}{kept} and the next run uploads what is missing")


def _done_there(copy: OffsiteResult) -> str:
    """What an interrupted remote had received and lost before it, as words after "interrupted"."""
    done = [f"{len(copy.uploaded)} copy(ies) sent"] if copy.uploaded else []
    done += [f"{len(copy.deleted)} old copy(ies) deleted there"] if copy.deleted else []
    return f" after {' and '.join(done)}" if done else ""


def _remote_failed(result: TargetResult, error: str) -> None:
    """Fail `result` for one remote's error, keeping those of the remotes before it (two remotes
    that cannot be reached are two problems: the line named only the last)."""
    earlier = result.error if result.status == FAILED and result.error else ""
    result.fail(f"{earlier}; {error}" if earlier else error)


def _spared(names: list[str], verb: str) -> str:
    """The warning for local archives kept past their keep: a remote's copy of each is not good."""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return (
        f"{verb} {names[0]}{more}, which keep no longer wants: a remote holds no good copy of it "
        "(its warning says which), so this may be the only one"
    )


def _hook_failed(result: TargetResult, exc: TargetError) -> None:
    if result.status == FAILED:
        result.error = f"{result.error}; also {exc}"
    else:
        kept = f"; the archive {result.archive.name} is kept" if result.archive else ""
        result.fail(f"{exc}{kept}")


def _hook_variables(target: Target, result: TargetResult, status: str | None = None) -> dict[str, str]:
    return {
        "BACKUP_TARGET": target.name,
        "BACKUP_SOURCE": str(target.path),
        "BACKUP_DESTINATION": str(target.destination),
        "BACKUP_STATUS": status or result.status,
        "BACKUP_ARCHIVE": str(result.archive or ""),
        "BACKUP_ERROR": result.error or "",
    }


def _archive(target: Target, kind: str, options: Options, result: TargetResult, names: list[str]) -> list[Archive]:
    """Make the target's archive (or find it unchanged); return the target's archives as they now are.
    `names`: the destination's names that may be the target's, listed under its lock."""
    destination, observer = target.destination, options.observer
    stale_ones = archives.stale_partials(destination, target.name, names)
    for stale in stale_ones:
        stale.unlink(missing_ok=True)
    if stale_ones:
        archives.mark_changed(_lock_path(target))
    listed = archives.list_archives(destination, target.name, names)
    origin = _same_origin(target, options, listed)
    now = utc_now()
    when = archives.next_time(now, listed)
    # An archive from the future (a clock that ran ahead) is never "the newest" to compare with.
    existing = _current(listed, now)
    _refuse_other_kind(target, kind, options, existing)
    walked = _unchanged_walk(target, kind, options, existing, now, result)
    if result.compared == "metadata":
        _confirm(target, existing[-1], now, result)
        return listed  # unchanged: nothing read, nothing written (but that it was found so)
    from backup_core.zip.compression import compressor_factory
    from backup_core.zip.writer import ZipWriter

    partial = archives.partial_path(destination, target.name, when, "zip")
    final = destination / archives.archive_name(target.name, when)
    root = _root(target) if kind == "folder" else None
    total = (
        sum(e.stat.st_size for e in sources.entries(target.path, kind, target.exclude) if e.kind in _DATA)
        if observer.wants_totals else None
    )  # fmt: skip
    observer.started(target, total)
    snapshots: list[Path] = []
    try:
        with _collector_paused(), _create_private(partial) as file:
            archives.mark_writing(_lock_path(target))  # other runs' listings may lack the partial
            writer = ZipWriter(
                file,
                compressor_factory(target.compression_level),
                on_progress=lambda n: observer.advanced(target, n),
                path=partial,
                inflate_check=target.inflate_check,
                should_stop=_stopping.is_set,
            )
            with ThreadPoolExecutor(1, thread_name_prefix="fsync") as syncing:
                queued = flushed_at = 0
                flushing: Future[None] | None = None
                try:
                    for entry in _foreseen(sources.entries(target.path, kind, target.exclude), writer):
                        if _stopping.is_set():
                            raise TargetError("interrupted; the partial archive was removed")
                        observer.file(target, entry.name)
                        if walked is not None:
                            walked.add(entry)
                        queued += entry.stat.st_size if entry.kind in _DATA else 0
                        _add(writer, entry, target, destination, when, snapshots, result, in_folder=kind == "folder")
                        if queued - flushed_at >= _FLUSH_EVERY and (flushing is None or flushing.done()):
                            if flushing is not None:
                                flushing.result()  # a failed flush fails the archive as a failed sync would
                            flushing, flushed_at = syncing.submit(_flush, file.fileno()), queued
                    # The disk starts on what is written while the last pieces are placed...
                    big = queued >= _SYNC_TWICE_FROM
                    early = syncing.submit(os.fsync, file.fileno()) if big else None
                    made = writer.stats
                    stats = writer.close(lambda: _archive_comment(result, made.torn_databases, made.changed))
                except BaseException:
                    writer.abort()
                    raise
                file.flush()
                # ...and catches up with the rest while the archive is read back: both must
                # pass before it is renamed into place.  Both syncs are checked: after a failed
                # one, Linux may let the next succeed with the data lost.
                synced = syncing.submit(os.fsync, file.fileno()) if big else None
                _still_there(partial)
                try:
                    _read_back(partial, writer)
                finally:
                    writer.release()
                if flushing is not None:
                    flushing.result()
                if early is None or synced is None:
                    os.fsync(file.fileno())
                else:
                    early.result()
                    synced.result()
        if kind == "folder" and _root(target) != root:
            raise TargetError(
                f"{target.path} was moved, replaced or unmounted while it was being archived: the archive would "
                "hold part of it at best; nothing was archived and no old archive deleted; run the backup again"
            )
        result.files, result.directories = stats.files, stats.directories
        result.bytes_in, result.bytes_out, result.warnings = stats.bytes_in, stats.bytes_out, stats.warnings
        _changed_while_read(target, kind, stats.changed, result)
        torn = [str(target.path / name) if kind == "folder" else str(target.path) for name in stats.torn_databases]
        if torn and kind != "folder" and existing:
            # A folder's archive is kept for the rest of the folder; a target that is the damaged
            # database alone would only add a copy of the same broken bytes on every run, none
            # ever rotated.  Its last archives stay.  With none at all, its bytes are kept once
            # (as for a folder): they may be all there is.
            raise TargetError(
                f"{target.path} {_CUT_SHORT}; nothing was archived and no old archive deleted; check it with "
                "sqlite3 (PRAGMA integrity_check), then repair it or restore it from an archive"
            )
        # A database left out (it failed its check) is in the folder: its own message says why.
        holds = stats.files or stats.links or result.incomplete or torn
        if kind == "folder" and not holds and not options.force:
            _refuse_emptied(target, existing)
            if target.exclude and not existing:  # a first run: nothing to judge by, but worth a word
                result.warnings.append(
                    f"{target.path} holds no file to archive after exclude: the archive holds folders at most; "
                    "check the exclude patterns"
                )
        # An archive missing a database, or holding a damaged one unchecked, is never "unchanged".
        incomplete = bool(result.incomplete or torn)
        if walked is not None and (stats.warnings or incomplete or result.changed):
            # A file vanished, a database left out, a file torn: the archive may not hold what was walked.
            walked.usable = False
        # Never "unchanged" against an archive that is no ground for rotating (marked incomplete,
        # or holding files that changed while read), nor for an archive that is one itself: once
        # the source is settled again it may match, and rotation (here and on the remotes, and
        # prune) would stay stuck for as long as the source stays unchanged.
        settled = not incomplete and not result.changed
        if target.skip_unchanged and not options.force and settled and existing and _sound(existing[-1]):
            result.compared = "content"
            if _same_content(partial, existing[-1].path):
                result.status, result.archive = OK, existing[-1].path
                result.reason = f"unchanged since {existing[-1].name}"
                _save_state(target, existing[-1].path, walked, when, result)
                _confirm(target, existing[-1], now, result)
                return listed
        if _stopping.is_set():
            raise TargetError("interrupted; the partial archive was removed")
        _still_there(partial)
        archives.place(partial, final)
        archives.mark_changed(_lock_path(target))
        _record_origin(target, origin, result)
        result.status, result.archive = CHANGED, final
        said = []
        if result.incomplete:
            # The rest of the folder is safe in the archive, but a database is missing from it:
            # the target fails (exit 1, on_failure hooks, no rotation) and keeps the archive.
            left_out = "; ".join(result.incomplete)
            said.append(
                f"{final.name} was made without {len(result.incomplete)} database(s), the rest of the folder "
                f"is in it: {left_out}"
            )
        if torn:
            # Archived byte for byte, but no snapshot or check could be made of it: the archive
            # is kept (the rest is good, and those bytes may be all there is), the target fails.
            # Said with the databases left out too: one must not hide the other.
            more = f" and {len(torn) - 1} more" if len(torn) > 1 else ""
            said.append(
                f"{'it' if said else final.name} holds {torn[0]}{more} as it is, unchecked: it {_CUT_SHORT}; check "
                "it with sqlite3 (PRAGMA integrity_check), repair or remove it"
            )
        if said:
            result.fail("; and ".join(said))
        _save_state(target, final, walked, when, result)
        return [*listed, Archive(when, final)]
    except KeyboardInterrupt:
        if final.exists():  # placed: it stays, as every archive made does
            raise KeyboardInterrupt(f"interrupted after {final.name} was made; nothing was rotated") from None
        raise KeyboardInterrupt("interrupted; the partial archive was removed") from None
    finally:
        # Only SQLite leaves -wal, -shm and -journal files, beside its snapshots.
        sqlite_files = (Path(f"{path}{s}") for path in snapshots for s in ("-wal", "-shm", "-journal"))
        for leftover in (partial, *snapshots, *sqlite_files):
            if not archives.remove(leftover):
                result.warnings.append(f"could not remove {leftover}; the next run of {target.name} will")


def _same_origin(
    target: Target, options: Options, listed: list[Archive], judging: bool = False
) -> tuple[str, str] | None:
    """This run's origin (host, source path) when the destination must record it, else None;
    raises when the target's archives there were made from another source or on another host
    (see archives.origin).  Two manifests, or two hosts sharing a folder, giving a target the
    same name and destination each counted the other's archives toward its keep, and a
    restore took the other's data without a word.  --force takes this origin as the new one
    (a backup's; prune and push, `judging`, only judge: their --force means something else)."""
    from backup_core.stores.base import this_host

    here = (this_host(), str(target.path))
    again = f"run {command(f'backup --force --only {target.name}')} once"
    try:
        found = archives.origin(target.destination, target.name)
    except archives.OriginUnreadable as exc:
        if not listed or (options.force and not judging):
            return here  # nothing to mistake for another's, or told to: record this run's
        raise TargetError(
            f"{exc}: it records where the archives of {target.name} there come from, so nothing is archived, "
            f"counted or deleted until it can be read; if they are this target's, {again} to record it again"
        ) from None
    if found is None or archives.alike(found, here):
        return None if found is not None else here
    if not listed or (options.force and not judging):
        return here
    host, path = found
    if archives.alike((host, ""), (here[0], "")):  # the same host: another source
        raise TargetError(
            f"{target.destination} holds archives of {target.name} made from {path}, not from {target.path}: if the "
            f"target's path was changed and {target.path} is where that data now lives, {again}; if another "
            "manifest backs up the other source under this name, give each its own destination or name (each would "
            "rotate away and restore the other's archives)"
        )
    raise TargetError(
        f"{target.destination} holds archives of {target.name} made on host {host}, not {here[0]} (BACKUP_HOST, else "
        "the host name): two hosts share this destination and target name, and each would rotate away and restore "
        "the other's archives; give each its own destination (such as /backups/${BACKUP_HOST}); if this host was "
        f"renamed, or BACKUP_HOST is set for some runs only, set it alike for every run and {again}"
    )


def _record_origin(target: Target, origin: tuple[str, str] | None, result: TargetResult) -> None:
    """Record where the archive just placed came from, when the destination does not say so yet."""
    if origin is None:
        return
    try:
        archives.record_origin(target.destination, target.name, *origin)
    except OSError as exc:
        result.warnings.append(f"could not record where {target.name}'s archives come from: {_describe(exc, target)}")


def _current(listed: list[Archive], now: datetime) -> list[Archive]:
    """`listed` without archives dated in the future (a clock that ran ahead): never "the newest"
    to compare with."""
    return [a for a in listed if a.when <= now + retention.FUTURE_TOLERANCE]


def _refuse_other_kind(target: Target, kind: str, options: Options, existing: list[Archive]) -> None:
    """Fail a target of `type: auto` whose source is now a file where its newest whole archive
    holds a folder, or the other way round.  A folder whose path became a file (a mount point
    replaced, a deploy gone wrong) was archived as that one file, and rotation deleted the
    folder's archives.  Told by what cannot be a file's archive, which holds one member: more
    than one; or, for a source now a folder, one member of the source's own name that the folder
    does not hold (data/data archives as one member named data, as a file named data would; and
    a file target whose path changed to another file holds one member of another name)."""
    if target.type != "auto" or options.force:
        return
    ends = ((a, archives.ending(a.path)) for a in reversed(existing))
    newest, ending = next(((a, end) for a, end in ends if not end.broken), (None, None))
    if newest is None or ending is None:
        return
    entries = ending.members
    if kind == "folder":
        if entries != 1 or _only_member(newest.path) != target.path.name:
            return
        if (target.path / target.path.name).is_file():
            return
    elif entries <= 1:
        return
    if _damaged(newest.path) is not None:
        return  # too damaged to tell by: the run makes a good archive
    now, before = ("a folder", "the file") if kind == "folder" else ("a file", "a folder")
    forced = command(f"backup --force --only {target.name}")
    raise TargetError(
        f"{target.path} is now {now}, but {newest.name} holds {before} of that name: nothing was archived and "
        f"no old archive deleted; if this is meant, write its type (file or folder) in the manifest, or run "
        f"{forced} once"
    )


def _only_member(path: Path) -> str | None:
    """The name of the archive's single member (None when it cannot be read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as opened:
            names = opened.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return names[0] if len(names) == 1 else None


def _refuse_emptied(target: Target, existing: list[Archive]) -> None:
    """Fail a folder that gave no file to archive (empty folders at most) where the newest
    whole archive holds files.

    A disk that is not mounted leaves its mount point an empty folder, or one holding only
    placeholder folders (as does an exclude that now matches every file): archived, each run
    placed an archive of no file and rotated a full one away, until keep held nothing else.  A
    folder really emptied is archived with --force.  Rare, so the archive's directory is read
    to count its files (an end record counts folders too)."""
    import zipfile

    forced = f"run {command(f'backup --force --only {target.name}')} once"
    again = f"if it is meant to be empty now, {forced}"
    for newest in reversed(existing):
        if archives.ending(newest.path).broken:
            continue  # not a whole zip: neither counted nor judged (see _due); the one before decides
        try:
            with zipfile.ZipFile(newest.path) as opened:
                held = sum(1 for member in opened.infolist() if not member.is_dir())
        except (OSError, zipfile.BadZipFile, ValueError) as exc:  # held open elsewhere (Windows), unreadable
            raise TargetError(
                f"{target.path} holds no file to archive, and {newest.name} cannot be read to tell whether it "
                f"held any ({exc}): nothing was archived and no old archive deleted; {again}"
            ) from None
        if not held:
            return
        raise TargetError(
            f"{target.path} holds no file to archive{' after exclude' if target.exclude else ''}, "
            f"but {newest.name} holds {held} file{'' if held == 1 else 's'}: is a disk not mounted? nothing was "
            f"archived and no old archive deleted; {again}"
        )
    # No local archive to judge by: a new host whose data folder was made before its data was
    # restored, or local archives cleared.  Its remotes' copies may be the last good ones, and
    # an archive of nothing sent there would count as their newest and prune them away.
    for remote in target.offsite:
        try:
            copies = offsite.copies_of(target, remote)
        except (BackupError, OSError) as exc:
            why = _unasked(exc, remote)
            raise TargetError(
                f"{target.path} holds no file to archive and {target.destination} holds no archive, and remote "
                f"{remote.name} could not be asked whether it holds copies ({why}): nothing was archived, uploaded "
                f"or deleted; {again}"
            ) from None
        if copies:
            raise TargetError(
                f"{target.path} holds no file to archive and {target.destination} holds no archive, but remote "
                f"{remote.name} holds {len(copies)} cop{'y' if len(copies) == 1 else 'ies'} of {target.name} (newest "
                f"{copies[-1]}): is this a new host whose data is not restored yet, or a disk not mounted? nothing "
                f"was archived, uploaded or deleted; restore it with "
                f"{command(f'restore {target.name} --to {target.path} --remote {remote.name}')}, "
                f"or {forced} if it is meant to be empty"
            )


def _archive_comment(result: TargetResult, torn: list[str], changed: list[str]) -> bytes:
    """The archive's comment when databases were left out of it, or are in it unchecked (see
    packing.INCOMPLETE_COMMENT), or files in it changed while they were read (UNSETTLED_COMMENT)."""
    from backup_core.zip.packing import INCOMPLETE_COMMENT, UNSETTLED_COMMENT

    said = []
    if result.incomplete:
        said.append(f"made without {len(result.incomplete)} database(s): " + "; ".join(result.incomplete))
    if torn:
        said.append(f"holds {len(torn)} damaged database(s) as they were, unchecked: " + ", ".join(torn))
    lead = INCOMPLETE_COMMENT if said else b""
    if changed:
        # The count and the first few: a busy log folder may have thousands (the members say which).
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        said.append(f"{UNSETTLED_COMMENT.decode()}{len(changed)} file(s): {', '.join(changed[:3])}{more}")
    return lead + "; ".join(said).encode("utf-8", "surrogateescape")


def _sound(archive: Archive) -> bool:
    """Whether `archive` is ground for rotating older ones (see archives.doubt)."""
    return archives.doubt(archive.path) is None


def _root(target: Target) -> tuple[int, int] | None:
    """The device and inode of a folder target's source (a link to it followed), None once gone.

    Compared before and after the walk: a source unmounted (even lazily) or moved away while it
    was walked left an archive of the files read before it went, reported as `changed`, and
    rotation deleted the whole one.  Its files' own checks only saw some of them vanish.  Taken
    from the folder opened, not a stat of its name: a stat does not trigger an automount, and
    the trigger's inode before the walk would differ from the mounted root's after it.  (A file
    target is its one file, whose own read checks it: an atomic save over it is not a move.)"""
    try:
        descriptor = os.open(target.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows opens no folder this way: its name's stat does (no automounts there)
        try:
            st = target.path.stat()
        except OSError:
            return None
    else:
        try:
            st = os.fstat(descriptor)
        finally:
            os.close(descriptor)
    return st.st_dev, st.st_ino


def _still_there(partial: Path) -> None:
    """A partial archive deleted under this run is a clear failure, not a puzzling read error."""
    if not partial.exists():
        raise TargetError(
            f"the partial archive {partial.name} was deleted while this run wrote it (by hand, or by another "
            f"run after the lock file was deleted); run the backup again"
        )


def _changed_while_read(target: Target, kind: str, changed: list[str], result: TargetResult) -> None:
    """Files that kept changing while they were read: fail the target (its archive is then
    discarded) or keep the archive with a warning, as `changed_files` and `critical` say."""
    if not changed:
        return
    from backup_core.zip.packing import READ_ATTEMPTS

    result.changed = [str(target.path / name) if kind == "folder" else str(target.path) for name in changed]
    fatal = target.changed_files == "fail" or (target.changed_files == "auto" and kind != "folder")
    critical = [p for p, n in zip(result.changed, changed, strict=True) if sources.matches(n, target.critical)]
    first = (critical or result.changed)[0]
    more = f" and {len(result.changed) - 1} more" if len(result.changed) > 1 else ""
    if fatal or critical:
        # A file matching `critical` fails whatever changed_files says: advise what would help.
        other = (
            "or remove it from critical and set changed_files: warn"
            if critical and fatal
            else "or remove it from critical"
            if critical
            else "or set changed_files: warn"
        )
        raise TargetError(
            f"{first}{more} kept changing while it was read ({READ_ATTEMPTS} reads); the archive was discarded "
            f"and no old archive deleted; back it up while nothing writes to it (a before hook can pause the "
            f"writer) {other}"
        )
    result.warnings.append(
        f"{first}{more} kept changing while it was read ({READ_ATTEMPTS} reads): the archive may hold a mixture "
        f"of its versions, so no old archive was rotated, here or on a remote"
    )


def _unchanged_walk(
    target: Target, kind: str, options: Options, existing: list[Archive], now: datetime, result: TargetResult
) -> state.Recorder | None:
    """With skip_unchanged: mark the result ok when a metadata walk proves the source unchanged
    (and return None), else return the recorder that fingerprints the archive's own walk."""
    if not target.skip_unchanged:
        return None
    settings = state.settings_key(target.path, kind, target.exclude, target.compression_level, target.inflate_check)
    now_ns = round(now.timestamp() * 1_000_000) * 1000
    # The state describes the archive by name and size only: one since damaged in place (zeroed,
    # overwritten) must not stay "unchanged" run after run while status and restore pass it over.
    # Its end is read (as retention reads it), not its comment's notes: an archive they would
    # doubt has no state.  Reading them would load the archive-writing modules.
    if existing and not options.force and archives.ending(existing[-1].path).problem is None:
        same = state.unchanged(
            target.destination, target.name, kind, settings, existing[-1], now_ns, target.path, target.exclude,
            should_stop=_stopping.is_set,
        )  # fmt: skip
        if same is not None:
            result.status, result.archive, result.compared = OK, existing[-1].path, "metadata"
            result.reason = f"unchanged since {existing[-1].name}"
            result.files, result.directories, result.bytes_in = same.files, same.directories, same.bytes
            result.bytes_out = existing[-1].path.stat().st_size
            return None
    return state.Recorder(settings, now_ns)


def _confirm(target: Target, newest: Archive, now: datetime, result: TargetResult) -> None:
    """Record that the source was found to match `newest` now, for `status` (see archives.confirm)."""
    if not target.records_unchanged:
        return
    try:
        archives.confirm(target.destination, target.name, newest.name, now)
    except OSError as exc:
        result.warnings.append(
            f"could not record that the source was found unchanged ({_describe(exc, target)}); status judges "
            f"the target by the age of {newest.name}"
        )


def _save_state(
    target: Target, archive: Path, walked: state.Recorder | None, when: datetime, result: TargetResult
) -> None:
    if walked is None:
        return
    try:
        state.save(target.destination, target.name, archive, walked, when)
    except OSError as exc:
        # The archive is in place: a missing state only makes the next run compare contents.
        result.warnings.append(
            f"could not record the source's state ({_describe(exc, target)}); the next run compares contents"
        )


def _foreseen(entries: Iterator[sources.Entry], writer: ZipWriter) -> Iterator[sources.Entry]:
    """The walk, read ahead until the writer knows how to pack it: a big tree's worker processes
    start before its first file, not after its first thousands of small ones were packed on
    threads (about 2% of a backup of the benchmark's second tree, which begins with them).  At
    most a few thousand entries are held, and a small target is walked whole, which is quick."""
    ahead: list[sources.Entry] = []
    size = 0
    for entry in entries:
        ahead.append(entry)
        size += entry.stat.st_size if entry.kind in _DATA else 0
        if writer.foresee(size, len(ahead)):
            break
    yield from ahead
    yield from entries


def _read_back(archive: Path, writer: ZipWriter) -> None:
    """Read the new archive back from the file: every byte, local headers and central directory
    included, must be what was written (whose compressed data was proven to inflate back)."""
    from backup_core.zip.verify import first_difference

    where = first_difference(archive, writer.spans())
    if where is not None:
        raise TargetError(
            f"the new archive failed its read-back check: the bytes on disk differ from those written, "
            f"at byte {where} ({writer.member_at(where)})"
        )


def _add(
    writer: ZipWriter,
    entry: sources.Entry,
    target: Target,
    destination: Path,
    when: datetime,
    snapshots: list[Path],
    result: TargetResult,
    in_folder: bool = False,
) -> None:
    if entry.kind == "dir":
        writer.add_directory(entry.name, entry.stat)
    elif entry.kind == "link":
        link = str(Path(entry.path).readlink())
        # Stored with zip's forward slashes, as a link's target is read on other systems; a
        # Windows restore turns them back.
        writer.add_symlink(entry.name, link.replace("\\", "/") if os.name == "nt" else link, entry.stat)
    elif entry.kind == "file":
        writer.add_file(entry.name, entry.path, entry.stat)
    else:
        copy = archives.partial_path(destination, target.name, when, f"sqlite{len(snapshots)}")
        snapshots.append(copy)
        with _create_private(copy):
            pass  # created empty with mode 0600 before SQLite writes secrets into it
        try:
            sqlite.snapshot(Path(entry.path), copy, target.busy_timeout, should_stop=_stopping.is_set)
            found = sqlite.check(copy, target.sqlite_check)
            if found:
                raise TargetError(
                    f"the snapshot of {entry.path} failed PRAGMA {sqlite.CHECK_PRAGMAS[target.sqlite_check]}: "
                    f"{found}; the database itself may be damaged"
                )
        except TargetError as exc:
            if not in_folder or _stopping.is_set():
                raise  # a database target is its database; an interrupt stops everything
            # One bad database must not sink its folder: leave it out, archive the rest, say so.
            result.incomplete.append(f"{entry.name}: {exc}")
            archives.remove(copy)
            return
        copied = copy.stat()
        # Archive the snapshot under the live database's name, mode, owner and time.
        live = entry.stat
        st = os.stat_result((live.st_mode, 0, 0, 1, live.st_uid, live.st_gid, copied.st_size, 0, live.st_mtime, 0))
        writer.add_file(entry.name, copy, st, watch=False)  # a private copy: nothing writes to it
        result.databases += 1


@contextmanager
def _create_private(path: Path) -> Iterator[BinaryIO]:
    """Create `path` new, readable by its owner only (archives hold secrets), buffered for writing."""
    with archives.create_private(path, buffering=1 << 20) as file:
        archives.claim(file.fileno())  # alive while open, whatever becomes of the lock file
        yield file


def _same_content(new: Path, old: Path) -> bool:
    from backup_core.zip import fingerprint

    try:
        return fingerprint.of_archive(new) == fingerprint.of_archive(old)
    except (OSError, ValueError, struct.error):
        return False  # a damaged old archive is no reason to skip a backup: make a new one


def _rotate(
    target: Target,
    result: TargetResult,
    existing: list[Archive] | None = None,
    spare: set[str] | None = None,
    guard: bool = False,
    forced: bool = False,
    keep_full: bool = False,
) -> list[str]:
    """Delete this target's archives that its policy no longer keeps (never the new one);
    `existing`: the target's archives, when the caller knows them; `spare`: names kept anyway;
    `guard`: raise TargetError, deleting nothing, when the newest kept is not a whole archive
    (see _newest_kept_problem); `keep_full`: delete no archive that holds a file (the new one
    holds none).  Returns the names that `spare` kept."""
    if existing is None:
        existing = archives.list_archives(target.destination, target.name)
    due = _due(existing, target, result)
    doomed = [a for a in due if a.name not in (spare or ())]
    spared = [a.name for a in due if a.name in (spare or ())]
    if guard and doomed and (problem := _newest_kept_problem(existing, doomed, forced)):
        raise TargetError(problem)
    if keep_full and (full := [a for a in doomed if _held(a.path)]):
        kept = set(full)
        doomed = [a for a in doomed if a not in kept]
        result.warnings.append(
            f"{result.archive.name if result.archive else 'the new archive'} holds no file: {len(full)} older "
            f"archive(s) that hold files were kept ({full[-1].name} the newest)"
            f"{', and no remote copy was deleted' if target.offsite else ''}; if {target.path} is meant to stay "
            f"empty, {command(f'prune --force --only {target.name}')} applies keep"
        )
    for archive in doomed:
        if archive.path == result.archive:  # cannot happen: the newest is always kept
            continue
        if _delete_archive(archive.path, result):
            result.deleted.append(archive.name)
    # The folder is not synced after deleting: a deletion a crash undoes brings back an old
    # archive, which the next run deletes again, and it saves an fsync a target (one of three).
    if doomed:
        archives.mark_changed(_lock_path(target))
    return spared


def _due(existing: list[Archive], target: Target, result: TargetResult) -> list[Archive]:
    """The archives the target's keep no longer wants.  A file under an archive's name that is
    not a whole zip (cut short, put there by hand) would count toward keep and push good
    archives out: it neither counts nor goes (it may hold something).  Every archive is judged
    (a 64 KiB tail read each) once the plan would delete anything: judging only those it
    keeps let a broken file that was due move into the kept ones when the plan was made again."""
    due = _retention(existing, target, result).deleted
    if due and (broken := _not_whole(existing, result.archive, result.warnings)):
        unjudged = set(broken)
        due = retention.plan([a for a in existing if a not in unjudged], _when, target.keep, utc_now()).deleted
    return due


def _not_whole(existing: list[Archive], made: Path | None, warnings: list[str] | None) -> list[Archive]:
    """Those of `existing` that do not end as a whole zip (`made`, the archive this run made and
    verified, is not read again); named in one of `warnings` when given."""
    broken = []
    for archive in existing:
        if archive.path != made and (ending := archives.ending(archive.path)).broken:
            broken.append((archive, ending.problem))
    if broken and warnings is not None:
        (first, why), more = broken[0], len(broken) - 1
        warnings.append(
            f"{first.name} is not a whole archive ({why})"
            + (f", nor {'is' if more == 1 else 'are'} {more} more" if more else "")
            + f": not counted toward keep and not deleted; check {'it' if not more else 'them'} with "
            f"{command('verify')}, then move {'it' if not more else 'them'} out of the folder"
        )
    return [archive for archive, _ in broken]


def _delete_archive(path: Path, result: TargetResult) -> bool:
    """Delete an archive rotation no longer keeps; False (with a warning) when Windows refuses
    because another program has it open (a verify, a restore, a virus scanner): the archive is
    made, and the next run deletes the old one.  Elsewhere a refusal fails the target, as before."""
    try:
        path.unlink(missing_ok=True)
        return True
    except PermissionError:
        if os.name != "nt":
            raise
    if archives.remove(path):  # retried a little: a scanner lets go quickly
        return True
    result.warnings.append(
        f"could not delete {path.name}: another program has it open (a verify, a restore, a virus scanner); "
        "the next run deletes it"
    )
    return False


def _retention(existing: list[Archive], target: Target, result: TargetResult) -> retention.Plan[Archive]:
    """The policy applied at the current time; archives from the future and refusals become warnings."""
    planned = retention.plan(existing, _when, target.keep, utc_now())
    if planned.future:
        names = ", ".join(a.name for a in planned.future)
        result.future = [a.name for a in planned.future]
        result.warnings.append(
            f"{len(planned.future)} archive(s) dated in the future ({names}): kept, and not counted as the newest; "
            "check this machine's clock, then delete them by hand if they are not needed"
        )
    result.warnings.extend(said for said in (planned.refused, planned.spared) if said)
    return planned


def _when(archive: Archive) -> datetime:
    return archive.when


def _preview(target: Target, kind: str, options: Options, result: TargetResult) -> None:
    """Check mode: what a backup would archive and delete, touching nothing."""
    names = _listing(target)
    listed = archives.list_archives(target.destination, target.name, names)
    try:
        _same_origin(target, options, listed)
        _refuse_other_kind(target, kind, options, _current(listed, utc_now()))
    except TargetError as exc:
        result.fail(f"would fail: {exc}")
        return
    if target.skip_unchanged and not options.force:
        # The metadata walk reads no file and writes nothing: where it proves the source
        # unchanged, the run would archive and rotate nothing (Ansible's check mode predicted
        # `changed` on a host that was converged).  Otherwise only the run can tell.
        now = utc_now()
        _unchanged_walk(target, kind, options, _current(listed, now), now, result)
        if result.compared == "metadata":
            result.reason = f"would archive nothing: {result.reason}"
            for remote in target.offsite:  # what the remote lacks still goes, as in the run
                _offsite_result(result, copy := offsite.replicate(target, remote, check=True, now=now))
                if copy.error:
                    _remote_failed(result, copy.error)
            return
    links = 0
    for entry in sources.entries(target.path, kind, target.exclude):
        if entry.kind in _DATA:
            result.files += 1
            result.bytes_in += entry.stat.st_size
            result.databases += entry.kind == "sqlite"
        elif entry.kind == "dir":
            result.directories += 1
        else:
            links += 1
    if kind == "folder" and not (result.files or links) and not options.force:
        try:  # judged against the newest not dated in the future, as the run judges it
            _refuse_emptied(target, _current(listed, utc_now()))
        except TargetError as exc:
            result.fail(f"would fail: {exc}")
            return
    planned = Archive(archives.next_time(utc_now(), listed), target.destination / _NEW)
    result.deleted = [a.name for a in _due([*listed, planned], target, result)]
    stale = archives.stale_partials(target.destination, target.name, names)
    if stale:
        # A preview takes no lock, so it cannot tell these from the work of a run going on now.
        more = len(stale) > 1
        result.warnings.append(
            f"would remove {len(stale)} partial archive{'s' if more else ''} left by an interrupted run "
            f"({stale[0].name}{' and more' if more else ''}), unless a run is writing it now"
        )
    result.status = CHANGED
    # Unless unchanged by content (the run compares the new archive with the newest), when it
    # would keep neither the new archive nor delete any old one.
    unless = target.skip_unchanged and not options.force and bool(_current(listed, utc_now()))  # unchanged from what?
    result.reason = "would archive" + (" unless unchanged (then delete nothing)" if unless else "")
    if kind == "file" and _cut_short_database(target.path):
        # The run fails on it (see _archive): a preview that said "would archive" misled
        # Ansible's check mode and the operator before maintenance.
        result.fail(f"would fail: {target.path} {_CUT_SHORT}; check it with sqlite3 (PRAGMA integrity_check)")
    for remote in target.offsite:
        # The new archive counts as the remote's newest, as it will once uploaded.
        new = Stored(planned.when, _NEW)
        copy = offsite.replicate(target, remote, check=True, planned=new, now=utc_now())
        _offsite_result(result, copy)
        if copy.error:
            _remote_failed(result, copy.error)
    # As the run would: a local archive whose copy on a remote is damaged or replaced is kept.
    spare = {name for copy in result.offsite for name in copy.unvouched}
    if spared := [name for name in result.deleted if name in spare]:
        result.deleted = [name for name in result.deleted if name not in spare]
        result.warnings.append(_spared(spared, "would keep"))


def _cut_short_database(path: Path) -> bool:
    """Whether the file `path` begins as a SQLite database without being whole pages of one."""
    from backup_core.sources import held
    from backup_core.zip.packing import torn_database

    try:
        st = path.stat()
        return torn_database(held.head(path, st), st.st_size)
    except OSError:
        return False  # the run says what is wrong with it


# --- prune ---------------------------------------------------------------------------------------


def prune_target(target: Target, options: Options) -> TargetResult:
    """Apply the target's retention policy without making a new archive."""
    result = TargetResult(target.name)

    def body() -> None:
        try:
            pruning()
        except KeyboardInterrupt:
            # While archives were judged or deleted: what went is said, not lost with this
            # result (the run's own "interrupted" result for it said nothing was deleted).
            _stopping.set()
            went = [f"{len(result.deleted)} archive(s) deleted before it"] if result.deleted else []
            went += [f"remote {c.remote}: {len(c.deleted)} cop(ies) deleted" for c in result.offsite if c.deleted]
            result.fail(f"interrupted; {', '.join(went) if went else 'nothing was deleted'}")

    def pruning() -> None:
        existing = archives.list_archives(target.destination, target.name)
        _same_origin(target, options, existing, judging=True)  # another source's archives are not this keep's
        doomed = _due(existing, target, result)
        # A local archive that a remote lacks and would keep goes nowhere else: it stays until a
        # push (or the next backup) has sent it.  Every remote of the target counts, --remote or not.
        unsent = _unsent(target, result, {a.name for a in doomed}) if doomed else set()
        doomed = [a for a in doomed if a.name not in unsent]
        if doomed and (problem := _newest_kept_problem(existing, doomed, forced=options.force)):
            # Nor are the remotes pruned: they may hold the same incomplete archive as their
            # newest, and the last complete copy as an older one.
            result.fail(problem)
            return
        if not doomed:
            result.reason = f"{len(existing)} archive(s), nothing to prune"
        elif options.check:
            result.deleted = [a.name for a in doomed]
            result.status = CHANGED
            result.reason = f"{len(existing)} archive(s), {len(doomed)} to delete"
        else:
            with _locked(target, result) as held:
                if held is None:
                    return
                result.status = CHANGED
                # The listing is taken again under the lock, and reported again; and judged again:
                # a backup may have placed an incomplete archive meanwhile.
                result.warnings = [w for w in result.warnings if w.startswith(_KEPT_FOR_REMOTES)]
                _rotate(target, result, spare=unsent, guard=True, forced=options.force)
        for remote in _remotes(target, options.remote):
            try:
                copy = offsite.prune_remote(target, remote, check=options.check, now=utc_now(), forced=options.force)
            except KeyboardInterrupt as exc:
                if (partial := getattr(exc, "offsite", None)) is not None:
                    _offsite_result(result, partial)  # its deletions before it, for the line and the JSON
                raise
            _offsite_result(result, copy)
            if copy.error:
                _remote_failed(result, copy.error)
            elif copy.deleted and result.status == OK:
                result.status = CHANGED

    return _guarded(target, result, body)


_KEPT_FOR_REMOTES = "kept for its remotes: "


def _newest_kept_problem(existing: list[Archive], doomed: list[Archive], forced: bool = False) -> str | None:
    """Why deleting `doomed` could leave no good archive: the newest one kept, which retention
    trusts by its name, does not end as a whole zip (a file cut short, or put there by hand), or
    was made without a database or holding a damaged one (its comment says so): an older
    archive may be the last that holds it, and a backup missing a database needs a person."""
    going = set(doomed)
    staying = [a for a in existing if a not in going]
    broken = _not_whole(staying, None, None)  # neither counted nor deleted (see _due): not "the newest"
    unjudged = set(broken)
    kept = retention.newest([a for a in staying if a not in unjudged], _when, utc_now())
    if kept is None:
        return None
    found = archives.doubt(kept.path, forced)
    why, anyway = (found.why, found.anyway) if found is not None else (_damaged(kept.path), "")
    if why is None and not forced and not _held(kept.path):
        # An archive of nothing (an empty folder, or a zip put there by hand) as the newest: a
        # backup refuses to make one over archives that hold files (see _refuse_emptied), and
        # prune, trusting it, deleted every archive that did.
        counted = ((a, _held(a.path)) for a in sorted(going, key=_when, reverse=True))
        fuller, count = next(((a, n) for a, n in counted if n), (None, 0))
        if fuller is not None:
            files = f"{count} file{'s' * (count != 1)}"
            why = f"it holds no file, while {fuller.name}, which it would delete, holds {files}"
            anyway = f"; to prune anyway, run {command('prune --force')}"
    if why is None:
        return None
    return (
        f"nothing was deleted: {kept.name}, the newest archive that would be kept, is no ground for it: "
        f"{why}; older archives may be the last good ones: check it with {command('verify')}, and make a "
        f"complete backup (or move it out of the folder) before pruning{anyway}"
    )


# What reading an archive through found, by its identity: prune judges the newest archive it
# keeps once before it takes the lock and again under it.
_read_through: dict[tuple[str, int, int, int], str | None] = {}


def _held(path: Path) -> int:
    """How many files and links the archive's directory lists: 0 for no whole zip, and the end
    record's count of entries when the directory cannot be read as it says (never a reason to
    refuse).  Python's zipfile takes end-record bytes inside a comment for the end record."""
    import zipfile

    entries = archives.ending(path).members
    if not entries:
        return 0
    try:
        with zipfile.ZipFile(path) as opened:
            members = opened.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return entries
    return sum(1 for member in members if not member.is_dir()) if len(members) == entries else entries


def _damaged(path: Path) -> str | None:
    """Why the archive's members do not read back as written (a CRC mismatch, a cut member), or
    None.  Its end (see archives.doubt) says nothing of the bytes before it: a bit flipped on the
    disk since it was made left it looking whole, and prune then deleted every older archive.
    Only prune asks: a backup's rotation keeps the archive it has just read back."""
    from backup_core.zip.verify import verify_archive

    try:
        st = path.stat()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _read_through:
        verdict = verify_archive(path, judge_names=False)  # its data: what a name says is restore's to judge
        _read_through[key] = verdict.problems[0] if verdict.problems else None
    return _read_through[key]


def _unasked(exc: BackupError | OSError, remote: Remote) -> str:
    """Why a remote could not be asked (what it holds), in a few words."""
    return str(exc) if isinstance(exc, BackupError) else f"{exc.strerror or exc} ({exc.filename or remote.name})"


def _unsent(target: Target, result: TargetResult, due: set[str]) -> set[str]:
    """The names of the target's local archives that one of its remotes holds no good copy of
    and would keep (see offsite.lacking); when a remote cannot be asked, every local archive.
    Those of them `due` for deletion are named in a warning, so a prune that frees less than
    its keep says why."""
    names = {a.name for a in archives.list_archives(target.destination, target.name)}
    unsent: set[str] = set()
    for remote in target.offsite:
        try:
            lacking = offsite.lacking(target, remote, utc_now())
        except (BackupError, OSError) as exc:
            why = _unasked(exc, remote)
            result.warnings.append(
                f"{_KEPT_FOR_REMOTES}no local archive was deleted, since remote {remote.name} could not be asked "
                f"which it lacks ({why})"
            )
            return names
        held_back = [name for name in lacking if name in due]
        if held_back:
            more = f" and {len(held_back) - 1} more" if len(held_back) > 1 else ""
            result.warnings.append(
                f"{_KEPT_FOR_REMOTES}remote {remote.name} holds no good copy of {held_back[0]}{more} (none, where its "
                f"keep wants one, or one that was replaced or changed); they were not deleted here ({command('push')} "
                f"sends those it has none of)"
            )
        unsent.update(lacking)
    return unsent


def _remotes(target: Target, name: str | None) -> tuple[Remote, ...]:
    """The target's remotes, or only the one named (a target without it has none to work on)."""
    return tuple(r for r in target.offsite if name is None or r.name == name)


# --- push ----------------------------------------------------------------------------------------


def push_target(target: Target, options: Options) -> TargetResult:
    """Upload what the target's remotes lack of its local archives, without a new archive."""
    result = TargetResult(target.name)

    def body() -> None:
        remotes = _remotes(target, options.remote)
        if not remotes:
            # As verify --remote says it: a target with other remotes has an offsite: list.
            if target.offsite:  # and --remote names another
                result.status, result.reason = SKIPPED, f"does not copy to remote {options.remote}"
            else:
                result.status, result.reason = SKIPPED, "no remote to copy to (offsite: is empty)"
            return
        _same_origin(target, options, archives.list_archives(target.destination, target.name), judging=True)
        # Check mode takes no lock: it writes nothing, and a preview holding the lock while a
        # slow remote is listed made a real backup skip the target.
        guard: contextlib.AbstractContextManager[list[str] | None] = (
            contextlib.nullcontext([]) if options.check else _locked(target, result)
        )
        with guard as held:
            if held is None:
                return
            for remote in remotes:
                progress = functools.partial(options.observer.uploading, target, remote.name)
                copy = offsite.replicate(
                    target, remote, check=options.check, prune=False, progress=progress, now=utc_now()
                )
                _offsite_result(result, copy)
                if copy.error:
                    _remote_failed(result, copy.error)
                elif copy.uploaded and result.status == OK:
                    result.status = CHANGED
            if result.status == OK:
                result.reason = "every remote holds every local archive its keep wants"

    return _guarded(target, result, body)


# --- verify --------------------------------------------------------------------------------------


def verify_target(target: Target, options: Options) -> list[TargetResult]:
    """Read back every archive of the target (or the newest); one result per archive."""
    if options.remote is not None:
        return _verify_remote(target, options)
    try:
        existing = archives.list_archives(target.destination, target.name)
    except OSError as exc:
        result = TargetResult(target.name)
        result.fail(f"cannot list {target.destination}: {exc.strerror or exc}")
        return [result]
    if not existing:
        result = TargetResult(target.name)
        result.fail(f"no archives of {target.name} in {target.destination}; run a backup first")
        return [result]
    from backup_core.zip.verify import verify_archive

    how = target.sqlite_check if target.sqlite_check != "none" else "integrity"
    results = []
    # --latest checks the archive a restore takes by default: one dated in the future (a clock
    # ahead) is passed over there, so it must be here too, or verify passes what restore won't use.
    latest = retention.newest(existing, _when, utc_now()) or existing[-1]
    for archive in [latest] if options.latest else existing:
        started = time.monotonic()
        verdict = verify_archive(archive.path, sqlite_check=how)
        result = TargetResult(target.name, OK, archive.path, files=verdict.files, databases=verdict.databases)
        result.directories, result.links, result.warnings = verdict.directories, verdict.links, verdict.warnings
        result.bytes_in, result.seconds = verdict.bytes, time.monotonic() - started
        if not verdict.ok:
            result.fail("; ".join(verdict.problems[:3]) + (" ..." if len(verdict.problems) > 3 else ""))
        results.append(result)
    return results


def _verify_remote(target: Target, options: Options) -> list[TargetResult]:
    """Check a remote's copies: the recorded checksum, or with --download a full verify of each."""
    remotes = _remotes(target, options.remote)
    if not remotes:
        result = TargetResult(target.name, SKIPPED, reason=f"does not copy to remote {options.remote}")
        return [result]
    remote = remotes[0]
    store = offsite.store_for(remote)
    try:
        held = store.list(target.name)
    except BackupError as exc:
        return [TargetResult(target.name, FAILED, error=str(exc))]
    if not held:
        return [TargetResult(target.name, FAILED, error=f"no copies of {target.name} on remote {remote.name}")]
    how = target.sqlite_check if target.sqlite_check != "none" else "integrity"
    results = []
    # The newest not dated in the future: the first restore --remote considers (it passes over one
    # it cannot vouch for, which this check then reports).
    latest = retention.newest(held, lambda s: s.when, utc_now()) or held[-1]
    for stored in [latest] if options.latest else held:
        started = time.monotonic()
        result = TargetResult(target.name, OK, Path(stored.name), bytes_in=stored.size)
        try:
            if options.download:
                verdict = offsite.download_and_verify(target, store, stored, options.identities, how)
                result.files, result.databases = verdict.files, verdict.databases
                result.directories, result.links, result.warnings = verdict.directories, verdict.links, verdict.warnings
                problem = "; ".join(verdict.problems[:3]) if not verdict.ok else None
            else:
                problem = store.check(target.name, stored)
                result.reason = store.checked(target.name, stored)
        except BackupError as exc:
            problem = str(exc)
        except OSError as exc:  # the scratch copy could not be written (a full disk): one line, no traceback
            problem = f"{exc.strerror or exc} ({exc.filename or stored.name})"
        if problem:
            result.fail(problem)
        result.seconds = time.monotonic() - started
        results.append(result)
    return results


# What each command does to one target; a child process of --jobs looks its command up here too.
PER_TARGET: dict[str, Callable[[Target, Options], list[TargetResult]]] = {
    "backup": lambda t, o: [backup_target(t, o)],
    "prune": lambda t, o: [prune_target(t, o)],
    "push": lambda t, o: [push_target(t, o)],
    "verify": verify_target,
}
