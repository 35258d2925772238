"""`invoke verify` reads archives back in full; `invoke restore` puts them back safely.

Damaged and hostile archives are made here byte by byte (or with Python's
zipfile) and put in a target's destination under a valid archive name, as an
attacker or a failing disk would leave them.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import stat
import struct
import subprocess
import sys
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
from conftest import Project, Ran, integrity, names

BIG_TEXT = "".join(f"line {n}: the quick brown fox jumps over the lazy dog\n" for n in range(20000))
CRAFTED = "20260101T000000.000000Z"  # a valid archive time, older than any the clock gives


# --- helpers -------------------------------------------------------------------------------------


def make_db(path: Path, rows: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        connection.execute("CREATE INDEX IF NOT EXISTS items_name ON items(name)")
        have = connection.execute("SELECT count(*) FROM items").fetchone()[0]
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO items(name) VALUES (?)", [(f"item {n}",) for n in range(have + 1, rows + 1)]
        )
        connection.execute("COMMIT")
    return path


def damaged_db_bytes(folder: Path) -> bytes:
    """A database whose schema page reads but one table page is zeros: integrity_check fails."""
    database = make_db(folder / "to-damage.db", rows=2000)
    data = bytearray(database.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    start = data.find(b"item 1000") // page_size * page_size
    assert start >= page_size
    data[start : start + page_size] = bytes(page_size)
    database.unlink()
    return bytes(data)


def tree(folder: Path) -> dict[str, bytes | str | None]:
    """Every path under `folder`: file bytes, link target, or None for a folder."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[key] = str(path.readlink())
        elif path.is_dir():
            found[key] = None
        else:
            found[key] = path.read_bytes()
    return found


def lines(ran: Ran, status: str, target: str) -> list[str]:
    prefix = f"{status}: [{target}] =>"
    return [line for line in ran.output.splitlines() if line.startswith(prefix)]


def recap(ran: Ran, target: str) -> dict[str, int]:
    """The RECAP counts of `target`."""
    text = ran.output.split("RECAP", 1)[1]
    match = re.search(rf"^{re.escape(target)}\s+:\s+(.*)$", text, re.MULTILINE)
    assert match, ran.output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def data_offset(archive: Path, member: str) -> tuple[int, zipfile.ZipInfo]:
    """Where `member`'s (compressed) data starts in the archive file."""
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(member)
    with archive.open("rb") as file:
        file.seek(info.header_offset)
        header = file.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


class _Cp437Info(zipfile.ZipInfo):
    """A member whose name is stored as cp437 bytes without the UTF-8 flag, as old zip tools
    write names (Python's zipfile writes only ASCII or flagged UTF-8)."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("cp437"), self.flag_bits


def symlink_info(name: str, cp437: bool = False) -> zipfile.ZipInfo:
    info = (_Cp437Info if cp437 else zipfile.ZipInfo)(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def craft(destination: Path, target: str, members: list[tuple[zipfile.ZipInfo | str, bytes | str]]) -> Path:
    """A zip made with zipfile, under a valid archive name of `target`."""
    destination.mkdir(parents=True, exist_ok=True)
    archive = destination / f"{target}-{CRAFTED}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        for info, data in members:
            opened.writestr(info, data)
    return archive


SITE_MANIFEST = """
    version: 1
    targets:
      - name: site
        path: site
        tags: [web]
      - name: app-db
        path: data/app.db
        tags: [db]
    """


def make_site(project: Project) -> None:
    project.file("site/big.txt", BIG_TEXT)
    project.file("site/photo.jpg", bytes(range(256)) * 400)  # stored, never deflated
    project.file("site/sub/small.txt", "small\n")
    make_db(project.root / "site" / "data.db", rows=50)
    make_db(project.root / "data" / "app.db", rows=20)
    project.write_manifest(SITE_MANIFEST)


def back_up(project: Project, times: int = 1) -> None:
    for _ in range(times):
        ran = project.invoke("backup")
        assert ran.code == 0, ran.output


# --- verify --------------------------------------------------------------------------------------


def test_verify_reads_every_archive_one_line_each_with_a_recap(project: Project) -> None:
    make_site(project)
    back_up(project, times=3)
    site, databases = project.archives(target="site"), project.archives(target="app-db")
    assert len(site) == 3 and len(databases) == 3
    before = project.snapshot_tree()

    ran = project.invoke("verify")

    assert ran.code == 0, ran.output
    ok = lines(ran, "ok", "site")
    assert len(ok) == 3
    for archive, line in zip(site, ok, strict=True):  # oldest first
        assert archive.name in line
        assert "1 database checked" in line
    assert len(lines(ran, "ok", "app-db")) == 3
    assert recap(ran, "site") == {"ok": 3, "changed": 0, "failed": 0, "skipped": 0}
    assert recap(ran, "app-db") == {"ok": 3, "changed": 0, "failed": 0, "skipped": 0}
    assert project.snapshot_tree() == before, "verify changed something"


def test_verify_names_a_member_with_no_name_instead_of_ending_in_a_traceback(project: Project) -> None:
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    craft(project.root / "backups", "site", [("ok.txt", "ok"), (zipfile.ZipInfo(""), "x")])

    ran = project.invoke("verify", "--only", "site", "--format", "json")

    assert ran.code == 1, ran.output
    assert "Traceback" not in ran.output
    [result] = ran.json()["targets"]
    assert ": restore would refuse it: it has no name to restore to" in result["error"], result


def test_verify_passes_the_archive_of_an_empty_folder(project: Project) -> None:
    # A zip with no member failed "not a readable zip archive (truncated or damaged?): zip()
    # argument 2 is longer than argument 1", exit 1: a scheduled verify's false alarm.
    (project.root / "empty").mkdir()
    project.write_manifest("version: 1\ntargets: [{name: e, path: empty}]\n")
    assert project.invoke("backup").code == 0

    ran = project.invoke("verify")

    assert ran.code == 0, ran.output
    assert "ok: [e]" in ran.stdout, ran.output


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        (["--only", "app-db"], "app-db", "site"),
        (["--only", "si*"], "site", "app-db"),
        (["--tags", "web"], "site", "app-db"),
        (["--tags", "db"], "app-db", "site"),
    ],
)
def test_verify_checks_only_the_selected_targets(project: Project, flags: list[str], shown: str, hidden: str) -> None:
    make_site(project)
    back_up(project, times=2)
    for archive in project.archives(target=hidden):
        archive.write_bytes(b"damaged beyond reading")  # would fail verify if it were looked at

    ran = project.invoke("verify", *flags)

    assert ran.code == 0, ran.output
    assert len(lines(ran, "ok", shown)) == 2
    assert f"[{hidden}]" not in ran.output


@pytest.mark.parametrize("member", ["big.txt", "photo.jpg", "data.db"])
def test_verify_names_an_archive_with_one_flipped_byte(project: Project, member: str) -> None:
    make_site(project)
    back_up(project, times=2)
    older, newer = project.archives(target="site")
    start, info = data_offset(older, member)
    expected = zipfile.ZIP_STORED if member == "photo.jpg" else zipfile.ZIP_DEFLATED
    assert info.compress_type == expected
    assert info.compress_size > 100
    flip_byte(older, start + info.compress_size // 2)

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    (failed,) = lines(ran, "failed", "site")
    assert older.name in failed and member in failed
    (ok,) = lines(ran, "ok", "site")
    assert newer.name in ok
    assert recap(ran, "site") == {"ok": 1, "changed": 0, "failed": 1, "skipped": 0}

    latest = project.invoke("verify", "--only", "site", "--latest")
    assert latest.code == 0, latest.output
    (only,) = lines(latest, "ok", "site")
    assert newer.name in only
    assert older.name not in latest.output


def test_verify_latest_checks_the_archive_restore_would_take_not_one_dated_in_the_future(project: Project) -> None:
    # A good archive dated a month ahead (a clock ahead once) and a damaged one from now:
    # verify --latest passed the future one while restore, which passes over it, failed.
    make_site(project)
    back_up(project)
    (current,) = project.archives(target="site")
    ahead = current.with_name("site-20991231T000000.000000Z.zip")
    ahead.write_bytes(current.read_bytes())
    start, info = data_offset(current, "big.txt")
    flip_byte(current, start + info.compress_size // 2)

    latest = project.invoke("verify", "--only", "site", "--latest")
    assert latest.code == 1, latest.output
    (failed,) = lines(latest, "failed", "site")
    assert current.name in failed and ahead.name not in latest.output
    restored = project.invoke("restore", "site", "--to", str(project.root / "restored"))
    assert restored.code == 1 and current.name in restored.output, restored.output


@pytest.mark.parametrize("keep", ["half", "all but the last byte"])
def test_verify_names_a_truncated_archive(project: Project, keep: str) -> None:
    make_site(project)
    back_up(project, times=2)
    older, newer = project.archives(target="site")
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-1])

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    (failed,) = lines(ran, "failed", "site")
    assert newer.name in failed
    (ok,) = lines(ran, "ok", "site")
    assert older.name in ok

    latest = project.invoke("verify", "--only", "site", "--latest")
    assert latest.code == 1, latest.output
    (failed,) = lines(latest, "failed", "site")
    assert newer.name in failed
    assert older.name not in latest.output


@pytest.mark.parametrize("member", ["data.db", "store"])
def test_verify_integrity_checks_database_members(project: Project, member: str) -> None:
    make_site(project)
    back_up(project)
    damaged = craft(
        project.root / "backups", "site", [("notes.txt", "fine\n"), (member, damaged_db_bytes(project.root))]
    )
    (good,) = [a for a in project.archives(target="site") if a != damaged]

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    (failed,) = lines(ran, "failed", "site")
    assert damaged.name in failed and member in failed and "integrity_check" in failed
    (ok,) = lines(ran, "ok", "site")
    assert good.name in ok


def test_verify_of_a_target_without_archives_fails(project: Project) -> None:
    make_site(project)
    ran = project.invoke("verify", "--only", "site")
    assert ran.code == 1, ran.output
    (failed,) = lines(ran, "failed", "site")
    assert "no archives" in failed


# --- restore: what comes back --------------------------------------------------------------------


def test_restore_takes_the_newest_archive_or_the_one_named(project: Project) -> None:
    make_site(project)
    back_up(project)
    project.file("site/sub/small.txt", "changed\n")
    make_db(project.root / "site" / "data.db", rows=60)
    back_up(project)
    older, newer = project.archives(target="site")

    newest = project.root / "newest"
    ran = project.invoke("restore", "site", "--to", str(newest))
    assert ran.code == 0, ran.output
    assert newer.name in ran.output
    assert (newest / "sub" / "small.txt").read_text() == "changed\n"
    assert (newest / "big.txt").read_text() == BIG_TEXT
    assert (newest / "photo.jpg").read_bytes() == (project.root / "site" / "photo.jpg").read_bytes()
    assert integrity(newest / "data.db") == ["ok"]
    assert names(newest / "data.db") == [f"item {n}" for n in range(1, 61)]

    named = project.root / "named"
    ran = project.invoke("restore", "site", "--to", str(named), "--archive", older.name)
    assert ran.code == 0, ran.output
    assert (named / "sub" / "small.txt").read_text() == "small\n"
    assert integrity(named / "data.db") == ["ok"]
    assert names(named / "data.db") == [f"item {n}" for n in range(1, 51)]


@pytest.mark.parametrize("member", ["sub/small.txt", "sub"], ids=["a file", "a folder"])
def test_restore_of_one_member_writes_only_that_member(project: Project, member: str) -> None:
    make_site(project)
    back_up(project)
    folder = project.root / "restored"

    ran = project.invoke("restore", "site", "--to", str(folder), "--member", member)

    assert ran.code == 0, ran.output
    assert tree(folder) == {"sub": None, "sub/small.txt": b"small\n"}


def test_restore_does_not_overwrite_without_force_and_does_with_it(project: Project) -> None:
    make_site(project)
    back_up(project)
    folder = project.root / "restored"
    project.file("restored/sub/small.txt", "mine, newer than the backup\n")
    before = tree(folder)
    times = project.snapshot_tree()

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 2, ran.output
    assert "--force" in ran.output
    assert tree(folder) == before, "restore without --force wrote or changed files"
    assert project.snapshot_tree() == times

    forced = project.invoke("restore", "site", "--to", str(folder), "--force")

    assert forced.code == 0, forced.output
    assert (folder / "sub" / "small.txt").read_text() == "small\n"
    assert (folder / "big.txt").read_text() == BIG_TEXT
    assert names(folder / "data.db") == [f"item {n}" for n in range(1, 51)]


def test_restore_with_force_replaces_a_link_instead_of_writing_through_it(project: Project) -> None:
    make_site(project)
    back_up(project)
    outside = project.file("outside/precious.txt", "must stay\n")
    folder = project.root / "restored"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "small.txt").symlink_to(outside)

    ran = project.invoke("restore", "site", "--to", str(folder), "--force")

    assert ran.code == 0, ran.output
    assert outside.read_text() == "must stay\n"
    assert not (folder / "sub" / "small.txt").is_symlink()
    assert (folder / "sub" / "small.txt").read_text() == "small\n"


def test_restore_over_a_database_removes_its_stale_wal(project: Project) -> None:
    database = make_db(project.root / "data" / "app.db", rows=3)
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    project.write_manifest(
        """
        version: 1
        targets:
          - name: app-db
            path: data/app.db
        """
    )
    back_up(project)
    # The application went on writing in WAL mode, then crashed: app.db with a -wal full of later commits.
    live = project.root / "live"
    make_db(live / "app.db", rows=3)
    writer = sqlite3.connect(live / "app.db", isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT INTO items(name) VALUES ('after the backup')")
        wal = live / "app.db-wal"
        assert wal.stat().st_size > 0
        folder = project.root / "restored"
        folder.mkdir()
        for name in ("app.db", "app.db-wal"):
            (folder / name).write_bytes((live / name).read_bytes())
    finally:
        writer.close()
    assert names(project.root / "live" / "app.db")[-1] == "after the backup"

    ran = project.invoke("restore", "app-db", "--to", str(folder), "--force")

    assert ran.code == 0, ran.output
    assert not (folder / "app.db-wal").exists(), "a stale -wal left beside the restored database is replayed"
    assert integrity(folder / "app.db") == ["ok"]
    assert names(folder / "app.db") == ["item 1", "item 2", "item 3"]


# --- restore: refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["site"], id="no --to"),
        pytest.param(["nosuch", "--to", "{folder}"], id="unknown target"),
        pytest.param(["site", "--to", "{folder}", "--archive", f"site-{CRAFTED}.zip"], id="unknown archive"),
        pytest.param(["site", "--to", "{folder}", "--archive", "nonsense.zip"], id="not an archive name"),
        pytest.param(["site", "--to", "{folder}", "--member", "no/such/file"], id="unknown member"),
    ],
)
def test_restore_usage_errors_exit_2_and_write_nothing(project: Project, flags: list[str]) -> None:
    make_site(project)
    back_up(project)
    folder = project.root / "restored"
    before = project.snapshot_tree()

    ran = project.invoke("restore", *(flag.format(folder=folder) for flag in flags))

    assert ran.code == 2, ran.output
    assert not folder.exists() or tree(folder) == {}
    assert {k: v for k, v in project.snapshot_tree().items() if not k.startswith("restored")} == before


def assert_nothing_written_outside(root: Path, folder: Path) -> None:
    """No file anywhere under `root` but inside `folder` (or an archive) holds the payload."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.suffix != ".zip":
            inside = folder.resolve() in path.resolve().parents
            assert inside or b"EVIL" not in path.read_bytes(), f"written outside {folder}: {path}"
    assert list((root / "outside").iterdir()) == []


def restore_crafted(project: Project, members: list[tuple[zipfile.ZipInfo | str, bytes | str]]) -> tuple[Ran, Path]:
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    (project.root / "outside").mkdir()
    craft(project.root / "backups", "site", members)
    folder = project.root / "restored"
    return project.invoke("restore", "site", "--to", str(folder)), folder


# Names that leave the folder on a platform whose separator is a backslash or that has drive
# letters; on POSIX they are ordinary names inside it (a Maildir message ends in ":2,S").
WINDOWS_UNSAFE_NAMES = ["C:\\evil.txt", "C:/evil.txt", "\\evil.txt", "sub\\..\\..\\evil.txt"]
UNSAFE_NAMES = [
    "../evil.txt",
    "sub/../../evil.txt",
    "../outside/evil.txt",
    "{outside}/abs.txt",
    *(WINDOWS_UNSAFE_NAMES if os.name == "nt" else []),
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_restore_refuses_member_names_that_leave_the_folder(project: Project, name: str) -> None:
    name = name.format(outside=project.root / "outside")
    ran, folder = restore_crafted(project, [("harmless.txt", "fine\n"), (name, "EVIL")])

    assert ran.code == 1, ran.output
    assert "refus" in ran.output and name in ran.output.replace("\\\\", "\\")
    assert_nothing_written_outside(project.root, folder)
    assert not any(b"EVIL" in p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.mark.skipif(os.name == "nt", reason="these names leave the folder on Windows")
@pytest.mark.parametrize("name", WINDOWS_UNSAFE_NAMES)
def test_backslashes_and_colons_are_ordinary_characters_on_posix(project: Project, name: str) -> None:
    ran, folder = restore_crafted(project, [("harmless.txt", "fine\n"), (name, "EVIL")])

    assert ran.code == 0, ran.output
    assert_nothing_written_outside(project.root, folder)
    assert (folder / name).read_text() == "EVIL"  # one name, inside the folder


LINK_ATTACKS = {
    "relative link out": [(symlink_info("link"), "../outside"), ("link/pwned.txt", "EVIL")],
    "absolute link out": [(symlink_info("link"), "{outside}"), ("link/pwned.txt", "EVIL")],
    "deep relative link out": [(symlink_info("a/b/link"), "../../../outside"), ("a/b/link/pwned.txt", "EVIL")],
    # A link under a link, by a name that lands on the same path: the second would be made
    # inside wherever the first leads.
    "link under a link named ./a": [(symlink_info("./a"), "{outside}"), (symlink_info("a/planted"), "EVIL")],
    "link under a link named a/.": [(symlink_info("a/."), "{outside}"), (symlink_info("a/planted"), "EVIL")],
    "link under a link, relative": [(symlink_info("./up"), "../outside"), (symlink_info("up/planted"), "EVIL")],
    # "┼é" is stored as the cp437 bytes c5 82, without the UTF-8 flag: on disk that is "ł".
    "link under a link named in other bytes": [
        (symlink_info("\u253c\u00e9", cp437=True), "{outside}"),
        (symlink_info("\u0142/planted"), "EVIL"),
    ],
    # `l1` points inside while `d` does not exist; once `d` -> `.` exists, `l1` leads out of the folder.
    "link made to lead out by a later link": [
        (symlink_info("l1"), "d/../outside"),
        (symlink_info("d"), "."),
        ("l1/pwned.txt", "EVIL"),
    ],
}


@pytest.mark.parametrize("members", LINK_ATTACKS.values(), ids=LINK_ATTACKS.keys())
def test_restore_never_writes_through_a_link_that_leads_outside(
    project: Project, members: list[tuple[zipfile.ZipInfo, str]]
) -> None:
    outside = str(project.root / "outside")
    ran, folder = restore_crafted(project, [(info, data.format(outside=outside)) for info, data in members])

    assert ran.code == 1, ran.output
    assert "refus" in ran.output
    assert_nothing_written_outside(project.root, folder)


@pytest.mark.skipif(os.name != "posix", reason="making links needs a privilege on Windows")
def test_a_link_this_file_system_cannot_make_fails_the_restore(project: Project) -> None:
    # Its target is longer than a path may be: it was a warning, then "restored", exit 0.  The
    # other links and the folders' modes still come: a private folder must not stay 0755.
    private = zipfile.ZipInfo("d/")
    private.create_system, private.external_attr = 3, (stat.S_IFDIR | 0o700) << 16 | 0x10
    members: list[tuple[zipfile.ZipInfo | str, str]] = [
        ("f.txt", "f"), (symlink_info("current"), "releases/" + "x" * 4100), (symlink_info("ok"), "f.txt"),
        (private, ""), ("d/secret.txt", "s"),
    ]  # fmt: skip
    ran, folder = restore_crafted(project, members)

    assert ran.code == 1, ran.output
    assert "could not make link current -> " in ran.output and "File name too long" in ran.output
    assert f"every other member was restored into {folder}" in ran.output
    assert (folder / "f.txt").read_text(encoding="utf-8") == "f" and not os.path.lexists(folder / "current")
    assert str((folder / "ok").readlink()) == "f.txt"
    assert stat.S_IMODE((folder / "d").stat().st_mode) == 0o700


@pytest.mark.skipif(os.name != "posix", reason="making links needs a privilege on Windows")
def test_links_pointing_out_of_the_tree_pass_verify_and_come_back_as_they_were(project: Project) -> None:
    # /etc/localtime -> /usr/share/zoneinfo/UTC, or ../shared/config: ordinary in a real tree.
    outside = project.root / "outside"
    outside.mkdir()
    (outside / "zone").write_text("UTC\n")
    project.file("site/index.html", "<h1>hello</h1>\n")
    (project.root / "site" / "localtime").symlink_to(outside / "zone")
    (project.root / "site" / "conf").mkdir()
    (project.root / "site" / "conf" / "shared").symlink_to("../../outside/zone")
    project.write_manifest(SITE_MANIFEST)
    assert project.invoke("backup", "--only", "site").code == 0

    verified = project.invoke("verify", "--only", "site")
    assert verified.code == 0, verified.output

    folder = project.root / "restored"
    ran = project.invoke("restore", "site", "--to", str(folder))
    assert ran.code == 0, ran.output
    assert (folder / "localtime").readlink() == outside / "zone"
    assert (folder / "conf" / "shared").readlink() == Path("../../outside/zone")
    assert (folder / "index.html").read_text() == "<h1>hello</h1>\n"
    assert [p.name for p in outside.iterdir()] == ["zone"] and (outside / "zone").read_text() == "UTC\n"


@pytest.mark.skipif(os.name != "posix", reason="making links needs a privilege on Windows")
def test_a_folder_member_never_sets_its_mode_through_a_link_already_in_the_folder(project: Project) -> None:
    folder = project.root / "restored"
    folder.mkdir()
    outside = project.root / "outside"
    outside.mkdir(mode=0o700)
    (folder / "d").symlink_to(outside)
    before = outside.stat()
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    opened_up = zipfile.ZipInfo("d/", date_time=(2000, 1, 1, 0, 0, 0))
    opened_up.create_system = 3
    opened_up.external_attr = (stat.S_IFDIR | 0o777) << 16
    craft(project.root / "backups", "site", [(opened_up, b""), ("e.txt", "x")])

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    assert "a link stands where its folder goes" in ran.output
    after = outside.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (stat.S_IMODE(before.st_mode), before.st_mtime_ns)


def test_restore_refuses_to_write_through_a_link_already_in_the_folder(project: Project) -> None:
    folder = project.root / "restored"
    folder.mkdir()
    (project.root / "outside").mkdir()
    (folder / "link").symlink_to(project.root / "outside")
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    craft(project.root / "backups", "site", [("link/pwned.txt", "EVIL")])

    ran = project.invoke("restore", "site", "--to", str(folder), "--force")

    assert ran.code == 1, ran.output
    assert "refus" in ran.output
    assert list((project.root / "outside").iterdir()) == []


def test_restore_refuses_a_damaged_database_and_writes_nothing_for_it(project: Project) -> None:
    ran, folder = restore_crafted(project, [("data.db", damaged_db_bytes(project.root))])

    assert ran.code == 1, ran.output
    assert "integrity_check" in ran.output
    assert not (folder / "data.db").exists()
    assert [p.name for p in folder.iterdir()] == [], "a partial or damaged file was left in the folder"


def test_restore_of_a_truncated_archive_fails_cleanly(project: Project) -> None:
    make_site(project)
    back_up(project)
    (archive,) = project.archives(target="site")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    folder = project.root / "restored"

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    assert archive.name in ran.output
    assert "Traceback" not in ran.output


def test_a_restore_that_left_out_a_damaged_member_says_what_it_wrote(project: Project) -> None:
    # It stopped at the damaged member and said only that, leaving the files before it in the
    # folder with nothing to say so (and the next try met them: "already exist").  It now
    # leaves that member out, restores the rest, and says how many.
    for number in range(30):
        project.file(f"site/d/f{number:02d}.txt", os.urandom(3000).hex())
    with closing(sqlite3.connect(project.root / "site" / "a.db")) as db:  # restored first, counted once
        db.execute("CREATE TABLE t (x)")
        db.commit()
    project.write_manifest("version: 1\ntargets: [{name: site, path: site, compression: {level: 0}}]\n")
    back_up(project)
    (archive,) = project.archives(target="site")
    with zipfile.ZipFile(archive) as opened:
        last = max((i for i in opened.infolist() if not i.is_dir()), key=lambda i: i.header_offset)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, last.header_offset + 26)
    data[last.header_offset + 30 + name_length + extra_length + 10] ^= 1  # in the last file's data
    archive.write_bytes(bytes(data))
    folder = project.root / "restored"

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    written = sum(1 for p in folder.rglob("*") if p.is_file())
    assert written == 30
    assert f"{last.filename} in {archive}" in ran.output
    assert f"it was left out, and the other 31 members were restored into {folder}" in ran.output  # and d/


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["without --force", "with --force"])
def test_restore_over_a_file_where_the_archive_has_a_folder_says_so_and_restores_nothing(
    project: Project, force: list[str]
) -> None:
    # It said "File exists; choose a folder this user can create and write": the folder was fine.
    # Then it was found only while writing: the files before it stayed restored, and the line
    # advised --force, which failed the same way.  Now it is found before anything is written.
    project.file("site/d/a.txt")
    project.file("site/x/deep/y/z.txt")
    for name in ("b1", "b2", "b3"):
        project.file(f"site/e/{name}.txt")  # after d/ in the archive
        project.file(f"site/a/{name}.txt")  # before it
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    folder = project.root / "restored"
    project.file("restored/d", "a file where the archive has a folder\n")
    project.file("restored/x/deep", "a file on the way to a member\n")

    ran = project.invoke("restore", "site", "--to", str(folder), *force)

    assert ran.code == 2, ran.output
    assert (
        f"{folder / 'd'} is a file where the archive has a folder (and 1 more like it); nothing was restored: "
        "move the file away and restore again"
    ) in ran.output
    assert "--force" not in ran.output
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["d", "x", "x/deep"]
    assert (folder / "d").read_text() == "a file where the archive has a folder\n"


def _spoil_deflate_stream(archive: Path, member: str) -> None:
    """Make `member`'s deflate stream begin with a block of the reserved type: zlib refuses it."""
    start, info = data_offset(archive, member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(archive.read_bytes())
    data[start] = 0xFF  # BFINAL 1, BTYPE 11
    archive.write_bytes(bytes(data))


def _five_good_members_then_a_damaged_one(project: Project) -> tuple[Path, Path]:
    """A backup of a0.txt to a4.txt and z.txt, whose stream then does not inflate; and the
    folder to restore it into."""
    for number in range(5):
        project.file(f"site/a{number}.txt", "archived\n" * 50)
    project.file("site/z.txt", "the damaged one\n" * 500)
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    (archive,) = project.archives(target="site")
    _spoil_deflate_stream(archive, "z.txt")
    return archive, project.root / "restored"


def test_a_member_whose_stream_does_not_inflate_is_named_in_one_line(project: Project) -> None:
    # zlib's own error was not caught: a traceback, with part of the tree written and not said.
    archive, folder = _five_good_members_then_a_damaged_one(project)

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    assert "Traceback" not in ran.output
    (line,) = ran.output.strip().splitlines()
    assert line.startswith(f"failed: [site] => z.txt in {archive} is damaged: Error -3")
    assert f"it was left out, and the other 5 members were restored into {folder}" in line
    assert not (folder / "z.txt").exists()


def test_restore_with_force_reads_every_member_before_overwriting_anything(project: Project) -> None:
    # A member found damaged halfway left the folder a mix of old files and restored ones.
    archive, folder = _five_good_members_then_a_damaged_one(project)
    for number in range(5):
        project.file(f"restored/a{number}.txt", "the live file\n")

    ran = project.invoke("restore", "site", "--to", str(folder), "--force")

    assert ran.code == 1, ran.output
    assert f"z.txt in {archive.name} is damaged" in ran.output and "nothing was overwritten" in ran.output
    assert all((folder / f"a{n}.txt").read_text() == "the live file\n" for n in range(5))
    assert sorted(p.name for p in folder.iterdir()) == [f"a{n}.txt" for n in range(5)]


def test_a_database_failing_its_check_is_left_out_and_every_other_member_restored(project: Project) -> None:
    # The archive of a folder holding a database cut short is kept for its other files, but
    # restore stopped at that database: the files after it could not be restored at all.
    whole = project.root / "whole.db"
    with closing(sqlite3.connect(whole)) as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("row " * 50,)] * 200)
        db.commit()
    project.file("site/a.txt", "before\n")
    (project.root / "site" / "broken.db").write_bytes(whole.read_bytes()[:5000])  # cut short
    project.file("site/zz.txt", "after\n")
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    assert project.invoke("backup").code == 1  # the cut-short database fails the target; the archive stays
    (archive,) = project.archives(target="site")
    folder = project.root / "restored"

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    assert "database broken.db (" in ran.output and "fails integrity_check and was not restored" in ran.output
    assert f"every other member was, into {folder}" in ran.output and f"unzip -p {archive} MEMBER" in ran.output
    assert (folder / "a.txt").read_text() == "before\n" and (folder / "zz.txt").read_text() == "after\n"
    assert not (folder / "broken.db").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary copy left
    # The warning that the archive is incomplete came first; raising dropped it.
    assert f"[WARNING] [site] {archive.name} is incomplete, as the run that made it said" in ran.output


def test_restore_from_a_destination_that_cannot_be_listed_names_it_not_the_restore_folder(project: Project) -> None:
    # It said "cannot restore into /tmp/xx: .../backups is a file where the archive has a folder".
    project.file("site/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    (project.root / "kept").mkdir()
    (project.root / "backups").rename(project.root / "kept" / "backups")
    project.file("backups", "a file where the destination was\n")
    folder = project.root / "restored"

    ran = project.invoke("restore", "site", "--to", str(folder))

    assert ran.code == 1, ran.output
    assert ran.output.strip() == (
        f"failed: [site] => cannot list {project.root / 'backups'}, where site's archives are: Not a directory; "
        "check the target's destination"
    )
    assert not folder.exists()


def test_verify_fails_an_archive_with_bytes_after_its_end(project: Project) -> None:
    # Readers skip them, so verify said ok; 7-Zip warns, and prune would not count it as whole.
    make_site(project)
    back_up(project)
    (archive,) = project.archives(target="site")
    with archive.open("ab") as appended:
        appended.write(b"\0" * 40)

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    (failed,) = lines(ran, "failed", "site")
    assert "it has 40 bytes after the end of its zip (appended to it, or left of a longer file)" in failed


def test_restoring_one_member_gives_the_folders_it_creates_their_archived_modes_and_times(project: Project) -> None:
    # --member sub/deep/f made sub/ 0755 with the current time: a private folder's file sat in a
    # folder others could read.
    project.file("site/sub/deep/f.txt", "secret\n")
    project.file("site/other.txt")
    sub, deep = project.root / "site" / "sub", project.root / "site" / "sub" / "deep"
    deep.chmod(0o700)
    sub.chmod(0o750)
    os.utime(deep, (1_700_000_000, 1_700_000_000))
    os.utime(sub, (1_600_000_000, 1_600_000_000))
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    folder = project.root / "restored"
    (folder / "sub").mkdir(parents=True)  # there already: left as it is
    (folder / "sub").chmod(0o755)

    ran = project.invoke("restore", "site", "--to", str(folder), "--member", "sub/deep/f.txt")

    assert ran.code == 0, ran.output
    assert (folder / "sub" / "deep" / "f.txt").read_text() == "secret\n"
    assert stat.S_IMODE((folder / "sub" / "deep").stat().st_mode) == 0o700
    assert int((folder / "sub" / "deep").stat().st_mtime) == 1_700_000_000
    assert stat.S_IMODE((folder / "sub").stat().st_mode) == 0o755  # not made by this restore
    assert sorted(p.name for p in folder.iterdir()) == ["sub"]


def test_an_archive_cut_short_is_not_said_to_have_bytes_appended(project: Project) -> None:
    # A stored .zip inside the tree carries an end record of its own: once the archive was cut
    # short within its central directory, that record was taken for the archive's, "16600 bytes
    # after the end of its zip".
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as made:
        made.writestr("inside.txt", "x" * 1000)
    project.file("site/a.txt", "a\n")
    (project.root / "site" / "inner.zip").write_bytes(inner.getvalue())
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    (archive,) = project.archives(target="site")
    with zipfile.ZipFile(archive) as opened:
        directory_at = opened.start_dir
    archive.write_bytes(archive.read_bytes()[: directory_at + 20])

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    assert "bytes after the end of its zip" not in ran.output
    assert "no end of a zip: empty, cut short or not a zip" in ran.output


def _one_member_site(project: Project) -> tuple[Path, int, zipfile.ZipInfo, bytearray]:
    """A backup of one file, a.txt: the archive, where its central directory starts, the
    member, and the archive's bytes to damage."""
    project.file("site/a.txt", "a\n" * 100)
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)
    (archive,) = project.archives(target="site")
    with zipfile.ZipFile(archive) as opened:
        directory_at, info = opened.start_dir, opened.getinfo("a.txt")
    return archive, directory_at, info, bytearray(archive.read_bytes())


def test_a_member_whose_flags_say_encrypted_stops_restore_in_one_line(project: Project) -> None:
    # zipfile's RuntimeError ("encrypted, password required") for a flipped flag bit was a traceback.
    archive, directory_at, _, data = _one_member_site(project)
    assert data[directory_at : directory_at + 4] == b"PK\x01\x02"
    data[directory_at + 8] |= 1  # general purpose flags: bit 0, encrypted
    archive.write_bytes(bytes(data))

    ran = project.invoke("restore", "site", "--to", str(project.root / "restored"))

    assert ran.code == 1, ran.output
    assert "Traceback" not in ran.output
    (line,) = ran.output.strip().splitlines()
    assert line.startswith(
        f"failed: [site] => a.txt in {archive} is damaged: it is marked encrypted, which this tool never writes "
        "(its flags are damaged); it was left out, and nothing was restored"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="a file name that is not UTF-8")
def test_member_selection_and_its_folders_match_names_stored_in_other_encodings(project: Project) -> None:
    # é/ is stored flagged UTF-8, the file é/sub/g\xff (not UTF-8) unflagged, which zipfile
    # decodes as cp437: --member é left the file out, and restoring the file alone made its
    # folders 0755 instead of their archived modes.
    top = project.root / "site" / "é"
    (top / "sub").mkdir(parents=True)
    odd = os.fsdecode(b"g\xff")
    (top / "sub" / odd).write_bytes(b"odd\n")
    (top / "sub").chmod(0o711)
    top.chmod(0o701)
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    back_up(project)

    whole = project.root / "whole"
    assert project.invoke("restore", "site", "--to", str(whole), "--member", "é").code == 0
    assert (whole / "é" / "sub" / odd).read_bytes() == b"odd\n"

    alone = project.root / "alone"
    ran = project.invoke("restore", "site", "--to", str(alone), "--member", f"é/sub/{odd}")
    assert ran.code == 0, ran.output
    assert (alone / "é" / "sub" / odd).read_bytes() == b"odd\n"
    assert stat.S_IMODE((alone / "é").stat().st_mode) == 0o701
    assert stat.S_IMODE((alone / "é" / "sub").stat().st_mode) == 0o711


def test_a_member_in_a_method_the_reader_lacks_is_not_called_encrypted(project: Project) -> None:
    # NotImplementedError is a RuntimeError: "compression method not supported" was reported as
    # "marked encrypted, its flags are damaged".
    archive, directory_at, info, data = _one_member_site(project)
    struct.pack_into("<H", data, info.header_offset + 8, 9)  # deflate64, in the local header
    struct.pack_into("<H", data, directory_at + 10, 9)  # and in the central directory
    archive.write_bytes(bytes(data))

    ran = project.invoke("restore", "site", "--to", str(project.root / "restored"))

    assert ran.code == 1, ran.output
    assert "compression method" in ran.output and "encrypted" not in ran.output, ran.output


@pytest.mark.skipif(sys.platform == "win32", reason="a file size limit is a POSIX resource limit")
def test_a_file_larger_than_the_file_system_takes_is_named_with_the_reason(project: Project) -> None:
    # "cannot restore into …/out: File too large (…/out); choose a folder this user can create":
    # neither the file nor the cause.  A size limit stands in for FAT32's 4 GiB.
    import resource

    from conftest import INVOKE, REPO

    project.file("site/big.img", bytes(3 << 20))
    project.file("site/small.txt", "small\n")
    project.write_manifest(SITE_MANIFEST)
    assert project.invoke("backup", "--only", "site").code == 0
    folder = project.root / "out"

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    ran = subprocess.run(
        [str(INVOKE), "--search-root", str(REPO), "restore", "site", "--to", str(folder), "-m", str(project.manifest)],
        capture_output=True, text=True, preexec_fn=limited, env={**os.environ, "NO_COLOR": "1"}, check=False,
    )  # fmt: skip

    assert ran.returncode == 1, ran.stderr
    assert f"cannot write {folder / 'big.img'} (big.img in site-" in ran.stderr
    assert "is more than a file may hold there" in ran.stderr


CLASHES = {
    "twice": ([("notes.txt", "first"), ("notes.txt", "second")], "notes.txt is in it twice"),
    "two-spellings": ([("a/b.txt", "one"), ("a//b.txt", "two")], "a/b.txt and a//b.txt name one file here"),
    "file-and-link": ([("cfg", "data"), (symlink_info("cfg"), "elsewhere")], "cfg is in it twice"),
    "file-as-folder": ([("x", "file"), ("x/y", "under it")], "x is a file, and x/y needs it as a folder"),
    "file-and-folder": ([("a", "file"), ("a/", "")], "a is a file, and a/ needs it as a folder"),
    "link-and-folder": ([(symlink_info("a"), "elsewhere"), ("a/", "")], "a is a file, and a/ needs it as a folder"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, as it writes the crafted archive
@pytest.mark.parametrize(("members", "said"), CLASHES.values(), ids=CLASHES.keys())
def test_members_landing_on_one_path_fail_verify_and_restore_writes_nothing(
    project: Project, members: list[tuple[zipfile.ZipInfo | str, str]], said: str
) -> None:
    # verify said ok; restore kept the second of two files (or the link, losing the file's
    # data), said "restored", exit 0, or failed halfway and then refused its own --force.
    ran, folder = restore_crafted(project, members)
    verified = project.invoke("verify", "--only", "site")

    assert ran.code == 2, ran.output
    assert f"was not restored: {said}; an archive this tool makes never holds such members" in ran.stderr
    assert not folder.exists()
    assert verified.code == 1, verified.output
    assert f"restore would refuse it: {said}" in verified.stdout


def test_verify_fails_a_member_marked_encrypted(project: Project) -> None:
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    archive = craft(project.root / "backups", "site", [("ok.txt", "ok"), ("enc.txt", "x" * 50)])
    data = bytearray(archive.read_bytes())
    local = data.index(b"PK\x03\x04", 4)
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[local + 6] |= 1  # general purpose flag bit 0, in the local header and the directory
    data[central + 8] |= 1
    archive.write_bytes(bytes(data))

    ran = project.invoke("verify", "--only", "site")

    assert ran.code == 1, ran.output
    assert "enc.txt: restore would refuse it: it is marked encrypted" in ran.stdout


def test_a_member_whose_data_is_not_the_size_its_directory_gives_is_left_out(project: Project) -> None:
    # Its CRC matched, so it was "restored" (over the file there, with --force) while verify
    # failed the archive for its size.
    project.file("site/file.txt", "x\n")
    project.write_manifest(SITE_MANIFEST)
    archive = craft(project.root / "backups", "site", [("report.txt", "h" * 100)])
    data = bytearray(archive.read_bytes())
    struct.pack_into("<I", data, 22, 1_000_000)  # the local header's uncompressed size
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1_000_000)  # and the central directory's
    archive.write_bytes(bytes(data))
    mine = project.file("out/report.txt", "the current report\n")

    ran = project.invoke("restore", "site", "--to", str(project.root / "out"), "--force")

    assert ran.code == 1, ran.output
    assert "report.txt in " in ran.stderr and "its data is 100 bytes, the directory says 1000000" in ran.stderr
    assert mine.read_text(encoding="utf-8") == "the current report\n"
