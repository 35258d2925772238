"""Files that change while they are read: read again, then reported, never archived torn in silence.

A real writer process rewrites or modifies a file without pause while `invoke backup`
reads it, so every read attempt sees it change; a file that changed once is read again
and archived whole.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backup_core.zip import packing, workers
from backup_core.zip.compression import compressor_factory
from backup_core.zip.verify import first_difference, verify_archive
from backup_core.zip.writer import ZipWriter
from tests.conftest import Project, Ran

T = TypeVar("T")
POSIX = pytest.mark.skipif(os.name != "posix", reason="FIFOs are POSIX")
SIZE = 16 << 20  # eight pieces of a large member: reading it takes long enough to see every change

# Changes the file for ever: cut short and grown again with new data (as a rewrite does), or
# modified in place (as `dd conv=notrunc` does), in small writes so that any read of the
# whole file overlaps several of them.  Its size never drops below 2 MiB, so the file
# always goes the large-member way and each read takes a while.  Hex text: deflated, so
# reading it costs compression and the inflate check too.
_WRITER = """
import os, sys
path, how, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
blocks = [os.urandom(1 << 15).hex().encode() for _ in range(4)]
ready = path + ".ready"
n = 0
with open(path, "r+b") as f:
    while True:
        if how == "resize" and n % 64 == 0:
            f.truncate(size - (4 << 20) + (n % 3) * 4096)
        f.seek((n * 65536) % size)
        f.write(blocks[n % 4])
        n += 1
        if n == 100:
            open(ready, "w").close()
"""


def _content(size: int) -> bytes:
    return (os.urandom(size // 2).hex().encode() + b"x")[:size]


@contextmanager
def changing(path: Path, how: str = "resize") -> Iterator[None]:
    """A process that keeps changing `path` until the block ends."""
    path.write_bytes(_content(SIZE))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), how, str(SIZE)])
    ready = Path(f"{path}.ready")
    try:
        for _ in range(600):  # it has written a few times: it is running
            if ready.exists() or writer.poll() is not None:
                break
            time.sleep(0.05)
        assert writer.poll() is None, "the writer process died"
        yield
    finally:
        writer.kill()
        writer.wait()
        ready.unlink(missing_ok=True)


def _manifest(project: Project, path: str, *extra: str, keep: str = "{last: 1}") -> None:
    settings = "".join(f"    {line}\n" for line in (f"path: {path}", f"keep: {keep}", *extra))
    project.manifest.write_text(f"version: 1\ntargets:\n  - name: t\n{settings}", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["resize", "in-place"])
def test_a_single_file_that_keeps_changing_fails_and_keeps_the_old_archives(project: Project, how: str) -> None:
    big = project.root / "big.bin"
    big.write_bytes(_content(SIZE))
    _manifest(project, "big.bin")
    assert project.invoke("backup").code == 0
    [old] = project.archives()
    with changing(big, how):
        ran = project.invoke("backup", "--format", "json")
    assert ran.code == 1, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "failed"
    assert result["changed"] == [str(big)]
    assert f"{big} kept changing while it was read (3 reads)" in result["error"]
    assert "archive was discarded" in result["error"]
    assert (result["archive"], result["bytes_out"]) == (None, 0)  # it said 73 MB out, of no archive
    assert f"failed: [t] => {big} kept changing" in ran.stderr
    assert project.archives() == [old]  # no torn archive placed, the good one not rotated
    assert not [p for p in (project.root / "backups").iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [False, True])
def test_a_folder_keeps_its_archive_with_a_warning_and_rotates_nothing(project: Project, processes: bool) -> None:
    folder = project.root / "data"
    project.file("data/notes.txt", "steady\n" * 100)
    big = folder / "log.bin"
    big.write_bytes(_content(SIZE))
    _manifest(project, "data")
    env = {"BACKUP_PROCESSES_FROM": "1"} if processes else {}
    assert project.invoke("backup", env=env).code == 0
    [old] = project.archives()
    with changing(big):
        ran = project.invoke("backup", "--format", "json", env=env)
    assert ran.code == 0, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "changed"
    assert result["changed"] == [str(big)]
    assert result["deleted"] == []
    assert any(f"{big} kept changing while it was read (3 reads)" in w for w in result["warnings"])
    assert f"0 rotated; changed while read: {big}, so nothing rotated)" in ran.stderr
    archives = project.archives()
    assert len(archives) == 2 and old in archives  # keep: {last: 1}, yet the older one stays
    with zipfile.ZipFile(archives[-1]) as archive:
        assert archive.testzip() is None
        assert archive.read("notes.txt") == b"steady\n" * 100
        # Said where a prune reads (the archive's end): a prune deleted the older archive.
        assert archive.comment == b"changed while read: 1 file(s): log.bin"
    pruned = project.invoke("prune")
    assert pruned.code == 1, pruned.output
    assert "it holds files that changed while they were read (1 file(s): log.bin; exclude a file" in pruned.stdout
    assert "or run invoke prune --force to delete anyway" in pruned.stdout
    assert project.archives() == archives
    ran = project.invoke("verify", "--format", "json")
    assert ran.code == 0, ran.output  # the data is as read; the archive itself says what it holds
    newest = ran.json()["targets"][-1]
    assert newest["warnings"] == ["log.bin kept changing while it was archived: it may mix versions"]
    # The next quiet run makes a whole archive and rotates again.
    ran = project.invoke("backup", "--format", "json", env=env)
    assert ran.code == 0 and ran.json()["targets"][0]["changed"] == []
    [newest] = project.archives()
    assert newest not in archives


def _critical_and_changing(project: Project, path: str) -> tuple[Path, Ran]:
    """A backup of `path` (data or data/state.bin) with *.bin critical, while state.bin changes."""
    folder = project.root / "data"
    folder.mkdir()
    big = folder / "state.bin"
    _manifest(project, path, 'critical: ["*.bin"]')
    with changing(big):
        ran = project.invoke("backup")
    return big, ran


@pytest.mark.slow
def test_a_critical_file_fails_a_folder_and_changed_files_warn_keeps_a_single_file(project: Project) -> None:
    big, ran = _critical_and_changing(project, "data")
    assert ran.code == 1, ran.output
    assert f"failed: [t] => {big} kept changing while it was read" in ran.output
    # changed_files: warn cannot help a critical file: it advised it anyway.
    assert "pause the writer) or remove it from critical" in ran.output and "changed_files: warn" not in ran.output
    assert project.archives() == []
    _manifest(project, "data/state.bin", "changed_files: warn")
    with changing(big):
        ran = project.invoke("backup", "--format", "json")
    assert ran.code == 0, ran.output
    assert ran.json()["targets"][0]["changed"] == [str(big)]
    assert len(project.archives()) == 1


@pytest.mark.slow
def test_a_critical_single_file_is_advised_both_settings(project: Project) -> None:
    # A single file fails on a change anyway (changed_files: auto): "remove it from critical"
    # alone would still fail it.
    _, ran = _critical_and_changing(project, "data/state.bin")
    assert ran.code == 1, ran.output
    assert "or remove it from critical and set changed_files: warn" in ran.output


def test_changed_files_is_a_checked_setting(project: Project) -> None:
    project.file("a.txt")
    _manifest(project, "a.txt", "changed_files: sometimes")
    ran = project.invoke("validate")
    assert ran.code == 2
    assert "changed_files" in ran.output
    _manifest(project, "a.txt", "changed_files: fail", 'critical: ["*.db"]')
    ran = project.invoke("list", "--format", "json")
    assert ran.code == 0, ran.output
    [listed] = ran.json()
    assert (listed["changed_files"], listed["critical"]) == ("fail", ["*.db"])


# --- the reader itself: a file changed between its stat and its read is read again ------------


def test_a_small_file_changed_after_its_stat_is_read_again_whole(tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_bytes(b"old contents, longer than the new ones\n")
    seen = path.stat()
    time.sleep(0.02)  # past the file system's timestamp granularity
    path.write_bytes(b"new\n")
    item = ("small.txt", str(path), b"", seen.st_mode, seen.st_mtime, seen.st_size, -1, -1, packing.identity(seen))
    facts, block = packing.pack_batch(None, True, [item])
    record, _offsets, files, _folders, _links, size, vanished, changed, _length, _crc, _torn = facts
    assert (files, size, vanished, changed) == (1, 4, [], [])
    assert block.endswith(b"new\n")
    # The record carries the time of the file as read again, not as first seen.
    [(mtime,)] = [struct.unpack_from("<l", record, at + 5) for at in range(len(record)) if record[at : at + 2] == b"UT"]
    assert mtime == int(path.stat().st_mtime)


@pytest.mark.parametrize(("processes", "renamed"), [(False, False), (True, False), (True, True)])
def test_a_large_file_changed_after_its_stat_is_written_again_whole(
    tmp_path: Path, processes: bool, renamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renamed over (an atomic save), it is another inode: read again all the same.
    if processes:
        monkeypatch.setattr(workers, "PROCESSES_FROM", 0)
    source = tmp_path / "large.bin"
    source.write_bytes(_content(SIZE))
    seen = source.stat()
    time.sleep(0.02)
    new = os.urandom(SIZE // 2 + 12345)  # shorter: the first reading's bytes must not survive
    if renamed:
        (tmp_path / "large.bin.new").write_bytes(new)
        (tmp_path / "large.bin.new").replace(source)
    else:
        source.write_bytes(new)
    archive = tmp_path / "out.zip"
    with archive.open("wb") as file:
        writer = ZipWriter(file, compressor_factory(2), workers=2, path=archive)
        writer.add_file("large.bin", source, seen)
        writer.add_file("after.txt", tmp_path / "large.bin", source.stat())  # a member placed after it
        stats = writer.close()
    assert stats.changed == []
    assert first_difference(archive, writer.spans()) is None  # every byte as written, nothing after
    assert verify_archive(archive).ok
    with zipfile.ZipFile(archive) as result:
        assert result.read("large.bin") == new
        assert result.read("after.txt") == new


# Touches a file without pause and never changes its bytes: every read sees it change (its
# times move), yet an archive of it holds the same bytes as one made while it is quiet.
_TOUCHER = """
import os, sys, time
path, n = sys.argv[1], 0
while True:
    os.utime(path, (n, n + 1_000_000_000 + n))
    n += 1
    if n == 100:
        open(path + ".ready", "w").close()
"""


@pytest.mark.slow
def test_a_settled_source_is_not_unchanged_from_an_archive_made_while_it_changed(project: Project) -> None:
    # With skip_unchanged, the next quiet run found the source unchanged from the archive that
    # holds files changed while read (their bytes were the same), so that archive stayed the
    # newest: nothing rotated for as long as the source stayed unchanged, and every remote's
    # deletions waited on its strength.
    big = project.root / "data" / "log.bin"
    project.file("data/notes.txt", "steady\n")
    big.write_bytes(_content(SIZE))
    _manifest(project, "data", "skip_unchanged: true")
    assert project.invoke("backup").code == 0
    project.file("data/notes.txt", "edited\n")
    toucher = subprocess.Popen([sys.executable, "-c", _TOUCHER, str(big)])
    try:
        for _ in range(600):
            if Path(f"{big}.ready").exists():
                break
            time.sleep(0.05)
        touched = project.invoke("backup", "--format", "json")
    finally:
        toucher.kill()
        toucher.wait()
    assert touched.json()["targets"][0]["changed"] == [str(big)], touched.output
    [_, unsettled] = project.archives()

    ran = project.invoke("backup", "--format", "json")

    assert ran.code == 0, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "changed" and len(result["deleted"]) == 2, result
    [settled] = project.archives()
    assert settled != unsettled
    with zipfile.ZipFile(settled) as archive:
        assert archive.comment == b""


def _within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, failed if it has not returned after `seconds` (a read waiting for ever on a
    FIFO); the blocked thread is a daemon, released below by opening the FIFO for writing."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(work())
        except BaseException as exc:  # said in the test's thread, not lost in this one
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s: a FIFO was opened for reading"
    if failed:
        raise failed[0]
    return done[0]


@contextmanager
def _released(fifo: Path) -> Iterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # no reader waits: nothing to release
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@POSIX
def test_a_small_file_replaced_by_a_fifo_after_its_stat_is_left_out_without_waiting(tmp_path: Path) -> None:
    # A FIFO opened for reading waits for a writer: the run hung holding the target's lock, and
    # every later run said "skipped: another run is working on this target", exit 0.
    path = tmp_path / "f1"
    path.write_bytes(b"a file, then a FIFO\n")
    seen = path.stat()
    path.unlink()
    os.mkfifo(path)
    item = ("f1", str(path), b"", seen.st_mode, seen.st_mtime, seen.st_size, -1, -1, packing.identity(seen))
    with _released(path):
        facts, block = _within(10, lambda: packing.pack_batch(None, True, [item]))
    _record, _offsets, files, _folders, _links, size, vanished, changed, _length, _crc, _torn = facts
    assert (files, size, changed, block) == (0, 0, [], b"")
    assert vanished == [f"{path} was replaced by something that is not a file before it was read; not archived"]


@POSIX
@pytest.mark.parametrize("how", ["link", "folder link", "renamed"])
def test_a_small_file_replaced_after_its_stat_is_read_again_but_never_through_a_link(tmp_path: Path, how: str) -> None:
    # A file swapped for a link between the walk and the read was read through the link, out of
    # the tree: another user's secret archived under the file's name, as a regular file, with no
    # warning; so was one whose folder was swapped for a link.  A file renamed over it (an atomic
    # save) is the same file's new version: read again, as before.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_bytes(b"TOPSECRET\n")
    root = tmp_path / "src"
    path = root / "sub" / "data.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the file the walk saw\n")
    seen = path.stat()
    if how == "link":
        path.unlink()
        path.symlink_to(outside / "data.txt")
    elif how == "folder link":
        path.parent.rename(tmp_path / "sub.old")
        path.parent.symlink_to(outside)
    else:  # made before the walk's file goes, or it could take its inode number
        other = path.with_name("data.txt.new")
        other.write_bytes(b"written beside it, then renamed over it\n")
        other.replace(path)
    item = ("sub/data.txt", str(path), b"", seen.st_mode, seen.st_mtime, seen.st_size, -1, -1, packing.identity(seen))
    facts, block = packing.pack_batch(None, True, [item])
    _record, _offsets, files, _folders, _links, size, vanished, changed, _length, _crc, _torn = facts
    if how == "renamed":
        assert (files, vanished, changed) == (1, [], [])
        assert block.endswith(b"written beside it, then renamed over it\n")
        return
    assert (files, size, changed, block) == (0, 0, [], b"")
    assert vanished == [f"{path} was replaced by another file or a link before it was read; not archived"]


def test_a_file_system_whose_fstat_disagrees_with_the_walk_on_inodes_loses_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Overlays on old kernels give a descriptor's fstat another inode than the name's lstat: every
    # file must not be taken for replaced and left out there.
    path = tmp_path / "data.txt"
    path.write_bytes(b"the file the walk saw\n")
    seen = path.stat()
    fstat = os.fstat

    def overlaid(descriptor: int) -> os.stat_result:
        st = fstat(descriptor)
        fields = [*st[:10]]
        fields[1] = st.st_ino + 1_000_000  # st_ino
        times = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        return os.stat_result(fields, {name: getattr(st, name) for name in times})

    monkeypatch.setattr(packing.os, "fstat", overlaid)
    item = ("data.txt", str(path), b"", seen.st_mode, seen.st_mtime, seen.st_size, -1, -1, packing.identity(seen))
    facts, block = packing.pack_batch(None, True, [item])
    _record, _offsets, files, _folders, _links, _size, vanished, changed, _length, _crc, _torn = facts
    assert (files, vanished, changed) == (1, [], [])
    assert block.endswith(b"the file the walk saw\n")


def test_a_small_file_that_grows_past_a_piece_while_read_is_archived_as_changed(tmp_path: Path) -> None:
    # A log appended to between the walk and the read failed the whole folder target.
    path = tmp_path / "app.log"
    path.write_bytes(b"x" * 1_900_000)
    seen = path.stat()
    with path.open("ab") as log:
        log.write(b"y" * (3 << 20))
    item = ("app.log", str(path), b"", seen.st_mode, seen.st_mtime, seen.st_size, -1, -1, packing.identity(seen))
    facts, block = packing.pack_batch(None, True, [item])
    _record, _offsets, files, _folders, _links, size, vanished, changed, _length, _crc, _torn = facts
    assert (files, vanished, changed) == (1, [], ["app.log"])
    assert 1_900_000 < size <= packing.CHUNK + 1  # its start, never the whole grown file in memory
    assert b"x" * 1_900_000 in block


@pytest.mark.parametrize("how", ["deleted", "fifo", "link"])
def test_a_large_file_gone_while_read_is_left_out_with_a_warning_and_the_archive_kept(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log rotated away under a folder's backup failed the whole target; a small file gone is
    # left out with a warning, and so is a large one now.  One swapped for a link was read through
    # it, out of the tree: the link's target archived under the file's name.
    if how != "deleted" and os.name != "posix":
        pytest.skip("no FIFOs, and links need a privilege")
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOPSECRET\n")
    source = tmp_path / "big.log"
    source.write_bytes(_content(SIZE))
    seen = source.stat()
    trial = packing.worth_deflating

    def then_gone(compressor: object, path: str) -> bool:
        answer = trial(compressor, path)  # type: ignore[arg-type]
        source.unlink()  # after its first bytes were read: the pieces find it gone
        if how == "fifo":
            os.mkfifo(source)
        elif how == "link":
            source.symlink_to(secret)
        return answer

    monkeypatch.setattr(packing, "worth_deflating", then_gone)
    archive = tmp_path / "out.zip"
    (tmp_path / "after.txt").write_bytes(b"placed after it\n")
    with archive.open("wb") as file, _released(source):
        writer = ZipWriter(file, compressor_factory(2), workers=2, path=archive)
        writer.add_file("big.log", source, seen)
        writer.add_file("after.txt", tmp_path / "after.txt", (tmp_path / "after.txt").stat())
        stats = _within(30, writer.close)
    what = {
        "deleted": "vanished",
        "fifo": "was replaced by something that is not a file",
        "link": "was replaced by another file or a link",
    }[how]
    assert stats.warnings == [f"{source} {what} while it was being read; not archived"]
    assert (stats.files, stats.changed) == (1, [])
    assert first_difference(archive, writer.spans()) is None
    assert verify_archive(archive).ok
    with zipfile.ZipFile(archive) as result:
        assert result.namelist() == ["after.txt"]
        assert result.read("after.txt") == b"placed after it\n"


def test_a_large_file_gone_during_its_last_reading_is_left_out_not_kept_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It changed on the first two readings and was deleted during the third: 8 MiB of it were
    # kept as "changed while read", though the README says a file gone while read is left out.
    source = tmp_path / "big.log"
    source.write_bytes(_content(SIZE))
    seen = source.stat()
    time.sleep(0.02)
    source.write_bytes(_content(SIZE))  # not what the walk saw: read again
    calls = 0
    piece = packing.pack_piece  # the readings again, in the writer's process; the first is the workers'

    def meddling(*args: object) -> object:
        nonlocal calls
        answer = piece(*args)  # type: ignore[arg-type]
        calls += 1
        if calls == 1:
            os.utime(source, ns=(seen.st_atime_ns, seen.st_mtime_ns + 10**9))  # changes during the second
        elif calls == SIZE // packing.CHUNK + 1:
            source.unlink()  # and goes during the third
        return answer

    monkeypatch.setattr(packing, "pack_piece", meddling)
    archive = tmp_path / "out.zip"
    (tmp_path / "after.txt").write_bytes(b"placed after it\n")
    with archive.open("wb") as file:
        writer = ZipWriter(file, compressor_factory(2), workers=2, path=archive)
        writer.add_file("big.log", source, seen)
        writer.add_file("after.txt", tmp_path / "after.txt", (tmp_path / "after.txt").stat())
        stats = writer.close()
    assert calls == 2 * SIZE // packing.CHUNK  # three readings in all
    assert stats.warnings == [f"{source} vanished while it was being read; not archived"]
    assert (stats.files, stats.changed) == (1, [])
    assert first_difference(archive, writer.spans()) is None
    assert verify_archive(archive).ok
    with zipfile.ZipFile(archive) as result:
        assert result.namelist() == ["after.txt"]


# --- the source itself gone while it is walked ---------------------------------------------------


@pytest.mark.parametrize("how", ["moved", "replaced"])
def test_a_source_moved_away_while_walked_fails_and_keeps_the_whole_archive(
    project: Project, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A source unmounted (umount -l) or moved away mid-run gave an archive of the files read
    # before it went, reported as `changed` with "vanished" warnings, and keep: {last: 1} then
    # deleted the whole archive.  The move lands after the third file, exactly.
    from backup_core import manifest, runner

    for number in range(12):
        project.file(f"src/f{number:02d}.txt", f"file {number}\n" * 100)
    project.write_manifest("version: 1\ntargets: [{name: site, path: src, keep: {last: 1}}]\n")
    first = project.invoke("backup")
    assert first.code == 0, first.output
    [whole] = project.archives()
    [target] = manifest.load(project.manifest).targets
    adding, added = runner._add, []

    def then_gone(writer: Any, entry: Any, *args: Any, **kwargs: Any) -> None:
        adding(writer, entry, *args, **kwargs)
        added.append(entry.name)
        if len(added) == 3:
            (project.root / "src").rename(project.root / "src.old")
            if how == "replaced":  # another folder of the same names: a mount point's stale copies
                for number in range(12):
                    project.file(f"src/f{number:02d}.txt", f"stale {number}\n")

    monkeypatch.setattr(runner, "_add", then_gone)
    monkeypatch.setenv("BACKUP_NOW", "2099-01-01T00:00:00Z")  # a new archive's name, whatever the clock
    result = runner.backup_target(target, runner.Options())
    assert result.status == "failed"
    assert result.error == (
        f"{target.path} was moved, replaced or unmounted while it was being archived: the archive would hold "
        "part of it at best; nothing was archived and no old archive deleted; run the backup again"
    )
    assert project.archives() == [whole]
    assert sorted(p.name for p in (project.root / "backups").iterdir() if p.name.startswith(".site-")) == []
