"""Which deflate implementation compresses a member, and which members are not worth compressing.

ISA-L's deflate (the `isal` package) is 7 to 10 times faster than zlib at a size
close to zlib's level 6, writes the same standard deflate stream, and releases
the GIL, so two threads use two cores.  Levels 4-9 fall back to zlib for
operators who want the smallest archive whatever it costs.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any, Protocol

_isal: Any
try:  # Wheels exist for every mainstream platform; stay correct (if slower) without one.
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised only where isal has no wheel
    _isal = None


class Compressor(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...
    def flush(self, mode: int = ..., /) -> bytes: ...


CompressorFactory = Callable[[], Compressor]

# Raw deflate (no zlib header) is what a zip member holds.
_RAW_DEFLATE = -15
# A final, empty deflate block: ends a stream whose chunks were each closed with a sync flush.
FINAL_BLOCK = zlib.compressobj(1, zlib.DEFLATED, _RAW_DEFLATE).flush()
SYNC_FLUSH = zlib.Z_SYNC_FLUSH

# Formats that are already compressed: deflating them costs time and saves nothing.
STORED_SUFFIXES = frozenset(
    [
        ".7z",
        ".aac",
        ".apk",
        ".avi",
        ".avif",
        ".br",
        ".bz2",
        ".cab",
        ".deb",
        ".docx",
        ".epub",
        ".flac",
        ".gif",
        ".gz",
        ".heic",
        ".jar",
        ".jpeg",
        ".jpg",
        ".lz",
        ".lz4",
        ".lzma",
        ".lzo",
        ".m4a",
        ".m4v",
        ".mkv",
        ".mov",
        ".mp3",
        ".mp4",
        ".mpeg",
        ".mpg",
        ".odp",
        ".ods",
        ".odt",
        ".ogg",
        ".opus",
        ".png",
        ".pptx",
        ".rar",
        ".rpm",
        ".tbz",
        ".tbz2",
        ".tgz",
        ".txz",
        ".webm",
        ".webp",
        ".whl",
        ".woff",
        ".woff2",
        ".xlsx",
        ".xz",
        ".zip",
        ".zst",
        ".zstd",
    ]
)


@dataclasses.dataclass(frozen=True)
class Deflater:
    """A factory of raw-deflate compressors at one level of one library, with a one-shot form.

    A plain class, not a lambda: the factory travels to worker processes with each job."""

    level: int
    fast: bool  # ISA-L's deflate rather than zlib's

    def __call__(self) -> Compressor:
        return (_isal if self.fast else zlib).compressobj(self.level, zlib.DEFLATED, _RAW_DEFLATE)  # type: ignore[no-any-return]

    def whole(self, data: bytes | memoryview) -> bytes:
        """`data` deflated as one complete stream: a small member in one call, without the
        set-up of a compressor object (about a tenth of the cost of a member of a few KiB)."""
        return (_isal if self.fast else zlib).compress(data, self.level, _RAW_DEFLATE)  # type: ignore[no-any-return]


def compressor_factory(level: int) -> CompressorFactory | None:
    """A factory of raw-deflate compressors for `level`, or None when level 0 asks to store."""
    if level == 0:
        return None
    if level <= 3 and _isal is not None:
        return Deflater(level, fast=True)
    return Deflater(level if level > 3 else 1, fast=False)  # without isal, its fast levels map to zlib's fastest


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 as zip stores it; ISA-L's is several times faster than zlib's."""
    return (_isal.crc32 if _isal is not None else zlib.crc32)(data, value)


def decompressor() -> Any:
    """A raw-deflate decompressor (ISA-L's when available: it inflates faster)."""
    return (_isal or zlib).decompressobj(_RAW_DEFLATE)


def worth_compressing(name: str) -> bool:
    """False for formats that are already compressed, judged by the file's extension."""
    # Called for every file: plain string work, not a PurePath per name.
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return dot <= 0 or base[dot:].lower() not in STORED_SUFFIXES


# --- combining CRCs ------------------------------------------------------------------------------
# A large member's pieces are checksummed on different workers; the member's CRC is
# combined from theirs as zlib's crc32_combine does (arithmetic on polynomials over GF(2)),
# which Python's zlib does not expose.

_POLY = 0xEDB88320


def _multiply(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    powers = [1 << 30]  # x**1
    for _ in range(63):
        powers.append(_multiply(powers[-1], powers[-1]))  # x**(2**k)
    return powers


_X_TO_2_TO = _powers()


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of A + B from CRC(A), CRC(B) and len(B)."""
    shift, k, bits = 1 << 31, 3, second_length  # x**(8 * len(B)): the shift of A's CRC past B
    while bits:
        if bits & 1:
            shift = _multiply(_X_TO_2_TO[k & 63], shift)
        bits >>= 1
        k += 1
    return _multiply(shift, first) ^ second
