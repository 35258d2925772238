"""The work done on members' data before the writer puts it in place: read, checksum,
compress, prove, frame.

These functions run on worker threads or in worker processes (see workers.py), so
they take and return plain values, and import nothing heavier than the compressor.
Each one only reads sources: running one again gives the same answer, which is
what lets the writer redo a job whose worker died.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from backup_core.errors import TargetError
from backup_core.sources.held import LINK_REFUSED, OPEN_MEMBER
from backup_core.sources.walk import SQLITE_HEADER
from backup_core.zip.compression import (
    SYNC_FLUSH,
    Compressor,
    CompressorFactory,
    crc32,
    decompressor,
    worth_compressing,
)

CHUNK = 2 << 20  # a large file is compressed in pieces of this size
STORED, DEFLATED = 0, 8
ZIP64_LIMIT = 0xFFFFFFFF
_UTF8_FLAG = 0x800


class NotAFile(FileNotFoundError):
    """The file the walk saw was replaced by something else (a FIFO, a device) before it was read."""


class Replaced(FileNotFoundError):
    """The file the walk saw was replaced by another file or by a link before it was read: what
    its name leads to now is not the file walked (a link's target may lie outside the tree)."""


def gone(path: str, exc: FileNotFoundError, when: str) -> str:
    """`path` vanished (or became no file, or another file) `when`: the words for each."""
    if isinstance(exc, NotAFile):
        what = "was replaced by something that is not a file"
    elif isinstance(exc, Replaced):
        what = "was replaced by another file or a link"
    else:
        what = "vanished"
    return f"{path} {what} {when}"


def replaced(seen: Identity | None, now: Identity) -> bool:
    """Whether the file read is another than the one walked (inode or device differ).  As
    borg does: the walk's file, if still there, was never read.  Unknown on a Windows walk
    (os.scandir gives no inode), and for a private copy (`seen` None)."""
    return seen is not None and seen[3:] != (0, 0) and seen[3:] != now[3:]


def swapped(path: str, name: str, seen: Identity | None, read: Identity) -> bool:
    """Whether the file read (`read`, from fstat) is reached through a link where the walk found
    none: the name itself now a link, or a folder on the way from the target's root (the part
    of `path` that `name`, the member's name, spells).  Another regular file renamed over the
    name (an editor's or a program's atomic save) is not: it is read again as a changed file.
    Only asked when the inode or device differ from the walk's, which an lstat of the name must
    confirm: the walk's lstat and a descriptor's fstat may not agree on them on some file
    systems (overlays of old kernels), and every file there would have been left out."""
    if not replaced(seen, read):
        return False
    try:
        if not replaced(seen, identity(os.lstat(path))):
            return False
    except FileNotFoundError:
        return True  # gone since: what was read is no file the walk saw
    return through_a_link(path, name)


def through_a_link(path: str, name: str) -> bool:
    """Whether `path` now leads through a symbolic link: its last part, or a folder of the
    member's `name` (the folders below the target's root).  POSIX paths only: on Windows the
    walk gives no inode to tell a replacement by, so this is not asked."""
    within = path.endswith(name)
    root, folders = (path[: len(path) - len(name)], name.split("/")[:-1]) if within else ("", [])
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return True
        for depth in range(1, len(folders) + 1):
            if not stat.S_ISDIR(os.lstat(root + "/".join(folders[:depth])).st_mode):
                return True
    except FileNotFoundError:
        return True
    return False


_LOCAL = struct.Struct("<4sHHHHHLLLHH")
# Deflate a piece only if its first _TRIAL bytes shrink below _SHRINK_ENOUGH of their size:
# random data and formats with no telling extension cost one small trial, not a full pass.
_TRIAL = 64 << 10
_SHRINK_ENOUGH = 0.97
# A file that changes while it is read is read again, at most this many times in all; then it
# is archived as last read and reported (as tar's "file changed as we read it").
READ_ATTEMPTS = 3
_UNIX_OWNER = struct.Struct("<HHBBIBI")  # Info-ZIP's "new Unix" extra field (0x7875)
CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_CENTRAL_FIXED = CENTRAL.size
_CENTRAL_OFFSET_AT = _CENTRAL_FIXED - 4  # the local header's offset ends the fixed part
_OFFSET = struct.Struct("<L")
_MADE_BY = (3 << 8) | 63  # Unix, zip specification 6.3
_DOS_DIRECTORY = 0x10
# Windows reports every writable file as 0666 and folder as 0777 (it has no Unix modes): recorded
# as is, a restore on Linux would make them writable by everyone.  There they are recorded as
# 0644 and 0755 (a read-only file stays 0444); elsewhere the mode is the file's own.
_WRITABLE_BY_OWNER_ONLY = ~0o022 if os.name == "nt" else ~0
# The file comment of a member whose file kept changing while it was read: the archive itself
# says so, and `invoke verify` reports it, long after the run's output is gone.
CHANGED_COMMENT = b"changed while read: may mix versions of the file"
# Begins the archive's own comment when members were left out of it (a database that could not
# be snapshotted): verify and restore say so, long after the run that made it said it once.
INCOMPLETE_COMMENT = b"incomplete: "


# Begins the archive's own comment (or follows its incomplete note) when files in it kept
# changing while they were read: a prune reads only an archive's end, and must not delete an
# older archive on the strength of one that may hold a mixture of a file's versions.
UNSETTLED_COMMENT = b"changed while read: "


def incomplete_note(comment: bytes) -> str | None:
    """What an archive's comment says was left out of it, or None when nothing was."""
    if not comment.startswith(INCOMPLETE_COMMENT):
        return None
    return comment[len(INCOMPLETE_COMMENT) :].decode("utf-8", "replace")


def unsettled_note(comment: bytes) -> str | None:
    """Why an archive's comment says it is no ground for deleting older ones (something left
    out of it, or files that changed while they were read), or None."""
    if (note := incomplete_note(comment)) is not None:
        return f"it is incomplete: {note}"
    if comment.startswith(UNSETTLED_COMMENT):
        which = comment[len(UNSETTLED_COMMENT) :].decode("utf-8", "replace")
        # The advice a refusal needs: a complete backup never comes while a file is written
        # without pause.
        return (
            f"it holds files that changed while they were read ({which}; exclude a file that is always being "
            "written, or pause its writer in a before hook)"
        )
    return None


# What says a file did not change while it was read: size, modification and change times,
# inode and device, as os.stat gives them.  The change time moves on any write or chmod,
# even one that puts the modification time back.
Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """The stat fields that change when a file is written, truncated or replaced."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def steady(seen: Identity, now: Identity) -> bool:
    """Whether a file is still the one `seen` describes.  A walk on Windows gives no inode or
    device (os.scandir leaves them 0): then size and times must do."""
    return seen == now or (seen[3:] == (0, 0) and seen[:3] == now[:3])


# Jobs and answers cross a pipe for every batch: plain tuples pickle several times faster
# than named ones.  A small member to pack: its name, then a file's path (None for a folder
# or a link), the bytes of a link's target (b"" otherwise), its mode and mtime, the size stat
# gave, owner and group (-1: not recorded), and the file's identity when the walk saw it
# (None: a private copy nobody writes, not watched).
Item = tuple[str, str | None, bytes, int, float, int, int, int, Identity | None]
# What the writer records of a packed batch: the central directory records of its members,
# each with its local header's offset counted from the start of the batch's block; where in
# those records the offsets are; how many files, folders and links and how many bytes of
# source; a message for each file that vanished; the names of files that kept changing
# while they were read; the length and CRC-32 of the block; and the names of files that begin
# as a SQLite database but are not one SQLite could have written (see torn_database).  The
# worker does all the per-member work, so the writer's process, which also walks the tree,
# does almost none.
Packed = tuple[bytes, list[int], int, int, int, int, list[str], list[str], int, int, list[str]]


def extra_fields(extra: bytes) -> list[tuple[int, bytes]]:
    """A member's extra field as (header id, data) pairs, in order."""
    fields = []
    while len(extra) >= 4:
        kind, size = struct.unpack_from("<HH", extra)
        fields.append((kind, extra[4 : 4 + size]))
        extra = extra[4 + size :]
    return fields


def torn_database(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes that begins with `head` starts as a SQLite database but is
    not a whole number of pages: a database cut short or damaged, which the walk (it looks only
    at whole pages, to spare opening every file) took for an ordinary file."""
    return head[:16] == SQLITE_HEADER and (size < 512 or size % 512 != 0)


class Piece(NamedTuple):
    """What the writer records of one piece of a large member."""

    crc: int  # of the source
    size: int  # of the source
    packed_crc: int  # of the data to write
    length: int  # of the data to write
    changed: bool = False  # the file was not the one expected by the time this piece was read
    head: bytes = b""  # the file's first 16 bytes, in its first piece
    gone: FileNotFoundError | None = None  # the file was gone (or no file) by the time this piece was read


def pack_batch(compressor: CompressorFactory | None, check: bool, items: list[Item]) -> tuple[Packed, bytes]:
    """What to record of `items` (see Packed), and the block to write: their local headers and
    data.  `check`: prove deflated data inflates back to its source."""
    parts: list[bytes] = []
    records: list[bytes] = []
    offsets: list[int] = []
    vanished: list[str] = []
    changed_names: list[str] = []
    torn: list[str] = []
    files = folders = links = size_in = 0
    position = directory_length = 0
    whole = getattr(compressor, "whole", None)
    for name, path, given, mode, seen_mtime, expected, uid, gid, seen in items:
        source, mtime, changed, comment = given, seen_mtime, False, b""
        if path is not None:
            try:
                source, mtime, changed = _read_small_steady(path, name, expected, seen_mtime, seen)
            except FileNotFoundError as exc:
                vanished.append(gone(path, exc, "before it was read; not archived"))
                continue
            except OSError as exc:
                raise read_error(path, exc) from None
            files += 1
            size_in += len(source)
            if torn_database(source, len(source)):
                torn.append(name)
            if changed:
                changed_names.append(name)
                comment = CHANGED_COMMENT
        elif stat.S_ISDIR(mode):
            folders += 1
        else:
            links += 1
        crc = crc32(source)
        method, data = STORED, source
        if path is not None and compressor is not None and source and worth_compressing(name):
            deflated = _deflate(compressor, source, finish=True, whole=whole)
            if deflated is not None and len(deflated) < len(source):
                if check:
                    _prove_decodes(deflated, source, name, whole=True)
                method, data = DEFLATED, deflated
        encoded, utf8 = encode_name(name)
        owner = _owner(uid, gid)
        header = local_header(encoded, utf8, method, mtime, crc, len(data), len(source), owner=owner)
        parts += (header, data)
        record = central_header(
            encoded, utf8, method, mtime, crc, len(data), len(source), position, mode, owner, comment
        )  # fmt: skip
        records.append(record)
        offsets.append(directory_length + _CENTRAL_OFFSET_AT)
        directory_length += len(record)
        position += len(header) + len(data)
    block = b"".join(parts)
    directory = b"".join(records)
    counts = (files, folders, links, size_in)
    facts = (directory, offsets, *counts, vanished, changed_names, len(block), crc32(block), torn)
    return facts, block


def relocate(directory: bytes, offsets: list[int], base: int) -> bytes:
    """A batch's central directory records (see Packed) with `base`, where its block begins in
    the archive, added to each local header offset; records whose offset passes 4 GiB get it
    in a ZIP64 extra field instead."""
    if not offsets or base == 0:
        return directory
    moved = bytearray(directory)
    if base + _OFFSET.unpack_from(directory, offsets[-1])[0] < ZIP64_LIMIT:
        for at in offsets:  # members are in block order: the last has the largest offset
            _OFFSET.pack_into(moved, at, base + _OFFSET.unpack_from(directory, at)[0])
        return bytes(moved)
    pieces: list[bytes] = []
    for index, at in enumerate(offsets):
        start = at - _CENTRAL_OFFSET_AT
        end = offsets[index + 1] - _CENTRAL_OFFSET_AT if index + 1 < len(offsets) else len(directory)
        record = bytearray(directory[start:end])
        offset = base + _OFFSET.unpack_from(record, _CENTRAL_OFFSET_AT)[0]
        if offset < ZIP64_LIMIT:
            _OFFSET.pack_into(record, _CENTRAL_OFFSET_AT, offset)
        else:
            # A small member has no ZIP64 field for its sizes: the offset's goes first in the extra.
            name_length, extra_length = struct.unpack_from("<HH", record, 28)
            extra_at = _CENTRAL_FIXED + name_length
            record[extra_at:extra_at] = struct.pack("<HHQ", 1, 8, offset)
            struct.pack_into("<H", record, 6, 45)  # version needed: ZIP64
            struct.pack_into("<H", record, 30, extra_length + 12)
            _OFFSET.pack_into(record, _CENTRAL_OFFSET_AT, ZIP64_LIMIT)
        pieces.append(bytes(record))
    return b"".join(pieces)


def pack_piece(
    compressor: CompressorFactory | None,
    check: bool,
    path: str,
    start: int,
    length: int,
    expected: Identity | None = None,
) -> tuple[Piece, bytes]:
    """Read `length` bytes of `path` from `start`; with a compressor, deflate them as one piece of
    a longer stream (a piece that would not shrink goes in stored blocks).  With `expected`, the
    piece says whether the file was still that file (same identity, no short read) once read."""
    try:
        source, after = _read_range(path, start, length)
    except FileNotFoundError as exc:
        if expected is None:  # a private copy nobody else touches
            raise TargetError(gone(path, exc, "while it was being read; run the backup again")) from None
        # Watched: the writer reads the file again, or leaves it out once it is gone.
        return Piece(0, 0, 0, 0, changed=True, gone=exc), b""
    crc = crc32(source)
    data = source
    if compressor is not None and source:
        deflated = _deflate(compressor, source, finish=False)
        if deflated is None:
            data = _stored_blocks(source)
        else:
            if check:
                _prove_decodes(deflated, source, path, whole=False)
            data = deflated
    changed = expected is not None and (not steady(expected, after) or len(source) < length)
    head = bytes(source[:16]) if start == 0 else b""
    return Piece(crc, len(source), crc32(data) if data is not source else crc, len(data), changed, head), data


def worth_deflating(compressor: CompressorFactory | None, path: str) -> bool:
    """Whether the start of `path` shrinks under deflate: decides a large member's method.
    Raises FileNotFoundError when the file is gone."""
    start, _ = _read_range(path, 0, _TRIAL)
    return compressor is not None and _trial(compressor(), start) is not None


def _stored_blocks(source: bytes) -> bytes:
    # Deflate's stored blocks (header byte 0: not final, type 00; then LEN and its complement),
    # at most 65,535 bytes each: 5 bytes of framing per 64 KiB.
    view, parts = memoryview(source), list[bytes | memoryview]()
    for start in range(0, len(source), 0xFFFF):
        block = view[start : start + 0xFFFF]
        parts += (struct.pack("<BHH", 0, len(block), len(block) ^ 0xFFFF), block)
    return b"".join(parts)


def _deflate(
    compressor: CompressorFactory | None,
    source: bytes,
    finish: bool,
    whole: Callable[[bytes], bytes] | None = None,
) -> bytes | None:
    """`source` deflated (whole, or as a piece ended by a sync flush); None when a trial on its
    start shows it will not shrink.  `whole`: the compressor's one-shot form, for a member
    too small to try first."""
    if compressor is None:
        return None
    if len(source) <= 2 * _TRIAL and finish and whole is not None:
        return whole(source)
    squeezer = compressor()
    view = memoryview(source)
    head = b""
    if len(source) > 2 * _TRIAL:
        tried = _trial(squeezer, view[:_TRIAL])
        if tried is None:
            return None
        head, view = tried, view[_TRIAL:]
    # One join, not two `+`: each `+` copies all the deflated bytes so far.
    return b"".join((head, squeezer.compress(view), squeezer.flush() if finish else squeezer.flush(SYNC_FLUSH)))


def _trial(squeezer: Compressor, start: bytes | memoryview) -> bytes | None:
    """`start` deflated and ended by a sync flush, or None when it does not shrink enough for
    deflating the rest to pay."""
    head = squeezer.compress(start) + squeezer.flush(SYNC_FLUSH)
    return head if len(head) < len(start) * _SHRINK_ENOUGH else None


def _prove_decodes(deflated: bytes, source: bytes, name: str, whole: bool) -> None:
    # Every deflated piece is inflated again before it is written and must give back the
    # source exactly; reading the archive back later then only has to find these same bytes.
    # Its shape counts too: a whole member ends in a final block with nothing after it, and a
    # piece of a longer stream must not end in one, or readers would stop there.
    # One call, its output capped one byte past the source's size: a faulty stream cannot make
    # more than that, and a longer result already differs.  (Inflating in small slices, compared
    # in place, cost a tenth more: a piece is at most 2 MiB, and worker processes keep buffers
    # that size on the heap.)
    inflater = decompressor()
    out = inflater.decompress(deflated, len(source) + 1)
    if not (out == source and inflater.eof == whole and not inflater.unconsumed_tail and not inflater.unused_data):
        raise _not_inflating(name)


def _not_inflating(name: str) -> TargetError:
    return TargetError(f"compressing {name} gave data that does not inflate back to it; archive discarded")


# --- headers -------------------------------------------------------------------------------------


def encode_name(name: str) -> tuple[bytes, bool]:
    """A member's name as stored, and whether to flag it UTF-8."""
    try:
        return name.encode("utf-8"), not name.isascii()
    except UnicodeEncodeError:
        # A name that is not valid UTF-8 on disk: keep its bytes and do not claim UTF-8,
        # or readers that trust the flag refuse the whole archive.
        return os.fsencode(name), False


def owner_extra(st: os.stat_result) -> bytes:
    """Info-ZIP's Unix extra field (0x7875): owner and group, which `unzip -X` as root restores."""
    return _owner(st.st_uid, st.st_gid)


def _owner(uid: int, gid: int) -> bytes:
    if os.name == "nt" or not 0 <= uid <= 0xFFFFFFFF or not 0 <= gid <= 0xFFFFFFFF:
        return b""
    return _UNIX_OWNER.pack(0x7875, 11, 1, 4, uid, 4, gid)


def central_header(
    encoded: bytes,
    utf8: bool,
    method: int,
    mtime: float,
    crc: int,
    compressed: int,
    size: int,
    offset: int,
    mode: int,
    owner: bytes = b"",
    comment: bytes = b"",
    zip64_local: bool = False,
) -> bytes:
    """A member's central directory record."""
    dostime, dosdate = dos_time(mtime)
    zip64 = b""
    if size >= ZIP64_LIMIT or zip64_local:
        zip64 += struct.pack("<Q", size)
        size = ZIP64_LIMIT
    if compressed >= ZIP64_LIMIT or zip64_local:
        zip64 += struct.pack("<Q", compressed)
        compressed = ZIP64_LIMIT
    if offset >= ZIP64_LIMIT:
        zip64 += struct.pack("<Q", offset)
        offset = ZIP64_LIMIT
    extra = (struct.pack("<HH", 1, len(zip64)) + zip64 if zip64 else b"") + timestamp_extra(mtime) + owner
    external = ((mode & _WRITABLE_BY_OWNER_ONLY) & 0xFFFF) << 16
    if stat.S_ISDIR(mode):
        external |= _DOS_DIRECTORY
    # as the local header, after "version made by"; then comment length, disk number,
    # internal attributes, external attributes (Unix mode) and the local header's offset
    header = CENTRAL.pack(
        b"PK\x01\x02", _MADE_BY, 45 if zip64 else 20, _UTF8_FLAG if utf8 else 0, method, dostime, dosdate, crc,
        compressed, size, len(encoded), len(extra), len(comment), 0, 0, external, offset,
    )  # fmt: skip
    return header + encoded + extra + comment


def local_header(
    encoded: bytes,
    utf8: bool,
    method: int,
    mtime: float,
    crc: int,
    compressed: int,
    size: int,
    zip64: bool = False,
    owner: bytes = b"",
) -> bytes:
    dostime, dosdate = dos_time(mtime)
    extra = timestamp_extra(mtime) + owner
    if zip64:
        extra += struct.pack("<HHQQ", 1, 16, size, compressed)
        size = compressed = ZIP64_LIMIT
    # signature, version needed, flags, method, time, date, CRC, sizes, name and extra lengths
    header = _LOCAL.pack(
        b"PK\x03\x04", 45 if zip64 else 20, _UTF8_FLAG if utf8 else 0, method, dostime, dosdate, crc, compressed,
        size, len(encoded), len(extra),
    )  # fmt: skip
    return header + encoded + extra


@functools.lru_cache(maxsize=4096)
def _dos_time_of_second(second: int) -> tuple[int, int]:
    t = time.localtime(max(second, 315532800))  # zip cannot say before 1980
    year = min(max(t.tm_year, 1980), 2107)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def dos_time(mtime: float) -> tuple[int, int]:
    """(time, date) as zip headers store them, in local time to two seconds."""
    # Cached by second: files written together share a time, and localtime is not free.
    return _dos_time_of_second(int(mtime))


def timestamp_extra(mtime: float) -> bytes:
    """Extended timestamp (0x5455): the UTC mtime to the second, which unzip and bsdtar restore."""
    second = int(mtime)
    if not 0 <= second <= 0x7FFFFFFF:
        return b""
    return struct.pack("<HHBl", 0x5455, 5, 1, second)


# --- reading sources -----------------------------------------------------------------------------


def _read_small_steady(
    path: str, name: str, expected: int, mtime: float, seen: Identity | None
) -> tuple[bytes, float, bool]:
    """The file's bytes, the mtime to record and whether it kept changing while read.

    The first read is checked against what the walk saw (one fstat after reading: the file was
    already stat'ed); a read again is checked against an fstat before it.  Either way the bytes
    read must be as many as the file then holds."""
    for attempt in range(READ_ATTEMPTS):
        source, before, after = _read_small(path, expected, fresh=attempt > 0)
        if swapped(path, name, seen, identity(after)):
            raise Replaced(path)
        if seen is None:
            if len(source) > CHUNK:  # a private copy nobody writes: never so
                raise TargetError(f"{path} grew past {CHUNK >> 20} MiB while it was being read; run the backup again")
            return source, mtime, False
        if steady(before or seen, identity(after)) and len(source) == after.st_size:
            return source, after.st_mtime if attempt else mtime, False
        expected = after.st_size
    return source[:CHUNK], after.st_mtime, True  # its start, when it grew past a piece


def _read_small(path: str, expected: int, fresh: bool = False) -> tuple[bytes, Identity | None, os.stat_result]:
    # os.open and os.read: the leanest way to read 100,000 small files.  Ask for the size stat
    # gave, plus one byte to see growth: reading CHUNK bytes would allocate 2 MiB per file.
    # Read to the end of the file: a network file system may return less than asked for.
    descriptor = _open_member(path)
    try:
        before = identity(os.fstat(descriptor)) if fresh else None
        parts, total = [], 0
        try:
            while total <= CHUNK:
                wanted = (min(expected, CHUNK) + 1 if total <= expected else CHUNK + 1) - total
                piece = os.read(descriptor, wanted)
                if not piece:
                    break
                parts.append(piece)
                total += len(piece)
                if total == expected and len(piece) < wanted:
                    # Short of the one byte past stat's size: the end, without a read that returns
                    # nothing (a fifth of the system calls of a small file).  The callers hold the
                    # size to the fstat below, so growth since is still seen.
                    break
        except (BlockingIOError, IsADirectoryError):
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise  # a file system that answers EAGAIN: a read error, said as one
            raise NotAFile(path) from None  # a FIFO with a writer, or a folder; otherwise the fstat below
        after = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    # Checked once read, not before: one fstat a file, as before (the walk stat-ed it already).
    if not stat.S_ISREG(after.st_mode):
        raise NotAFile(path)
    # Past CHUNK it grew while read: its start is kept, and the caller reads it again or marks
    # it changed (a log appended to under the walk is the common case), as for a large file.
    return parts[0] if len(parts) == 1 else b"".join(parts), before, after


def _read_range(path: str, start: int, length: int) -> tuple[bytes, Identity]:
    """`length` bytes from `start` (fewer if the file is shorter) and the file's identity once read."""
    try:
        descriptor = _open_member(path)
    except FileNotFoundError:
        raise  # the callers say what it means (Replaced too)
    except OSError as exc:
        raise read_error(path, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotAFile(path)
        os.lseek(descriptor, start, os.SEEK_SET)
        pieces = []
        while length > 0:
            piece = os.read(descriptor, length)
            if not piece:
                break  # the file shrank while it was read: archive what is there
            pieces.append(piece)
            length -= len(piece)
        after = identity(os.fstat(descriptor))
    except FileNotFoundError:
        raise  # NotAFile: the callers say what it means
    except OSError as exc:
        raise read_error(path, exc) from None
    finally:
        os.close(descriptor)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces), after


def _open_member(path: str) -> int:
    try:
        return os.open(path, OPEN_MEMBER)
    except OSError as exc:
        if exc.errno in LINK_REFUSED:
            raise Replaced(path) from None
        raise


def read_error(path: str, exc: OSError) -> TargetError:
    if isinstance(exc, PermissionError):
        # exclude leaves out a file inside a folder; a target's own file can only be made readable.
        return TargetError(f"permission denied reading {path}; fix its permissions, or exclude it if it is in a folder")
    return TargetError(f"cannot read {path}: {exc.strerror or exc}")
