"""Output problems never stop the backups.

A closed pipe (`| head -1`), a full disk under --log-file or under redirected output, and a
console that is not UTF-8 once skipped targets.  Now every target runs, the problem is
reported on a channel that still works, and the exit status says what happened: 0 when the
reader merely stopped reading, 1 when output the operator asked for was lost.  With
--format json, stdout carries one JSON document whatever the outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, Project

TARGETS = ("one", "two", "three")


def _three_targets(project: Project) -> None:
    for name in TARGETS:
        project.file(f"{name}/data.txt", f"{name}\n")
    lines = "".join(f"  - {{name: {name}, path: {name}}}\n" for name in TARGETS)
    project.write_manifest(f"version: 1\ntargets:\n{lines}")


def _all_archived(project: Project) -> None:
    for name in TARGETS:
        assert len(project.archives(target=name)) == 1, name


def _clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def _command(project: Project, *flags: str) -> list[str]:
    return [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest), *flags]


def test_a_reader_that_stops_after_one_line_skips_no_target(project: Project) -> None:
    _three_targets(project)
    # The run waits a moment after its first line, so the reader is surely gone before the next.
    project.manifest.write_text(
        project.manifest.read_text().replace("version: 1\n", 'version: 1\nhooks: {before: [["sleep", "1"]]}\n')
    )
    process = subprocess.Popen(
        _command(project, "--verbose"),
        cwd=REPO,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # what `| head -1` reads, then it goes away
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=300)
    assert first.startswith("BACKUP [backups.yml: 3 targets]")
    assert process.returncode == 0, stderr
    _all_archived(project)
    assert "stdout was closed by its reader; the run went on" in stderr
    _clean(stderr)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["status", "list"])
def test_a_json_document_that_cannot_be_written_fails_status_and_list(project: Project, command: str) -> None:
    # They exited 0 with nothing said once their JSON went through the escaping writer.
    _three_targets(project)
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            [str(INVOKE), "--search-root", str(REPO), command, "--manifest", str(project.manifest), "--format", "json"],
            cwd=REPO, env={**os.environ, "NO_COLOR": "1"}, stdout=full, stderr=subprocess.PIPE, text=True,
            timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "ERROR: could not write the JSON document to stdout" in done.stderr
    _clean(done.stderr)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "command",
    [["validate"], ["list"], ["status"], ["restore", "one", "--to", "restored"], ["--version"], ["--help"]],
    ids=lambda words: words[0],
)
def test_text_output_to_a_full_disk_is_one_error_line_and_exit_1(project: Project, command: list[str]) -> None:
    # validate, list, restore, --version and --help ended in a traceback; status exited 0 in silence.
    _three_targets(project)
    assert project.invoke("backup").code == 0
    words = command if command[0].startswith("--") else [*command, "--manifest", str(project.manifest)]
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            [sys.executable, "-c", "from backup_core.cli import main; main()", *words],  # the installed `backups`
            cwd=project.root, env={**os.environ, "NO_COLOR": "1"}, stdout=full, stderr=subprocess.PIPE, text=True,
            timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "ERROR: could not write to stdout (No space left on device)" in done.stderr, done.stderr
    _clean(done.stderr)
    if command[0] == "restore":
        assert (project.root / "restored").is_dir()  # the restore itself was done


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_redirected_to_a_full_disk_skips_no_target_and_fails_the_run(project: Project) -> None:
    _three_targets(project)
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            _command(project),
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1"},
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    _all_archived(project)
    assert "ERROR: could not write to stdout (No space left on device)" in done.stderr  # it fails the run
    _clean(done.stderr)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_log_file_on_a_full_disk_skips_no_target_and_fails_the_run(project: Project) -> None:
    _three_targets(project)
    ran = project.invoke("backup", "--log-file", "/dev/full", "--format", "json")
    assert ran.code == 1, ran.output
    _all_archived(project)
    document = ran.json()
    assert [t["status"] for t in document["targets"]] == ["changed"] * 3
    assert any("could not write the log file /dev/full (No space left on device)" in e for e in document["errors"])
    assert "could not write the log file" in ran.stderr
    _clean(ran.stderr)


def test_a_log_file_filling_a_small_filesystem_skips_no_target(project: Project, small_fs: Path) -> None:
    folder = small_fs / f"log-test-{os.getpid()}"
    folder.mkdir()
    try:
        filler = folder / "filler"
        with filler.open("wb") as out:  # leave a few bytes: the log fills the disk halfway through
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass
        _three_targets(project)
        ran = project.invoke("backup", "--verbose", "--log-file", str(folder / "backups.log"))
        assert ran.code == 1, ran.output
        _all_archived(project)
        assert "could not write the log file" in ran.stderr
        _clean(ran.stderr)
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locales")
@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_console_that_is_not_utf8_gets_escaped_names_and_valid_json(project: Project, encoding: str) -> None:
    project.file("one/日本語.txt", "x\n")
    project.file("one/😀.txt", "y\n")
    project.write_manifest("version: 1\ntargets: [{name: one, path: one}]\n")
    locale = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": encoding}
    ran = project.invoke(
        "backup", "--verbose", "--format", "json", "--log-file", str(project.root / "run.log"), env=locale
    )
    assert ran.code == 0, ran.output
    document = ran.json()  # \u escapes: the same JSON whatever the console can show
    assert document["targets"][0]["files"] == 2
    assert "\\u65e5\\u672c\\u8a9e.txt" in ran.stderr  # the text, escaped rather than fatal
    listed = project.invoke("list", "--format", "json", env=locale)
    assert listed.code == 0 and listed.json()[0]["name"] == "one"
    _clean(ran.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locales")
def test_every_command_escapes_names_a_console_cannot_show(project: Project) -> None:
    # Only backup and status were tolerant: list, restore (and status's JSON, printed with
    # ensure_ascii=False) ended in a UnicodeEncodeError traceback on an ASCII or cp1252 console.
    project.file("données/😀.txt", "y\n")
    project.write_manifest("version: 1\ntargets: [{name: one, path: données, destination: sauvés}]\n")
    locale = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii"}
    assert project.invoke("backup", env=locale).code == 0
    shown = {"list": "donn\\xe9es", "status": "ok: [one]", "restore": "r\\xe9sum\\xe9"}
    for command in (["list"], ["status"], ["restore", "one", "--to", str(project.root / "résumé")]):
        ran = project.invoke(*command, env=locale)
        assert ran.code == 0, ran.output
        _clean(ran.stderr)
        assert shown[command[0]] in ran.stdout, ran.stdout
    assert (project.root / "résumé" / "😀.txt").read_text(encoding="utf-8") == "y\n"
    for command in ("list", "status"):
        ran = project.invoke(command, "--format", "json", env=locale)
        assert ran.code == 0, ran.output
        assert "sauvés" in json.dumps(ran.json(), ensure_ascii=False)  # \u escapes, the same JSON


# --- --format json: a document on stdout for every outcome ----------------------------------------


@pytest.mark.parametrize(
    ("flags", "manifest", "message"),
    [
        (["--jobs", "x"], "version: 1\ntargets: [{name: one, path: one}]\n", "--jobs x: give a number"),
        (["--only", "nope"], "version: 1\ntargets: [{name: one, path: one}]\n", "--only nope: no target matches"),
        ([], "version: 2\ntargets: [{name: one, path: one}]\n", "backups.yml:1:1: version: 2 is not one of [1]"),
        ([], "version: 1\ntargets: [{name: one, path: one}\n", "YAML syntax error"),
    ],
)
@pytest.mark.parametrize("command", ["backup", "prune", "verify", "list"])
def test_usage_and_manifest_errors_print_a_json_document(
    project: Project, command: str, flags: list[str], manifest: str, message: str
) -> None:
    if command != "backup" and flags[:1] == ["--jobs"]:
        pytest.skip("only backup takes --jobs")
    project.file("one/a.txt")
    project.write_manifest(manifest)
    ran = project.invoke(command, *flags, "--format", "json")
    assert ran.code == 2, ran.output
    document = ran.json()
    assert document["exit_code"] == 2 and document["command"] == command and document["targets"] == []
    assert any(message in error for error in document["errors"]), document
    assert message in ran.stderr  # the text still goes to people, on stderr
    assert project.archives() == []


@pytest.mark.parametrize(
    ("command", "flag"),
    [("backup", "--log-file"), ("backup", "--metrics-file"), ("prune", "--metrics-file"), ("verify", "--metrics-file")],
)
def test_an_empty_flag_value_refused_before_the_command_runs_prints_a_json_document(
    project: Project, command: str, flag: str
) -> None:
    # Refused before the command itself ran, these printed no document.
    project.file("one/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: one, path: one}]\n")
    ran = project.invoke(command, flag, "", "--format", "json")
    assert ran.code == 2, ran.output
    message = f"{flag} was given an empty value; give one, or leave the flag out"
    assert ran.json()["errors"] == [message] and ran.json()["command"] == command
    assert f"error: {message}" in ran.stderr
    assert project.archives() == []


def test_a_missing_manifest_prints_a_json_document(project: Project) -> None:
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 2
    assert "manifest not found" in ran.json()["errors"][0]
    assert json.loads(ran.stdout)["exit_code"] == 2
