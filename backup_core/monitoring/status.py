"""Freshness: when did each target last back up, in each place its archives live, and is that too long ago?

`invoke status` lists every store of each selected target (its destination and
every remote in its offsite:) and judges the newest archive in each against the
target's max_age.  A backup that silently stopped running shows here as an age
that grows.  It only reads: nothing in any store is written, locked or deleted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from backup_core.errors import EXIT_FAILED, EXIT_OK, BackupError, command
from backup_core.manifest import Target
from backup_core.results import FAILED, OK, STATUSES
from backup_core.stores import archives, offsite, retention
from backup_core.stores.base import Store, Stored
from backup_core.stores.local import LocalStore

# An archive dated a little ahead of this machine's clock is a clock that drifted, not a problem;
# one dated far ahead would hide a backup that stopped (its age stays negative), so it is not
# counted.  The same slack as a backup's: status failed on archives a backup took as current.
_CLOCK_SLACK = retention.FUTURE_TOLERANCE


@dataclass
class StoreState:
    """What one store holds of one target."""

    store: str  # "local", or the remote's name
    where: str  # a folder or s3://bucket/prefix, never a credential
    archives: int = 0
    bytes: int = 0
    newest: str | None = None  # the newest archive's stored name
    newest_when: datetime | None = None  # the UTC time in its name
    age: float | None = None  # seconds between newest_when and the survey
    error: str | None = None  # the store could not be listed: one sentence
    newest_problem: str | None = None  # the newest local archive is not whole, or marked incomplete
    # With a newest_problem: the time in the name of the newest one without (None: there is none),
    # which is what metrics report as the newest, so an empty file cannot look like a fresh backup.
    good_when: datetime | None = None
    folder_missing: bool = False  # the local destination does not exist (never made, or moved away)
    # When a run last found the source to hold what the newest archive holds (skip_unchanged):
    # the age is counted from then, not from the archive's date.
    confirmed_when: datetime | None = None
    # The newest archive dated more than _CLOCK_SLACK ahead of the clock, when there is one: not
    # counted as the newest (as a backup does not count it), or a fresh backup beside it failed
    # status for as long as it stayed there.
    ahead: str | None = None
    ahead_when: datetime | None = None

    @property
    def listed(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "where": self.where,
            "listed": self.listed,
            "archives": self.archives,
            "bytes": self.bytes,
            "newest": self.newest,
            "newest_time": _iso(self.newest_when),
            "unchanged_time": _iso(self.confirmed_when),
            "age_seconds": None if self.age is None else round(self.age, 3),
            "newest_problem": self.newest_problem,
            "ahead": self.ahead,
            "error": self.error,
        }


@dataclass
class TargetState:
    """One target's freshness: every store's holdings and the verdict."""

    name: str
    max_age: str | None
    stores: list[StoreState] = field(default_factory=list)
    status: str = OK
    problems: list[str] = field(default_factory=list)  # why it failed: sentences an operator can act on
    seconds: float = 0.0  # spent listing its stores

    @property
    def newest(self) -> StoreState | None:
        """The store holding the newest archive anywhere (None when no store holds one)."""
        held = [s for s in self.stores if s.newest_when is not None]
        return max(held, key=lambda s: s.newest_when or datetime.min) if held else None

    @property
    def error(self) -> str | None:
        return "; ".join(self.problems) if self.problems else None

    def as_json(self) -> dict[str, Any]:
        newest = self.newest
        return {
            "name": self.name,
            "status": self.status,
            "max_age": self.max_age,
            "max_age_seconds": retention.parse_duration(self.max_age).total_seconds() if self.max_age else None,
            "newest": newest.newest if newest else None,
            "newest_time": _iso(newest.newest_when) if newest else None,
            "age_seconds": round(newest.age, 3) if newest and newest.age is not None else None,
            "error": self.error,
            "stores": [s.as_json() for s in self.stores],
        }


@dataclass
class StatusReport:
    """The answer of one `invoke status`: every selected target's state, in manifest order."""

    manifest: Path
    now: datetime
    targets: list[TargetState] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # run-level problems (the metrics file)
    seconds: float = 0.0

    def recap(self) -> dict[str, dict[str, int]]:
        counts = {t.name: dict.fromkeys(STATUSES, 0) for t in self.targets}
        for state in self.targets:
            counts[state.name][state.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(t.status == FAILED for t in self.targets)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "command": "status",
            "manifest": str(self.manifest),
            "now": _iso(self.now),
            # The keys every command's document has (status neither previews nor is cut short:
            # an interrupted one gets the error document, which says so).
            "check": False,
            "exit_code": self.exit_code,
            "interrupted": False,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "recap": self.recap(),
            "targets": [t.as_json() for t in self.targets],
        }


def survey(targets: list[Target], now: datetime) -> list[TargetState]:
    """Every target's state at `now`: each store listed, each newest archive judged."""
    places = [(target, place) for target in targets for place in _places(target)]
    listed = _list_all(places, now)
    states = []
    for target in targets:
        mine = [
            (state, seconds) for (owner, _), (state, seconds) in zip(places, listed, strict=True) if owner is target
        ]
        state = judge(target, [s for s, _ in mine], now)
        state.seconds = sum(seconds for _, seconds in mine)
        states.append(state)
    return states


_LISTERS = 8
_Place = tuple[str, str, Callable[[], Store]]  # the store's name, where it is, how to open it


def _list_all(places: list[tuple[Target, _Place]], now: datetime) -> list[tuple[StoreState, float]]:
    """Each place listed, side by side: a bucket listing waits on the network.

    On daemon threads, with this thread waiting in slices a signal can cut: an interrupt
    (Ctrl-C, SIGTERM) while a remote does not answer ends the command at once.  A thread
    pool's threads are waited for as the process exits, which held a stopped run for the
    listing's whole timeout (90 s), past systemd's wait before it kills."""
    listed: list[tuple[StoreState, float] | None] = [None] * len(places)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(places)):
        todo.put(index)
    left = threading.Semaphore(0)

    def lister() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            target, place = places[index]
            try:
                listed[index] = list_store(target, *place, now=now)
            except Exception as exc:  # list_store answers a store's errors; anything else, said the same way
                listed[index] = (
                    StoreState(place[0], place[1], error=f"cannot be listed: {type(exc).__name__}: {exc}"),
                    0.0,
                )
            finally:
                left.release()

    for _ in range(max(1, min(_LISTERS, len(places)))):
        threading.Thread(target=lister, name="list", daemon=True).start()
    for _ in places:
        while not left.acquire(timeout=0.5):
            pass
    return [state for state in listed if state is not None]  # all of them: each thread set its own


def _places(target: Target) -> list[_Place]:
    """The local destination first, then each remote in the order offsite: names them."""
    local: _Place = ("local", str(target.destination), lambda: LocalStore(target.destination))
    return [local, *((r.name, r.describe(), partial(offsite.store_for, r)) for r in target.offsite)]


def list_store(
    target: Target, name: str, where: str, open_store: Callable[[], Store], now: datetime | None = None
) -> tuple[StoreState, float]:
    """What a store holds of `target`, and the seconds that took; a store that cannot be opened
    or listed is a state with an error, not an exception."""
    started = time.monotonic()
    state = StoreState(name, where)
    words = "local destination" if name == "local" else f"remote {name}"
    try:
        store = open_store()
        state.where = store.describe()
        held: list[Stored] = store.list(target.name)
        latest = None if now is None else now + _CLOCK_SLACK  # dated past it: ahead of the clock
        ahead = [s for s in held if latest is not None and s.when > latest]
        # The newest copy this tool put there: an object someone else wrote under a newer
        # archive's name must not make a stale remote look fresh.
        newest = next(
            (
                s
                for s in reversed(held)
                if (latest is None or s.when <= latest) and store.vouched(target.name, s) is None
            ),
            None,
        )
    except BackupError as exc:
        state.error = str(exc)
    except OSError as exc:
        state.error = f"{words}: cannot list {exc.filename or where}: {exc.strerror or exc}"
    except Exception as exc:  # a client library's own error must not become a traceback
        state.error = f"{words}: cannot be listed: {type(exc).__name__}: {exc}"
    else:
        state.archives, state.bytes = len(held), sum(s.size for s in held)
        if ahead:
            state.ahead, state.ahead_when = ahead[-1].name, ahead[-1].when
        if newest is not None:
            state.newest, state.newest_when = newest.name, newest.when
        if name == "local":
            state.folder_missing = not target.destination.is_dir()
            if newest is not None:
                state.newest_problem = _not_whole(target.destination / newest.name)
                if state.newest_problem is not None:
                    older = (s for s in reversed(held) if s.when < newest.when)
                    good = next((s for s in older if _not_whole(target.destination / s.name) is None), None)
                    state.good_when = good.when if good is not None else None
    return state, time.monotonic() - started


def _not_whole(archive: Path) -> str | None:
    """Why the newest local archive is no backup to count on (a 64 KiB read of its end), or None:
    an empty or cut-short file under an archive's name looked fresh to monitoring."""
    from backup_core.zip.packing import incomplete_note

    ending = archives.ending(archive)
    if not ending.readable:
        return None  # a monitoring account may list archives (0600) it cannot read: not judged
    if ending.broken:
        return f"is not a whole zip: {ending.problem}"
    note = incomplete_note(ending.comment)
    return f"is marked incomplete: {note}" if note is not None else None


def judge(target: Target, stores: list[StoreState], now: datetime) -> TargetState:
    """The verdict: failed when a store cannot be listed, or (with max_age) holds nothing or only old archives."""
    state = TargetState(target.name, target.max_age, stores)
    found = archives.confirmation(target.destination, target.name) if target.skip_unchanged else None
    for store in stores:
        if store.newest_when is None:
            continue
        since = store.newest_when
        # A remote's newest copy of the archive the source was found to match is as current.
        # A record dated ahead of the clock is not trusted: it would hide a stopped backup.
        if found and store.newest in (found[0], f"{found[0]}.age") and since < found[1] <= now + _CLOCK_SLACK:
            store.confirmed_when = since = found[1]
        store.age = (now - since).total_seconds()
    state.problems = [store.error for store in stores if store.error]
    if (other := _other_origin(target, stores)) is not None:
        state.problems.append(other)
    state.problems += [
        f"the newest local archive {store.newest} {store.newest_problem}; check it with verify, and make a "
        "complete backup"
        for store in stores
        if store.newest_problem
    ]
    if target.max_age:
        stale = _freshness(stores, retention.parse_duration(target.max_age), now)
        if stale:
            stale[-1] += f"; max_age is {target.max_age}"
        state.problems += stale
    if state.problems:
        state.status = FAILED
    return state


def _other_origin(target: Target, stores: list[StoreState]) -> str | None:
    """Why the local archives are not this target's, when the destination records another
    source or host for them (see archives.origin): backups fail on it, and their archives'
    age must not make a source never backed up look fresh."""
    from backup_core.stores.base import this_host

    if not any(store.store == "local" and store.archives for store in stores):
        return None
    try:
        made = archives.made_elsewhere(target.destination, target.name, target.path, this_host())
    except archives.OriginUnreadable as exc:
        return (
            f"{exc}: it records where the archives of {target.name} there come from, "
            "and backups of it fail until it can be read"
        )
    if made is None:
        return None
    return (
        f"{target.destination} holds archives of {target.name} made {made}, not of {target.path} on this host: "
        f"backups of it fail until that is settled (see {command(f'backup --only {target.name}')})"
    )


def _freshness(stores: list[StoreState], limit: timedelta, now: datetime) -> list[str]:
    """What is too old, missing or dated ahead, in as few words as the stores allow (unlisted ones are not judged)."""
    remotes = any(store.store != "local" for store in stores)
    everywhere = all(store.listed for store in stores)
    stores = [store for store in stores if store.listed]

    def place(store: StoreState) -> str:
        if store.store != "local":
            return f"on remote {store.store}"
        return "locally" if remotes else ""

    # Only archives dated ahead: nothing tells when the last backup was made.
    missing = [store for store in stores if store.newest_when is None and store.ahead is None]
    ahead = [store for store in stores if store.newest_when is None and store.ahead is not None]
    old = [store for store in stores if store.age is not None and store.age > limit.total_seconds()]
    problems = []
    if ahead:
        dated = " and ".join(
            f"{format_age((s.ahead_when - now).total_seconds())} ahead {place(s)}".rstrip()
            for s in ahead
            if s.ahead_when
        )
        problems.append(
            f"every archive is dated more than {_CLOCK_SLACK.seconds // 60} minutes ahead of this machine's "
            f"clock (the newest {dated}), so the last backup's age cannot be judged; check the clock"
        )
    # A destination moved away or unmounted looks like a target never backed up: say which.
    gone = next((f" ({s.where} does not exist)" for s in missing if s.folder_missing), "")
    # A store holding only what this host cannot vouch for (another host's copies, or objects put
    # there by hand) holds "no archive" of its own, yet its count is not 0: said, or it read as a lie.
    others = [s for s in missing if s.archives]
    unvouched = "; ".join(
        f"{place(s)}, {s.archives} cop{'y' if s.archives == 1 else 'ies'} this host did not make" for s in others
    )
    said = f" ({unvouched})" if unvouched else ""
    if missing and len(missing) == len(stores) and everywhere:
        problems.append("no archive at all" + (" locally or on any remote" if remotes else "") + gone + said)
    elif missing:
        problems.append("no archive " + " or ".join(place(s) for s in missing) + gone + said)
    if old:
        problems.append(
            " and ".join(
                (
                    f"source last found unchanged {format_age(s.age or 0)} ago {place(s)}"
                    if s.confirmed_when
                    else f"newest archive is {format_age(s.age or 0)} old {place(s)}"
                ).rstrip()
                for s in old
            )
        )
    return problems


def format_age(seconds: float) -> str:
    """A duration in its two largest units: '3d 4h', '26h 30min', '5min 2s', '40s'; days and hours as
    max_age spells them, minutes never as 'm', which is max_age's month ("30m" is 30 months).

    Days only from two days on: "27h 5min old; max_age is 26h" compares at a glance, "1d 3h" does not.
    """
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days == 1:
        days, hours = 0, hours + 24
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}min"
    if minutes:
        return f"{minutes}min {secs}s"
    return f"{secs}s"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
