"""Retention: `keep:` rules, checked against a small independent reference, and `invoke prune`.

The reference below is written from the rules as documented (README, schema), not
from backup_core.stores.retention: every period rule groups the archives by period, takes
the newest of each group, and keeps the groups' newest N; `last` keeps the N newest;
`within` keeps everything at most that long before the newest; the newest is always kept.
"""

from __future__ import annotations

import os
import random
import zipfile
from collections.abc import Callable, Hashable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import NOT_A_FILE, Project, archive_file_name, fake_archive, flow, place_not_a_file
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_core import manifest, runner
from backup_core.results import CHANGED
from backup_core.stores import retention

UTC = timezone.utc
COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


# --- the reference ----------------------------------------------------------------------------


def _monday(t: datetime) -> date:
    """The Monday that starts t's ISO week: one key per ISO week, found without isocalendar()."""
    return t.date() - timedelta(days=t.weekday())


REFERENCE_PERIODS: dict[str, Callable[[datetime], Hashable]] = {
    "hourly": lambda t: t.replace(minute=0, second=0, microsecond=0),
    "daily": lambda t: t.date(),
    "weekly": _monday,
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}
REFERENCE_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                   "m": timedelta(days=31), "y": timedelta(days=365)}  # fmt: skip


def reference_keep(times: list[datetime], policy: dict[str, Any]) -> set[datetime]:
    """The times a policy keeps, computed the obvious (slow) way."""
    if not times:
        return set()
    newest_first = sorted(times, reverse=True)
    kept = {newest_first[0]}
    kept.update(newest_first[: policy.get("last", 0)])
    for rule, key in REFERENCE_PERIODS.items():
        groups: dict[Any, list[datetime]] = {}
        for t in times:
            groups.setdefault(key(t), []).append(t)
        newest_periods = sorted(groups, reverse=True)[: policy.get(rule, 0)]
        kept.update(max(groups[period]) for period in newest_periods)
    if "within" in policy:
        text = policy["within"]
        horizon = newest_first[0] - int(text[:-1]) * REFERENCE_UNITS[text[-1]]
        kept.update(t for t in times if t >= horizon)
    return kept


# --- property: keep() against the reference ---------------------------------------------------

BASE = datetime(2023, 12, 25, 0, 0, tzinfo=UTC)  # a week before an ISO year boundary


@st.composite
def archive_times(draw: st.DrawFn) -> list[datetime]:
    """Distinct UTC times, in random order, over a span from an hour and a half to ~2.5 years."""
    span_minutes = draw(st.sampled_from([90, 60 * 24 * 3, 60 * 24 * 60, 60 * 24 * 900]))
    offsets = draw(st.lists(st.integers(0, span_minutes), max_size=40, unique=True))
    seconds = draw(st.lists(st.integers(0, 59), min_size=len(offsets), max_size=len(offsets)))
    return [BASE + timedelta(minutes=m, seconds=s) for m, s in zip(offsets, seconds, strict=True)]


durations = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 60), st.sampled_from("hdwmy"))
policies = st.fixed_dictionaries(
    {}, optional={**{rule: st.integers(1, 8) for rule in COUNT_RULES}, "within": durations}
)


@settings(max_examples=400, deadline=None)
@given(times=archive_times(), policy=policies)
def test_keep_matches_the_reference(times: list[datetime], policy: dict[str, Any]) -> None:
    kept = retention.keep(times, lambda t: t, policy)
    assert kept <= set(range(len(times)))
    assert {times[i] for i in kept} == reference_keep(times, policy)


@settings(max_examples=200, deadline=None)
@given(times=archive_times(), policy=policies)
def test_split_partitions_in_the_order_given(times: list[datetime], policy: dict[str, Any]) -> None:
    kept, deleted = retention.split(times, lambda t: t, policy)
    expected = reference_keep(times, policy)
    assert kept == [t for t in times if t in expected]
    assert deleted == [t for t in times if t not in expected]


# --- examples a reader can check by hand ------------------------------------------------------


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept_times(times: list[datetime], policy: dict[str, Any]) -> list[datetime]:
    return sorted(times[i] for i in retention.keep(times, lambda x: x, policy))


def test_weekly_uses_iso_weeks_across_a_year_boundary() -> None:
    # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 2020-W53; 2021-01-04 starts 2021-W01.
    times = [t("2020-12-28T10:00"), t("2020-12-31T10:00"), t("2021-01-03T10:00"), t("2021-01-04T10:00")]
    assert kept_times(times, {"weekly": 2}) == [t("2021-01-03T10:00"), t("2021-01-04T10:00")]


def test_daily_keeps_the_newest_of_each_recent_day_that_has_one() -> None:
    times = [t("2026-03-01T01:00"), t("2026-03-01T23:00"), t("2026-03-03T05:00"), t("2026-03-03T06:00"),
             t("2026-03-07T12:00")]  # fmt: skip
    # Days without an archive (03-02, 03-04..06) do not count against the 3.
    assert kept_times(times, {"daily": 3}) == [t("2026-03-01T23:00"), t("2026-03-03T06:00"), t("2026-03-07T12:00")]


def test_within_includes_its_boundary_and_months_are_31_days() -> None:
    newest = t("2026-03-31T12:00")
    times = [newest - timedelta(hours=36), newest - timedelta(hours=36, seconds=1), newest]
    assert kept_times(times, {"within": "36h"}) == [newest - timedelta(hours=36), newest]
    times = [newest - timedelta(days=31), newest - timedelta(days=32), newest]
    assert kept_times(times, {"within": "1m"}) == [newest - timedelta(days=31), newest]


def test_rules_are_a_union_and_the_newest_is_always_kept() -> None:
    times = [t("2025-06-01T00:00"), t("2026-01-15T00:00"), t("2026-03-01T00:00"), t("2026-03-01T01:00")]
    assert kept_times(times, {"yearly": 2}) == [t("2025-06-01T00:00"), t("2026-03-01T01:00")]
    assert kept_times(times, {"yearly": 2, "monthly": 2}) == [
        t("2025-06-01T00:00"), t("2026-01-15T00:00"), t("2026-03-01T01:00"),
    ]  # fmt: skip
    # An empty policy (not allowed in a manifest) still keeps the newest.
    assert kept_times(times, {}) == [t("2026-03-01T01:00")]


# --- manifest errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep",
    [{}, {"last": 0}, {"daily": 0}, {"weekly": -1}, {"within": "0d"}, {"within": "14"}, {"hourly": 0, "last": 3}],
    ids=["empty", "last-0", "daily-0", "weekly-negative", "within-0d", "within-no-unit", "one-rule-zero"],
)
def test_a_rule_that_would_keep_nothing_is_a_manifest_error(project: Project, keep: dict[str, Any]) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: site
            path: src
            keep: {flow(keep)}
        """
    )
    before = project.snapshot_tree()
    ran = project.invoke("backup")
    assert ran.code == 2, ran.output
    assert "targets[0].keep" in ran.output
    assert "nothing was done" in ran.output
    assert project.snapshot_tree() == before


# --- invoke prune ----------------------------------------------------------------------------

PRUNE_TIMES = [
    t("2026-01-02T03:00"), t("2026-01-20T10:00"), t("2026-02-01T00:00"), t("2026-02-09T08:00"),
    t("2026-02-10T08:00"), t("2026-02-10T20:00"), t("2026-02-15T23:59"), t("2026-02-16T00:00"),
    t("2026-02-20T06:00"), t("2026-02-21T06:00"), t("2026-02-21T07:00"), t("2026-02-22T06:00"),
]  # fmt: skip
PRUNE_POLICY = {"last": 2, "daily": 3, "weekly": 2, "monthly": 2}


def test_prune_applies_the_policy_without_a_new_archive(project: Project) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: site
            path: src
            keep: {flow(PRUNE_POLICY)}
          - name: site2
            path: src
            keep: {{last: 1}}
        """
    )
    backups = project.root / "backups"
    for when in PRUNE_TIMES:
        fake_archive(backups, "site", when)
    # Never touched: another target's archives, a person's own zip, the old script's files.
    foreign = [fake_archive(backups, "site2", PRUNE_TIMES[0]), project.file("backups/site-mine.zip"),
               project.file("backups/backup-20260101.zip")]  # fmt: skip
    expected = reference_keep(PRUNE_TIMES, PRUNE_POLICY)
    assert 0 < len(expected) < len(PRUNE_TIMES)  # the example prunes something and keeps something

    ran = project.invoke("prune", "--only", "site")
    assert ran.code == 0, ran.output
    remaining = {p.name for p in project.archives(target="site")}
    assert remaining == {archive_file_name("site", w) for w in expected} | {"site-mine.zip"}
    doomed = sorted(archive_file_name("site", w) for w in PRUNE_TIMES if w not in expected)
    assert f"changed: [site] => deleted {', '.join(doomed)}" in ran.stdout.splitlines()
    assert all(p.exists() for p in foreign)

    again = project.invoke("prune", "--only", "site")
    assert again.code == 0, again.output
    assert "ok: [site] => " in again.stdout
    assert {p.name for p in project.archives(target="site")} == remaining


@pytest.mark.parametrize("newest", [b"", b"PK\x03\x04 cut short"], ids=["empty", "cut-short"])
def test_prune_deletes_nothing_when_the_newest_archive_kept_is_not_a_whole_zip(project: Project, newest: bytes) -> None:
    # Retention goes by names: an empty file named as the newest archive made prune delete the
    # only good one (keep last 1) and keep the empty file.  Such a file now neither counts
    # toward keep nor is deleted, and a warning names it.
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    backups = project.root / "backups"
    good = fake_archive(backups, "site", PRUNE_TIMES[0])
    cut = backups / archive_file_name("site", PRUNE_TIMES[1])
    cut.write_bytes(newest)

    ran = project.invoke("prune")

    assert ran.code == 0, ran.output
    assert good.exists() and cut.exists()
    assert "ok: [site] => 2 archive(s), nothing to prune" in ran.stdout
    assert (
        f"{cut.name} is not a whole archive" in ran.stdout and "not counted toward keep and not deleted" in ran.stdout
    )


@pytest.mark.parametrize("flags", [[], ["--force"], ["--check"]], ids=["prune", "force", "check"])
def test_prune_deletes_nothing_when_the_newest_kept_is_damaged_inside(project: Project, flags: list[str]) -> None:
    # Its end was whole, so it was trusted by its end alone: prune deleted both older archives
    # and left only the damaged one, which restore then refused.
    project.file("src/data.bin", random.Random(3).randbytes(200_000))
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 3}}]\n")
    for day, when in enumerate(PRUNE_TIMES[:3]):
        with (project.root / "src" / "data.bin").open("ab") as grown:
            grown.write(bytes([day]))
        assert project.invoke("backup", env={"BACKUP_NOW": when.isoformat()}).code == 0
    *older, newest = project.archives()
    damaged = bytearray(newest.read_bytes())
    damaged[100_000] ^= 0xFF  # in the member's data, far from the end the tail check reads
    newest.write_bytes(bytes(damaged))
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    before = project.snapshot_tree()

    ran = project.invoke("prune", *flags, "--format", "json")

    assert ran.code == 1, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "failed" and result["deleted"] == []
    assert result["error"].startswith(
        f"nothing was deleted: {newest.name}, the newest archive that would be kept, is no ground for it: "
        "data.bin: CRC mismatch"
    ), result["error"]
    assert project.snapshot_tree() == before and len(older) == 2


def _prune_failing_at(
    project: Project, monkeypatch: pytest.MonkeyPatch, count: int, at: int, failure: BaseException
) -> tuple[list[Path], Any]:
    """Prune `count` archives down to one in-process, deleting raising `failure` at the archive
    `at` exactly (a signal, a refusal): the moment a real run could only be hoped to hit."""
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    made = [fake_archive(project.root / "backups", "site", when) for when in PRUNE_TIMES[:count]]
    [target] = manifest.load(project.manifest).targets
    deleting = runner._delete_archive

    def failing(path: Any, result: Any) -> bool:
        if path == made[at]:
            raise failure
        return deleting(path, result)

    monkeypatch.setattr(runner, "_delete_archive", failing)
    try:
        return made, runner.prune_target(target, runner.Options())
    finally:
        runner._stopping.clear()  # an interrupt sets it for the rest of the run


def test_a_prune_interrupted_while_deleting_says_what_it_deleted(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run replaced the target's result with one saying nothing was deleted (JSON: deleted
    # []), while 2,499 archives were gone.  The signal lands on the third deletion, exactly.
    made, result = _prune_failing_at(project, monkeypatch, 5, 2, KeyboardInterrupt())

    assert result.status == "failed"
    assert result.deleted == [made[0].name, made[1].name]
    assert result.error == "interrupted; 2 archive(s) deleted before it"
    assert [p.name for p in project.archives()] == [p.name for p in made[2:]]


def test_a_prune_that_fails_part_way_says_what_it_deleted_in_its_line(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The line named only the archive it could not delete (immutable, say); the JSON alone said
    # which had gone before it.
    from backup_core import report

    second = project.root / "backups" / archive_file_name("site", PRUNE_TIMES[1])
    refused = PermissionError(13, "Operation not permitted", str(second))
    made, result = _prune_failing_at(project, monkeypatch, 3, 1, refused)

    assert result.status == "failed" and result.deleted == [made[0].name]
    line = report.describe(result, "prune", check=False)
    assert line.startswith(f"permission denied on {made[1]}") and line.endswith(f"(deleted before it: {made[0].name})")


@pytest.mark.parametrize(
    ("kinds", "deleted"),
    [
        # Two broken files: judged only among those kept at first, the older moved into the
        # kept ones when the plan was made again, and the oldest good archive was deleted.
        ("good cut cut good", []),
        # A hand-placed file old enough to be due was deleted, without a word.
        ("good mine good good", [0]),
    ],
)
def test_prune_judges_every_archive_so_no_broken_file_counts_or_goes(
    project: Project, kinds: str, deleted: list[int]
) -> None:
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 2}}]\n")
    backups = project.root / "backups"
    files = []
    for when, kind in zip(PRUNE_TIMES, kinds.split(), strict=False):
        if kind == "good":
            files.append(fake_archive(backups, "site", when))
        else:
            files.append(backups / archive_file_name("site", when))
            files[-1].write_bytes(b"PK\x03\x04 cut short" if kind == "cut" else b"my notes\n")

    ran = project.invoke("prune")

    assert ran.code == 0, ran.output
    assert [f.exists() for f in files] == [i not in deleted for i in range(len(files))], ran.output
    broken = [f.name for f, kind in zip(files, kinds.split(), strict=True) if kind != "good"]
    # Each file's own reason: "X and 1 more is not a whole archive (it is 50 bytes ...)" gave one size for two.
    assert f"{broken[0]} is not a whole archive (" in ran.stdout
    assert (", nor is 1 more: not counted" in ran.stdout) is (len(broken) > 1), ran.stdout


def test_rotation_does_not_count_a_cut_short_archive_toward_keep(project: Project) -> None:
    # keep {last: 2} with the newest archive truncated: the backup deleted the older good one,
    # without a word, and kept the truncated one and its own.
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 2}}]\n")
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-01T00:00:00Z"}).code == 0
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-02T00:00:00Z"}).code == 0
    good, newest = project.archives()
    with newest.open("r+b") as file:
        file.truncate(newest.stat().st_size // 2)

    ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-03T00:00:00Z"})

    assert ran.code == 0, ran.output
    *kept, made = project.archives()
    assert kept == [good, newest] and made.name.startswith("site-20260103T")
    with zipfile.ZipFile(good) as whole:
        assert whole.testzip() is None
    assert f"{newest.name} is not a whole archive" in ran.stdout, ran.output


@pytest.mark.parametrize("kind", list(NOT_A_FILE))
def test_what_is_no_file_under_an_archives_name_is_neither_counted_nor_deleted_nor_waited_on(
    project: Project, kind: str
) -> None:
    # A dangling link or a folder under the newest archive's name counted toward keep: with keep
    # {last: 2} the backup deleted both good archives, without a word.  A named pipe there made
    # backup, prune and verify wait forever for a writer, holding the target's lock.
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 2}}]\n")
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-01T00:00:00Z"}).code == 0
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-02T00:00:00Z"}).code == 0
    older, newer = project.archives()
    odd = newer.with_name(archive_file_name("site", datetime(2026, 1, 2, 12, tzinfo=timezone.utc)))
    place_not_a_file(odd, kind)
    said = f"{odd.name} is not a whole archive (it is {NOT_A_FILE[kind]}, not a file)"

    ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-03T00:00:00Z"}, timeout=120)

    assert ran.code == 0, ran.output
    *kept, made = project.archives()
    assert kept == [newer, odd] and made.name.startswith("site-20260103T"), ran.output
    assert not older.exists() and os.path.lexists(odd)
    assert said in ran.stdout and "not counted toward keep and not deleted" in ran.stdout, ran.output
    pruned = project.invoke("prune", timeout=120)
    assert pruned.code == 0, pruned.output
    assert said in pruned.stdout and newer.exists() and os.path.lexists(odd), pruned.output
    verified = project.invoke("verify", timeout=60)
    assert verified.code == 1, verified.output
    assert f"{odd.name}: it is {NOT_A_FILE[kind]}, not a file" in verified.output, verified.output


def test_durations_past_the_calendar_mean_forever_and_break_nothing(project: Project) -> None:
    # validate accepted them; backup then failed with OverflowError after writing its archive,
    # and status printed a traceback.
    project.file("src/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: src, keep: {within: 2100y}, max_age: 99999999999999d}
          - {name: logs, path: src, keep: {within: 99999999999y}}
        """
    )
    for command in ("validate", "backup", "backup", "prune", "status", "prune --check"):
        ran = project.invoke(*command.split())
        assert ran.code == 0 and "Traceback" not in ran.output, (command, ran.output)
    assert len(project.archives(target="site")) == len(project.archives(target="logs")) == 2


def test_an_archive_comment_holding_the_end_records_signature_does_not_stop_prune(project: Project) -> None:
    # The end of a zip is found by the record whose comment runs to the end of the file: a
    # comment may hold those bytes too (it names files).
    import zipfile

    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    backups = project.root / "backups"
    old = fake_archive(backups, "site", PRUNE_TIMES[0])
    newest = backups / archive_file_name("site", PRUNE_TIMES[1])
    with zipfile.ZipFile(newest, "w") as archive:
        archive.writestr("a.txt", "data\n")
        archive.comment = b"notes: PK\x05\x06" + bytes(18) + b" and more"

    ran = project.invoke("prune")

    assert ran.code == 0, ran.output
    assert not old.exists() and newest.exists()


# --- a month of backups -----------------------------------------------------------------------

MONTH_POLICY = {"last": 3, "daily": 7, "weekly": 4}


def test_a_simulated_month_keeps_exactly_what_the_policy_says(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = project.file("src/data.txt", "start\n")
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: db
            path: src
            keep: {flow(MONTH_POLICY)}
        """
    )
    [target] = manifest.load(project.manifest).targets
    gaps = [3, 20, 9, 42, 11, 27]  # hours: several runs on some days, none on others
    moment = datetime(2026, 3, 1, 0, 17, tzinfo=UTC)
    model: set[datetime] = set()
    runs = 40
    for run in range(runs):
        source.write_text(f"run {run}\n", encoding="utf-8")
        now = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        if run % 5 == 4:  # every fifth run through the real command
            ran = project.invoke("backup", env={"BACKUP_NOW": now})
            assert ran.code == 0, ran.output
            assert "changed: [db] => " in ran.stdout
        else:
            monkeypatch.setenv("BACKUP_NOW", now)
            result = runner.backup_target(target, runner.Options())
            assert result.status == CHANGED, result.error
        model = reference_keep([*model, moment], MONTH_POLICY)
        on_disk = [p.name for p in project.archives(target="db")]
        assert on_disk == sorted(archive_file_name("db", w) for w in model), f"after run {run} at {now}"
        moment += timedelta(hours=gaps[run % len(gaps)])
    assert moment - datetime(2026, 3, 1, tzinfo=UTC) > timedelta(days=29)  # the runs did span a month
    # The end state, for a reader: the last 3, plus the newest of the 7 most recent days and 4 weeks.
    assert len(model) < runs


@pytest.mark.parametrize("forced", [False, True])
def test_prune_keeps_the_archives_that_hold_files_when_the_newest_holds_none(project: Project, forced: bool) -> None:
    # An empty zip under the newest archive's name (put there by hand, or made of a folder
    # emptied with --force) was trusted as the last good one: keep {last: 1} deleted every
    # archive that held files, exit 0; verify and restore then said "ok (0 files)".
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    made = [fake_archive(project.root / "backups", "site", when) for when in PRUNE_TIMES[:3]]
    empty = project.root / "backups" / archive_file_name("site", PRUNE_TIMES[3])
    zipfile.ZipFile(empty, "w").close()

    ran = project.invoke("prune", *(["--force"] if forced else []))

    if forced:  # the operator's word that the source is meant to be empty now
        assert ran.code == 0, ran.output
        assert project.archives() == [empty]
        return
    assert ran.code == 1, ran.output
    assert (
        f"nothing was deleted: {empty.name}, the newest archive that would be kept, is no ground for it: it holds "
        f"no file, while {made[-1].name}, which it would delete, holds 1 file; older archives may be the last good "
        "ones" in ran.stdout
    ), ran.output
    assert "to prune anyway, run invoke prune --force" in ran.stdout, ran.output
    assert project.archives() == [*made, empty]


def test_prune_takes_jobs_as_backup_does(project: Project) -> None:
    # The README said --jobs works for prune too; it was "No idea what '-j' is!".
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    made = [fake_archive(project.root / "backups", "site", when) for when in PRUNE_TIMES[:3]]
    ran = project.invoke("prune", "-j", "2")
    assert ran.code == 0, ran.output
    assert project.archives() == made[-1:]
    refused = project.invoke("prune", "--jobs", "0")
    assert refused.code == 2 and "--jobs 0: give a number of targets to run at once, 1 to 64" in refused.stderr


def test_a_prune_interrupted_while_deleting_remote_copies_says_how_many_went(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "interrupted; nothing was deleted", exit 130, while 78 copies were gone from the bucket.
    # The signal lands on the remote's third deletion, exactly.
    from backup_core.stores import local

    project.file("src/a.txt")
    (project.root / "nas").mkdir()
    project.write_manifest(
        "version: 1\nremotes: {nas: {type: folder, path: nas, keep: {last: 1}}}\n"
        "targets: [{name: site, path: src, keep: {last: 10}, offsite: [nas]}]\n"
    )
    for day in range(1, 7):
        project.file("src/a.txt", f"day {day}\n")
        assert project.invoke("backup", env={"BACKUP_NOW": f"2026-01-0{day}T00:00:00Z"}).code == 0
    # The remote holds all six again under a looser keep; put back to one, five are due there.
    project.write_manifest(project.manifest.read_text(encoding="utf-8").replace("keep: {last: 1}}", "keep: {last: 9}}"))
    push = project.invoke("push")
    assert push.code == 0, push.output
    assert len(list((project.root / "nas" / "site").glob("*.zip"))) == 6
    project.write_manifest(project.manifest.read_text(encoding="utf-8").replace("keep: {last: 9}}", "keep: {last: 1}}"))
    [target] = manifest.load(project.manifest).targets
    deleting, calls = local.FolderStore.delete, []

    def interrupted(store: Any, name: str, stored: Any) -> bool:
        calls.append(stored.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return deleting(store, name, stored)

    monkeypatch.setattr(local.FolderStore, "delete", interrupted)
    try:
        result = runner.prune_target(target, runner.Options())
    finally:
        runner._stopping.clear()
    assert result.status == "failed"
    assert result.error == "interrupted; remote nas: 2 cop(ies) deleted"
    [copy] = result.offsite
    assert copy.deleted == calls[:2]
    assert len(list((project.root / "nas" / "site").glob("*.zip"))) == 4
