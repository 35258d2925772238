"""`invoke verify` checks each member's local header against the central directory.

unzip takes a stored member's method, CRC and sizes from its local header, not from the
central directory that Python's zipfile reads, and 7-Zip and bsdtar compare the two, so an
archive whose two disagree passes zipfile and fails those readers.  Each test damages an
archive made by the real `invoke backup` (or, for ZIP64 local headers, which only members
near 4 GiB get, one made by zipfile), finding where by parsing the archive, and asks verify
and the installed readers what they make of it.
"""

from __future__ import annotations

import re
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import SEVEN_ZIP, Project, Ran, have

MANIFEST = """
    version: 1
    targets:
      - name: site
        path: site
    """
STORED_MEMBER = "a.txt"  # five bytes: deflate does not shrink them, so they are stored
DEFLATED_MEMBER = "d/f3.txt"
CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")  # a central directory record's fixed part
# Where each field of a local file header starts, from the header's own start (APPNOTE 4.3.7).
LOCAL_FIELD_AT = {
    "flags": 6,
    "method": 8,
    "CRC": 14,
    "compressed size": 18,
    "uncompressed size": 22,
    "name": 30,
}
# What verify's sentence says of each field.
SAYS = {
    "flags": "says flags",
    "method": "says compression method",
    "CRC": "says CRC",
    "compressed size": "bytes compressed",
    "uncompressed size": "bytes uncompressed",
    "name": "names it",
}


def make_site(project: Project) -> Path:
    """Back up a small folder (one stored member, 31 deflated ones, a folder); the archive."""
    project.file(f"site/{STORED_MEMBER}", "data\n")
    for n in range(31):
        project.file(f"site/d/f{n}.txt", f"line of text for file {n}\n" * 20)
    project.write_manifest(MANIFEST)
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    (archive,) = project.archives(target="site")
    return archive


def header_offset(archive: Path, member: str) -> int:
    with zipfile.ZipFile(archive) as opened:
        return opened.getinfo(member).header_offset


def central_record_offset(archive: Path, member: str) -> int:
    """Where `member`'s record in the central directory starts."""
    with zipfile.ZipFile(archive) as opened:
        position = opened.start_dir
    data = archive.read_bytes()
    while data[position : position + 4] == b"PK\x01\x02":
        fields = CENTRAL.unpack_from(data, position)
        name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
        name_at = position + CENTRAL.size
        if data[name_at : name_at + name_length] == member.encode():
            return position
        position = name_at + name_length + extra_length + comment_length
    raise AssertionError(f"{member} not in the central directory of {archive}")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


def add_to_u32(path: Path, offset: int, amount: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<L", data, offset, struct.unpack_from("<L", data, offset)[0] + amount)
    path.write_bytes(data)


def verify_line(project: Project) -> tuple[Ran, str]:
    """`invoke verify` of the site and its one line about the archive."""
    ran = project.invoke("verify", "--only", "site")
    found = [line for line in ran.output.splitlines() if re.match(r"(ok|failed): \[site\] =>", line)]
    assert len(found) == 1, ran.output
    return ran, found[0]


def readers_rejecting(archive: Path) -> list[str]:
    """Which of the installed zip readers (unzip -t, 7z t, bsdtar extracting) refuse the archive or
    warn of it.  They differ: unzip takes a deflated member's sizes from where its stream ends,
    7-Zip and bsdtar compare every local header with the central directory but not names."""
    commands = {
        "unzip": ["unzip", "-t", str(archive)],
        "7z": [str(SEVEN_ZIP), "t", str(archive)],
        "bsdtar": ["bsdtar", "-xOf", str(archive)],
    }
    return [
        reader
        for reader, command in commands.items()
        if have(reader) and subprocess.run(command, capture_output=True, timeout=60, check=False).returncode != 0
    ]


def any_reader() -> bool:
    return any(have(reader) for reader in ("unzip", "7z", "bsdtar"))


def assert_fails(project: Project, archive: Path, member: str, *says: str) -> None:
    ran, line = verify_line(project)
    assert ran.code == 1, ran.output
    assert line.startswith("failed:") and archive.name in line, line
    assert f"{member}: its local header" in line, line
    for words in says:
        assert words in line, line


# --- tests ---------------------------------------------------------------------------------------


def test_an_undamaged_archive_passes_verify_and_every_reader(project: Project) -> None:
    archive = make_site(project)

    ran, line = verify_line(project)

    assert ran.code == 0, ran.output
    assert line.startswith("ok:") and "32 files" in line, line
    assert readers_rejecting(archive) == []


@pytest.mark.parametrize("member", [STORED_MEMBER, DEFLATED_MEMBER])
@pytest.mark.parametrize("field", list(LOCAL_FIELD_AT))
def test_a_local_header_that_disagrees_with_the_central_directory_fails_verify(
    project: Project, field: str, member: str
) -> None:
    archive = make_site(project)
    flip_byte(archive, header_offset(archive, member) + LOCAL_FIELD_AT[field])

    assert_fails(project, archive, member, SAYS[field], "the central directory")
    rejecting = readers_rejecting(archive)
    if member == STORED_MEMBER and have("unzip"):
        assert "unzip" in rejecting
    assert rejecting or not any_reader()


def test_a_compressed_size_in_the_local_header_is_named_with_both_values(project: Project) -> None:
    archive = make_site(project)
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(DEFLATED_MEMBER)
    add_to_u32(archive, info.header_offset + LOCAL_FIELD_AT["compressed size"], 1)

    _, line = verify_line(project)

    says = (
        f"its local header says {info.compress_size + 1} bytes compressed, the central directory {info.compress_size}"
    )
    assert f"{DEFLATED_MEMBER}: {says}" in line, line


def test_a_local_header_asking_a_newer_version_than_the_central_directory_fails_verify(project: Project) -> None:
    # unzip 6.0, 7-Zip and bsdtar extract it anyway (they judge the version the central directory
    # asks for, or none); a reader that judges the local header's would refuse it.
    archive = make_site(project)
    flip_byte(archive, header_offset(archive, DEFLATED_MEMBER) + 4)

    assert_fails(project, archive, DEFLATED_MEMBER, "needs version 235 to extract it, the central directory 20")


def test_data_running_into_the_next_member_fails_verify(project: Project) -> None:
    # Both headers agree on a compressed size 10 bytes too large: the deflate stream still
    # ends where it did, so inflating the member alone finds nothing wrong (nor does unzip,
    # which goes by where the stream ends); 7-Zip and bsdtar refuse it.
    archive = make_site(project)
    add_to_u32(archive, header_offset(archive, DEFLATED_MEMBER) + LOCAL_FIELD_AT["compressed size"], 10)
    add_to_u32(archive, central_record_offset(archive, DEFLATED_MEMBER) + 20, 10)

    ran, line = verify_line(project)

    assert ran.code == 1, ran.output
    assert f"{DEFLATED_MEMBER}: its data runs 10 bytes into what follows it (overlapping members)" in line, line
    assert readers_rejecting(archive) or not any_reader()


def zip64_archive(project: Project) -> tuple[Path, int]:
    """An archive whose stored member's local header gives its sizes in a ZIP64 extra field (as
    this tool's writer does for members near 4 GiB), under the site's archive name; and where
    the extra field's compressed size lies."""
    project.write_manifest(MANIFEST)
    (project.root / "site").mkdir()
    archive = project.root / "backups" / "site-20260101T000000.000000Z.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as opened, opened.open("big.txt", "w", force_zip64=True) as member:
        member.write(b"the same line again\n" * 500)
    data = archive.read_bytes()
    fixed = struct.Struct("<4sHHHHHLLLHH")
    fields = fixed.unpack_from(data, 0)
    assert fields[7] == fields[8] == 0xFFFFFFFF  # both sizes are in the ZIP64 extra field
    at = fixed.size + fields[9]
    while at < fixed.size + fields[9] + fields[10]:
        kind, length = struct.unpack_from("<HH", data, at)
        if kind == 1:
            return archive, at + 4 + 8  # uncompressed size first, then compressed
        at += 4 + length
    raise AssertionError("no ZIP64 extra field in the local header")


def test_zip64_sizes_in_a_local_header_pass_verify_and_every_reader(project: Project) -> None:
    archive, _ = zip64_archive(project)

    ran, line = verify_line(project)

    assert ran.code == 0, ran.output
    assert line.startswith("ok:"), line
    assert readers_rejecting(archive) == []


def test_a_damaged_zip64_size_in_a_local_header_fails_verify_and_unzip(project: Project) -> None:
    archive, compressed_at = zip64_archive(project)
    flip_byte(archive, compressed_at)

    assert_fails(project, archive, "big.txt", "bytes compressed, the central directory 10000")
    rejecting = readers_rejecting(archive)
    assert "unzip" in rejecting or not have("unzip")
    assert rejecting or not any_reader()
