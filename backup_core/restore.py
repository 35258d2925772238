"""Put an archive's contents back on disk, safely and as it was.

Every member is checked before anything is written: names that would land
outside the folder (`../`, absolute paths, drive letters, paths through a link)
are refused, and existing files are left alone unless forced.  A member that
cannot be read is left out and named at the end; every intact one is restored.  Links are made as
they were, wherever they point (a tree's links often point out of it), and last,
so nothing is ever written through one.  Each file is written under a short
temporary name and renamed into place, so a reader never
sees a half-restored file; a restored database must pass its integrity check
first.  Names come back byte for byte (see zip/names.py); modes, times and, as
root, owners come back for files, links and folders (folders last, deepest
first, so a read-only folder is filled before it is closed).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from backup_core.errors import BackupError, TargetError, UsageError
from backup_core.manifest import Target
from backup_core.report import human_bytes, shown
from backup_core.sources import sqlite
from backup_core.sources.walk import SQLITE_HEADER
from backup_core.stores import archives, retention
from backup_core.zip import names
from backup_core.zip.packing import extra_fields, incomplete_note

_BLOCK = 1 << 20


@dataclass
class Restored:
    archive: Path
    folder: Path
    files: int = 0
    directories: int = 0
    links: int = 0
    databases: int = 0
    warnings: list[str] = field(default_factory=list)
    # Databases that failed integrity_check: not placed; every other member still is.
    damaged: list[str] = field(default_factory=list)
    # Members that could not be read (a bad CRC, a stream that does not inflate): left out, with why.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    # Links this file system would not make (a target longer than a path may be, FAT): left out.
    unmade: list[str] = field(default_factory=list)
    size: int = 0  # what the members to restore hold, uncompressed

    def written(self, damaged: bool = False) -> str:
        """What this restore wrote before it stopped ("" when nothing): said with any failure.
        `damaged`: the archive stopped it, so the rest must come from another one."""
        count = self.files + self.links  # a database is one of the files, counted apart too
        if not count:
            return ""
        rest = (
            "restore the rest from another archive with --archive NAME --force, or --member PATH"
            if damaged
            else "run the restore again with --force to finish it"
        )
        return f"{count} file(s) and link(s) were restored into {self.folder} before it stopped and stay there ({rest})"


def choose_archive(target: Target, name: str | None) -> tuple[Path, list[str]]:
    """The named archive of `target`, or its newest whole one; and warnings naming the newer
    files under an archive's name that were passed over (cut short or emptied: not whole zips)."""
    try:
        existing = archives.list_archives(target.destination, target.name)
    except OSError as exc:  # not about --to: the caller's advice for those would mislead
        raise TargetError(
            f"cannot list {target.destination}, where {target.name}'s archives are: {exc.strerror or exc}; "
            "check the target's destination"
        ) from None
    if not existing:
        raise TargetError(f"no archives of {target.name} in {target.destination}; nothing to restore")
    foreign = _made_elsewhere(target)
    archive, passed = _choose_among(target, name, existing)
    return archive, foreign + passed


def _made_elsewhere(target: Target) -> list[str]:
    """A warning when the destination records the target's archives as made of another source
    (or host): restore read them as this target's without a word, while backups of it fail.
    Restoring another host's archives is what a recovery does: said, not refused."""
    from backup_core.stores.base import this_host

    try:
        made = archives.made_elsewhere(target.destination, target.name, target.path, this_host())
    except archives.OriginUnreadable:
        return []  # backups say so; what is restored is judged by the archive itself
    if made is None:
        return []
    return [f"the archives of {target.name} in {target.destination} were made {made}, not of {target.path}"]


def _choose_among(target: Target, name: str | None, existing: list[archives.Archive]) -> tuple[Path, list[str]]:
    from backup_core.runner import utc_now

    now = utc_now()
    if name is None:
        # An archive a clock ahead dated in the future is no newer than last night's: never the default.
        if retention.newest(existing, lambda a: a.when, now) is None:
            raise TargetError(
                f"every archive of {target.name} is dated in the future (a clock ahead?); name one with --archive"
            )
        # As retention and status judge them: a file under an archive's name that is not a whole
        # zip (a run killed mid-write, a disk that filled) is passed over, as a remote's
        # restore passes over copies it cannot vouch for.
        whole, broken = _newest_whole(existing, now)
        if whole is None:
            remote = f" (restore a remote's copy: --remote {target.offsite[0].name})" if target.offsite else ""
            raise TargetError(
                f"no whole archive of {target.name} in {target.destination}: {_broken_list(broken)}; "
                f"nothing to restore{remote}"
            )
        return whole.path, [
            f"passed over {archive.name}: it is not a whole archive ({problem}); restored {whole.name} instead"
            for archive, problem in broken
        ]
    if Path(name).name != name:
        raise UsageError(
            f"--archive {shown(name)}: give the archive's file name only; it is looked for in {target.destination}"
        )
    for archive in existing:
        if archive.name == Path(name).name:
            found = archives.ending(archive.path)
            if found.broken:
                whole, _ = _newest_whole(existing, now)
                instead = (
                    f"restore the newest whole archive instead: --archive {whole.name}"
                    if whole is not None
                    else f"no archive of {target.name} there is whole"
                )
                raise TargetError(f"--archive {shown(name)} is cut short or damaged ({found.problem}); {instead}")
            return archive.path, []
    newest = newest_first([a.name for a in existing])
    raise UsageError(f"--archive {shown(name)}: not an archive of {target.name}; {newest}")


def newest_first(names: list[str]) -> str:
    """What an --archive name that is not there is answered with: the newest three of `names`
    (which run oldest first), newest first."""
    return "the newest are (newest first): " + (", ".join(reversed(names[-3:])) or "none")


def _newest_whole(
    existing: list[archives.Archive], now: datetime
) -> tuple[archives.Archive | None, list[tuple[archives.Archive, str]]]:
    """The newest archive not dated in the future that ends as a whole zip, and the newer ones
    that do not (with what is wrong with each), newest first."""
    broken: list[tuple[archives.Archive, str]] = []
    pool = list(existing)
    while (newest := retention.newest(pool, lambda a: a.when, now)) is not None:
        found = archives.ending(newest.path)
        if not found.broken:
            return newest, broken
        broken.append((newest, found.problem or ""))
        pool.remove(newest)
    return None, broken


def _broken_list(broken: list[tuple[archives.Archive, str]]) -> str:
    if not broken:
        return "every archive is dated in the future"
    first, problem = broken[0]
    more = f" (and {len(broken) - 1} more like it)" if len(broken) > 1 else ""
    return f"{first.name} is not a whole archive ({problem}){more}"


def restore(
    archive: Path,
    folder: Path,
    member: str | None = None,
    force: bool = False,
    fetched: str | None = None,
    warnings: list[str] | None = None,
    scratch: Path | None = None,
) -> Restored:
    """Extract `archive` (or one member or subfolder of it) into `folder`.  `fetched`: how to get
    the archive again when it is a remote's copy downloaded (and decrypted) into a scratch file,
    which is gone once this returns ("NAME from remote R, then decrypt it"); `scratch`: the
    folder that holds it then, whose files take room on the disk until the restore ends.
    `warnings`: said first, whatever happens (from choosing the archive).
    Whatever it raises carries what was restored so far as `restored` (see commands.restore)."""
    done = Restored(archive, folder, warnings=list(warnings or []))
    try:
        _restore(archive, folder, member, force, fetched, done, scratch)
    except (BackupError, OSError, KeyboardInterrupt) as exc:
        exc.restored = done  # type: ignore[union-attr]
        raise
    if member is None and not (done.files or done.links):
        # An archive of an empty folder (taken with --force) is the newest: "restored", exit 0,
        # and nothing there looked like a restore that worked.
        done.warnings.append(
            f"{archive.name} holds no file (an archive of an empty folder): nothing was restored; an older "
            "archive may hold the data: name it with --archive"
        )
    return done


def refuse_blocked(folder: Path) -> None:
    """Raise UsageError when `folder`, or a folder it lies in, is a file: named, not its folder below."""
    blocker = next((path for path in [folder, *folder.parents] if os.path.lexists(path) and not path.is_dir()), None)
    if blocker == folder:
        raise UsageError(f"--to {folder} is a file, not a folder; give a folder to restore into (created if missing)")
    if blocker is not None:
        raise UsageError(f"--to {folder}: {blocker} is a file, not a folder; give a folder to restore into")


def _files_where_folders_go(root: Path, plan: list[tuple[zipfile.ZipInfo, Path]]) -> list[Path]:
    """What is on disk, and no folder, where the restore must have a folder: a folder member's
    place, or a folder on the way to any member (each looked at once)."""
    folders: set[Path] = set()
    for info, path in plan:
        folder = path if info.is_dir() else path.parent
        while folder not in folders and root in folder.parents:
            folders.add(folder)
            folder = folder.parent
    return sorted(p for p in folders if os.path.lexists(p) and not p.is_dir())


def _restore(
    archive: Path,
    folder: Path,
    member: str | None,
    force: bool,
    fetched: str | None,
    done: Restored,
    scratch: Path | None,
) -> None:
    refuse_blocked(folder)
    root = Path(os.path.realpath(folder))
    try:
        directory = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise TargetError(f"cannot open {archive.name}: {exc}") from None
    except OSError as exc:
        # The system's words, not Python's "[Errno 13] Permission denied: '/…'".
        raise TargetError(
            f"cannot read {archive}: {exc.strerror or exc}; run the restore as a user that can read it, "
            "or name another archive with --archive NAME"
        ) from None
    with directory:
        if (note := incomplete_note(directory.comment)) is not None:
            done.warnings.append(f"{archive.name} is incomplete, as the run that made it said: {note}")
        chosen = _choose(directory.infolist(), member, archive)
        # Links already on disk can only lead a name out of a folder that held something before;
        # judging every name against the disk costs a walk of its whole path (quadratic in depth).
        on_disk: dict[Path, bool] | None = {} if folder.is_dir() and any(folder.iterdir()) else None
        plan = [(info, _destination(root, info, on_disk)) for info in chosen]
        # --member sub/deep/f creates sub/ and sub/deep/ on its way: those this restore makes get
        # their archived modes and times too (a file of a 0750 folder must not sit in a 0755 one).
        folders: list[tuple[zipfile.ZipInfo, Path]] = [
            (info, path)
            for info in _ancestors(directory.infolist(), chosen)
            if not os.path.lexists(path := _destination(root, info, on_disk))
        ]
        _refuse_paths_through_links(chosen)
        _refuse_name_clashes(chosen, archive)
        # A folder where a file goes: --force replaces files, never a folder (nor what it holds).
        blocked = [(info, path) for info, path in plan if not info.is_dir() and path.is_dir() and not path.is_symlink()]
        if blocked:
            more = f" (and {len(blocked) - 1} more like it)" if len(blocked) > 1 else ""
            raise UsageError(
                f"{shown(str(blocked[0][1]))} is a folder where the archive has a file{more}; nothing was "
                "restored: move the folder away and restore again"
            )
        # And a file where a folder goes (the archive's, or one on a member's way): found only
        # while writing, it left part of the archive restored and advised --force, which cannot help.
        if on_disk is not None and (files := _files_where_folders_go(root, plan)):
            more = f" (and {len(files) - 1} more like it)" if len(files) > 1 else ""
            raise UsageError(
                f"{shown(str(files[0]))} is a file where the archive has a folder{more}; nothing was restored: "
                "move the file away and restore again"
            )
        if not force:
            clashes = [shown(str(path)) for info, path in plan if not info.is_dir() and os.path.lexists(path)]
            if clashes:
                more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
                verb = "already exist" if more else "already exists"
                raise UsageError(f"{clashes[0]}{more} {verb}; pass --force to overwrite")
        elif any(not info.is_dir() and os.path.lexists(path) for info, path in plan):
            # --force over files that exist: a member found damaged halfway would leave a mix of
            # old and restored files, so every member to write is read (and its CRC checked) first.
            _check_members(directory, [info for info, _ in plan], archive)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise UsageError(
                f"--to {folder}: {exc.filename or folder} is a file, not a folder; give a folder to restore into"
            ) from None
        done.size = sum(info.file_size for info in chosen)
        # Links last, as tar does: no file is ever written through a link this restore made.
        for info, path in sorted(plan, key=lambda item: _is_link(item[0])):
            try:
                _extract(directory, info, path, root, done)
            except TargetError as exc:
                raise _partly_restored(exc, done) from None
            except OSError as exc:
                if (why := _cannot_write(exc, info, path, done, scratch)) is None:
                    raise
                written = done.written()
                raise TargetError(f"{why}; {written}" if written else why) from None
            except _DAMAGED as exc:
                # During an incident every intact file matters: this one is left out (its
                # temporary copy removed) and named at the end; the rest are still restored.
                done.unreadable.append((shown(info.filename), _why(exc)))
                continue
            if info.is_dir():
                folders.append((info, path))
        # Folders' modes, owners and times last, deepest first: a 0500 folder must be filled
        # before it is closed, and writing into a folder moves its time.
        for info, path in sorted(folders, key=lambda item: -len(item[1].parts)):
            _set_attributes(info, path, done)
    said = []
    if done.unreadable:
        said.append(_unreadable(done, fetched or str(archive)))
    if done.damaged:
        more = f" and {len(done.damaged) - 1} more" if len(done.damaged) > 1 else ""
        # A remote's copy was downloaded to a scratch file that is gone by now: name the copy.
        take = (
            f"unzip -p {archive} MEMBER > FILE"
            if fetched is None
            else f"download {fetched}, then unzip -p it MEMBER > FILE"
        )
        every = "" if done.unreadable else f"; every other member was, into {folder}"
        said.append(
            f"database {done.damaged[0]}{more} in {archive.name} fails integrity_check and was not restored"
            f"{every} (to take it as archived anyway: {take})"
        )
    if done.unmade:
        more = f" (and {len(done.unmade) - 1} more link(s))" if len(done.unmade) > 1 else ""
        said.append(
            f"{done.unmade[0]}{more}; every other member was restored into {folder}: make the link(s) by hand, "
            "or restore onto a file system that takes them"
        )
    if said:
        raise TargetError("; ".join(said))


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _cannot_write(exc: OSError, info: zipfile.ZipInfo, path: Path, done: Restored, scratch: Path | None) -> str | None:
    """What a full disk or a refused write stopped, in one sentence naming the file; None for
    other errors.  Neither is mended by another folder this user can create, nor by a rerun."""
    where = f"{shown(str(path))} ({shown(info.filename)} in {done.archive.name})"
    if exc.errno in _NO_SPACE:
        needed, held = done.size, ""
        if scratch is not None and _same_disk(scratch, path.parent):
            # The downloaded copy (and, decrypted, the archive beside it) stays on that disk
            # until the restore ends: freeing only the uncompressed size was not enough.
            copy = sum(p.stat().st_size for p in scratch.iterdir() if p.is_file())
            needed, held = needed + copy, f", and {human_bytes(copy)} for the downloaded copy while it runs"
        return (
            f"the disk ran out of space while writing {where}: the restore needs {human_bytes(needed)} "
            f"in all (what it holds uncompressed{held}): free that much on the disk that holds {done.folder}"
        )
    if exc.errno == errno.EFBIG:
        # FAT32 holds no file of 4 GiB or more; a `ulimit -f` has the same effect.
        return (
            f"cannot write {where}: {human_bytes(info.file_size)} is more than a file may hold there (FAT32 "
            "stops below 4 GiB, or a file size limit is set); restore onto another file system"
        )
    if exc.errno in _NOT_ALLOWED:
        if exc.errno == errno.EROFS:
            return f"cannot write {where}: the file system there is read-only"
        return (
            f"cannot write {where}: {exc.strerror}; this user may not write in {shown(str(path.parent))}: "
            "give it that permission, or restore as a user who may"
        )
    return None


def _same_disk(one: Path, other: Path) -> bool:
    try:
        return one.stat().st_dev == other.stat().st_dev
    except OSError:
        return False


def _unreadable(done: Restored, where: str) -> str:
    """The members left out because they could not be read, and what was restored instead."""
    restored = done.files + done.links + done.directories
    rest = f"the other {restored} members were restored into {done.folder}" if restored else "nothing was restored"
    if len(done.unreadable) == 1:
        name, why = done.unreadable[0]
        return (
            f"{name} in {where} is damaged: {why}; it was left out, and {rest} "
            f"(take it from another archive: --archive NAME --member {name})"
        )
    listed = ", ".join(f"{name} ({why})" for name, why in done.unreadable[:3])
    more = f" and {len(done.unreadable) - 3} more" if len(done.unreadable) > 3 else ""
    return (
        f"{len(done.unreadable)} members of {where} are damaged and were left out: {listed}{more}; {rest} "
        "(take them from another archive: --archive NAME --member PATH)"
    )


# What reading a damaged member raises: a bad CRC or header, a stream that does not inflate, a
# member cut short, a method this zip reader lacks.
# (RuntimeError: zipfile's "encrypted, password required", for a member whose flags were damaged.)
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def _why(exc: BaseException) -> str:
    # zipfile: "File <ZipInfo ...> is encrypted, password required" (NotImplementedError, a
    # compression method it lacks, is a RuntimeError too: its own words say that)
    if isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError):
        return "it is marked encrypted, which this tool never writes (its flags are damaged)"
    return str(exc)


def _check_members(directory: zipfile.ZipFile, infos: list[zipfile.ZipInfo], archive: Path) -> None:
    """Read every file member of `infos` through (the reader checks each one's CRC at its end)."""
    for info in infos:
        if info.is_dir():
            continue
        try:
            with directory.open(info) as source:
                while source.read(_BLOCK):
                    pass
        except _DAMAGED as exc:
            raise TargetError(
                f"{shown(info.filename)} in {archive.name} is damaged ({_why(exc)}); nothing was overwritten "
                "(verify the archives, and restore from another with --archive NAME)"
            ) from None


def _partly_restored(exc: TargetError, done: Restored) -> TargetError:
    """`exc`, saying what the restore had already written: a damaged member stops it halfway."""
    written = done.written(damaged=True)
    return type(exc)(f"{exc}; {written}") if written else exc


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _refuse_paths_through_links(infos: list[zipfile.ZipInfo]) -> None:
    # Compared as the names land on disk (`./a`, `a/.` and `a` are one path; a name stored as
    # bytes and one flagged UTF-8 may be the same), and without case where the disk ignores it.
    links = {names.landing(info) for info in infos if _is_link(info)}
    if not links:
        return
    for info in infos:
        parts = names.landing(info)
        through = next((parts[:i] for i in range(1, len(parts)) if parts[:i] in links), None)
        if through:
            raise TargetError(f"refusing member {info.filename!r}: it lies under the link {'/'.join(through)!r}")


def _refuse_name_clashes(infos: list[zipfile.ZipInfo], archive: Path) -> None:
    """Refuse, before anything is written, members that would land on one path here (see
    names.clash): the second would replace the first without a word, or a file would stand
    where another member needs a folder."""
    if (found := names.clash(infos)) is None:
        return
    if found.case_only:
        raise UsageError(
            f"{archive.name} was not restored: {shown(found.said)} on this system; restore each with --member "
            "into its own folder"
        )
    raise UsageError(
        f"{archive.name} was not restored: {shown(found.said)}; an archive this tool makes never holds such members "
        "(another program made or changed it): restore the others with --member, or use another archive"
    )


def _ancestors(infos: list[zipfile.ZipInfo], chosen: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The archive's folders above the chosen members that are not chosen themselves (--member).
    Compared as stored bytes: a name that is not UTF-8 is decoded otherwise than its folder's."""
    if len(chosen) == len(infos):
        return []
    picked = {names.raw_name(i) for i in chosen}
    above = {raw[: at + 1] for raw in picked for at in range(len(raw) - 1) if raw[at : at + 1] == b"/"}
    return [i for i in infos if i.is_dir() and (raw := names.raw_name(i)) in above and raw not in picked]


def _choose(infos: list[zipfile.ZipInfo], member: str | None, archive: Path) -> list[zipfile.ZipInfo]:
    if member is None:
        return infos
    # As stored bytes, as the operator's shell gives them: zipfile decodes a name without the
    # UTF-8 flag as cp437, so `--member é` missed é/sub/g\xff, stored unflagged.
    # `./docs/a.txt` and `docs/` name what `docs/a.txt` and `docs` do (as a shell completes
    # them); on Windows `.\docs\a.txt` too.
    typed = member.replace("\\", "/") if _WINDOWS else member
    wanted = os.fsencode("/".join(part for part in typed.split("/") if part not in ("", ".")))
    chosen = [i for i in infos if (raw := names.raw_name(i).rstrip(b"/")) == wanted or raw.startswith(wanted + b"/")]
    if not chosen:
        raise UsageError(f"--member {shown(member)}: no such file or folder in {archive.name}")
    return chosen


def _destination(root: Path, info: zipfile.ZipInfo, on_disk: dict[Path, bool] | None) -> Path:
    """Where a member goes; `on_disk`, when the folder held something before, caches which parent
    folders resolve inside it."""
    name = names.disk_name(info)
    refused = names.refusal(name)
    if refused:
        raise TargetError(f"refusing member {info.filename!r}: {refused} ({root})")
    path = root.joinpath(*[part for part in name.split("/") if part not in ("", ".")])
    if on_disk is not None:
        # Resolve links already on disk so none leads out.  realpath, not resolve(): a link
        # loop, legal in the source, must not stop the restore.
        inside = on_disk.get(path.parent)
        if inside is None:
            inside = on_disk[path.parent] = _inside(root, Path(os.path.realpath(path.parent)))
        if not inside:
            raise TargetError(f"refusing member {info.filename!r}: a link on its way leads outside {root}")
    return path


def _inside(root: Path, path: Path) -> bool:
    text, top = str(path), str(root)
    return text == top or text.startswith(top.rstrip(os.sep) + os.sep)


def _extract(directory: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, root: Path, done: Restored) -> None:
    mode = info.external_attr >> 16
    if info.is_dir():
        if path.is_symlink():
            # mkdir would accept a link to a folder, and its mode and times would then be set
            # on wherever the link leads.
            raise TargetError(
                f"refusing member {info.filename!r}: a link stands where its folder goes ({path}); "
                "remove the link or restore into an empty folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        done.directories += 1
        return  # its mode, owner and time once everything inside it is written
    path.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(mode):
        link = os.fsdecode(directory.read(info))
        refused = names.link_refusal(names.disk_name(info), link)
        if refused:
            raise TargetError(f"refusing link {info.filename!r}: {refused}")
        # Links may point anywhere, so a link made earlier in this restore may lie on this one's
        # way under a name the checks above did not match: resolve the folder it goes into.
        if not _inside(root, Path(os.path.realpath(path.parent))):
            raise TargetError(f"refusing link {info.filename!r}: a link on its way leads outside {root}")
        if os.path.lexists(path):
            path.unlink()
        try:
            if _WINDOWS:  # Windows: its own separators, and a link to a folder says so
                link = link.replace("/", "\\")
                path.symlink_to(link, target_is_directory=(path.parent / link).is_dir())
            else:
                path.symlink_to(link)
            done.links += 1
        except OSError as exc:
            said = f"could not make link {shown(info.filename)} -> {shown(link)}: {exc.strerror or exc}"
            if getattr(exc, "winerror", None) == _NO_LINK_PRIVILEGE:  # Windows, without the privilege
                done.warnings.append(said)
                return
            # Anything else (a target too long for this file system, FAT, no space): the other
            # links and the folders' modes still come, and the restore fails at the end: one
            # that says "restored" while a link is missing would be believed.
            done.unmade.append(said)
            return
        _set_attributes(info, path, done)
        return
    # A short temporary name in the same folder: the member's own name may already be as long
    # as the file system allows (255 bytes), and a leftover from a killed restore is reused.
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    partial = path.with_name(f".{digest}.restore-partial")
    # A leftover temporary name could be a link planted to make us write elsewhere: remove
    # it, then create the file anew, refusing to follow anything found there.
    _remove(partial)
    try:
        # The member first: a damaged one must not leave the new file open (on Windows the
        # clean-up below could not remove it, and would hide why the restore stopped).
        with directory.open(info) as source, archives.create_private(partial) as copy:
            head = source.read(_BLOCK)
            is_database = head[:16] == SQLITE_HEADER
            written = 0
            while head:
                copy.write(head)
                written += len(head)
                head = source.read(_BLOCK)
            if written != info.file_size:
                # zipfile checks the CRC, not the size the directory gives: verify fails it so.
                raise zipfile.BadZipFile(f"its data is {written} bytes, the directory says {info.file_size}")
            copy.flush()
            os.fsync(copy.fileno())
        if is_database:
            found = sqlite.check(partial, "integrity")
            if found:
                # The rest of the archive is still restored: during an incident, every other
                # file matters as much (an archive holding a database cut short is kept for them).
                done.damaged.append(f"{shown(info.filename)} ({found})")
                return
            done.databases += 1
        _set_attributes(info, partial, done)
        if path.is_dir() and not path.is_symlink():
            raise TargetError(f"cannot restore file {shown(info.filename)}: a folder of that name exists in {root}")
        if _WINDOWS and path.is_file() and not path.is_symlink():
            path.chmod(stat.S_IWRITE)  # Windows will not replace a read-only file (--force asked to)
        # A stale -wal beside the old database would be replayed into the restored one: the old
        # database's companions are moved aside first, and put back if the new file cannot take
        # its place (they may hold the old database's last commits).
        with _companions_aside(path, digest) if is_database else contextlib.nullcontext():
            partial.replace(path)
        done.files += 1
    finally:
        _remove(partial)
        for suffix in ("-wal", "-shm"):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def _companions_aside(database: Path, digest: str) -> Iterator[None]:
    """The -wal, -shm and -journal files beside `database` moved aside while it is replaced:
    removed once it is, put back if replacing it failed."""
    aside: list[tuple[Path, Path]] = []
    try:
        for suffix in ("-wal", "-shm", "-journal"):
            companion = Path(f"{database}{suffix}")
            if companion.exists() or companion.is_symlink():
                spare = database.with_name(f".{digest}.restore-aside{suffix}")
                companion.replace(spare)
                aside.append((spare, companion))
        yield
    except BaseException:
        for spare, companion in aside:
            with contextlib.suppress(OSError):
                spare.replace(companion)
        raise
    for spare, _ in aside:
        with contextlib.suppress(OSError):
            spare.unlink()


# Windows refuses to delete or replace a read-only file (a member archived with mode 0444 makes
# its temporary copy one): its flag is cleared first there.  Its links use its own separators.
_WINDOWS = os.name == "nt"
_NO_LINK_PRIVILEGE = 1314  # ERROR_PRIVILEGE_NOT_HELD: links need Developer Mode or an administrator


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except PermissionError:
        if not _WINDOWS:
            raise
        path.chmod(stat.S_IWRITE)
        path.unlink(missing_ok=True)


def _set_attributes(info: zipfile.ZipInfo, path: Path, done: Restored) -> None:
    """Owner (as root), mode and times as recorded; on a link, the link's own where possible."""
    mode = info.external_attr >> 16
    link = stat.S_ISLNK(mode)
    owner = _owner(info)
    if owner is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Before chmod: changing the owner clears the setuid and setgid bits.
        try:
            os.chown(path, *owner, follow_symlinks=False)
        except OSError as exc:
            done.warnings.append(
                f"could not give {shown(info.filename)} its owner {owner[0]}:{owner[1]}: {exc.strerror}"
            )
    if not link and path.is_symlink():
        return  # never set through a link what belongs to a file or folder of the archive
    # Any recorded Unix mode, 0000 included (a zip made on Windows records none: mode is 0).
    if mode and not link:
        path.chmod(stat.S_IMODE(mode))
    mtime = _member_mtime(info)
    if mtime is not None and (not link or os.utime in os.supports_follow_symlinks):
        with contextlib.suppress(OSError):  # a time the file system cannot hold is no reason to fail
            os.utime(path, (mtime, mtime), follow_symlinks=not link)


def _owner(info: zipfile.ZipInfo) -> tuple[int, int] | None:
    """(uid, gid) from Info-ZIP's Unix extra field (0x7875), as the writer records them."""
    for kind, data in extra_fields(info.extra):
        if kind == 0x7875 and len(data) >= 3 and data[0] == 1:
            uid_size = data[1]
            if len(data) >= 3 + uid_size and len(data) >= 3 + uid_size + data[2 + uid_size]:
                gid_size = data[2 + uid_size]
                uid = int.from_bytes(data[2 : 2 + uid_size], "little")
                gid = int.from_bytes(data[3 + uid_size : 3 + uid_size + gid_size], "little")
                return uid, gid
    return None


def _member_mtime(info: zipfile.ZipInfo) -> float | None:
    """The exact UTC time from the extended-timestamp field, else the DOS (local, 2 s) time, else
    None: a DOS date of 0 (month 0, day 0), which some writers leave, is no time at all."""
    for kind, data in extra_fields(info.extra):
        if kind == 0x5455 and len(data) >= 5 and data[0] & 1:
            return int.from_bytes(data[1:5], "little", signed=True)
    try:
        return datetime(*info.date_time).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
