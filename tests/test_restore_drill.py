"""What a restore drill found: restore through the real `invoke`, during an incident.

Broken newest archives, damaged remote copies and members, modes, names with control
characters, advice that names the real obstacle, `./` in --member, and the scratch
folders a killed remote restore leaves.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import INVOKE, NOT_A_FILE, REPO, Project, Ran, archive_file_name, flow, place_not_a_file, run_invoke

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and names")


def _manifest(project: Project, **target: object) -> None:
    project.write_manifest(f"version: 1\ntargets: [{flow({'name': 't', 'path': 'src', **target})}]\n")


def _backed_up(project: Project, times: int = 1) -> list[Path]:
    project.file("src/a.txt", "first\n")
    project.file("src/sub/b.txt", "second\n")
    _manifest(project)
    for _ in range(times):
        ran = project.invoke("backup")
        assert ran.code == 0, ran.output
    return project.archives(target="t")


def _one_line(ran: Ran) -> str:
    assert "Traceback" not in ran.output, ran.output
    (line,) = [x for x in ran.output.splitlines() if not x.startswith("  [WARNING]")]
    return line


# --- 1. a cut-short newest archive -----------------------------------------------------------------


@pytest.mark.parametrize("keep", ["half", "nothing"])
def test_the_default_restore_passes_over_a_cut_short_newest_archive(project: Project, keep: str) -> None:
    older, newest = _backed_up(project, times=2)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if keep == "half" else b"")
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to))

    assert ran.code == 0, ran.output
    assert f"[WARNING] [t] passed over {newest.name}: it is not a whole archive (" in ran.output
    assert f"restored: [t] => {older.name} -> " in ran.output
    assert (to / "a.txt").read_text() == "first\n"


@pytest.mark.parametrize("kind", list(NOT_A_FILE))
def test_the_default_restore_passes_over_what_is_no_file_under_the_newest_name(project: Project, kind: str) -> None:
    # A dangling link or a folder under the newest archive's name failed the restore ("cannot
    # open ...: No such file or directory"), and a named pipe made it wait forever.
    (older,) = _backed_up(project)
    odd = older.with_name(archive_file_name("t", datetime.now(timezone.utc)))
    place_not_a_file(odd, kind)
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to), timeout=120)

    assert ran.code == 0, ran.output
    assert f"[WARNING] [t] passed over {odd.name}: it is not a whole archive (it is {NOT_A_FILE[kind]}" in ran.output
    assert f"restored: [t] => {older.name} -> " in ran.output
    assert (to / "a.txt").read_text() == "first\n"


def test_a_restore_with_no_whole_archive_fails_in_one_line(project: Project) -> None:
    (only,) = _backed_up(project)
    only.write_bytes(only.read_bytes()[:100])
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to))

    assert ran.code == 1, ran.output
    line = _one_line(ran)
    assert line.startswith(f"failed: [t] => no whole archive of t in {project.root / 'backups'}: {only.name}")
    assert not to.exists()


def test_naming_a_cut_short_archive_says_so_and_names_the_newest_whole_one(project: Project) -> None:
    older, newest = _backed_up(project, times=2)
    newest.write_bytes(newest.read_bytes()[:-30])
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to), "--archive", newest.name)

    assert ran.code == 1, ran.output
    line = _one_line(ran)
    assert f"--archive {newest.name} is cut short or damaged (" in line
    assert line.endswith(f"restore the newest whole archive instead: --archive {older.name}")
    assert not to.exists()


def test_an_archive_name_that_is_not_there_lists_the_newest_first(project: Project) -> None:
    project.file("src/a.txt", "first\n")
    _with_folder_remote(project, project.root / "nas")
    (project.root / "nas").mkdir()
    for _ in range(2):
        ran = project.invoke("backup")
        assert ran.code == 0, ran.output
    older, newest = project.archives(target="t")
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to), "--archive", "nope.zip")

    assert ran.code == 2, ran.output
    assert f"not an archive of t; the newest are (newest first): {newest.name}, {older.name}" in ran.stderr
    assert not to.exists()


# --- 2. a damaged newest copy on a remote --------------------------------------------------------


def _with_folder_remote(project: Project, nas: Path) -> None:
    remote = {"type": "folder", "path": str(nas), "prefix": "host1/"}
    target = {"name": "t", "path": "src", "offsite": ["nas"]}
    project.write_manifest(f"version: 1\nremotes:\n  nas: {flow(remote)}\ntargets: [{flow(target)}]\n")


@pytest.mark.parametrize(
    ("when_put_back", "said"),
    [
        # Rot: the file's time moves, its recorded checksum stays; the record alone tells.
        (False, "does not match the checksum recorded"),
        # Same size, and its time put back before its checksum file's: only the download tells.
        (True, "on remote nas is not the copy uploaded"),
    ],
)
def test_a_damaged_newest_remote_copy_restores_nothing_and_names_the_older_one(
    project: Project, when_put_back: bool, said: str
) -> None:
    nas = project.root / "nas"
    nas.mkdir()
    project.file("src/a.txt", "first\n")
    _with_folder_remote(project, nas)
    for _ in range(2):
        ran = project.invoke("backup")
        assert ran.code == 0, ran.output
    older, newest = sorted(p for p in (nas / "host1" / "t").iterdir() if p.suffix == ".zip")
    was = newest.stat()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    if when_put_back:
        os.utime(newest, ns=(was.st_atime_ns, was.st_mtime_ns))
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to), "--remote", "nas")

    assert ran.code == 1, ran.output
    line = _one_line(ran)
    assert line.startswith(f"failed: [t] => {newest.name} {said}"), line
    assert "nothing was restored" in line
    assert line.endswith(f"restore it with --archive {older.name}"), line
    assert not to.exists()
    # Named by the operator, the damaged copy is refused with the general advice.
    ran = project.invoke("restore", "t", "--to", str(to), "--remote", "nas", "--archive", newest.name)
    assert ran.code == 1, ran.output
    assert "nothing is taken from it" in _one_line(ran) and "take another with --archive NAME" in _one_line(ran)
    assert not to.exists()
    # The copy it names restores.
    ran = project.invoke("restore", "t", "--to", str(to), "--remote", "nas", "--archive", older.name)
    assert ran.code == 0, ran.output
    assert (to / "a.txt").read_text() == "first\n"


# --- 3. damaged members: the intact ones are still restored --------------------------------------


def _spoil(archive: Path, member: str) -> None:
    """Make `member`'s deflate stream begin with a block of the reserved type: it does not inflate."""
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data[info.header_offset + 30 + name_length + extra_length] = 0xFF  # BFINAL 1, BTYPE 11
    archive.write_bytes(bytes(data))


def test_damaged_members_are_left_out_and_every_intact_one_restored(project: Project) -> None:
    for name in ("a.txt", "m1.txt", "m2.txt", "m3.txt", "m4.txt", "sub/z.txt", "zz.txt"):
        project.file(f"src/{name}", f"{name} as archived\n" * 200)
    sub = project.root / "src" / "sub"
    if os.name == "posix":
        sub.chmod(0o750)
    os.utime(sub, (1_700_000_000, 1_700_000_000))
    _manifest(project)
    assert project.invoke("backup").code == 0
    (archive,) = project.archives(target="t")
    for name in ("m1.txt", "m2.txt", "m3.txt", "m4.txt"):
        _spoil(archive, name)
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to))

    assert ran.code == 1, ran.output
    line = _one_line(ran)
    assert line.startswith(f"failed: [t] => 4 members of {archive} are damaged and were left out: m1.txt (Error -3")
    assert "m3.txt (Error -3" in line and " and 1 more; " in line
    assert f"the other 4 members were restored into {to}" in line  # a.txt, sub/, sub/z.txt, zz.txt
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*")) == ["a.txt", "sub", "sub/z.txt", "zz.txt"]
    assert (to / "zz.txt").read_text() == "zz.txt as archived\n" * 200
    assert (to / "sub").stat().st_mtime == 1_700_000_000
    if os.name == "posix":
        assert stat.S_IMODE((to / "sub").stat().st_mode) == 0o750


# --- 4. a mode of 0000 ---------------------------------------------------------------------------


def _crafted(project: Project, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """A zip under a valid archive name of target t (which backs up src)."""
    _manifest(project)
    destination = project.root / "backups"
    destination.mkdir(parents=True, exist_ok=True)
    archive = destination / archive_file_name("t", datetime(2026, 1, 1, tzinfo=timezone.utc))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        for info, data in members:
            opened.writestr(info, data)
    return archive


@posix_only
def test_a_member_archived_with_mode_0000_comes_back_0000(project: Project) -> None:
    locked = zipfile.ZipInfo("locked.txt", (2025, 6, 1, 12, 0, 0))
    locked.create_system = 3
    locked.external_attr = stat.S_IFREG << 16  # mode 0000, as unzip restores it
    _crafted(project, [(locked, b"no one may read this\n"), ("plain.txt", b"plain\n")])
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to))

    assert ran.code == 0, ran.output
    assert stat.S_IMODE((to / "locked.txt").lstat().st_mode) == 0
    assert stat.S_IMODE((to / "plain.txt").lstat().st_mode) == 0o600
    (to / "locked.txt").chmod(0o600)
    assert (to / "locked.txt").read_bytes() == b"no one may read this\n"


# --- 5. control characters in names --------------------------------------------------------------


@posix_only
def test_restore_messages_escape_control_characters_in_names_as_verify_does(project: Project) -> None:
    archive = _crafted(project, [("new\nline.txt", b"x\n" * 500), ("ok.txt", b"ok\n")])
    to = project.root / "out"
    project.file("out/new\nline.txt", "already here\n")

    ran = project.invoke("restore", "t", "--to", str(to))
    assert ran.code == 2, ran.output
    assert len(ran.stderr.strip().splitlines()) == 1, ran.output  # no line forged by the name
    assert "new\\nline.txt already exists" in ran.stderr

    ran = project.invoke("restore", "t", "--to", str(to), "--member", "ok\x1b[31m.txt")
    assert ran.code == 2, ran.output
    assert "\x1b" not in ran.output and "--member ok\\x1b[31m.txt: no such file or folder" in ran.stderr

    (to / "new\nline.txt").unlink()
    _spoil(archive, "new\nline.txt")
    ran = project.invoke("restore", "t", "--to", str(to))
    assert ran.code == 1, ran.output
    assert _one_line(ran).startswith("failed: [t] => new\\nline.txt in ")


# --- 7. --member as a shell completes it -----------------------------------------------------------


@pytest.mark.parametrize(("member", "restored"), [("./a.txt", ["a.txt"]), ("./sub/", ["sub", "sub/b.txt"])])
def test_member_accepts_a_leading_dot_slash_and_a_trailing_slash(
    project: Project, member: str, restored: list[str]
) -> None:
    _backed_up(project)
    to = project.root / "out"

    ran = project.invoke("restore", "t", "--to", str(to), "--member", member)

    assert ran.code == 0, ran.output
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*")) == restored


# --- 6. advice that names the real obstacle ------------------------------------------------------


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["without --force", "with --force"])
def test_a_folder_where_a_file_goes_is_named_and_force_is_not_suggested(project: Project, force: list[str]) -> None:
    _backed_up(project)
    to = project.root / "out"
    project.file("out/a.txt/kept.txt", "the folder's own file\n")

    ran = project.invoke("restore", "t", "--to", str(to), *force)

    assert ran.code == 2, ran.output
    assert f"{to / 'a.txt'} is a folder where the archive has a file; nothing was restored" in ran.stderr
    assert "--force" not in ran.output
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*")) == ["a.txt", "a.txt/kept.txt"]


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_a_file_on_the_way_to_the_restore_folder_is_the_one_named(project: Project, remote: bool) -> None:
    nas = project.root / "nas"
    nas.mkdir()
    project.file("src/a.txt", "first\n")
    _with_folder_remote(project, nas)
    assert project.invoke("backup").code == 0
    blocker = project.file("blocker", "not a folder\n")
    to = blocker / "deeper" / "out"

    ran = project.invoke("restore", "t", "--to", str(to), *(["--remote", "nas"] if remote else []))

    assert ran.code == 2, ran.output
    assert f"--to {to}: {blocker} is a file, not a folder" in ran.stderr, ran.output
    assert blocker.read_text() == "not a folder\n"


def _small_fs_free(small_fs: Path) -> int:
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize if hasattr(os, "statvfs") else 0
    if not 0 < free <= 64 << 20:  # CI mounts 16 MiB
        pytest.skip(f"{small_fs} has {free} bytes free; too many to fill in a test")
    return free


def test_a_full_disk_names_the_file_and_says_space_ran_out(project: Project, small_fs: Path) -> None:
    to = small_fs / f"restore-test-{os.getpid()}-{project.root.name}"
    free = _small_fs_free(small_fs)
    for number in range(4):
        project.file(f"src/part{number}.bin", os.urandom(free // 3))
    _manifest(project)
    assert project.invoke("backup").code == 0
    try:
        ran = project.invoke("restore", "t", "--to", str(to))

        assert ran.code == 1, ran.output
        line = _one_line(ran)
        assert "the disk ran out of space while writing " in line and "part" in line, line
        assert " in all (what it holds uncompressed): free that much on the disk that holds " in line
        assert "choose a folder" not in line
        assert not [p for p in to.rglob(".*restore-partial")]
    finally:
        shutil.rmtree(to, ignore_errors=True)


def _writes_refused() -> bool:
    """False for root (or anyone who can write in a folder of mode 0555): the test could not fail."""
    import tempfile

    if os.name != "posix":
        return False
    with tempfile.TemporaryDirectory() as folder:
        closed = Path(folder) / "closed"
        closed.mkdir(mode=0o555)
        try:
            (closed / "probe").write_bytes(b"x")
        except PermissionError:
            return True
        finally:
            closed.chmod(0o755)
        return False


def test_a_full_disk_in_a_remote_restore_counts_the_downloaded_copy_it_holds(project: Project, small_fs: Path) -> None:
    # The line asked to free the uncompressed size alone, while the downloaded copy took as
    # much again on the same disk until the restore ended: freeing that much was not enough.
    pyrage = pytest.importorskip("pyrage")
    to = small_fs / f"restore-test-{os.getpid()}-{project.root.name}"
    free = _small_fs_free(small_fs)
    for number in range(2):
        project.file(f"src/part{number}.bin", os.urandom(free * 3 // 10))  # the copy fits; with it, the restore not
    identity = pyrage.x25519.Identity.generate()
    key = project.file("key.txt", f"{identity}\n")
    remote = {"type": "folder", "path": "nas", "encryption": {"recipients": [str(identity.to_public())]}}
    target = {"name": "t", "path": "src", "offsite": ["nas"]}
    project.write_manifest(f"version: 1\nremotes:\n  nas: {flow(remote)}\ntargets: [{flow(target)}]\n")
    (project.root / "nas").mkdir()
    assert project.invoke("backup").code == 0
    try:
        ran = project.invoke("restore", "t", "--to", str(to), "--remote", "nas", "--identity", str(key))

        assert ran.code == 1, ran.output
        line = _one_line(ran)
        assert "the disk ran out of space while writing " in line, line
        needs = re.search(r"the restore needs ([\d.]+) MB in all \(what it holds uncompressed, and ([\d.]+) MB", line)
        assert needs, line
        assert float(needs.group(1)) * 1e6 > free  # what it truly needs there
        assert float(needs.group(2)) * 1e6 > free * 6 // 10
        assert not list(small_fs.glob(".backup-fetch-*"))
    finally:
        shutil.rmtree(to, ignore_errors=True)


@pytest.mark.skipif(not _writes_refused(), reason="root may read anything")
def test_an_unreadable_archive_is_named_in_the_systems_words(project: Project) -> None:
    # "cannot open …zip: [Errno 13] Permission denied: '…'": Python's text, not an operator's.
    _backed_up(project)
    [archive] = [p for p in (project.root / "backups").iterdir() if p.suffix == ".zip"]
    archive.chmod(0)
    try:
        ran = project.invoke("restore", "t", "--to", str(project.root / "out"))
    finally:
        archive.chmod(0o600)

    assert ran.code == 1, ran.output
    assert f"cannot read {archive}: Permission denied; run the restore as a user that can read it" in _one_line(ran)
    assert "Errno" not in ran.output


@pytest.mark.skipif(not _writes_refused(), reason="root may write anywhere")
def test_a_folder_this_user_may_not_write_in_is_named_with_the_file(project: Project) -> None:
    _backed_up(project)
    to = project.root / "out"
    (to / "sub").mkdir(parents=True)
    (to / "sub").chmod(0o555)
    try:
        ran = project.invoke("restore", "t", "--to", str(to))
    finally:
        (to / "sub").chmod(0o755)

    assert ran.code == 1, ran.output
    line = _one_line(ran)
    assert f"cannot write {to / 'sub' / 'b.txt'} (sub/b.txt in " in line
    assert f"this user may not write in {to / 'sub'}" in line and "choose a folder" not in line


@pytest.mark.skipif(not _writes_refused(), reason="root may write anywhere")
def test_a_remote_restore_into_a_folder_whose_parent_it_may_not_write_in_works(project: Project) -> None:
    # The scratch folder for the downloaded copy was made beside --to: "cannot restore into TO:
    # Permission denied (PARENT/.backup-fetch-…); choose a folder this user can create and
    # write", for a folder the user owns under one it does not (/srv/app under root's /srv).
    project.file("src/a.txt", "remote\n")
    target = {"name": "t", "path": "src", "offsite": ["nas"]}
    project.write_manifest(f"version: 1\nremotes:\n  nas: {{type: folder, path: nas}}\ntargets: [{flow(target)}]\n")
    (project.root / "nas").mkdir()
    assert project.invoke("backup").code == 0
    parent = project.root / "srv"
    to = parent / "app"
    to.mkdir(parents=True)
    parent.chmod(0o555)
    try:
        ran = project.invoke("restore", "t", "--to", str(to), "--remote", "nas")
        left = sorted(p.name for p in to.iterdir())
    finally:
        parent.chmod(0o755)

    assert ran.code == 0, ran.output
    assert (to / "a.txt").read_text(encoding="utf-8") == "remote\n"
    assert left == ["a.txt"]  # the scratch folder inside it is gone


# --- 8. scratch folders of killed remote restores -------------------------------------------------


def test_the_next_remote_restore_removes_a_killed_ones_scratch_folder_but_not_a_live_one(project: Project) -> None:
    pyrage = pytest.importorskip("pyrage")
    identity = pyrage.x25519.Identity.generate()
    key = project.file("key.txt", f"{identity}\n")
    project.file("src/big.bin", os.urandom(40 << 20))  # stored as is: restoring it takes a moment
    remote = {"type": "folder", "path": "nas", "encryption": {"recipients": [str(identity.to_public())]}}
    target = {"name": "t", "path": "src", "offsite": ["nas"]}
    project.write_manifest(f"version: 1\nremotes:\n  nas: {flow(remote)}\ntargets: [{flow(target)}]\n")
    (project.root / "nas").mkdir()
    assert project.invoke("backup").code == 0
    place = project.root / "restores"
    place.mkdir()
    restore = ["restore", "t", "--remote", "nas", "--identity", str(key)]

    killed = subprocess.Popen(
        [str(INVOKE), "--search-root", str(REPO), *restore[:1], "--manifest", str(project.manifest), *restore[1:],
         "--to", str(place / "first")],
        cwd=project.root, env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(place.glob(".backup-fetch-*/*.zip")):  # the decrypted archive
            assert killed.poll() is None and time.monotonic() < deadline, "the restore ended before it was killed"
            time.sleep(0.002)
    finally:
        killed.kill()  # SIGKILL: nothing of its own clean-up runs
        killed.wait()
    (left,) = place.glob(".backup-fetch-*")
    # A restore still at work beside it (holding its claim), and a folder an older version left.
    live = place / ".backup-fetch-live"
    live.mkdir()
    descriptor = os.open(live / "in-use", os.O_WRONLY | os.O_CREAT, 0o600)
    if os.name == "posix":
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX)
    unclaimed = place / ".backup-fetch-old"
    unclaimed.mkdir()
    try:
        ran = project.invoke(*restore, "--to", str(place / "second"))
        assert ran.code == 0, ran.output
        assert (place / "second" / "big.bin").read_bytes() == (project.root / "src" / "big.bin").read_bytes()
        assert not left.exists(), "the killed restore's scratch folder (a decrypted archive) is still there"
        assert live.is_dir() and (live / "in-use").exists(), "a live restore's scratch folder was removed"
        assert unclaimed.is_dir()
    finally:
        os.close(descriptor)


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None or os.name != "posix":
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0


def test_a_database_restore_that_cannot_take_its_place_keeps_the_live_ones_wal(project: Project) -> None:
    # The old database's -wal and -shm were deleted before the restored file's rename, which
    # could still fail: the commits only the -wal held were lost, the restore exiting 1.
    import sqlite3
    from contextlib import closing

    source = project.root / "db" / "app.db"
    source.parent.mkdir()
    with closing(sqlite3.connect(source)) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("INSERT INTO t VALUES ('archived')")
        connection.commit()
    project.write_manifest("version: 1\ntargets:\n  - {name: db, path: db/app.db}\n")
    assert project.invoke("backup").code == 0
    live = project.root / "live"
    live.mkdir()
    shutil.copy(source, live / "app.db")
    wal = live / "app.db-wal"
    wal.write_bytes(b"commits only this file holds")
    if not _chattr("+i", live / "app.db"):
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    try:
        ran = project.invoke("restore", "db", "--to", str(live), "--force")
    finally:
        _chattr("-i", live / "app.db")

    assert ran.code == 1, ran.output
    assert wal.read_bytes() == b"commits only this file holds"
    assert not [p.name for p in live.iterdir() if p.name.startswith(".")]


def test_a_restore_of_archives_made_of_another_source_says_so(project: Project) -> None:
    # Another manifest's target of the same name and destination: backup, prune and status fail
    # on it, while restore gave its archives back as this source's, without a word.
    project.file("src/a.txt", "of src\n")
    project.file("src2/b.txt", "of src2\n")
    project.write_manifest("version: 1\ntargets: [{name: big, path: src}]\n")
    assert project.invoke("backup").code == 0
    other = project.root / "other.yml"
    other.write_text("version: 1\ntargets: [{name: big, path: src2}]\n", encoding="utf-8")

    ran = run_invoke("restore", "big", "--to", "out", "--manifest", str(other), cwd=project.root)

    assert ran.code == 0, ran.output  # a recovery restores another host's archives: said, not refused
    warning = (
        f"[WARNING] [big] the archives of big in {project.root / 'backups'} were made from {project.root / 'src'}, "
        f"not of {project.root / 'src2'}"
    )
    assert warning in ran.output, ran.output
    assert (project.root / "out" / "a.txt").read_text(encoding="utf-8") == "of src\n"
    plain = project.invoke("restore", "big", "--to", "out2")
    assert plain.code == 0 and "WARNING" not in plain.output, plain.output


def test_a_restore_of_an_archive_of_nothing_says_so(project: Project) -> None:
    # "restored ... (0 files ...)", exit 0, and no word that an older archive holds the data.
    (project.root / "src").mkdir()
    project.write_manifest("version: 1\ntargets: [{name: site, path: src}]\n")
    assert project.invoke("backup").code == 0
    [archive] = project.archives()
    ran = project.invoke("restore", "site", "--to", "out")
    assert ran.code == 0, ran.output
    assert (
        f"[WARNING] [site] {archive.name} holds no file (an archive of an empty folder): nothing was restored; an "
        "older archive may hold the data: name it with --archive" in ran.output
    ), ran.output
