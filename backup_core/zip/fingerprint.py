"""What an archive holds, compared without unpacking it.

Two archives hold the same state when they list the same members with the same
CRC-32, size and permission bits.  Every member's CRC is already in the zip's
central directory, so an archive needs no extra file to carry its fingerprint,
and a change of a single byte anywhere changes a CRC.  Modification times are
left out: a file rewritten with identical content is not a new state.  For a
database the CRC is the snapshot's, so an idle database compares equal.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

Fingerprint = tuple[tuple[str, int, int, int], ...]


def of_archive(archive: Path) -> Fingerprint:
    """The (name, CRC, size, mode) of every member, sorted by name."""
    with zipfile.ZipFile(archive) as directory:
        return tuple(
            sorted((i.filename, i.CRC, i.file_size, (i.external_attr >> 16) & 0o7777) for i in directory.infolist())
        )
