"""skip_unchanged at the cost of a metadata walk: when the recorded state decides, and when it must not.

Runs here use BACKUP_NOW in the future, so the files a test has just written are not
"racily" recent: their state can be trusted, and the metadata walk is what decides.
The JSON field `compared` says which comparison decided: "metadata" (a stat walk, no file
read) or "content" (a new archive compared with the newest one).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import time
import zipfile
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import INVOKE, REPO, Project

posix_only = pytest.mark.skipif(os.name == "nt", reason="Windows has no change time: contents always decide")

LATER = ["2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z", "2099-01-03T00:00:00Z", "2099-01-04T00:00:00Z"]


def make(project: Project, extra: str = "") -> Path:
    project.file("src/a.txt", "alpha\n" * 100)
    project.file("src/sub/c.txt", "gamma\n")
    source = project.file("src/sub/b.bin", bytes(range(256)) * 4)
    (project.root / "src" / "empty").mkdir()
    manifest(project, extra)
    return source


def manifest(project: Project, extra: str = "") -> None:
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: notes
            path: src
            skip_unchanged: true
            keep: {{last: 5}}
            {extra}
        """
    )


def backup(project: Project, now: str, *flags: str) -> dict[str, Any]:
    ran = project.invoke("backup", "--format", "json", *flags, env={"BACKUP_NOW": now})
    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output
    (result,) = ran.json()["targets"]
    return dict(result)


def state_file(project: Project) -> Path:
    return project.root / "backups" / ".notes.state"


@posix_only
def test_an_unchanged_source_is_ok_after_a_metadata_walk(project: Project) -> None:
    make(project)
    first = backup(project, LATER[0])
    assert (first["status"], first["compared"]) == ("changed", None)
    (archive,) = project.archives()
    assert state_file(project).is_file()

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"], second["archive"]) == ("ok", "metadata", str(archive))
    assert second["reason"] == f"unchanged since {archive.name}"
    assert (second["files"], second["bytes_in"]) == (first["files"], first["bytes_in"])
    assert project.archives() == [archive]
    assert not [p for p in archive.parent.iterdir() if p.name.endswith(".partial")]


@posix_only
def test_check_mode_predicts_an_unchanged_run_from_the_metadata_walk(project: Project) -> None:
    # With no archive yet there is nothing to be unchanged from: it said "unless unchanged" too.
    source = make(project)
    first = backup(project, LATER[0], "--check")
    assert (first["status"], first["reason"]) == ("changed", "would archive"), first
    # The preview said "would archive ... unless unchanged; would delete <oldest>" on a source
    # the run then found unchanged (ok, nothing deleted): Ansible's check mode reported changed.
    project.manifest.write_text(project.manifest.read_text(encoding="utf-8").replace("{last: 5}", "{last: 2}"))
    backup(project, LATER[0])
    backup(project, LATER[1], "--force")
    archives = project.archives()
    assert len(archives) == 2

    preview = backup(project, LATER[2], "--check")
    assert (preview["status"], preview["compared"], preview["deleted"]) == ("ok", "metadata", [])
    assert preview["reason"] == f"would archive nothing: unchanged since {archives[-1].name}"
    text = project.invoke("backup", "--check", env={"BACKUP_NOW": LATER[2]})
    assert f"ok: [notes] => would archive nothing: unchanged since {archives[-1].name}" in text.stdout
    assert "would delete nothing" in text.stdout
    # Forced, or once a file changed, it would archive, and keep {last: 2} then deletes the oldest.
    forced = backup(project, LATER[2], "--check", "--force")
    assert (forced["status"], forced["deleted"]) == ("changed", [archives[0].name])
    assert "unless" not in forced["reason"]
    source.write_bytes(b"new")
    touched = backup(project, LATER[2], "--check")
    assert (touched["status"], touched["deleted"]) == ("changed", [archives[0].name])
    assert touched["reason"] == "would archive unless unchanged (then delete nothing)"
    assert project.archives() == archives  # a preview writes and deletes nothing


@posix_only
def test_a_one_byte_change_with_its_mtime_put_back_is_seen_by_the_change_time(project: Project) -> None:
    source = make(project)
    backup(project, LATER[0])
    assert backup(project, LATER[1])["compared"] == "metadata"  # the state is trusted...
    before = source.stat()
    data = bytearray(source.read_bytes())
    data[500] ^= 0x01
    source.write_bytes(bytes(data))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = source.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)

    third = backup(project, LATER[2])

    # ...and only the change time differs: the metadata walk must not call this unchanged.
    assert (third["status"], third["compared"]) == ("changed", "content")
    with zipfile.ZipFile(third["archive"]) as archive:
        assert archive.read("sub/b.bin") == bytes(data)
    assert backup(project, LATER[3])["compared"] == "metadata"  # the new archive's state is recorded


@posix_only
@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes().replace(b'"entries": 5', b'"entries": 4')),  # its checksum fails
        lambda p: p.write_bytes(p.read_bytes()[:40]),
        lambda p: p.write_bytes(b"\xff\xfe not json"),
        lambda p: p.unlink(),
        lambda p: p.write_text("[]"),
    ],
    ids=["edited", "truncated", "garbage", "missing", "not-an-object"],
)
def test_a_damaged_or_missing_state_falls_back_to_comparing_contents(project: Project, damage: Any) -> None:
    make(project)
    backup(project, LATER[0])
    damage(state_file(project))

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("ok", "content")
    assert len(project.archives()) == 1
    assert backup(project, LATER[2])["compared"] == "metadata"  # written again, beside the matched archive


@posix_only
def test_an_edited_state_that_says_unchanged_is_not_trusted(project: Project) -> None:
    source = make(project)
    backup(project, LATER[0])
    recorded = state_file(project).read_bytes()
    source.write_bytes(b"new content")
    backup(project, LATER[1])  # changed: a second archive and a new state
    state_file(project).write_bytes(recorded)  # the first state back: it names an archive that is not the newest

    third = backup(project, LATER[2])

    assert (third["status"], third["compared"]) == ("ok", "content")
    assert len(project.archives()) == 2


@posix_only
def test_a_newest_archive_replaced_by_hand_is_not_trusted(project: Project) -> None:
    make(project)
    backup(project, LATER[0])
    (archive,) = project.archives()
    with zipfile.ZipFile(archive, "a") as opened:
        opened.writestr("planted.txt", "not from the source\n")

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("changed", "content")
    assert len(project.archives()) == 2


@pytest.mark.parametrize("how", ["copied over", "moved over"])
def test_a_newest_archive_written_over_by_an_older_whole_one_of_its_size_is_not_unchanged_from(
    project: Project, how: str
) -> None:
    # The state knew the archive by name and size: an older whole archive of the same size put
    # under the newest's name (a restore of the folder from another backup) passed for it, and
    # a changed source was `ok`, unchanged, with only the old contents archived.
    source = project.file("src/f.txt", "aaaa\n")
    manifest(project)
    backup(project, LATER[0])
    (old,) = project.archives()
    kept = project.root / "old.zip"
    kept.write_bytes(old.read_bytes())
    source.write_text("bbbb\n", encoding="utf-8")
    assert backup(project, LATER[1])["status"] == "changed"
    assert backup(project, LATER[2])["compared"] == "metadata"
    newest = project.archives()[-1]
    assert newest.stat().st_size == kept.stat().st_size  # the premise: one size for both
    if how == "copied over":
        newest.write_bytes(kept.read_bytes())
    else:
        kept.replace(newest)

    fourth = backup(project, LATER[3])

    assert (fourth["status"], fourth["compared"]) == ("changed", "content"), fourth
    assert zipfile.ZipFile(project.archives()[-1]).read("f.txt") == b"bbbb\n"


@posix_only
@pytest.mark.parametrize("how", ["zeroed", "overwritten"])
def test_a_newest_archive_damaged_in_place_is_not_unchanged_from(project: Project, how: str) -> None:
    # The state names the archive and its size: both stay when it is zeroed, or overwritten with
    # as many other bytes (a new file moved over it); then status and restore pass it over, so
    # "unchanged" would leave the source in no readable archive, run after run.
    make(project)
    backup(project, LATER[0])
    assert backup(project, LATER[1])["compared"] == "metadata"
    (archive,) = project.archives()
    size = archive.stat().st_size
    if how == "zeroed":
        with archive.open("r+b") as file:
            file.write(bytes(size))
    else:
        other = archive.with_name("other")
        other.write_bytes(os.urandom(size))
        other.replace(archive)

    third = backup(project, LATER[2])

    assert third["status"] == "changed", third
    newest = project.archives()[-1]
    assert newest != archive and zipfile.ZipFile(newest).testzip() is None
    assert "a.txt" in zipfile.ZipFile(newest).namelist()
    assert backup(project, LATER[3])["compared"] == "metadata"  # the new one is the baseline now


@posix_only
def test_a_changed_exclude_makes_a_new_archive(project: Project) -> None:
    make(project)
    backup(project, LATER[0])
    manifest(project, extra='exclude: ["c.txt"]')

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("changed", "content")
    with zipfile.ZipFile(second["archive"]) as archive:
        assert "sub/c.txt" not in archive.namelist()
        assert "a.txt" in archive.namelist()


@posix_only
def test_a_changed_setting_is_decided_by_content(project: Project) -> None:
    make(project)
    backup(project, LATER[0])
    manifest(project, extra="compression: {level: 6}")

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("ok", "content")  # the same files, however deflated
    assert backup(project, LATER[2])["compared"] == "metadata"


@posix_only
@pytest.mark.skipif(os.name != "nt" and os.geteuid() != 0, reason="giving a file away takes root")
def test_a_new_owner_alone_makes_a_new_archive(project: Project) -> None:
    # Contents, sizes and modes the same: before, the comparison said ok, recorded the new state,
    # and a restore as root gave the files their old owner for ever after.
    source = make(project)
    backup(project, LATER[0])
    os.chown(source, 4321, 4321)

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("changed", "content")
    with zipfile.ZipFile(second["archive"]) as archive:
        extra = archive.getinfo("sub/b.bin").extra
    assert struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, 4321, 4, 4321) in extra


@posix_only
def test_a_link_replaced_by_a_file_holding_its_target_is_a_new_state(project: Project) -> None:
    make(project)
    link = project.root / "src" / "current"
    link.symlink_to("a.txt")
    backup(project, LATER[0])
    mode = link.lstat().st_mode & 0o7777
    link.unlink()
    link.write_text("a.txt")  # the same bytes as the link's member, and the same permissions
    link.chmod(mode)

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"]) == ("changed", "content")


@posix_only
def test_force_archives_and_records_the_new_state(project: Project) -> None:
    make(project)
    backup(project, LATER[0])

    forced = backup(project, LATER[1], "--force")

    assert (forced["status"], forced["compared"]) == ("changed", None)
    assert len(project.archives()) == 2
    after = backup(project, LATER[2])
    assert (after["status"], after["compared"], after["archive"]) == ("ok", "metadata", forced["archive"])


@posix_only
def test_a_file_written_just_before_the_run_is_decided_by_content(project: Project) -> None:
    make(project)
    # The clock of the run is the real one: the files were written within the last seconds, so a
    # write in the same clock tick as the first run's read could hide from the metadata.
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    backup(project, now)

    second = backup(project, now)

    assert (second["status"], second["compared"]) == ("ok", "content")


@posix_only
def test_a_file_dated_past_2262_is_archived_and_then_found_unchanged(project: Project) -> None:
    # Its time in nanoseconds does not fit 64 signed bits: the state's record of it failed
    # every run of the target ("unexpected error: argument out of range"), and no archive was made.
    source = make(project)
    far = 10_000_000_000 * 10**9  # 2286-11-20
    try:
        os.utime(source, ns=(far, far))
    except (OSError, OverflowError):
        pytest.skip("this file system does not keep times past 2262")
    first = backup(project, LATER[0])
    second = backup(project, LATER[1])
    with (project.root / "src" / "sub" / "b.bin").open("r+b") as changed:
        changed.write(b"!")
    os.utime(source, ns=(far, far))
    third = backup(project, LATER[2])

    assert first["status"] == "changed"
    assert (second["status"], second["compared"]) == ("ok", "metadata")
    assert third["status"] == "changed"  # the change time saw the byte


@posix_only
def test_a_removed_file_and_a_new_empty_folder_are_seen(project: Project) -> None:
    make(project)
    backup(project, LATER[0])
    (project.root / "src" / "sub" / "c.txt").unlink()
    changed = backup(project, LATER[1])
    assert (changed["status"], changed["compared"]) == ("changed", "content")
    assert backup(project, LATER[2])["compared"] == "metadata"
    (project.root / "src" / "new-empty").mkdir()

    third = backup(project, LATER[3])

    assert (third["status"], third["compared"]) == ("changed", "content")


def test_a_database_is_always_compared_by_its_snapshot(project: Project) -> None:
    make(project)
    with closing(sqlite3.connect(project.root / "src" / "app.db")) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO t (body) VALUES (?)", [(f"row {i}",) for i in range(100)])
        connection.commit()
    backup(project, LATER[0])

    second = backup(project, LATER[1])

    assert (second["status"], second["compared"], second["databases"]) == ("ok", "content", 1)


def test_without_skip_unchanged_no_state_is_kept(project: Project) -> None:
    make(project)
    project.write_manifest(project.manifest.read_text().replace("skip_unchanged: true", "skip_unchanged: false"))
    first = backup(project, LATER[0])
    second = backup(project, LATER[1])
    assert (first["compared"], second["status"], second["compared"]) == (None, "changed", None)
    assert not state_file(project).exists()


# --- a large tree: the walk's last chunks in a helper process -------------------------------------

# Imported by the helper process at its start (the test's folder is on its PYTHONPATH): it logs
# its process id, and as a test asks, dies, answers "different" whatever it walks, or takes a
# minute over its walk (logging "walking" first).
_SITE = """
import os, sys, time
if "backup_core.stores.statewalk" in sys.orig_argv:
    def log(line):
        with open(os.environ["HELPER_LOG"], "a") as file:
            file.write(line + "\\n")
    log(str(os.getpid()))
    behaviour = os.environ.get("HELPER")
    if behaviour == "dies":
        os._exit(3)
    if behaviour == "says-different":
        from backup_core.stores import state
        state.Recorder.finish = lambda self: False
    if behaviour == "slow":
        from backup_core.sources import walk
        whole = walk.entries
        def slow(*args):
            log("walking")
            time.sleep(60)
            return whole(*args)
        walk.entries = slow
"""


def large(project: Project, folders: int = 30, files: int = 300) -> Path:
    """9,030 entries: three chunks of the state's 4,096, the last one walked by the helper."""
    for d in range(folders):
        folder = project.root / "src" / f"d{d:02}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"f{f:03}.txt").write_bytes(b"x")
    manifest(project)
    return project.root / "src"


def helper_env(project: Project, now: str, behaviour: str = "") -> dict[str, str]:
    """The environment of a backup whose check splits from two chunks, its helper logging to helpers.log."""
    site = project.root / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    log = project.root / "helpers.log"
    log.write_text("")
    # The helper starts without the site module unless told to: sitecustomize needs it.
    return {"BACKUP_SPLIT_WALK_FROM": "2", "PYTHONPATH": str(site), "HELPER_LOG": str(log), "BACKUP_NOW": now,
            "HELPER": behaviour, "BACKUP_CHILD_SITE": "1"}  # fmt: skip


def helped(project: Project, now: str, behaviour: str = "") -> tuple[dict[str, Any], list[str]]:
    """A backup whose check splits from two chunks, with the helper processes it started."""
    ran = project.invoke("backup", "--format", "json", env=helper_env(project, now, behaviour))
    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output
    (result,) = ran.json()["targets"]
    return dict(result), (project.root / "helpers.log").read_text().split()


@posix_only
def test_a_large_unchanged_tree_is_walked_by_two_processes(project: Project) -> None:
    large(project)
    first = backup(project, LATER[0])

    second, helpers = helped(project, LATER[1])

    assert (second["status"], second["compared"]) == ("ok", "metadata")
    assert len(helpers) == 1  # the helper ran, and was the only one
    assert (second["files"], second["directories"], second["bytes_in"]) == (9000, first["directories"], 9000)
    assert len(project.archives()) == 1


@posix_only
@pytest.mark.parametrize("where", ["d00/f000.txt", "d29/f299.txt"], ids=["command's-part", "helper's-part"])
def test_a_one_byte_change_with_its_mtime_put_back_is_seen_in_either_part(project: Project, where: str) -> None:
    source = large(project) / where
    backup(project, LATER[0])
    before = source.stat()
    source.write_bytes(b"y")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))

    second, helpers = helped(project, LATER[1])

    assert (second["status"], second["compared"]) == ("changed", "content")
    if where.startswith("d29"):
        assert len(helpers) == 1
    else:  # a difference in the command's part ends the check at once: the helper may be stopped before it logs
        assert len(helpers) <= 1
    with zipfile.ZipFile(project.archives()[-1]) as archive:
        assert archive.read(f"{where}") == b"y"


@posix_only
@pytest.mark.parametrize("change", ["remove", "add"])
def test_an_entry_removed_or_added_in_the_helpers_part_is_seen(project: Project, change: str) -> None:
    root = large(project)
    backup(project, LATER[0])
    if change == "remove":
        (root / "d29" / "f150.txt").unlink()
    else:
        (root / "d29" / "f150b.txt").write_bytes(b"x")

    second, helpers = helped(project, LATER[1])

    assert (second["status"], second["files"]) == ("changed", 8999 if change == "remove" else 9001)
    assert len(helpers) == 1


@posix_only
def test_a_helper_that_dies_leaves_its_part_to_the_command(project: Project) -> None:
    source = large(project) / "d29" / "f299.txt"
    backup(project, LATER[0])

    second, helpers = helped(project, LATER[1], "dies")
    assert (second["status"], second["compared"]) == ("ok", "metadata")  # walked by the command alone
    assert len(helpers) == 1

    before = source.stat()
    source.write_bytes(b"y")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    third, _ = helped(project, LATER[2], "dies")
    assert third["status"] == "changed"


@posix_only
def test_the_helpers_answer_decides_its_part(project: Project) -> None:
    large(project)
    backup(project, LATER[0])

    second, helpers = helped(project, LATER[1], "says-different")

    # Nothing changed, but the helper says its part did: the contents are compared.
    assert (second["status"], second["compared"]) == ("ok", "content")
    assert len(helpers) == 1


@posix_only
def test_a_tree_of_exactly_two_chunks_is_split_at_the_boundary(project: Project) -> None:
    large(project, folders=32, files=255)  # 32 + 32 * 255 = 8,192 entries
    first = backup(project, LATER[0])

    second, helpers = helped(project, LATER[1])

    assert (second["status"], second["compared"], second["files"]) == ("ok", "metadata", 8160)
    assert first["files"] == 8160
    assert len(helpers) == 1


@posix_only
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_a_helper_stops_with_the_command(project: Project, how: signal.Signals) -> None:
    large(project)
    backup(project, LATER[0])
    env = {**os.environ, "NO_COLOR": "1", **helper_env(project, LATER[1], "slow")}
    command = [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = project.root / "helpers.log"
        deadline = time.monotonic() + 60
        while "walking" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        helper = int(log.read_text().split()[0])
        process.send_signal(how)
        out, err = process.communicate(timeout=30)  # not the helper's minute

        assert process.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL)
        if how == signal.SIGINT:
            assert "interrupted" in out and "Traceback" not in out + err
        deadline = time.monotonic() + 10
        while _alive(helper):
            assert time.monotonic() < deadline, "the helper outlived the command"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _alive(pid: int) -> bool:
    if Path("/proc/self").exists():  # Linux: a zombie (stopped, its parent gone) counts as stopped
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_walk_started_at_any_member_is_the_rest_of_the_whole_walk(tmp_path: Path) -> None:
    from backup_core.sources.walk import entries

    root = tmp_path / "src"
    for name in ["a/b/c.txt", "a/b/d/e.txt", "a/b.txt", "a-b/x", "ä/ü.txt", "z.txt", "a/b/d/f/g/h.txt", "skip/me"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "a" / "empty").mkdir()
    if os.name == "posix":
        (root / "a" / "link").symlink_to("b")
    whole = [e.name for e in entries(root, "folder", ("skip",))]
    assert "a/b/d/f/g/h.txt" in whole and not any(n.startswith("skip") for n in whole)
    for at, name in enumerate(whole):
        assert [e.name for e in entries(root, "folder", ("skip",), name)] == whole[at:], name
    assert list(entries(root, "folder", (), "a/nothing/here.txt")) == []  # the way is gone


@posix_only
def test_the_helper_starts_without_the_site_module_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The helper runs `python -S`: every module it imports must come from the standard library or
    # this package.  A real child, asked as the check asks it (no sitecustomize: none would run).
    from backup_core.sources.walk import entries
    from backup_core.stores import state, statewalk

    monkeypatch.delenv("BACKUP_CHILD_SITE", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    source = tmp_path / "src"
    for d in range(10):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(500):
            (source / f"d{d}" / f"f{f:03}").write_bytes(b"x")
    now = time.time_ns() + 10**12  # every entry older than the racy window
    recorded = state.Recorder("", now)
    assert recorded.add_all(entries(source, "folder", ())) and recorded.finish()
    assert len(recorded.chunks) == 2

    with statewalk.Helper(source, (), recorded.chunks[1:], state.CHUNK, now) as helper:
        answer = helper.result()

    assert answer is not None and answer.same
    assert answer.tallies[0] == recorded.count - state.CHUNK  # it walked the second chunk, all of it
