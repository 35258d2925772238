"""A small, fast, streaming zip writer.

Why not `zipfile`: it compresses on one core with zlib, cannot take data that
was compressed elsewhere, and never falls back to storing a member that does not
shrink.  This writer keeps to the plain, widely read subset of the format
(stored and deflated members, UTF-8 names, ZIP64 where sizes or counts need it,
Unix modes and an extended-timestamp field) and adds only speed:

* members are compressed on every core by worker threads (ISA-L and zlib release
  the GIL) and written strictly in order by the calling thread;
* small files travel in batches so 100,000 tiny files are not dominated by
  per-file bookkeeping;
* a large file is cut into chunks, each compressed independently and closed with
  a sync flush; the chunks concatenate into one valid deflate stream (as pigz
  does), so memory stays flat whatever the file's size;
* a member that deflate does not shrink is stored instead.

Sizes and CRCs of large members are patched into their local header once known,
so no data descriptors are needed and every reader sees complete headers.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .compression import FINAL_BLOCK, SYNC_FLUSH, CompressorFactory, crc32, inflate, worth_compressing
from .errors import TargetError
from .verify import Record

CHUNK = 2 << 20  # a large file is compressed in chunks of this size
_BATCH_BYTES = 1 << 20  # small files are grouped into jobs of about this much data
_BATCH_FILES = 256
_ZIP64_LIMIT = 0xFFFFFFFF
# A member whose size at stat time passes this gets ZIP64 fields in its local header
# up front; the margin covers deflate's small expansion of incompressible chunks.
_ZIP64_LOCAL_FROM = _ZIP64_LIMIT - (64 << 20)
_STORED, _DEFLATED = 0, 8
_UTF8_FLAG = 0x800
_MADE_BY = (3 << 8) | 63  # Unix, zip specification 6.3
_DOS_DIRECTORY = 0x10
_SHRINK_ENOUGH = 0.97  # deflate a large member only if its first chunk shrinks below this

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate line ends
_LOCAL = struct.Struct("<4sHHHHHLLLHH")
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_END = struct.Struct("<4sHHHHLLH")
_END64 = struct.Struct("<4sQHHLLQQQQ")
_LOCATOR64 = struct.Struct("<4sLQL")


@dataclass(slots=True)
class Member:
    """One member as the central directory records it."""

    name: str
    encoded: bytes
    method: int
    mtime: float
    mode: int
    crc: int = 0
    compressed: int = 0
    size: int = 0
    offset: int = 0
    zip64_local: bool = False
    dos_time: tuple[int, int] = (0, 0)  # (time, date) as zip headers store them; computed once
    packed_crc: int = 0  # CRC-32 of the bytes written as the member's data (compressed or not)
    utf8: bool = False  # the name is non-ASCII UTF-8 (the zip flag that says so)


@dataclass
class ArchiveStats:
    files: int = 0  # regular files (and database snapshots)
    directories: int = 0
    links: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Large:
    member: Member
    path: Path
    compress: bool
    decided: bool = False
    header_written: bool = False


# A batch item: (member, path or None, payload for links/dirs, compress?)
_Item = tuple[Member, str | Path | None, bytes, bool]


class ZipWriter:
    """Write members to `file` in the order they are added; `close()` finishes the archive."""

    def __init__(
        self,
        file: BinaryIO,
        compressor: CompressorFactory | None,
        workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._file = file
        self._compressor = compressor
        self._workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="zip")
        self._window = 2 * self._workers + 2  # jobs in flight: bounds memory
        self._pending: deque[tuple[Future[Any], Callable[[Any], None]]] = deque()
        self._batch: list[_Item] = []
        self._batch_bytes = 0
        self._members: list[Member] = []
        self._offset = 0
        self._directory_start, self._directory_crc = -1, 0
        self._on_progress = on_progress or (lambda n: None)
        self.stats = ArchiveStats()

    # --- adding members ------------------------------------------------------------------------

    def add_directory(self, name: str, st: os.stat_result) -> None:
        member = _member(name.rstrip("/") + "/", st)
        self._queue_small((member, None, b"", False), 0)

    def add_symlink(self, name: str, target: str, st: os.stat_result) -> None:
        member = _member(name, st)
        self._queue_small((member, None, os.fsencode(target), False), 0)

    def add_file(self, name: str, path: str | Path, st: os.stat_result) -> None:
        """Queue a regular file; read errors surface from this call or from close()."""
        member = _member(name, st)
        compress = self._compressor is not None and worth_compressing(name)
        if st.st_size <= CHUNK:
            member.size = st.st_size  # what stat said; replaced by what was read
            self._queue_small((member, path, b"", compress), st.st_size)
            return
        self._flush_batch()
        large = _Large(member, Path(path), compress)
        member.zip64_local = st.st_size > _ZIP64_LOCAL_FROM
        try:
            source = large.path.open("rb", buffering=0)
        except FileNotFoundError:
            self.stats.warnings.append(f"{path} vanished before it was read; not archived")
            return
        except OSError as exc:
            raise _read_error(path, exc) from None
        with source:
            while True:
                try:
                    chunk = source.read(CHUNK)
                except OSError as exc:
                    raise _read_error(path, exc) from None
                if not chunk:
                    break
                self._push(self._pool.submit(self._compress_chunk, large, chunk), self._chunk_writer(large))
        self._push(_done(None), lambda _: self._finish_large(large))

    def close(self) -> ArchiveStats:
        """Write what is queued and the central directory; return what was archived."""
        self._flush_batch()
        self._drain(0)
        self._pool.shutdown()
        self._write_central_directory()
        self.stats.bytes_out = self._offset
        return self.stats

    def records(self) -> list[Record]:
        """What the central directory says of each member, for reading the archive back."""
        return [Record(m.name, m.offset, m.method, m.compressed, m.size, m.crc, m.packed_crc) for m in self._members]

    def directory_checksum(self) -> tuple[int, int]:
        """(offset, CRC-32) of everything after the members: directory and end records."""
        return self._directory_start, self._directory_crc

    def abort(self) -> None:
        """Stop the workers without finishing the archive (the caller discards the file)."""
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- the pipeline --------------------------------------------------------------------------

    def _queue_small(self, item: _Item, size: int) -> None:
        self._batch.append(item)
        self._batch_bytes += size
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_FILES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._push(self._pool.submit(self._prepare_batch, batch), self._write_batch)

    def _push(self, future: Future[Any], write: Callable[[Any], None]) -> None:
        self._pending.append((future, write))
        self._drain(self._window)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            future, write = self._pending.popleft()
            write(future.result())

    # --- worker side: read, checksum, compress -------------------------------------------------

    def _prepare_batch(self, batch: list[_Item]) -> list[tuple[Member, bytes] | str]:
        ready: list[tuple[Member, bytes] | str] = []
        for member, path, given, compress in batch:
            payload = given
            if path is not None:
                try:
                    payload = _read_small(path, member.size)
                except FileNotFoundError:
                    ready.append(f"{path} vanished before it was read; not archived")
                    continue
                except OSError as exc:
                    raise _read_error(path, exc) from None
            member.crc = crc32(payload)
            member.size = len(payload)
            member.method = _STORED
            member.packed_crc = member.crc
            if compress and payload:
                squeezer = self._compressor()  # type: ignore[misc]
                packed = squeezer.compress(payload) + squeezer.flush()
                if len(packed) < len(payload):
                    _prove_decodes(packed, member.crc, member.name)
                    member.method, payload, member.packed_crc = _DEFLATED, packed, crc32(packed)
            member.compressed = len(payload)
            ready.append((member, payload))
        return ready

    def _compress_chunk(self, large: _Large, chunk: bytes) -> tuple[bytes, bytes | None]:
        if not large.compress:
            return chunk, None
        squeezer = self._compressor()  # type: ignore[misc]
        packed = squeezer.compress(chunk) + squeezer.flush(SYNC_FLUSH)
        _prove_decodes(packed, crc32(chunk), large.member.name)
        return chunk, packed

    # --- writer side: strictly in order ---------------------------------------------------------

    def _write_batch(self, ready: list[tuple[Member, bytes] | str]) -> None:
        for item in ready:
            if isinstance(item, str):
                self.stats.warnings.append(item)
                continue
            member, payload = item
            member.offset = self._offset
            self._write(_local_header(member))
            self._write(payload)
            self._record(member)

    def _chunk_writer(self, large: _Large) -> Callable[[tuple[bytes, bytes | None]], None]:
        def write(result: tuple[bytes, bytes | None]) -> None:
            raw, packed = result
            member = large.member
            if not large.decided:
                large.decided = True
                large.compress = packed is not None and len(packed) < len(raw) * _SHRINK_ENOUGH
                member.method = _DEFLATED if large.compress else _STORED
            if not large.header_written:
                large.header_written = True
                member.offset = self._offset
                self._write(_local_header(member))
            member.crc = crc32(raw, member.crc)
            member.size += len(raw)
            data = packed if large.compress and packed is not None else raw
            member.compressed += len(data)
            member.packed_crc = crc32(data, member.packed_crc)
            self._write(data)

        return write

    def _finish_large(self, large: _Large) -> None:
        member = large.member
        if not large.header_written:  # the file shrank to nothing after it was stat'ed
            member.method, member.offset = _STORED, self._offset
            self._write(_local_header(member))
        elif member.method == _DEFLATED:
            self._write(FINAL_BLOCK)
            member.compressed += len(FINAL_BLOCK)
            member.packed_crc = crc32(FINAL_BLOCK, member.packed_crc)
        if not member.zip64_local and max(member.size, member.compressed) >= _ZIP64_LIMIT:
            raise TargetError(f"{large.path} grew past 4 GiB while it was being read; run the backup again")
        # Patch method, CRC and sizes into the local header written before the data.
        self._file.seek(member.offset)
        self._file.write(_local_header(member))
        self._file.seek(self._offset)
        self._record(member)

    def _record(self, member: Member) -> None:
        self._members.append(member)
        kind = stat.S_IFMT(member.mode)
        if kind == stat.S_IFDIR:
            self.stats.directories += 1
        elif kind == stat.S_IFLNK:
            self.stats.links += 1
        else:
            self.stats.files += 1
            self.stats.bytes_in += member.size
            self._on_progress(member.size)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._offset += len(data)
        if self._directory_start >= 0:
            self._directory_crc = crc32(data, self._directory_crc)

    def _write_central_directory(self) -> None:
        start = self._directory_start = self._offset
        self._directory_crc = 0
        for member in self._members:
            self._write(_central_header(member))
        size = self._offset - start
        count = len(self._members)
        if count >= 0xFFFF or start >= _ZIP64_LIMIT or size >= _ZIP64_LIMIT:
            end64 = self._offset
            self._write(_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0, count, count, size, start))
            self._write(_LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1))
        self._write(
            _END.pack(
                b"PK\x05\x06",
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(size, _ZIP64_LIMIT),
                min(start, _ZIP64_LIMIT),
                0,
            )
        )


# --- records -------------------------------------------------------------------------------------


def _member(name: str, st: os.stat_result) -> Member:
    try:
        encoded, utf8 = name.encode("utf-8"), not name.isascii()
    except UnicodeEncodeError:
        # A name that is not valid UTF-8 on disk: keep its bytes and do not claim UTF-8,
        # or readers that trust the flag refuse the whole archive.
        encoded, utf8 = os.fsencode(name), False
    member = Member(name, encoded, _STORED, st.st_mtime, st.st_mode, utf8=utf8)
    member.dos_time = _dos_time(st.st_mtime)
    return member


def _prove_decodes(packed: bytes, crc: int, name: str) -> None:
    # Every deflated piece is inflated again before it is written and must give back the
    # source's CRC; reading the archive back later then only has to find these same bytes.
    if crc32(inflate(packed)) != crc:
        raise TargetError(f"compressing {name} gave data that does not inflate back to it; archive discarded")


def _flags(member: Member) -> int:
    return _UTF8_FLAG if member.utf8 else 0


def _dos_time(mtime: float) -> tuple[int, int]:
    t = time.localtime(max(mtime, 315532800))  # zip cannot say before 1980
    year = min(max(t.tm_year, 1980), 2107)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def _timestamp_extra(member: Member) -> bytes:
    # Extended timestamp (0x5455): the UTC mtime to the second, which unzip and bsdtar restore.
    mtime = int(member.mtime)
    if not 0 <= mtime <= 0x7FFFFFFF:
        return b""
    return struct.pack("<HHBl", 0x5455, 5, 1, mtime)


def _local_header(member: Member) -> bytes:
    dostime, dosdate = member.dos_time
    extra = _timestamp_extra(member)
    size, compressed = member.size, member.compressed
    if member.zip64_local:
        extra += struct.pack("<HHQQ", 1, 16, size, compressed)
        size = compressed = _ZIP64_LIMIT
    version = 45 if member.zip64_local else 20
    # signature, version needed, flags, method, time, date, CRC, sizes, name and extra lengths
    header = _LOCAL.pack(
        b"PK\x03\x04", version, _flags(member), member.method, dostime, dosdate, member.crc, compressed, size,
        len(member.encoded), len(extra),
    )  # fmt: skip
    return header + member.encoded + extra


def _central_header(member: Member) -> bytes:
    dostime, dosdate = member.dos_time
    zip64 = b""
    size, compressed, offset = member.size, member.compressed, member.offset
    if size >= _ZIP64_LIMIT or member.zip64_local:
        zip64 += struct.pack("<Q", size)
        size = _ZIP64_LIMIT
    if compressed >= _ZIP64_LIMIT or member.zip64_local:
        zip64 += struct.pack("<Q", compressed)
        compressed = _ZIP64_LIMIT
    if offset >= _ZIP64_LIMIT:
        zip64 += struct.pack("<Q", offset)
        offset = _ZIP64_LIMIT
    extra = (struct.pack("<HH", 1, len(zip64)) + zip64 if zip64 else b"") + _timestamp_extra(member)
    external = (member.mode & 0xFFFF) << 16
    if stat.S_ISDIR(member.mode):
        external |= _DOS_DIRECTORY
    version = 45 if zip64 else 20
    # as the local header, after "version made by"; then comment length, disk number,
    # internal attributes, external attributes (Unix mode) and the local header's offset
    header = _CENTRAL.pack(
        b"PK\x01\x02", _MADE_BY, version, _flags(member), member.method, dostime, dosdate, member.crc, compressed,
        size, len(member.encoded), len(extra), 0, 0, 0, external, offset,
    )  # fmt: skip
    return header + member.encoded + extra


def _read_small(path: str | Path, expected: int) -> bytes:
    # os.open and os.read: the leanest way to read 100,000 small files.  Ask for the size stat
    # gave, plus one byte to see growth: reading CHUNK bytes would allocate 2 MiB per file.
    descriptor = os.open(path, os.O_RDONLY | _O_BINARY)
    try:
        payload = os.read(descriptor, expected + 1)
        while len(payload) > expected and len(payload) <= CHUNK:
            more = os.read(descriptor, CHUNK + 1 - len(payload))
            if not more:
                break
            payload += more
    finally:
        os.close(descriptor)
    if len(payload) > CHUNK:
        raise TargetError(f"{path} grew while it was being read; run the backup again")
    return payload


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _read_error(path: str | Path, exc: OSError) -> TargetError:
    if isinstance(exc, PermissionError):
        return TargetError(f"permission denied reading {path}; fix its permissions or add it to exclude")
    return TargetError(f"cannot read {path}: {exc.strerror or exc}")
