"""The manifest loader is bounded: whatever the file holds, the outcome is a manifest or located problems.

A mutation fuzzer once crashed the loader with wrong types in run-level hooks; these
tests let hypothesis mutate a manifest that uses every setting, and allow only two
outcomes: it loads, or ManifestError (exit 2) whose every line names a place.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_core.errors import ManifestError
from backup_core.manifest import load
from tests.conftest import Project

BASE: dict[str, Any] = {
    "version": 1,
    "jobs": 2,
    "hooks": {
        "before": [["true"], {"run": "echo hi", "timeout": 5}],
        "after": [{"run": ["true"], "shell": False}],
        "on_failure": [{"run": "true", "shell": True}],
    },
    "defaults": {
        "destination": "backups",
        "keep": {"last": 3, "daily": 7, "within": "14d"},
        "exclude": ["*.tmp"],
        "compression": {"level": 1, "inflate_check": True},
        "sqlite": {"check": "quick", "busy_timeout": 5},
        "skip_unchanged": False,
        "lock_timeout": 0,
        "hooks": {"before": [["true"]]},
        "tags": ["a"],
        "type": "auto",
    },
    "targets": [
        {"name": "site", "path": "site", "tags": ["web"], "hooks": {"after": [["true"]]}},
        {"name": "db", "path": "data/app.db", "type": "sqlite", "keep": {"last": 1}},
    ],
}

# Values of every YAML type, nested a little: what an operator's typo or a broken template writes.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "${UNSET_FUZZ}", "~", "0755", "no", "12:30", "2024-01-01", "/", "..", "\x00", "a\nb"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested value, the root included."""
    found = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*here, index))
    return found


@st.composite
def mutants(draw: st.DrawFn) -> Any:
    """BASE with one to three places replaced by a value of any type, deleted, or given a new key."""
    data: Any = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        places = _paths(data)
        place = draw(st.sampled_from(places))
        value = draw(_VALUES)
        if not place:
            data = value
            continue
        parent = data
        for part in place[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[place[-1]]
        elif action == "add" and isinstance(parent[place[-1]], dict):
            parent[place[-1]][draw(st.text(max_size=8))] = value
        else:
            parent[place[-1]] = value
        if not isinstance(data, (dict, list)):
            break
    return data


def _check_outcome(file: Path) -> None:
    try:
        load(file, environ={"HOME": "/home/fuzz"})
    except ManifestError as exc:
        assert exc.problems, "a manifest error must say what is wrong"
        for problem in exc.problems:
            text = str(problem)
            # Located: a line and column, or (for a file-level problem) the file's own name.
            assert problem.line > 0 or problem.where == "", text
            assert text.startswith(f"{file.name}:") or text.startswith(str(file)), text
            assert "Traceback" not in text and "Error:" not in text.split(": ", 1)[0], text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutants())
def test_typed_mutants_load_or_give_located_problems(tmp_path: Path, data: Any) -> None:
    file = tmp_path / "backups.yml"
    file.write_text(json.dumps(data), encoding="utf-8")
    _check_outcome(file)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, 2000),
    noise=st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"# \n\t?%@`ab1")), max_size=30),
)
def test_text_mutants_load_or_give_located_problems(tmp_path: Path, cut: int, noise: str) -> None:
    # Block-style YAML cut anywhere and spliced with YAML punctuation: syntax errors must be located too.
    import yaml

    text = yaml.safe_dump(BASE, sort_keys=False)
    cut %= len(text) + 1
    file = tmp_path / "backups.yml"
    file.write_text(text[:cut] + noise + text[cut:], encoding="utf-8")
    _check_outcome(file)


def _both_parsers(text: str) -> list[Any]:
    """What yaml_source.load makes of `text` with libyaml's parser and with the Python parser alone."""
    from backup_core.manifest import yaml_source

    outcomes = []
    fast = yaml_source._CParser
    for parser in (fast, None):
        yaml_source._CParser = parser
        try:
            document, problems = yaml_source.load(Path("backups.yml"), text)
        finally:
            yaml_source._CParser = fast
        outcomes.append((document.data, document._places, problems) if document is not None else (None, None, problems))
    return outcomes


def test_libyaml_parses_manifests_as_the_python_parser_does() -> None:
    from backup_core.manifest import yaml_source

    # PyYAML's wheels carry libyaml: the fast path is the one that runs, so it is the one to prove.
    assert yaml_source._CParser is not None
    root = Path(__file__).resolve().parents[1]
    for file in [root / "backups.yml", *sorted((root / "examples").rglob("*.yml"))]:
        fast, python = _both_parsers(file.read_text(encoding="utf-8"))
        assert fast == python, file


def _assert_never_read_otherwise(document: str) -> None:
    """The two parsers read a document alike, or one of them refuses it with a located message."""
    fast, python = _both_parsers(document)
    if fast == python:
        return
    # libyaml decides.  In a few corners PyYAML's own parser is stricter than libyaml and the
    # YAML spec (the test below), and in a few it reads what libyaml refuses (a document the
    # loader then refuses with libyaml's message).  Never two different readings.
    assert (fast[1] is None) != (python[1] is None), document
    (problem,) = (fast if fast[1] is None else python)[2]
    assert problem.line > 0 and problem.column > 0, problem


@settings(max_examples=300, deadline=None)
@given(data=mutants(), flow=st.booleans(), noise=st.text(max_size=30), cut=st.integers(0, 4000))
def test_libyaml_and_the_python_parser_agree_on_any_document(data: Any, flow: bool, noise: str, cut: int) -> None:
    # The same values, places and problems: a located message must not move with the parser.
    import yaml

    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, allow_unicode=True)
    cut %= len(text) + 1
    for document in (text, text[:cut] + noise + text[cut:]):
        _assert_never_read_otherwise(document)


@pytest.mark.parametrize(
    ("document", "value"),
    [
        ("exclude: [log?.txt]\n", {"exclude": ["log?.txt"]}),
        ("path: /srv/data\t# a tab before the comment\n", {"path": "/srv/data"}),
        ("path: /srv/a\tb\n", {"path": "/srv/a\tb"}),
        ("note: |#\n  text\n", {"note": "text\n"}),
        ("keep: {daily: !x, weekly: 4}\n", {"keep": {"daily": "", "weekly": 4}}),
    ],
)
def test_libyaml_reads_what_the_python_parser_refuses_as_the_spec_does(document: str, value: Any) -> None:
    # A tab inside or after a plain value, a `?` inside a flow value, a `#` straight after a
    # block scalar's `|`, a tag before a flow comma: libyaml (which decides) reads them as the
    # spec does; PyYAML's own parser (used only without libyaml) refuses them, located.
    fast, python = _both_parsers(document)
    assert fast[0] == value and fast[2] == []
    assert python[1] is None and python[2][0].line == 1
    _assert_never_read_otherwise(document)


def test_what_libyaml_refuses_stays_refused_where_the_python_parser_reads_it() -> None:
    # The Python parser reads `timeout:, 5` as two keys; libyaml refuses it.  It is asked
    # again only for a clearer message, never for a second opinion.
    document = "hooks: {before: [{run: x, timeout:, 5}]}\n"
    fast, python = _both_parsers(document)
    assert python[0] == {"hooks": {"before": [{"run": "x", "timeout": None, "5": None}]}}
    assert fast[1] is None
    (problem,) = fast[2]
    assert (problem.line, problem.column) == (1, 34) and "YAML syntax error" in problem.message, problem


@pytest.mark.parametrize("character", ["\x85", "\u2028", "\u2029", "\ufeff"])
def test_an_invisible_line_break_or_mark_is_refused_where_it_is(project: Project, character: str) -> None:
    # The parsers disagree about these, and a path holding one names another file: refused,
    # located, by either parser.  A byte-order mark opening the file is fine (Notepad writes one).
    project.file("site/a.txt")
    text = f"\ufeffversion: 1\ntargets:\n  - name: site\n    path: si{character}te\n"
    for document in (text, text.replace("\n", "\r\n")):
        fast, python = _both_parsers(document)
        assert fast == python
        (problem,) = fast[2]
        assert (problem.line, problem.column) == (4, 13), problem
        project.manifest.write_bytes(document.encode("utf-8"))
        ran = project.invoke("validate")
        assert ran.code == 2, ran.output
        assert f"backups.yml:4:13: invisible character U+{ord(character):04X}" in ran.stderr, ran.stderr
    project.manifest.write_bytes(text.replace(character, "").encode("utf-8"))
    assert project.invoke("validate").code == 0


# --- bounded: alias bombs, recursive aliases, FIFOs, devices, huge files (through invoke) ----------


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines)


def test_an_alias_bomb_is_refused_quickly(project: Project) -> None:
    project.file("site/a.txt")
    project.write_manifest(f"version: 1\n{_bomb(9)}\ntargets: [{{name: site, path: site}}]\n")
    started = time.monotonic()
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    assert "expands to over 100,000 values" in ran.stderr and "backups.yml:" in ran.stderr
    assert "Traceback" not in ran.output
    # A billion values would take hours and gigabytes; refusing is about interpreter start-up.
    assert time.monotonic() - started < 60


def test_aliases_of_modest_size_still_work(project: Project) -> None:
    project.file("site/a.txt")
    project.write_manifest(
        """
        version: 1
        defaults: {hooks: {before: &ping [["true"]], after: *ping}}
        targets: [{name: site, path: site}]
        """
    )
    assert project.invoke("validate").code == 0


def test_a_recursive_alias_is_refused(project: Project) -> None:
    project.write_manifest("version: 1\nloop: &a [1, *a]\ntargets: [{name: site, path: site}]\n")
    ran = project.invoke("validate")
    assert ran.code == 2 and "backups.yml:2:" in ran.stderr and "recursive alias" in ran.stderr, ran.output


def test_deep_nesting_is_refused(project: Project) -> None:
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\nx: " + "[" * 50_000 + "\n")
    ran = project.invoke("validate")
    assert ran.code == 2 and "nested too deeply" in ran.stderr and "Traceback" not in ran.output, ran.output


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_as_manifest_is_refused() -> None:
    from tests.conftest import run_invoke

    ran = run_invoke("validate", "--manifest", "/dev/zero", timeout=60)
    assert ran.code == 2 and "not a regular file" in ran.stderr, ran.output


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs FIFOs")
def test_a_fifo_as_manifest_is_refused_without_waiting(project: Project) -> None:
    os.mkfifo(project.manifest)
    ran = project.invoke("validate", timeout=60)  # no writer ever opens it: a blocking read would hang
    assert ran.code == 2 and "not a regular file" in ran.stderr, ran.output


def test_a_folder_as_manifest_is_refused_in_every_output_mode(project: Project) -> None:
    # It ended in a traceback (IsADirectoryError) and exit 1, with no JSON document.
    folder = project.root / "manifests"
    folder.mkdir()
    from tests.conftest import run_invoke

    ran = run_invoke("validate", "--manifest", str(folder), timeout=60)
    assert ran.code == 2 and "not a regular file" in ran.stderr and "Traceback" not in ran.output, ran.output
    ran = run_invoke("backup", "--manifest", str(folder), "--format", "json", timeout=60)
    assert ran.code == 2 and ran.json()["exit_code"] == 2 and "Traceback" not in ran.output, ran.output


def test_a_huge_manifest_is_refused(project: Project) -> None:
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n" + "# padding\n" * 120_000)
    ran = project.invoke("validate")
    assert ran.code == 2 and "larger than 1024 KiB" in ran.stderr, ran.output


@pytest.mark.parametrize(
    ("hooks", "where"),
    [
        ("hooks: [1]", "backups.yml:2:1: hooks:"),
        ("hooks: {before: 3}", "backups.yml:2:9: hooks.before:"),
        ("hooks: {before: [{run: 5}]}", "hooks.before[0].run:"),
        ("hooks: {after: [[]]}", "hooks.after[0]:"),
        ("hooks: {on_failure: [{run: [1, 2]}]}", "hooks.on_failure[0].run"),
        ("hooks: {before: [{run: x, timeout: fast}]}", "hooks.before[0].timeout:"),
        ("hooks: 'stop app'", "backups.yml:2:1: hooks:"),
    ],
)
def test_wrong_types_in_run_level_hooks_are_located(project: Project, hooks: str, where: str) -> None:
    project.file("site/a.txt")
    project.write_manifest(f"version: 1\n{hooks}\ntargets: [{{name: site, path: site}}]\n")
    for command in ("validate", "backup"):
        ran = project.invoke(command)
        assert ran.code == 2, ran.output
        assert "backups.yml:2:" in ran.stderr and where in ran.stderr, ran.output
        assert "Traceback" not in ran.output and "unexpected" not in ran.output, ran.output
    assert project.archives() == []


@pytest.mark.parametrize(("line", "fixed"), [("version: 1.0", "version: 1"), ("jobs: 2.0", "jobs: 2")])
def test_an_integer_setting_written_as_a_float_is_refused(project: Project, line: str, fixed: str) -> None:
    project.file("site/a.txt")
    extra = "" if line.startswith("version") else "version: 1\n"
    project.write_manifest(f"{extra}{line}\ntargets: [{{name: site, path: site}}]\n")
    ran = project.invoke("validate")
    assert ran.code == 2 and f"{line.split()[1]} found, expected a whole number" in ran.stderr, ran.output
    project.write_manifest(f"{extra}{fixed}\ntargets: [{{name: site, path: site}}]\n")
    assert project.invoke("validate").code == 0


# --- what `list` prints is the manifest's own language; the host has a name under cron ------------


def test_a_manifest_that_is_not_utf8_is_refused_where_the_bad_byte_is(project: Project) -> None:
    project.manifest.write_bytes("version: 1\ntargets:\n  - {name: ä, path: caf".encode() + b"\xe9}\n")
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    # The column counts characters ("ä" is two bytes), as an editor does.
    assert "backups.yml:3:24: byte 0xe9 is not UTF-8; save the manifest as UTF-8" in ran.stderr, ran.output


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("- just a list\n", "backups.yml:1:1: a list found, expected a mapping (key: value)"),
        ("version: 1\ntargets: [{name: a, path: a, keep: {last: true}}]\n", "keep.last: true found, expected a whole"),
        ("version: 1\ntargets: [{name: a, path: a, exclude: {x: 1}}]\n", "exclude: a mapping found, expected a list"),
        ("version: 1\ntargets: [{name: a, path: a, keep: null}]\n", "keep: nothing (null) found, expected a mapping"),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_as_yaml_writes_it(project: Project, document: str, message: str) -> None:
    project.write_manifest(document)
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    assert message in ran.stderr, ran.output
    assert "True" not in ran.stderr and "is not of type" not in ran.stderr


@pytest.mark.parametrize("escape", ["\\U7FFFFFFF", "\\UFFFFFFFF"])
def test_an_escape_past_the_last_unicode_character_is_a_located_error(project: Project, escape: str) -> None:
    # Found by the property test above: PyYAML's own reader raised a bare ValueError here.
    project.write_manifest(f'version: 1\ntargets: [{{name: a, path: "x{escape}"}}]\n')
    ran = project.invoke("validate")
    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output
    assert re.search(r"backups\.yml:2:\d+: ", ran.stderr), ran.output


def test_list_prints_valid_yaml_that_reads_back_as_the_settings(project: Project) -> None:
    import yaml

    project.file("site/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - name: site
            path: site
            exclude: ["*.tmp", cache, "no", "a: b", "1.5", "x y", "[z]", "#c", "&anchor", "日本", "!tag"]
            hooks: {before: [["echo", "a,b"]], after: [{run: "curl -fsS 'https://h.example/?a=1&b'"}]}
        """
    )
    ran = project.invoke("list")
    assert ran.code == 0, ran.output
    printed = yaml.safe_load(ran.stdout)
    as_json = project.invoke("list", "--format", "json").json()[0]
    for key in ("path", "destination", "exclude", "keep", "hooks", "compression", "sqlite"):
        assert printed["site"][key] == as_json[key], key
    assert "exclude: [" in ran.stdout and "cache," in ran.stdout  # plain words stay plain


def test_backup_host_and_an_unexported_hostname_name_the_host(project: Project) -> None:
    import socket

    project.file("site/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: site, destination: "by-host/${BACKUP_HOST}"}
          - {name: other, path: site, destination: "cron/${HOSTNAME}"}
        """
    )
    # cron runs jobs with a bare environment: HOSTNAME is a shell variable, never exported.
    environment = {key: value for key, value in os.environ.items() if key != "HOSTNAME"}
    import subprocess

    from tests.conftest import INVOKE, REPO

    done = subprocess.run(
        [str(INVOKE), "--search-root", str(REPO), "backup", "--manifest", str(project.manifest)],
        env={**environment, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    host = socket.gethostname()
    assert len(project.archives(f"by-host/{host}")) == 1
    assert len(project.archives(f"cron/{host}")) == 1
    # An exported HOSTNAME is the operator's choice and wins.
    ran = project.invoke("list", "--format", "json", env={"HOSTNAME": "named-by-env"})
    assert ran.json()[1]["destination"].endswith("cron/named-by-env")
