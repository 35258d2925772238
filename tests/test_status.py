"""`invoke status`: every target's newest archive in every store, judged against its max_age.

Runs are placed in time with BACKUP_NOW, so "27 hours later" needs no waiting.
"""

from __future__ import annotations

import shutil
import socket
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import Project, archive_file_name, fake_archive, run_invoke

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def at(moment: datetime) -> dict[str, str]:
    return {"BACKUP_NOW": moment.isoformat().replace("+00:00", "Z")}


def manifest(project: Project, extra: str = "", site: str = "max_age: 26h", remotes: str = "") -> None:
    project.file("site/index.html", "<h1>hello</h1>\n")
    project.file("notes.txt", "remember\n")
    project.write_manifest(
        f"""
        version: 1
        {remotes}
        {extra}
        targets:
          - name: site
            path: site
            {site}
          - name: notes
            path: notes.txt
        """
    )


def line_of(output: str, target: str) -> str:
    lines = [line for line in output.splitlines() if f" [{target}] => " in line]
    assert len(lines) == 1, output
    return lines[0]


def test_a_target_never_backed_up_fails_with_max_age_and_passes_without(project: Project) -> None:
    manifest(project)
    ran = project.invoke("status", env=at(T0))
    assert ran.code == 1, ran.output
    # Its destination is not made yet: said, as it would be of one moved away (see below).
    assert line_of(ran.stdout, "site") == (
        f"failed: [site] => no archive at all ({project.root / 'backups'} does not exist); max_age is 26h "
        "(local 0 archives 0 B)"
    )
    assert line_of(ran.stdout, "notes") == (
        f"ok: [notes] => no archive yet (no max_age, so not judged), and {project.root / 'backups'} does not "
        "exist (local 0 archives 0 B)"
    )
    # The first line names what failed: Nagios and Icinga show only that one.
    assert ran.stdout.splitlines()[0].startswith("STATUS [backups.yml: 2 targets; 1 failed: site] ***")
    assert "site : ok=0  changed=0  failed=1  skipped=0" in ran.stdout.replace("site  :", "site :")
    assert "Traceback" not in ran.output


def test_fresh_until_max_age_then_failed_with_one_sentence(project: Project) -> None:
    manifest(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    [archive] = project.archives(target="site")

    fresh = project.invoke("status", env=at(T0 + timedelta(hours=25)))
    assert fresh.code == 0, fresh.output
    size = archive.stat().st_size
    assert line_of(fresh.stdout, "site") == (
        f"ok: [site] => {archive.name}, 25h 0min old, max_age 26h (local 1 archive {size} B)"
    )
    assert fresh.stdout.splitlines()[0].startswith("STATUS [backups.yml: 2 targets; all ok] ")

    stale = project.invoke("status", env=at(T0 + timedelta(hours=27, minutes=5)))
    assert stale.code == 1, stale.output
    assert line_of(stale.stdout, "site") == (
        f"failed: [site] => newest archive is 27h 5min old; max_age is 26h (local 1 archive {size} B)"
    )
    # A target without max_age is shown, not judged.
    assert line_of(stale.stdout, "notes").startswith("ok: [notes] => notes-20260301T120000.000000Z.zip, 27h 5min old (")


def remote_project(project: Project) -> None:
    (project.root / "nas").mkdir()  # a folder remote must exist: a missing one is an unmounted disk
    project.file("site/index.html", "<h1>hello</h1>\n")
    project.file("notes.txt", "remember\n")
    project.write_manifest(
        """
        version: 1
        remotes: {nas: {type: folder, path: nas}}
        targets:
          - {name: site, path: site, max_age: 26h, offsite: [nas]}
          - {name: notes, path: notes.txt}
        """
    )


@pytest.mark.slow
def test_status_writes_locks_and_deletes_nothing(project: Project) -> None:
    remote_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    before = project.snapshot_tree()
    for when in (T0 + timedelta(hours=1), T0 + timedelta(days=3)):
        assert project.invoke("status", env=at(when)).code == (0 if when < T0 + timedelta(hours=26) else 1)
        project.invoke("status", "--format", "json", env=at(when))
    assert project.snapshot_tree() == before


@pytest.mark.slow
def test_every_store_is_listed_and_a_stale_remote_fails_the_target(project: Project) -> None:
    remote_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    # Later backups stop reaching the remote (here: made by a manifest without offsite:).
    local_only = project.root / "local-only.yml"
    local_only.write_text(
        project.manifest.read_text(encoding="utf-8").replace(", offsite: [nas]", ""), encoding="utf-8"
    )
    made = run_invoke("backup", "--manifest", str(local_only), "--only", "site", env=at(T0 + timedelta(hours=30)))
    assert made.code == 0, made.output
    local = project.archives(target="site")
    remote = sorted((project.root / "nas" / "site").glob("site-*.zip"))
    assert (len(local), len(remote)) == (2, 1)

    ran = project.invoke("status", "--only", "site", env=at(T0 + timedelta(hours=31)))
    assert ran.code == 1, ran.output
    local_bytes = sum(p.stat().st_size for p in local)
    assert line_of(ran.stdout, "site") == (
        f"failed: [site] => newest archive is 31h 0min old on remote nas; max_age is 26h "
        f"(local 2 archives {local_bytes} B, nas 1 archive {remote[0].stat().st_size} B)"
    )

    document = project.invoke("status", "--only", "site", "--format", "json", env=at(T0 + timedelta(hours=31)))
    assert document.code == 1
    [site] = document.json()["targets"]
    assert site["newest"] == local[-1].name
    assert site["age_seconds"] == 3600
    assert site["max_age_seconds"] == 26 * 3600
    assert [(s["store"], s["archives"], s["bytes"], s["newest"], s["age_seconds"]) for s in site["stores"]] == [
        ("local", 2, local_bytes, local[-1].name, 3600),
        ("nas", 1, remote[0].stat().st_size, remote[0].name, 31 * 3600),
    ]
    assert document.json()["exit_code"] == 1
    # The keys every command's document has, as backup's, prune's and verify's do.
    assert (document.json()["check"], document.json()["interrupted"]) == (False, False)
    assert document.stderr.startswith("STATUS [")  # the text goes to stderr with --format json


def test_a_store_that_cannot_be_listed_fails_with_its_reason_not_a_traceback(project: Project) -> None:
    remote_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    shutil.rmtree(project.root / "nas")  # the NAS is not mounted
    ran = project.invoke("status", env=at(T0 + timedelta(hours=1)))
    assert ran.code == 1, ran.output
    [archive] = project.archives(target="site")
    assert line_of(ran.stdout, "site") == (
        f"failed: [site] => remote nas: {project.root / 'nas'} is not a folder (is the disk mounted?) "
        f"(local 1 archive {archive.stat().st_size} B, nas not listed)"
    )
    assert "Traceback" not in ran.output
    [site, _] = project.invoke("status", "--format", "json", env=at(T0 + timedelta(hours=1))).json()["targets"]
    assert [(s["store"], s["listed"]) for s in site["stores"]] == [("local", True), ("nas", False)]


def test_a_remote_without_copies_fails_a_target_with_max_age(project: Project) -> None:
    remote_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    for copy in (project.root / "nas" / "site").iterdir():
        copy.unlink()
    ran = project.invoke("status", "--only", "site", env=at(T0 + timedelta(hours=1)))
    assert ran.code == 1
    assert line_of(ran.stdout, "site").startswith("failed: [site] => no archive on remote nas; max_age is 26h (")


def test_an_archive_dated_ahead_of_the_clock_cannot_pass_as_fresh(project: Project) -> None:
    manifest(project)
    # Made while the clock was a year ahead: every later archive is named after it, so its
    # age would stay negative, and look fresh, however long backups had stopped.
    fake_archive(project.root / "backups", "site", T0 + timedelta(days=365))
    ran = project.invoke("status", "--only", "site", env=at(T0))
    assert ran.code == 1
    assert line_of(ran.stdout, "site").startswith(
        "failed: [site] => every archive is dated more than 10 minutes ahead of this machine's clock (the newest "
        "365d 0h ahead), so the last backup's age cannot be judged; check the clock; max_age is 26h ("
    )
    # Not counted as the newest, as a backup does not count it: a backup made now is judged by its
    # own age.  It failed status for as long as the archive dated ahead stayed there.
    assert project.invoke("backup", "--only", "site", env=at(T0)).code == 0
    fresh = project.invoke("status", "--only", "site", "--format", "json", env=at(T0 + timedelta(hours=1)))
    assert fresh.code == 0, fresh.output
    [local] = fresh.json()["targets"][0]["stores"]
    assert (local["age_seconds"], local["ahead"]) == (3600, archive_file_name("site", T0 + timedelta(days=365)))
    late = project.invoke("status", "--only", "site", env=at(T0 + timedelta(hours=27)))
    assert late.code == 1 and "newest archive is 27h 0min old" in late.stdout, late.output  # a stopped backup shows


def test_an_archive_a_few_minutes_ahead_counts_as_a_backup_counts_it(project: Project) -> None:
    # Status took 5 minutes for "ahead", a backup 10: an archive 7 minutes ahead, which a backup
    # counted as the newest (and found the source unchanged from), failed status as too old.
    manifest(project)
    fake_archive(project.root / "backups", "site", T0 - timedelta(days=2))
    fake_archive(project.root / "backups", "site", T0 + timedelta(minutes=7))
    ran = project.invoke("status", "--only", "site", env=at(T0))
    assert ran.code == 0, ran.output


def test_selection_flags_work_and_a_selection_of_nothing_is_a_usage_error(project: Project) -> None:
    manifest(project)
    ran = project.invoke("status", "--only", "notes", env=at(T0))
    assert ran.code == 0, ran.output
    assert "[site]" not in ran.stdout
    nothing = project.invoke("status", "--only", "nope")
    assert nothing.code == 2
    assert "--only nope: no target matches; targets are: site, notes" in nothing.stderr
    assert project.invoke("status", "--format", "yaml").code == 2


@pytest.mark.parametrize(
    ("site", "extra", "expected"),
    [
        ("max_age: tomorrow", "", "backups.yml:7:5: targets[0].max_age: 'tomorrow' is not a duration like 36h"),
        ("", "defaults: {max_age: 0d}", "backups.yml:3:12: defaults.max_age: '0d' is not a duration like 36h"),
        ("max_age: 26", "", "backups.yml:7:5: targets[0].max_age: 26 found, expected text"),
    ],
)
def test_a_wrong_max_age_is_a_located_manifest_error(project: Project, site: str, extra: str, expected: str) -> None:
    manifest(project, extra=extra, site=site)
    ran = project.invoke("status")
    assert ran.code == 2
    assert expected in ran.stderr, ran.stderr


def test_max_age_is_inherited_from_defaults_and_shown_by_list(project: Project) -> None:
    manifest(project, extra="defaults: {max_age: 8d}", site="max_age: 26h")
    listed = {t["name"]: t["max_age"] for t in project.invoke("list", "--format", "json").json()}
    assert listed == {"site": "26h", "notes": "8d"}
    ran = project.invoke("status", env=at(T0))
    assert line_of(ran.stdout, "notes") == (
        f"failed: [notes] => no archive at all ({project.root / 'backups'} does not exist); max_age is 8d "
        "(local 0 archives 0 B)"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_bucket_that_cannot_be_reached_fails_its_store_with_a_sentence(project: Project) -> None:
    project.file("notes.txt", "remember\n")
    project.write_manifest(
        f"""
        version: 1
        remotes:
          bucket: {{type: s3, bucket: acme-backups, endpoint: "http://127.0.0.1:{free_port()}", addressing_style: path}}
        targets:
          - {{name: notes, path: notes.txt, offsite: [bucket]}}
        """
    )
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    ran = project.invoke("status", "--format", "json", env={**credentials, **at(T0)})
    assert ran.code == 1, ran.output
    [notes] = ran.json()["targets"]
    # No max_age: the store alone fails the target.
    assert notes["error"].startswith("remote bucket: cannot list the bucket: cannot reach http://127.0.0.1:")
    assert [(s["store"], s["listed"]) for s in notes["stores"]] == [("local", True), ("bucket", False)]
    assert "Traceback" not in ran.output
    assert "test" not in notes["error"]  # no credential in the sentence


def test_an_unchanged_source_counts_as_backed_up_when_it_was_found_so(project: Project, tmp_path: Path) -> None:
    # With skip_unchanged an unchanged run writes no archive: status judged the target by the
    # newest archive's date and failed max_age 26h three days after the last change, although
    # every run since had checked the source (a Nagios check alarmed every day).
    (tmp_path / "nas").mkdir()
    manifest(
        project,
        site="max_age: 26h\n            skip_unchanged: true\n            offsite: [nas]",
        remotes=f"remotes: {{nas: {{type: folder, path: {tmp_path / 'nas'}}}}}",
    )
    assert project.invoke("backup", "--only", "site", env=at(T0)).code == 0
    later = T0 + timedelta(days=3)
    unchanged = project.invoke("backup", "--only", "site", env=at(later))
    assert unchanged.code == 0 and "ok: [site] => unchanged since" in unchanged.stdout, unchanged.output

    fresh = project.invoke("status", "--only", "site", "--format", "json", env=at(later + timedelta(hours=2)))
    stale = project.invoke("status", "--only", "site", env=at(later + timedelta(hours=30)))

    assert fresh.code == 0, fresh.output
    [site] = fresh.json()["targets"]
    assert site["status"] == "ok"
    for store in site["stores"]:  # the remote holds the same archive: as current as the local one
        assert store["unchanged_time"] == (later).isoformat().replace("+00:00", "Z"), store
        assert store["age_seconds"] == 7200
    assert stale.code == 1
    assert line_of(stale.stdout, "site").startswith(
        "failed: [site] => source last found unchanged 30h 0min ago locally and source last found unchanged "
        "30h 0min ago on remote nas; max_age is 26h"
    ), stale.stdout


def test_the_unchanged_record_is_no_change_to_another_targets_source_nor_trusted_from_the_future(
    project: Project, tmp_path: Path
) -> None:
    # `other` keeps its archives inside `data`'s source: the record it rewrote on every run made
    # `data` archive anew every run.  And a record dated ahead of the clock hid a stale target.
    project.file("data/a.txt", "a\n")
    project.file("other/b.txt", "b\n")
    project.write_manifest(
        """
        version: 1
        defaults: {skip_unchanged: true, max_age: 26h}
        targets:
          - {name: other, path: other, destination: data/bk}
          - {name: data, path: data}
        """
    )
    for day in range(3):
        ran = project.invoke("backup", env=at(T0 + timedelta(days=day)))
        assert ran.code == 0, ran.output
    assert "ok: [data] => unchanged since" in ran.stdout and "ok: [other] => unchanged since" in ran.stdout
    assert not (project.root / "data" / "bk" / ".other.unchanged").exists()
    assert (project.root / "backups" / ".data.unchanged").exists()
    metrics = tmp_path / "backups.prom"
    fresh = project.invoke("status", "--only", "data", "--metrics-file", str(metrics), env=at(T0 + timedelta(days=2)))
    assert fresh.code == 0, fresh.output
    exported = metrics.read_text(encoding="utf-8")
    stamp = (T0 + timedelta(days=2)).timestamp()
    [value] = [
        float(line.rsplit(" ", 1)[1])
        for line in exported.splitlines()
        if line.startswith('backup_unchanged_timestamp_seconds{store="local",target="data"} ')
    ]
    assert value == stamp, exported
    # Judged from a clock set back a day: the record is "ahead", so the archive's own age counts.
    back = project.invoke("status", "--only", "data", env=at(T0 + timedelta(days=1, hours=3)))
    assert back.code == 1
    assert line_of(back.stdout, "data").startswith("failed: [data] => newest archive is 27h 0min old"), back.stdout


def test_a_destination_moved_away_is_named_not_taken_for_a_target_never_backed_up(project: Project) -> None:
    # After `mv backups backups.bak` status said only "no archive yet", exit 0.
    manifest(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    (project.root / "backups").rename(project.root / "backups.bak")
    ran = project.invoke("status", "--only", "notes", env=at(T0))
    assert line_of(ran.stdout, "notes").startswith(
        f"ok: [notes] => no archive yet (no max_age, so not judged), and {project.root / 'backups'} does not exist"
    )
    # With max_age, the line that alerts named no folder: an unmounted disk read as never backed up.
    judged = project.invoke("status", "--only", "site", env=at(T0))
    assert judged.code == 1
    assert line_of(judged.stdout, "site").startswith(
        f"failed: [site] => no archive at all ({project.root / 'backups'} does not exist); max_age is 26h"
    ), judged.stdout


@pytest.mark.parametrize("damage", ["empty", "cut short", "incomplete"])
def test_a_newest_archive_that_is_no_whole_backup_fails_status(project: Project, damage: str) -> None:
    # An empty file under a fresh archive's name made status say "ok, 0s old", and restore then failed.
    manifest(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    [good] = project.archives(target="notes")
    newer = good.with_name(archive_file_name("notes", T0 + timedelta(hours=1)))
    data = good.read_bytes()
    if damage == "incomplete":
        with zipfile.ZipFile(newer, "w") as made:  # a whole zip that says what it lacks
            made.writestr("notes.txt", "x")
            made.comment = b"incomplete: made without app.db (a hot journal)"
    else:
        newer.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])

    ran = project.invoke("status", "--only", "notes", "--format", "json", env=at(T0 + timedelta(hours=1)))

    assert ran.code == 1, ran.output
    (target,) = ran.json()["targets"]
    assert target["status"] == "failed"
    problem = target["error"]
    assert problem.startswith(f"the newest local archive {newer.name} is ")
    assert problem.endswith("; check it with verify, and make a complete backup")
    assert ("marked incomplete: made without app.db" in problem) == (damage == "incomplete")
    assert target["stores"][0]["newest_problem"] in problem


def test_a_target_can_opt_out_of_the_default_max_age_with_null(project: Project) -> None:
    # `max_age: null` was refused ("nothing (null) found, expected text"): a scratch target under
    # a fleet-wide default could not be left unjudged.
    manifest(project, extra="defaults: {max_age: 26h}", site="max_age: null")
    ran = project.invoke("status", env=at(T0))
    assert ran.code == 1, ran.output
    assert line_of(ran.stdout, "site").startswith("ok: [site] => no archive yet (no max_age, so not judged)")
    assert line_of(ran.stdout, "notes").startswith("failed: [notes] => no archive at all (")
    assert "does not exist); max_age is 26h" in line_of(ran.stdout, "notes")
