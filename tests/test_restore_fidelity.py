"""Every archive the tool makes, the tool restores, as it was: names, links, modes, times, owners.

Each case is backed up, verified and restored through the real `invoke` command, and
the restored tree compared with the source byte for byte and stat for stat.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import Project, archive_file_name, needs

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX names, modes and owners")
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="owners are restored as root")


def _manifest(project: Project, path: str = "src") -> None:
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: t
            path: {path}
        """
    )


def _tree(root: Path) -> dict[bytes, tuple[str, int, int, int, int, bytes]]:
    """Every entry under `root` by its name's bytes: kind, mode, mtime, owner, group, content."""
    found = {}
    pending = [root]
    while pending:  # iterative: the deep-tree case is 1,500 levels
        folder = pending.pop()
        for path in folder.iterdir():
            st = path.lstat()
            if path.is_symlink():
                kind, content = "link", os.fsencode(path.readlink())
            elif path.is_dir():
                kind, content = "dir", b""
                pending.append(path)
            else:
                kind, content = "file", path.read_bytes()
            mtime = 0 if kind == "link" else int(st.st_mtime)
            relative = os.fsencode(path.relative_to(root))
            found[relative] = (kind, stat.S_IMODE(st.st_mode), mtime, st.st_uid, st.st_gid, content)
    return found


def _round_trip(project: Project) -> tuple[dict[bytes, tuple[str, int, int, int, int, bytes]], Path]:
    """Back up src, verify, restore into out; both trees as _tree sees them."""
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    ran = project.invoke("verify")
    assert ran.code == 0, ran.output
    out = project.root / "out"
    ran = project.invoke("restore", "t", "--to", str(out))
    assert ran.code == 0, ran.output
    return _tree(project.root / "src"), out


@posix_only
def test_names_with_colons_backslashes_255_bytes_and_no_utf8_come_back_byte_for_byte(project: Project) -> None:
    src = project.root / "src"
    names = [
        b"cur/1700000000.M1P2.host:2,S",  # every Maildir message
        b"back\\slash\\..\\..\\name.txt",  # on POSIX, one file name
        b"C:drive-like.txt",
        b"l" * 240,
        b"m" * 255,  # as long as a name can be: the temporary name must be shorter
        "é".encode() * 127 + b"x",  # 255 bytes of UTF-8
        b"caf\xe9-latin1.txt",  # not UTF-8
        b"dir\xff/inside.txt",
    ]
    for name in names:
        path = src / os.fsdecode(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name)
    _manifest(project)
    source, out = _round_trip(project)
    assert _tree(out) == source
    for name in names:
        assert (out / os.fsdecode(name)).read_bytes() == name
    assert not [p for p in out.rglob("*") if "restore" in p.name]  # no temporary name left behind


@posix_only
def test_link_loops_legal_in_the_source_are_restored(project: Project) -> None:
    src = project.root / "src"
    src.mkdir()
    (src / "a").symlink_to("b")
    (src / "b").symlink_to("a")
    (src / "self").symlink_to("self")
    (src / "here").symlink_to(".")
    (src / "dir").mkdir()
    (src / "dir" / "up").symlink_to("..")
    (src / "dir" / "file.txt").write_text("x")
    _manifest(project)
    source, out = _round_trip(project)
    restored = _tree(out)
    assert restored == source
    assert (out / "a").readlink() == Path("b") and (out / "self").readlink() == Path("self")


@posix_only
def test_folder_modes_setgid_and_times_come_back(project: Project) -> None:
    src = project.root / "src"
    private, shared, closed = src / "private", src / "shared", src / "closed"
    for folder in (private, shared, closed):
        folder.mkdir(parents=True)
        (folder / "f.txt").write_text(folder.name)
    private.chmod(0o700)
    shared.chmod(0o2775)  # setgid: new files take the folder's group
    closed.chmod(0o500)  # read-only: must be filled before it is closed
    (private / "f.txt").chmod(0o640)
    for number, folder in enumerate((private, shared, closed, src)):
        when = datetime(2020, 1, 2 + number, tzinfo=timezone.utc).timestamp()
        os.utime(folder, (when, when))
    _manifest(project)
    try:
        source, out = _round_trip(project)
        restored = _tree(out)
        assert restored == source
        assert restored[b"shared"][1] == 0o2775 and restored[b"private"][1] == 0o700
        assert restored[b"closed"][1] == 0o500
        assert int((out / "closed").stat().st_mtime) == int(datetime(2020, 1, 4, tzinfo=timezone.utc).timestamp())
    finally:
        closed.chmod(0o700)  # so the temporary folder can be removed
        if (project.root / "out" / "closed").exists():
            (project.root / "out" / "closed").chmod(0o700)


@posix_only
@as_root
def test_owners_come_back_as_root_and_unzip_restores_them_too(project: Project) -> None:
    src = project.root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "owned.txt").write_text("x")
    (src / "link").symlink_to("sub/owned.txt")
    (src / "root.txt").write_text("r")
    os.chown(src / "sub", 1234, 5678)
    os.chown(src / "sub" / "owned.txt", 4321, 8765)
    os.chown(src / "link", 2222, 3333, follow_symlinks=False)
    _manifest(project)
    source, out = _round_trip(project)
    restored = _tree(out)
    assert restored == source
    assert restored[b"sub/owned.txt"][3:5] == (4321, 8765)
    assert restored[b"sub"][3:5] == (1234, 5678)
    assert restored[b"link"][3:5] == (2222, 3333)
    if Path("/usr/bin/unzip").exists() or needs("unzip"):
        [archive] = project.archives()
        unzipped = project.root / "unzipped"
        subprocess.run(["unzip", "-X", "-q", str(archive), "-d", str(unzipped)], check=True)
        assert (unzipped / "sub" / "owned.txt").stat()[4:6] == (4321, 8765)
        assert (unzipped / "sub").stat()[4:6] == (1234, 5678)


@pytest.mark.slow
def test_a_tree_1500_folders_deep_is_backed_up_verified_and_restored(project: Project) -> None:
    deepest = project.root / "src"
    deepest.mkdir()
    for _ in range(1500):
        deepest = deepest / "d"
        deepest.mkdir()
    (deepest / "bottom.txt").write_text("found\n")
    _manifest(project)
    try:
        ran = project.invoke("backup", "--format", "json")
        assert ran.code == 0, ran.output
        assert ran.json()["targets"][0]["directories"] == 1500
        ran = project.invoke("verify", "--format", "json")
        assert ran.code == 0, ran.output
        out = project.root / "out"
        ran = project.invoke("restore", "t", "--to", str(out))
        assert ran.code == 0, ran.output
        assert (out.joinpath(*["d"] * 1500) / "bottom.txt").read_text() == "found\n"
    finally:
        for top in (project.root / "src", project.root / "out"):
            _remove_chain(top)


def _remove_chain(top: Path) -> None:
    # Python's own rmtree recurses once per level: take the chain down from the bottom.
    if not top.exists():
        return
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for folder in reversed(chain):
        for child in folder.iterdir():
            if not child.is_dir():
                child.unlink()
        folder.rmdir()


def test_verify_counts_files_folders_and_links_apart(project: Project) -> None:
    project.file("src/a.txt")
    project.file("src/sub/b.txt")
    (project.root / "src" / "empty").mkdir()
    if os.name == "posix":
        (project.root / "src" / "link").symlink_to("a.txt")
    _manifest(project)
    assert project.invoke("backup").code == 0
    ran = project.invoke("verify", "--format", "json")
    assert ran.code == 0, ran.output
    [result] = ran.json()["targets"]
    links = 1 if os.name == "posix" else 0
    assert (result["files"], result["directories"], result["links"]) == (2, 2, links)
    shown = ", 1 link" if links else ""  # the text line counts links apart too
    assert f"(2 files, 2 folders{shown}, 0 databases checked" in ran.stderr


def test_restore_says_one_file_one_folder(project: Project) -> None:
    project.file("src/sub/only.txt")
    _manifest(project)
    assert project.invoke("backup").code == 0
    ran = project.invoke("restore", "t", "--to", str(project.root / "out"))
    assert ran.code == 0, ran.output
    assert "(1 file, 1 folder, 0 links, 0 databases passed integrity_check)" in ran.stdout


def test_a_file_where_the_restore_folder_or_destination_should_be_is_named(project: Project) -> None:
    project.file("src/a.txt")
    _manifest(project)
    assert project.invoke("backup").code == 0
    blocker = project.file("blocker", "not a folder\n")
    ran = project.invoke("restore", "t", "--to", str(blocker))
    assert ran.code == 2, ran.output
    assert f"--to {blocker} is a file, not a folder" in ran.stderr
    assert "File exists" not in ran.output
    ran = project.invoke("restore", "t", "--to", str(blocker / "below"))
    assert ran.code == 2, ran.output
    assert "is a file, not a folder" in ran.stderr and "Traceback" not in ran.output
    # A folder under it too: the file in the way is the one named, not the folder below it.
    for destination in (blocker, blocker / "nightly"):
        project.write_manifest(
            f"""
            version: 1
            targets:
              - name: t
                path: src
                destination: {destination}
            """
        )
        ran = project.invoke("backup")
        assert ran.code == 1, ran.output
        assert f"failed: [t] => {blocker} is a file where a folder is needed" in ran.stdout + ran.stderr
        assert blocker.read_text() == "not a folder\n"


def test_a_member_with_a_dos_date_of_zero_is_restored(project: Project) -> None:
    project.file("src/a.txt")
    _manifest(project)
    destination = project.root / "backups"
    destination.mkdir()
    archive = destination / archive_file_name("t", datetime(2026, 1, 1, tzinfo=timezone.utc))
    with zipfile.ZipFile(archive, "w") as made:
        info = zipfile.ZipInfo("zero.txt", date_time=(1980, 0, 0, 0, 0, 0))
        made.writestr(info, "dateless\n")
    with zipfile.ZipFile(archive) as check:
        assert check.getinfo("zero.txt").date_time[1:3] == (0, 0)  # really a DOS date of 0
    out = project.root / "out"
    ran = project.invoke("restore", "t", "--to", str(out))
    assert ran.code == 0, ran.output
    assert (out / "zero.txt").read_text() == "dateless\n"


@pytest.mark.parametrize(
    ("name", "link", "why"),
    [
        ("../escape.txt", None, "would land outside"),
        ("/etc/absolute.txt", None, "would land outside"),
        ("empty-link", "", "the link is empty"),
    ],
)
def test_verify_reports_what_restore_would_refuse(project: Project, name: str, link: str | None, why: str) -> None:
    project.file("src/a.txt")
    _manifest(project)
    destination = project.root / "backups"
    destination.mkdir()
    archive = destination / archive_file_name("t", datetime(2026, 1, 1, tzinfo=timezone.utc))
    with zipfile.ZipFile(archive, "w") as made:
        info = zipfile.ZipInfo(name)
        if link is not None:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        made.writestr(info, link if link is not None else "payload\n")
    ran = project.invoke("verify")
    assert ran.code == 1, ran.output
    assert f"{name}: restore would refuse it: " in ran.output and why in ran.output
    ran = project.invoke("restore", "t", "--to", str(project.root / "out"))
    assert ran.code == 1, ran.output
    assert "refusing" in ran.stderr and "Traceback" not in ran.output


def test_names_that_differ_only_in_case_are_a_verify_warning_and_never_stop_a_prune(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A case-sensitive volume on macOS holds README and readme, and this tool archives both:
    # verify failed its own archives, and prune, judging the newest by them, deleted nothing
    # ever again.  (macOS's rule is switched on here, in-process: CI runs on Linux.)
    from backup_core import manifest as manifest_module
    from backup_core import runner
    from backup_core.zip import names as member_names
    from backup_core.zip.verify import verify_archive

    project.file("src/README", "upper\n")
    project.file("src/readme", "lower\n")
    project.write_manifest("version: 1\ntargets: [{name: t, path: src, keep: {last: 2}}]\n")
    for day in (1, 2):
        assert project.invoke("backup", env={"BACKUP_NOW": f"2026-03-0{day}T00:00:00Z"}).code == 0
    project.write_manifest("version: 1\ntargets: [{name: t, path: src, keep: {last: 1}}]\n")
    monkeypatch.setattr(member_names, "_CASELESS", True)
    newest = project.archives()[-1]

    verdict = verify_archive(newest)
    assert verdict.ok, verdict.problems
    assert any("README and readme name one file here (only their case" in w for w in verdict.warnings)
    [target] = manifest_module.load(project.manifest).targets
    result = runner.prune_target(target, runner.Options())
    assert result.status == "changed", result.error
    assert project.archives() == [newest]


@pytest.mark.parametrize(
    ("names", "trims"),
    [(["docs/README", "docs/readme"], False), (["Docs/a.txt", "docs/A.TXT"], False), (["notes", "notes."], True)],
)
def test_members_that_would_land_on_one_file_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str], trims: bool
) -> None:
    # An archive made on Linux restored on Windows or macOS: the second name replaced the first
    # in silence.  (Those systems' rules are switched on here: CI runs on Linux.)
    from backup_core import restore
    from backup_core.errors import UsageError
    from backup_core.zip import names as member_names

    monkeypatch.setattr(member_names, "_CASELESS", True)
    monkeypatch.setattr(member_names, "_TRIMS_NAMES", trims)
    archive = tmp_path / "site-20261201T000000.000000Z.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("docs/other.txt", "kept apart\n")
        for name in names:
            out.writestr(name, f"{name}\n")
    to = tmp_path / "restored"
    said = f"{archive.name} was not restored: {names[0]} and {names[1]} name one file here (only their case"
    with pytest.raises(UsageError, match=re.escape(said)):
        restore.restore(archive, to)
    assert not to.exists()
    monkeypatch.setattr(member_names, "_CASELESS", False)  # on Linux both are restored, as they were
    monkeypatch.setattr(member_names, "_TRIMS_NAMES", False)
    restore.restore(archive, to)
    assert sorted(str(p.relative_to(to)) for p in to.rglob("*") if p.is_file()) == sorted(["docs/other.txt", *names])
