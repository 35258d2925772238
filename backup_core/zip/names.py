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
from typing import NamedTuple

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


def landing(info: zipfile.ZipInfo, fold: bool = True) -> tuple[str, ...]:
    """The path a member lands on here, as parts: `./a`, `a/.` and `a//b` land where `a` and
    `a/b` do, and (`fold`) without case and trailing dots where the disk ignores them."""
    parts = tuple(part for part in disk_name(info).split("/") if part not in ("", "."))
    if not fold:
        return parts
    if _TRIMS_NAMES:
        parts = tuple(part.rstrip(". ") or part for part in parts)
    return tuple(part.casefold() for part in parts) if _CASELESS else parts


class Clash(NamedTuple):
    said: str
    case_only: bool  # only case (or trailing dots) makes the two names one: a case-sensitive
    # volume on macOS can hold both, and this tool then archived both


def clash(infos: list[zipfile.ZipInfo]) -> Clash | None:
    """Why two members of an archive would land on one path here, or None: one name twice (or
    spelt two ways, `a//b` and `a/b`), a file or link that another member needs as its folder
    (or that a folder member is too), and, where the disk ignores case, README beside readme.
    Restore would keep one of two files and lose the other, or fail halfway.  The names are as
    stored: whoever prints the sentence escapes them (report.shown).

    One pass over hashes of the landings and of the folders above them finds whether there
    may be one (a million members: a set of a million numbers and one of the folders); only
    then are the members compared by name, to say which."""
    files: set[int] = set()
    folders: set[int] = set()
    for info in infos:
        key = _key(info)
        here = hash(key)
        if info.filename.endswith("/"):
            if here in files:
                return _named_clash(infos)
            folders.add(here)
        else:
            if here in files or here in folders:
                return _named_clash(infos)
            files.add(here)
        at = key.find("/")
        while at != -1:
            above = hash(key[:at])
            if above in files:
                return _named_clash(infos)
            folders.add(above)
            at = key.find("/", at + 1)
    return None


def _key(info: zipfile.ZipInfo) -> str:
    """landing(info) as one string, without splitting a name that needs no folding."""
    name = disk_name(info)
    if _CASELESS or _TRIMS_NAMES or "//" in name or "./" in name or name.endswith("/.") or name == ".":
        return "/".join(landing(info))
    return name.strip("/")


def _named_clash(infos: list[zipfile.ZipInfo]) -> Clash | None:
    """clash(), naming the members; None when the hashes only happened to meet, or when the
    member is under a link (restore refuses it for that)."""
    files: dict[int, int] = {}  # hash of a file's or link's landing -> its index
    for index, info in enumerate(infos):
        if info.filename.endswith("/"):
            continue  # folders of one name merge; their files are compared one by one
        key = _key(info)
        first = files.setdefault(hash(key), index)
        if first != index and _key(infos[first]) == key:
            one, other = infos[first].orig_filename, info.orig_filename
            if one == other:
                return Clash(f"{one} is in it twice", False)
            if landing(infos[first], fold=False) != landing(info, fold=False):
                return Clash(f"{one} and {other} name one file here (only their case or trailing dots differ)", True)
            return Clash(f"{one} and {other} name one file here", False)
    for info in infos:
        key = _key(info)
        ends = [at for at, char in enumerate(key) if char == "/"]
        if info.filename.endswith("/"):
            ends.append(len(key))  # a folder member must not be a file either
        for end in ends:
            above = files.get(hash(key[:end]))
            if above is None or _key(infos[above]) != key[:end]:
                continue
            if end < len(key) and stat.S_ISLNK(infos[above].external_attr >> 16):
                break  # under a link: refused for that (restore._refuse_paths_through_links)
            file = infos[above].orig_filename
            return Clash(f"{file} is a file, and {info.orig_filename} needs it as a folder", False)
    return None
