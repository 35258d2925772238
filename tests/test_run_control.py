"""Run control: check mode, skip_unchanged, parallel targets and locks, hooks, output, selection.

Everything runs through the real `invoke` command in a subprocess.  Concurrency is
arranged with marker files (a hook waits for a file another process makes), never
with sleeps whose length decides the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import INVOKE, REPO, Project, Ran, archive_file_name, fake_archive, flow

PY = sys.executable
POSIX = os.name == "posix"
posix_only = pytest.mark.skipif(not POSIX, reason="needs POSIX signals, sh or a pseudo-terminal")

NOW1, NOW2, NOW3 = "2026-03-01T12:00:00Z", "2026-03-02T12:00:00Z", "2026-03-03T12:00:00Z"

# --- the line grammar of the text output ------------------------------------------------------

TITLE = re.compile(r"^(BACKUP|PRUNE|VERIFY) \[[^\]]+: \d+ targets?\]( \(CHECK MODE: [^)]*\))? \*+$")
RESULT = re.compile(r"^(ok|changed|failed|skipped): \[([A-Za-z0-9_-]+)\] => (.+)$")
FILE_LINE = re.compile(r"^  \[([A-Za-z0-9_-]+)\] (\S.*)$")
RECAP_TITLE = re.compile(r"^RECAP \*+$")
RECAP_LINE = re.compile(r"^([A-Za-z0-9_-]+) *: ok=(\d+)  changed=(\d+)  failed=(\d+)  skipped=(\d+)$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z) ")


def check_grammar(text: str) -> None:
    """Every line is one of the known kinds (so no two lines were ever spliced together)."""
    for line in text.splitlines():
        known = line == "" or any(p.match(line) for p in (TITLE, RESULT, FILE_LINE, RECAP_TITLE, RECAP_LINE))
        assert known, f"unexpected line {line!r} in:\n{text}"


def results(text: str) -> list[tuple[str, str, str]]:
    """(status, target, detail) of every result line, in printed order."""
    return [(m[1], m[2], m[3]) for m in map(RESULT.match, text.splitlines()) if m]


def recap(text: str) -> list[tuple[str, dict[str, int]]]:
    """The RECAP: (target, counts) in printed order."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if RECAP_TITLE.match(line))
    out = []
    for line in lines[start + 1 :]:
        match = RECAP_LINE.match(line)
        if match:
            counts = dict(zip(("ok", "changed", "failed", "skipped"), map(int, match.groups()[1:]), strict=True))
            out.append((match.group(1), counts))
    return out


def counts(ok: int = 0, changed: int = 0, failed: int = 0, skipped: int = 0) -> dict[str, int]:
    return {"ok": ok, "changed": changed, "failed": failed, "skipped": skipped}


def would_delete(detail: str) -> list[str]:
    """The archive names after 'would delete' in a check-mode line ([] for 'nothing')."""
    listed = detail.split("would delete ", 1)[1]
    return [] if listed == "nothing" else listed.split(", ")


# --- helpers -----------------------------------------------------------------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll until `condition` holds; the limit only stops a broken test from hanging."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a killed process waiting to be reaped (a zombie) is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    try:
        return status.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone meanwhile on Linux; no /proc at all elsewhere, so trust kill(0)
        return not Path("/proc/self").exists()


# Hook scripts, written into the project and run with this interpreter.
DUMP = """
import json, os, sys
archive = os.environ.get("BACKUP_ARCHIVE", "")
record = {
    "argv": sys.argv[2:],
    "env": {k: v for k, v in os.environ.items() if k.startswith("BACKUP_") and k != "BACKUP_NOW"},
    "archive_exists": bool(archive) and os.path.isfile(archive),
}
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\\n")
"""

# Appends "start PID"; the first caller then waits for the gate file; appends "end PID".
GATE = """
import os, sys, time
log, gate = sys.argv[1], sys.argv[2]
first = not os.path.exists(log)
with open(log, "a", encoding="utf-8") as out:
    out.write(f"start {os.getpid()}\\n")
deadline = time.monotonic() + 60
while first and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
with open(log, "a", encoding="utf-8") as out:
    out.write(f"end {os.getpid()}\\n")
"""

# Waits for a file to appear; fails when it does not within the limit given.
AWAIT = """
import os, sys, time
path, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
while not os.path.exists(path):
    if time.monotonic() > deadline:
        sys.exit(f"gave up waiting for {path}")
    time.sleep(0.02)
"""

# Writes its pid, then hangs.
HANG = """
import os, sys, time
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write(str(os.getpid()))
time.sleep(120)
"""


def script(project: Project, name: str, text: str) -> str:
    return str(project.file(f"hooks/{name}.py", text))


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def background() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `invoke` without waiting; any process group still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        command, *rest = args
        process = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), command, "--manifest", str(project.manifest), *rest],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=POSIX,  # its own process group, so the teardown can end its hooks too
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            if POSIX:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.communicate()


def finish(process: subprocess.Popen[str], limit: float = 120) -> Ran:
    stdout, stderr = process.communicate(timeout=limit)
    return Ran(process.returncode, stdout, stderr)


def tree_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Files (not folders, not lock or skip_unchanged state files) under `folder` with size and mtime."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith((".lock", ".state"))
    }


# === check mode ================================================================================


def check_mode_project(project: Project) -> tuple[Path, list[Path]]:
    """Four existing archives of `site` (keep last: 2), and hooks that would leave files if run."""
    project.file("src/a.txt", "alpha\n")
    project.file("src/sub/b.txt", "beta\n")
    dump = script(project, "dump", DUMP)
    marks = project.root / "marks"
    project.write_manifest(
        f"""
        version: 1
        hooks:
          before: [{flow([PY, dump, str(marks / "run.jsonl")])}]
        targets:
          - name: site
            path: src
            keep: {{last: 2}}
            hooks:
              before: [{flow([PY, dump, str(marks / "site.jsonl")])}]
              after: [{flow([PY, dump, str(marks / "site.jsonl")])}]
        """
    )
    marks.mkdir()
    backups = project.root / "backups"
    existing = [fake_archive(backups, "site", utc(f"2026-02-2{d}T12:00")) for d in range(1, 5)]
    return backups, existing


def test_backup_check_touches_nothing_and_lists_exactly_the_deletions(project: Project) -> None:
    _, existing = check_mode_project(project)
    before = project.snapshot_tree()

    ran = project.invoke("backup", "--check", env={"BACKUP_NOW": NOW1})

    assert ran.code == 0, ran.output
    assert project.snapshot_tree() == before  # no archive, no deletion, no hook output
    assert not list(project.root.rglob("*.lock")), "a check run created a lock file"
    check_grammar(ran.stdout)
    title = ran.stdout.splitlines()[0]
    assert title.startswith("BACKUP [") and "CHECK MODE" in title
    [(status, name, detail)] = results(ran.stdout)
    assert (status, name) == ("changed", "site")
    assert "would archive" in detail and "2 files" in detail
    # keep last: 2 counts the new archive, so three of the four existing ones go.
    assert would_delete(detail) == [p.name for p in existing[:3]]

    # The real run with the same clock deletes exactly what the check listed.
    real = project.invoke("backup", env={"BACKUP_NOW": NOW1})
    assert real.code == 0, real.output
    assert "CHECK MODE" not in real.stdout
    assert {p.name for p in project.archives()} == {existing[3].name, archive_file_name("site", utc(NOW1[:-1]))}


def test_backup_check_does_not_create_a_missing_destination(project: Project) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: src, destination: out/backups}
        """
    )
    before = project.snapshot_tree()
    ran = project.invoke("backup", "--check")
    assert ran.code == 0, ran.output
    assert "would delete nothing" in ran.stdout
    assert project.snapshot_tree() == before
    assert not (project.root / "out").exists()


def test_prune_check_touches_nothing_and_lists_exactly_the_deletions(project: Project) -> None:
    _, existing = check_mode_project(project)
    before = project.snapshot_tree()

    ran = project.invoke("prune", "--check")

    assert ran.code == 0, ran.output
    assert project.snapshot_tree() == before
    assert not list(project.root.rglob("*.lock"))
    check_grammar(ran.stdout)
    assert "CHECK MODE" in ran.stdout.splitlines()[0]
    [(status, name, detail)] = results(ran.stdout)
    assert (status, name) == ("changed", "site")
    assert would_delete(detail) == [p.name for p in existing[:2]]

    real = project.invoke("prune")
    assert real.code == 0, real.output
    assert [p.name for p in project.archives()] == [p.name for p in existing[2:]]
    assert f"changed: [site] => deleted {existing[0].name}, {existing[1].name}" in real.stdout


def test_check_mode_output_is_marked_in_json(project: Project) -> None:
    _, existing = check_mode_project(project)
    ran = project.invoke("prune", "--check", "--format", "json")
    assert ran.code == 0, ran.output
    document = ran.json()
    assert document["check"] is True
    assert document["targets"][0]["deleted"] == [p.name for p in existing[:2]]
    # The reason agrees with the list (it once said "nothing to prune" beside two names).
    assert document["targets"][0]["reason"] == f"{len(existing)} archive(s), 2 to delete"
    assert "CHECK MODE" in ran.stderr  # the people's text goes to stderr in JSON mode


def test_check_mode_exits_like_a_real_run_when_a_source_is_missing(project: Project) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: here, path: src}
          - {name: gone, path: missing}
        """
    )
    before = project.snapshot_tree()
    checked = project.invoke("backup", "--check")
    assert checked.code == 1, checked.output
    assert project.snapshot_tree() == before
    statuses = {name: status for status, name, _ in results(checked.stdout)}
    assert statuses == {"here": "changed", "gone": "failed"}
    assert "source not found" in checked.stdout

    real = project.invoke("backup")
    assert real.code == checked.code


# === skip_unchanged ============================================================================


def unchanged_project(project: Project, keep: str = "{last: 5}") -> Path:
    project.file("src/a.txt", "alpha\n")
    source = project.file("src/sub/b.bin", bytes(range(256)) * 4)
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: notes
            path: src
            skip_unchanged: true
            keep: {keep}
        """
    )
    return source


def test_unchanged_source_reports_ok_and_writes_and_rotates_nothing(project: Project) -> None:
    source = unchanged_project(project)
    assert project.invoke("backup", env={"BACKUP_NOW": NOW1}).code == 0
    source.write_bytes(b"second state")
    assert project.invoke("backup", env={"BACKUP_NOW": NOW2}).code == 0
    assert len(project.archives()) == 2  # two states, so a rotation would have something to delete
    newest = project.archives()[-1]
    unchanged_project(project, keep="{last: 1}")  # a policy that would delete the older one
    source.write_bytes(b"second state")  # rewritten, same bytes (a new mtime)
    before = tree_files(project.root / "backups")

    ran = project.invoke("backup", env={"BACKUP_NOW": NOW3})

    assert ran.code == 0, ran.output
    check_grammar(ran.stdout)
    assert f"ok: [notes] => unchanged since {newest.name}" in ran.stdout.splitlines()
    assert recap(ran.stdout) == [("notes", counts(ok=1))]
    # No archive written, none rotated: only the record that the source was found unchanged
    # (what status counts max_age from), naming the archive it matched.
    after = tree_files(project.root / "backups")
    record = after.pop(".notes.unchanged")
    assert after == before and ".notes.unchanged" not in before
    assert (project.root / "backups" / ".notes.unchanged").read_text(encoding="utf-8").startswith(f"{newest.name}\n")
    assert record
    assert not [p for p in (project.root / "backups").iterdir() if p.name.endswith(".partial")]


def test_a_single_byte_change_with_the_same_size_and_mtime_is_seen(project: Project) -> None:
    source = unchanged_project(project)
    assert project.invoke("backup", env={"BACKUP_NOW": NOW1}).code == 0
    first = project.archives()
    stat = source.stat()
    data = bytearray(source.read_bytes())
    data[500] ^= 0x01
    source.write_bytes(bytes(data))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    ran = project.invoke("backup", env={"BACKUP_NOW": NOW2})

    assert ran.code == 0, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "changed", ran.stdout
    new = [p for p in project.archives() if p not in first]
    assert [p.name for p in new] == [archive_file_name("notes", utc(NOW2[:-1]))]
    assert detail.startswith(new[0].name)
    with zipfile.ZipFile(new[0]) as archive:
        assert archive.read("sub/b.bin") == bytes(data)


def test_force_archives_an_unchanged_source(project: Project) -> None:
    unchanged_project(project)
    assert project.invoke("backup", env={"BACKUP_NOW": NOW1}).code == 0
    ran = project.invoke("backup", "--force", env={"BACKUP_NOW": NOW2})
    assert ran.code == 0, ran.output
    assert results(ran.stdout)[0][0] == "changed"
    assert len(project.archives()) == 2
    assert recap(ran.stdout) == [("notes", counts(changed=1))]


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_an_unchanged_sqlite_database_is_ok_the_second_time(project: Project, journal: str) -> None:
    database = project.root / "app.db"
    connection = sqlite3.connect(database)
    try:
        connection.execute(f"PRAGMA journal_mode={journal}")
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO t (body) VALUES (?)", [(f"row {i}",) for i in range(200)])
        connection.commit()
    finally:
        connection.close()
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: app-db, path: app.db, skip_unchanged: true}
        """
    )
    first = project.invoke("backup", env={"BACKUP_NOW": NOW1})
    assert first.code == 0, first.output
    assert "changed: [app-db] => " in first.stdout and "1 database" in first.stdout

    second = project.invoke("backup", env={"BACKUP_NOW": NOW2})

    assert second.code == 0, second.output
    assert f"ok: [app-db] => unchanged since {project.archives()[0].name}" in second.stdout.splitlines()
    assert recap(second.stdout) == [("app-db", counts(ok=1))]
    assert len(project.archives()) == 1

    connection = sqlite3.connect(database)
    try:
        connection.execute("INSERT INTO t (body) VALUES ('one more')")
        connection.commit()
    finally:
        connection.close()
    third = project.invoke("backup", env={"BACKUP_NOW": NOW3})
    assert third.code == 0, third.output
    assert recap(third.stdout) == [("app-db", counts(changed=1))]
    assert len(project.archives()) == 2


# === parallel targets ==========================================================================


def test_jobs_run_targets_at_once_and_the_recap_keeps_manifest_order(project: Project) -> None:
    """`first` cannot finish until `second` has: only a concurrent run lets both succeed."""
    project.file("one/a.txt")
    project.file("two/b.txt")
    wait, dump = script(project, "await", AWAIT), script(project, "dump", DUMP)
    done = project.root / "second.done"

    def manifest(limit: float) -> None:
        project.write_manifest(
            f"""
            version: 1
            targets:
              - name: first
                path: one
                hooks: {{before: [{flow([PY, wait, str(done), str(limit)])}]}}
              - name: second
                path: two
                hooks: {{after: [{flow([PY, dump, str(done)])}]}}
            """
        )

    # Control: one at a time, `first` waits in vain (so the hook really does depend on `second`).
    manifest(limit=1)
    alone = project.invoke("backup", "--jobs", "1")
    assert alone.code == 1, alone.output
    assert [(s, n) for s, n, _ in results(alone.stdout)] == [("failed", "first"), ("changed", "second")]

    done.unlink()
    manifest(limit=60)
    ran = project.invoke("backup", "--jobs", "2")

    assert ran.code == 0, ran.output
    check_grammar(ran.stdout)
    # Lines come as targets finish, the RECAP in manifest order.  Which line comes first is a
    # race: `first` goes on the moment `second`'s after hook writes its file, while `second`
    # still has its result to settle, so only the set of lines is certain.
    assert sorted((s, n) for s, n, _ in results(ran.stdout)) == [("changed", "first"), ("changed", "second")]
    assert [name for name, _ in recap(ran.stdout)] == ["first", "second"]


def test_parallel_output_never_splices_lines(project: Project) -> None:
    names = [f"t{i}" for i in range(4)]
    expected: dict[str, set[str]] = {}
    for name in names:
        expected[name] = {"sub/"}
        for i in range(40):
            member = f"{'sub/' if i % 2 else ''}file-{i:02d}.txt"
            project.file(f"{name}/{member}", f"{name} {i}\n" * 50)
            expected[name].add(member)
    targets = "\n".join(f"  - {{name: {n}, path: {n}}}" for n in names)
    project.manifest.write_text(f"version: 1\ntargets:\n{targets}\n", encoding="utf-8")
    log = project.root / "run.log"

    ran = project.invoke("backup", "-v", "--jobs", "4", "--log-file", str(log))

    assert ran.code == 0, ran.output
    check_grammar(ran.stdout)
    seen: dict[str, set[str]] = {n: set() for n in names}
    for match in filter(None, map(FILE_LINE.match, ran.stdout.splitlines())):
        seen[match.group(1)].add(match.group(2))
    assert seen == expected
    assert sorted(n for _, n, _ in results(ran.stdout)) == names
    assert [name for name, _ in recap(ran.stdout)] == names
    logged = log.read_text(encoding="utf-8").splitlines()
    assert all(STAMP.match(line) for line in logged), logged
    check_grammar("\n".join(STAMP.sub("", line) for line in logged))


# === locks =====================================================================================


def lock_project(project: Project, lock_timeout: float = 0) -> tuple[Path, Path]:
    """`slow` holds its lock until the gate file exists; `other` shares its destination."""
    project.file("one/a.txt")
    project.file("two/b.txt")
    gate_script = script(project, "gate", GATE)
    log, gate = project.root / "gate.log", project.root / "gate.open"
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: slow
            path: one
            lock_timeout: {lock_timeout}
            hooks: {{before: [{flow([PY, gate_script, str(log), str(gate)])}]}}
          - name: other
            path: two
        """
    )
    return log, gate


def hook_lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def holding(project: Project, background: Callable[..., subprocess.Popen[str]], log: Path) -> subprocess.Popen[str]:
    """Start a backup of `slow` and return once it holds the lock (its before hook is running)."""
    first = background(project, "backup", "--only", "slow")
    wait_for(lambda: len(hook_lines(log)) == 1 or first.poll() is not None, "the first run's before hook")
    assert first.poll() is None, finish(first).output
    return first


def test_a_second_run_of_a_busy_target_is_skipped(
    project: Project, background: Callable[..., subprocess.Popen[str]]
) -> None:
    log, gate = lock_project(project)
    first = holding(project, background, log)

    second = project.invoke("backup", "--only", "slow")

    assert second.code == 0, second.output
    [(status, name, detail)] = results(second.stdout)
    assert (status, name) == ("skipped", "slow")
    assert "another run" in detail
    assert recap(second.stdout) == [("slow", counts(skipped=1))]
    assert len(hook_lines(log)) == 1  # the second run never got as far as its hook
    gate.touch()
    done = finish(first)
    assert done.code == 0, done.output
    assert "changed: [slow] => " in done.stdout
    assert len(project.archives(target="slow")) == 1


def test_lock_timeout_waits_for_the_other_run_and_then_succeeds(
    project: Project, background: Callable[..., subprocess.Popen[str]]
) -> None:
    log, gate = lock_project(project, lock_timeout=10)
    first = holding(project, background, log)
    second = background(project, "backup", "--only", "slow")
    assert second.stdout is not None
    assert second.stdout.readline().startswith("BACKUP [")  # it is past loading, at the lock
    time.sleep(0.5)  # give it time to block on the lock (the order is checked below, not timed)
    gate.touch()

    done_first, done_second = finish(first), finish(second)

    assert done_first.code == 0, done_first.output
    assert done_second.code == 0, done_second.output
    assert "changed: [slow] => " in done_second.stdout
    # The second run's hook started only after the first run's hook ended: the lock held.
    lines = hook_lines(log)
    assert [line.split()[0] for line in lines] == ["start", "end", "start", "end"]
    assert lines[0].split()[1] == lines[1].split()[1] != lines[2].split()[1] == lines[3].split()[1]
    assert len(project.archives(target="slow")) == 2


def test_targets_sharing_a_destination_do_not_block_each_other(
    project: Project, background: Callable[..., subprocess.Popen[str]]
) -> None:
    log, gate = lock_project(project)
    first = holding(project, background, log)

    other = project.invoke("backup", "--only", "other")

    assert other.code == 0, other.output
    assert results(other.stdout)[0][:2] == ("changed", "other")
    assert len(project.archives(target="other")) == 1
    gate.touch()
    assert finish(first).code == 0


def test_a_check_run_does_not_wait_for_the_lock(
    project: Project, background: Callable[..., subprocess.Popen[str]]
) -> None:
    log, gate = lock_project(project)
    first = holding(project, background, log)

    checked = project.invoke("backup", "--only", "slow", "--check")

    assert checked.code == 0, checked.output
    [(status, _, detail)] = results(checked.stdout)
    assert status == "changed" and "would archive" in detail
    gate.touch()
    assert finish(first).code == 0


@posix_only
def test_a_lock_left_by_a_killed_run_does_not_block_the_next(
    project: Project, background: Callable[..., subprocess.Popen[str]]
) -> None:
    log, gate = lock_project(project)
    first = holding(project, background, log)
    hook_pid = int(hook_lines(log)[0].split()[1])
    os.kill(first.pid, signal.SIGKILL)  # the invoke process only: its hook lives on, orphaned
    first.wait()
    assert (project.root / "backups" / ".slow.lock").exists()
    assert pid_alive(hook_pid)

    try:
        ran = project.invoke("backup", "--only", "slow")
    finally:
        gate.touch()  # let the orphaned hook end
    assert ran.code == 0, ran.output
    assert results(ran.stdout)[0][:2] == ("changed", "slow")
    assert len(project.archives(target="slow")) == 1
    wait_for(lambda: f"end {hook_pid}" in hook_lines(log), "the orphaned hook to end")


# === hooks =====================================================================================


def hooks_project(project: Project, hooks: str) -> None:
    project.file("src/a.txt")
    project.write_manifest(
        f"""
        version: 1
        targets:
          - name: site
            path: src
            hooks: {hooks}
        """
    )


def test_a_list_hook_runs_without_a_shell(project: Project) -> None:
    dump = script(project, "dump", DUMP)
    out, pwned = project.root / "argv.jsonl", project.root / "pwned"
    tricky = ["$HOME", f"x; touch {pwned}", "*", "`id`", "a b", f"$(touch {pwned})"]
    split = f"{shlex.quote(PY)} {shlex.quote(dump)} {shlex.quote(str(out))} $HOME semi;colon"
    hooks_project(project, f"{{before: [{flow([PY, dump, str(out), *tricky])}], after: [{{run: {flow(split)}}}]}}")

    ran = project.invoke("backup")

    assert ran.code == 0, ran.output
    before, after = records(out)
    assert before["argv"] == tricky
    assert after["argv"] == ["$HOME", "semi;colon"]  # a string `run` is split, not given to a shell
    assert not pwned.exists()


@posix_only
def test_a_shell_hook_runs_through_the_shell(project: Project) -> None:
    out = project.root / "shell.txt"
    command = f'echo "$BACKUP_TARGET:$BACKUP_HOOK" > {shlex.quote(str(out))}; echo second >> {shlex.quote(str(out))}'
    hooks_project(project, f"{{after: [{{run: {flow(command)}, shell: true}}]}}")

    ran = project.invoke("backup")

    assert ran.code == 0, ran.output
    assert out.read_text(encoding="utf-8") == "site:after\nsecond\n"


def test_hooks_see_the_target_status_and_archive(project: Project) -> None:
    dump = script(project, "dump", DUMP)
    out = project.root / "env.jsonl"
    hooks_project(project, f"{{before: [{flow([PY, dump, str(out)])}], after: [{flow([PY, dump, str(out)])}]}}")

    ran = project.invoke("backup")

    assert ran.code == 0, ran.output
    [archive] = project.archives()
    before, after = records(out)
    assert before["env"]["BACKUP_HOOK"] == "before"
    assert before["env"]["BACKUP_TARGET"] == "site"
    assert before["env"]["BACKUP_ARCHIVE"] == ""
    assert after["env"]["BACKUP_HOOK"] == "after"
    assert after["env"]["BACKUP_TARGET"] == "site"
    assert after["env"]["BACKUP_STATUS"] == "changed"
    assert after["env"]["BACKUP_ARCHIVE"] == str(archive)
    assert after["archive_exists"] is True
    assert after["env"]["BACKUP_ERROR"] == ""
    assert after["env"]["BACKUP_SOURCE"] == str(project.root / "src")
    assert after["env"]["BACKUP_DESTINATION"] == str(project.root / "backups")


def test_a_failing_before_hook_fails_the_target_without_archiving(project: Project) -> None:
    dump = script(project, "dump", DUMP)
    failures, afters = project.root / "failure.jsonl", project.root / "after.jsonl"
    refuse = [PY, "-c", "import sys; print('database not ready', file=sys.stderr); sys.exit(3)"]
    hooks_project(
        project,
        f"{{before: [{flow(refuse)}], after: [{flow([PY, dump, str(afters)])}], "
        f"on_failure: [{flow([PY, dump, str(failures)])}]}}",
    )

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed"
    assert "before hook" in detail and "status 3" in detail and "database not ready" in detail
    assert not (project.root / "backups").exists() or not any((project.root / "backups").glob("*.zip"))
    assert not any((project.root / "backups").glob("*.partial"))
    assert not afters.exists()
    [failure] = records(failures)
    assert failure["env"]["BACKUP_HOOK"] == "on_failure"
    assert failure["env"]["BACKUP_STATUS"] == "failed"
    assert "status 3" in failure["env"]["BACKUP_ERROR"] and "database not ready" in failure["env"]["BACKUP_ERROR"]
    assert failure["env"]["BACKUP_ARCHIVE"] == ""


# Writes 48 MiB, a MiB every 20 ms, then says why it fails on its standard error.
_SPEWER = """
import sys, time
chunk = (b"x" * 1023 + b"\\n") * 1024
for _ in range(48):
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    time.sleep(0.02)
print("database not ready", file=sys.stderr)
sys.exit(3)
"""


def test_a_hook_that_writes_without_end_does_not_fill_the_temporary_folder(project: Project, small_fs: Path) -> None:
    # Its output went whole to a temporary file (`pg_dump app` without -f writes the dump
    # there): 882 MB in 1.8 s, and /tmp is often the backups' own disk.  Here the temporary
    # folder is a 16 MiB file system: the hook's 48 MiB no longer fill it.
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    if not 12 << 20 < free <= 32 << 20:
        pytest.skip(f"{small_fs} has {free} bytes free; the test needs about 16 MiB")
    hooks_project(project, f"{{before: [{flow([PY, '-c', _SPEWER])}]}}")

    ran = project.invoke("backup", env={"TMPDIR": str(small_fs)})

    assert ran.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed"
    assert "before hook" in detail and "status 3: database not ready" in detail, detail


def test_credentials_written_into_a_hook_never_reach_the_output_the_log_or_the_json(project: Project) -> None:
    # A hook's command is named in its failure (terminal, log, JSON, BACKUP_ERROR, the Ansible
    # module's message) and in `list`: a ping URL's password or a --token= went along with it.
    secrets = ("pa55word", "t0ps3cret", "hunter2", "b3arer")
    failing = [PY, "-c", "import sys; sys.exit(3)", "https://ops:pa55word@hc.example/ping", "--token=t0ps3cret"]
    shell = "curl -fsS -H 'Authorization: Bearer b3arer' --password hunter2 https://hc.example/x; exit 5"
    hooks_project(project, f"{{after: [{flow(failing)}], on_failure: [{{run: {json.dumps(shell)}, shell: true}}]}}")
    log = project.root / "run.log"

    ran = project.invoke("backup", "--log-file", str(log))
    as_json = project.invoke("backup", "--format", "json")
    listed = project.invoke("list", "--format", "json")

    assert ran.code == 1 and as_json.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed" and "after hook" in detail and "status 3" in detail
    # Still says which command it was: the URL's user and host, the flag's name.
    assert "https://ops:***@hc.example/ping" in detail and "--token=***" in detail
    document = json.loads(as_json.stdout)
    assert "https://ops:***@hc.example/ping" in document["targets"][0]["error"]
    for text in (
        ran.stdout,
        ran.stderr,
        log.read_text(encoding="utf-8"),
        as_json.stdout,
        as_json.stderr,
        listed.stdout,
    ):
        assert not any(secret in text for secret in secrets), text
    assert "Authorization: ***" in listed.stdout and "--password *** " in listed.stdout


# Hook commands as operators write them, with what must still show which command it was.
GAP_COMMANDS = [
    ("redis-cli -a Zredis1 ping", "redis-cli -a"),
    ("MYSQL_PWD=Zpwd2 mysqldump db", "MYSQL_PWD=***"),
    ("env DB_PW=Zpw3 pg_dump db", "DB_PW=***"),
    ("curl --oauth2-bearer Zbearer4 https://x", "--oauth2-bearer"),
    ("curl --header 'Cookie: session=Zcookie5' https://x", "Cookie: ***"),
    ("curl -H 'Cookie: session=Zcookie6' https://x", "Cookie: ***"),
    ("curl -b session=Zcookie7 https://x", "curl -b"),
    ("curl --cookie session=Zcookie8 https://x", "curl --cookie"),
    ("curl --data-urlencode pw=Zurl9 https://x", "pw=***"),
    ("mysql --password -x7Zdash10 db", "mysql --password"),
    ("smbclient //nas/share -U backup%Zsmb11", "backup%***"),
    ("lftp -u backup,Zftp12 sftp://nas", "backup,***"),
    ("htpasswd -b /etc/htpasswd backup Zbatch13", "htpasswd -b /etc/htpasswd backup"),
    ("mysqldump -uroot -p'Zquoted14' app", "mysqldump -uroot"),  # a password quoted for the shell
    ('mysqldump -p"Zquoted15 x" app', "mysqldump"),
]
GAP_SECRETS = [re.findall(r"Z[a-z]+\d+", command)[0] for command, _ in GAP_COMMANDS]


def test_more_written_forms_of_a_password_are_masked_in_the_output_the_log_the_json_and_list(
    project: Project,
) -> None:
    dump = script(project, "dump", DUMP)
    failures = project.root / "failure.jsonl"
    # One failing hook naming every form (a program's flags count after its own name), whose last
    # line names a program and no secret.
    said = "import sys; print('sshpass: not found', file=sys.stderr); sys.exit(127)"
    failing = [PY, "-c", said, *(word for command, _ in GAP_COMMANDS for word in shlex.split(command))]
    hooks_project(project, f"{{after: [{flow(failing)}], on_failure: [{flow([PY, dump, str(failures)])}]}}")
    log = project.root / "run.log"

    ran = project.invoke("backup", "--log-file", str(log))
    as_json = project.invoke("backup", "--format", "json")

    assert ran.code == 1 and as_json.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed" and "status 127: sshpass: not found" in detail, detail
    error = as_json.json()["targets"][0]["error"]
    backup_errors = [record["env"]["BACKUP_ERROR"] for record in records(failures)]
    assert len(backup_errors) == 2
    logged = log.read_text(encoding="utf-8")
    for text in (ran.stdout, ran.stderr, logged, as_json.stdout, as_json.stderr, *backup_errors):
        assert not any(secret in text for secret in GAP_SECRETS), text
    for _, shown in GAP_COMMANDS:
        assert shown in detail and shown in error, (shown, detail)

    # `list` shows each one alone, written as a line for the shell and as a plain string.
    listed_hooks = [{"run": command, "shell": True} for command, _ in GAP_COMMANDS]
    listed_hooks += [{"run": command} for command, _ in GAP_COMMANDS]
    listed_hooks += [{"run": "export RESTIC_PASSWORD=Zexport14; false", "shell": True}]
    hooks_project(project, f"{{before: {flow(listed_hooks)}}}")

    listed = project.invoke("list")
    listed_json = project.invoke("list", "--format", "json")

    assert listed.code == 0 and listed_json.code == 0, listed.output
    for text in (listed.stdout, listed.stderr, listed_json.stdout):
        assert not any(secret in text for secret in [*GAP_SECRETS, "Zexport14"]), text
    before = listed_json.json()[0]["hooks"]["before"]
    for (command, shown), as_line, as_string in zip(GAP_COMMANDS, before, before[len(GAP_COMMANDS) :], strict=False):
        assert shown in as_line and shown in as_string.replace("'", ""), (command, as_line, as_string)
    assert before[-1] == "export RESTIC_PASSWORD=***; false"  # the `;` that ends the command is kept


@pytest.mark.parametrize(
    ("arguments", "secret", "shown"),
    [
        (["curl", "-u", "ops:s3cret", "https://hc.example/x?token=t0k&x=1"], "s3cret", "curl -u 'ops:***'"),
        (["curl", "-H", "X-Api-Key: k3y", "https://x"], "k3y", "'X-Api-Key: ***'"),
        (["curl", "-H", "Authorization: Digest d1g", "https://x"], "d1g", "'Authorization: ***'"),
        (["curl", "--user=ops:Hunter4", "https://u:pa/ss@h/"], "Hunter4", "'--user=ops:***'"),
        (["curl", "https://u:pa/ss@h/"], "pa/ss", "'https://u:***@h/'"),
        (["mysqldump", "-pHunter2", "db"], "Hunter2", "mysqldump '-p***' db"),
        (["sshpass", "-p", "Hunter3", "ssh", "-p", "22", "host"], "Hunter3", "sshpass -p '***' ssh -p 22 host"),
        (["env", "PGPASSWORD=a b", "pg_dump"], "a b", "'PGPASSWORD=***'"),
        (["tool", "--password", "hunter5", "x"], "hunter5", "tool --password '***' x"),
        (["curl", "https://x.example/ping?key=abc123"], "abc123", "'https://x.example/ping?key=***'"),
        (["sqlcmd", "-P", "my s3cr3t", "-Q", "x"], "my s3cr3t", "sqlcmd -P '***'"),
        (["sqlcmd", "-Ps3cr3t"], "s3cr3t", "sqlcmd '-P***'"),
        # Short flags bundled with curl's -u (-su, -fsSu), its value apart or joined; a SAS sig=.
        (["curl", "-su", "admin:S3CRET31", "http://h/"], "S3CRET31", "curl -su 'admin:***'"),
        (["curl", "-fsSu", "admin:S3CRET19", "http://h/"], "S3CRET19", "curl -fsSu 'admin:***'"),
        (["curl", "-fsSuadmin:S3CRET20", "http://h/"], "S3CRET20", "curl '-fsSuadmin:***'"),
        (["curl", "-4su", "user:S3CRET21", "http://h/"], "S3CRET21", "curl -4su 'user:***'"),
        (["curl", "-#u", "user:S3CRET22", "http://h/"], "S3CRET22", "'user:***'"),
        (["curl", "-fsS", "http://h/x?sv=2022&sig=S3CRET32"], "S3CRET32", "'http://h/x?sv=2022&sig=***'"),
    ],
)
def test_a_hooks_credentials_are_masked_in_every_written_form(arguments: list[str], secret: str, shown: str) -> None:
    from backup_core.manifest import redact

    line = redact.argv(tuple(arguments))
    assert secret not in line and shown in line, line
    as_text = redact.text(" ".join(arguments))
    assert secret.split(maxsplit=1)[0] not in as_text, as_text


@pytest.mark.parametrize(
    "arguments",
    [
        ["pkill", "--signal=HUP", "app"],
        ["tool", "--passes=3", "--keyfile=/etc/k"],
        ["smbclient", "--no-pass", "//srv/share"],
        ["app", "--auth", "--verbose"],
        ["docker", "exec", "-u", "www-data:www-data", "c"],
        ["journalctl", "-u", "app"],
        # A program's rules apply after its name only, and a flag's value is no program.
        ["docker", "run", "-u", "1000:1000", "img", "curl", "x"],
        ["rsync", "-pvz", "/var/lib/mysql", "dst"],
        ["tar", "-C", "/srv/sshpass", "-p", "file"],
        ["curl", "--key", "/etc/ssl/client.key", "https://x"],
        ["gpg", "--recv-key", "ABCDEF"],
        ["echo", "monkey=banana"],
        # A program named like a secret, in a hook's last line; the shell's own PWD.
        ["sh:", "1:", "sshpass:", "not", "found"],
        ["echo", "PWD=/srv", "OLDPWD=/tmp", "sort_order=asc"],
        # A flag after a secret's flag is no value of it; curl -b without '=' names a file.
        ["tool", "--password", "-v"],
        ["curl", "-b", "cookies.txt", "https://x"],
        ["htpasswd", "-c", "/etc/htpasswd", "backup"],
        ["redis-cli", "--askpass", "-h", "db"],
        ["lftp", "-u", "backup", "sftp://nas"],
        ["curl", "-fsSL", "-o", "out:file", "https://x/design"],
    ],
)
def test_what_is_no_secret_is_shown_as_written(arguments: list[str]) -> None:
    from backup_core.manifest import redact

    assert redact.argv(tuple(arguments)) == " ".join(arguments)
    assert redact.text(" ".join(arguments)) == " ".join(arguments)


def failing_after_project(project: Project) -> Path:
    dump = script(project, "dump", DUMP)
    failures = project.root / "failure.jsonl"
    refuse = [PY, "-c", "import sys; print('app did not restart', file=sys.stderr); sys.exit(4)"]
    hooks_project(project, f"{{after: [{flow(refuse)}], on_failure: [{flow([PY, dump, str(failures)])}]}}")
    return failures


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_hook_killed_by_a_signal_is_said_so(project: Project) -> None:
    # Python gives a signal as a negative status: the line said "exited with status -9".
    killed = [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    hooks_project(project, f"{{before: [{flow(killed)}]}}")

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed"
    assert detail.endswith("was killed by signal 9 (SIGKILL)"), detail


def test_a_failing_after_hook_fails_the_target_but_keeps_the_archive(project: Project) -> None:
    failing_after_project(project)

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    [archive] = project.archives()
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed"
    assert "after hook" in detail and "status 4" in detail and "app did not restart" in detail
    assert archive.name in detail and "kept" in detail
    with zipfile.ZipFile(archive) as opened:
        assert opened.testzip() is None


def test_a_failing_after_hook_runs_on_failure(project: Project) -> None:
    """README: "`on_failure` runs after any failure"; a failed after hook is one."""
    failures = failing_after_project(project)

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    [failure] = records(failures)
    assert failure["env"]["BACKUP_STATUS"] == "failed"
    assert "after hook" in failure["env"]["BACKUP_ERROR"]


def test_a_hook_timeout_kills_the_hanging_hook_and_fails_the_target(project: Project) -> None:
    hang, dump = script(project, "hang", HANG), script(project, "dump", DUMP)
    pid_file, failures = project.root / "hang.pid", project.root / "failure.jsonl"
    hooks_project(
        project,
        f"{{before: [{{run: {flow([PY, hang, str(pid_file)])}, timeout: 1}}], "
        f"on_failure: [{flow([PY, dump, str(failures)])}]}}",
    )
    try:
        ran = project.invoke("backup", timeout=60)
        pid = int(pid_file.read_text(encoding="utf-8"))
        alive = pid_alive(pid)
    finally:
        if pid_file.exists() and pid_alive(int(pid_file.read_text(encoding="utf-8"))):
            os.kill(int(pid_file.read_text(encoding="utf-8")), signal.SIGKILL)
    assert ran.code == 1, ran.output
    [(status, _, detail)] = results(ran.stdout)
    assert status == "failed" and "timed out" in detail and "1s" in detail
    assert not alive, "the hook outlived its timeout"
    assert not any((project.root / "backups").glob("*.zip"))
    [failure] = records(failures)
    assert "timed out" in failure["env"]["BACKUP_ERROR"]


def _backup_with_a_hanging_command(
    project: Project, hook: str, then: str, timeout: int, settle: float = 0
) -> tuple[Ran, bool]:
    """A backup whose `hook` (a shell) runs a command that never ends, then `then` (`;` or `&`
    and what follows); whether that command was still alive when the run was over (`settle`
    seconds later at most: a process sent SIGKILL may take a moment to die on a loaded machine)."""
    hang = script(project, "hang", HANG)
    pid_file = project.root / "hang.pid"
    command = f"{shlex.quote(PY)} {shlex.quote(hang)} {shlex.quote(str(pid_file))} {then}"
    hooks_project(project, f"{{{hook}: [{{run: {flow(command)}, shell: true, timeout: {timeout}}}]}}")
    try:
        ran = project.invoke("backup", timeout=60)
        wait_for(pid_file.exists, "the command to start")
        pid = int(pid_file.read_text(encoding="utf-8"))
        deadline = time.monotonic() + settle
        while (alive := pid_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text(encoding="utf-8")), signal.SIGKILL)
    return ran, alive


@posix_only
def test_a_shell_hook_timeout_kills_the_command_it_runs(project: Project) -> None:
    # Two commands, so the shell cannot exec the first: the hanging process is the shell's child.
    ran, alive = _backup_with_a_hanging_command(project, "before", "; echo finished", timeout=1, settle=5)
    assert ran.code == 1, ran.output
    assert "timed out" in results(ran.stdout)[0][2]
    assert not alive, "the hook's command kept running after the timeout"


@posix_only
def test_a_hook_that_starts_a_command_in_the_background_is_done_when_it_exits(project: Project) -> None:
    # `myapp &` in an after hook (a service started again) kept the hook's output open: the
    # hook seemed to hang until its timeout, failed the target, and the service was killed.
    ran, alive = _backup_with_a_hanging_command(project, "after", "& echo started", timeout=5)
    assert ran.code == 0, ran.output
    assert results(ran.stdout)[0][:2] == ("changed", "site")
    assert alive, "the command the hook started in the background was killed"


def run_hooks_project(project: Project, targets: str) -> Path:
    dump = script(project, "dump", DUMP)
    out = project.root / "order.jsonl"
    hook = flow([PY, dump, str(out)])
    project.write_manifest(
        f"""
        version: 1
        hooks: {{before: [{hook}], after: [{hook}], on_failure: [{hook}]}}
        targets:
        {targets.replace("HOOK", hook)}
        """
    )
    return out


def test_run_hooks_wrap_the_whole_run(project: Project) -> None:
    project.file("one/a.txt")
    project.file("two/b.txt")
    out = run_hooks_project(
        project,
        """
          - {name: one, path: one, hooks: {before: [HOOK]}}
          - {name: two, path: two, hooks: {before: [HOOK]}}
        """,
    )

    ran = project.invoke("backup", "--jobs", "1")

    assert ran.code == 0, ran.output
    seen = records(out)
    assert [(r["env"]["BACKUP_HOOK"], r["env"].get("BACKUP_TARGET")) for r in seen] == [
        ("before", None), ("before", "one"), ("before", "two"), ("after", None),
    ]  # fmt: skip
    assert (seen[0]["env"]["BACKUP_STATUS"], seen[-1]["env"]["BACKUP_STATUS"]) == ("running", "ok")


def test_run_on_failure_runs_when_a_target_fails(project: Project) -> None:
    project.file("one/a.txt")
    out = run_hooks_project(
        project,
        """
          - {name: one, path: one}
          - {name: gone, path: missing}
        """,
    )

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    seen = [(r["env"]["BACKUP_HOOK"], r["env"]["BACKUP_STATUS"]) for r in records(out)]
    assert seen == [("before", "running"), ("on_failure", "failed")]
    assert len(project.archives(target="one")) == 1
    # It says which target failed and why (it was empty: the run itself had no error).
    error = records(out)[-1]["env"]["BACKUP_ERROR"]
    assert error.startswith("gone: ") and "missing" in error, error


def failing_run_before_project(project: Project) -> tuple[Path, Path]:
    project.file("src/a.txt")
    dump = script(project, "dump", DUMP)
    failures, target_hooks = project.root / "run-failure.jsonl", project.root / "target.jsonl"
    refuse = [PY, "-c", "import sys; print('maintenance window', file=sys.stderr); sys.exit(5)"]
    project.write_manifest(
        f"""
        version: 1
        hooks:
          before: [{flow(refuse)}]
          on_failure: [{flow([PY, dump, str(failures)])}]
        targets:
          - name: site
            path: src
            hooks: {{before: [{flow([PY, dump, str(target_hooks)])}]}}
        """
    )
    return failures, target_hooks


def test_a_failing_run_before_hook_runs_no_target(project: Project) -> None:
    _, target_hooks = failing_run_before_project(project)

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    assert "before hook" in ran.stdout and "maintenance window" in ran.stdout
    assert not project.archives()
    assert not target_hooks.exists()
    # Every target counted failed: the recap said ok=0 changed=0 failed=0 (and JSON targets: []),
    # so a summary built from it showed nothing wrong.
    assert "failed: [site] => not backed up: the run's before hook failed" in ran.stdout
    assert "site : ok=0  changed=0  failed=1  skipped=0" in ran.stdout
    document = project.invoke("backup", "--format", "json").json()
    assert document["recap"]["site"]["failed"] == 1 and document["targets"][0]["status"] == "failed"


def test_a_failing_run_before_hook_runs_the_run_on_failure(project: Project) -> None:
    """README: run-level hooks "work the same" as a target's, whose failing before runs on_failure."""
    failures, _ = failing_run_before_project(project)

    ran = project.invoke("backup")

    assert ran.code == 1, ran.output
    [failure] = records(failures)
    assert failure["env"]["BACKUP_HOOK"] == "on_failure"
    assert failure["env"]["BACKUP_STATUS"] == "failed"


# === progress and logs =========================================================================


def output_project(project: Project) -> list[str]:
    members = ["a.txt", "sub/", "sub/b.txt", "sub/c.txt", "z.txt"]
    for member in members:
        if not member.endswith("/"):
            project.file(f"src/{member}", f"{member}\n" * 100)
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: src}
        """
    )
    return members


def run_without_colour_hints(project: Project, *args: str) -> Ran:
    """`invoke` with a colourful TERM and no NO_COLOR: only the missing terminal turns colour off."""
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE")}
    environment["TERM"] = "xterm-256color"
    command, *rest = args
    completed = subprocess.run(
        [str(INVOKE), "--search-root", str(REPO), command, "--manifest", str(project.manifest), *rest],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return Ran(completed.returncode, completed.stdout, completed.stderr)


def test_without_a_terminal_only_plain_lines_are_printed(project: Project) -> None:
    output_project(project)

    ran = run_without_colour_hints(project, "backup")

    assert ran.code == 0, ran.output
    assert "\r" not in ran.output and "\x1b" not in ran.output, repr(ran.output)
    check_grammar(ran.stdout)
    assert not any(FILE_LINE.match(line) for line in ran.stdout.splitlines())  # no file lines without -v
    assert [s for s, _, _ in results(ran.stdout)] == ["changed"]


def test_verbose_shows_each_file(project: Project) -> None:
    members = output_project(project)

    ran = run_without_colour_hints(project, "backup", "-v")

    assert ran.code == 0, ran.output
    assert "\x1b" not in ran.output
    check_grammar(ran.stdout)
    shown = [m.group(2) for m in map(FILE_LINE.match, ran.stdout.splitlines()) if m and m.group(1) == "site"]
    assert shown == members


def test_log_file_appends_timestamped_plain_lines(project: Project) -> None:
    output_project(project)
    log = project.root / "logs" / "backup.log"
    log.parent.mkdir()

    runs = [project.invoke("backup", "--log-file", str(log), env={"BACKUP_NOW": now}) for now in (NOW1, NOW2)]

    assert all(r.code == 0 for r in runs), [r.output for r in runs]
    lines = log.read_text(encoding="utf-8").splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    assert "\x1b" not in log.read_text(encoding="utf-8")
    plain = [STAMP.sub("", line) for line in lines]
    check_grammar("\n".join(plain))
    assert sum(1 for line in plain if line.startswith("BACKUP [")) == 2
    assert sum(1 for line in plain if RECAP_TITLE.match(line)) == 2
    made = [archive_file_name("site", utc(now[:-1])) for now in (NOW1, NOW2)]
    for name in made:
        assert any(line.startswith(f"changed: [site] => {name} ") for line in plain), name
    for run in runs:  # everything printed is logged too
        for line in run.stdout.splitlines():
            assert line in plain


@posix_only
def test_a_log_file_the_run_creates_is_readable_by_its_owner_only(project: Project) -> None:
    # It names hooks, remotes and files; it was created 0644 by the usual umask beside 0600 archives.
    output_project(project)
    made, given = project.root / "made.log", project.root / "given.log"
    given.write_text("", encoding="utf-8")
    given.chmod(0o640)  # the operator's choice (a log group, say) is kept
    umask = os.umask(0o022)
    try:
        runs = [project.invoke("backup", "--log-file", str(log)) for log in (made, given)]
    finally:
        os.umask(umask)

    assert all(run.code == 0 for run in runs), [run.output for run in runs]
    assert made.stat().st_mode & 0o777 == 0o600
    assert given.stat().st_mode & 0o777 == 0o640
    assert "BACKUP [" in made.read_text(encoding="utf-8") and "BACKUP [" in given.read_text(encoding="utf-8")


@posix_only
def test_on_a_terminal_colours_and_a_progress_bar_are_drawn(project: Project) -> None:
    import fcntl
    import pty
    import struct
    import termios

    output_project(project)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    environment["TERM"] = "xterm-256color"
    try:
        process = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest), "-v"],
            cwd=REPO, env=environment, stdin=secondary, stdout=secondary, stderr=secondary,
        )  # fmt: skip
    finally:
        os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", errors="replace")
    assert "\x1b[33mchanged\x1b[0m: [site] => " in screen  # the status in colour
    assert "━" in screen  # a progress bar was drawn
    assert "RECAP" in screen


# === selection =================================================================================


def selection_project(project: Project) -> None:
    for name in ("web-site", "web-assets", "app-db", "notes"):
        project.file(f"{name}/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: web-site, path: web-site, tags: [web]}
          - {name: web-assets, path: web-assets, tags: [web, static]}
          - {name: app-db, path: app-db, tags: [db]}
          - {name: notes, path: notes, tags: [docs]}
        """
    )


def listed(ran: Ran) -> list[str]:
    return [line[:-1] for line in ran.stdout.splitlines() if line and not line[0].isspace() and line.endswith(":")]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["web-site", "web-assets", "app-db", "notes"]),
        (["--only", "web-*"], ["web-site", "web-assets"]),
        (["--only", "notes", "--only", "app-db"], ["app-db", "notes"]),
        (["-o", "notes,web-site"], ["web-site", "notes"]),
        (["--tags", "web"], ["web-site", "web-assets"]),
        (["-t", "docs,db"], ["app-db", "notes"]),
        (["--tags", "web", "--skip-tags", "static"], ["web-site"]),
        (["--skip-tags", "web"], ["app-db", "notes"]),
        (["--only", "*-*", "--tags", "db"], ["app-db"]),
    ],
)
def test_list_shows_what_a_selection_would_run(project: Project, args: list[str], expected: list[str]) -> None:
    selection_project(project)
    ran = project.invoke("list", *args)
    assert ran.code == 0, ran.output
    assert listed(ran) == expected


def test_backup_runs_only_the_selection(project: Project) -> None:
    selection_project(project)

    ran = project.invoke("backup", "--only", "web-*", "--skip-tags", "static")

    assert ran.code == 0, ran.output
    assert [name for name, _ in recap(ran.stdout)] == ["web-site"]
    assert [p.name.rsplit("-", 1)[0] for p in project.archives()] == ["web-site"]


@pytest.mark.parametrize(
    "args",
    [
        ["backup", "--tags", "nosuchtag"],
        ["backup", "--only", "zzz*"],
        ["backup", "--only", "notes", "--tags", "web"],
        ["backup", "--skip-tags", "web,db,docs"],
        ["backup", "--check", "--tags", "nosuchtag"],
        ["prune", "--tags", "nosuchtag"],
        ["list", "--tags", "nosuchtag"],
    ],
)
def test_selecting_nothing_is_a_usage_error(project: Project, args: list[str]) -> None:
    selection_project(project)
    before = project.snapshot_tree()
    ran = project.invoke(*args)
    assert ran.code == 2, ran.output
    assert "no target" in ran.output
    assert project.snapshot_tree() == before


def test_two_manifests_sharing_a_destination_and_target_name_fail_instead_of_rotating_each_other(
    project: Project,
) -> None:
    # Each counted the other's archives toward its keep (so each kept half), skip_unchanged never
    # skipped, and a restore with one manifest gave back the other's files, exit 0.
    project.file("src/b/x.txt", "b\n")
    project.file("src/c/y.txt", "c\n")
    first = "version: 1\ntargets:\n  - {name: web, path: src/b, destination: shared}\n"
    other = first.replace("src/b", "src/c")
    project.write_manifest(first)
    assert project.invoke("backup").code == 0
    [archive] = project.archives("shared")

    project.write_manifest(other)
    previewed = project.invoke("backup", "--check")
    ran = project.invoke("backup")

    said = f"{project.root / 'shared'} holds archives of web made from {project.root / 'src' / 'b'}, not from"
    assert previewed.code == 1 and said in previewed.stdout, previewed.output
    assert ran.code == 1 and said in ran.stdout and "give each its own destination" in ran.stdout, ran.output
    assert project.archives("shared") == [archive]
    pruned = project.invoke("prune")  # keep: {last: 1} would have counted the first's archives as its own
    assert pruned.code == 1 and said in pruned.stdout, pruned.output
    # The first manifest goes on as before; a source moved on purpose is recorded with --force.
    statused = project.invoke("status")  # the first's archives must not make the other look backed up
    assert statused.code == 1, statused.output
    assert f"made from {project.root / 'src' / 'b'}, not of {project.root / 'src' / 'c'}" in statused.stdout
    project.write_manifest(first)
    assert project.invoke("backup").code == 0
    assert project.invoke("status").code == 0
    project.write_manifest(other)
    assert project.invoke("backup", "--force").code == 0
    assert project.invoke("backup").code == 0
    project.write_manifest(first)
    assert project.invoke("backup").code == 1


@pytest.mark.parametrize("damage", ["emptied", "garbled"])
def test_an_origin_record_that_cannot_be_read_lets_no_run_adopt_the_archives(project: Project, damage: str) -> None:
    # An empty .web.origin counted as no record: the other manifest's run took the first's
    # archive for its own and rotated it away (keep: {last: 1}), exit 0, without a word.
    project.file("src/b/x.txt", "b\n")
    project.file("src/c/y.txt", "c\n")
    first = "version: 1\ntargets:\n  - {name: web, path: src/b, destination: shared, keep: {last: 1}}\n"
    project.write_manifest(first)
    assert project.invoke("backup").code == 0
    [archive] = project.archives("shared")
    record = project.root / "shared" / ".web.origin"
    record.write_bytes(b"" if damage == "emptied" else b"\x00\x00\x00")
    project.write_manifest(first.replace("src/b", "src/c"))

    ran = project.invoke("backup")
    statused = project.invoke("status")

    said = f"{record} is empty or damaged: it records where the archives of web there come from"
    assert ran.code == 1 and said in ran.stdout, ran.output
    assert "backup --force --only web once to record it again" in ran.stdout, ran.output
    assert project.archives("shared") == [archive]
    assert statused.code == 1 and said in statused.stdout, statused.output
    # Told to, a backup records its own origin again.
    assert project.invoke("backup", "--force").code == 0
    assert project.invoke("backup").code == 0


def test_a_host_name_in_another_case_is_the_same_origin_and_a_renamed_host_is_told_so(project: Project) -> None:
    project.file("src/a.txt", "a\n")
    project.write_manifest("version: 1\ntargets:\n  - {name: web, path: src}\n")
    assert project.invoke("backup", env={"BACKUP_HOST": "Web1"}).code == 0
    project.file("src/a.txt", "b\n")
    assert project.invoke("backup", env={"BACKUP_HOST": "web1"}).code == 0

    renamed = project.invoke("backup", env={"BACKUP_HOST": "web2"})

    assert renamed.code == 1, renamed.output
    assert "made on host Web1, not web2" in renamed.stdout and "if this host was renamed" in renamed.stdout
