"""Offsite copies, through the real `invoke`: every verified archive reaches each remote of its target.

Each behaviour runs against a folder remote (a mounted disk) and, where the S3 test
server can start, against a real S3 server: upload and confirmation, never
overwriting, an unavailable remote (exit 1, local archive kept, the next run
catches up), remote retention over a simulated month, quick and full remote
verify, restore from a remote, check mode touching nothing, and no secret in any
output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import Project, archive_file_name, fake_archive, flow, have, permissions_enforced
from s3server import S3Server

START = datetime(2026, 1, 1, 3, 0, tzinfo=timezone.utc)


class Remote(Protocol):
    """A remote under test: how the manifest names it and how the test looks behind its back."""

    name: str
    env: dict[str, str]

    def manifest(self) -> dict[str, Any]: ...
    def names(self, target: str) -> list[str]: ...
    def read(self, target: str, name: str) -> bytes: ...
    def replace(self, target: str, name: str, data: bytes) -> None: ...
    def forget_host(self, target: str, name: str) -> None: ...
    def swap(self, target: str, name: str, data: bytes) -> None: ...
    def down(self) -> None: ...
    def up(self) -> None: ...


class FolderRemote:
    """A folder remote; `down` is an unmounted disk (the folder is gone)."""

    name = "nas"
    env: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self._away = root.with_name("nas-unmounted")

    def manifest(self) -> dict[str, Any]:
        return {"type": "folder", "path": str(self.root), "prefix": "host1/"}

    def _folder(self, target: str) -> Path:
        return self.root / "host1" / target

    def names(self, target: str) -> list[str]:
        folder = self._folder(target)
        return sorted(p.name for p in folder.iterdir() if p.suffix == ".zip") if folder.exists() else []

    def read(self, target: str, name: str) -> bytes:
        return (self._folder(target) / name).read_bytes()

    def replace(self, target: str, name: str, data: bytes) -> None:
        self._folder(target).mkdir(parents=True, exist_ok=True)
        (self._folder(target) / name).write_bytes(data)

    def forget_host(self, target: str, name: str) -> None:
        """Make a copy look as the tool's versions before hosts were recorded made it."""
        (self._folder(target) / f"{name}.host").unlink()

    def swap(self, target: str, name: str, data: bytes) -> None:
        """Other bytes in a copy's place, its checksum file kept and its time put back (as a
        careful hand, or bit rot, would leave it)."""
        copy = self._folder(target) / name
        before = copy.stat()
        copy.write_bytes(data)
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))

    def down(self) -> None:
        self.root.rename(self._away)

    def up(self) -> None:
        self._away.rename(self.root)


class S3Remote:
    """A bucket on the session's real S3 server; `down` stops the server (an outage)."""

    name = "offsite"

    def __init__(self, server: S3Server, bucket: str, prefix: str = "host1/") -> None:
        self.server, self.bucket, self.prefix = server, bucket, prefix
        self.env = server.env()

    def manifest(self) -> dict[str, Any]:
        return {
            "type": "s3",
            "bucket": self.bucket,
            "endpoint": self.server.endpoint,
            "addressing_style": "path",
            "prefix": self.prefix,
        }

    def names(self, target: str) -> list[str]:
        listing = self.server.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{target}/")
        return sorted(item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", []))

    def read(self, target: str, name: str) -> bytes:
        body = self.server.client().get_object(Bucket=self.bucket, Key=f"{self.prefix}{target}/{name}")["Body"]
        return bytes(body.read())

    def replace(self, target: str, name: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=f"{self.prefix}{target}/{name}", Body=data)

    def forget_host(self, target: str, name: str) -> None:
        client, key = self.server.client(), f"{self.prefix}{target}/{name}"
        metadata = client.head_object(Bucket=self.bucket, Key=key)["Metadata"]
        metadata.pop("host")
        source = {"Bucket": self.bucket, "Key": key}
        client.copy_object(
            Bucket=self.bucket, Key=key, CopySource=source, Metadata=metadata, MetadataDirective="REPLACE"
        )
        assert "host" not in client.head_object(Bucket=self.bucket, Key=key)["Metadata"]

    def swap(self, target: str, name: str, data: bytes) -> None:
        """Other bytes in a copy's place, with the copy's recorded metadata kept."""
        client, key = self.server.client(), f"{self.prefix}{target}/{name}"
        metadata = client.head_object(Bucket=self.bucket, Key=key)["Metadata"]
        client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata)

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()


@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    yield from each_remote(request, tmp_path)


def each_remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """The body of a `remote` fixture with params ["folder", "s3"] (other test files have one too)."""
    if request.param == "folder":
        yield FolderRemote(tmp_path / "nas")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    yield S3Remote(server, server.create_bucket())
    server.start()  # a test that stopped it leaves it running for the next


def write(
    project: Project,
    remote: Remote,
    keep: dict[str, int] | None = None,
    settings_of_remote: dict[str, Any] | None = None,
    local_keep: dict[str, int] | None = None,
    **target: Any,
) -> None:
    spec = {**remote.manifest(), **({"keep": keep} if keep else {}), **(settings_of_remote or {})}
    settings = {"name": "site", "path": "site", "offsite": [remote.name], "keep": local_keep or {"last": 10}, **target}
    project.write_manifest(
        f"""
        version: 1
        remotes:
          {remote.name}: {flow(spec)}
        targets:
          - {flow(settings)}
        """
    )


def site(project: Project) -> None:
    project.file("site/index.html", "<h1>hello</h1>\n")
    project.file("site/assets/app.js", "console.log('hi');\n" * 100)
    project.file("site/data.bin", bytes(range(256)) * 64)


def run(project: Project, remote: Remote, *args: str, now: datetime | None = None) -> Any:
    env = {**remote.env, **({"BACKUP_NOW": now.isoformat()} if now else {})}
    return project.invoke(*args, env=env)


def test_a_new_archive_is_copied_to_the_remote_byte_for_byte(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    ran = run(project, remote, "backup", "--format", "json")
    assert ran.code == 0, ran.output
    [archive] = project.archives()
    assert remote.names("site") == [archive.name]
    assert remote.read("site", archive.name) == archive.read_bytes()
    [copy] = ran.json()["targets"][0]["offsite"]
    assert (copy["remote"], copy["uploaded"], copy["copies"], copy["error"]) == (remote.name, [archive.name], 1, None)
    assert f"1 copy offsite: {remote.name} +1 (1 held)" in ran.stderr


@pytest.mark.skipif(not have("sha256sum"), reason="sha256sum is not installed")
def test_a_folder_remote_keeps_a_checksum_that_sha256sum_checks(project: Project, tmp_path: Path) -> None:
    folder = FolderRemote(tmp_path / "disk")
    site(project)
    write(project, folder)
    assert run(project, folder, "backup").code == 0
    copies = tmp_path / "disk" / "host1" / "site"
    [sidecar] = copies.glob("*.sha256")
    checked = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=copies, capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and ": OK" in checked.stdout


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_folder_remotes_copy_is_readable_by_its_owner_only(project: Project, tmp_path: Path) -> None:
    # A NAS folder holds the same secrets as the local archive (0600): the copy was created
    # with the umask's mode, readable by every user of the NAS (0644 under umask 022).
    folder = FolderRemote(tmp_path / "disk")
    site(project)
    write(project, folder)
    before = os.umask(0o022)
    try:
        ran = run(project, folder, "backup")
    finally:
        os.umask(before)
    assert ran.code == 0, ran.output
    [archive] = project.archives()
    copy = tmp_path / "disk" / "host1" / "site" / archive.name
    assert copy.read_bytes() == archive.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_a_partial_copy_left_by_a_killed_run_is_begun_again(project: Project, tmp_path: Path) -> None:
    # After a run was killed mid-copy, the next failed with "cannot write <copy>: File exists"
    # (naming a copy that did not exist), and only the one after succeeded.
    folder = FolderRemote(tmp_path / "disk")
    site(project)
    write(project, folder)
    name = archive_file_name("site", START)
    leftover = tmp_path / "disk" / "host1" / "site" / f".{name}.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"the first megabytes of a copy")
    # An older archive's leftovers, a day old: its record's scratch files (a kill between their
    # write and rename) too.
    older = archive_file_name("site", START - timedelta(days=3))
    stale = [leftover.with_name(f".{older}{end}") for end in (".partial", ".sha256.tmp", ".host.tmp")]
    for file in stale:
        file.write_text("left by a killed run\n", encoding="utf-8")
        os.utime(file, (time.time() - 2 * 86400,) * 2)

    ran = run(project, folder, "backup", now=START)

    assert ran.code == 0, ran.output
    assert folder.read("site", name) == (project.root / "backups" / name).read_bytes()
    assert not leftover.exists()
    assert not any(file.exists() for file in stale)


def test_an_existing_copy_with_other_bytes_is_never_overwritten(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    when = START
    name = archive_file_name("site", when)
    # Another host, or a person, already put different bytes under the name this run will use.
    stranger = fake_archive(project.root / "elsewhere", "site", when).read_bytes()
    remote.replace("site", name, stranger)
    ran = run(project, remote, "backup", now=when)
    assert ran.code == 1
    # A folder's copy is hashed to tell; an object put there without this tool's metadata is not
    # downloaded, and is not called "other content" (it may be the same bytes).
    said = "with other content" if isinstance(remote, FolderRemote) else "with no checksum recorded, so it is not taken"
    assert f"already exists {said}" in ran.output and "it was not overwritten" in ran.output, ran.output
    assert remote.read("site", name) == stranger
    [archive] = project.archives()
    assert archive.name == name  # the local archive is kept and counts


@pytest.mark.skipif(os.name != "posix", reason="making a link needs a privilege on Windows")
def test_a_link_under_the_copys_name_on_a_folder_remote_is_never_counted_as_a_copy(
    project: Project, tmp_path: Path
) -> None:
    # Hashed through the link, it was "uploaded" on every push, while verify found no copy.
    folder = FolderRemote(tmp_path / "disk")
    site(project)
    write(project, folder)
    assert run(project, folder, "backup").code == 0
    [archive] = project.archives()
    copy = folder._folder("site") / archive.name
    for made in (copy, copy.with_name(f"{copy.name}.sha256"), copy.with_name(f"{copy.name}.host")):
        made.unlink()
    copy.symlink_to(archive)
    ran = run(project, folder, "push", "--format", "json")
    assert ran.code == 1, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "failed"
    assert f"{copy} is not a file (a link or a folder); it was neither followed nor overwritten" in result["error"]
    assert sorted(p.name for p in copy.parent.iterdir()) == [archive.name]  # no checksum beside the link
    assert copy.is_symlink() and project.archives() == [archive]


@pytest.mark.parametrize("command", [["verify", "--remote", "nas"], ["prune"], ["backup"]])
def test_a_file_where_a_targets_folder_of_copies_should_be_fails_that_target_only(
    project: Project, tmp_path: Path, command: list[str]
) -> None:
    # The listing's error ended the whole command: `error: Not a directory`, no RECAP, no JSON
    # document, and the other targets never verified.
    folder = FolderRemote(tmp_path / "disk")
    site(project)
    spec = {**folder.manifest()}
    project.write_manifest(
        f"""
        version: 1
        remotes:
          nas: {flow(spec)}
        targets:
          - {{name: site, path: site, offsite: [nas]}}
          - {{name: other, path: site, offsite: [nas]}}
        """
    )
    assert run(project, folder, "backup").code == 0
    shutil.rmtree(folder._folder("site"))
    folder._folder("site").write_text("not a folder\n", encoding="utf-8")
    ran = run(project, folder, *command, "--format", "json")
    assert ran.code == 1, ran.output
    results = {t["name"]: t for t in ran.json()["targets"]}
    assert results["site"]["status"] == "failed"
    assert f"{folder._folder('site')} is a file where the target's folder of copies should be" in ran.output
    assert results["other"]["status"] in ("ok", "changed"), results["other"]
    assert "Traceback" not in ran.output


@pytest.mark.parametrize("bytes_kept", [True, False], ids=["same-bytes", "other-bytes"])
def test_a_folder_remote_copy_whose_checksum_file_was_lost_is_recorded_again_only_when_its_bytes_match(
    project: Project, tmp_path: Path, bytes_kept: bool
) -> None:
    # push failed "already exists with other content" on a byte-identical newest copy whose
    # .sha256 a person or a sync tool had removed, and the copy was never vouched for again.
    nas = FolderRemote(tmp_path / "nas")
    site(project)
    write(project, nas)
    assert run(project, nas, "backup", now=START).code == 0
    [name] = nas.names("site")
    sidecar = nas.root / "host1" / "site" / f"{name}.sha256"
    recorded = sidecar.read_text(encoding="utf-8")
    sidecar.unlink()
    if not bytes_kept:
        nas.replace("site", name, b"someone else's bytes")

    pushed = run(project, nas, "push", now=START + timedelta(hours=1))

    if bytes_kept:
        assert pushed.code == 0, pushed.output
        assert sidecar.read_text(encoding="utf-8") == recorded  # proven by its bytes, recorded again
        assert run(project, nas, "verify", "--remote", "nas").code == 0
    else:
        assert pushed.code == 1, pushed.output
        said = "already exists with other content; it was not overwritten (it has no recorded checksum either"
        assert said in pushed.output, pushed.output
        assert not sidecar.exists() and nas.read("site", name) == b"someone else's bytes"


def test_an_unavailable_remote_fails_the_target_keeps_the_archive_and_the_next_run_catches_up(
    project: Project, remote: Remote
) -> None:
    site(project)
    write(project, remote)
    assert run(project, remote, "backup", now=START).code == 0
    remote.down()
    ran = run(project, remote, "backup", "--format", "json", now=START + timedelta(days=1))
    assert ran.code == 1
    result = ran.json()["targets"][0]
    assert result["status"] == "failed"
    assert f"remote {remote.name}" in result["error"] and "is kept" in result["error"]
    assert len(project.archives()) == 2  # nothing lost locally
    assert ran.stdout.count("\n") >= 1 and "Traceback" not in ran.output
    # A third night with the remote back: the missed archive goes up too, newest first.
    remote.up()
    third = run(project, remote, "backup", "--format", "json", now=START + timedelta(days=2))
    assert third.code == 0, third.output
    local = [p.name for p in project.archives()]
    assert remote.names("site") == local
    assert third.json()["targets"][0]["offsite"][0]["uploaded"] == [local[2], local[1]]


def test_push_uploads_what_a_remote_lacks_without_a_new_archive(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    remote.down()
    assert run(project, remote, "backup", now=START).code == 1
    assert run(project, remote, "backup", now=START + timedelta(hours=1)).code == 1
    remote.up()
    preview = run(project, remote, "push", "--check", "--format", "json")
    assert preview.code == 0 and remote.names("site") == []
    assert len(preview.json()["targets"][0]["offsite"][0]["uploaded"]) == 2
    pushed = run(project, remote, "push")
    assert pushed.code == 0, pushed.output
    assert remote.names("site") == [p.name for p in project.archives()]
    again = run(project, remote, "push", "--format", "json")
    assert again.json()["targets"][0]["status"] == "ok"


def test_remote_retention_over_a_month_follows_the_remotes_own_keep(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote, keep={"daily": 7, "weekly": 2})
    for day in range(30):
        project.file("site/day.txt", f"day {day}\n")
        ran = run(project, remote, "backup", now=START + timedelta(days=day))
        assert ran.code == 0, ran.output
    held = remote.names("site")
    days = sorted({datetime.strptime(n.split("-")[1][:8], "%Y%m%d").date() for n in held})
    # 7 newest days, plus the newest archive of the 2 newest ISO weeks (already among them or one more).
    newest = (START + timedelta(days=29)).date()
    assert days[-7:] == [newest - timedelta(days=d) for d in range(6, -1, -1)]
    assert len(held) <= 9
    # Locally, keep: {last: 10} rules on its own.
    assert len(project.archives()) == 10


def test_verify_remote_finds_a_copy_replaced_behind_its_back(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    assert run(project, remote, "backup", now=START).code == 0
    assert run(project, remote, "backup", now=START + timedelta(days=1)).code == 0
    ok = run(project, remote, "verify", "--remote", remote.name)
    assert ok.code == 0, ok.output
    first = remote.names("site")[0]
    original = remote.read("site", first)
    middle = len(original) // 2  # inside a member's data
    remote.replace("site", first, original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :])
    quick = run(project, remote, "verify", "--remote", remote.name, "--format", "json")
    assert quick.code == 1
    failed = [t for t in quick.json()["targets"] if t["status"] == "failed"]
    assert len(failed) == 1 and first in failed[0]["archive"]
    full = run(project, remote, "verify", "--remote", remote.name, "--download")
    assert full.code == 1 and first in full.output


@pytest.mark.parametrize("checksum", ["sha256", "crc32"])
def test_verify_remote_says_whether_it_read_the_copys_bytes(project: Project, remote: Remote, checksum: str) -> None:
    # Every passing copy read "size and checksum recorded at upload match", also where S3 had no
    # SHA-256 of the whole object to compare (a CRC32 or multipart upload): only the size was.
    if isinstance(remote, FolderRemote) and checksum == "crc32":
        pytest.skip("checksum is an S3 setting")
    site(project)
    write(project, remote, settings_of_remote={"checksum": checksum} if isinstance(remote, S3Remote) else None)
    assert run(project, remote, "backup").code == 0

    ran = run(project, remote, "verify", "--remote", remote.name, "--format", "json")

    assert ran.code == 0, ran.output
    [result] = ran.json()["targets"]
    if isinstance(remote, FolderRemote):
        assert result["reason"] == "its SHA-256, read in full, matches the one recorded at upload"
    elif checksum == "sha256":  # one request under 64 MiB: the server keeps the whole object's SHA-256
        assert result["reason"] == "its size and the server's SHA-256 of its bytes match those recorded at upload"
    else:
        assert result["reason"].startswith("its size matches the one recorded at upload; its bytes were not read")
        assert "add --download to read them" in result["reason"]


def test_restore_from_the_remote_gives_back_the_source_tree(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    assert run(project, remote, "backup").code == 0
    shutil.rmtree(project.root / "backups")  # the machine's own disk is gone
    to = project.root / "restored"
    ran = run(project, remote, "restore", "site", "--remote", remote.name, "--to", str(to))
    assert ran.code == 0, ran.output
    source = project.root / "site"
    for path in source.rglob("*"):
        if path.is_file():
            assert (to / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert not [p for p in project.root.iterdir() if p.name.startswith(".backup-fetch-")]


def test_check_mode_shows_remote_uploads_and_deletions_and_touches_nothing(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote, keep={"last": 1})
    assert run(project, remote, "backup", now=START).code == 0
    before = remote.names("site")
    ran = run(project, remote, "backup", "--check", "--format", "json", now=START + timedelta(days=1))
    assert ran.code == 0, ran.output
    [copy] = ran.json()["targets"][0]["offsite"]
    assert copy["uploaded"] == ["(new archive)"] and copy["deleted"] == before
    assert remote.names("site") == before and len(project.archives()) == 1
    prune = run(project, remote, "prune", "--check")
    assert prune.code == 0 and remote.names("site") == before


def test_objects_named_newer_that_this_tool_never_put_there_cannot_push_out_a_good_copy(
    project: Project, remote: Remote
) -> None:
    site(project)
    write(project, remote, keep={"last": 2})
    assert run(project, remote, "backup", now=START).code == 0
    [good] = remote.names("site")
    # Someone's objects under this target's names, dated minutes after the next run (under the
    # ten minutes a clock may be ahead, so they are not set aside as "in the future").
    day = START + timedelta(days=1)
    strangers = [archive_file_name("site", day + timedelta(minutes=m)) for m in (1, 2)]
    for name in strangers:
        remote.replace("site", name, b"not an archive")

    ran = run(project, remote, "backup", "--format", "json", now=day)

    assert ran.code == 0, ran.output
    new = archive_file_name("site", day)
    assert remote.names("site") == sorted([good, new, *strangers])  # sent, kept, and theirs left alone
    assert remote.read("site", new) == (project.root / "backups" / new).read_bytes()
    [copy] = ran.json()["targets"][0]["offsite"]
    assert copy["deleted"] == []
    warned = " ".join(copy["warnings"])
    assert all(f"{name} has no recorded checksum" in warned for name in strangers), warned
    assert "not counted as a copy and is left in place" in warned
    # Nor do they make the remote look fresher than its newest good copy.
    status = run(project, remote, "status", "--format", "json", now=day + timedelta(minutes=5))
    [state] = [s for s in status.json()["targets"][0]["stores"] if s["store"] == remote.name]
    assert state["newest"] == new, state


def test_a_local_file_cut_short_under_an_archives_name_is_neither_sent_nor_counted(
    project: Project, remote: Remote
) -> None:
    # A 100-byte file named newer than two good archives was uploaded, counted toward both
    # keeps, and the good archives were rotated out locally and on the remote: keep {last: 2}
    # left one usable archive everywhere.
    site(project)
    write(project, remote, keep={"last": 2}, local_keep={"last": 2})
    days = [START + timedelta(days=d) for d in range(3)]
    assert run(project, remote, "backup", now=days[0]).code == 0
    project.file("site/day.txt", "the second day\n")
    assert run(project, remote, "backup", now=days[1]).code == 0
    first, second = (a.name for a in project.archives())
    cut = project.root / "backups" / archive_file_name("site", days[1] + timedelta(hours=1))
    cut.write_bytes((project.root / "backups" / second).read_bytes()[:100])
    project.file("site/day.txt", "the third day\n")

    preview = run(project, remote, "backup", "--check", "--format", "json", now=days[2])
    ran = run(project, remote, "backup", "--format", "json", now=days[2])

    assert ran.code == 0, ran.output
    new = archive_file_name("site", days[2])
    # Counted without the cut file, keep {last: 2} keeps the second day and the new archive.
    assert [a.name for a in project.archives()] == [second, cut.name, new]
    assert remote.names("site") == [second, new]
    [result] = ran.json()["targets"]
    assert result["deleted"] == [first] == preview.json()["targets"][0]["deleted"]
    warned = " ".join(result["warnings"])
    assert f"{cut.name} is not a whole archive" in warned and "not counted toward keep and not deleted" in warned
    assert f"{cut.name} was not sent: it is not a whole archive" in warned
    # push sends it no more than the backup did, and prune deletes nothing on its account.
    pushed = run(project, remote, "push", "--format", "json", now=days[2])
    assert pushed.code == 0 and remote.names("site") == [second, new], pushed.output
    pruned = run(project, remote, "prune", "--format", "json", now=days[2])
    assert pruned.code == 0 and [a.name for a in project.archives()] == [second, cut.name, new], pruned.output


def test_prune_keeps_a_local_archive_the_remote_lacks_whatever_broken_file_lies_beside_it(
    project: Project, remote: Remote
) -> None:
    # The guard "the remote lacks it and would keep it" counted a cut-short local file as one
    # of the remote's keep: the oldest good archive, which the remote lacked, was deleted.
    site(project)
    write(project, remote, keep={"last": 3}, local_keep={"last": 2})
    backups = project.root / "backups"
    days = [START + timedelta(days=d) for d in range(4)]
    good = [fake_archive(backups, "site", days[d]) for d in (0, 1, 3)]
    cut = backups / archive_file_name("site", days[2])
    cut.write_bytes(good[0].read_bytes()[:100])

    ran = run(project, remote, "prune", "--format", "json", now=days[3] + timedelta(hours=1))

    assert ran.code == 0, ran.output
    assert all(a.exists() for a in good) and cut.exists(), ran.output
    assert remote.names("site") == []


def test_a_copy_replaced_behind_the_tools_back_is_neither_counted_nor_deleted(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote, keep={"last": 2})
    for day in range(2):
        project.file("site/day.txt", f"day {day}\n")
        assert run(project, remote, "backup", now=START + timedelta(days=day)).code == 0
    first, second = remote.names("site")
    remote.replace("site", second, b"garbage")

    # A preview says what the push itself will meet: the newest copy is not the archive.
    preview = run(project, remote, "push", "--check")
    assert preview.code == 1, preview.output
    assert f"{second} is already there, but not as this tool put it" in preview.output
    assert run(project, remote, "push").code == 1

    project.file("site/day.txt", "day 2\n")
    ran = run(project, remote, "backup", now=START + timedelta(days=2))

    assert ran.code == 0, ran.output
    third = archive_file_name("site", START + timedelta(days=2))
    # The garbage does not count toward keep: the good first copy stays beside the new one.
    assert remote.names("site") == [first, second, third]
    assert remote.read("site", second) == b"garbage"
    assert "not counted as a copy and is left in place" in ran.output
    # And once two good copies are newer, the garbage is still not deleted: it is not ours to judge.
    project.file("site/day.txt", "day 3\n")
    assert run(project, remote, "backup", now=START + timedelta(days=3)).code == 0
    assert remote.names("site") == [second, third, archive_file_name("site", START + timedelta(days=3))]


def test_a_copy_swapped_for_another_archive_is_neither_verified_nor_restored(
    project: Project, remote: Remote, tmp_path: Path
) -> None:
    # verify --download and restore read the copy through without comparing it with what was
    # recorded at upload: a valid zip in its place (its record kept) passed and was restored.
    site(project)
    write(project, remote)
    for day in range(2):
        project.file("site/day.txt", f"day {day}\n")
        assert run(project, remote, "backup", now=START + timedelta(days=day)).code == 0
    older, newer = remote.names("site")
    remote.swap("site", newer, remote.read("site", older))  # a real archive of this target, the wrong one

    verified = run(project, remote, "verify", "--remote", remote.name, "--download", "--format", "json")
    assert verified.code == 1, verified.output
    results = {Path(r["archive"]).name: r for r in verified.json()["targets"]}
    assert results[older]["status"] == "ok"
    assert results[newer]["status"] == "failed"
    assert f"{newer} on remote {remote.name} is not the copy uploaded" in results[newer]["error"]

    to = tmp_path / "restored"
    ran = run(project, remote, "restore", "site", "--remote", remote.name, "--archive", newer, "--to", str(to))
    assert ran.code == 1, ran.output
    assert "its SHA-256 differs from the one recorded at upload" in ran.output
    assert not to.exists()


def test_restoring_the_newest_passes_over_an_object_this_tool_never_put_there(
    project: Project, remote: Remote, tmp_path: Path
) -> None:
    site(project)
    write(project, remote)
    assert run(project, remote, "backup", now=START).code == 0
    [good] = remote.names("site")
    # A valid zip of someone else's, named as this target's newest archive.
    planted = tmp_path / "planted.zip"
    with zipfile.ZipFile(planted, "w") as archive:
        archive.writestr("index.html", "<h1>not ours</h1>\n")
    stranger = archive_file_name("site", START + timedelta(hours=1))
    remote.replace("site", stranger, planted.read_bytes())

    to = tmp_path / "restored"
    ran = run(project, remote, "restore", "site", "--remote", remote.name, "--to", str(to))

    assert ran.code == 0, ran.output
    assert good in ran.output and f"passed over a newer copy: {stranger} has no recorded checksum" in ran.output
    assert (to / "index.html").read_text() == "<h1>hello</h1>\n"


def test_hosts_sharing_a_prefix_never_prune_each_others_copies(
    project: Project, remote: Remote, tmp_path: Path
) -> None:
    # One manifest rolled out to two hosts, with one prefix for both: each host's keep applies
    # to its own copies only.  Before hosts were recorded, each run deleted the other's copies.
    other = Project(tmp_path / "web2")
    other.root.mkdir()
    hosts = {"web1": project, "web2": other}
    for host, each in hosts.items():
        each.file("site/host.txt", f"{host}\n")
        write(each, remote, keep={"last": 2})
    made: dict[str, list[str]] = {"web1": [], "web2": []}
    outputs: dict[str, str] = {}
    for day in range(4):
        for minute, (host, each) in enumerate(hosts.items()):
            when = START + timedelta(days=day, minutes=minute)
            each.file("site/day.txt", f"day {day}\n")
            ran = each.invoke("backup", env={**remote.env, "BACKUP_HOST": host, "BACKUP_NOW": when.isoformat()})
            assert ran.code == 0, ran.output
            made[host].append(archive_file_name("site", when))
            outputs[host] = ran.output

    # Each host's two newest copies, and nothing of the other host's deleted.
    assert remote.names("site") == sorted(made["web1"][-2:] + made["web2"][-2:])
    for host, each in hosts.items():
        assert remote.read("site", made[host][-1]) == each.archives()[-1].read_bytes()
    # The last run of web1 met web2's two copies: one warning says whose and what to do.
    warnings = [line for line in outputs["web1"].splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1, outputs["web1"]
    assert "was copied there by host web2, not by this host (web1) (and 1 more like it)" in warnings[0]
    assert "prefix: ${BACKUP_HOST}/" in warnings[0]
    assert warnings[0].endswith(
        "if this host replaces the one that made them, set BACKUP_HOST to that host's name to take them over"
    )
    # status, from web2, reports web2's own newest copy.
    status = other.invoke("status", "--format", "json", env={**remote.env, "BACKUP_HOST": "web2"})
    assert made["web2"][-1] in status.stdout, status.output
    # Restoring the newest copy on web1 gets web2's (the newest in the shared folder): it says so.
    to = project.root / "restored"
    ran = project.invoke(
        "restore", "site", "--remote", remote.name, "--to", str(to), env={**remote.env, "BACKUP_HOST": "web1"}
    )
    assert ran.code == 0, ran.output
    assert (to / "host.txt").read_text(encoding="utf-8") == "web2\n"
    assert f"{made['web2'][-1]} was copied there by host web2, not by this host (web1)" in ran.output
    assert "--archive" in ran.output
    # Named with --archive, its own copy comes back without a word.
    mine = project.root / "mine"
    ran = project.invoke(
        "restore", "site", "--remote", remote.name, "--to", str(mine), "--archive", made["web1"][-1],
        env={**remote.env, "BACKUP_HOST": "web1"},
    )  # fmt: skip
    assert (ran.code, "[WARNING]" in ran.output) == (0, False), ran.output
    assert (mine / "host.txt").read_text(encoding="utf-8") == "web1\n"


def test_a_copy_with_no_recorded_host_is_still_counted_and_pruned(project: Project, remote: Remote) -> None:
    # Copies sent before hosts were recorded stay this host's: keep goes on pruning them.
    # A host name that is not ASCII, or ends in a space (an env file), is recorded escaped: S3 metadata
    # takes ASCII only, and HTTP drops spaces at the ends of a value.
    site(project)
    write(project, remote, keep={"last": 2})
    env = {**remote.env, "BACKUP_HOST": "hôte-1 "}
    days = [START + timedelta(days=day) for day in range(3)]
    for when in days[:2]:
        project.file("site/day.txt", f"{when}\n")
        assert project.invoke("backup", env={**env, "BACKUP_NOW": when.isoformat()}).code == 0
    first, second = remote.names("site")
    remote.forget_host("site", first)
    project.file("site/day.txt", "day 2\n")
    ran = project.invoke("backup", env={**env, "BACKUP_NOW": days[2].isoformat()})
    assert ran.code == 0, ran.output
    assert "[WARNING]" not in ran.output
    assert remote.names("site") == [second, archive_file_name("site", days[2])]


def test_prune_applies_the_remote_keep_too(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)  # remote keeps what the target keeps: last 10
    for day in range(4):
        assert run(project, remote, "backup", now=START + timedelta(days=day)).code == 0
    write(project, remote, keep={"last": 2})
    ran = run(project, remote, "prune", "--format", "json")
    assert ran.code == 0, ran.output
    assert len(remote.names("site")) == 2
    assert len(ran.json()["targets"][0]["offsite"][0]["deleted"]) == 2
    assert len(project.archives()) == 4


# --- the manifest -------------------------------------------------------------------------------


def test_prune_never_deletes_a_local_archive_a_remote_lacks(project: Project, remote: Remote) -> None:
    # prune rotated the local archives first and unconditionally: with the remote down for
    # days, the archives it never received (and its longer keep wanted) were deleted for good.
    site(project)
    write(project, remote, keep={"last": 5}, local_keep={"last": 1})
    days = [START + timedelta(days=n) for n in range(4)]
    assert run(project, remote, "backup", now=days[0]).code == 0
    remote.down()
    for day in days[1:3]:
        project.file("site/day.txt", f"{day}\n")
        assert run(project, remote, "backup", now=day).code == 1  # the copy failed: nothing rotated
    made = [archive_file_name("site", day) for day in days[:3]]
    assert [a.name for a in project.archives()] == made

    down = run(project, remote, "prune", now=days[3])
    assert down.code == 1, down.output
    assert [a.name for a in project.archives()] == made
    assert f"no local archive was deleted, since remote {remote.name} could not be asked" in down.output

    remote.up()
    pruned = run(project, remote, "prune", "--format", "json", now=days[3])
    assert pruned.code == 0, pruned.output
    # The first is offsite: it goes.  The remote lacks the other two and would keep them; the
    # warning names the one held back (the newest was kept anyway).
    assert [a.name for a in project.archives()] == made[1:]
    [result] = pruned.json()["targets"]
    assert result["deleted"] == [made[0]]
    warned = " ".join(result["warnings"])
    assert f"remote {remote.name} holds no good copy of {made[1]} (" in warned and made[2] not in warned

    assert run(project, remote, "push", now=days[3]).code == 0
    assert run(project, remote, "prune", now=days[3]).code == 0
    assert [a.name for a in project.archives()] == made[2:]


def _two_days_and_the_older_copy_damaged(project: Project, remote: Remote) -> tuple[list[datetime], str, str]:
    """Two days of backups copied (remote keep 5), the older copy then rewritten (by a hand or a
    tool: its time moves), and the local keep cut to 1; the days, the older and newer archives."""
    site(project)
    write(project, remote, keep={"last": 5})
    days = [START + timedelta(days=n) for n in range(3)]
    for day in days[:2]:
        project.file("site/day.txt", f"{day}\n")
        assert run(project, remote, "backup", now=day).code == 0
    older, newer = (archive_file_name("site", day) for day in days[:2])
    remote.replace("site", older, b"garbage")
    write(project, remote, keep={"last": 5}, local_keep={"last": 1})  # less room here from now on
    return days, older, newer


def test_rotation_never_deletes_a_local_archive_whose_remote_copy_is_damaged(project: Project, remote: Remote) -> None:
    # A backup's rotation counted the damaged copy as there and deleted the local archive, the
    # only good one left of that day.
    days, older, newer = _two_days_and_the_older_copy_damaged(project, remote)
    newest = archive_file_name("site", days[2])
    project.file("site/day.txt", "the third day\n")

    previewed = run(project, remote, "backup", "--check", "--format", "json", now=days[2])
    ran = run(project, remote, "backup", "--format", "json", now=days[2])

    assert ran.code == 0, ran.output
    assert [a.name for a in project.archives()] == [older, newest]
    [result] = ran.json()["targets"]
    assert result["deleted"] == [newer]
    warned = " ".join(result["warnings"])
    assert f"kept {older}, which keep no longer wants: a remote holds no good copy of it" in warned
    assert result["offsite"][0]["unvouched"] == [older]
    # The preview said it would delete the older archive too, which the run then kept.
    assert previewed.code == 0, previewed.output
    [preview] = previewed.json()["targets"]
    assert preview["deleted"] == [newer], preview
    assert f"would keep {older}, which keep no longer wants" in " ".join(preview["warnings"])


def test_prune_never_deletes_a_local_archive_whose_remote_copy_is_damaged(project: Project, remote: Remote) -> None:
    # The remote held a copy by that name, so the archive did not count as lacking there: prune
    # deleted it here in the same run that warned the copy was not good (and a push will not
    # overwrite a copy that is there).
    days, older, newer = _two_days_and_the_older_copy_damaged(project, remote)

    pruned = run(project, remote, "prune", now=days[2])

    assert pruned.code == 0, pruned.output
    assert [a.name for a in project.archives()] == [older, newer]
    assert f"remote {remote.name} holds no good copy of {older}" in pruned.output


@pytest.mark.parametrize(
    ("remotes", "offsite", "message"),
    [
        ({"nas": {"type": "folder", "path": "x"}}, ["nsa"], "unknown remote 'nsa'; remotes: nas"),
        ({"b": {"type": "s3", "bucket": "Bad_Bucket"}}, ["b"], "'Bad_Bucket' is not a bucket name: 3 to 63"),
        ({"b": {"type": "s3"}}, ["b"], "'bucket' is a required property"),
        ({"b": {"type": "s3", "bucket": "ok-bucket", "profile": "nosuch"}}, ["b"], "AWS profile 'nosuch'"),
        ({"b": {"type": "s3", "bucket": "ok-bucket", "secret": "x"}}, ["b"], "unknown key 'secret'"),
        ({"b": {"type": "folder", "path": "x", "bucket": "ok-bucket"}}, ["b"], "bucket is for s3 remotes"),
        ({"b": {"type": "folder", "path": "x", "prefix": "../up/"}}, ["b"], "must be relative"),
        (
            {"b": {"type": "s3", "bucket": "ok-bucket", "endpoint": "https://AKIDEXAMPLE:Sup3rSecret@s3.example.net"}},
            ["b"],
            "no user, password, query or fragment in it",
        ),
        (
            {
                "b": {
                    "type": "s3",
                    "bucket": "ok-bucket",
                    "endpoint": "https://s3.example.net/?X-Amz-Signature=Sup3rSecret",
                }
            },
            ["b"],
            "no user, password, query or fragment in it",
        ),
        # Two names for one place: each run sent again what the other's keep had deleted.
        (
            {"a": {"type": "folder", "path": "nas", "keep": {"last": 1}}, "b": {"type": "folder", "path": "nas/"}},
            ["a", "b"],
            "remotes a and b name the same place",
        ),
        (
            {
                "a": {"type": "s3", "bucket": "ok-bucket", "endpoint": "http://127.0.0.1:9/", "prefix": "h/"},
                "b": {"type": "s3", "bucket": "ok-bucket", "endpoint": "http://127.0.0.1:9", "prefix": "h/"},
            },
            ["a", "b"],
            "remotes a and b name the same place",
        ),
    ],
)
def test_a_bad_remote_is_a_located_manifest_error(
    project: Project, tmp_path: Path, remotes: dict[str, Any], offsite: list[str], message: str
) -> None:
    site(project)
    project.write_manifest(
        f"""
        version: 1
        remotes: {flow(remotes)}
        targets:
          - name: site
            path: site
            offsite: {flow(offsite)}
        """
    )
    empty = tmp_path / "aws"
    empty.mkdir()
    env = {"AWS_CONFIG_FILE": str(empty / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials")}
    ran = project.invoke("validate", env=env)
    assert ran.code == 2, ran.output
    assert message in ran.stderr
    assert re.search(r"backups.yml:\d+:\d+: ", ran.stderr)  # file:line:col
    assert "Traceback" not in ran.output
    assert "Sup3rSecret" not in ran.output  # a secret in the manifest is refused, never echoed


def test_remotes_naming_one_place_for_different_targets_are_fine(project: Project, tmp_path: Path) -> None:
    # Each target has its own folder there: a short and a long keep on one disk is a layout.
    site(project)
    (tmp_path / "nas").mkdir()
    project.write_manifest(
        f"""
        version: 1
        remotes:
          short: {{type: folder, path: {tmp_path / "nas"}, keep: {{last: 3}}}}
          long: {{type: folder, path: {tmp_path / "nas"}/, keep: {{last: 30}}}}
        targets:
          - {{name: site, path: site, offsite: [short]}}
          - {{name: other, path: site, offsite: [long]}}
        """
    )
    ran = project.invoke("validate")
    assert ran.code == 0, ran.output


def test_a_folder_remote_whose_copies_would_land_in_the_destination_is_a_manifest_error(project: Project) -> None:
    # Every run failed with "already exists with other content" on the archive it had just made.
    site(project)
    project.write_manifest(
        """
        version: 1
        remotes: {nas: {type: folder, path: nas, prefix: host1/}}
        targets:
          - {name: site, path: site, destination: nas/host1/site, offsite: [nas]}
        """
    )
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    said = r"targets\[0\].destination: destination \S+ is where remote nas puts this target's copies"
    assert re.search(rf"backups.yml:4:\d+: {said}; give the remote another path or prefix", ran.stderr), ran.stderr


def test_two_unreachable_remotes_are_both_named_and_a_missing_copy_name_is_a_usage_error(
    project: Project, tmp_path: Path
) -> None:
    # prune's line named only the last remote that failed; restore --remote --archive NAME with
    # a name not there failed (exit 1), where the same mistake on local archives is exit 2.
    site(project)
    for folder in ("nas1", "nas2"):
        (tmp_path / folder).mkdir()
    project.write_manifest(
        f"""
        version: 1
        remotes:
          one: {{type: folder, path: {tmp_path / "nas1"}}}
          two: {{type: folder, path: {tmp_path / "nas2"}}}
        targets:
          - {{name: site, path: site, offsite: [one, two]}}
        """
    )
    assert project.invoke("backup").code == 0
    restored = project.invoke(
        "restore", "site", "--to", str(tmp_path / "to"), "--remote", "one", "--archive", "nope.zip"
    )
    assert restored.code == 2, restored.output
    said = "--archive nope.zip: no copy of that name of site on remote one; the newest are (newest first): site-"
    assert said in restored.stderr
    assert not (tmp_path / "to").exists()
    for folder in ("nas1", "nas2"):
        (tmp_path / folder).rename(tmp_path / f"{folder}-unmounted")

    ran = project.invoke("prune")

    assert ran.code == 1, ran.output
    [failed] = [line for line in ran.stdout.splitlines() if line.startswith("failed: [site]")]
    assert "remote one:" in failed and "remote two:" in failed, failed


def test_a_known_profile_is_accepted_and_list_shows_the_remotes(project: Project, tmp_path: Path) -> None:
    site(project)
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "config").write_text("[profile backups]\nregion = eu-central-1\n", encoding="utf-8")
    project.write_manifest(
        """
        version: 1
        remotes:
          offsite: {type: s3, bucket: acme-backups, prefix: "${BACKUP_HOST}/", profile: backups}
        defaults:
          offsite: [offsite]
        targets:
          - {name: site, path: site}
        """
    )
    env = {"AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "none")}
    ran = project.invoke("list", "--format", "json", env=env)
    assert ran.code == 0, ran.output
    [target] = json.loads(ran.stdout)
    where = target["offsite"]["offsite"]["where"]
    assert where.startswith("s3://acme-backups/") and where.endswith("/") and "${" not in where


@pytest.mark.parametrize(
    ("credentials", "said"),
    [
        ("[backups]\naws_access_key_id = A\n[backups]\naws_access_key_id = B\n", "section 'backups' already exists"),
        ("aws_secret_access_key = SECRETzq60b\n[backups]\n", "File contains no section headers."),
        (None, "cannot be read (Permission denied); fix its permissions"),
    ],
    ids=["duplicate-section", "no-section", "unreadable"],
)
def test_a_profile_in_a_credentials_file_that_cannot_be_read_is_not_called_missing(
    project: Project, tmp_path: Path, credentials: str | None, said: str
) -> None:
    # Each said "is in neither the shared config nor the credentials file; add it": false, and
    # for a duplicate section the advice made the file worse.
    site(project)
    aws = tmp_path / "aws"
    aws.mkdir()
    file = aws / "credentials"
    if credentials is None:
        if not permissions_enforced():
            pytest.skip("root (or this platform) reads files whatever their mode")
        file.write_text("[backups]\naws_access_key_id = A\n", encoding="utf-8")
        file.chmod(0)
    else:
        file.write_text(credentials, encoding="utf-8")
    project.write_manifest(
        """
        version: 1
        remotes: {offsite: {type: s3, bucket: acme-backups, profile: backups}}
        targets: [{name: site, path: site, offsite: [offsite]}]
        """
    )
    env = {"AWS_CONFIG_FILE": str(aws / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(file)}

    ran = project.invoke("validate", env=env)

    assert ran.code == 2, ran.output
    assert f"AWS profile 'backups' cannot be looked up: {file}" in ran.stderr, ran.output
    assert said in ran.stderr and "is in neither" not in ran.stderr
    assert "SECRETzq60b" not in ran.output


def test_verify_remote_names_an_unknown_remote_as_a_usage_error(project: Project, remote: Remote) -> None:
    site(project)
    write(project, remote)
    ran = run(project, remote, "verify", "--remote", "nosuch")
    assert ran.code == 2
    assert "--remote nosuch: no such remote" in ran.stderr


def test_the_remote_copy_is_a_zip_every_reader_opens(project: Project, remote: Remote, tmp_path: Path) -> None:
    site(project)
    write(project, remote)
    assert run(project, remote, "backup").code == 0
    [name] = remote.names("site")
    copy = tmp_path / name
    copy.write_bytes(remote.read("site", name))
    with zipfile.ZipFile(copy) as archive:
        assert archive.testzip() is None
        assert archive.read("index.html") == b"<h1>hello</h1>\n"
    assert (
        hashlib.sha256(copy.read_bytes()).hexdigest() == hashlib.sha256(project.archives()[0].read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("checksum", ["sha256", "md5"])
def test_max_bandwidth_caps_the_upload_rate(project: Project, remote: Remote, checksum: str) -> None:
    # A lower bound only: a busy machine can make the upload slower, never faster than allowed.
    # With checksum: md5 an S3 copy goes up in one request, outside s3transfer: it was not paced.
    if checksum == "md5" and not isinstance(remote, S3Remote):
        pytest.skip("checksum is an s3 remote's setting")
    project.file("site/noise.bin", os.urandom(3 << 20))  # incompressible: the archive is about 3 MiB
    settings = {"max_bandwidth": "1M"} | ({"checksum": checksum} if isinstance(remote, S3Remote) else {})
    write(project, remote, settings_of_remote=settings)
    ran = run(project, remote, "backup", "--format", "json")
    assert ran.code == 0, ran.output
    [copy] = ran.json()["targets"][0]["offsite"]
    assert copy["bytes"] >= 3 << 20
    assert copy["seconds"] >= 2.0  # 3 MiB at 1 MiB/s, less the first second's allowance


def test_push_to_one_remote_says_which_targets_do_not_copy_there(project: Project) -> None:
    # A target copying to another remote was said to have "no remote to copy to (offsite: is empty)".
    project.file("src/a.txt")
    project.write_manifest(
        """
        version: 1
        remotes:
          n1: {type: folder, path: n1}
          n2: {type: folder, path: n2}
        targets:
          - {name: a, path: src, offsite: [n1]}
          - {name: b, path: src, offsite: [n2]}
          - {name: c, path: src}
        """
    )
    for folder in ("n1", "n2"):
        (project.root / folder).mkdir()
    made = project.invoke("backup")
    assert made.code == 0, made.output

    ran = project.invoke("push", "--remote", "n1")

    assert ran.code == 0, ran.output
    assert "skipped: [b] => does not copy to remote n1" in ran.stdout, ran.output
    assert "skipped: [c] => no remote to copy to (offsite: is empty)" in ran.stdout, ran.output


def test_a_new_host_under_another_name_sends_no_archive_of_an_empty_folder(project: Project) -> None:
    # The refusal counted this host's copies only: a replacement host under another name sent an
    # archive of nothing, exit 0, and a restore from the remote then took it as the newest.
    project.file("src/a.txt")
    (project.root / "nas").mkdir()
    project.write_manifest(
        "version: 1\nremotes: {nas: {type: folder, path: nas}}\ntargets: [{name: site, path: src, offsite: [nas]}]\n"
    )
    assert project.invoke("backup", env={"BACKUP_HOST": "old"}).code == 0
    for archive in project.archives():
        archive.unlink()
    (project.root / "src" / "a.txt").unlink()

    ran = project.invoke("backup", env={"BACKUP_HOST": "new"})

    assert ran.code == 1, ran.output
    assert "holds no file to archive" in ran.stdout and "is this a new host whose data is not restored yet" in (
        ran.stdout
    ), ran.output
    assert project.archives() == []
    assert len(list((project.root / "nas" / "site").glob("*.zip"))) == 1


def test_status_of_a_host_whose_remote_holds_only_other_hosts_copies_says_so(project: Project) -> None:
    # "no archive at all locally or on any remote (...; nas 3 archives 516 B)": a count the
    # sentence before it seemed to deny.
    project.file("src/a.txt")
    (project.root / "nas").mkdir()
    project.write_manifest(
        "version: 1\nremotes: {nas: {type: folder, path: nas}}\n"
        "targets: [{name: site, path: src, offsite: [nas], max_age: 26h}]\n"
    )
    assert project.invoke("backup", env={"BACKUP_HOST": "old"}).code == 0
    for archive in project.archives():
        archive.unlink()
    ran = project.invoke("status", env={"BACKUP_HOST": "new"})
    assert ran.code == 1, ran.output
    assert (
        "failed: [site] => no archive at all locally or on any remote (on remote nas, 1 copy this host did not "
        "make); max_age is 26h" in ran.stdout
    ), ran.output


def test_a_remote_restore_says_it_passed_over_a_copy_dated_in_the_future(project: Project) -> None:
    # Passed over without a word, while one dated in the past but not this tool's was named.
    import shutil

    project.file("src/a.txt")
    (project.root / "nas").mkdir()
    project.write_manifest(
        "version: 1\nremotes: {nas: {type: folder, path: nas}}\ntargets: [{name: site, path: src, offsite: [nas]}]\n"
    )
    assert project.invoke("backup").code == 0
    [copy] = (project.root / "nas" / "site").glob("*.zip")
    future = archive_file_name("site", datetime(2099, 1, 1, tzinfo=timezone.utc))
    for suffix in ("", ".sha256", ".host"):
        shutil.copy2(f"{copy}{suffix}", copy.parent / f"{future}{suffix}")
    ran = project.invoke("restore", "site", "--to", "out", "--remote", "nas")
    assert ran.code == 0, ran.output
    assert f"passed over a newer copy: {future} is dated in the future (a clock ahead?)" in ran.output, ran.output
    assert f"restored: [site] => {copy.name}" in ran.stdout, ran.output
