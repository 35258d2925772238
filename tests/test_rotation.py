"""Rotation: only a target's own archives are ever deleted, newest first kept, by the time in the name.

The property test drives `runner.backup_target` directly (fast enough for many
sequences) through random runs: successful backups at arbitrary clock readings
(repeated instants, clocks set back), failed backups, foreign files dropped into
the destination, leftovers of interrupted runs and scrambled modification times.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_core import manifest
from backup_core.results import CHANGED, FAILED
from backup_core.runner import Options, backup_target
from backup_core.stores import archives, retention

TARGET = "site"
ARCHIVE_NAME = re.compile(r"site-\d{8}T\d{6}\.\d{6}Z\.zip")

# Files in the destination that are not `site`'s archives: rotation must never touch them.
FOREIGN = {
    "notes.zip": b"a person's own zip",
    "backup-2020-01-01.zip": b"made by the original backup script",
    "site-2-20260101T000000.000000Z.zip": b"an archive of the target site-2",
    "site-2-19990101T000000.000000Z.zip": b"an old archive of the target site-2",
    ".site-2-20260101T000000.000000Z.zip.partial": b"site-2 at work right now",
    "site-20260101T000000Z.zip": b"no microseconds: not this tool's name",
    "site-20261301T000000.000000Z.zip": b"month 13: not a time",
    "site-20200101T000000.000000Z.zip.bak": b"a person's copy of an archive",
    "Site-20200101T000000.000000Z.zip": b"another case is another name",
}

ANCHORS = [
    datetime(2026, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc),
    datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=timezone.utc),
    datetime(2030, 1, 1, tzinfo=timezone.utc),
]
instants = st.one_of(
    st.sampled_from(ANCHORS),  # repeated instants are common
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(timezone.utc)),
)
operations = st.one_of(
    st.tuples(st.just("backup"), instants),
    st.tuples(st.just("backup"), instants),
    st.tuples(st.just("fail"), instants),
    st.tuples(st.just("foreign"), st.sampled_from(sorted(FOREIGN))),
    st.tuples(st.just("leftover"), instants),
    st.tuples(st.just("scramble"), st.randoms(use_true_random=False)),
)


def write_manifest(root: Path, keep: dict[str, Any]) -> Path:
    rules = ", ".join(f"{rule}: {value}" for rule, value in keep.items())
    file = root / "backups.yml"
    file.write_text(
        f"version: 1\ntargets:\n  - name: {TARGET}\n    path: src\n    destination: backups\n    keep: {{{rules}}}\n",
        encoding="utf-8",
    )
    return file


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in `folder` with its bytes and mtime, but the target's (empty) lock file."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != f".{TARGET}.lock"
    }


def own_archives(folder: Path) -> list[str]:
    return [a.name for a in archives.list_archives(folder, TARGET)]


def content_of(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as opened:
        return opened.read("data.txt")


@dataclass
class Model:
    """What the destination must hold, as the operations so far imply."""

    keep_last: int
    made: list[str] = field(default_factory=list)  # names of the archives made, in making order
    expected: list[str] = field(default_factory=list)  # the target's archives the destination must hold
    foreign: dict[str, bytes] = field(default_factory=dict)
    leftovers: set[str] = field(default_factory=set)  # this target's own stale partial files
    runs: int = 0


def check_foreign(destination: Path, model: Model) -> None:
    for name, content in model.foreign.items():
        assert (destination / name).is_file(), f"foreign file {name} was deleted"
        assert (destination / name).read_bytes() == content, f"foreign file {name} was changed"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep_last=st.integers(min_value=1, max_value=4), steps=st.lists(operations, min_size=2, max_size=20))
def test_rotation_keeps_the_newest_own_archives_and_touches_nothing_else(
    keep_last: int, steps: list[tuple[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        root = Path(folder)
        source = root / "src"
        source.mkdir()
        destination = root / "backups"
        destination.mkdir()
        (target,) = manifest.load(write_manifest(root, {"last": keep_last})).targets
        model = Model(keep_last)
        for name, content in FOREIGN.items():  # every foreign name is present from the start
            (destination / name).write_bytes(content)
            model.foreign[name] = content

        for kind, argument in steps:
            if kind == "backup":
                model.runs += 1
                payload = f"run {model.runs}\n".encode()
                (source / "data.txt").write_bytes(payload)
                patch.setenv("BACKUP_NOW", argument.isoformat())
                before = set(own_archives(destination))

                result = backup_target(target, Options())

                assert result.status == CHANGED, result.error
                assert result.archive is not None
                new = result.archive.name
                assert new not in before, "an archive was overwritten"
                # The newest archive is always the one just made, whatever the clock said, but for
                # archives from the future (beyond the tolerance): those are kept and never counted.
                horizon = argument + retention.FUTURE_TOLERANCE
                future = sorted(name for name in before if archives.parse_when(TARGET, name) > horizon)
                present = sorted(set(before) - set(future))
                assert all(new > name for name in present), f"{new} sorts before an older archive"
                model.made.append(new)
                model.expected = sorted([*present, new][-keep_last:] + future)
                now = own_archives(destination)
                assert now == model.expected
                assert sorted(result.deleted) == sorted(before - set(now))
                assert result.future == future
                assert content_of(destination / new) == payload
                assert not any(name in now for name in model.leftovers)
                for leftover in model.leftovers:
                    assert not (destination / leftover).exists(), f"stale {leftover} survived a successful run"
                model.leftovers.clear()
            elif kind == "fail":
                patch.setenv("BACKUP_NOW", argument.isoformat())
                hidden = root / "src-away"
                source.rename(hidden)
                before_failure = state(destination)
                try:
                    result = backup_target(target, Options())
                finally:
                    hidden.rename(source)
                assert result.status == FAILED
                assert result.archive is None
                assert result.deleted == []
                assert state(destination) == before_failure, "a failed run changed the destination"
            elif kind == "foreign":  # a person replaces one of their files mid-way
                (destination / argument).unlink()
                (destination / argument).write_bytes(FOREIGN[argument] + b" (again)")
                model.foreign[argument] = FOREIGN[argument] + b" (again)"
            elif kind == "leftover":
                # What a killed run of this same target leaves behind.
                name = archives.partial_path(destination, TARGET, argument, "zip").name
                (destination / name).write_bytes(b"half an archive")
                model.leftovers.add(name)
            else:  # scramble: modification times that disagree with the names
                rng: random.Random = argument
                everything = sorted(destination.iterdir())
                for path in everything:
                    moment = rng.randrange(0, 2_000_000_000)
                    os.utime(path, (moment, moment))
                mine = [destination / name for name in own_archives(destination)]
                for age, path in enumerate(mine):  # the oldest name gets the newest mtime
                    moment = 2_000_000_000 - age * 3600
                    os.utime(path, (moment, moment))
            check_foreign(destination, model)
            assert own_archives(destination) == model.expected


def _names_and_deleted(ran_json: dict[str, Any]) -> tuple[Path, list[str]]:
    (result,) = ran_json["targets"]
    assert result["status"] == "changed", result
    return Path(result["archive"]), result["deleted"]


def test_keep_last_2_after_4_runs_leaves_exactly_the_newest_2(project: Project) -> None:
    source = project.file("src/data.txt", "run 1\n")
    write_manifest(project.root, {"last": 2})
    destination = project.root / "backups"
    for name, content in FOREIGN.items():
        project.file(f"backups/{name}", content)
    start = datetime(2026, 2, 1, 8, 30, tzinfo=timezone.utc)

    made: list[Path] = []
    deleted: list[str] = []
    for run in range(1, 5):
        source.write_text(f"run {run}\n", encoding="utf-8")
        if made:  # make the oldest archive look newest on disk: rotation must not care
            for age, path in enumerate(made):
                if path.exists():
                    os.utime(path, (2_000_000_000 - age, 2_000_000_000 - age))
        now = (start + timedelta(hours=run)).isoformat()
        ran = project.invoke("backup", "--format", "json", env={"BACKUP_NOW": now})
        assert ran.code == 0, ran.output
        archive, gone = _names_and_deleted(ran.json())
        made.append(archive)
        deleted.extend(gone)

    assert [p.name for p in made] == [f"site-20260201T{9 + i:02d}3000.000000Z.zip" for i in range(4)]
    finished = sorted(p for p in destination.iterdir() if ARCHIVE_NAME.fullmatch(p.name) and p.name not in FOREIGN)
    assert finished == made[2:]
    assert [content_of(p) for p in made[2:]] == [b"run 3\n", b"run 4\n"]
    assert deleted == [made[0].name, made[1].name]
    for name, content in FOREIGN.items():
        assert (destination / name).read_bytes() == content, name
