"""Which archives a `keep:` policy keeps.

The rules follow `restic forget`, which `borg prune` closely resembles:

* every rule is applied on its own to all archives, counting from the newest,
  and an archive survives if any rule keeps it;
* `last: N` keeps the N newest;
* `hourly/daily/weekly/monthly/yearly: N` keep the newest archive of each of the
  N most recent periods that have an archive (periods use the UTC time in the
  archive's name; weeks are ISO weeks);
* `within: 14d` keeps every archive made within that long before the newest;
* the newest archive is always kept, so a policy can never delete the last backup.

`plan` adds what a clock that jumps needs: archives dated in the future are reported,
kept and never counted as the newest; a run that would delete every archive but the
newest although the policy asks for more is refused; and a `within` window that a newest
archive dated far ahead would empty keeps, once, what it held before that archive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

A = TypeVar("A")

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
          "m": timedelta(days=31), "y": timedelta(days=365)}  # fmt: skip


def parse_duration(text: str) -> timedelta:
    """'36h', '14d', '8w', '6m', '1y' as a timedelta (the schema has checked the form).  One past
    what a timedelta holds (2.7 million years) is that much: forever, for every use here."""
    match = re.fullmatch(r"([1-9][0-9]*)([hdwmy])", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    unit = _UNITS[match.group(2)]
    count = int(match.group(1))
    return count * unit if count <= timedelta.max // unit else timedelta.max


def keep(items: Iterable[A], when: Callable[[A], datetime], policy: dict[str, Any]) -> set[int]:
    """Indexes (into `items`, as given) of the archives that `policy` keeps."""
    dated = sorted(enumerate(items), key=lambda pair: when(pair[1]), reverse=True)
    if not dated:
        return set()
    kept = {dated[0][0]}  # the newest, always
    kept.update(index for index, _ in dated[: policy.get("last", 0)])
    for rule, period_of in PERIODS.items():
        wanted = policy.get(rule, 0)
        last_period = None
        for index, item in dated:
            if wanted <= 0:
                break
            period = period_of(when(item))
            if period != last_period:
                last_period = period
                kept.add(index)
                wanted -= 1
    if "within" in policy:
        newest, within = when(dated[0][1]), parse_duration(policy["within"])
        # Longer than the calendar reaches back (2100y from now is before year 1): keep them all.
        horizon = newest - within if within < newest - datetime.min.replace(tzinfo=newest.tzinfo) else None
        kept.update(index for index, item in dated if horizon is None or when(item) >= horizon)
    return kept


def split(items: list[A], when: Callable[[A], datetime], policy: dict[str, Any]) -> tuple[list[A], list[A]]:
    """(kept, deleted), each in the order given."""
    kept = keep(items, when, policy)
    return [a for i, a in enumerate(items) if i in kept], [a for i, a in enumerate(items) if i not in kept]


# --- clocks that jump ------------------------------------------------------------------------------

# An archive dated later than the current clock by more than this was made by a clock that was
# ahead (or this clock is behind).  A little slack lets machines a few minutes apart share a store.
FUTURE_TOLERANCE = timedelta(minutes=10)


@dataclass(frozen=True)
class Plan(Generic[A]):
    """What a retention run does with a listing: each list in the order given."""

    kept: list[A]
    deleted: list[A]
    future: list[A]  # dated after now (beyond the tolerance): reported, kept, never counted as newest
    refused: str | None = None  # why the policy's deletions were not made (then `deleted` is empty)
    spared: str | None = None  # why some of them were not made (see _within_past_a_jump)


def plan(
    items: list[A],
    when: Callable[[A], datetime],
    policy: dict[str, Any],
    now: datetime,
    tolerance: timedelta = FUTURE_TOLERANCE,
) -> Plan[A]:
    """Apply `policy` to archives `items` as seen at `now` (works on any store's listing).

    Archives dated in the future are set aside: a clock that ran ahead once must not make
    every later archive look old.  And when the policy would delete every archive older than
    the newest although it means to keep more than one (a `within` after a jump of the
    clock), nothing is deleted and `refused` says why; what `within` kept before a newest archive
    dated more than the window after the one before it stays too, and `spared` says why.
    """
    horizon = now + tolerance
    future = [item for item in items if when(item) > horizon]
    present = [item for item in items if when(item) <= horizon]
    kept, deleted = split(present, when, policy)
    refused = spared = None
    if deleted and len(kept) == 1 and _means_history(present, when, policy):
        newest = max(present, key=when)
        older = max((item for item in present if item is not newest), key=when)
        gap = when(newest) - when(older)
        refused = (
            f"kept all {len(deleted)} older archive(s): the policy would delete every archive but the newest, "
            f"which is {_days(gap)} after the one before it (a clock set ahead?); if that gap is real, "
            f"the next backup deletes them"
        )
        kept, deleted = present, []
    elif deleted and "within" in policy and len(present) >= 2:
        kept, deleted, spared = _within_past_a_jump(present, kept, deleted, when, policy["within"])
    staying = {id(item) for item in (*future, *kept)}
    return Plan(
        kept=[item for item in items if id(item) in staying],
        deleted=deleted,
        future=future,
        refused=refused,
        spared=spared,
    )


def _within_past_a_jump(
    present: list[A], kept: list[A], deleted: list[A], when: Callable[[A], datetime], within: str
) -> tuple[list[A], list[A], str | None]:
    """`within` counts back from the newest archive: when that one is dated more than the window
    after the one before it (a clock set ahead, most often), the window would hold it alone and
    the history it was meant to keep would go at once, whatever else the policy keeps.  Those
    archives the window keeps counting from the one before stay this once, with a warning."""
    dated = sorted(present, key=when)
    newest, older = dated[-1], dated[-2]
    gap, window = when(newest) - when(older), parse_duration(within)
    if not _jumped(dated, when, window):
        return kept, deleted, None
    spared = [item for item in deleted if when(older) - when(item) <= window]
    if not spared:
        return kept, deleted, None
    staying = {id(item) for item in spared}
    return (
        [*kept, *spared],
        [item for item in deleted if id(item) not in staying],
        f"kept {len(spared)} archive(s) that within: {within} keeps counting from the archive before the newest: "
        f"the newest is {_days(gap)} after it (a clock set ahead?); if that gap is real, the next backup deletes them",
    )


def _means_history(items: list[A], when: Callable[[A], datetime], policy: dict[str, Any]) -> bool:
    """Whether `policy` asks for more than the newest archive of `items`.

    `last: 1` (or `daily: 1`) legitimately keeps one archive, and `daily: 7` keeps one of a
    day's several archives; a count of two periods that have archives does not.  Nor does a
    `within` whose newest archive came after a jump (see _jumped): a window no wider than the
    time between runs (`within: 1d`, run daily, a few seconds later or earlier each day) keeps
    one archive by design, and taking each such run for a jump kept every archive, for ever.
    """
    if policy.get("last", 0) >= 2:
        return True
    if (
        "within" in policy
        and len(items) >= 2
        and _jumped(sorted(items, key=when), when, parse_duration(policy["within"]))
    ):
        return True
    for rule, period_of in PERIODS.items():
        if policy.get(rule, 0) >= 2 and len({period_of(when(item)) for item in items}) >= 2:
            return True
    return False


def _jumped(dated: list[A], when: Callable[[A], datetime], window: timedelta) -> bool:
    """Whether the newest of `dated` (oldest first, two or more) came further after the one
    before it than runs do: past the window by more than the interval before (at least the
    clock's tolerance).  A clock set ahead, most often; runs jittering by seconds around a
    window as wide as their interval are no jump."""
    gap = when(dated[-1]) - when(dated[-2])
    usual = when(dated[-2]) - when(dated[-3]) if len(dated) >= 3 else timedelta(0)
    return gap > window + max(usual, FUTURE_TOLERANCE)


def _days(gap: timedelta) -> str:
    return f"{gap.days} days" if gap.days >= 2 else f"{gap.total_seconds() / 3600:.1f} hours"


def newest(items: list[A], when: Callable[[A], datetime], now: datetime) -> A | None:
    """The newest of `items` that is not dated in the future: what a restore takes by default."""
    present = [item for item in items if when(item) <= now + FUTURE_TOLERANCE]
    return max(present, key=when) if present else None
