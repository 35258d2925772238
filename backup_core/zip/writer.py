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

import bisect
import os
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from backup_core.errors import TargetError
from backup_core.zip import packing
from backup_core.zip.compression import FINAL_BLOCK, CompressorFactory, crc32, crc32_combine, worth_compressing
from backup_core.zip.packing import (
    CENTRAL,
    CHANGED_COMMENT,
    CHUNK,
    DEFLATED,
    READ_ATTEMPTS,
    STORED,
    ZIP64_LIMIT,
    Item,
    Packed,
    Piece,
)
from backup_core.zip.verify import Span
from backup_core.zip.workers import Job, Workers

_BATCH_BYTES = 1 << 20  # small files are grouped into jobs of about this much data
_BATCH_FILES = 256
# A member whose size at stat time passes this gets ZIP64 fields in its local header
# up front; the margin covers deflate's small expansion of incompressible chunks.
_ZIP64_LOCAL_FROM = ZIP64_LIMIT - (64 << 20)
_END = struct.Struct("<4sHHHHLLH")
_END64 = struct.Struct("<4sQHHLLQQQQ")
_LOCATOR64 = struct.Struct("<4sLQL")
# The central directory's records are packed as each member is finished (about 90 bytes
# each, against about 700 for the objects they come from) and beyond this many bytes go
# to an anonymous temporary file beside the archive: memory stays flat at any member count.
_DIRECTORY_IN_MEMORY = int(os.environ.get("BACKUP_DIRECTORY_IN_MEMORY") or 8 << 20)  # tests set it small
_DIRECTORY_PIECE = 1 << 20  # written and read back in pieces of this size


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
    utf8: bool = False  # the name is non-ASCII UTF-8 (the zip flag that says so)
    owner: bytes = b""  # the Unix extra field with owner and group
    comment: bytes = b""


@dataclass
class ArchiveStats:
    files: int = 0  # regular files (and database snapshots)
    directories: int = 0
    links: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    warnings: list[str] = field(default_factory=list)
    # Names of members whose file kept changing while it was read (READ_ATTEMPTS reads):
    # what the archive holds of them may be a mixture of versions.
    changed: list[str] = field(default_factory=list)
    # Names of members that begin as a SQLite database but are not whole pages (packing.torn_database).
    torn_databases: list[str] = field(default_factory=list)


@dataclass
class _Large:
    member: Member
    path: str
    compressor: CompressorFactory | None = None
    header_span: int = -1  # index in ZipWriter.spans of its local header, once written
    changed: bool = False  # some piece found the file changed since it was stat'ed
    gone: FileNotFoundError | None = None  # some piece found it gone, or no longer a file
    head: bytes = b""  # its first 16 bytes
    seen: packing.Identity | None = None  # what the walk saw of it (None: a private copy)


# What is done with a finished job, in order: (job, what to record, data or None).
_Writer = Callable[[Any, Any, Any], None]


class ZipWriter:
    """Write members to `file` in the order they are added; `close()` finishes the archive."""

    def __init__(
        self,
        file: BinaryIO,
        compressor: CompressorFactory | None,
        workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        path: Path | None = None,
        inflate_check: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """`path`, the file's own path, lets worker processes write into it (see workers.py);
        `inflate_check` proves every deflated piece inflates back to its source before it is written."""
        self._file = file
        self._compressor = compressor
        self._check = inflate_check
        count = max(1, workers or os.cpu_count() or 1)
        self._workers = Workers(count, path)
        self._window = 3 * count + 2  # jobs in flight: bounds memory
        self._pending: deque[tuple[Job | None, _Writer]] = deque()
        self._batch: list[Item] = []
        self._batch_bytes = 0
        self._directory = bytearray()  # packed central directory records not yet spilled
        self._spilled: IO[bytes] | None = None  # the records beyond _DIRECTORY_IN_MEMORY
        self._count = 0  # members recorded
        self._spill_folder = path.parent if path is not None else None
        self._offset = 0  # where the next member goes
        self._position = 0  # where this process's own handle stands
        # [offset, length, CRC-32] of every stretch of the file, in file order: what the
        # read-back compares the file with (see spans).
        self._spans: list[list[int]] = []
        self._directory_start = -1
        self._rewound = False  # a large member was written again: the file may hold stale bytes past the end
        self._on_progress = on_progress or (lambda n: None)
        self._should_stop = should_stop  # checked between jobs, so a large file stops within a piece
        self.stats = ArchiveStats()

    def foresee(self, size: int, members: int) -> bool:
        """Say that `size` bytes of `members` members will be added (see Workers.foresee); True
        once looking further ahead adds nothing."""
        return self._workers.foresee(size, members)

    # --- adding members ------------------------------------------------------------------------

    def add_directory(self, name: str, st: os.stat_result) -> None:
        self._queue_small((name.rstrip("/") + "/", None, b"", st.st_mode, st.st_mtime, 0, st.st_uid, st.st_gid, None))

    def add_symlink(self, name: str, target: str, st: os.stat_result) -> None:
        self._queue_small((name, None, os.fsencode(target), st.st_mode, st.st_mtime, 0, st.st_uid, st.st_gid, None))

    def add_file(self, name: str, path: str | Path, st: os.stat_result, watch: bool = True) -> None:
        """Queue a regular file; read errors surface from this call or from close().  `watch`: check
        that the file stays as `st` describes it while it is read, read it again if not, and list it
        in stats.changed if it never does (False for private copies, whose `st` is made up)."""
        seen = packing.identity(st) if watch else None
        size = st.st_size
        if size <= CHUNK:
            # The worker does the rest (names, headers, the central directory's record).
            self._queue_small((name, str(path), b"", st.st_mode, st.st_mtime, size, st.st_uid, st.st_gid, seen))
            return
        member = _member(name, st)
        compress = self._compressor is not None and worth_compressing(name)
        self._flush_batch()
        large = _Large(member, str(path), seen=seen)
        member.zip64_local = st.st_size > _ZIP64_LOCAL_FROM
        try:
            deflate = packing.worth_deflating(self._compressor if compress else None, large.path)
        except FileNotFoundError as exc:
            self.stats.warnings.append(packing.gone(str(path), exc, "before it was read; not archived"))
            return
        member.method = DEFLATED if deflate else STORED
        compressor = large.compressor = self._compressor if deflate else None
        for start in range(0, st.st_size, CHUNK):
            length = min(CHUNK, st.st_size - start)
            job = self._workers.submit(
                "pack_piece", length, int(start == 0), compressor, self._check, large.path, start, length, seen
            )
            self._push(job, self._piece_writer(large))
        self._push(None, lambda job, facts, data: self._finish_large(large))

    def close(self, comment: Callable[[], bytes] = lambda: b"") -> ArchiveStats:
        """Write what is queued and the central directory; return what was archived.  `comment`
        gives the archive's comment once every member is in (at most 65,535 bytes are kept)."""
        self._flush_batch()
        self._drain(0)
        self._workers.close()
        if self._workers.warning:
            self.stats.warnings.append(self._workers.warning)
        self._write_central_directory(comment()[:0xFFFF])
        if self._rewound:
            self._file.truncate(self._offset)  # the first, longer reading of a member written again
        self.stats.bytes_out = self._offset
        return self.stats

    def spans(self) -> list[Span]:
        """Every stretch of the archive as written, end to end: what the read-back compares."""
        return [Span(offset, length, crc) for offset, length, crc in self._spans]

    def member_at(self, offset: int) -> str:
        """Where `offset` lies, for a message: in the central directory, or in a member's header or data."""
        if not self._count or 0 <= self._directory_start <= offset:
            return "the central directory"
        # Members are recorded in file order, except a large one, recorded once its data is in.
        starts = sorted(_offsets_and_names(b"".join(self._directory_pieces())))
        index = bisect.bisect_right(starts, (offset, "\uffff")) - 1
        return f"member {starts[max(index, 0)][1]}"

    def abort(self) -> None:
        """Stop the workers without finishing the archive (the caller discards the file)."""
        self._pending.clear()
        self._workers.close(abandon=True)
        self.release()

    def release(self) -> None:
        """Drop the central directory's temporary file, once member_at() is no longer needed."""
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None

    # --- the pipeline --------------------------------------------------------------------------

    def _queue_small(self, item: Item) -> None:
        self._batch.append(item)
        self._batch_bytes += item[5]
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_FILES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self._batch:
            batch, size = self._batch, self._batch_bytes
            self._batch, self._batch_bytes = [], 0
            job = self._workers.submit("pack_batch", size, len(batch), self._compressor, self._check, batch)
            self._push(job, self._write_batch)

    def _push(self, job: Job | None, write: _Writer) -> None:
        self._pending.append((job, write))
        self._drain(self._window)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            if self._should_stop():
                raise TargetError("interrupted; the partial archive was removed")
            job, write = self._pending.popleft()
            if job is None:
                write(None, None, None)
            else:
                write(job, *self._workers.facts(job))

    # --- writing, strictly in order --------------------------------------------------------------

    def _write_batch(self, job: Job, facts: Packed, block: bytes | None) -> None:
        directory, offsets, files, folders, links, size, vanished, changed, length, crc, torn = facts
        stats = self.stats
        stats.warnings += vanished
        stats.torn_databases += torn
        stats.changed += changed
        stats.files += files
        stats.directories += folders
        stats.links += links
        stats.bytes_in += size
        self._add_records(packing.relocate(directory, offsets, self._offset), len(offsets))
        if size:
            self._on_progress(size)
        self._place(job, block, length, crc)

    def _piece_writer(self, large: _Large) -> _Writer:
        def write(job: Job, piece: Piece, data: bytes | None) -> None:
            member = large.member
            if large.header_span < 0:
                member.offset = self._offset
                self._write(_local_header(member))
                large.header_span = len(self._spans) - 1
            large.changed |= piece.changed
            large.gone = piece.gone or large.gone
            large.head = piece.head or large.head
            member.crc = crc32_combine(member.crc, piece.crc, piece.size)
            member.size += piece.size
            member.compressed += piece.length
            self._place(job, data, piece.length, piece.packed_crc)

        return write

    def _place(self, job: Job, data: bytes | None, length: int, crc: int) -> None:
        """Put a job's data next: written here, or by the worker process that holds it."""
        if data is not None:
            self._write(data, crc)
        else:
            self._workers.place(job, self._offset)
            self._spans.append([self._offset, length, crc])
            self._offset += length

    def _finish_large(self, large: _Large) -> None:
        member = large.member
        if large.header_span < 0:  # never happens: a large file has at least one piece
            raise TargetError(f"{large.path} was not read; run the backup again")
        for _ in range(READ_ATTEMPTS - 1):
            if not large.changed or isinstance(large.gone, packing.Replaced) or not self._read_again(large):
                break
        if large.gone is not None:
            # Gone while read (a log rotated away), at the last look: left out, as a small file
            # gone is; what was read of it is no version of the file.  The member's bytes are
            # overwritten by the next one, or cut off when the archive ends.
            self._drop(large)
            self.stats.warnings.append(packing.gone(large.path, large.gone, "while it was being read; not archived"))
            return
        if large.changed:
            self.stats.changed.append(member.name)
            member.comment = CHANGED_COMMENT
        if packing.torn_database(large.head, member.size):
            self.stats.torn_databases.append(member.name)
        if member.method == DEFLATED:
            self._write(FINAL_BLOCK)
            member.compressed += len(FINAL_BLOCK)
        if not member.zip64_local and max(member.size, member.compressed) >= ZIP64_LIMIT:
            raise TargetError(f"{large.path} grew past 4 GiB while it was being read; run the backup again")
        # Patch CRC and sizes into the local header written before the data.
        header = _local_header(member)
        self._file.seek(member.offset)
        self._file.write(header)
        self._position = member.offset + len(header)
        self._spans[large.header_span][2] = crc32(header)
        self._record(member)

    def _drop(self, large: _Large) -> None:
        """Take back what was written of `large`: the next member (or the end) goes at its offset."""
        self._workers.settle()
        del self._spans[large.header_span :]
        self._offset, self._position, self._rewound = large.member.offset, -1, True

    def _read_again(self, large: _Large) -> bool:
        """Write `large` again from its local header on, read afresh: it changed while it was read.
        What was written of it is dropped either way; False, with `large.gone` set, when it is
        no longer a file.

        Nothing after it is placed yet (members are placed in order), so its data is simply
        overwritten; worker processes first finish writing what they were told to place, or
        one could land on the new data afterwards.  Rare, so read here, on one core."""
        self._drop(large)
        member = large.member
        try:
            st = os.lstat(large.path)  # a link now under its name is not followed
        except FileNotFoundError as exc:
            large.gone = exc
            return False
        except OSError as exc:
            raise packing.read_error(large.path, exc) from None
        if packing.swapped(large.path, member.name, large.seen, packing.identity(st)):
            large.gone = packing.Replaced(large.path)  # a regular file renamed over it is read again
            return False
        if not stat.S_ISREG(st.st_mode):
            large.gone = packing.NotAFile(large.path)
            return False
        expected = packing.identity(st)
        member.mtime, member.crc, member.size, member.compressed = st.st_mtime, 0, 0, 0
        member.zip64_local = st.st_size > _ZIP64_LOCAL_FROM
        large.changed, large.gone, large.header_span = False, None, -1
        self._write(_local_header(member))
        large.header_span = len(self._spans) - 1
        write = self._piece_writer(large)
        for start in range(0, st.st_size, CHUNK):
            length = min(CHUNK, st.st_size - start)
            piece, data = packing.pack_piece(large.compressor, self._check, large.path, start, length, expected)
            write(None, piece, data)
        return True

    def _record(self, member: Member) -> None:
        self._add_records(_central_header(member), 1)
        kind = stat.S_IFMT(member.mode)
        if kind == stat.S_IFDIR:
            self.stats.directories += 1
        elif kind == stat.S_IFLNK:
            self.stats.links += 1
        else:
            self.stats.files += 1
            self.stats.bytes_in += member.size
            self._on_progress(member.size)

    def _add_records(self, records: bytes, count: int) -> None:
        self._directory += records
        self._count += count
        if len(self._directory) >= _DIRECTORY_IN_MEMORY and self._spill_folder is not None:
            if self._spilled is None:
                # Anonymous where the system allows, and removed when closed or the process dies.
                self._spilled = tempfile.TemporaryFile(dir=self._spill_folder)  # noqa: SIM115 - lives as long as the writer
            self._spilled.write(self._directory)
            self._directory = bytearray()

    def _write(self, data: bytes, crc: int | None = None) -> None:
        """Write at the end of what is placed (a span of its own); `crc`, when a worker computed it."""
        if self._position != self._offset:  # past data a worker process writes, or back from a patch
            self._file.seek(self._offset)
        self._file.write(data)
        self._spans.append([self._offset, len(data), crc32(data) if crc is None else crc])
        self._offset += len(data)
        self._position = self._offset

    def _write_central_directory(self, comment: bytes) -> None:
        start = self._directory_start = self._offset
        # Large writes: the end of a run waits for them, and 40,000 small writes took a tenth of a second.
        for piece in self._directory_pieces():
            self._write(piece)
        size = self._offset - start
        count = self._count
        if count >= 0xFFFF or start >= ZIP64_LIMIT or size >= ZIP64_LIMIT:
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
                min(size, ZIP64_LIMIT),
                min(start, ZIP64_LIMIT),
                len(comment),
            )
            + comment
        )

    def _directory_pieces(self) -> Iterator[bytes]:
        """The packed central directory records, in order: those spilled to disk, then the rest."""
        if self._spilled is not None:
            self._spilled.seek(0)
            while piece := self._spilled.read(_DIRECTORY_PIECE):
                yield piece
            self._spilled.seek(0, os.SEEK_END)
        # In pieces too: one copy of 8 MiB of records at the end would be the run's peak.
        with memoryview(self._directory) as records:
            for start in range(0, len(records), _DIRECTORY_PIECE):
                yield bytes(records[start : start + _DIRECTORY_PIECE])


# --- records -------------------------------------------------------------------------------------


def _offsets_and_names(directory: bytes) -> Iterator[tuple[int, str]]:
    """(local header offset, name) of every packed central directory record (for messages)."""
    position = 0
    while position + CENTRAL.size <= len(directory):
        fields = CENTRAL.unpack_from(directory, position)
        name_length, extra_length, offset = fields[10], fields[11], fields[16]
        name_start = position + CENTRAL.size
        extra = directory[name_start + name_length : name_start + name_length + extra_length]
        if offset == ZIP64_LIMIT:  # the offset is the last of the ZIP64 extra field's values
            before = 8 * (fields[9] == ZIP64_LIMIT) + 8 * (fields[8] == ZIP64_LIMIT)  # sizes come first
            offset = struct.unpack_from("<Q", extra, 4 + before)[0]
        yield offset, os.fsdecode(directory[name_start : name_start + name_length])
        position = name_start + name_length + extra_length


def _member(name: str, st: os.stat_result) -> Member:
    encoded, utf8 = packing.encode_name(name)
    return Member(name, encoded, STORED, st.st_mtime, st.st_mode, utf8=utf8, owner=packing.owner_extra(st))


def _local_header(member: Member) -> bytes:
    return packing.local_header(
        member.encoded, member.utf8, member.method, member.mtime, member.crc, member.compressed, member.size,
        member.zip64_local, member.owner,
    )  # fmt: skip


def _central_header(member: Member) -> bytes:
    return packing.central_header(
        member.encoded, member.utf8, member.method, member.mtime, member.crc, member.compressed, member.size,
        member.offset, member.mode, member.owner, member.comment, member.zip64_local,
    )  # fmt: skip
