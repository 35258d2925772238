"""A clock that jumps cannot eat the history.

Once, one run with the clock two years ahead deleted all seven real archives under
`keep: {within: 14d}`, and every later archive's name sorted before the future one, so
`daily: 7` deleted the previous night's archive each night, with exit 0.  Now archives
dated in the future are reported, kept and never counted as the newest; new archives are
named by the clock; and a run that would delete every archive but the newest although the
policy asks for more deletes nothing and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, archive_file_name, fake_archive
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_core.stores import archives, retention
from backup_core.stores.archives import Archive

UTC = timezone.utc
TOLERANCE = retention.FUTURE_TOLERANCE
START = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)


# --- the pure functions, under random clock jumps both ways --------------------------------------


@dataclass(frozen=True)
class Made:
    """An archive in a simulated store: its name's time, and the real time it was made."""

    when: datetime
    real: datetime


def _when(item: Made) -> datetime:
    return item.when


# A run's clock: right most nights; sometimes seconds, hours or years off, ahead or behind.
jumps = st.one_of(
    st.just(timedelta(0)),
    st.just(timedelta(0)),
    st.sampled_from([timedelta(days=730), timedelta(days=-730), timedelta(hours=5), timedelta(hours=-5)]),
    st.timedeltas(min_value=timedelta(days=-3000), max_value=timedelta(days=3000)),
    st.timedeltas(min_value=-TOLERANCE * 2, max_value=TOLERANCE * 2),  # around the tolerance
)
policies = st.one_of(
    st.fixed_dictionaries({"within": st.sampled_from(["36h", "14d", "8w"])}),
    st.fixed_dictionaries({"daily": st.integers(1, 8)}),
    st.fixed_dictionaries({"last": st.integers(1, 5), "daily": st.integers(1, 8)}),
    st.fixed_dictionaries({"last": st.integers(1, 5)}),
    st.fixed_dictionaries({"hourly": st.integers(1, 30), "within": st.sampled_from(["1d", "2w"])}),
)


@settings(max_examples=400, deadline=None)
@given(
    policy=policies,
    runs=st.lists(
        st.tuples(jumps, st.timedeltas(min_value=timedelta(seconds=0), max_value=timedelta(days=3))),
        min_size=1,
        max_size=30,
    ),
)
def test_random_clock_jumps_never_delete_what_they_must_not(
    policy: dict[str, Any], runs: list[tuple[timedelta, timedelta]]
) -> None:
    store: list[Made] = []
    real = START
    for jump, pause in runs:
        real += pause
        now = real + jump  # what this run's clock says
        existing = sorted(Archive(m.when, Path(m.when.isoformat())) for m in store)
        when = archives.next_time(now, existing)
        # Named by this clock: never pushed after an archive from the future.
        assert now <= when <= now + TOLERANCE + timedelta(microseconds=1)
        assert all(when != m.when for m in store), "a name was reused"
        made = Made(when, real)
        store.append(made)

        plan = retention.plan(store, _when, policy, now)

        kept_ids = {id(m) for m in plan.kept}
        assert made in plan.kept and made not in plan.deleted, "the archive just made was deleted"
        assert {id(m) for m in plan.deleted}.isdisjoint(kept_ids)
        assert len(plan.kept) + len(plan.deleted) == len(store)
        for item in plan.future:
            assert item.when > now + TOLERANCE and id(item) in kept_ids
        assert all(m.when <= now + TOLERANCE for m in plan.deleted), "an archive from the future was deleted"
        present = [m for m in store if m.when <= now + TOLERANCE]
        # The history survives: when the policy asks for more than one archive and there
        # are older ones, a run never leaves only the newest.
        if len(present) >= 2 and retention._means_history(present, _when, policy):
            assert len([m for m in plan.kept if m.when <= now + TOLERANCE]) >= 2
        if plan.refused:
            assert plan.deleted == []
        store = list(plan.kept)


@given(now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_a_name_at_the_end_of_time_does_not_overflow(now: datetime) -> None:
    end = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert archives.next_time(now, [Archive(end, Path("x"))]) == now
    plan = retention.plan([end, now], lambda t: t, {"last": 1}, now)
    assert plan.future == [end] and plan.deleted == []


def test_within_the_tolerance_an_archive_still_counts_and_names_sort_after_it() -> None:
    ahead = START + TOLERANCE / 2  # another machine, a few minutes ahead
    assert archives.next_time(START, [Archive(ahead, Path("x"))]) == ahead + timedelta(microseconds=1)
    plan = retention.plan([START - timedelta(days=1), ahead], lambda t: t, {"last": 1}, START)
    assert plan.future == [] and plan.deleted == [START - timedelta(days=1)]


def test_a_clock_behind_by_exactly_the_tolerance_never_reuses_a_name(project: Project) -> None:
    # The newest archive sat exactly at the tolerance, so the next name was one microsecond past
    # it, and that name, one microsecond beyond the tolerance, was taken for a future archive's
    # and not looked at: "already exists", exit 1.
    project.file("site/a.txt")
    project.write_manifest("version: 1\ntargets:\n  - {name: site, path: site, keep: {last: 2}}\n")
    for moment in ("12:00:00", "11:57:00", "11:50:00"):
        project.file("site/a.txt", moment)
        ran = project.invoke("backup", env={"BACKUP_NOW": f"2026-12-07T{moment}Z"})
        assert ran.code == 0, ran.output
    assert len(project.archives()) == 3


def test_last_1_still_deletes_the_previous_archive_every_run() -> None:
    # Keeping one archive is a policy, not a clock fault: no refusal.
    items = [START - timedelta(days=400), START]
    plan = retention.plan(items, lambda t: t, {"last": 1}, START)
    assert plan.deleted == [items[0]] and plan.refused is None


def test_several_archives_in_one_day_under_daily_are_thinned_without_refusal() -> None:
    items = [START, START + timedelta(hours=1), START + timedelta(hours=2)]
    plan = retention.plan(items, lambda t: t, {"daily": 7}, START + timedelta(hours=2))
    assert plan.deleted == items[:2] and plan.refused is None


@pytest.mark.parametrize(
    ("within", "apart"), [("1d", timedelta(days=1, seconds=1)), ("7d", timedelta(days=7, minutes=3))]
)
def test_a_window_as_wide_as_the_time_between_runs_is_no_clock_jump(within: str, apart: timedelta) -> None:
    # within: 1d run daily (a few seconds later each day) kept every archive, with a "clock set
    # ahead?" warning on every run, until the disk filled.
    items = [START + apart * n for n in range(5)]
    plan = retention.plan(items, lambda t: t, {"within": within}, items[-1])
    assert (plan.kept, plan.deleted) == ([items[-1]], items[:-1])
    assert plan.refused is None and plan.spared is None


def test_runs_jittering_around_a_window_as_wide_as_their_interval_are_no_jump() -> None:
    # within: 1d, daily runs 0, 5, 1 and 3 s past the hour: judged by exact times, the window
    # "held" two archives on some days, and those runs kept everything with a clock warning.
    items = [START + timedelta(days=n, seconds=s) for n, s in enumerate([0, 5, 1, 3, 2])]
    for count in range(2, len(items) + 1):
        plan = retention.plan(items[:count], lambda t: t, {"within": "1d"}, items[count - 1])
        assert plan.refused is None and plan.spared is None, count
        newest = items[count - 1]
        assert plan.kept == [i for i in items[:count] if newest - i <= timedelta(days=1)]  # what within means


def test_a_jump_after_weekly_runs_that_drift_is_still_caught() -> None:
    items = [START + timedelta(weeks=n, seconds=5 * n) for n in range(10)]
    ahead = items[-1] + timedelta(days=400)
    plan = retention.plan([*items, ahead], lambda t: t, {"within": "7d"}, ahead)
    assert plan.deleted == [] and plan.refused is not None


# --- through invoke ------------------------------------------------------------------------------


def _manifest(project: Project, keep: str) -> None:
    project.file("site/a.txt", "the data\n")
    project.write_manifest(f"version: 1\ntargets:\n  - {{name: site, path: site, keep: {keep}}}\n")


def _run(project: Project, now: datetime, *flags: str) -> dict[str, Any]:
    ran = project.invoke(*flags, "--format", "json", env={"BACKUP_NOW": now.isoformat()})
    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output
    (result,) = ran.json()["targets"]
    return dict(result)


def test_daily_runs_under_within_1d_keep_the_newest_only_and_warn_of_no_clock(project: Project) -> None:
    _manifest(project, "{within: 1d}")
    results = [_run(project, START + timedelta(days=day, seconds=day), "backup") for day in range(3)]
    assert [len(r["deleted"]) for r in results] == [0, 1, 1]
    assert not any(r["warnings"] for r in results), results
    assert [p.name for p in project.archives()] == [Path(results[-1]["archive"]).name]


def test_a_clock_two_years_ahead_does_not_delete_a_week_of_archives(project: Project) -> None:
    _manifest(project, "{within: 14d}")
    week = [fake_archive(project.root / "backups", "site", START + timedelta(days=d)) for d in range(7)]

    ahead = _run(project, START + timedelta(days=7 + 730), "backup")

    assert ahead["deleted"] == []
    assert any("kept all 7 older archive(s)" in w and "clock" in w for w in ahead["warnings"]), ahead
    assert all(p.exists() for p in week)
    jumped = Path(ahead["archive"])

    # The clock is put right: the future archive is reported, kept and never the newest; the new
    # archive is named by the clock, and the week's archives are still there.
    back = _run(project, START + timedelta(days=8), "backup")
    assert Path(back["archive"]).name == archive_file_name("site", START + timedelta(days=8))
    assert back["future"] == [jumped.name] and back["deleted"] == []
    assert any("dated in the future" in w and jumped.name in w for w in back["warnings"])
    assert all(p.exists() for p in week) and jumped.exists()


@pytest.mark.slow
def test_a_future_archive_does_not_make_daily_delete_last_nights_archive(project: Project) -> None:
    _manifest(project, "{daily: 7}")
    future = fake_archive(project.root / "backups", "site", START + timedelta(days=730))
    made = []
    for night in range(9):
        result = _run(project, START + timedelta(days=night), "backup")
        made.append(Path(result["archive"]))
        assert future.name in result["future"]
        # Every night's archive stays until seven newer nights have one: last night's survives.
        assert [p.exists() for p in made] == [index >= night - 6 for index in range(len(made))]
    assert future.exists()
    assert [p.name for p in project.archives()][-8:-1] == [p.name for p in made[-7:]]


def test_a_future_dated_archive_name_is_reported_not_a_crash(project: Project) -> None:
    _manifest(project, "{last: 2}")
    end = fake_archive(project.root / "backups", "site", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    result = _run(project, START, "backup")
    assert Path(result["archive"]).name == archive_file_name("site", START)
    assert result["future"] == [end.name]
    for command in ("prune", "verify"):
        ran = project.invoke(command, "--format", "json", env={"BACKUP_NOW": START.isoformat()})
        assert ran.code == 0 and "OverflowError" not in ran.output and "unexpected" not in ran.output, ran.output
    checked = _run(project, START + timedelta(days=1), "prune", "--check")
    assert end.name not in checked["deleted"] and end.exists()


def test_prune_never_deletes_an_archive_from_the_future(project: Project) -> None:
    _manifest(project, "{last: 1}")
    real = [fake_archive(project.root / "backups", "site", START + timedelta(days=d)) for d in range(3)]
    future = fake_archive(project.root / "backups", "site", START + timedelta(days=400))
    result = _run(project, START + timedelta(days=3), "prune")
    assert sorted(result["deleted"]) == sorted(p.name for p in real[:2])
    assert future.exists() and real[2].exists() and result["future"] == [future.name]


def test_restore_takes_the_newest_archive_that_is_not_from_the_future(project: Project) -> None:
    _manifest(project, "{last: 5}")
    project.file("site/page.html", "tonight\n")
    future = fake_archive(project.root / "backups", "site", START + timedelta(days=730))
    made = Path(_run(project, START, "backup")["archive"])
    to = project.root / "restored"
    ran = project.invoke("restore", "site", "--to", str(to), env={"BACKUP_NOW": START.isoformat()})
    assert ran.code == 0, ran.output
    assert made.name in ran.stdout and future.name not in ran.stdout
    assert (to / "page.html").read_text() == "tonight\n"
    # Named, the future archive is still there to restore.
    again = project.invoke("restore", "site", "--to", str(project.root / "again"), "--archive", future.name)
    assert again.code == 0, again.output


@pytest.mark.parametrize(
    "value", ["garbage", "9999-12-31T23:59:59Z", "0001-01-01T01:00:00+05:00", "0999-06-01T00:00:00Z"]
)
def test_a_backup_now_that_names_no_usable_time_is_a_usage_error(project: Project, value: str) -> None:
    # Each target failed with "unexpected error: ValueError: ...", exit 1.
    _manifest(project, "{last: 2}")
    ran = project.invoke("backup", "--format", "json", env={"BACKUP_NOW": value})
    assert ran.code == 2, ran.output
    assert ran.json()["errors"] == [
        f"BACKUP_NOW={value}: not a time this tool can name archives by; give an ISO 8601 time "
        "in the years 1000 to 9998 (2026-03-01T12:00:00Z) or unset it"
    ]
    assert "unexpected error" not in ran.output and project.archives() == []
