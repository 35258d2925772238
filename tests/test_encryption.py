"""Encrypted offsite copies: what leaves the machine is age-encrypted to public keys only.

Everything goes through `invoke` in a subprocess against a folder remote, with real
keys (pyrage's X25519 keys, `ssh-keygen`'s ed25519 and RSA keys) and, where it is
installed, the real `age` command for the path that does not need this tool.
Damaged copies are made byte by byte, as a failing disk or an attacker would leave them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyrage
import pytest
from conftest import INVOKE, REPO, Project, Ran, have, needs

HEADER = b"age-encryption.org/v1\n"
MARKER = "Zq7-PLAINTEXT-MARKER-do-not-leak"  # appears in the zip (names and a stored member), never offsite
CHUNK = 64 * 1024 + 16  # one age payload chunk: 64 KiB of plaintext and its 16-byte tag


# --- keys and projects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgeKey:
    file: Path  # the identity file, as age-keygen writes it
    secret: str  # AGE-SECRET-KEY-1...
    public: str  # age1...


def age_key(folder: Path, name: str = "key.txt") -> AgeKey:
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    file = folder / name
    file.write_text(f"# public key: {public}\n{identity}\n", encoding="utf-8")
    return AgeKey(file, str(identity), public)


def ssh_key(folder: Path, kind: str) -> tuple[Path, str]:
    """A new SSH key pair without a passphrase: (private key file, public key line)."""
    private = folder / f"id_{kind}"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"ops-{kind}@example", "-f", str(private)],
        check=True,
        capture_output=True,
    )
    return private, private.with_name(private.name + ".pub").read_text(encoding="utf-8").strip()


def encryption_yaml(recipients: list[str] | None = None, recipients_file: str | None = None) -> str:
    if recipients_file is not None:
        return f"{{recipients_file: {recipients_file}}}"
    return "{recipients: [" + ", ".join(f'"{r}"' for r in recipients or []) + "]}"


def write_project(project: Project, encryption: str, stored_member_size: int = 200_000) -> None:
    """A folder target `site` with text, a member zip stores as is, a database and an empty folder,
    copied to the folder remote `vault` with `encryption`."""
    (project.root / "vault").mkdir(exist_ok=True)
    project.file("site/index.html", f"<h1>{MARKER}</h1>\n" * 50)
    project.file(f"site/{MARKER}.txt", "named after the marker\n")
    # .gz is stored without compression: the marker is in the local zip's bytes as written here.
    project.file("site/logs/old.gz", MARKER.encode() + os.urandom(stored_member_size))
    (project.root / "site" / "empty").mkdir()
    with closing(sqlite3.connect(project.root / "site" / "app.db")) as db:
        db.execute("CREATE TABLE t(x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [(f"row {n}",) for n in range(100)])
        db.commit()
    project.write_manifest(
        f"""
        version: 1
        remotes:
          vault:
            type: folder
            path: vault
            encryption: {encryption}
        targets:
          - name: site
            path: site
            offsite: [vault]
        """
    )


def copies(project: Project) -> list[Path]:
    """The objects in the remote, oldest first."""
    return sorted(p for p in (project.root / "vault" / "site").glob("site-*.zip.age"))


def tree(folder: Path) -> dict[str, bytes | str | None]:
    """Every path under `folder`: file bytes, a database's SQL dump, or None for a folder.

    A database is compared by content: its snapshot is a new file whose header counters differ.
    """
    found: dict[str, bytes | str | None] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            found[key] = None
        elif path.suffix == ".db":
            with closing(sqlite3.connect(path)) as db:
                found[key] = "\n".join(db.iterdump())
        else:
            found[key] = path.read_bytes()
    return found


def one_line_error(ran: Ran) -> str:
    """The single line a failure prints; no traceback."""
    assert "Traceback" not in ran.output, ran.output
    lines = [line for line in ran.output.splitlines() if line.strip()]
    assert len(lines) == 1, ran.output
    return lines[0]


def nothing_left(project: Project, to: Path) -> None:
    """--to holds nothing and no decrypted scratch copy is left beside it."""
    assert not to.exists() or not any(to.iterdir()), sorted(to.rglob("*"))
    leftovers = [p.name for p in to.parent.iterdir() if p.name.startswith(".backup-fetch-")]
    assert leftovers == []


@dataclass
class Backed:
    """A project backed up once to an encrypted folder remote."""

    project: Project
    key: AgeKey

    @property
    def archive(self) -> Path:
        return self.project.archives()[-1]

    @property
    def copy(self) -> Path:
        return copies(self.project)[-1]


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    """One backup shared by the tests that only read it (each backup costs a second or two)."""
    project = Project(tmp_path_factory.mktemp("encrypted"))
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]))
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    yield Backed(project, key)


@pytest.fixture
def backed(backed_up: Backed, tmp_path: Path) -> Backed:
    """A private copy of the shared backup, for tests that damage it (paths in the manifest are relative)."""
    root = tmp_path / "p"
    shutil.copytree(backed_up.project.root, root, symlinks=True)
    return Backed(Project(root), AgeKey(root / "key.txt", backed_up.key.secret, backed_up.key.public))


# --- what is stored ------------------------------------------------------------------------------


def test_the_copy_is_an_age_file_whose_recorded_checksum_is_the_ciphertexts(backed_up: Backed) -> None:
    copy, archive = backed_up.copy, backed_up.archive
    assert copy.name == archive.name + ".age"
    data = copy.read_bytes()
    assert data.startswith(HEADER)
    assert re.search(rb"^-> X25519 ", data, re.MULTILINE)
    recorded = copy.with_name(copy.name + ".sha256").read_text(encoding="utf-8")
    assert recorded == f"{hashlib.sha256(data).hexdigest()}  {copy.name}\n"  # one line: any sha256sum -c reads it
    host = (os.environ.get("BACKUP_HOST") or socket.gethostname()).strip()
    assert copy.with_name(copy.name + ".host").read_text(encoding="utf-8") == f"{host}\n"
    # The ciphertext lived only as long as its upload: nothing encrypted stays beside the archives.
    assert sorted(p.name for p in archive.parent.iterdir() if ".age" in p.name) == []


def test_the_copy_decrypts_to_the_local_archive_byte_for_byte(backed_up: Backed) -> None:
    plain = pyrage.decrypt(backed_up.copy.read_bytes(), [pyrage.x25519.Identity.from_str(backed_up.key.secret)])
    assert plain == backed_up.archive.read_bytes()


@needs("age")
def test_plain_age_and_unzip_give_back_the_archive_without_this_tool(backed_up: Backed, tmp_path: Path) -> None:
    out = tmp_path / "site.zip"
    subprocess.run(["age", "-d", "-i", str(backed_up.key.file), "-o", str(out), str(backed_up.copy)], check=True)
    assert out.read_bytes() == backed_up.archive.read_bytes()
    with zipfile.ZipFile(out) as opened:
        assert opened.testzip() is None
        assert opened.read("index.html") == (backed_up.project.root / "site/index.html").read_bytes()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_copy_is_readable_by_its_owner_only(project: Project, tmp_path: Path) -> None:
    # Encrypted or not, a copy in a folder remote is its owner's alone (it was created with
    # the umask's mode: 0644 under umask 022).
    write_project(project, encryption_yaml([age_key(tmp_path).public]))
    before = os.umask(0o022)
    try:
        ran = project.invoke("backup")
    finally:
        os.umask(before)
    assert ran.code == 0, ran.output
    [copy] = copies(project)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_push_begins_again_an_encryption_left_by_a_killed_run(project: Project, tmp_path: Path) -> None:
    # backup clears what a killed run left; push did not, and failed with "File exists".
    write_project(project, encryption_yaml([age_key(tmp_path).public]))
    vault = project.root / "vault"
    vault.rename(project.root / "vault-away")  # the remote's disk is not mounted: the copy fails
    assert project.invoke("backup").code == 1
    vault.with_name("vault-away").rename(vault)
    [archive] = project.archives()
    leftover = archive.with_name(f".{archive.name.removesuffix('.zip')}.age.partial")
    leftover.write_bytes(b"age-encryption.org/v1\n-> X25519 half of a header")

    ran = project.invoke("push")

    assert ran.code == 0, ran.output
    assert [c.name for c in copies(project)] == [f"{archive.name}.age"]
    assert not leftover.exists()


def test_the_copy_holds_none_of_the_plaintext(backed_up: Backed) -> None:
    marker = MARKER.encode()
    # The marker is in the local archive (a member name and a stored member), so this can fail.
    assert backed_up.archive.read_bytes().count(marker) >= 2
    for copy in copies(backed_up.project):
        data = copy.read_bytes()
        assert marker not in data
        assert b"index.html" not in data
        assert b"PK\x03\x04" not in data[:4096]


# --- getting data back ---------------------------------------------------------------------------


def test_restore_from_the_remote_with_the_identity_gives_back_the_source(backed: Backed) -> None:
    project, to = backed.project, backed.project.root / "restored"
    ran = project.invoke("restore", "site", "--remote", "vault", "--identity", str(backed.key.file), "--to", str(to))
    assert ran.code == 0, ran.output
    assert f"=> {backed.copy.name} -> " in ran.stdout  # the remote's copy, not the local archive
    assert "1 database passed integrity_check" in ran.stdout
    assert tree(to) == tree(project.root / "site")
    assert [p.name for p in to.parent.iterdir() if p.name.startswith(".backup-fetch-")] == []


def test_restore_from_the_remote_does_not_fall_back_to_the_local_archive(backed: Backed) -> None:
    # With the local archives gone, only the remote can give the data back.
    for archive in backed.project.archives():
        archive.unlink()
    to = backed.project.root / "restored"
    ran = backed.project.invoke(
        "restore", "site", "--remote", "vault", "--identity", str(backed.key.file), "--to", str(to)
    )
    assert ran.code == 0, ran.output
    assert tree(to) == tree(backed.project.root / "site")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_an_identity_file_with_a_byte_order_mark_works(backed: Backed, encoding: str) -> None:
    # What `age-keygen > key.txt` gives in Windows PowerShell 5 (UTF-16), or Notepad (a UTF-8 mark).
    identity = backed.project.root / f"key-{encoding}.txt"
    identity.write_text(backed.key.file.read_text(encoding="utf-8").replace("\n", "\r\n"), encoding=encoding)
    to = backed.project.root / "restored"
    ran = backed.project.invoke("restore", "site", "--remote", "vault", "--identity", str(identity), "--to", str(to))
    assert ran.code == 0, ran.output
    assert tree(to) == tree(backed.project.root / "site")


def test_restore_from_the_remote_keeps_the_local_restores_rules(backed: Backed) -> None:
    to = backed.project.root / "restored"
    existing = backed.project.file("restored/index.html", "mine, not the backup's\n")
    ran = backed.project.invoke(
        "restore", "site", "--remote", "vault", "--identity", str(backed.key.file), "--to", str(to)
    )
    assert ran.code == 2, ran.output  # as a local restore: nothing done, say how to go on
    assert "index.html already exists; pass --force to overwrite" in one_line_error(ran)
    assert [p.name for p in to.parent.iterdir() if p.name.startswith(".backup-fetch-")] == []
    assert existing.read_text(encoding="utf-8") == "mine, not the backup's\n"
    assert sorted(p.name for p in to.iterdir()) == ["index.html"]


def test_restore_of_an_encrypted_remote_without_identity_stops_with_one_sentence(backed: Backed) -> None:
    to = backed.project.root / "restored"
    ran = backed.project.invoke("restore", "site", "--remote", "vault", "--to", str(to))
    assert ran.code == 2, ran.output
    assert "is encrypted; pass --identity FILE" in one_line_error(ran)
    nothing_left(backed.project, to)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("public", "line 2 is a public key (age1...), which encrypts; restoring needs the secret key"),
        ("cut", "line 2 looks like an age secret key but is not a valid one"),
        ("other", "line 2 is not an age secret key (AGE-SECRET-KEY-1...)"),
    ],
)
def test_an_unusable_identity_line_is_named_by_number_never_shown(backed: Backed, content: str, why: str) -> None:
    secret = backed.key.file.read_text(encoding="utf-8").split("AGE-SECRET-KEY-1")[1].split()[0]
    line = {"public": backed.key.public, "cut": f"AGE-SECRET-KEY-1{secret[:-3]}", "other": "hello"}[content]
    identity = backed.project.file("identity.txt", f"# made by hand\n{line}\n")
    to = backed.project.root / "restored"
    ran = backed.project.invoke("restore", "site", "--remote", "vault", "--identity", str(identity), "--to", str(to))
    assert ran.code == 2, ran.output
    assert f"--identity {identity}: {why}" in one_line_error(ran)
    assert secret[:-3] not in ran.output
    nothing_left(backed.project, to)


@pytest.mark.parametrize("to_exists", [False, True], ids=["new-folder", "empty-folder"])
def test_a_wrong_identity_cannot_decrypt_and_nothing_is_written(backed: Backed, to_exists: bool) -> None:
    wrong = age_key(backed.project.root, "wrong.txt")
    to = backed.project.root / "restored"
    if to_exists:
        to.mkdir()
    ran = backed.project.invoke("restore", "site", "--remote", "vault", "--identity", str(wrong.file), "--to", str(to))
    assert ran.code == 1, ran.output
    assert "cannot be decrypted with this identity" in one_line_error(ran)
    nothing_left(backed.project, to)
    assert to.exists() == to_exists


def _header_end(data: bytes) -> int:
    """Where the payload (its 16-byte nonce, then the chunks) starts: after the '--- MAC' line."""
    mac_line = data.index(b"\n--- ") + 1
    return data.index(b"\n", mac_line) + 1


def _truncate_mid_chunk(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _truncate_at_a_chunk_boundary(data: bytes) -> bytes:
    # Cut exactly after a whole chunk: only the "last chunk" flag of the age stream reveals it.
    cut = _header_end(data) + 16 + CHUNK
    assert cut < len(data) - CHUNK
    return data[:cut]


def _flip(offset_of: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        offset = offset_of(data)
        return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]

    return damage


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated-mid-chunk": (_truncate_mid_chunk, "is truncated or has been tampered with"),
    "truncated-at-a-chunk-boundary": (_truncate_at_a_chunk_boundary, "is truncated or has been tampered with"),
    "byte-flipped-in-the-payload": (_flip(lambda d: len(d) // 2), "is truncated or has been tampered with"),
    "byte-flipped-in-the-last-chunk": (_flip(lambda d: len(d) - 1), "is truncated or has been tampered with"),
    "byte-flipped-in-the-header-mac": (_flip(lambda d: _header_end(d) - 3), "is truncated or has been tampered with"),
    "byte-flipped-in-the-age-line": (_flip(lambda d: 2), "is not in the age format"),
}


def _damage_behind_the_record(copy: Path, change: Callable[[bytes], bytes]) -> None:
    """Damage a copy and record the damaged bytes' checksum as its own, as someone who can write
    both would: the record no longer tells, so age's own authentication must."""
    damaged = change(copy.read_bytes())
    copy.write_bytes(damaged)
    copy.with_name(f"{copy.name}.sha256").write_text(f"{hashlib.sha256(damaged).hexdigest()}  {copy.name}\n")


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_copy_is_reported_as_such_and_nothing_from_it_is_written(backed: Backed, damage: str) -> None:
    change, expected = DAMAGE[damage]
    copy = backed.copy
    _damage_behind_the_record(copy, change)
    to = backed.project.root / "restored"
    ran = backed.project.invoke(
        "restore", "site", "--remote", "vault", "--identity", str(backed.key.file), "--to", str(to)
    )
    assert ran.code == 1, ran.output
    line = one_line_error(ran)
    assert expected in line and copy.name in line
    nothing_left(backed.project, to)


@pytest.mark.parametrize("damage", ["truncated-at-a-chunk-boundary", "byte-flipped-in-the-payload"])
def test_verify_download_reports_a_damaged_copy(backed: Backed, damage: str) -> None:
    change, expected = DAMAGE[damage]
    _damage_behind_the_record(backed.copy, change)
    ran = backed.project.invoke("verify", "--remote", "vault", "--download", "--identity", str(backed.key.file))
    assert ran.code == 1, ran.output
    assert f"failed: [site] => {backed.copy.name}: {expected}" in ran.output  # the copy named once
    assert "Traceback" not in ran.output
    assert [p.name for p in (backed.project.root / "backups").iterdir() if p.name.startswith(".backup-fetch-")] == []


# --- verify --------------------------------------------------------------------------------------


def test_a_damaged_copy_is_caught_by_its_recorded_checksum_before_any_decryption(backed: Backed) -> None:
    copy = backed.copy
    copy.write_bytes(_flip(lambda d: len(d) // 2)(copy.read_bytes()))
    to = backed.project.root / "restored"
    ran = backed.project.invoke(
        "restore", "site", "--remote", "vault", "--identity", str(backed.key.file), "--to", str(to),
        "--archive", copy.name,
    )  # fmt: skip
    assert ran.code == 1, ran.output
    assert f"{copy.name} on remote vault is not the copy uploaded" in one_line_error(ran)
    nothing_left(backed.project, to)


def test_verify_remote_needs_no_key_and_detects_a_replaced_copy(backed: Backed) -> None:
    ran = backed.project.invoke("verify", "--remote", "vault")
    assert ran.code == 0, ran.output
    assert (
        f"ok: [site] => {backed.copy.name} (its SHA-256, read in full, matches the one recorded at upload" in ran.stdout
    )
    # A replacement that is itself a valid age file of the same archive, to the same key:
    # only the checksum recorded at upload can tell it from the original.
    copy = backed.copy
    copy.write_bytes(pyrage.encrypt(backed.archive.read_bytes(), [pyrage.x25519.Recipient.from_str(backed.key.public)]))
    ran = backed.project.invoke("verify", "--remote", "vault")
    assert ran.code == 1, ran.output
    # The line names the copy once (it said "NAME: NAME does not match ...").
    assert f"failed: [site] => {copy.name}: does not match the checksum recorded when it was copied" in ran.stdout


def test_verify_remote_download_decrypts_and_verifies_in_full(backed: Backed) -> None:
    ran = backed.project.invoke("verify", "--remote", "vault", "--download", "--identity", str(backed.key.file))
    assert ran.code == 0, ran.output
    line = r"ok: \[site\] => site-\S+\.zip\.age \(4 files, 2 folders, 1 database checked"
    assert re.search(line, ran.stdout), ran.stdout


def test_verify_remote_download_without_identity_is_a_usage_error(backed: Backed) -> None:
    ran = backed.project.invoke("verify", "--remote", "vault", "--download")
    assert ran.code == 2, ran.output
    assert one_line_error(ran) == (
        "error: remote vault is encrypted; pass --identity FILE (the age identity or SSH private key of a recipient)"
    )


def test_verify_remote_identity_without_download_is_a_usage_error(backed: Backed) -> None:
    # Accepted, the key was never used: the checksums alone were compared, exit 0, and a key that
    # cannot open the copies passed for one that can.
    ran = backed.project.invoke("verify", "--remote", "vault", "--identity", str(backed.key.file))
    assert ran.code == 2, ran.output
    assert one_line_error(ran) == (
        "error: --identity decrypts the copies that --download reads back; without --download only their "
        "checksums are compared: add --download"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--download"],
        ["verify", "--identity", "KEY"],
        ["restore", "site", "--to", "out", "--identity", "KEY"],
    ],
)
def test_remote_flags_without_a_remote_are_usage_errors(backed: Backed, argv: list[str]) -> None:
    # Accepted and ignored: `verify --download` checked the local archives only, and said ok.
    argv = [str(backed.key.file) if a == "KEY" else a for a in argv]
    ran = backed.project.invoke(*argv)
    assert ran.code == 2, ran.output
    flag = "--download" if "--download" in argv else "--identity"
    assert one_line_error(ran) == f"error: {flag} works on a remote's copies; add --remote NAME"
    assert not (backed.project.root / "out").exists()


# --- keys and recipients -------------------------------------------------------------------------


@needs("ssh-keygen")
@pytest.mark.slow
def test_ssh_recipients_and_an_ssh_private_key_as_identity(project: Project, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    ed25519, ed25519_public = ssh_key(keys, "ed25519")
    rsa, rsa_public = ssh_key(keys, "rsa")
    write_project(project, encryption_yaml([ed25519_public, rsa_public]))
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    data = copies(project)[-1].read_bytes()
    assert re.search(rb"^-> ssh-ed25519 ", data, re.MULTILINE) and re.search(rb"^-> ssh-rsa ", data, re.MULTILINE)
    for identity in (ed25519, rsa):
        to = tmp_path / f"restored-{identity.name}"
        ran = project.invoke("restore", "site", "--remote", "vault", "--identity", str(identity), "--to", str(to))
        assert ran.code == 0, ran.output
        assert tree(to) == tree(project.root / "site")
    if have("age"):
        plain = subprocess.run(
            ["age", "-d", "-i", str(ed25519), str(copies(project)[-1])], check=True, capture_output=True
        ).stdout
        assert plain == project.archives()[-1].read_bytes()


@needs("ssh-keygen")
@pytest.mark.slow
def test_recipients_file_with_comments_encrypts_to_every_key_in_it(project: Project, tmp_path: Path) -> None:
    first, second = age_key(tmp_path, "first.txt"), age_key(tmp_path, "second.txt")
    ssh_private, ssh_public = ssh_key(tmp_path, "ed25519")
    project.file(
        "recipients.txt",
        f"\ufeff# operations team (a byte-order mark first, as Notepad saves it)\n{first.public}\n"
        "\n   # the offline laptop, indented comment\n"
        f"  {second.public}  \n{ssh_public}\n",
    )
    write_project(project, encryption_yaml(recipients_file="recipients.txt"))
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    data = copies(project)[-1].read_bytes()
    assert len(re.findall(rb"^-> X25519 ", data, re.MULTILINE)) == 2
    for identity in (first.file, second.file, ssh_private):
        to = tmp_path / f"restored-{identity.name}"
        ran = project.invoke("restore", "site", "--remote", "vault", "--identity", str(identity), "--to", str(to))
        assert ran.code == 0, ran.output
        assert tree(to) == tree(project.root / "site")


def test_a_malformed_recipient_is_a_manifest_error_at_its_line_and_column(project: Project) -> None:
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]))
    project.write_manifest(
        f"""
        version: 1
        remotes:
          vault:
            type: folder
            path: vault
            encryption:
              recipients:
                - "{key.public}"
                - "age1notakey"
        targets:
          - name: site
            path: site
            offsite: [vault]
        """
    )
    ran = project.invoke("backup")
    assert ran.code == 2, ran.output
    assert (
        "backups.yml:9:11: remotes.vault.encryption.recipients[1]: 'age1notakey' is not a valid age recipient"
        in ran.stderr
    ), ran.stderr
    assert "1 problem in the manifest; nothing was done" in ran.stderr
    assert not (project.root / "backups").exists()
    assert list((project.root / "vault").iterdir()) == []


def test_a_malformed_recipient_in_a_recipients_file_is_reported_at_its_line_there(project: Project) -> None:
    key = age_key(project.root)
    project.file("recipients.txt", f"# ops\n{key.public}\n\nssh-ed25519 AAAAnot-a-key ops@example\n")
    write_project(project, encryption_yaml(recipients_file="recipients.txt"))
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    assert "recipients.txt:4:1: remotes.vault.encryption.recipients_file: 'ssh-ed25519 AAAAnot-a-key" in ran.stderr
    assert "is not a valid ssh-ed25519 public key" in ran.stderr


def test_a_private_key_given_as_recipient_is_refused_without_being_printed(project: Project) -> None:
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.secret]))
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 2, ran.output
    assert "this holds a private key, which must never be in the manifest" in ran.stderr
    assert key.secret[15:] not in ran.output and key.secret[15:].lower() not in ran.output.lower()
    assert not (project.root / "backups").exists()


@pytest.mark.parametrize(
    "shape",
    ["{{recipients: {key}}}", "{key}", "{{recipients_file: {key}}}", '{{recipients: "{key}\\nage1x"}}'],
    ids=["string-for-list", "string-for-mapping", "as-file-name", "two-lines"],
)
def test_a_private_key_in_the_wrong_shape_is_refused_without_being_printed(project: Project, shape: str) -> None:
    # The schema's message quoted the value whole, to stderr and into the JSON document; given
    # as a string instead of a list, the key was then checked a character at a time, one line each.
    key = age_key(project.root)
    write_project(project, shape.format(key=key.secret))
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 2, ran.output
    assert ran.output.count("holds a private key") == 2, ran.output  # the line, and the JSON's copy of it
    assert key.secret[15:] not in ran.output and key.secret[15:].lower() not in ran.output.lower()
    assert "Traceback" not in ran.output
    assert not (project.root / "backups").exists()


@pytest.mark.parametrize("wrong", ["[[age1x]]", "[5]", "[null]"], ids=["list", "number", "null"])
@pytest.mark.parametrize("key", ["recipients", "recipients_file"])
def test_a_wrong_type_under_encryption_is_a_located_problem(project: Project, key: str, wrong: str) -> None:
    # Each ended in a traceback, exit 1, and no JSON document.
    write_project(project, f"{{{key}: {wrong}}}")
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output
    [problem] = json.loads(ran.stdout)["errors"]
    assert f"remotes.vault.encryption.{key}" in problem and "found, expected" in problem, problem


@needs("ssh-keygen")
def test_an_ssh_private_key_as_recipients_file_is_refused_in_one_line_showing_none_of_it(
    project: Project, tmp_path: Path
) -> None:
    # Refused line by line, its base64 body came out 37 characters a line: 24 of the 32 bytes
    # of an ed25519 key's secret.
    private, _ = ssh_key(tmp_path, "ed25519")
    write_project(project, encryption_yaml(recipients_file=str(private)))
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    [problem] = [line for line in ran.stderr.splitlines() if "recipients_file" in line]
    assert f"{private} holds a private key, which must never be on the backup host" in problem
    body = [line for line in private.read_text().splitlines() if line and not line.startswith("-----")]
    assert body and not any(line[:12] in ran.output for line in body)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("key=AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ", "this holds a private key"),
        ("hunter2-not-a-key", "this is not"),
    ],
)
def test_a_recipient_shaped_unlike_a_public_key_is_never_quoted(project: Project, value: str, said: str) -> None:
    write_project(project, encryption_yaml([value]))
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    assert f"remotes.vault.encryption.recipients[0]: {said}" in ran.stderr, ran.stderr
    assert value[4:16] not in ran.output and "hunter2" not in ran.output


# --- the backup host holds no private key ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="named pipes (FIFOs) are how a read is caught here")
def test_backup_push_and_prune_never_read_a_private_key(project: Project, tmp_path: Path) -> None:
    key = age_key(tmp_path, "offline-key.txt")
    write_project(project, encryption_yaml([key.public]))
    # Every place a private key could be looked for is a FIFO: opening one to read blocks
    # until the run times out, so any read of a key fails this test instead of passing silently.
    home = tmp_path / "home"
    for where in (".ssh/id_ed25519", ".ssh/id_rsa", ".config/age/keys.txt"):
        (home / where).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(home / where)
    os.mkfifo(project.root / "key.txt")
    env = {"HOME": str(home), "AGE_IDENTITY": str(project.root / "key.txt")}
    for command in ("backup", "push", "prune"):
        help_text = subprocess.run(
            [str(INVOKE), "--search-root", str(REPO), "--help", command], capture_output=True, text=True, check=True
        ).stdout
        assert "--manifest" in help_text and "--identity" not in help_text
    runs = [
        project.invoke("backup", "--format", "json", env=env, timeout=60),
        project.invoke("backup", "--force", env=env, timeout=60),
    ]
    copies(project)[0].unlink()  # the remote lost a copy: push sends it again, encrypted
    runs.append(project.invoke("push", "--format", "json", env=env, timeout=60))
    assert len(copies(project)) == 2
    text = project.manifest.read_text(encoding="utf-8")
    project.manifest.write_text(text.replace("offsite: [vault]\n", "offsite: [vault]\n    keep: {last: 1}\n"))
    runs.append(project.invoke("prune", env=env, timeout=60))  # deletes one archive here and one copy there
    for ran in runs:
        assert ran.code == 0, ran.output
        assert key.secret not in ran.output and "AGE-SECRET-KEY" not in ran.output.upper()
    assert len(copies(project)) == 1
    assert [p.name.removesuffix(".age") for p in copies(project)] == [a.name for a in project.archives()]
    assert all(p.read_bytes().startswith(HEADER) for p in copies(project))


def test_an_interrupted_encryption_leaves_nothing_beyond_the_next_run(project: Project) -> None:
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]))
    assert project.invoke("backup").code == 0
    # What a run killed while encrypting leaves beside the archive it was encrypting.
    left = project.root / "backups" / f".{project.archives()[-1].name.removesuffix('.zip')}.age.partial"
    left.write_bytes(HEADER + b"half of a ciphertext")
    ran = project.invoke("backup", "--force")
    assert ran.code == 0, ran.output
    assert not left.exists()


# --- memory --------------------------------------------------------------------------------------

_PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys
    code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
    print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """
)


def peak_kib(*args: str) -> tuple[int, int]:
    """Run a command in its own parent process; return its status and the largest resident size (KiB)
    any of its processes reached (Linux reports ru_maxrss in KiB)."""
    done = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, check=True)
    code, peak = done.stdout.split()
    return int(code), int(peak)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_memory_stays_flat_for_a_large_archive(project: Project) -> None:
    size = 300 * 1024 * 1024
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]), stored_member_size=1)
    with (project.root / "site" / "big.bin").open("wb") as file:  # incompressible: the zip is as big
        for _ in range(size // (1 << 20)):
            file.write(os.urandom(1 << 20))
    base = [str(INVOKE), "--search-root", str(REPO)]
    code, backup_peak = peak_kib(*base, "backup", "--manifest", str(project.manifest))
    assert code == 0
    assert copies(project)[-1].stat().st_size > size
    to = project.root / "restored"
    code, restore_peak = peak_kib(
        *base, "restore", "site", "--manifest", str(project.manifest), "--remote", "vault",
        "--identity", str(key.file), "--to", str(to),
    )  # fmt: skip
    assert code == 0
    assert (to / "big.bin").stat().st_size == size
    # Holding the archive or its ciphertext in memory would take at least 300 MB.
    assert backup_peak < 150 * 1024, f"backup peaked at {backup_peak // 1024} MiB"
    assert restore_peak < 150 * 1024, f"restore peaked at {restore_peak // 1024} MiB"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is how cron and systemd stop a run")
def test_a_push_stopped_while_encrypting_exits_130_and_leaves_no_ciphertext(project: Project) -> None:
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]), stored_member_size=1)
    with (project.root / "site" / "big.bin").open("wb") as file:
        for _ in range(100):
            file.write(os.urandom(1 << 20))
    vault = project.root / "vault"
    vault.rmdir()  # the remote is away: the backup keeps its archive and sends nothing
    assert project.invoke("backup").code == 1
    vault.mkdir()
    destination = project.root / "backups"
    push = subprocess.Popen(
        [str(INVOKE), "--search-root", str(REPO), "push", "--manifest", str(project.manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        # Stop it once the ciphertext has begun (an event, not a time): 100 MB take a while to encrypt.
        while push.poll() is None and not any(p.name.endswith(".age.partial") for p in destination.iterdir()):
            pass
        push.send_signal(signal.SIGTERM)
        output, _ = push.communicate(timeout=120)
    finally:
        push.kill()
    assert push.returncode == 130, output
    assert "Traceback" not in output
    assert sorted(p.name for p in destination.iterdir() if "partial" in p.name or ".age" in p.name) == []
    assert [p.name for p in vault.rglob("*") if p.is_file()] == []
    ran = project.invoke("push")  # the next run sends it whole
    assert ran.code == 0, ran.output
    assert [p.name.removesuffix(".age") for p in copies(project)] == [a.name for a in project.archives()]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_recipients_file_that_is_a_named_pipe_is_a_located_problem_not_a_hang(project: Project) -> None:
    # Every command, `list` included, waited for a writer for ever.
    pipe = project.root / "recipients.txt"
    os.mkfifo(pipe)
    write_project(project, encryption_yaml(recipients_file=str(pipe)))
    ran = project.invoke("list", timeout=60)
    assert ran.code == 2, ran.output
    assert f"cannot read {pipe}: not a regular file: a named pipe, a folder or a device" in ran.stderr


def test_a_plain_copy_from_before_encryption_is_restored_when_named(project: Project) -> None:
    # Its series is kept when encryption is turned on, and named with --archive it was "no copy
    # of that name", exit 2, while the file was there.
    key = age_key(project.root)
    write_project(project, encryption_yaml([key.public]))
    plain_manifest = project.manifest.read_text(encoding="utf-8")
    project.write_manifest(plain_manifest.replace(f"encryption: {encryption_yaml([key.public])}", ""))
    assert "encryption" not in project.manifest.read_text(encoding="utf-8")
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-01T00:00:00Z"}).code == 0
    [plain] = [p.name for p in (project.root / "vault" / "site").glob("*.zip")]
    project.write_manifest(plain_manifest)  # encrypted from now on
    assert project.invoke("backup", env={"BACKUP_NOW": "2026-01-02T00:00:00Z"}).code == 0
    assert (project.root / "vault" / "site" / f"{plain}.age").exists()  # the new series holds it too, encrypted

    ran = project.invoke("restore", "site", "--to", "out", "--remote", "vault", "--archive", plain)

    assert ran.code == 0, ran.output
    assert f"restored: [site] => {plain}" in ran.stdout, ran.output
    assert (project.root / "out" / f"{MARKER}.txt").read_text(encoding="utf-8") == "named after the marker\n"
