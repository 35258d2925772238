"""What an archive holds, compared without unpacking it.

Two archives hold the same state when they list the same members, in the same order,
with the same CRC-32, size, kind and permission bits (the whole Unix mode: a link replaced
by a file holding its target's name is a new state), and owner and group (a `chown -R`
must reach the backups: a restore as root gives files their recorded owners).  Every
member's CRC is already in the zip's central directory, so an archive needs no extra file
to carry its fingerprint, and a change of a single byte anywhere changes a CRC.
Modification times are left out: a file rewritten with identical content is not a new
state.  For a database the CRC is the snapshot's, so an idle database compares equal.

The central directory is read in pieces and folded into a digest as it goes, so
comparing archives of millions of members takes no more memory than of ten (zipfile
would hold an object of about 500 bytes per member, for both archives at once).  Our
archives list members in the walk's order, which is sorted by name, so the same
source gives the same order; an archive in any other order only compares unequal,
which makes a new archive, never a wrong "unchanged".
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import BinaryIO

_END = struct.Struct("<4sHHHHLLH")
_END64 = struct.Struct("<4sQHHLLQQQQ")
_LOCATOR64 = struct.Struct("<4sLQL")
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_PIECE = 1 << 20
_LONGEST_TAIL = _END.size + 0xFFFF  # the end record and the longest comment


def of_archive(archive: Path) -> str:
    """A digest of the (name, CRC, size, mode, owner) of every member, in the order the archive lists them.
    Raises ValueError for a file that is not a whole zip archive."""
    with archive.open("rb") as file:
        start, size, count = _directory(file)
        digest = hashlib.blake2b(digest_size=20)
        file.seek(start)
        pending, left, seen = b"", size, 0
        while True:
            piece = file.read(min(_PIECE, left))
            left -= len(piece)
            if not piece and left:
                raise ValueError("the central directory is cut short")
            pending += piece
            position = 0
            while position + _CENTRAL.size <= len(pending):
                fields = _CENTRAL.unpack_from(pending, position)
                if fields[0] != b"PK\x01\x02":
                    raise ValueError("a damaged central directory record")
                end = position + _CENTRAL.size + fields[10] + fields[11] + fields[12]
                if end > len(pending):
                    break
                name = pending[position + _CENTRAL.size : position + _CENTRAL.size + fields[10]]
                crc, length = fields[7], fields[9]
                extra = pending[position + _CENTRAL.size + fields[10] : end - fields[12]]
                if length == 0xFFFFFFFF:  # the true size is in the ZIP64 extra field
                    length = _zip64_size(extra)
                mode = fields[15] >> 16
                # Info-ZIP's Unix owner field; none in an archive made on Windows or by a tool
                # that records no owner.
                owner = _field(extra, 0x7875) or b""
                digest.update(struct.pack("<IIQIH", len(name), crc, length, mode, len(owner)) + name + owner)
                seen += 1
                position = end
            pending = pending[position:]
            if not left:
                break
        if pending or seen != count:
            raise ValueError("the central directory does not hold the members it announces")
        return digest.hexdigest()


def _directory(file: BinaryIO) -> tuple[int, int, int]:
    """(offset, size, member count) of the central directory, from the end records."""
    length = file.seek(0, 2)
    tail_start = max(0, length - _LONGEST_TAIL)
    file.seek(tail_start)
    tail = file.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END.size > len(tail):
        raise ValueError("no end of central directory record")
    _, _, _, _, count, size, start, _ = _END.unpack_from(tail, at)
    if count == 0xFFFF or size == 0xFFFFFFFF or start == 0xFFFFFFFF:
        locator_at = tail_start + at - _LOCATOR64.size
        if locator_at < 0:
            raise ValueError("no ZIP64 end record")
        file.seek(locator_at)
        signature, _, end64_at, _ = _LOCATOR64.unpack(file.read(_LOCATOR64.size))
        file.seek(end64_at)
        record = file.read(_END64.size)
        if signature != b"PK\x06\x07" or len(record) != _END64.size:
            raise ValueError("no ZIP64 end record")
        fields = _END64.unpack(record)
        if fields[0] != b"PK\x06\x06":
            raise ValueError("no ZIP64 end record")
        count, size, start = fields[7], fields[8], fields[9]
    if start + size > length:
        raise ValueError("the central directory lies beyond the end of the file")
    return start, size, count


def _field(extra: bytes, tag: int) -> bytes | None:
    """The data of the first field tagged `tag` in a member's extra field, or None."""
    position = 0
    while position + 4 <= len(extra):
        found, length = struct.unpack_from("<HH", extra, position)
        if found == tag:
            return extra[position + 4 : position + 4 + length]
        position += 4 + length
    return None


def _zip64_size(extra: bytes) -> int:
    zip64 = _field(extra, 1)
    if zip64 is None or len(zip64) < 8:
        raise ValueError("a ZIP64 size without its extra field")
    return int(struct.unpack_from("<Q", zip64)[0])
