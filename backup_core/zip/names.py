"""Member names and link targets as a restore puts them on disk, and which it refuses.

`restore` and `verify` both ask here, so what restore would refuse, verify reports.
On POSIX a name is restored byte for byte as it was archived (`:` and `\\` are
ordinary characters there; a name that is not UTF-8 was stored as its bytes), and
refused only where it would land outside the restore folder.  A link is made as it
was, wherever it points.  Windows cannot represent some names at all; those are
refused with that reason.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import zipfile

_UTF8_FLAG = 0x800
_DRIVE = re.compile(r"^[A-Za-z]:")
WINDOWS = os.name == "nt"


def raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member's name as stored: zipfile decodes names without the UTF-8 flag as cp437, which
    maps every byte to one character, so encoding back gives the exact bytes."""
    if info.flag_bits & _UTF8_FLAG:
        return info.orig_filename.encode("utf-8")
    return info.orig_filename.encode("cp437")


def disk_name(info: zipfile.ZipInfo) -> str:
    """The member's name as this platform's file functions take it (surrogate-escaped bytes on
    POSIX, as os.listdir gives for a name that is not UTF-8); forward slashes."""
    raw = raw_name(info)
    try:
        return os.fsdecode(raw)
    except UnicodeDecodeError:  # Windows: names are UTF-16 there, and these bytes are no text
        return raw.decode("utf-8", "replace")


def refusal(name: str) -> str | None:
    """Why restore refuses a member name (as disk_name gives it), or None."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        return "it has no name to restore to"
    if name.startswith("/") or ".." in parts:
        return "it would land outside the restore folder"
    if "\0" in name:
        return "no file system can hold a name with a NUL character"
    if WINDOWS:
        if name.startswith("\\") or _DRIVE.match(name) or any(".." in part.split("\\") for part in parts):
            return "it would land outside the restore folder"
        bad = next((c for c in ':\\*?"<>|' if c in name), None)
        if bad:
            return f"Windows cannot represent {bad!r} in a file name; restore it on a POSIX system"
    return None


def link_refusal(name: str, target: str) -> str | None:
    """Why restore refuses a link member `name` -> `target`, or None.

    Where a link points is not judged: a tree's links often point out of it (/etc/localtime
    to the zone files), and restore makes them as they were.  What keeps a restore inside its
    folder is that nothing is ever written through a link: links are made last, a member under
    a link is refused, and links already on disk are resolved before a name is used."""
    if not target:
        return "the link is empty"
    if "\0" in target:
        return "no file system can hold a link to a name with a NUL character"
    return None


# Where the disk ignores case (and, on Windows, trailing dots and spaces), two members can land
# on one file.
_CASELESS = sys.platform in ("win32", "darwin")
_TRIMS_NAMES = sys.platform == "win32"


def landing(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path a member lands on here, as parts: `./a`, `a/.` and `a//b` land where `a` and
    `a/b` do, and without case where the disk ignores it."""
    parts = tuple(part for part in disk_name(info).split("/") if part not in ("", "."))
    if _TRIMS_NAMES:
        parts = tuple(part.rstrip(". ") or part for part in parts)
    return tuple(part.casefold() for part in parts) if _CASELESS else parts


def clash(infos: list[zipfile.ZipInfo]) -> str | None:
    """Why two members of an archive would land on one path here, or None: one name twice (or
    spelt two ways, `a//b` and `a/b`), a file that another member needs as its folder, and,
    where the disk ignores case, README beside readme.  This tool never makes such an archive;
    restore would keep one of two files and lose the other, or fail halfway.  The names are as
    stored: whoever prints the sentence escapes them (report.shown)."""
    landings = [landing(info) for info in infos]
    files: dict[tuple[str, ...], int] = {}
    for index, info in enumerate(infos):
        if info.filename.endswith("/"):
            continue  # folders of one name merge; their files are compared one by one
        first = files.setdefault(landings[index], index)
        if first != index:
            one, other = infos[first].orig_filename, info.orig_filename
            if one == other:
                return f"{one} is in it twice"
            why = " (only their case or trailing dots differ)" if _CASELESS else ""
            return f"{one} and {other} name one file here{why}"
    for index, parts in enumerate(landings):
        above = next((files[parts[:i]] for i in range(1, len(parts)) if parts[:i] in files), None)
        # A member under a link is refused for that (restore._refuse_paths_through_links).
        if above is not None and not stat.S_ISLNK(infos[above].external_attr >> 16):
            return f"{infos[above].orig_filename} is a file, and {infos[index].orig_filename} needs it as a folder"
    return None
