"""One bad database does not sink its folder.

A damaged database, or one a crashed writer left with a hot journal, inside a folder
target once failed the whole folder (and the hot journal read "attempt to write a
readonly database").  Now that member is left out with a sentence that says what to do,
the rest of the folder is archived and kept, and the target is `failed` (exit 1, its
on_failure hooks run, nothing is rotated) with the archive and the members left out named
in the result.  A target that is a single database still fails without an archive.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import zipfile
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, fake_archive, integrity

OLD = datetime(2026, 1, 1, tzinfo=timezone.utc)

_CRASHING_WRITER = """
import os, signal, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size=2")  # pages spill to the file mid-transaction
connection.execute("BEGIN")
connection.execute("UPDATE t SET x = randomblob(600)")
os.kill(os.getpid(), signal.SIGKILL)  # the writer dies: its journal is now hot
"""


def _database(path: Path, rows: int = 2000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE t (x BLOB)")
        connection.executemany("INSERT INTO t VALUES (?)", ((os.urandom(500),) for _ in range(rows)))
        connection.commit()


def _hot_journal(path: Path) -> None:
    _database(path)
    done = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert Path(f"{path}-journal").stat().st_size > 0


def _damaged(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        connection.execute("CREATE INDEX i ON t (b)")
        connection.executemany("INSERT INTO t (b) VALUES (?)", ((f"value {i:06d}",) for i in range(20_000)))
        connection.commit()
    size = path.stat().st_size
    with path.open("r+b") as file:  # zero a stretch of every page in the last third: the index
        for offset in range(size * 2 // 3, size, 4096):
            file.seek(offset + 100)
            file.write(b"\0" * 50)


def _folder_manifest(project: Project, skip_unchanged: bool = False) -> None:
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: app
            path: app
            keep: {{last: 1}}
            skip_unchanged: {str(skip_unchanged).lower()}
            hooks: {{on_failure: [["sh", "-c", "echo $BACKUP_STATUS > $STATE/failed.state"]]}}
        """
    )


def _run(project: Project) -> tuple[int, dict[str, Any], str]:
    ran = project.invoke("backup", "--format", "json", env={"STATE": str(project.root)})
    assert "Traceback" not in ran.output
    (result,) = ran.json()["targets"]
    return ran.code, result, ran.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_hot_journal_in_a_folder_leaves_out_that_database_and_says_what_to_do(project: Project) -> None:
    _hot_journal(project.root / "app" / "broken.db")
    _database(project.root / "app" / "good.db")
    project.file("app/notes.txt", "kept\n")
    _folder_manifest(project)
    old = fake_archive(project.root / "backups", "app", OLD)

    code, result, stderr = _run(project)

    assert code == 1 and result["status"] == "failed"
    assert result["databases"] == 1
    (left_out,) = result["incomplete"]
    assert left_out.startswith("broken.db: ") and "hot journal" in left_out and "readonly" not in left_out
    assert "PRAGMA quick_check" in left_out  # what to do about it
    archive = Path(result["archive"])
    assert archive.name in result["error"] and "without 1 database(s)" in result["error"]
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["good.db", "notes.txt"]
        assert opened.read("notes.txt") == b"kept\n"
    assert old.exists(), "a target that failed must not rotate"
    assert (project.root / "failed.state").read_text() == "failed\n"
    assert "hot journal" in stderr
    assert not list((project.root / "backups").glob(".*partial"))


def test_a_damaged_database_in_a_folder_is_left_out_with_the_first_lines_of_the_check(project: Project) -> None:
    _damaged(project.root / "app" / "damaged.db")
    project.file("app/notes.txt", "kept\n")
    _folder_manifest(project)

    code, result, _ = _run(project)

    assert code == 1 and result["status"] == "failed"
    (left_out,) = result["incomplete"]
    assert left_out.startswith("damaged.db: the snapshot of") and "PRAGMA integrity_check" in left_out
    # Hundreds of lines from integrity_check, cut to the first few.
    assert 1 <= left_out.count("On tree page") <= 3 and re.search(r"\(and \d+ more\)", left_out), left_out
    assert "\n" not in left_out
    assert len(result["error"]) < 1000
    with zipfile.ZipFile(result["archive"]) as opened:
        assert opened.namelist() == ["notes.txt"]


def test_a_database_whose_schema_page_is_garbage_fails_its_member_not_the_folder(project: Project) -> None:
    fake = project.root / "app" / "fake.db"
    _database(fake, rows=10)
    with fake.open("r+b") as file:  # the header stays; the schema's page is overwritten
        file.seek(100)
        file.write(b"\xff" * 3000)
    _database(project.root / "app" / "good.db")
    _folder_manifest(project)
    code, result, _ = _run(project)
    assert code == 1 and result["databases"] == 1
    assert result["incomplete"][0].startswith("fake.db: ")
    with zipfile.ZipFile(result["archive"]) as opened:
        assert opened.namelist() == ["good.db"]
        restored = project.root / "restored.db"
        restored.write_bytes(opened.read("good.db"))
    assert integrity(restored) == ["ok"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_single_database_target_with_a_hot_journal_still_fails_without_an_archive(project: Project) -> None:
    _hot_journal(project.root / "app.db")
    project.write_manifest("version: 1\ntargets: [{name: db, path: app.db}]\n")
    code, result, _ = _run(project)
    assert code == 1 and result["status"] == "failed" and result["archive"] is None
    assert "hot journal" in result["error"] and result["incomplete"] == []
    assert project.archives() == []


def _cut_short(path: Path, size: int) -> bytes:
    """A real database cut to `size` bytes (a copy that stopped, a disk that lost its end)."""
    whole = path.with_name("whole.db")
    _database(whole, rows=max(2000, size // 400))
    cut = whole.read_bytes()[:size]
    assert len(cut) == size
    whole.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cut)
    return cut


# The header alone; a small member (packed in a batch); a large one (packed in pieces).
@pytest.mark.parametrize("size", [16, 50_000, 3_000_001])
def test_a_database_cut_short_in_a_folder_fails_the_target_and_is_kept_as_it_is(project: Project, size: int) -> None:
    # The walk recognises a database by whole pages and its header: one cut short was archived
    # as an ordinary file, unchecked, and the run said ok.
    cut = _cut_short(project.root / "app" / "app.db", size)
    project.file("app/notes.txt", "kept\n")
    _folder_manifest(project)
    old = fake_archive(project.root / "backups", "app", OLD)

    code, result, stderr = _run(project)

    assert code == 1 and result["status"] == "failed", result
    assert (
        "app.db" in result["error"]
        and "begins as a SQLite database but is not a whole number of pages" in result["error"]
    )
    assert result["error"] in stderr
    with zipfile.ZipFile(result["archive"]) as opened:
        assert opened.read("app.db") == cut and opened.read("notes.txt") == b"kept\n"
    assert old.exists(), "a target that failed must not rotate"
    assert (project.root / "failed.state").read_text() == "failed\n"


def test_a_database_left_out_does_not_hide_another_archived_torn(project: Project) -> None:
    # With one database left out (its snapshot failed its check) and another archived as it was
    # (not whole pages), the line named only the first: the torn one went unsaid.
    _cut_short(project.root / "app" / "cut.db", 8192)  # whole pages: snapshotted, fails its check
    _cut_short(project.root / "app" / "torn.db", 50_000)  # not whole pages: archived as it is
    _folder_manifest(project)

    code, result, stderr = _run(project)

    assert code == 1 and result["status"] == "failed", result
    assert "was made without 1 database(s)" in result["error"] and "cut.db" in result["error"]
    assert "; and it holds " in result["error"] and "torn.db as it is, unchecked" in result["error"]
    assert result["error"] in stderr


def test_a_single_file_that_is_a_database_cut_short_fails_its_target(project: Project) -> None:
    _cut_short(project.root / "app.db", 50_000)
    project.write_manifest("version: 1\ntargets: [{name: db, path: app.db, skip_unchanged: true}]\n")
    # The preview said "would archive": it now says the run would fail.
    preview = project.invoke("backup", "--check", "--format", "json")
    assert preview.code == 1, preview.output
    (previewed,) = preview.json()["targets"]
    assert previewed["status"] == "failed" and "would fail" in previewed["error"], previewed
    assert "not a whole number of pages" in previewed["error"] and project.archives() == []
    for run in range(3):  # and no run calls it unchanged
        code, result, _ = _run(project)
        assert code == 1 and result["status"] == "failed", result
        assert "not a whole number of pages" in result["error"]
        # Its bytes are kept once, when the target has no archive at all (they may be all there
        # is); after that, each run added a copy of the same broken bytes, none ever rotated.
        assert ("nothing was archived" in result["error"]) == (run > 0)
        assert len(project.archives()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_verify_and_restore_still_say_an_archive_lacks_a_database_long_after(project: Project) -> None:
    # The run that made it failed and said so once; afterwards verify said ok and restore
    # restored it as the newest archive, with nothing to say that a database was missing.
    _hot_journal(project.root / "app" / "broken.db")
    project.file("app/notes.txt", "kept\n")
    _folder_manifest(project)
    code, result, _ = _run(project)
    assert code == 1 and result["incomplete"]
    archive = Path(result["archive"])
    with zipfile.ZipFile(archive) as opened:  # any zip reader shows it: unzip -l, 7z l
        assert opened.comment.startswith(b"incomplete: made without 1 database(s): broken.db: ")

    verified = project.invoke("verify")
    assert verified.code == 0, verified.output
    assert "this archive is incomplete, as the run that made it said: made without 1 database(s): broken.db" in (
        verified.output
    )
    restored = project.invoke("restore", "app", "--to", str(project.root / "restored"))
    assert restored.code == 0, restored.output
    assert f"{archive.name} is incomplete, as the run that made it said" in restored.output
    assert (project.root / "restored" / "notes.txt").read_text() == "kept\n"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("damage", ["hot-journal", "cut-short"])
def test_prune_keeps_the_older_archives_while_the_newest_lacks_a_database(project: Project, damage: str) -> None:
    # prune trusted the newest archive by its name: it deleted the only archive that held the
    # database the newest was made without.
    _database(project.root / "app" / "app.db")
    project.file("app/notes.txt", "kept\n")
    _folder_manifest(project)  # keep: {last: 1}
    code, first, _ = _run(project)
    assert code == 0, first
    if damage == "hot-journal":
        (project.root / "app" / "app.db").unlink()
        _hot_journal(project.root / "app" / "app.db")
    else:
        _cut_short(project.root / "app" / "app.db", 50_000)
    code, second, _ = _run(project)
    assert code == 1 and second["status"] == "failed", second

    ran = project.invoke("prune")

    assert ran.code == 1, ran.output
    assert f"nothing was deleted: {Path(second['archive']).name}" in ran.output and "it is incomplete: " in ran.output
    assert sorted(project.archives()) == sorted([Path(first["archive"]), Path(second["archive"])])


def test_prune_refusing_for_an_incomplete_newest_prunes_no_remote_either(project: Project) -> None:
    # Locally nothing was deleted, but the remote's keep deleted its older, complete copy in the
    # same run: after a push, the remote's newest is the same incomplete archive.
    _database(project.root / "app" / "app.db")
    (project.root / "nas").mkdir()
    project.write_manifest(
        """
        version: 1
        remotes: {nas: {type: folder, path: nas, keep: {last: 1}}}
        targets:
          - {name: app, path: app, keep: {last: 1}, offsite: [nas]}
        """
    )
    code, complete, _ = _run(project)
    assert code == 0, complete
    _cut_short(project.root / "app" / "app.db", 50_000)
    code, incomplete, _ = _run(project)
    assert code == 1, incomplete  # failed: nothing copied, nothing rotated
    assert project.invoke("push").code == 0

    ran = project.invoke("prune")

    assert ran.code == 1, ran.output
    copies = sorted(p.name for p in (project.root / "nas" / "app").glob("*.zip"))
    assert copies == sorted([Path(complete["archive"]).name, Path(incomplete["archive"]).name])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_once_the_bad_database_is_gone_the_next_backup_is_not_unchanged(project: Project) -> None:
    # The source then matched the incomplete archive: skip_unchanged said ok, no complete archive
    # was made, and prune kept refusing for as long as nothing changed.
    _database(project.root / "app" / "good.db")
    _folder_manifest(project, skip_unchanged=True)
    assert _run(project)[0] == 0
    _hot_journal(project.root / "app" / "broken.db")
    code, incomplete, _ = _run(project)
    assert code == 1 and incomplete["incomplete"], incomplete
    for leftover in (project.root / "app").glob("broken.db*"):
        leftover.unlink()  # what the failure's sentence asks: deal with the broken database

    code, result, _ = _run(project)

    assert code == 0 and result["status"] == "changed", result
    assert project.invoke("prune").code == 0
    assert project.archives() == [Path(result["archive"])]


def test_an_excluded_databases_wal_and_shm_are_left_out_too(project: Project) -> None:
    # With the database excluded from its folder (it has a target of its own), its -wal and
    # -shm were archived alone (they restore nothing), and reading -shm dropped, in this
    # process, the read lock the database's own snapshot held in it.
    folder = project.root / "app"
    folder.mkdir()
    database = folder / "app.db"
    live = sqlite3.connect(database)
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("CREATE TABLE t (x)")
        live.execute("INSERT INTO t VALUES (1)")
        live.commit()
        assert Path(f"{database}-wal").exists() and Path(f"{database}-shm").exists()
        project.file("app/notes.txt", "kept\n")
        project.file("app/other-wal", "an ordinary file whose name only ends like one\n")
        project.write_manifest('version: 1\ntargets: [{name: app, path: app, exclude: ["*.db"]}]\n')

        code, result, _ = _run(project)
    finally:
        live.close()

    assert code == 0, result
    with zipfile.ZipFile(result["archive"]) as opened:
        assert sorted(opened.namelist()) == ["notes.txt", "other-wal"]
