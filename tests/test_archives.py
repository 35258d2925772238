"""Archives made by the real `invoke backup`, read back by real zip readers.

Every archive is checked with Info-ZIP `unzip`, `7z`, `bsdtar` (when installed) and
Python's `zipfile`; member bytes are compared with the source, not just listed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, SEVEN_ZIP, Project, Ran, have, needs, permissions_enforced

from backup_core.zip import packing
from backup_core.zip.compression import compressor_factory

pytestmark = [needs("unzip"), needs("7z")]

MiB = 1 << 20
GiB = 1 << 30
ARCHIVE_NAME = re.compile(r"site-\d{8}T\d{6}\.\d{6}Z\.zip")
UTF8_FLAG = 0x800
POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

# A member kind and its bytes: ("file", data), ("dir", b"") or ("link", target).
Tree = dict[str, tuple[str, bytes]]


# --- helpers ------------------------------------------------------------------------------------


def write_manifest(
    project: Project,
    path: str,
    *,
    keep: int = 7,
    level: int | None = None,
    exclude: list[str] | None = None,
    destination: str = "backups",
) -> None:
    """A manifest with one target, `site`, backing up `path`."""
    lines = [
        "version: 1",
        "targets:",
        "  - name: site",
        f"    path: {json.dumps(path, ensure_ascii=False)}",
        f"    destination: {json.dumps(destination, ensure_ascii=False)}",
        f"    keep: {{last: {keep}}}",
    ]
    if level is not None:
        lines.append(f"    compression: {{level: {level}}}")
    if exclude:
        lines.append(f"    exclude: {json.dumps(exclude)}")
    project.write_manifest("\n".join(lines) + "\n")


def backup(project: Project, now: str | None = None) -> Path:
    """Run `invoke backup` (which must succeed) and return the archive it made."""
    ran = project.invoke("backup", "--format", "json", env={"BACKUP_NOW": now or ""})
    assert ran.code == 0, ran.output
    (result,) = ran.json()["targets"]
    assert result["status"] == "changed", result
    archive = Path(result["archive"])
    assert archive.is_file()
    return archive


def tool(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a reader in a UTF-8 locale, so names are printed as they are; "7z" is 7-Zip wherever
    it was found (see conftest.SEVEN_ZIP)."""
    program, *rest = args
    return subprocess.run(
        [str(SEVEN_ZIP if program == "7z" else program), *(str(a) for a in rest)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        timeout=timeout,
        check=False,
    )


def assert_readers_accept(archive: Path, *, read_with_zipfile: bool = True) -> None:
    """unzip -t, 7z t, bsdtar -tf and zipfile.testzip all find the archive intact."""
    tested = tool("unzip", "-t", archive)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout, tested.stdout
    tested = tool("7z", "t", archive)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Everything is Ok" in tested.stdout, tested.stdout
    if have("bsdtar"):
        listed = tool("bsdtar", "-tf", archive)
        assert listed.returncode == 0, listed.stderr
    with zipfile.ZipFile(archive) as opened:
        if read_with_zipfile:
            assert opened.testzip() is None


def reader_names(archive: Path) -> dict[str, list[str]]:
    """The member names each external reader lists (without trailing slashes), sorted."""
    found: dict[str, list[str]] = {}
    listed = tool("unzip", "-Z1", archive)
    assert listed.returncode == 0, listed.stderr
    found["unzip -Z1"] = listed.stdout.splitlines()
    listed = tool("7z", "l", "-slt", archive)
    assert listed.returncode == 0, listed.stderr
    _, _, members = listed.stdout.partition("\n----------\n")
    found["7z l"] = [line[len("Path = ") :] for line in members.splitlines() if line.startswith("Path = ")]
    if have("bsdtar"):
        listed = tool("bsdtar", "-tf", archive)
        assert listed.returncode == 0, listed.stderr
        found["bsdtar -tf"] = listed.stdout.splitlines()
    return {reader: sorted(name.rstrip("/") for name in names) for reader, names in found.items()}


def zip_tree(archive: Path) -> Tree:
    """Every member of the archive, read back through zipfile."""
    tree: Tree = {}
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            mode = info.external_attr >> 16
            data = opened.read(info)
            if stat.S_ISLNK(mode):
                tree[info.filename] = ("link", data)
            elif info.is_dir():
                assert stat.S_ISDIR(mode), f"{info.filename}: directory entry without S_IFDIR"
                assert data == b""
                tree[info.filename] = ("dir", data)
            else:
                assert stat.S_ISREG(mode), f"{info.filename}: mode {mode:o} is not a regular file"
                tree[info.filename] = ("file", data)
    return tree


def disk_tree(root: Path) -> Tree:
    """What a folder holds, in the same shape as zip_tree (links are not followed)."""
    tree: Tree = {}

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as scan:
            for entry in scan:
                relative = prefix + entry.name
                if entry.is_symlink():
                    tree[relative] = ("link", os.fsencode(Path(entry.path).readlink()))
                elif entry.is_dir():
                    tree[relative + "/"] = ("dir", b"")
                    walk(Path(entry.path), relative + "/")
                else:
                    tree[relative] = ("file", Path(entry.path).read_bytes())

    walk(root, "")
    return tree


def extract(archive: Path, into: Path, reader: str) -> Path:
    """Unpack the archive with an external reader into a new folder."""
    into.mkdir(parents=True)
    if reader == "unzip":
        done = tool("unzip", "-q", archive, "-d", into)
    elif reader == "7z":
        done = tool("7z", "x", "-y", f"-o{into}", archive)
    else:
        done = tool("bsdtar", "-xf", archive, "-C", into)
    assert done.returncode == 0, done.stdout + done.stderr
    return into


def readers_that_extract() -> list[str]:
    return ["unzip", "7z", *(["bsdtar"] if have("bsdtar") else [])]


def text_bytes(size: int, seed: int = 0) -> bytes:
    """Compressible, log-like text of exactly `size` bytes.  Past 1 MiB it repeats its first
    MiB: far beyond deflate's 32 KiB window, so it compresses like text that never repeats,
    and 60 MiB of it takes a moment instead of the 12 s a line at a time took."""
    rng = random.Random(seed)
    words = ["alpha", "backup", "zip", "member", "folder", "deflate", "chunk", "archive", "stored"]
    lines: list[str] = []
    total = 0
    while total < min(size, MiB):
        line = f"{len(lines):08d} " + " ".join(rng.choice(words) for _ in range(8)) + "\n"
        lines.append(line)
        total += len(line)
    unit = "".join(lines).encode()
    return (unit * -(-size // max(len(unit), 1)))[:size]


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def members(archive: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(archive) as opened:
        return {info.filename: info for info in opened.infolist()}


def destination_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in the destination with its bytes and mtime (the lock file aside)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.name != ".site.lock"}


def partials(folder: Path, target: str = "site") -> list[Path]:
    return sorted(folder.glob(f".{target}-*.partial"))


def failed_line(ran: Ran) -> str:
    lines = [line for line in ran.output.splitlines() if line.startswith("failed: [site]")]
    assert len(lines) == 1, ran.output
    return lines[0]


# --- what an archive holds ----------------------------------------------------------------------


def test_single_file_is_archived_under_its_own_name(project: Project) -> None:
    content = text_bytes(5000)
    project.file("docs/notes.txt", content)
    write_manifest(project, "docs/notes.txt")

    archive = backup(project)

    assert zip_tree(archive) == {"notes.txt": ("file", content)}
    assert_readers_accept(archive)
    assert set(map(tuple, reader_names(archive).values())) == {("notes.txt",)}
    for reader in readers_that_extract():
        assert disk_tree(extract(archive, project.root / f"out-{reader}", reader)) == {"notes.txt": ("file", content)}


def test_folder_members_are_relative_forward_slash_names_with_empty_folders_and_excludes(project: Project) -> None:
    kept = {
        "a.txt": b"a\n",
        "cache.txt": b"a name pattern matches whole names only\n",
        "sub/b.txt": b"b\n",
        "sub/deeper/c.txt": text_bytes(3000),
        "logs/b.txt": b"not a .gz\n",
        "other/logs/c.gz": b"a pattern with a slash matches from the top only\n",
    }
    excluded = {
        "x.tmp": b"excluded by name",
        "sub/y.tmp": b"excluded by name, deep down",
        "cache/z.txt": b"inside an excluded folder",
        "sub/cache": b"a file named cache",
        "logs/a.gz": b"excluded by relative path",
        "logs/deep/d.gz": b"* also matches /",
    }
    for relative, content in {**kept, **excluded}.items():
        project.file(f"src/{relative}", content)
    for empty in ("empty", "sub/empty2"):
        (project.root / "src" / empty).mkdir()
    write_manifest(project, "src", exclude=["*.tmp", "cache", "logs/*.gz"])

    archive = backup(project)

    folders = ["empty/", "logs/", "logs/deep/", "other/", "other/logs/", "sub/", "sub/deeper/", "sub/empty2/"]
    expected: Tree = {name: ("file", content) for name, content in kept.items()}
    expected.update({name: ("dir", b"") for name in folders})
    assert zip_tree(archive) == expected
    for name in members(archive):
        assert "\\" not in name and not name.startswith(("/", "./")) and ".." not in name.split("/"), name
    assert_readers_accept(archive)
    wanted = sorted(name.rstrip("/") for name in expected)
    assert reader_names(archive) == {reader: wanted for reader in reader_names(archive)}
    for reader in readers_that_extract():
        assert disk_tree(extract(archive, project.root / f"out-{reader}", reader)) == expected, reader


def test_non_ascii_names_are_intact_in_every_reader(project: Project) -> None:
    files = {
        "café.txt": "crème brûlée\n".encode(),
        "日本/ファイル.txt": "日本語のテキスト\n".encode(),
        "emoji-😀.txt": "🎉\n".encode(),
        "plain.txt": b"ascii\n",
    }
    for relative, content in files.items():
        project.file(f"src/{relative}", content)
    (project.root / "src" / "日本" / "空").mkdir()
    write_manifest(project, "src")

    archive = backup(project)

    expected: Tree = {name: ("file", content) for name, content in files.items()}
    expected.update({"日本/": ("dir", b""), "日本/空/": ("dir", b"")})
    assert zip_tree(archive) == expected
    for name, info in members(archive).items():
        # Non-ASCII names are flagged UTF-8 so no reader guesses a code page.
        assert bool(info.flag_bits & UTF8_FLAG) == (not name.isascii()), name
    assert_readers_accept(archive)
    wanted = sorted(name.rstrip("/") for name in expected)
    assert reader_names(archive) == {reader: wanted for reader in reader_names(archive)}
    listed = tool("unzip", "-l", archive).stdout + tool("7z", "l", archive).stdout
    for name in ("café.txt", "日本/ファイル.txt", "emoji-😀.txt", "日本/空"):
        assert listed.count(name) >= 2, f"{name} missing from unzip -l or 7z l output:\n{listed}"
    for reader in readers_that_extract():
        assert disk_tree(extract(archive, project.root / f"out-{reader}", reader)) == expected, reader


# --- symbolic links -----------------------------------------------------------------------------


@POSIX
def test_symbolic_links_are_stored_as_links_and_unzip_restores_them(project: Project) -> None:
    project.file("src/a.txt", b"the real file\n")
    project.file("src/sub/b.txt", b"b\n")
    links = {"link": "a.txt", "sub/up": "../a.txt", "dangling": "no/such/file", "sub/to-dir": "."}
    for name, target in links.items():
        (project.root / "src" / name).symlink_to(target)
    write_manifest(project, "src")

    archive = backup(project)

    tree = zip_tree(archive)
    for name, target in links.items():
        assert tree[name] == ("link", target.encode()), name
    assert tree["a.txt"] == ("file", b"the real file\n")
    assert not any(name.startswith("sub/to-dir/") for name in tree), "a link to a folder was followed"
    long_listing = tool("unzip", "-Z", archive).stdout
    for name in links:
        (line,) = [line for line in long_listing.splitlines() if line.endswith(f" {name}")]
        assert line.startswith("l"), line
    assert_readers_accept(archive)

    restored = extract(archive, project.root / "out", "unzip")
    for name, target in links.items():
        assert (restored / name).is_symlink(), name
        assert (restored / name).readlink() == Path(target)
    assert disk_tree(restored) == disk_tree(project.root / "src")
    if have("bsdtar"):
        assert disk_tree(extract(archive, project.root / "out-bsdtar", "bsdtar")) == disk_tree(project.root / "src")


@POSIX
def test_link_to_a_folder_outside_the_tree_is_not_followed(project: Project) -> None:
    secret = b"outside the backed-up tree: must not be archived\n"
    project.file("outside/secret.txt", secret)
    project.file("outside/deeper/more.txt", secret)
    project.file("src/inside.txt", b"inside\n")
    outside = project.root / "outside"
    (project.root / "src" / "out").symlink_to(outside)
    (project.root / "src" / "out-file").symlink_to(outside / "secret.txt")
    write_manifest(project, "src")

    archive = backup(project)

    tree = zip_tree(archive)
    assert tree == {
        "inside.txt": ("file", b"inside\n"),
        "out": ("link", os.fsencode(outside)),
        "out-file": ("link", os.fsencode(outside / "secret.txt")),
    }
    assert all(secret not in data for _, data in tree.values())
    assert_readers_accept(archive)
    restored = extract(archive, project.root / "restored", "unzip")
    assert (restored / "out").readlink() == outside


@POSIX
def test_a_folder_swapped_for_a_link_while_it_is_walked_is_not_followed(project: Project) -> None:
    # The walk yields a folder, then opens it to list it: a folder replaced by a link to
    # somewhere else in between must not bring that somewhere into the archive.  Subfolders
    # are opened by name within their open parent, refusing a link, so the swap reads as a
    # folder gone.  (Through the walk itself: the gap is too narrow to hit from outside.)
    from backup_core.sources.walk import entries

    project.file("outside/secret.txt", b"not part of the tree\n")
    project.file("src/a/inside.txt", b"inside\n")
    project.file("src/b.txt", b"b\n")
    walked = []
    for entry in entries(project.root / "src", "folder"):
        walked.append(entry.name)
        if entry.name == "a/":
            shutil.rmtree(entry.path)
            Path(entry.path).symlink_to(project.root / "outside")
    assert walked == ["a/", "b.txt"]


@POSIX
def test_a_walk_out_of_file_descriptors_reads_the_rest_by_path_and_misses_nothing(project: Project) -> None:
    # Each folder being walked holds a descriptor: a tree deeper than the descriptors left
    # (a low `ulimit -n`, a busy process) must still be walked whole, not cut short in silence.
    deep = project.root / "src"
    for level in range(40):
        deep = deep / f"d{level}"
    project.file(str((deep / "bottom.txt").relative_to(project.root)), b"at the bottom\n")
    program = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from backup_core.sources.walk import entries
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
        names = [entry.name for entry in entries(Path({str(project.root / "src")!r}), "folder")]
        print(len(names), names[-1])
        """
    )
    ran = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["41", "/".join(f"d{level}" for level in range(40)) + "/bottom.txt"]


# --- stored or deflated -------------------------------------------------------------------------


def test_compressed_formats_and_incompressible_data_are_stored_text_is_deflated(project: Project) -> None:
    files = {
        "photo.jpg": random_bytes(64 << 10, seed=2),
        "CAPS.JPG": text_bytes(64 << 10, seed=3),  # compressible, but the extension says stored
        "random.bin": random_bytes(64 << 10, seed=4),
        "text.txt": text_bytes(64 << 10, seed=5),
        "empty.txt": b"",
    }
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src")

    archive = backup(project)

    info = members(archive)
    for name in ("photo.jpg", "CAPS.JPG"):
        assert info[name].compress_type == zipfile.ZIP_STORED, name
        assert info[name].compress_size == info[name].file_size, name
    # deflate did not shrink it, so it is stored rather than grown
    assert info["random.bin"].compress_type == zipfile.ZIP_STORED
    assert info["random.bin"].compress_size <= info["random.bin"].file_size
    assert info["text.txt"].compress_type == zipfile.ZIP_DEFLATED
    assert info["text.txt"].compress_size < info["text.txt"].file_size // 3
    assert zip_tree(archive) == {name: ("file", content) for name, content in files.items()}
    assert_readers_accept(archive)


def test_large_files_take_the_chunked_path_and_round_trip(project: Project) -> None:
    files = {
        "big.txt": text_bytes(5 * MiB + 12345, seed=6),
        "big.bin": random_bytes(5 * MiB + 777, seed=7),
        "big.jpg": text_bytes(3 * MiB, seed=8),
        "exactly-2mib.txt": text_bytes(2 * MiB, seed=9),
        "2mib-plus-1.txt": text_bytes(2 * MiB + 1, seed=10),
        "text-then-random.dat": text_bytes(2 * MiB + 100, seed=11) + random_bytes(3 * MiB, seed=12),
    }
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src")

    archive = backup(project)

    info = members(archive)
    for name in ("big.txt", "exactly-2mib.txt", "2mib-plus-1.txt"):
        assert info[name].compress_type == zipfile.ZIP_DEFLATED, name
        assert info[name].compress_size < info[name].file_size // 3, name
    for name in ("big.bin", "big.jpg"):
        assert info[name].compress_type == zipfile.ZIP_STORED, name
        assert info[name].compress_size == info[name].file_size, name
    assert info["text-then-random.dat"].compress_size <= info["text-then-random.dat"].file_size + (64 << 10)
    assert zip_tree(archive) == {name: ("file", content) for name, content in files.items()}
    assert_readers_accept(archive)
    for reader in readers_that_extract():
        restored = extract(archive, project.root / f"out-{reader}", reader)
        assert disk_tree(restored) == {name: ("file", content) for name, content in files.items()}, reader


def test_level_0_stores_every_member(project: Project) -> None:
    files = {"text.txt": text_bytes(100 << 10), "big.txt": text_bytes(3 * MiB, seed=1), "empty": b""}
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src", level=0)

    archive = backup(project)

    for name, info in members(archive).items():
        assert info.compress_type == zipfile.ZIP_STORED, name
        assert info.compress_size == info.file_size, name
    assert zip_tree(archive) == {name: ("file", content) for name, content in files.items()}
    assert_readers_accept(archive)


@pytest.mark.parametrize("level", [1, 3, 4, 9])
def test_other_levels_deflate_text_and_round_trip(project: Project, level: int) -> None:
    files = {
        "text.txt": text_bytes(100 << 10),
        "big.txt": text_bytes(3 * MiB, seed=1),
        "random.bin": random_bytes(100 << 10),
    }
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src", level=level)

    archive = backup(project)

    info = members(archive)
    for name in ("text.txt", "big.txt"):
        assert info[name].compress_type == zipfile.ZIP_DEFLATED, name
        assert info[name].compress_size < info[name].file_size // 3, name
    assert info["random.bin"].compress_type == zipfile.ZIP_STORED
    assert zip_tree(archive) == {name: ("file", content) for name, content in files.items()}
    assert_readers_accept(archive)


# --- names, modes and the clock -----------------------------------------------------------------


def test_inflate_check_false_makes_the_same_archive_without_the_proof(project: Project) -> None:
    files = {
        "text.txt": text_bytes(300 << 10),
        "big.txt": text_bytes(3 * MiB, seed=1),
        "random.bin": random_bytes(1000),
    }
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src")
    checked = backup(project)
    project.write_manifest(project.manifest.read_text(encoding="utf-8") + "    compression: {inflate_check: false}\n")

    ran = project.invoke("backup", "--force", "--format", "json")

    assert ran.code == 0, ran.output
    unchecked = Path(ran.json()["targets"][0]["archive"])
    assert unchecked != checked
    assert unchecked.read_bytes() == checked.read_bytes()  # the check proves the bytes, never changes them
    assert zip_tree(unchecked) == {name: ("file", content) for name, content in files.items()}


def test_archive_name_pattern(project: Project) -> None:
    project.file("src/a.txt")
    write_manifest(project, "src")

    archive = backup(project)

    assert ARCHIVE_NAME.fullmatch(archive.name), archive.name
    assert archive.parent == project.root / "backups"
    assert project.archives() == [archive]


@POSIX
def test_archive_is_readable_by_its_owner_only(project: Project) -> None:
    project.file("src/a.txt")
    write_manifest(project, "src")

    archive = backup(project)

    assert stat.S_IMODE(archive.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("now", "name"),
    [
        ("2026-03-04T05:06:07.123456Z", "site-20260304T050607.123456Z.zip"),
        ("2026-03-04T07:06:07.500000+02:00", "site-20260304T050607.500000Z.zip"),
        ("2026-03-04T05:06:07", "site-20260304T050607.000000Z.zip"),
    ],
)
def test_archive_name_is_the_utc_time_of_the_run(project: Project, now: str, name: str) -> None:
    project.file("src/a.txt")
    write_manifest(project, "src")

    assert backup(project, now=now).name == name


def test_two_backups_in_quick_succession_get_distinct_names(project: Project) -> None:
    source = project.file("src/a.txt", "first\n")
    write_manifest(project, "src")

    first = backup(project)
    source.write_text("second\n", encoding="utf-8")
    second = backup(project)

    assert first.name != second.name
    assert ARCHIVE_NAME.fullmatch(second.name)
    assert first.name < second.name
    assert project.archives() == [first, second]
    assert zip_tree(first) == {"a.txt": ("file", b"first\n")}
    assert zip_tree(second) == {"a.txt": ("file", b"second\n")}


def test_the_same_instant_twice_still_makes_a_new_later_archive(project: Project) -> None:
    source = project.file("src/a.txt", "run 1\n")
    write_manifest(project, "src", keep=2)
    now = "2026-05-01T12:00:00.000000Z"

    made = [backup(project, now=now)]
    for run in (2, 3):
        source.write_text(f"run {run}\n", encoding="utf-8")
        made.append(backup(project, now=now))

    assert [a.name for a in made] == [
        "site-20260501T120000.000000Z.zip",
        "site-20260501T120000.000001Z.zip",
        "site-20260501T120000.000002Z.zip",
    ]
    # keep: last 2 keeps the two made last, which are also the two that sort last
    assert project.archives() == made[1:]
    assert zip_tree(made[1]) == {"a.txt": ("file", b"run 2\n")}
    assert zip_tree(made[2]) == {"a.txt": ("file", b"run 3\n")}


def test_a_clock_set_back_names_archives_by_the_clock_and_keeps_the_future_one(project: Project) -> None:
    source = project.file("src/a.txt", "before the clock jumped\n")
    write_manifest(project, "src", keep=2)
    first = backup(project, now="2026-06-01T00:00:00Z")

    source.write_text("after the jump\n", encoding="utf-8")
    second = backup(project, now="2020-01-01T00:00:00Z")
    source.write_text("a day later, still behind\n", encoding="utf-8")
    third = backup(project, now="2020-01-02T00:00:00Z")

    # Named by the clock (a name pushed after the future one would make it look like the
    # newest for ever); the archive from "the future" is kept and never counted as newest.
    assert second.name == "site-20200101T000000.000000Z.zip" and second.name < third.name < first.name
    assert project.archives() == [second, third, first]
    assert zip_tree(second) == {"a.txt": ("file", b"after the jump\n")}
    assert zip_tree(third) == {"a.txt": ("file", b"a day later, still behind\n")}


# --- ZIP64 --------------------------------------------------------------------------------------


@POSIX  # a sparse file of 4 GiB: cheap where holes are
def test_small_members_placed_past_4_gib_get_their_offset_in_a_zip64_field(tmp_path: Path) -> None:
    # Workers number a batch's records from the start of its block; the writer moves them to
    # where the block lands.  Here the block straddles 4 GiB: the first member's offset still
    # fits the record, the second's must go in a ZIP64 extra field.  A real reader proves it.
    sources = {"below.txt": b"first " * 4000, "above.txt": b"second " * 4000}
    items = []
    for name, content in sources.items():
        (tmp_path / name).write_bytes(content)
        st = (tmp_path / name).stat()
        items.append((name, str(tmp_path / name), b"", st.st_mode, st.st_mtime, st.st_size, -1, -1, None))
    facts, block = packing.pack_batch(compressor_factory(2), True, items)
    directory, offsets = facts[0], facts[1]
    second = struct.unpack_from("<L", directory, offsets[1])[0]  # where the second member starts in the block
    base = packing.ZIP64_LIMIT - second + 1
    moved = packing.relocate(directory, offsets, base)
    archive = tmp_path / "sparse.zip"
    with archive.open("wb") as file:
        file.seek(base)
        file.write(block)
        start = file.tell()
        file.write(moved)
        end64 = file.tell()
        size, count = len(moved), len(items)
        file.write(struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
        file.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
        file.write(struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, count, count, size, 0xFFFFFFFF, 0))
    with zipfile.ZipFile(archive) as opened:
        found = {info.filename: info.header_offset for info in opened.infolist()}
        assert found == {"below.txt": base, "above.txt": base + second}
        assert found["below.txt"] < packing.ZIP64_LIMIT <= found["above.txt"]
        for name, content in sources.items():
            assert opened.read(name) == content


@pytest.mark.slow
def test_more_than_65535_files_need_zip64_and_every_reader_counts_them(project: Project) -> None:
    count = 66_000
    folder = project.root / "src" / "many"
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"f{index:05d}").write_bytes(b"x" if index % 2 else b"")
    write_manifest(project, "src")

    archive = backup(project)

    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        assert opened.testzip() is None
        assert opened.read("many/f00001") == b"x"
    assert len(names) == count + 1
    assert set(names) == {"many/", *(f"many/f{index:05d}" for index in range(count))}
    with archive.open("rb") as raw:
        raw.seek(-200, os.SEEK_END)
        tail = raw.read()
    assert b"PK\x06\x06" in tail and b"PK\x06\x07" in tail, "no ZIP64 end of central directory"
    assert_readers_accept(archive, read_with_zipfile=False)
    for reader, listed in reader_names(archive).items():
        assert len(listed) == count + 1, reader


def _run_measured(project: Project, log: Path) -> tuple[int, int]:
    """Run `invoke backup` as a child; return its exit code and the peak resident memory of all its
    processes (worker processes included), in bytes.

    The command is started by the benchmark's small launcher: on Linux a child's ru_maxrss
    also counts the process it was forked from, and this test process is large by now.
    """
    result = log.with_suffix(".peak")
    with log.open("w", encoding="utf-8") as output:
        code = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                str(REPO / "benchmarks" / "launch.py"),
                str(result),
                str(INVOKE),
                "--search-root",
                str(REPO),
                "backup",
                "--manifest",
                str(project.manifest),
            ],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", "BACKUP_NOW": ""},
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    _, peak, _ = result.read_text(encoding="utf-8").split()
    return code, int(peak)


@pytest.mark.slow
@POSIX
def test_a_sparse_file_past_4_gib_needs_zip64_and_memory_stays_flat(project: Project) -> None:
    # Just past ZIP64's limit: every reader's inflate of it (unzip takes 30 s for 5 GiB) is the cost.
    size = 4 * GiB + 64 * MiB
    big = project.root / "src" / "disk.img"
    big.parent.mkdir()
    with big.open("wb") as handle:
        handle.truncate(size)
    write_manifest(project, "src")

    code, peak = _run_measured(project, project.root / "run.log")

    assert code == 0, (project.root / "run.log").read_text(encoding="utf-8")
    (archive,) = project.archives()
    info = members(archive)["disk.img"]
    assert info.file_size == size
    assert info.compress_size < size
    tested = tool("unzip", "-t", archive, timeout=1200)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout
    tested = tool("7z", "t", archive, timeout=1200)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Writing, and reading the new archive back, must both stay flat whatever the file's size.
    assert peak < 150_000_000, f"peak memory of the backup was {peak / 1e6:.0f} MB"


# --- interrupted and failed runs ---------------------------------------------------------------


def _wait_for_partial(folder: Path, child: subprocess.Popen[bytes], at_least: int) -> Path:
    """Poll until the run's partial archive holds `at_least` bytes; fail if the run ends first."""
    give_up = time.monotonic() + 300  # a guard against a hung child, not a measurement
    while child.poll() is None and time.monotonic() < give_up:
        for partial in partials(folder):
            try:
                if partial.stat().st_size >= at_least:
                    return partial
            except FileNotFoundError:
                continue
        time.sleep(0.002)
    pytest.fail(f"the backup ended (code {child.poll()}) before a partial archive of {at_least} bytes appeared")


@pytest.mark.slow
@POSIX
def test_a_killed_backup_leaves_no_archive_and_the_next_run_cleans_up(project: Project) -> None:
    source = project.file("src/small.txt", "first run\n")
    write_manifest(project, "src")
    first = backup(project)
    first_bytes = first.read_bytes()
    destination = first.parent
    others = project.file("backups/.other-20260101T000000.000000Z.zip.partial", b"another target's work")
    for index in range(4):
        (source.parent / f"blob{index}.bin").write_bytes(random_bytes(100 * MiB, seed=index))

    with (project.root / "killed.log").open("w", encoding="utf-8") as output:
        child = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", "BACKUP_NOW": ""},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_partial(destination, child, at_least=16 * MiB)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    # Nothing that looks like a finished archive, and the earlier one is untouched.
    assert sorted(p.name for p in destination.iterdir() if p.name.endswith(".zip")) == [first.name]
    assert project.archives() == [first]
    assert first.read_bytes() == first_bytes
    assert partials(destination), "the killed run left no partial file: was it killed mid-archive?"

    second = backup(project)

    assert partials(destination) == []
    assert others.read_bytes() == b"another target's work"
    assert project.archives() == [first, second]
    assert first.read_bytes() == first_bytes
    info = members(second)
    assert sorted(info) == ["blob0.bin", "blob1.bin", "blob2.bin", "blob3.bin", "small.txt"]
    assert all(i.file_size == 100 * MiB for name, i in info.items() if name.startswith("blob"))
    tested = tool("unzip", "-t", second)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _three_archives_then_keep_one(project: Project) -> Path:
    """Three archives of `site`, then a manifest whose keep: last 1 would delete two of them."""
    project.file("src/a.txt", "data\n")
    write_manifest(project, "src", keep=5)
    for day in (1, 2, 3):
        backup(project, now=f"2026-01-0{day}T00:00:00Z")
    project.file("backups/notes.zip", b"a person's own zip")
    write_manifest(project, "src", keep=1)
    return project.root / "backups"


def test_a_missing_source_fails_without_writing_or_deleting_anything(project: Project) -> None:
    destination = _three_archives_then_keep_one(project)
    shutil.rmtree(project.root / "src")
    before = destination_state(destination)

    ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-04T00:00:00Z"})

    assert ran.code == 1, ran.output
    assert str(project.root / "src") in failed_line(ran)
    assert destination_state(destination) == before
    assert partials(destination) == []
    assert len(project.archives(target="site")) == 3


@pytest.mark.skipif(not permissions_enforced(), reason="root (or this platform) writes anywhere")
def test_a_destination_this_user_may_not_write_in_is_named_not_the_archive_it_would_make(project: Project) -> None:
    # "permission denied on …/.site-….zip.partial; fix its permissions": a file that never existed.
    destination = _three_archives_then_keep_one(project)
    destination.chmod(0o555)
    try:
        ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-04T00:00:00Z"})
    finally:
        destination.chmod(0o755)

    assert ran.code == 1, ran.output
    assert f"permission denied making files in {destination}; fix its permissions" in failed_line(ran)
    assert len(project.archives(target="site")) == 3


@pytest.mark.skipif(not permissions_enforced(), reason="root (or this platform) reads files whatever their mode")
@pytest.mark.parametrize("size", [100, 3 * MiB], ids=["small", "chunked"])
def test_an_unreadable_file_fails_naming_it_and_leaves_nothing(project: Project, size: int) -> None:
    destination = _three_archives_then_keep_one(project)
    locked = project.file("src/sub/locked.txt", text_bytes(size))
    project.file("src/zz-after.txt", "after the locked file\n")
    locked.chmod(0)
    before = destination_state(destination)
    try:
        ran = project.invoke("backup", env={"BACKUP_NOW": "2026-01-04T00:00:00Z"})
    finally:
        locked.chmod(0o600)

    assert ran.code == 1, ran.output
    assert str(locked) in failed_line(ran)
    assert destination_state(destination) == before
    assert partials(destination) == []
    assert len(project.archives(target="site")) == 3


def test_a_full_disk_fails_cleanly(project: Project, small_fs: Path) -> None:
    destination = small_fs / f"backup-test-{os.getpid()}-{project.root.name}"
    destination.mkdir()
    try:
        free = shutil.disk_usage(destination).free
        if free > 512 * MiB:
            pytest.skip(f"{small_fs} has {free} bytes free; too many to fill in a test")
        foreign = destination / "notes.zip"
        foreign.write_bytes(b"a person's own zip")
        project.file("src/blob.bin", random_bytes(free + 16 * MiB))
        write_manifest(project, "src", destination=str(destination))

        ran = project.invoke("backup")

        assert ran.code == 1, ran.output
        assert "disk full" in failed_line(ran)
        assert sorted(p.name for p in destination.iterdir() if p.name != ".site.lock") == ["notes.zip"]
        assert foreign.read_bytes() == b"a person's own zip"
    finally:
        shutil.rmtree(destination, ignore_errors=True)


# --- worker processes ----------------------------------------------------------------------------
# A big archive is packed by worker processes that write their data into it themselves.
# BACKUP_PROCESSES_FROM=1 sends even a small tree down that path; a sitecustomize module on
# PYTHONPATH records each worker process as it starts (and can make it exit at once).

_RECORD_WORKERS = """
import os, sys
if "backup_core.zip.workers" in sys.orig_argv:
    with open(os.environ["WORKER_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    if os.environ.get("WORKER_EXIT_AT_ONCE"):
        os._exit(3)
    if os.environ.get("WORKER_PRINTS"):
        print("a greeting from a site module")
    if os.environ.get("WORKER_OPENS"):
        def _opened(event, args, log=os.environ["WORKER_OPENS"]):
            if event == "open" and isinstance(args[0], str) and "src" in args[0]:
                with open(log, "a", encoding="utf-8") as out:
                    out.write(args[0] + "\\n")
        sys.addaudithook(_opened)
"""


def _worker_env(project: Project, threshold: int, **extra: str) -> dict[str, str]:
    hook = project.root / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_RECORD_WORKERS, encoding="utf-8")
    log = project.root / "workers.log"
    log.write_text("", encoding="utf-8")
    return {"PYTHONPATH": str(hook), "WORKER_LOG": str(log), "BACKUP_PROCESSES_FROM": str(threshold), **extra}


def _workers_started(project: Project) -> list[int]:
    return [int(line) for line in (project.root / "workers.log").read_text(encoding="utf-8").split()]


def _mixed_tree(project: Project) -> Tree:
    files = {
        "a/notes.txt": text_bytes(300 << 10, seed=21),  # over the trial size: deflated after a trial
        "a/random.dat": random_bytes(300 << 10, seed=22),  # the trial says store it
        "a/photo.jpg": random_bytes(40 << 10, seed=23),
        "b/big.log": text_bytes(5 * MiB + 3, seed=24),  # pieces on both workers
        "b/big.bin": random_bytes(4 * MiB + 5, seed=25),
        "b/text-then-random.dat": text_bytes(2 * MiB + 100, seed=26) + random_bytes(3 * MiB, seed=27),
        "c/ünïcødé.md": text_bytes(9000, seed=28),
        "c/empty": b"",
        **{f"many/f{i:04d}.txt": text_bytes(200 + i, seed=i) for i in range(600)},
    }
    for name, content in files.items():
        project.file(f"src/{name}", content)
    (project.root / "src" / "empty-dir").mkdir()
    if os.name == "posix":
        (project.root / "src" / "c" / "link").symlink_to("ünïcødé.md")
    return disk_tree(project.root / "src")


def test_worker_processes_write_the_very_bytes_threads_write(project: Project) -> None:
    tree = _mixed_tree(project)
    write_manifest(project, "src")

    ran = project.invoke("backup", "--format", "json", env=_worker_env(project, threshold=1))
    assert ran.code == 0, ran.output
    by_processes = Path(ran.json()["targets"][0]["archive"])
    assert len(_workers_started(project)) == 2, "the run did not pack in worker processes"
    ran = project.invoke("backup", "--force", "--format", "json", env=_worker_env(project, threshold=1 << 40))
    assert ran.code == 0, ran.output
    by_threads = Path(ran.json()["targets"][0]["archive"])
    assert _workers_started(project) == []

    assert by_processes.read_bytes() == by_threads.read_bytes()
    assert zip_tree(by_processes) == tree
    assert_readers_accept(by_processes)
    info = members(by_processes)
    assert info["a/random.dat"].compress_type == zipfile.ZIP_STORED
    assert info["a/notes.txt"].compress_type == zipfile.ZIP_DEFLATED
    assert info["b/big.log"].compress_type == zipfile.ZIP_DEFLATED
    assert info["b/big.bin"].compress_type == zipfile.ZIP_STORED
    for reader in readers_that_extract():
        restored = extract(by_processes, project.root / f"out-{reader}", reader)
        assert disk_tree(restored) == tree, reader


def test_a_tree_big_enough_for_worker_processes_is_packed_by_them_from_its_first_file(project: Project) -> None:
    # The walk is read ahead until it holds enough for worker processes, so they start before
    # the first job: no file of the tree is packed on the command's own threads.  (Without the
    # look-ahead, the first batch of 256 small files, 1 MiB, went to threads before the
    # second reached the 2 MiB threshold.)
    files = {f"d{i % 3}/f{i:03d}.txt": text_bytes(4 << 10, seed=i) for i in range(600)}
    for name, content in files.items():
        project.file(f"src/{name}", content)
    write_manifest(project, "src")
    opens = project.root / "opens.log"

    ran = project.invoke("backup", env=_worker_env(project, threshold=2 << 20, WORKER_OPENS=str(opens)))

    assert ran.code == 0, ran.output
    assert len(_workers_started(project)) == 2, "the run did not pack in worker processes"
    read_by_workers = {Path(line).relative_to(project.root / "src").as_posix() for line in opens.read_text().split()}
    assert read_by_workers == set(files)
    (archive,) = project.archives()
    assert zip_tree(archive) == disk_tree(project.root / "src")


def test_worker_processes_that_cannot_run_leave_the_work_to_threads_and_say_so(project: Project) -> None:
    tree = _mixed_tree(project)
    write_manifest(project, "src")

    ran = project.invoke("backup", env=_worker_env(project, threshold=1, WORKER_EXIT_AT_ONCE="1"))

    assert ran.code == 0, ran.output
    # At least one started (the second may be stopped before it gets as far as the log).
    assert _workers_started(project), "the run never tried worker processes"
    assert "[WARNING] [site] worker processes failed" in ran.stdout, ran.output
    assert "compressed on threads instead" in ran.stdout
    (archive,) = project.archives()
    assert zip_tree(archive) == tree
    assert_readers_accept(archive)


def test_a_worker_whose_output_is_not_the_protocol_is_not_trusted(project: Project) -> None:
    # Something printed to a worker's output before it starts (a site module, a .pth file)
    # must not be read as an answer: the run goes on with threads, and says so.
    tree = _mixed_tree(project)
    write_manifest(project, "src")

    ran = project.invoke("backup", env=_worker_env(project, threshold=1, WORKER_PRINTS="1"))

    assert ran.code == 0, ran.output
    assert "Traceback" not in ran.output
    assert "worker processes failed (it did not start" in ran.stdout, ran.output
    (archive,) = project.archives()
    assert zip_tree(archive) == tree
    assert_readers_accept(archive)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, waiting for init to reap it


@pytest.mark.slow
@POSIX
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_run_leaves_no_worker_process_behind(project: Project, how: signal.Signals) -> None:
    for index in range(3):
        project.file(f"src/log{index}.txt", text_bytes(60 * MiB, seed=index))
    write_manifest(project, "src")

    with (project.root / "stopped.log").open("w", encoding="utf-8") as output:
        child = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", "BACKUP_NOW": "", **_worker_env(project, threshold=1)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_partial(project.root / "backups", child, at_least=8 * MiB)
            child.send_signal(how)
            child.wait(timeout=120)
        finally:
            child.kill()
            child.wait()

    workers = _workers_started(project)
    assert len(workers) == 2
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker process outlived the run"
        time.sleep(0.05)
    output = (project.root / "stopped.log").read_text(encoding="utf-8")
    assert "Traceback" not in output
    assert project.archives() == []
    if how == signal.SIGTERM:
        assert child.returncode == 130, output
        assert partials(project.root / "backups") == []
