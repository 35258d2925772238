"""Read an archive back in full and say whether every member is intact.

Python's `zipfile` parses the central directory (so a standard reader must
accept the archive); each member's local header must then agree with it, and its
data is read from disk, inflated and checked against its recorded CRC-32 and
size.  SQLite members can also be extracted to a private folder and put through
an integrity check.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from backup_core.sources import sqlite
from backup_core.sources.walk import SQLITE_HEADER
from backup_core.zip import names
from backup_core.zip.compression import crc32, decompressor
from backup_core.zip.packing import extra_fields, incomplete_note

_BLOCK = 1 << 20
_Item = TypeVar("_Item")
# A local file header's fixed part: signature, version needed, flags, method, (time and date,
# skipped: readers take the central directory's), CRC-32, compressed and uncompressed sizes,
# name and extra field lengths.
_LOCAL = struct.Struct("<4sHHH4xLLLHH")
_LATER = 0x08  # flag bit 3: CRC and sizes follow the data, in a data descriptor
_UTF8 = 0x800
_ENCRYPTED = 0x1  # general purpose flag bit 0
_ZIP64_SIZE = 0xFFFFFFFF  # a size field that says "see the ZIP64 extra field"


@dataclass
class Verdict:
    """What reading an archive found."""

    archive: Path
    members: int = 0
    files: int = 0  # regular files and databases
    directories: int = 0
    links: int = 0
    databases: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # members archived while they changed

    @property
    def ok(self) -> bool:
        return not self.problems


class Record(NamedTuple):
    """What the central directory says of one member (the fields of zipfile.ZipInfo used here)."""

    filename: str
    header_offset: int
    compress_type: int
    compress_size: int
    file_size: int
    CRC: int  # ZipInfo's spelling
    orig_filename: str  # the name as stored (filename is zipfile's cleaned-up form)
    flag_bits: int
    extract_version: int  # version needed to extract, with the byte zipfile calls reserved
    end: int  # where the next member's local header, or the central directory, begins


def read_directory(archive: Path, verdict: Verdict | None = None) -> list[Record]:
    """Every member of `archive` in file order, as Python's zipfile reads the central directory;
    with `verdict`, its members counted and their names judged as restore judges them."""
    with zipfile.ZipFile(archive) as directory:
        if verdict is not None:
            _check_names(directory, verdict)
        infos = sorted(directory.infolist(), key=lambda info: info.header_offset)
        ends = [info.header_offset for info in infos[1:]]  # each member's data ends before the next
        if infos:  # (an archive of an empty folder has no member, and so no last one)
            ends.append(directory.start_dir)
        return [
            Record(
                i.filename, i.header_offset, i.compress_type, i.compress_size, i.file_size, i.CRC, i.orig_filename,
                i.flag_bits, i.extract_version | i.reserved << 8, end,
            )
            for i, end in zip(infos, ends, strict=True)
        ]  # fmt: skip


def verify_archive(archive: Path, sqlite_check: str = "none", judge_names: bool = True) -> Verdict:
    """Check every member's data; with sqlite_check, also every SQLite member's integrity; with
    judge_names, also every name as restore judges it."""
    from backup_core.stores.archives import ending, not_a_file

    verdict = Verdict(archive)
    with contextlib.suppress(OSError):  # one that cannot be looked at is reported by the reading below
        if (odd := not_a_file(archive)) is not None:  # a link, a folder, a named pipe that would never answer
            verdict.problems.append(odd)
            return verdict
    try:
        infos = read_directory(archive, verdict if judge_names else None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        verdict.problems.append(f"not a readable zip archive (truncated or damaged?): {exc}")
        return verdict
    except OSError as exc:
        verdict.problems.append(f"cannot read: {exc.strerror or exc}")
        return verdict
    # Readers skip bytes after the end record, but this tool writes none: they were appended, or
    # a longer file was partly overwritten; retention and prune would not take it for whole either.
    if (problem := ending(archive).problem) is not None:
        verdict.problems.append(problem)
    scratch = Path(tempfile.mkdtemp(prefix="verify-")) if sqlite_check != "none" else None
    try:
        # Inflating is CPU work that releases the GIL: read contiguous slices on every core.
        slices = _slices(infos, os.cpu_count() or 1, lambda info: info.compress_size)
        with ThreadPoolExecutor(len(slices) or 1) as pool:
            found = list(pool.map(lambda part: _check_slice(archive, part, scratch, sqlite_check), slices))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    for part in found:
        verdict.members += part.members
        verdict.databases += part.databases
        verdict.bytes += part.bytes
        verdict.problems += part.problems
    return verdict


def _check_names(directory: zipfile.ZipFile, verdict: Verdict) -> None:
    """Count files, folders and links, and report every member restore would refuse, for the
    reason it would give (the same checks, from zip/names.py)."""
    infos = directory.infolist()
    links = {info.filename.rstrip("/") for info in infos if stat.S_ISLNK(info.external_attr >> 16)}
    for info in infos:
        mode = info.external_attr >> 16
        name = names.disk_name(info)
        refused = names.refusal(name)
        if info.filename.endswith("/"):  # is_dir() fails on an empty name
            verdict.directories += 1
        elif stat.S_ISLNK(mode):
            verdict.links += 1
            if not refused and info.file_size <= 4096:
                # A link whose data cannot be read: the data check says why.
                with contextlib.suppress(zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
                    refused = names.link_refusal(name, os.fsdecode(directory.read(info)))
        else:
            verdict.files += 1
        parent = next((p for p in _parents(info.filename) if p in links), None) if links else None
        if not refused and parent:
            refused = f"it lies under the link {parent!r}"
        if not refused and info.flag_bits & _ENCRYPTED:
            refused = "it is marked encrypted, which this tool never writes (its flags are damaged)"
        if refused:
            verdict.problems.append(f"{info.filename}: restore would refuse it: {refused}")
        if info.comment.startswith(b"changed while read"):
            verdict.warnings.append(f"{info.filename} kept changing while it was archived: it may mix versions")
    if (clash := names.clash(infos)) is not None:
        # Case alone: an archive of a case-sensitive volume, whole; restore here takes such
        # members one at a time.  Anything else: this tool never made it so.
        (verdict.warnings if clash.case_only else verdict.problems).append(f"restore would refuse it: {clash.said}")
    if (note := incomplete_note(directory.comment)) is not None:
        verdict.warnings.append(f"this archive is incomplete, as the run that made it said: {note}")


def _parents(name: str) -> list[str]:
    parts = name.rstrip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _slices(items: list[_Item], count: int, size: Callable[[_Item], int]) -> list[list[_Item]]:
    """Split `items` (in file order) into about `count` runs of similar total `size`."""
    total = sum(size(item) for item in items) or 1
    slices: list[list[_Item]] = [[]]
    done = 0
    for item in items:
        if done >= total * len(slices) / count and slices[-1]:
            slices.append([])
        slices[-1].append(item)
        done += size(item)
    return [part for part in slices if part]


def _check_slice(archive: Path, infos: list[Record], scratch: Path | None, how: str) -> Verdict:
    verdict = Verdict(archive)
    try:
        with archive.open("rb", buffering=_BLOCK) as source:  # seeks within the buffer cost no system call
            for info in infos:
                verdict.members += 1
                problem = _check_member(source, archive, info, verdict, scratch, how)
                if problem:
                    verdict.problems.append(f"{info.filename}: {problem}")
    except OSError as exc:
        verdict.problems.append(f"cannot read: {exc.strerror or exc}")
    return verdict


def _check_member(
    source: BinaryIO, archive: Path, info: Record, verdict: Verdict, scratch: Path | None, how: str
) -> str | None:
    source.seek(info.header_offset)
    header = source.read(_LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        return "local header missing or damaged"
    fields = _LOCAL.unpack(header)
    # Reading the name and extra field (rather than seeking past them) leaves the file at the
    # data, as before: the check costs no read of its own.
    problem = _local_header_problem(fields, source.read(fields[7] + fields[8]), info)
    if problem:
        return problem
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return _check_with_zipfile(archive, info)
    crc, size = 0, 0
    copy: BinaryIO | None = None
    try:
        for data in _member_data(source, info):
            if scratch is not None and size == 0 and data[:16] == SQLITE_HEADER and not info.filename.endswith("/"):
                copy = (scratch / f"member-{info.header_offset}.db").open("wb")
            crc, size = crc32(data, crc), size + len(data)
            if copy is not None:
                copy.write(data)
    except _Damaged as exc:
        return str(exc)
    except zlib.error as exc:
        return f"compressed data is damaged ({exc})"
    except Exception as exc:  # isal raises its own error type for damaged streams
        if type(exc).__name__ != "IsalError":
            raise
        return f"compressed data is damaged ({exc})"
    finally:
        if copy is not None:
            copy.close()
    verdict.bytes += size
    if size != info.file_size:
        return f"size is {size} bytes, the directory says {info.file_size}"
    if crc != info.CRC:
        return f"CRC mismatch (stored {info.CRC:08x}, data gives {crc:08x}): the archive is damaged"
    if copy is not None:
        verdict.databases += 1
        found = sqlite.check(Path(copy.name), how)
        if found:
            return f"SQLite {sqlite.CHECK_PRAGMAS[how]} failed: {found}"
    return None


def _local_header_problem(fields: tuple[int, ...], stored: bytes, info: Record) -> str | None:
    """How a member's local header (its fixed `fields`, then its name and extra field as
    `stored`) disagrees with the central directory, or None.

    Readers differ in what they trust: unzip takes the method, the CRC and a stored member's
    sizes from the local header and warns of another name; 7-Zip compares the method, flags,
    CRC and sizes with the central directory, bsdtar the method, CRC and sizes, and both refuse
    data that runs into the next member.  Any difference is an archive some reader will not
    extract.  The modification time is not compared: readers take the central directory's."""
    _, version, flags, method, crc, compressed, size, name_length, extra_length = fields
    # Decoded as zipfile decoded the central directory's name (both codecs map each name to one
    # string, so equal strings are equal bytes); ASCII goes the fast way, cp437's is slow.
    name = stored[:name_length]
    codec = "utf-8" if info.flag_bits & _UTF8 or name.isascii() else "cp437"
    try:
        same = name.decode(codec) == info.orig_filename
    except UnicodeDecodeError:
        same = False
    if not same:
        shown = name.decode(codec, "replace")
        return f"its local header names it {shown!r}, the central directory {info.orig_filename!r}"
    if method != info.compress_type:
        return f"its local header says compression method {method}, the central directory {info.compress_type}"
    if flags != info.flag_bits:
        return f"its local header says flags {flags:#06x}, the central directory {info.flag_bits:#06x}"
    if version > info.extract_version:
        return f"its local header needs version {version} to extract it, the central directory {info.extract_version}"
    # With flag bit 3 (which this tool's writer never sets) the values follow the data and
    # readers take the central directory's.
    if not flags & _LATER:
        if _ZIP64_SIZE in (size, compressed):
            size, compressed = _zip64_sizes(stored[name_length:], size, compressed)
        if crc != info.CRC:
            return f"its local header says CRC {crc:08x}, the central directory {info.CRC:08x}"
        if compressed != info.compress_size:
            return f"its local header says {compressed} bytes compressed, the central directory {info.compress_size}"
        if size != info.file_size:
            return f"its local header says {size} bytes uncompressed, the central directory {info.file_size}"
    end = info.header_offset + _LOCAL.size + name_length + extra_length + info.compress_size
    if end > info.end:
        return f"its data runs {end - info.end} bytes into what follows it (overlapping members)"
    return None


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int]:
    """The sizes a local header's ZIP64 extra field gives for those it sets to 0xFFFFFFFF
    (uncompressed first), as zipfile reads them; a size without one stays 0xFFFFFFFF."""
    values = next((data for kind, data in extra_fields(extra) if kind == 1), b"")
    taken = 0
    if size == _ZIP64_SIZE and len(values) >= 8:
        (size,), taken = struct.unpack_from("<Q", values), 8
    if compressed == _ZIP64_SIZE and len(values) >= taken + 8:
        (compressed,) = struct.unpack_from("<Q", values, taken)
    return size, compressed


class _Damaged(Exception):
    pass


def _member_data(source: BinaryIO, info: Record) -> Iterator[bytes]:
    """A member's uncompressed data in pieces of at most _BLOCK bytes, whatever its ratio.

    Bounding the output matters: a megabyte of deflated zeros inflates to a gigabyte.
    """
    inflater = decompressor() if info.compress_type == zipfile.ZIP_DEFLATED else None
    remaining = info.compress_size
    while remaining:
        block = source.read(min(remaining, _BLOCK))
        if not block:
            raise _Damaged("data cut short (truncated archive)")
        remaining -= len(block)
        if inflater is None:
            yield block
            continue
        yield inflater.decompress(block, _BLOCK)
        while inflater.unconsumed_tail:
            yield inflater.decompress(inflater.unconsumed_tail, _BLOCK)
    if inflater is not None:
        yield inflater.flush()
        if not inflater.eof:
            raise _Damaged("compressed data ends early")


def _check_with_zipfile(archive: Path, info: Record) -> str | None:
    try:
        with zipfile.ZipFile(archive) as directory, directory.open(info.filename) as member:
            while member.read(_BLOCK):
                pass
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
        return str(exc)
    return None


# --- the writer's read-back ----------------------------------------------------------------------


class Span(NamedTuple):
    """A stretch of an archive as its writer wrote it."""

    offset: int
    length: int
    crc: int  # CRC-32 of its bytes


_READ_BACK_ALONE = 8 << 20  # below this, an archive is read back on the calling thread


def first_difference(archive: Path, spans: list[Span]) -> int | None:
    """Where `archive` first differs from what was written, given as (offset, length, CRC-32)
    of each stretch, end to end; None when every byte is as written and nothing follows."""
    if not spans:
        return None
    for before, span in itertools.pairwise(spans):
        if span.offset != before.offset + before.length:  # a stretch nobody accounted for
            return before.offset + before.length
    end = spans[-1].offset + spans[-1].length
    try:
        size = archive.stat().st_size
    except OSError:
        return 0
    if size != end:
        return min(size, end)
    if end < _READ_BACK_ALONE:
        # Starting threads costs more than reading a small archive: about 1 ms a target of 1,000.
        return _first_changed_span(archive, spans)
    # Reading and CRC-32 release the GIL: read contiguous halves on every core.
    halves = _slices(spans, os.cpu_count() or 1, lambda span: span.length)
    with ThreadPoolExecutor(len(halves)) as pool:
        found = [f for f in pool.map(lambda part: _first_changed_span(archive, part), halves) if f is not None]
    return min(found) if found else None


def _first_changed_span(archive: Path, spans: list[Span]) -> int | None:
    # One buffer for every read, no larger than the stretch (zeroing 4 MiB costs a small archive more
    # than reading it).
    buffer = memoryview(bytearray(min(4 << 20, sum(span.length for span in spans) or 1)))
    with archive.open("rb", buffering=0) as source:
        for span in spans:
            source.seek(span.offset)
            crc, remaining = 0, span.length
            while remaining:
                got = source.readinto(buffer[: min(remaining, len(buffer))])
                if not got:
                    return span.offset
                crc, remaining = crc32(buffer[:got], crc), remaining - got
            if crc != span.crc:
                return span.offset
    return None
