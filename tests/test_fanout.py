"""--jobs over many targets runs whole targets in a child process as well as in the command's own.

Through the real `invoke backup`.  Which process ran a target is told by its hook, whose
parent is that process.  Who runs what is arranged with marker files, never with sleeps:
the first target (taken by the command's own process) waits until the second target's hook
has run, which only another process can do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import INVOKE, REPO, Project, flow

PY = sys.executable
MANY = 40  # above the default threshold of 32 targets, so the tests use it as shipped

# Appends "NAME PARENT_PID" to LOG, then does each action in turn: "mark=PATH" makes a file,
# "wait=PATH" waits for one (at most a minute), "kill-parent" kills the process that ran the
# hook, the one running the target.
HOOK = """
import os, signal, sys, time
log, name, actions = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "a", encoding="utf-8") as out:
    out.write(f"{name} {os.getppid()} {os.environ.get('PYTHONPATH', '(unset)')}\\n")
for action in actions:
    verb, _, path = action.partition("=")
    if verb == "mark":
        open(path, "w").close()
    elif verb == "wait":
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                sys.exit(f"gave up waiting for {path}")
            time.sleep(0.02)
    elif verb == "kill-parent":
        os.kill(os.getppid(), signal.SIGKILL)
"""


def _manifest(project: Project, hooks: dict[int, list[str]]) -> None:
    """MANY targets of one small file; target N runs the hook with the actions hooks[N]."""
    script = project.file("hooks/hook.py", HOOK)
    lines = ["version: 1", "targets:"]
    for number in range(MANY):
        name = f"t{number:02d}"
        project.file(f"sources/{name}/a.txt", f"{name}\n" * 10)
        hook = ""
        if number in hooks:
            command = [PY, str(script), str(project.root / "parents.log"), name, *hooks[number]]
            hook = f", hooks: {{before: [{flow(command)}]}}"
        lines.append(f"  - {{name: {name}, path: sources/{name}, keep: {{last: 2}}{hook}}}")
    project.write_manifest("\n".join(lines) + "\n")


def _hooks_seen(project: Project) -> dict[str, tuple[int, str]]:
    """Each hook's target: the process that ran it, and the PYTHONPATH it saw."""
    text = (project.root / "parents.log").read_text(encoding="utf-8")
    return {name: (int(pid), path) for name, pid, path in (line.split(" ", 2) for line in text.splitlines())}


def test_jobs_2_over_many_targets_runs_them_in_two_processes_and_reports_in_manifest_order(project: Project) -> None:
    marker = project.root / "t01.ran"
    # t00 cannot finish until t01's hook has run: only a second process lets the run succeed.
    _manifest(project, {0: [f"wait={marker}"], 1: [f"mark={marker}"]})

    # A threshold that is not a number is the default's (40 targets are past it), not a crash.
    env = {"PYTHONPATH": "/operators/own", "BACKUP_SPREAD_FROM": "abc"}
    ran = project.invoke("backup", "--jobs", "2", "--format", "json", env=env)

    assert ran.code == 0, ran.output
    document = json.loads(ran.stdout)
    assert [t["name"] for t in document["targets"]] == [f"t{n:02d}" for n in range(MANY)]
    assert {t["status"] for t in document["targets"]} == {"changed"}
    seen = _hooks_seen(project)
    # t00 ran in one process, t01 in another: not two threads of one.
    assert seen["t00"][0] != seen["t01"][0]
    # A hook sees the environment the command was given, whichever process runs it.
    assert seen["t00"][1] == seen["t01"][1] == "/operators/own"
    for number in range(MANY):
        (archive,) = project.archives(target=f"t{number:02d}")
        with zipfile.ZipFile(archive) as opened:
            assert opened.testzip() is None
            assert opened.read("a.txt") == f"t{number:02d}\n".encode() * 10
    assert "Traceback" not in ran.stderr


def test_a_long_target_in_the_child_never_holds_up_another_the_command_could_run(project: Project) -> None:
    # t01 (in the child: t00 waits until it has started) cannot finish until t02 has run.  A
    # child sent t02 ahead, behind t01, would have both wait (a minute, then fail); t02 must
    # go to the command's own process.
    t01, t02 = project.root / "t01.started", project.root / "t02.ran"
    _manifest(project, {0: [f"wait={t01}"], 1: [f"mark={t01}", f"wait={t02}"], 2: [f"mark={t02}"]})

    ran = project.invoke("backup", "--jobs", "2", "--format", "json")

    assert ran.code == 0, ran.output
    assert {t["status"] for t in json.loads(ran.stdout)["targets"]} == {"changed"}
    seen = _hooks_seen(project)
    assert seen["t01"][0] != seen["t02"][0] == seen["t00"][0]


@pytest.mark.skipif(os.name != "posix", reason="kills a process with SIGKILL")
def test_a_child_process_killed_in_the_middle_of_a_target_fails_that_target_and_no_other(project: Project) -> None:
    marker = project.root / "t01.ran"
    _manifest(project, {0: [f"wait={marker}"], 1: [f"mark={marker}", "kill-parent"]})
    log = project.root / "run.log"

    ran = project.invoke("backup", "--jobs", "2", "--format", "json", "--log-file", str(log))

    assert ran.code == 1, ran.output
    # The failure has its line like any other, in the log (and so in cron mail, in text mode).
    [line] = [line for line in log.read_text(encoding="utf-8").splitlines() if "failed: [t01]" in line]
    assert "the process that ran this target for --jobs stopped" in line
    document = json.loads(ran.stdout)
    by_name = {t["name"]: t for t in document["targets"]}
    assert list(by_name) == [f"t{n:02d}" for n in range(MANY)]
    assert by_name["t01"]["status"] == "failed"
    assert "the process that ran this target for --jobs stopped" in by_name["t01"]["error"]
    assert "run the backup again" in by_name["t01"]["error"]
    # The targets it had not started ran in the command's own process.
    assert {name for name, t in by_name.items() if t["status"] != "changed"} == {"t01"}
    assert project.archives(target="t01") == []
    assert list((project.root / "backups").glob(".t01-*.partial")) == []
    assert "Traceback" not in ran.stderr


def _big_text(path: Path, mib: int) -> None:
    """Text that deflates slowly at zlib's level 9 (hex of random bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(512 << 10).hex().encode())


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if b"backup_core.fanout" in Path(f"/proc/{c}/cmdline").read_bytes()]


Starter = Callable[[Project], subprocess.Popen[str]]


@pytest.fixture
def start() -> Iterator[Starter]:
    """Start `invoke backup --jobs 2 --format json` without waiting.  A run a failed test left
    going is killed at the end: its child then sees its input close, stops and exits."""
    started: list[subprocess.Popen[str]] = []

    def launch(project: Project) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest), "--jobs", "2",
             "--format", "json"],
            cwd=REPO, env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        return process

    yield launch
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.02)


def _interrupted(process: subprocess.Popen[str], sent: int) -> tuple[dict[str, dict[str, Any]], int, str]:
    """Signal the command while its one child is at work: the targets' JSON by name, the
    child's pid and the command's stderr, once the command has exited with 130."""
    (child,) = _children(process.pid)
    process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    document = json.loads(stdout)
    assert document["interrupted"] is True
    return {t["name"]: t for t in document["targets"]}, child, stderr


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds child processes in /proc")
@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_targets_of_every_process_and_leaves_nothing_behind(
    project: Project, sent: int, start: Starter
) -> None:
    # Two slow targets first: the command's own process takes one, the child the other.
    lines = ["version: 1", "targets:"]
    for name in ("big0", "big1"):
        _big_text(project.root / name / "data.txt", 96)
        lines.append(f"  - {{name: {name}, path: {name}, keep: {{last: 1}}, compression: {{level: 9}}}}")
    for number in range(MANY):
        project.file(f"small/t{number:02d}/a.txt")
        lines.append(f"  - {{name: t{number:02d}, path: small/t{number:02d}}}")
    project.write_manifest("\n".join(lines) + "\n")
    backups = project.root / "backups"
    process = start(project)
    _until(lambda: bool(list(backups.glob(".big0-*.partial")) and list(backups.glob(".big1-*.partial"))), process)

    by_name, child, stderr = _interrupted(process, sent)

    for name in ("big0", "big1"):
        assert by_name[name]["status"] == "failed" and "interrupted" in by_name[name]["error"], by_name[name]
    # No target started after the signal, nothing was placed or left half-written.
    assert [n for n in by_name if n.startswith("t")] == []
    assert sorted(p.name for p in backups.iterdir() if not p.name.endswith((".lock", ".origin"))) == []
    # The child stopped and exited before the command did.
    assert not Path(f"/proc/{child}").exists()
    assert "Traceback" not in stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds child processes in /proc")
@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_for_a_child_at_the_end_still_reports_its_target(
    project: Project, sent: int, start: Starter
) -> None:
    # t01 hangs in the child (its hook waits for a file that never comes; t00 waits until t01
    # has started, so another process runs it); the command's own process runs every other
    # target, then waits for the child: the signal lands there.  (Python 3.11 marks a thread
    # whose join was interrupted as stopped: a second join then returned before the child's
    # answer, losing t01's line and leaving the child running.)
    marker = project.root / "t01.waiting"
    _manifest(project, {0: [f"wait={marker}"], 1: [f"mark={marker}", f"wait={project.root / 'never'}"]})
    process = start(project)
    backups = project.root / "backups"
    _until(lambda: marker.exists() and all(project.archives(target=f"t{n:02d}") for n in (0, *range(2, MANY))), process)

    by_name, child, stderr = _interrupted(process, sent)

    assert list(by_name) == [f"t{n:02d}" for n in range(MANY)]
    assert by_name["t01"]["status"] == "failed" and "interrupted" in by_name["t01"]["error"], by_name["t01"]
    assert list(backups.glob(".t01-*.partial")) == [] and project.archives(target="t01") == []
    assert not Path(f"/proc/{child}").exists()
    assert "Traceback" not in stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds child processes in /proc")
def test_sigterm_to_the_child_alone_stops_its_target_and_the_run_goes_on(project: Project, start: Starter) -> None:
    # systemd or an operator may signal the child itself: it stops its target as the command
    # would, says it runs nothing more, and the command runs the rest.
    marker = project.root / "t01.waiting"
    _manifest(project, {0: [f"wait={marker}"], 1: [f"mark={marker}", f"wait={project.root / 'never'}"]})
    process = start(project)
    _until(marker.exists, process)
    (child,) = _children(process.pid)

    os.kill(child, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 1, stderr
    by_name = {t["name"]: t for t in json.loads(stdout)["targets"]}
    assert list(by_name) == [f"t{n:02d}" for n in range(MANY)]
    assert by_name["t01"]["status"] == "failed" and "interrupted" in by_name["t01"]["error"], by_name["t01"]
    assert {name for name, t in by_name.items() if t["status"] != "changed"} == {"t01"}
    assert "Traceback" not in stderr
