"""The last good copy, offsite: nothing a run, a prune or a push does may delete a remote's last
good copy on the strength of a copy that is not one, nor write or lock anything in check mode.

Through the real `invoke`, against a folder remote and (where marked) the S3 test server.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyrage
import pytest
from conftest import Project
from test_offsite import FolderRemote, Remote, each_remote, run, site, write

START = datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    yield from each_remote(request, tmp_path)


def test_an_empty_source_beside_no_local_archive_leaves_the_remotes_copies_alone(
    project: Project, remote: Remote
) -> None:
    # A new host of the same name, its data folder made before the data was restored (or
    # every local archive cleared): the folder held nothing and the destination no archive to
    # judge by, so an archive of nothing was made, sent, counted as the remote's newest, and
    # the remote's keep deleted its last good copy, exit 0.
    site(project)
    write(project, remote, keep={"last": 1})
    assert run(project, remote, "backup", now=START).code == 0
    [good] = remote.names("site")
    for path in sorted((project.root / "site").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    for archive in project.archives():
        archive.unlink()

    previewed = run(project, remote, "backup", "--check", now=START + timedelta(days=1))
    ran = run(project, remote, "backup", now=START + timedelta(days=1))

    said = f"holds no file to archive and {project.root / 'backups'} holds no archive, but remote {remote.name} holds"
    assert previewed.code == 1 and said in previewed.stdout, previewed.output
    assert ran.code == 1 and said in ran.stdout, ran.output
    assert f"restore site --to {project.root / 'site'} --remote {remote.name}" in ran.stdout
    assert remote.names("site") == [good] and project.archives() == []
    # Meant to be empty: once forced, it is archived and sent as any other archive; an archive of
    # nothing deletes no copy (each later run of the empty folder took one more full copy away),
    # until a prune applies the remote's keep.
    forced = run(project, remote, "backup", "--force", now=START + timedelta(days=2))
    assert forced.code == 0 and "(0 files" in forced.stdout, forced.output
    [empty] = project.archives()
    assert remote.names("site") == [good, empty.name]
    pruned = run(project, remote, "prune", now=START + timedelta(days=2))
    assert pruned.code == 0, pruned.output
    assert remote.names("site") == [empty.name]


def test_an_empty_source_with_an_unreachable_remote_archives_nothing(project: Project, tmp_path: Path) -> None:
    nas = FolderRemote(tmp_path / "nas")
    (project.root / "site").mkdir()
    write(project, nas)
    nas.down()

    ran = run(project, nas, "backup")

    assert ran.code == 1, ran.output
    assert "could not be asked whether it holds copies" in ran.stdout and "is the disk mounted?" in ran.stdout
    assert project.archives() == []


def _database(project: Project) -> Path:
    database = project.root / "site" / "app.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE t (x TEXT)")
        connection.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 40,) for i in range(2000)])
        connection.commit()
    return database


def _complete_then_incomplete_copy(project: Project, nas: FolderRemote) -> tuple[Path, str, str]:
    """A remote with keep {last: 1} holding a complete copy, then a newer one made without the
    target's database (pushed there); the database, and the two copies' names."""
    site(project)
    database = _database(project)
    write(project, nas, keep={"last": 1}, local_keep={"last": 5})
    assert run(project, nas, "backup", now=START).code == 0
    [complete] = nas.names("site")
    with database.open("r+b") as file:  # pages past the header overwritten: the check fails
        file.seek(4096 * 2)
        file.write(b"\xff" * 4096)
    failed = run(project, nas, "backup", now=START + timedelta(hours=1))
    assert failed.code == 1 and "was made without 1 database(s)" in failed.stdout, failed.output
    pushed = run(project, nas, "push", now=START + timedelta(hours=2))
    assert pushed.code == 0, pushed.output
    [_, incomplete] = nas.names("site")
    return database, complete, incomplete


def test_a_remote_keeps_its_last_complete_copy_when_its_newest_was_made_without_a_database(
    project: Project, tmp_path: Path
) -> None:
    # With a keep shorter on the remote than here, the local guard never ran: a push sent the
    # archive made without the database, and a prune deleted the remote's last complete copy.
    nas = FolderRemote(tmp_path / "nas")
    database, complete, incomplete = _complete_then_incomplete_copy(project, nas)

    previewed = run(project, nas, "prune", "--check", now=START + timedelta(hours=3))
    pruned = run(project, nas, "prune", now=START + timedelta(hours=3))

    said = f"remote nas: nothing was deleted there: {incomplete}, the newest copy its keep would keep, is no ground"
    assert previewed.code == 1 and said in previewed.stdout, previewed.output
    assert (
        pruned.code == 1 and said in pruned.stdout and "it is incomplete: made without 1 database(s)" in pruned.stdout
    )
    assert nas.names("site") == [complete, incomplete]
    # Told to, a prune deletes what keep says all the same (a database broken for good would
    # otherwise hold every archive until the disk fills).
    forced = run(project, nas, "prune", "--force", now=START + timedelta(hours=3))
    assert forced.code == 0 and "nas -1" in forced.stdout + forced.stderr, forced.output
    assert nas.names("site") == [incomplete]
    # A complete backup again: the remote's keep applies as before.
    database.unlink()
    _database(project)
    assert run(project, nas, "backup", now=START + timedelta(hours=4)).code == 0
    assert nas.names("site") == [project.archives()[-1].name]


@pytest.mark.parametrize("lost", ["the destination", "the incomplete archive"])
def test_a_remote_keeps_its_last_complete_copy_when_the_local_archive_of_its_newest_is_gone(
    project: Project, tmp_path: Path, lost: str
) -> None:
    # The remote's newest copy is judged by its local twin.  With the local disk lost, or the
    # incomplete archive moved out of the folder (as the local prune's message suggests), it
    # was taken on trust and a prune deleted the remote's last complete copy, exit 0.
    nas = FolderRemote(tmp_path / "nas")
    _, complete, incomplete = _complete_then_incomplete_copy(project, nas)
    if lost == "the destination":
        for archive in project.archives():
            archive.unlink()
    else:
        (project.root / "backups" / incomplete).rename(tmp_path / incomplete)

    previewed = run(project, nas, "prune", "--check", now=START + timedelta(days=1))
    pruned = run(project, nas, "prune", now=START + timedelta(days=1))

    said = (
        f"remote nas: nothing was deleted there: {incomplete}, the newest copy its keep would keep, "
        f"has no archive of that name in {project.root / 'backups'} to judge it by"
    )
    assert previewed.code == 1 and said in previewed.stdout, previewed.output
    assert pruned.code == 1 and said in pruned.stdout, pruned.output
    assert nas.names("site") == [complete, incomplete]
    forced = run(project, nas, "prune", "--force", now=START + timedelta(days=1))
    assert forced.code == 0 and "nas -1" in forced.stdout + forced.stderr, forced.output
    assert nas.names("site") == [incomplete]


def test_a_within_policy_keeps_its_history_past_a_clock_that_jumped_a_year_ahead(project: Project) -> None:
    # keep {last: 2, within: 30d}: a clock a year ahead made the window count back from the
    # new archive, and a month of history went at once, without a word.
    project.file("site/a.txt", "a\n")
    project.write_manifest("version: 1\ntargets:\n  - {name: site, path: site, keep: {last: 2, within: 30d}}\n")
    for day in range(0, 28, 4):
        project.file("site/a.txt", f"day {day}\n")
        assert project.invoke("backup", env={"BACKUP_NOW": (START + timedelta(days=day)).isoformat()}).code == 0
    history = project.archives()
    assert len(history) == 7

    project.file("site/a.txt", "a year on\n")
    ran = project.invoke("backup", env={"BACKUP_NOW": (START + timedelta(days=390)).isoformat()})

    assert ran.code == 0, ran.output
    assert set(history) < set(project.archives())
    assert "kept 6 archive(s) that within: 30d keeps counting from" in ran.stdout + ran.stderr
    assert "a clock set ahead?" in ran.stdout + ran.stderr


def test_push_in_check_mode_writes_and_locks_nothing(project: Project, tmp_path: Path) -> None:
    nas = FolderRemote(tmp_path / "nas")
    site(project)
    write(project, nas)

    ran = run(project, nas, "push", "--check")

    assert ran.code == 0, ran.output
    assert not (project.root / "backups").exists()
    assert list(nas.root.iterdir()) == []


def test_turning_encryption_off_starts_a_new_series_and_deletes_no_encrypted_copy(
    project: Project, tmp_path: Path
) -> None:
    # Counted together, an archive held as X.zip and X.zip.age was two copies toward keep (so
    # two encrypted copies went), and the plain X.zip was sent without being reported.
    nas = FolderRemote(tmp_path / "nas")
    identity = pyrage.x25519.Identity.generate()
    site(project)
    write(
        project, nas, keep={"last": 3}, settings_of_remote={"encryption": {"recipients": [str(identity.to_public())]}}
    )
    for hour in range(3):
        project.file("site/index.html", f"<h1>{hour}</h1>\n")
        assert run(project, nas, "backup", now=START + timedelta(hours=hour)).code == 0
    encrypted = sorted(p.name for p in (nas.root / "host1" / "site").glob("*.zip.age"))
    assert len(encrypted) == 3
    write(project, nas, keep={"last": 3})

    pushed = run(project, nas, "push", "--format", "json", now=START + timedelta(hours=4))
    project.file("site/index.html", "<h1>plain</h1>\n")
    backed = run(project, nas, "backup", now=START + timedelta(hours=5))

    assert pushed.code == 0 and backed.code == 0, pushed.output + backed.output
    [copy] = pushed.json()["targets"][0]["offsite"]
    assert len(copy["uploaded"]) == 3 and all(name.endswith(".zip") for name in copy["uploaded"])
    assert sorted(p.name for p in (nas.root / "host1" / "site").glob("*.zip.age")) == encrypted
    assert nas.names("site") == [p.name for p in project.archives()[-3:]]


def test_a_copy_killed_on_a_folder_remote_is_cleared_once_stale(project: Project, tmp_path: Path) -> None:
    nas = FolderRemote(tmp_path / "nas")
    site(project)
    write(project, nas, keep={"last": 1})
    assert run(project, nas, "backup", now=START).code == 0
    folder = nas.root / "host1" / "site"
    left = folder / ".site-20260301T020000.000000Z.zip.partial"  # another archive's, killed mid-copy
    left.write_bytes(b"half a copy")
    fresh = folder / ".site-20260301T050000.000000Z.zip.partial"  # a copy running now elsewhere
    fresh.write_bytes(b"being written")
    old = (START - timedelta(days=2)).timestamp()
    os.utime(left, (old, old))
    project.file("site/index.html", "<h1>changed</h1>\n")

    assert run(project, nas, "backup").code == 0

    assert not left.exists() and fresh.exists()
