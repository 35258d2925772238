"""Scale: memory that stays flat however many files a target holds, and many targets in one folder.

Memory is the peak of all the run's processes together: the `invoke` process (which
walks the tree and keeps the central directory) and the worker processes it starts,
as the benchmark's launcher measures it (the larger of the operating system's peak of
any one process and the sampled sum of the process tree); nothing here is timed.  The
central directory's in-memory part is made small so a few thousand files reach the path
that a million files take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, Project

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="peak memory read with wait4 and /proc (Linux)"
)
SMALL, LARGE = 6_000, 48_000
# Bytes per file, all processes together; measured here: about 18.  300 bytes kept per file in
# the worker processes showed as about 390, which the main process's own peak did not show.
GROWTH_PER_FILE = 250
LAUNCHER = REPO / "benchmarks" / "launch.py"


def make_tree(root: Path, count: int) -> None:
    """`count` tiny files, 100 to a folder, as a real tree of small files is laid out."""
    for number in range(count):
        folder = root / f"d{number // 100:04d}"
        if number % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{number:06d}.txt").write_bytes(b"%d\n" % number)


def peak_backup(project: Project, *flags: str) -> int:
    """Run a backup; return the peak resident bytes of all its processes together."""
    environment = {**os.environ, "NO_COLOR": "1", "BACKUP_DIRECTORY_IN_MEMORY": str(64 << 10)}
    arguments = [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest), *flags]
    result = project.root / "peak.result"
    ran = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), str(result), *arguments],
        cwd=REPO, env=environment, capture_output=True, check=False,
    )  # fmt: skip
    output = (ran.stdout + ran.stderr).decode(errors="replace")
    assert ran.returncode == 0, output
    assert "worker processes failed" not in output  # their memory must be in the figure
    _, peak, _ = result.read_text(encoding="ascii").split()
    return int(peak)


def manifest(project: Project, skip_unchanged: bool) -> None:
    project.write_manifest(
        f"""
        version: 1
        targets:
          - {{name: small, path: small, skip_unchanged: {str(skip_unchanged).lower()}}}
          - {{name: large, path: large, skip_unchanged: {str(skip_unchanged).lower()}}}
        """
    )


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("skip_unchanged", [False, True], ids=["plain", "skip_unchanged"])
def test_memory_does_not_grow_with_the_number_of_files(project: Project, skip_unchanged: bool) -> None:
    make_tree(project.root / "small", SMALL)
    make_tree(project.root / "large", LARGE)
    manifest(project, skip_unchanged)
    peaks = {}
    for name in ("small", "large"):
        peaks[name] = peak_backup(project, "--only", name)
        if skip_unchanged:
            # A changed file: the new archive is made and compared with the previous one by content.
            (project.root / name / "d0000" / "f000000.txt").write_bytes(b"changed\n")
            peaks[name] = max(peaks[name], peak_backup(project, "--only", name))

    growth = (peaks["large"] - peaks["small"]) / (LARGE - SMALL)
    assert growth < GROWTH_PER_FILE, f"{growth:.0f} bytes more per file: {peaks}"
    archives = sorted(project.archives(target="large"))
    with zipfile.ZipFile(archives[-1]) as archive:
        assert len(archive.infolist()) == LARGE + LARGE // 100
        assert archive.testzip() is None
        assert archive.read("d0000/f000000.txt") == (b"changed\n" if skip_unchanged else b"0\n")


@pytest.mark.skipif(os.name == "nt", reason="the hook uses env(1) to give the inner run its own time")
def test_a_folder_listing_is_not_trusted_after_another_run_changed_a_target(project: Project) -> None:
    """One listing of a shared folder serves a whole run, except for a target another run changed
    meanwhile: its rotation and naming must see that run's archive."""
    project.file("one/a.txt", "one\n")
    project.file("two/a.txt", "two\n")
    inner = [
        "env", "BACKUP_NOW=2026-03-02T12:00:00Z", str(INVOKE), "--search-root", str(REPO),
        "backup", "--manifest", str(project.manifest), "--only", "two",
    ]  # fmt: skip
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: one
            path: one
            keep: {{last: 1}}
            hooks: {{after: [{json.dumps(inner)}]}}
          - {{name: two, path: two, keep: {{last: 1}}}}
        """
    )
    first = project.invoke("backup", "--only", "two", env={"BACKUP_NOW": "2026-03-01T12:00:00Z"})
    assert first.code == 0, first.output

    # "one" lists the shared folder; its after hook then runs "two" in another process, which
    # replaces two's archive; this run's own "two" comes next.
    ran = project.invoke("backup", "--jobs", "1", env={"BACKUP_NOW": "2026-03-03T12:00:00Z"})

    assert ran.code == 0, ran.output
    assert [p.name for p in project.archives(target="two")] == ["two-20260303T120000.000000Z.zip"]
    assert [p.name for p in project.archives(target="one")] == ["one-20260303T120000.000000Z.zip"]


def test_many_targets_in_one_folder_each_keep_their_own_archives(project: Project) -> None:
    names = [f"t{n:03d}" for n in range(40)]
    for name in names:
        project.file(f"src/{name}/a.txt", f"{name}\n")
    lines = ["version: 1", "targets:"] + [f"  - {{name: {n}, path: src/{n}, keep: {{last: 2}}}}" for n in names]
    project.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for day in (1, 2, 3):
        ran = project.invoke("backup", "--jobs", "2", env={"BACKUP_NOW": f"2026-03-0{day}T12:00:00Z"})
        assert ran.code == 0, ran.output

    for name in names:
        kept = [p.name for p in project.archives(target=name)]
        assert kept == [f"{name}-2026030{day}T120000.000000Z.zip" for day in (2, 3)], kept
        with zipfile.ZipFile(project.root / "backups" / kept[-1]) as archive:
            assert archive.read("a.txt") == f"{name}\n".encode()


@pytest.mark.parametrize(
    ("folder_ns", "marker_before_ns", "reused"),
    [
        (1_700_000_000_123_456_789, 500_000_000, True),  # fine stamps: half a second is far apart
        (1_700_000_000_123_456_789, 50_000_000, False),  # ...50 ms may be one tick
        (1_700_000_000_000_000_000, 1_000_000_000, False),  # whole seconds (FAT: two): alike
        (1_700_000_000_000_000_000, 3_000_000_000, True),
    ],
)
def test_a_folder_listing_is_reused_only_for_a_lock_file_touched_ticks_before_the_folder_changed(
    tmp_path: Path, folder_ns: int, marker_before_ns: int, reused: bool
) -> None:
    """A run lists a shared folder once, and reuses it for a target whose lock file was last
    touched (by a run that changed its archives) clearly before the folder last changed; a
    lock file touched within a tick of it may stand for a change the listing missed."""
    from backup_core.stores import archives

    folder = tmp_path / "out"
    folder.mkdir()
    marker = folder / ".a.lock"
    marker.write_bytes(b"")
    (folder / "a-20260101T000000.000000Z.zip").write_bytes(b"")
    with archives.one_listing_per_run():
        os.utime(folder, ns=(folder_ns, folder_ns))
        archives.listing(folder)  # the run's listing, taken when the folder last changed at folder_ns
        (folder / "a-20260102T000000.000000Z.zip").write_bytes(b"")  # which it does not hold
        touched = folder_ns - marker_before_ns
        os.utime(marker, ns=(touched, touched))
        names = archives.target_names(folder, "a", marker, marker_created=False)
    assert ("a-20260102T000000.000000Z.zip" not in names) == reused, names
