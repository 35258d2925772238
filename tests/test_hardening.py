"""Inputs a careless or hostile world provides, each through the real `invoke` command."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, Project, fake_archive, flow, run_invoke

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX file names, FIFOs or signals")


def manifest(project: Project, target: str, **settings: object) -> None:
    extra = "".join(f"\n            {key}: {flow(value)}" for key, value in settings.items())
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: site
            path: {target}
            destination: backups{extra}
        """
    )


def line(text: str, status: str) -> str:
    return next(row for row in text.splitlines() if row.startswith(f"{status}: [site]"))


def test_restore_never_writes_through_a_link_planted_at_its_temporary_name(project: Project) -> None:
    project.file("src/a.txt", "archived\n")
    manifest(project, "src")
    assert project.invoke("backup").code == 0
    victim = project.file("victim.txt", "not yours\n")
    restored = project.root / "restored"
    restored.mkdir()
    (restored / ".a.txt.restore-partial").symlink_to(victim)

    ran = project.invoke("restore", "site", "--to", str(restored))

    assert ran.code == 0, ran.output
    assert victim.read_text() == "not yours\n"
    assert (restored / "a.txt").read_text() == "archived\n"
    assert not (restored / "a.txt").is_symlink()


@posix_only
def test_a_file_name_that_is_not_utf8_archives_verifies_and_restores(project: Project) -> None:
    folder = project.root / "src"
    folder.mkdir()
    raw_name = b"bad\xff\xfe.txt"
    Path(os.fsdecode(os.fsencode(folder) + b"/" + raw_name)).write_text("odd name\n")
    manifest(project, "src")

    ran = project.invoke("backup", "--verbose")
    assert ran.code == 0, ran.output
    # Shown as its bytes (it was shown as Python's stand-ins for them, \udcff\udcfe).
    assert "  [site] bad\\xff\\xfe.txt" in ran.stdout.splitlines()
    (archive,) = project.archives()
    with zipfile.ZipFile(archive) as opened:
        (info,) = opened.infolist()
        assert not info.flag_bits & 0x800, "a name that is not UTF-8 must not claim to be"
        assert opened.read(info) == b"odd name\n"
    verified = project.invoke("verify")
    assert verified.code == 0, verified.output
    restored = project.invoke("restore", "site", "--to", str(project.root / "out"))
    assert restored.code == 0, restored.output
    assert "Traceback" not in restored.output


def test_a_damaged_newest_archive_does_not_stop_later_backups(project: Project) -> None:
    project.file("notes.txt", "notes\n")
    manifest(project, "notes.txt", skip_unchanged=True)
    assert project.invoke("backup").code == 0
    (archive,) = project.archives()
    os.truncate(archive, 40)

    ran = project.invoke("backup")

    assert ran.code == 0, ran.output
    assert line(ran.stdout, "changed")
    assert len(project.archives()) == 2
    assert "Traceback" not in ran.output


@posix_only
def test_a_fifo_as_a_target_fails_at_once(project: Project) -> None:
    os.mkfifo(project.root / "pipe")
    manifest(project, "pipe")

    ran = project.invoke("backup", timeout=60)

    assert ran.code == 1, ran.output
    assert "not a file or a folder" in line(ran.stdout, "failed")
    assert project.archives() == []


@posix_only
def test_sigterm_during_a_before_hook_still_runs_on_failure(project: Project) -> None:
    project.file("src/a.txt")
    started = project.root / "started"
    restarted = project.root / "restarted"
    before = [sys.executable, "-c", f"open({str(started)!r}, 'w').close(); import time; time.sleep(30)"]
    on_failure = [sys.executable, "-c", f"open({str(restarted)!r}, 'w').close()"]
    manifest(project, "src", hooks={"before": [before], "on_failure": [on_failure]})
    child = subprocess.Popen(
        [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the before hook never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)

    assert child.returncode == 130
    assert restarted.exists(), "on_failure must run when a run is stopped after a before hook"
    assert project.archives() == []


def test_a_log_file_whose_name_is_not_utf8_is_escaped_not_fatal(project: Project) -> None:
    weird = "caf\udce9.txt" if os.name == "posix" else "café.txt"
    Path(project.root / "src").mkdir()
    try:
        (project.root / "src" / weird).write_text("x\n")
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system cannot hold that name")
    project.file("src/z.txt", "after\n")
    manifest(project, "src")
    log = project.root / "run.log"

    ran = project.invoke("backup", "-v", "--log-file", str(log))

    assert ran.code == 0, ran.output
    assert "z.txt" in log.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"run": "echo 'unclosed"}, "cannot split this command"),
        ({"run": "   "}, "the command is empty"),
        ({"run": ["true"], "timeout": 1e300}, "is greater than the maximum"),
    ],
    ids=["bad quotes", "empty", "huge timeout"],
)
def test_a_broken_hook_is_a_located_manifest_error(project: Project, hook: dict[str, object], message: str) -> None:
    project.file("src/a.txt")
    manifest(project, "src", hooks={"before": [hook]})

    ran = project.invoke("validate")

    assert ran.code == 2, ran.output
    assert "backups.yml:" in ran.stderr and "targets[0].hooks" in ran.stderr and message in ran.stderr
    assert "Traceback" not in ran.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["--jobs", "abc"],
        ["--jobs", "-1"],
        ["--jobs", "0"],
        ["--jobs", "65"],
        ["--only", ""],
        ["--only", ","],
        ["--tags", ""],
        # Beside a name (`--only web --only "$DB"`): the one the script meant was left out, exit 0.
        ["--only", "site", "--only", ""],
        ["--skip-tags", "x", "--skip-tags", " "],
        # Typed with no value (`--only $T`, T empty): Invoke gives the same empty list as no flag.
        ["--only", "--force"],
        ["--force", "--only"],
        ["-o", "--force"],
        ["--tags"],
        ["--skip-tags", "--force"],
    ],
    ids=[
        "jobs not a number",
        "jobs negative",
        "jobs zero",
        "jobs over the schema's 64",
        "only empty",
        "only comma",
        "tags empty",
        "only empty beside a name",
        "skip-tags blank beside a tag",
        "only bare",
        "only bare last",
        "o bare",
        "tags bare",
        "skip-tags bare",
    ],
)
def test_bad_flags_are_usage_errors_that_change_nothing(project: Project, arguments: list[str]) -> None:
    project.file("src/a.txt")
    manifest(project, "src")
    before = project.snapshot_tree()

    ran = project.invoke("backup", *arguments)

    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output
    flag = next(a for a in arguments if a.startswith("-") and a != "--force")
    assert ran.stderr.startswith(f"error: {'--only' if flag == '-o' else flag}"), ran.output
    assert project.snapshot_tree() == before


def test_a_selection_value_that_begins_with_a_dash_is_a_value_not_a_bare_flag(project: Project) -> None:
    # Tags may begin with '-'.
    project.file("src/a.txt")
    manifest(project, "src", tags=["-old"])

    ran = run_invoke("backup", "--manifest", str(project.manifest), "--check", "--tags", "-old")

    assert ran.code == 0, ran.output
    assert "changed: [site] => would archive 1 file" in ran.stdout, ran.output


@pytest.mark.parametrize("flag", ["--dry", "-R"])
@pytest.mark.parametrize("task", ["backup", "prune"])
def test_invokes_dry_flag_is_refused_not_a_real_run(project: Project, flag: str, task: str) -> None:
    # Invoke's --dry echoes shell commands instead of running them; these tasks run none, so it
    # would have let a real backup or prune, deletions included, run under a "dry" flag.
    project.file("src/a.txt")
    manifest(project, "src")
    before = project.snapshot_tree()

    ran = run_invoke(flag, task, "--manifest", str(project.manifest))

    assert ran.code == 2, ran.output
    assert "use --check" in ran.stderr and "Traceback" not in ran.output
    assert project.snapshot_tree() == before


@posix_only
def test_a_file_name_holding_a_newline_or_escape_cannot_forge_a_line(project: Project, tmp_path: Path) -> None:
    # A name is an attacker's text: printed raw, "x\nchanged: [db] => ..." would read as a line
    # of its own, and ESC sequences would rewrite the terminal.
    forged = "x\nchanged: [db] => forged line\x1b[2J"
    project.file(f"src/{forged}", "data\n")
    manifest(project, "src")
    log = tmp_path / "run.log"

    ran = project.invoke("backup", "--verbose", "--log-file", str(log))

    assert ran.code == 0, ran.output
    for text in (ran.stdout, log.read_text(encoding="utf-8")):
        assert "\x1b" not in text
        assert not any(line.lstrip().startswith("changed: [db]") for line in text.splitlines()), text
        assert "x\\nchanged: [db] => forged line\\x1b[2J" in text, text
    [archive] = project.archives()
    with zipfile.ZipFile(archive) as made:
        assert made.read(forged) == b"data\n"  # escaped when shown, archived as it is


@posix_only
def test_a_destination_linked_to_a_share_that_is_not_mounted_is_named_so(project: Project) -> None:
    project.file("src/a.txt")
    (project.root / "backups").symlink_to(project.root / "nas" / "backups")  # the share is not mounted
    manifest(project, "src")

    ran = project.invoke("backup")
    assert ran.code == 1, ran.output
    assert "is a link to" in ran.stdout and "which does not exist (is it mounted?)" in ran.stdout
    # status must not call it "no archive yet": the link hides wherever the archives are.
    status = project.invoke("status")
    assert status.code == 1, status.output
    assert "which does not exist (is it mounted?)" in status.stdout
    assert not (project.root / "nas").exists()


def test_restore_refuses_an_archive_named_with_a_folder(project: Project) -> None:
    project.file("src/a.txt")
    manifest(project, "src")
    assert project.invoke("backup").code == 0
    (archive,) = project.archives()

    ran = project.invoke("restore", "site", "--to", str(project.root / "out"), "--archive", f"../x/{archive.name}")

    assert ran.code == 2, ran.output
    assert "file name only" in ran.stderr
    assert not (project.root / "out").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_a_destination_that_cannot_be_written_is_a_failure_not_a_skip(project: Project) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: src, destination: /proc/self}
        """
    )

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert line(ran.stdout, "failed")


def test_a_failing_after_hook_deletes_no_old_archive(project: Project) -> None:
    project.file("src/a.txt")
    old = fake_archive(project.root / "backups", "site", datetime(2020, 1, 1))
    manifest(project, "src", keep={"last": 1}, hooks={"after": [[sys.executable, "-c", "raise SystemExit(3)"]]})

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert old.exists(), "rotation must wait until the after hooks have succeeded"
    assert len(project.archives()) == 2


def test_a_database_whose_path_holds_uri_characters_backs_up(project: Project) -> None:
    folder = project.root / "odd # name ? 100%"
    folder.mkdir()
    database = folder / "data.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("INSERT INTO t VALUES (42)")
        connection.commit()
    manifest(project, flow(str(database)))

    ran = project.invoke("backup")

    assert ran.code == 0, ran.output
    assert len(project.archives()) == 1
    restored = project.invoke("restore", "site", "--to", str(project.root / "out"))
    assert restored.code == 0, restored.output
    with closing(sqlite3.connect(project.root / "out" / "data.db")) as connection:
        assert connection.execute("SELECT x FROM t").fetchall() == [(42,)]


@pytest.mark.parametrize("how", ["emptied", "excluded", "placeholder"])
def test_a_folder_that_gives_nothing_where_the_last_archive_held_files_fails_and_rotates_nothing(
    project: Project, how: str
) -> None:
    # An unmounted disk leaves its mount point empty, or holding only placeholder folders: each
    # run placed an archive of no file and rotated a full one away, and status said ok, until
    # keep held nothing else.
    project.file("mnt/important.dat", "data\n")
    project.file("mnt/sub/more.dat", "more\n")
    project.write_manifest("version: 1\ntargets:\n  - {name: m, path: mnt, keep: {last: 1}}\n")
    assert project.invoke("backup").code == 0
    [full] = project.archives()
    if how == "excluded":
        project.write_manifest("version: 1\ntargets:\n  - {name: m, path: mnt, keep: {last: 1}, exclude: ['*.dat']}\n")
    else:
        (project.root / "mnt").rename(project.root / "mnt.away")
        (project.root / "mnt" / ("lost+found" if how == "placeholder" else "")).mkdir(parents=True)

    previewed = project.invoke("backup", "--check")
    ran = project.invoke("backup")

    said = "holds no file to archive"
    assert previewed.code == 1 and f"failed: [m] => would fail: {project.root / 'mnt'} {said}" in previewed.stdout
    assert ran.code == 1, ran.output
    assert f"failed: [m] => {project.root / 'mnt'} {said}" in ran.stdout
    assert f"but {full.name} holds 2 files: is a disk not mounted?" in ran.stdout
    assert "backup --force --only m" in ran.stdout
    assert project.archives() == [full]
    with zipfile.ZipFile(full) as archive:
        assert sorted(archive.namelist()) == ["important.dat", "sub/", "sub/more.dat"]
    # Meant to be empty: --force archives it once, and from then on an empty folder is simply unchanged.
    forced = project.invoke("backup", "--force")
    assert forced.code == 0 and "(0 files" in forced.stdout, forced.output
    assert project.invoke("backup").code == 0


def test_a_folder_of_links_only_or_of_a_database_left_out_is_not_taken_for_an_empty_one(project: Project) -> None:
    # The run counted links as entries but the preview did not: check mode said "would fail"
    # where the run succeeded.  A database left out (it failed its check) made the folder look
    # empty, and the line blamed an unmounted disk instead of the database.
    project.file("target.txt", "linked\n")
    (project.root / "links").mkdir()
    (project.root / "links" / "one").symlink_to("../target.txt")
    (project.root / "db").mkdir()
    database = project.root / "db" / "app.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE t (x TEXT)")
        connection.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 40,) for i in range(2000)])
        connection.commit()
    project.write_manifest("version: 1\ntargets:\n  - {name: links, path: links}\n  - {name: db, path: db}\n")
    assert project.invoke("backup").code == 0

    previewed = project.invoke("backup", "--check", "--only", "links")
    assert previewed.code == 0 and "changed: [links] => would archive" in previewed.stdout, previewed.output
    with database.open("r+b") as file:  # overwrite pages past the header: integrity_check fails
        file.seek(4096 * 2)
        file.write(b"\xff" * 4096)
    ran = project.invoke("backup", "--only", "db")
    assert ran.code == 1, ran.output
    assert "holds no file to archive" not in ran.stdout
    assert "app.db" in ran.stdout and "database" in ran.stdout, ran.output


@pytest.mark.parametrize("newest", ["whole", "cut short"])
def test_one_file_gone_under_a_placeholder_folder_or_behind_a_broken_newest_archive_still_fails(
    project: Project, newest: str
) -> None:
    # Compared by entries, one file against one placeholder folder passed; and a newest archive
    # that was not whole counted no entry, so the guard let the full one be rotated away.
    project.file("src/db.dump", "rows\n")
    project.write_manifest("version: 1\ntargets:\n  - {name: d, path: src, keep: {last: 1}}\n")
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-01T00:00:00Z"}).code == 0
    [full] = project.archives()
    if newest == "cut short":
        cut = full.with_name(full.name.replace("20260101T000000", "20260102T000000"))
        cut.write_bytes(full.read_bytes()[:100])
    (project.root / "src" / "db.dump").unlink()
    (project.root / "src" / "lost+found").mkdir()

    ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-03T00:00:00Z"})

    assert ran.code == 1, ran.output
    assert f"but {full.name} holds 1 file: is a disk not mounted?" in ran.stdout
    assert full.exists() and len(project.archives()) == (1 if newest == "whole" else 2)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_a_destination_that_cannot_be_made_and_a_loop_of_links_are_said_with_what_to_do(project: Project) -> None:
    # Each was the system's bare words: "No such file or directory (/proc/nope)", "Too many levels
    # of symbolic links (…/loopA)".
    project.file("data/a.txt")
    (project.root / "loopA").symlink_to("loopB")
    (project.root / "loopB").symlink_to("loopA")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: d, path: data, destination: /proc/nope}
          - {name: l, path: loopA, destination: out}
        """
    )

    ran = project.invoke("backup", "--format", "json")

    assert ran.code == 1, ran.output
    errors = {t["name"]: t["error"] for t in ran.json()["targets"]}
    assert errors["d"] == (
        "cannot make or use /proc/nope: no such file or folder, and it cannot be created there; check the path "
        "(the destination, or a folder on its way)"
    )
    assert (
        errors["l"]
        == f"{project.root / 'loopA'} leads through a loop of symbolic links; fix the links, or name the folder itself"
    )


# --- named pipes under the names of the tool's own files -------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize(
    ("name", "outcome", "said"),
    [
        (".site.lock", "failed", ".site.lock is not a regular file; move it away"),
        (".site.origin", "failed", ".site.origin cannot be read (not a regular file"),
        (".site.state", "ok", "unchanged since"),  # no state: the contents are compared
        (".site-20260101T000000.000000Z.zip.partial", "ok", "unchanged since"),
    ],
    ids=["lock", "origin", "state", "partial"],
)
def test_a_named_pipe_under_one_of_the_tools_own_names_never_holds_the_run(
    project: Project, name: str, outcome: str, said: str
) -> None:
    # Each was opened as a file and waited for a writer for ever, holding the target's lock:
    # every later run said "another run is working on this target" and exited 0.
    project.file("src/a.txt", "a\n")
    manifest(project, "src", skip_unchanged=True)
    assert project.invoke("backup").code == 0
    pipe = project.root / "backups" / name
    pipe.unlink(missing_ok=True)
    os.mkfifo(pipe)

    ran = project.invoke("backup", "--format", "json", timeout=60)

    [result] = ran.json()["targets"]
    assert (ran.code, result["status"]) == ((1, "failed") if outcome == "failed" else (0, "ok")), ran.output
    assert said in (result["error"] or result["reason"] or ""), result


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_under_a_copys_checksum_or_host_file_never_holds_a_push(project: Project) -> None:
    project.file("src/a.txt", "a\n")
    nas = project.root / "nas"
    nas.mkdir()
    project.write_manifest(
        f"""
        version: 1
        remotes:
          nas: {{type: folder, path: {nas}}}
        targets:
          - {{name: site, path: src, offsite: [nas]}}
        """
    )
    assert project.invoke("backup").code == 0
    [copy] = [p for p in (nas / "site").iterdir() if p.suffix == ".zip"]
    for made in (copy.with_name(f"{copy.name}.sha256"), copy.with_name(f"{copy.name}.host")):
        made.unlink()
        os.mkfifo(made)

    pushed = project.invoke("push", timeout=60)
    verified = project.invoke("verify", "--remote", "nas", timeout=60)

    assert pushed.code == 0, pushed.output  # its bytes are the archive's: recorded again
    assert verified.code == 0, verified.output
    assert copy.with_name(f"{copy.name}.sha256").is_file()


@pytest.mark.skipif(os.name != "posix", reason="making links needs a privilege on Windows")
def test_a_link_under_the_lock_files_name_is_named_so(project: Project) -> None:
    # "leads through a loop of symbolic links" was all it said.
    project.file("src/a.txt", "a\n")
    manifest(project, "src")
    assert project.invoke("backup").code == 0
    lock = project.root / "backups" / ".site.lock"
    lock.rename(project.root / "elsewhere")
    lock.symlink_to(project.root / "elsewhere")
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 1, ran.output
    [result] = ran.json()["targets"]
    assert result["error"].startswith(f"{lock} is a symbolic link, not a lock file; move it away"), result


@pytest.mark.parametrize("became", ["file", "folder"])
def test_a_source_that_became_the_other_kind_fails_until_the_operator_says_so(project: Project, became: str) -> None:
    # A folder whose path became a file (a mount point replaced, a deploy gone wrong) was archived
    # as that one file, "changed", exit 0, and keep {last: 1} deleted the folder's archive.
    source = project.root / "src"
    if became == "file":
        for number in range(3):
            project.file(f"src/f{number}.txt", f"file {number}\n")
    else:
        source.write_text("a single file\n", encoding="utf-8")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    first = project.invoke("backup")
    assert first.code == 0, first.output
    [whole] = project.archives()
    if became == "file":
        for child in source.iterdir():
            child.unlink()
        source.rmdir()
        source.write_text("placeholder\n", encoding="utf-8")
        was = "a folder"
    else:
        source.unlink()
        project.file("src/inside.txt", "now a folder\n")
        was = "the file"

    preview = project.invoke("backup", "--check")
    ran = project.invoke("backup")

    said = (
        f"{source} is now a {became}, but {whole.name} holds {was} of that name: nothing was archived and no old "
        "archive deleted; if this is meant, write its type (file or folder) in the manifest, or run invoke backup "
        "--force --only site once"
    )
    assert (preview.code, ran.code) == (1, 1), preview.output + ran.output
    assert f"failed: [site] => would fail: {said}" in preview.stdout, preview.output
    assert f"failed: [site] => {said}" in ran.stdout, ran.output
    assert project.archives() == [whole]
    # Said once, it is archived: the type written in the manifest settles it as well as --force.
    project.write_manifest(f"version: 1\ntargets: [{{name: site, path: src, type: {became}, keep: {{last: 1}}}}]\n")
    settled = project.invoke("backup")
    assert settled.code == 0, settled.output
    assert whole not in project.archives()


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_a_device_as_destination_is_not_advised_to_be_removed(project: Project) -> None:
    # "/dev/null is a file where a folder is needed; remove it or choose another destination".
    project.file("src/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, destination: /dev/null}]\n")
    ran = project.invoke("backup")
    assert ran.code == 1, ran.output
    assert "failed: [site] => /dev/null is not a folder (a device, pipe or socket); choose another destination" in (
        ran.stdout
    ), ran.output


def test_an_archive_of_nothing_rotates_away_no_archive_or_copy_that_holds_files(project: Project) -> None:
    # Once an emptied folder was taken with --force, each later run rotated one more archive
    # that held files away, here and on the remote, until none was left.
    project.file("src/a.txt", "a\n")
    project.file("src/sub/b.txt", "b\n")
    (project.root / "nas").mkdir()
    project.write_manifest(
        "version: 1\nremotes: {nas: {type: folder, path: nas, keep: {last: 1}}}\n"
        "targets: [{name: t, path: src, keep: {last: 1}, offsite: [nas]}]\n"
    )
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-01T00:00:00Z"}).code == 0
    [full] = project.archives()
    for child in ("src/a.txt", "src/sub/b.txt"):
        (project.root / child).unlink()
    forced = project.invoke("backup", "--force", env={"BACKUP_NOW": "2026-01-02T00:00:00Z"})
    again = project.invoke("backup", env={"BACKUP_NOW": "2026-01-03T00:00:00Z"})

    for ran in (forced, again):
        assert ran.code == 0, ran.output
        assert f"1 older archive(s) that hold files were kept ({full.name} the newest), and no remote copy was " in (
            ran.output
        ), ran.output
    assert full in project.archives()
    assert (project.root / "nas" / "t" / full.name).exists()


def test_exclude_matching_a_file_targets_own_file_is_said_to_do_nothing(project: Project) -> None:
    # exclude: ['*'] on a target that is one file archived it, exit 0, without a word.
    project.file("notes.txt", "notes\n")
    project.write_manifest("version: 1\ntargets: [{name: notes, path: notes.txt, exclude: ['*']}]\n")
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    assert (
        "[WARNING] [notes] exclude matches notes.txt, but a target that is one file is archived whatever exclude "
        "says (it picks files out of a folder)" in ran.output
    ), ran.output
    assert len(project.archives()) == 1


@pytest.mark.parametrize("case", ["folder of its own name", "unreadable archive", "another file"])
def test_a_second_backup_that_is_no_change_of_kind_is_not_refused(project: Project, case: str) -> None:
    # Each was refused as a change between file and folder:
    # - data/data archives as one member named like the folder, as a file target named data
    #   would: every run after the first failed, "src/data is now a folder, but ... holds the file";
    # - a newest archive whose directory cannot be read was said to "hold a folder", and no new
    #   archive could be made while it was the newest;
    # - a file target whose path changed to another file (no record of the source there to tell
    #   the change, as in destinations made before it) holds one member of another name.
    from backup_core.stores import archives

    path = {"folder of its own name": "src/data", "unreadable archive": "src/a.txt", "another file": "src/n.txt"}[case]
    project.file("src/data/data" if case == "folder of its own name" else path, "first\n")
    project.write_manifest(f"version: 1\ntargets: [{{name: t, path: {path}}}]\n")
    assert project.invoke("backup").code == 0
    [archive] = project.archives()
    if case == "folder of its own name":
        project.file("src/data/data", "second\n")
    elif case == "unreadable archive":
        data = bytearray(archive.read_bytes())
        at = data.rindex(b"PK\x01\x02")
        data[at + 28 : at + 30] = (0xFFFF).to_bytes(2, "little")  # its name's length, past the directory's end
        archive.write_bytes(bytes(data))
        project.file(path, "second\n")
    else:
        archives._origin_path(project.root / "backups", "t").unlink()
        project.file("src/other/o.txt", "other\n")
        project.write_manifest("version: 1\ntargets: [{name: t, path: src/other/o.txt}]\n")
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    assert len(project.archives()) == 2
