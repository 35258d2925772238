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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

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
    """'36h', '14d', '8w', '6m', '1y' as a timedelta (the schema has checked the form)."""
    match = re.fullmatch(r"([1-9][0-9]*)([hdwmy])", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


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
        horizon = when(dated[0][1]) - parse_duration(policy["within"])
        kept.update(index for index, item in dated if when(item) >= horizon)
    return kept


def split(items: list[A], when: Callable[[A], datetime], policy: dict[str, Any]) -> tuple[list[A], list[A]]:
    """(kept, deleted), each in the order given."""
    kept = keep(items, when, policy)
    return [a for i, a in enumerate(items) if i in kept], [a for i, a in enumerate(items) if i not in kept]
