"""The checks a new archive passes before it is renamed into place, each shown to fail."""

from __future__ import annotations

import os
import random
import zipfile
import zlib
from pathlib import Path

import pytest

from backup_core import runner
from backup_core.errors import TargetError
from backup_core.zip import verify
from backup_core.zip.compression import compressor_factory
from backup_core.zip.verify import read_directory
from backup_core.zip.writer import CHUNK, ZipWriter

TEXT = b"".join(b"line %d of a log that compresses well\n" % i for i in range(200_000))


def _write(archive: Path, sources: list[Path], compressor: object = None, inflate_check: bool = True) -> ZipWriter:
    factory = compressor or compressor_factory(2)
    with archive.open("wb") as file:
        writer = ZipWriter(file, factory, inflate_check=inflate_check)  # type: ignore[arg-type]
        for source in sources:
            writer.add_file(source.name, source, source.stat())
        writer.close()
    return writer


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    small = tmp_path / "small.log"
    small.write_bytes(TEXT[: 64 * 1024])
    large = tmp_path / "large.log"
    large.write_bytes(TEXT)
    assert large.stat().st_size > CHUNK  # the chunked path
    return [small, large]


def test_a_sound_archive_passes_its_read_back(tmp_path: Path, sources: list[Path]) -> None:
    archive = tmp_path / "a.zip"
    writer = _write(archive, sources)
    runner._read_back(archive, writer)  # raises on any problem


@pytest.mark.parametrize("alone", [True, False], ids=["calling thread", "halves on threads"])
@pytest.mark.parametrize("where", ["small member", "large member", "central directory"])
def test_a_byte_changed_on_disk_after_writing_is_found(
    tmp_path: Path, sources: list[Path], where: str, alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small archive is read back on the calling thread, a big one in halves on threads: both find it.
    monkeypatch.setattr(verify, "_READ_BACK_ALONE", 1 << 40 if alone else 0)
    archive = tmp_path / "a.zip"
    writer = _write(archive, sources)
    records = read_directory(archive)
    with zipfile.ZipFile(archive) as opened:
        start = opened.start_dir
    offset = {
        "small member": records[0].header_offset + 100,
        "large member": records[1].header_offset + 5000,
        "central directory": start + 20,
    }[where]
    with archive.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x40]))
    named = {
        "small member": "member small.log",
        "large member": "member large.log",
        "central directory": "the central directory",
    }
    with pytest.raises(TargetError, match=rf"read-back check: the bytes on disk differ .* \({named[where]}\)"):
        runner._read_back(archive, writer)


class _Lossy:
    """A compressor whose output inflates to something other than its input."""

    def __init__(self) -> None:
        self._inner = zlib.compressobj(1, zlib.DEFLATED, -15)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._inner.compress(bytes(data)[:-1] + b"X" if data else data)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        return self._inner.flush(mode)


class _Finishing:
    """A compressor that ends every piece with a final block: each piece inflates back alone,
    but readers of the joined stream would stop after the first piece."""

    def __init__(self) -> None:
        self._inner = zlib.compressobj(1, zlib.DEFLATED, -15)
        self._flushes = 0

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._inner.compress(data)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        self._flushes += 1  # the first ends the trial on a piece's start; the last ends the piece
        return self._inner.flush(mode if self._flushes == 1 else zlib.Z_FINISH)


def test_a_piece_that_would_end_the_stream_early_is_never_written(tmp_path: Path, sources: list[Path]) -> None:
    large = [s for s in sources if s.name == "large.log"]
    with pytest.raises(TargetError, match="does not inflate back"):
        _write(tmp_path / "a.zip", large, compressor=_Finishing)


@pytest.mark.parametrize("name", ["small.log", "large.log"])
def test_compressed_data_that_does_not_inflate_back_is_never_written(
    tmp_path: Path, sources: list[Path], name: str
) -> None:
    chosen = [s for s in sources if s.name == name]
    with pytest.raises(TargetError, match="does not inflate back"):
        _write(tmp_path / "a.zip", chosen, compressor=_Lossy)


@pytest.mark.parametrize("name", ["small.log", "large.log"])
def test_inflate_check_false_writes_what_the_compressor_gave_unchecked(
    tmp_path: Path, sources: list[Path], name: str
) -> None:
    # What `compression: {inflate_check: false}` gives up: the same lossy compressor now makes
    # an archive, and only a reader's CRC check finds that it cannot be restored.
    archive = tmp_path / "a.zip"
    _write(archive, [s for s in sources if s.name == name], compressor=_Lossy, inflate_check=False)
    with zipfile.ZipFile(archive) as opened, pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        opened.read(name)


def test_the_read_back_reads_what_is_on_disk_not_what_is_in_memory(tmp_path: Path, sources: list[Path]) -> None:
    # Truncating the file after writing must fail the check: it reads the file itself.
    archive = tmp_path / "a.zip"
    writer = _write(archive, sources)
    os.truncate(archive, archive.stat().st_size // 2)
    with pytest.raises(TargetError, match="read-back check"):
        runner._read_back(archive, writer)


def test_the_inflate_check_refuses_every_stream_that_is_not_exactly_the_source() -> None:
    # A stream that gives a prefix, more than the source, a different byte deep inside, or
    # bytes after its end must fail as surely as a lossy one, whole members and pieces alike.
    from backup_core.zip.packing import _prove_decodes

    source = random.Random(7).randbytes(100_000) + b"log line\n" * 50_000

    def deflated(data: bytes, final: bool = True) -> bytes:
        squeezer = zlib.compressobj(1, zlib.DEFLATED, -15)
        return squeezer.compress(data) + squeezer.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

    _prove_decodes(deflated(source), source, "m", whole=True)
    _prove_decodes(deflated(source, final=False), source, "m", whole=False)
    changed = bytearray(source)
    changed[300_000] ^= 1
    for stream, whole in [
        (deflated(source[:-1]), True),  # one byte short
        (deflated(source + b"x"), True),  # one byte more
        (deflated(bytes(changed)), True),  # a byte past the first steps
        (deflated(source) + b"\0", True),  # bytes after the final block
        (deflated(source) + deflated(source), True),  # a second stream after the first
        (deflated(source), False),  # a piece that would end the stream
        (deflated(source, final=False), True),  # a whole member with no final block
        (deflated(source)[: len(deflated(source)) // 2], True),  # cut short
    ]:
        with pytest.raises(TargetError, match="does not inflate back"):
            _prove_decodes(stream, source, "m", whole=whole)
