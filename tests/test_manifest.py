"""The manifest: backups.yml read, validated and resolved, and the JSON Schema that describes it.

Every rule is proved at the function level (backup_core.manifest.load), and what an
operator sees is proved through the real `invoke` command in a subprocess.  The
subprocess runs are shared by module-scoped fixtures so the file stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import REPO, Project, Ran, run_invoke

from backup_core import manifest
from backup_core.errors import ManifestError, Problem
from backup_core.manifest import yaml_source

SCHEMA_FILE = REPO / "schema" / "backups.schema.json"
SHIPPED = REPO / "backups.yml"
SAFE_NAME = "is not a safe name: use letters, digits, '-' and '_' (at most 64, starting with a letter or digit)"
SWALLOW = "the backup would swallow its own archives"


def load_problems(path: Path, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ManifestError) as caught:
        manifest.load(path, environ={} if environ is None else environ)
    assert caught.value.exit_code == 2
    return caught.value.problems


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Every problem load() reports, as the located lines an operator reads in the manifest's folder."""
    before = Path.cwd()
    os.chdir(path.parent)  # contextlib.chdir is Python 3.11's
    try:
        return [str(p) for p in load_problems(path, environ)]
    finally:
        os.chdir(before)


def summary(count: int) -> str:
    return f"{count} problem{'s' if count != 1 else ''} in the manifest; nothing was done"


def settings(project: Project, environ: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    loaded = manifest.load(project.manifest, environ={} if environ is None else environ)
    return {t.name: t.settings() for t in loaded.targets}


def write(project: Project, *lines: str) -> Path:
    """A manifest from exact lines (so line and column numbers in the tests are plain to count)."""
    project.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return project.manifest


# --- version and the basic shape -----------------------------------------------------------------


def test_version_1_loads_with_every_setting_resolved(project: Project) -> None:
    write(project, "version: 1", "targets:", "  - name: site", "    path: site")
    loaded = manifest.load(project.manifest, environ={})
    assert loaded.file == project.manifest
    assert loaded.jobs == 1
    assert [t.name for t in loaded.targets] == ["site"]
    assert loaded.targets[0].line == 3
    assert loaded.targets[0].settings() == {
        "name": "site",
        "path": str(project.root / "site"),
        "type": "auto",
        "destination": str(project.root / "backups"),
        "keep": {"last": 7},
        "exclude": [],
        "tags": [],
        "compression": {"level": 2, "inflate_check": True},
        "sqlite": {"check": "integrity", "busy_timeout": 30},
        "skip_unchanged": False,
        "lock_timeout": 0,
        "changed_files": "auto",
        "critical": [],
        "hooks": {"before": [], "after": [], "on_failure": []},
        "offsite": {},
        "max_age": None,
    }


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ("version: 2", "backups.yml:1:1: version: 2 is not one of [1]"),
        ("jobs: 1", "backups.yml:1:1: 'version' is a required property"),
        # One line for one mistake (a string also fails "one of [1]": that line said it twice).
        ('version: "1"', "backups.yml:1:1: version: '1' is a string, expected integer"),
    ],
)
def test_only_version_1_exists(project: Project, first_line: str, expected: str) -> None:
    write(project, first_line, "targets:", "  - name: site", "    path: site")
    assert problems_of(project.manifest) == [expected]


@pytest.mark.parametrize(
    ("hooks_line", "place", "when"),
    [
        ("hooks: {before: [systemctl, stop, app]}", "hooks.before", "before"),
        (
            "  - {name: site, path: site, hooks: {on_failure: [logger, failed]}}",
            "targets[0].hooks.on_failure",
            "on_failure",
        ),
    ],
)
def test_a_command_written_as_a_list_of_hooks_is_explained(
    project: Project, hooks_line: str, place: str, when: str
) -> None:
    # `before: [systemctl, stop, app]` is three hooks, each a bare string: the line says how
    # one command is written rather than only "is a string, expected array".
    if hooks_line.startswith("  -"):
        write(project, "version: 1", "targets:", hooks_line)
    else:
        write(project, "version: 1", hooks_line, "targets:", "  - name: site", "    path: site")
    problems = problems_of(project.manifest)
    assert problems, "a list of bare strings is not a list of hooks"
    assert all(f"{place}[" in p and "is a string, not a hook" in p for p in problems)
    assert f'{when}: [["systemctl", "stop", "app"]]' in problems[0]
    assert f'{when}: [{{run: "systemctl stop app"}}]' in problems[0]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        # An explicit tag reached int() (a traceback) or read `yes` as false, in silence.
        ('lock_timeout: !!int "0x10"', "targets[0].lock_timeout: '0x10' is not a whole number, as its tag !!int says"),
        ("lock_timeout: !!float abc", "targets[0].lock_timeout: 'abc' is not a number, as its tag !!float says"),
        ("skip_unchanged: !!bool yes", "targets[0].skip_unchanged: 'yes' is not true or false, as its tag !!bool says"),
        # Past any float: read as inf, and list showed `lock_timeout: inf`.
        ("lock_timeout: 1e309", "targets[0].lock_timeout: 1e309 is too large a number"),
        # Python's "Could not determine home directory." traceback.
        (
            'destination: "~nosuchuser-here/out"',
            "targets[0].destination: ~nosuchuser-here/out begins with ~, but this "
            "machine has no user 'nosuchuser-here'",
        ),
        # Shell forms stayed text: a folder named `${BK_ROOT:-` was made beside the manifest.
        (
            'destination: "${BK_ROOT:-/srv/bk}/out"',
            "targets[0].destination: '${BK_ROOT:-/srv/bk}' is not a variable this tool expands: only ${NAME} is",
        ),
        ('destination: "${ HOME }/out"', "targets[0].destination: '${ HOME }' is not a variable this tool expands"),
        # Read as a key named "<<": "unknown key '<<'", and what it was to bring in "missing".
        ("<<: {keep: {last: 2}}", "targets[0]: merge keys (<<) are not supported: write the keys out"),
    ],
)
def test_a_value_the_yaml_or_the_system_cannot_make_sense_of_is_one_located_line(
    project: Project, setting: str, expected: str
) -> None:
    write(project, "version: 1", "targets:", "  - name: site", "    path: site", f"    {setting}")
    [problem] = problems_of(project.manifest)
    assert problem.startswith("backups.yml:5:") and expected in problem, problem
    ran = project.invoke("validate")
    assert ran.code == 2 and "Traceback" not in ran.output and expected in ran.stderr + ran.stdout, ran.output


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        (
            "{type: folder, path: nas, max_bandwidth: 10k}",
            "remotes.nas.max_bandwidth: '10k' is not a rate in bytes a second like 512K, 10M or 1G",
        ),
        ("{type: folder, path: nas, prefix: 5}", "remotes.nas.prefix: 5 found, expected text"),
        ("{type: s3, bucket: acme-backups, profile: [a]}", "remotes.nas.profile: a list found, expected text"),
        ("{type: s3, bucket: acme-backups, endpoint: 5}", "remotes.nas.endpoint: 5 found, expected text"),
    ],
)
def test_a_remote_value_of_the_wrong_form_is_a_located_line_in_every_command(
    project: Project, remote: str, expected: str
) -> None:
    # The schema refused these, but the remote was read before its verdict was looked at: every
    # command, `validate` included, ended in a traceback with exit 1 and no JSON.
    write(project, "version: 1", f"remotes: {{nas: {remote}}}", "targets: [{name: site, path: site, offsite: [nas]}]")
    ran = project.invoke("validate")
    assert ran.code == 2 and "Traceback" not in ran.output, ran.output
    assert expected in ran.stderr, ran.output
    ran = project.invoke("backup", "--format", "json")
    assert ran.code == 2 and "Traceback" not in ran.output, ran.output
    [error] = ran.json()["errors"]
    assert error.startswith("backups.yml:2:") and expected in error, error


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("max_age: 30", "targets[0].max_age: 30 found, expected text: a duration like 36h, 14d, 8w, 6m or 1y"),
        ("keep: {within: 5}", "targets[0].keep.within: 5 found, expected text: a duration like 36h, 14d, 8w, 6m or 1y"),
        ("tags: ['12:30']", "targets[0].tags[0]: '12:30' is not a tag: use letters, digits, '.', '-' and '_'"),
        (
            "hooks: {before: [{run: 'true', timeout: -1}]}",
            "targets[0].hooks.before[0].timeout: -1 is too small: it must be more than 0",
        ),
    ],
)
def test_a_value_of_the_wrong_form_says_what_form_it_needs(project: Project, setting: str, expected: str) -> None:
    # They said "30 found, expected text", "does not match '^[A-Za-z0-9_.-]+$'" and "-1 is less
    # than or equal to the minimum of 0": what is wrong, not what to write.
    write(project, "version: 1", f"targets: [{{name: site, path: site, {setting}}}]")
    [problem] = problems_of(project.manifest)
    assert problem.split(": ", 1)[1] == expected, problem


def test_a_hook_quoted_by_a_validation_message_is_masked_in_text_and_json(project: Project) -> None:
    # A hook written as a plain string was quoted as written: the password in it went to the
    # terminal, the journal and the JSON document's errors.
    write(
        project,
        "version: 1",
        'hooks: {before: "curl -u ops:Zrun1 https://hc.example/start"}',
        "targets:",
        '  - {name: site, path: site, hooks: "curl -u ops:Ztarget2 https://hc.example"}',
        '  - {name: db, path: db, hooks: {on_failure: ["curl -u ops:Zlist3 https://hc.example/fail"]}}',
        "  - name: web",
        "    path: web",
        '    hooks: {after: [[curl, --user, !!int "ops:Ztag4"]], before: [{run: "--token=Zrun5", shell: "yes"}]}',
        # Braces around a command make it a mapping's key: named in the key's path and message.
        "  - {name: app, path: app, hooks: {before: [{curl -u ops:Zkey6 https://hc.example}]}}",
    )
    secrets = ("Zrun1", "Ztarget2", "Zlist3", "Ztag4", "Zrun5", "Zkey6")

    validated = project.invoke("validate")
    as_json = project.invoke("backup", "--format", "json")

    assert validated.code == 2 and as_json.code == 2, validated.output
    errors = as_json.json()["errors"]
    for text in (validated.stdout, validated.stderr, as_json.stdout, as_json.stderr):
        assert not any(secret in text for secret in secrets), text
    # Still says which command, and what is wrong with it.
    said = "\n".join(errors)
    assert "hooks.before: 'curl -u ops:*** https://hc.example/start' is a string, expected array" in said
    assert "targets[0].hooks: 'curl -u ops:*** https://hc.example' is a string, expected object" in said
    assert "targets[1].hooks.on_failure[0]: 'curl -u ops:*** https://hc.example/fail' is a string, not a hook" in said
    assert "targets[2].hooks.after[0][2]: this value is not a whole number" in said
    assert "targets[2].hooks.before[0].shell: 'yes' is not true or false" in said
    assert "targets[3].hooks.before[0].curl -u ops:*** https://hc.example: unknown key 'curl -u ops:***" in said


def test_from_the_root_folder_a_manifest_is_named_in_full(project: Project) -> None:
    # A systemd service runs in /: the journal said etc/backups/backups.yml:3:5, which reads
    # as a relative path no one typed.
    write(project, "version: 1", "targets:", "  - {name: site, path: site, kepp: 1}")
    ran = run_invoke("validate", "--manifest", str(project.manifest), cwd=Path(Path.cwd().anchor))
    assert ran.code == 2
    assert ran.stderr.startswith(f"{project.manifest}:3:"), ran.stderr


def test_a_manifest_outside_the_working_folder_is_named_in_full(project: Project) -> None:
    # `-m ../d/../m.yml` was named as given, though the README says "in full when it lies outside".
    write(project, "version: 1", "targets:", "  - {name: site, path: site, kepp: 1}")
    inside = project.root / "inside"
    inside.mkdir()
    ran = run_invoke("validate", "--manifest", f"../inside/../{project.manifest.name}", cwd=inside)
    assert ran.code == 2
    assert ran.stderr.startswith(f"{project.manifest}:3:"), ran.stderr


def test_a_loop_of_links_as_a_source_or_destination_fails_its_target_not_the_run(project: Project) -> None:
    # Path.resolve() raised RuntimeError while the manifest was loaded: a traceback, and no
    # target of the manifest was backed up.
    (project.root / "loop-a").symlink_to("loop-b")
    (project.root / "loop-b").symlink_to("loop-a")
    project.file("site/a.txt")
    write(
        project, "version: 1", "targets:", "  - {name: looped, path: loop-a}",
        "  - {name: site, path: site, destination: loop-a/out}", "  - {name: fine, path: site}",
    )  # fmt: skip
    ran = project.invoke("backup")
    assert ran.code == 1 and "Traceback" not in ran.output, ran.output
    loop = "leads through a loop of symbolic links; fix the links, or name the folder itself"
    assert f"failed: [looped] => {project.root / 'loop-a'} {loop}" in ran.stdout
    assert f"failed: [site] => {project.root / 'loop-a'}" in ran.stdout and loop in ran.stdout
    assert "changed: [fine] =>" in ran.stdout


# --- defaults --------------------------------------------------------------------------------------


def test_defaults_are_inherited_and_a_targets_own_value_wins(project: Project) -> None:
    project.write_manifest(
        """
        version: 1
        defaults:
          destination: store
          keep: {last: 3, daily: 2}
          exclude: ["*.tmp"]
          tags: [nightly]
          compression: {level: 5, inflate_check: false}
          sqlite: {check: quick, busy_timeout: 4}
          skip_unchanged: true
          lock_timeout: 9
          type: folder
          hooks: {before: [[echo, hi]]}
          max_age: 8d
        targets:
          - name: inherits
            path: a
          - name: overrides
            path: b
            destination: elsewhere
            keep: {weekly: 4}
            exclude: ["cache"]
            tags: [web]
            compression: {level: 0}
            sqlite: {check: none, busy_timeout: 1}
            skip_unchanged: false
            lock_timeout: 2
            type: file
            hooks: {after: [[echo, bye]]}
            max_age: 26h
        """
    )
    resolved = settings(project)
    assert resolved["inherits"] == {
        "name": "inherits",
        "path": str(project.root / "a"),
        "type": "folder",
        "destination": str(project.root / "store"),
        "keep": {"last": 3, "daily": 2},
        "exclude": ["*.tmp"],
        "tags": ["nightly"],
        "compression": {"level": 5, "inflate_check": False},
        "sqlite": {"check": "quick", "busy_timeout": 4},
        "skip_unchanged": True,
        "lock_timeout": 9,
        "changed_files": "auto",
        "critical": [],
        "hooks": {"before": ["echo hi"], "after": [], "on_failure": []},
        "offsite": {},
        "max_age": "8d",
    }
    assert resolved["overrides"] == {
        "name": "overrides",
        "path": str(project.root / "b"),
        "type": "file",
        "destination": str(project.root / "elsewhere"),
        "keep": {"weekly": 4},  # a target's keep replaces the default policy, it is not merged into it
        "exclude": ["cache"],
        "tags": ["web"],
        "compression": {"level": 0, "inflate_check": False},  # nested settings merge key by key
        "sqlite": {"check": "none", "busy_timeout": 1},
        "skip_unchanged": False,
        "lock_timeout": 2,
        "changed_files": "auto",
        "critical": [],
        "hooks": {"before": [], "after": ["echo bye"], "on_failure": []},
        "offsite": {},
        "max_age": "26h",
    }


# --- paths -----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder_not_the_cwd(
    project: Project, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_manifest(
        """
        version: 1
        defaults:
          destination: ../vault
        targets:
          - name: site
            path: sub/site
        """
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    target = manifest.load(project.manifest, environ={}).targets[0]
    assert target.path == project.root / "sub" / "site"
    assert target.destination == project.root.parent / "vault"


def test_tilde_and_variables_expand_in_path_and_destination(
    project: Project, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    project.write_manifest(
        """
        version: 1
        defaults:
          destination: ${VAULT}/${HOST_NAME}
        targets:
          - name: notes
            path: ~/notes.txt
          - name: app
            path: ${APP_HOME}/data.db
            destination: ~/backups
          - name: relative
            path: ${REL}/x
        """
    )
    environ = {"VAULT": "/srv/vault", "HOST_NAME": "web1", "APP_HOME": "/opt/app", "REL": "sub"}
    resolved = settings(project, environ)
    assert resolved["notes"]["path"] == str(home / "notes.txt")
    assert resolved["notes"]["destination"] == str(Path("/srv/vault/web1").absolute())
    assert resolved["app"]["path"] == str(Path("/opt/app/data.db").absolute())
    assert resolved["app"]["destination"] == str(home / "backups")
    assert resolved["relative"]["path"] == str(project.root / "sub" / "x")  # expanded, then relative to the manifest


def test_variable_names_ignore_case_where_the_environment_does(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows' environment ignores case, and os.environ shows its names in upper case there:
    # ${ProgramData} was "undefined".  (Only the folding is switched on here: no Windows in CI.)
    from backup_core.manifest import variables

    monkeypatch.setattr(variables, "FOLD_CASE", True)
    write(project, "version: 1", "targets:", "  - name: app", "    path: ${ProgramData}/app/${user_dir}")
    resolved = settings(project, {"PROGRAMDATA": "/srv/data", "USER_DIR": "x"})
    assert resolved["app"]["path"] == str(Path("/srv/data/app/x").absolute())
    assert problems_of(project.manifest, {"PROGRAMDATA": "/srv/data"}) == [
        "backups.yml:4:5: targets[0].path: undefined environment variable ${user_dir}; set it or change the path"
    ]


def test_an_undefined_variable_is_a_located_error_never_an_empty_string(project: Project) -> None:
    write(project, "version: 1", "targets:", "  - name: app", "    path: ${APP_UNSET_1}/data/${ALSO_UNSET_2}")
    assert problems_of(project.manifest, {"HOME": "/root"}) == [
        "backups.yml:4:5: targets[0].path: undefined environment variable ${APP_UNSET_1}, ${ALSO_UNSET_2}; "
        "set it or change the path"
    ]
    # A variable set to an empty string is no better: `${APP}/data` would quietly name /data.
    assert problems_of(project.manifest, {"APP_UNSET_1": "", "ALSO_UNSET_2": "x"}) == [
        "backups.yml:4:5: targets[0].path: empty environment variable ${APP_UNSET_1}; set it or change the path"
    ]
    assert settings(project, {"APP_UNSET_1": "/srv", "ALSO_UNSET_2": "x"})["app"]["path"] == str(
        Path("/srv/data/x").absolute()
    )


def test_an_undefined_variable_in_defaults_is_reported_once_not_once_per_target(project: Project) -> None:
    write(
        project,
        "version: 1",
        "defaults:",
        "  destination: ${VAULT_UNSET_3}/b",
        "targets:",
        "  - {name: a, path: a}",
        "  - {name: b, path: b}",
        "  - {name: c, path: c}",
    )
    assert problems_of(project.manifest) == [
        "backups.yml:3:3: defaults.destination: undefined environment variable ${VAULT_UNSET_3}; "
        "set it or change the path"
    ]


# --- unknown keys and YAML traps ---------------------------------------------------------------------


def test_unknown_keys_are_rejected_with_a_did_you_mean(project: Project) -> None:
    write(
        project,
        "version: 1",
        "job: 2",
        "defaults:",
        "  kepp: {last: 2}",
        "targets:",
        "  - name: site",
        "    path: site",
        "    kepp: {last: 1}",
        "    keep: {lats: 3}",
        "    zzzz: 1",
    )
    assert problems_of(project.manifest) == [
        "backups.yml:2:1: job: unknown key 'job'; did you mean 'jobs'?",
        "backups.yml:4:3: defaults.kepp: unknown key 'kepp'; did you mean 'keep'?",
        "backups.yml:8:5: targets[0].kepp: unknown key 'kepp'; did you mean 'keep'?",
        "backups.yml:9:12: targets[0].keep.lats: unknown key 'lats'; did you mean 'last'?",
        "backups.yml:10:5: targets[0].zzzz: unknown key 'zzzz'; allowed: "
        "changed_files, compression, critical, destination, exclude, hooks, keep, lock_timeout, max_age, name, "
        "offsite, path, skip_unchanged, sqlite, tags, type",
    ]


@pytest.mark.parametrize("word", ["no", "yes", "on", "off", "No", "Y", "n"])
def test_yaml_1_1_booleans_are_errors_not_booleans(project: Project, word: str) -> None:
    write(project, "version: 1", "targets:", "  - name: notes", "    path: notes.txt", f"    skip_unchanged: {word}")
    assert problems_of(project.manifest) == [
        f"backups.yml:5:5: targets[0].skip_unchanged: '{word}' is not true or false; write true or false"
    ]


def test_true_and_false_are_the_booleans(project: Project) -> None:
    write(
        project,
        "version: 1",
        "defaults: {skip_unchanged: true}",
        "targets:",
        "  - {name: a, path: a}",
        "  - {name: b, path: b, skip_unchanged: false}",
    )
    resolved = settings(project)
    assert resolved["a"]["skip_unchanged"] is True
    assert resolved["b"]["skip_unchanged"] is False


def test_a_leading_zero_number_is_flagged_once_and_quoting_it_makes_text(project: Project) -> None:
    write(
        project,
        "version: 1",
        "targets:",
        "  - name: site",
        "    path: site",
        "    compression: {level: 0755}",
        '    tags: [0644, "0755"]',
    )
    assert problems_of(project.manifest) == [
        "backups.yml:5:26: targets[0].compression.level: 0755 has a leading zero; quote it if it is text",
        "backups.yml:6:12: targets[0].tags[0]: 0644 has a leading zero; quote it if it is text",
    ]
    write(project, "version: 1", "targets:", "  - name: site", "    path: site", '    tags: ["0644", "0755"]')
    assert settings(project)["site"]["tags"] == ["0644", "0755"]


def test_a_leading_zero_under_an_unknown_key_is_reported_with_the_key(project: Project) -> None:
    # Quoting the value, as the first sentence says, must not be the way to learn of the second.
    write(project, "version: 1", "targets:", "  - name: site", "    path: site", "    mode: 0755")
    found = problems_of(project.manifest)
    assert "backups.yml:5:11: targets[0].mode: 0755 has a leading zero; quote it if it is text" in found
    assert any("targets[0].mode: unknown key 'mode'" in line for line in found), found
    assert len(found) == 2, found


def test_dates_and_times_stay_text(project: Project) -> None:
    project.write_manifest(
        """
        version: 1
        targets:
          - name: site
            path: site
            tags: [2024-01-01]
            exclude: [12:30, 2024-01-01, 1:2:3]
          - name: notes
            path: notes.txt
            exclude:
              - 12:30
        """
    )
    resolved = settings(project)
    assert resolved["site"]["tags"] == ["2024-01-01"]
    assert resolved["site"]["exclude"] == ["12:30", "2024-01-01", "1:2:3"]
    assert resolved["notes"]["exclude"] == ["12:30"]


def test_duplicate_mapping_keys_are_rejected_with_both_lines(project: Project) -> None:
    write(
        project,
        "version: 1",
        "version: 1",
        "targets:",
        "  - name: site",
        "    path: site",
        "    keep: {last: 1, last: 2}",
        "    path: other",
    )
    assert problems_of(project.manifest) == [
        "backups.yml:2:1: version: duplicate key; first given at line 1",
        "backups.yml:6:21: targets[0].keep.last: duplicate key; first given at line 6",
        "backups.yml:7:5: targets[0].path: duplicate key; first given at line 5",
    ]


def test_yaml_merge_keys_are_not_merged(project: Project) -> None:
    write(project, "version: 1", "targets:", "  - &base {name: a, path: a}", "  - <<: *base", "    name: b")
    problems = problems_of(project.manifest)
    # One line that says what is wrong, not "unknown key '<<'" and a knock-on missing 'path'.
    assert problems == [
        "backups.yml:4:5: targets[1]: merge keys (<<) are not supported: write the keys out, or put shared "
        "settings under defaults:"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\ntargets:\n  - name: a\n    path: src: x\n",
            "backups.yml:4:14: YAML syntax error: mapping values are not allowed here",
        ),
        (
            "version: 1\ntargets:\n  - name: a\n\tpath: src\n",
            "backups.yml:4:1: YAML syntax error: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_a_yaml_syntax_error_is_located(project: Project, text: str, expected: str) -> None:
    project.manifest.write_text(text, encoding="utf-8")
    assert problems_of(project.manifest) == [expected]


def test_invoke_reports_a_yaml_syntax_error_located(project: Project) -> None:
    project.manifest.write_text("version: 1\ntargets:\n  - name: a\n    path: src: x\n", encoding="utf-8")
    before = project.snapshot_tree()
    ran = project.invoke("validate")
    assert (ran.code, ran.stdout) == (2, "")
    assert ran.stderr == (f"backups.yml:4:14: YAML syntax error: mapping values are not allowed here\n{summary(1)}\n")
    assert project.snapshot_tree() == before


def test_a_problem_names_the_manifest_by_its_path_not_its_bare_name(project: Project) -> None:
    # Fleets keep one backups.yml per host or role: "backups.yml:4:14" alone would not say which.
    text = "version: 1\ntargets:\n  - name: a\n    path: src: x\n"
    (project.root / "hosts" / "web").mkdir(parents=True)
    (project.root / "hosts" / "web" / "backups.yml").write_text(text, encoding="utf-8")
    within = run_invoke("validate", "--manifest", str(Path("hosts", "web", "backups.yml")), cwd=project.root)
    assert (within.code, within.stderr.splitlines()[0]) == (
        2,
        f"{Path('hosts', 'web', 'backups.yml')}:4:14: YAML syntax error: mapping values are not allowed here",
    )
    elsewhere = project.root / "elsewhere"
    elsewhere.mkdir()
    absolute = project.root / "hosts" / "web" / "backups.yml"
    outside = run_invoke("validate", "--manifest", str(absolute), cwd=elsewhere)
    assert (outside.code, outside.stderr.splitlines()[0]) == (
        2,
        f"{absolute}:4:14: YAML syntax error: mapping values are not allowed here",
    )
    (project.root / "hosts" / "web" / "backups.yml").write_text(
        "version: 1\ntargets:\n  - name: a\n    path: src\n    destination: out\n", encoding="utf-8"
    )
    valid = run_invoke("validate", "--manifest", str(Path("hosts", "web", "backups.yml")), cwd=project.root)
    assert (valid.code, valid.stdout.splitlines()[0]) == (0, f"{Path('hosts', 'web', 'backups.yml')}: valid, 1 target")


# --- targets: names, duplicates, destinations --------------------------------------------------------


def test_duplicate_target_names_are_rejected_ignoring_case(project: Project) -> None:
    write(
        project,
        "version: 1",
        "targets:",
        "  - name: site",
        "    path: a",
        "  - name: Site",
        "    path: b",
        "  - name: site",
        "    path: c",
    )
    assert problems_of(project.manifest) == [
        "backups.yml:5:5: targets[1].name: duplicate target name 'Site' (also targets[0])",
        "backups.yml:7:5: targets[2].name: duplicate target name 'site' (also targets[0])",
    ]


@pytest.mark.parametrize("name", ["a/b", "a b", "../up", "-dash", "a.b", "a\\b", "x" * 65, ""])
def test_unsafe_target_names_are_rejected(project: Project, name: str) -> None:
    write(project, "version: 1", "targets:", f"  - name: '{name}'", "    path: a")  # single quotes: taken as is
    assert problems_of(project.manifest) == [f"backups.yml:3:5: targets[0].name: '{name}' {SAFE_NAME}"]


@pytest.mark.parametrize("name", ["con", "NUL", "Aux", "prn", "com1", "LPT9"])
def test_windows_device_names_are_rejected_on_every_system(project: Project, name: str) -> None:
    # A folder remote makes a folder per target: on Windows one named CON cannot exist.
    write(project, "version: 1", "targets:", f"  - name: {name}", "    path: a")
    device = "is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9): no file or folder can be named"
    assert problems_of(project.manifest) == [
        f"backups.yml:3:5: targets[0].name: '{name}' {device} so there (a folder remote makes one per target); "
        "choose another"
    ]


@pytest.mark.parametrize("name", ["console", "com10", "com0", "nul2", "lpt", "auxiliary"])
def test_names_that_only_begin_like_a_windows_device_are_accepted(project: Project, name: str) -> None:
    write(project, "version: 1", "targets:", f"  - name: {name}", "    path: a")
    assert list(settings(project)) == [name]


def test_a_safe_name_of_64_characters_is_accepted(project: Project) -> None:
    name = "A" + "b-_9" * 15 + "xyz"
    assert len(name) == 64
    write(project, "version: 1", "targets:", f"  - name: {name}", "    path: a")
    assert list(settings(project)) == [name]


def test_a_destination_inside_its_own_source_is_rejected(project: Project) -> None:
    write(
        project,
        "version: 1",
        "defaults:",
        "  destination: data/backups",
        "targets:",
        "  - name: site",
        "    path: site",
        "    destination: site/backups",
        "  - name: data",
        "    path: data",
        "  - name: same",
        "    path: same",
        "    destination: same",
        "  - name: fine",
        "    path: site2",
    )
    root = project.root
    assert problems_of(project.manifest) == [
        f"backups.yml:3:3: defaults.destination: destination {root / 'data' / 'backups'} is inside the source "
        f"{root / 'data'}; {SWALLOW}",
        f"backups.yml:7:5: targets[0].destination: destination {root / 'site' / 'backups'} is inside the source "
        f"{root / 'site'}; {SWALLOW}",
        f"backups.yml:12:5: targets[2].destination: destination {root / 'same'} is inside the source "
        f"{root / 'same'}; {SWALLOW}",
    ]


def test_a_destination_reached_through_a_link_to_the_source_is_rejected(project: Project) -> None:
    (project.root / "site").mkdir()
    try:
        (project.root / "alias").symlink_to(project.root / "site", target_is_directory=True)
    except OSError:
        pytest.skip("cannot create symbolic links here")
    write(project, "version: 1", "targets:", "  - name: site", "    path: site", "    destination: alias/backups")
    assert problems_of(project.manifest) == [
        f"backups.yml:5:5: targets[0].destination: destination {project.root / 'alias' / 'backups'} is inside the "
        f"source {project.root / 'site'}; {SWALLOW}"
    ]


def test_a_builtin_default_destination_inside_the_source_is_located_at_the_target(project: Project) -> None:
    # No `defaults:` section: the destination is the schema's `backups`, inside the source `.`.
    # The problem must point at the target the operator wrote, not at a defaults key that is not in the file.
    write(project, "version: 1", "targets:", "  - name: everything", "    path: .")
    [problem] = load_problems(project.manifest)
    assert problem.message == f"destination {project.root / 'backups'} is inside the source {project.root}; {SWALLOW}"
    assert problem.where.startswith("targets[0]"), str(problem)
    assert problem.line in (3, 4), str(problem)


def test_targets_holding_each_others_archives_are_refused_before_anything_is_written(project: Project) -> None:
    # Each run archived the other's archives: 100 kB grew 2.5 times a run, until the disk filled.
    # A folder remote inside its own target's source did it alone.  One way only is fine.
    for name in ("disk1/a", "disk2/b", "rsrc/r", "site/s"):
        project.file(name)
    write(
        project,
        "version: 1",
        "remotes:",
        "  nas: {type: folder, path: rsrc/nas}",
        "targets:",
        "  - {name: one, path: disk1, destination: disk2/backups}",
        "  - {name: two, path: disk2, destination: disk1/backups}",
        "  - {name: r, path: rsrc, destination: out, offsite: [nas]}",
        "  - {name: all, path: ., destination: ../elsewhere, exclude: [disk1, disk2, rsrc, out]}",
        "  - {name: site, path: site, destination: all-backups}",
    )
    root = project.root

    ran = run_invoke("backup", "--manifest", str(project.manifest))

    assert ran.code == 2, ran.output
    grows = "would grow every run until the disk is full"
    assert ran.stderr.splitlines()[:2] == [
        f"{project.manifest}:5:17: targets[0].path: source {root / 'disk1'} holds {root / 'disk1' / 'backups'} "
        f"(target 'two': its destination), and the source of 'two' holds {root / 'disk2' / 'backups'} (this "
        f"target: its destination): each would archive the other's archives, and both {grows}; move one of them "
        "out of the other's source, or exclude it there",
        f"{project.manifest}:7:15: targets[2].path: source {root / 'rsrc'} holds {root / 'rsrc' / 'nas' / 'r'}, "
        f"remote nas's copies of it: each backup would archive the copies before it, and they {grows}; give the "
        "remote a folder outside the source, or exclude it",
    ], ran.stderr
    assert "targets[3]" not in ran.stderr and "targets[4]" not in ran.stderr  # one way, or excluded: fine
    assert not any(root.glob("*/backups")) and not (root / "out").exists() and not (root / "rsrc" / "nas").exists()


def _validated(project: Project, files: tuple[str, ...], *targets: str) -> Ran:
    """`invoke validate` of a manifest of these target lines, with these files made first."""
    for name in files:
        project.file(name)
    write(project, "version: 1", "targets:", *targets)
    return run_invoke("validate", "--manifest", str(project.manifest))


def test_three_targets_in_a_ring_of_each_others_archives_are_refused(project: Project) -> None:
    ran = _validated(
        project,
        ("d1/a", "d2/b", "d3/c"),
        "  - {name: one, path: d1, destination: d2/backups}",
        "  - {name: two, path: d2, destination: d3/backups}",
        "  - {name: three, path: d3, destination: d1/backups}",
    )

    assert ran.code == 2, ran.output
    assert ran.stderr.splitlines() == [
        f"{project.manifest}:3:17: targets[0].path: source {project.root / 'd1'} holds the archives of 'three', "
        "whose source holds those of 'two', whose source holds this target's: each run would archive the others' "
        "archives, and all would grow every run until the disk is full; move one destination out of the source "
        "that holds it, or exclude it there",
        "1 problem in the manifest; nothing was done",
    ]


@pytest.mark.parametrize("exclude", ["Backups", "'*.zip'", "Backups/*"])
def test_an_exclude_that_covers_the_other_targets_destination_settles_it(project: Project, exclude: str) -> None:
    # The folder, or every archive in it; matched in the case it is written in, as the walk does.
    ran = _validated(
        project,
        ("disk1/a", "disk2/b"),
        "  - {name: one, path: disk1, destination: disk2/Backups}",
        f"  - {{name: two, path: disk2, destination: disk1/backups/deeper, exclude: [{exclude}]}}",
    )

    assert ran.code == 0, ran.output


@pytest.mark.skipif(os.name == "nt", reason="$ begins real folder names on Windows")
def test_a_bare_dollar_variable_or_command_is_an_error_not_a_folder_named_so(project: Project) -> None:
    # `destination: $HOME/bk` was valid, and a folder named `$HOME` was made beside the manifest.
    project.file("data/a.txt")
    write(
        project,
        "version: 1",
        "targets:",
        "  - {name: a, path: data, destination: $HOME/bk}",
        '  - {name: b, path: "$(pwd)/data"}',
        "  - {name: c, path: data, destination: cost$/fine}",
    )

    ran = run_invoke("backup", "--manifest", str(project.manifest))

    assert ran.code == 2, ran.output
    only = "is not a variable this tool expands: only ${NAME} is"
    assert ran.stderr.splitlines()[:2] == [
        f"{project.manifest}:3:27: targets[0].destination: '$HOME' {only}, with no default or other shell form; "
        "export the variable (to its default, if need be) and write ${NAME}",
        f"{project.manifest}:4:15: targets[1].path: '$(' {only}, with no default or other shell form; "
        "export the variable (to its default, if need be) and write ${NAME}",
    ], ran.stderr
    assert "targets[2]" not in ran.stderr  # a $ that begins no name is a plain character
    assert sorted(p.name for p in project.root.iterdir()) == ["backups.yml", "data"]


@pytest.mark.skipif(os.name == "nt", reason="HOME is POSIX's")
def test_a_tilde_with_home_set_empty_is_an_error_not_the_root_folder(project: Project) -> None:
    # Python takes HOME="" as the home folder: `~/data` named /data, and validate said valid.
    write(project, "version: 1", "targets:", "  - {name: a, path: ~/data}")

    ran = run_invoke("validate", "--manifest", str(project.manifest), env={"HOME": ""})

    assert ran.code == 2, ran.output
    assert f"{project.manifest}:3:15: targets[0].path: ~/data begins with ~, but HOME is set empty; set it or " in (
        ran.stderr
    )


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"], ids=["CR", "CRLF", "LF"])
def test_a_bad_byte_or_an_invisible_character_is_located_whatever_the_line_endings(
    project: Project, newline: str
) -> None:
    # With CR alone, both were said to be on line 1 (at column 50 and 66): only "\n" was counted.
    lines = ["version: 1", "targets:", "  - name: a", "    path: ../data{}"]
    for odd, expected in (
        (b"\xff", "4:18: byte 0xff is not UTF-8"),
        ("\u2028".encode(), "4:18: invisible character U+2028"),
    ):
        text = newline.join(lines).encode().replace(b"{}", odd) + newline.encode()
        project.manifest.write_bytes(text)

        ran = run_invoke("validate", "--manifest", str(project.manifest))

        assert ran.code == 2, ran.output
        assert ran.stderr.startswith(f"{project.manifest}:{expected}"), ran.stderr


# --- keep ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("{last: 0}", "backups.yml:5:12: targets[0].keep.last: 0 is less than the minimum of 1"),
        ("{}", "backups.yml:5:5: targets[0].keep: keep needs at least one rule (last, hourly, daily, ...), "
         "or it keeps nothing"),
        ("{within: 3x}", "backups.yml:5:12: targets[0].keep.within: '3x' is not a duration like 36h, 14d, 8w, "
         "6m or 1y"),
        ("{within: 0d}", "backups.yml:5:12: targets[0].keep.within: '0d' is not a duration like 36h, 14d, 8w, "
         "6m or 1y"),
        ("{daily: -1}", "backups.yml:5:12: targets[0].keep.daily: -1 is less than the minimum of 1"),
        ("{last: '3'}", "backups.yml:5:12: targets[0].keep.last: '3' is a string, expected integer"),
    ],
)  # fmt: skip
def test_keep_policies_that_keep_nothing_or_make_no_sense_are_errors(
    project: Project, keep: str, expected: str
) -> None:
    write(project, "version: 1", "targets:", "  - name: site", "    path: site", f"    keep: {keep}")
    assert problems_of(project.manifest) == [expected]


# --- every problem at once, through invoke -----------------------------------------------------------

MANY_PROBLEMS = (
    "version: 1",
    "targets:",
    "  - name: site",
    "    path: site",
    "    keep: {last: 1, last: 2}",
    "  - name: Site",
    "    path: site",
    "    destination: site/inner",
    "  - name: vars",
    "    path: ${UNSET_VARIABLE_4}/x",
    "  - name: typo",
    "    path: typo",
    "    kepp: {last: 1}",
    "  - name: octal",
    "    path: octal",
    "    compression: {level: 0755}",
    "  - name: flags",
    "    path: flags",
    "    skip_unchanged: no",
    "  - name: web/site",
    "    path: a",
    "  - name: my notes",
    "    path: b",
    "  - name: zero",
    "    path: z",
    "    keep: {last: 0}",
    "  - name: empty",
    "    path: e",
    "    keep: {}",
    "  - name: odd",
    "    path: o",
    "    keep: {within: 3x}",
)


def many_problems_expected(root: Path) -> list[str]:
    return [
        "backups.yml:5:21: targets[0].keep.last: duplicate key; first given at line 5",
        "backups.yml:6:5: targets[1].name: duplicate target name 'Site' (also targets[0])",
        f"backups.yml:8:5: targets[1].destination: destination {root / 'site' / 'inner'} is inside the source "
        f"{root / 'site'}; {SWALLOW}",
        "backups.yml:10:5: targets[2].path: undefined environment variable ${UNSET_VARIABLE_4}; "
        "set it or change the path",
        "backups.yml:13:5: targets[3].kepp: unknown key 'kepp'; did you mean 'keep'?",
        "backups.yml:16:26: targets[4].compression.level: 0755 has a leading zero; quote it if it is text",
        "backups.yml:19:5: targets[5].skip_unchanged: 'no' is not true or false; write true or false",
        f"backups.yml:20:5: targets[6].name: 'web/site' {SAFE_NAME}",
        f"backups.yml:22:5: targets[7].name: 'my notes' {SAFE_NAME}",
        "backups.yml:26:12: targets[8].keep.last: 0 is less than the minimum of 1",
        "backups.yml:29:5: targets[9].keep: keep needs at least one rule (last, hourly, daily, ...), "
        "or it keeps nothing",
        "backups.yml:32:12: targets[10].keep.within: '3x' is not a duration like 36h, 14d, 8w, 6m or 1y",
    ]


@dataclass
class Rejected:
    project: Project
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]
    runs: dict[str, Ran]


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory) -> Rejected:
    """`invoke validate` and `invoke backup` on a manifest with twelve problems (one run each)."""
    project = Project(tmp_path_factory.mktemp("many-problems"))
    write(project, *MANY_PROBLEMS)
    for source in ("site/index.html", "typo", "octal", "flags", "a", "b", "z", "e", "o"):
        project.file(source)  # real sources: a backup that ran would have something to write
    before = project.snapshot_tree()
    runs = {command: project.invoke(command) for command in ("validate", "backup")}
    return Rejected(project, before, project.snapshot_tree(), runs)


def test_every_problem_is_found_at_once_sorted_by_line(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    write(project, *MANY_PROBLEMS)
    expected = many_problems_expected(project.root)
    assert problems_of(project.manifest) == expected
    with pytest.raises(ManifestError) as caught:
        manifest.load(project.manifest, environ={})
    assert str(caught.value) == "\n".join([*expected, summary(12)])


@pytest.mark.parametrize("command", ["validate", "backup"])
def test_invoke_prints_every_problem_on_its_own_line_then_a_summary_and_exits_2(
    rejected: Rejected, command: str
) -> None:
    ran = rejected.runs[command]
    assert ran.code == 2
    assert ran.stdout == ""
    assert ran.stderr.splitlines() == [*many_problems_expected(rejected.project.root), summary(12)]
    assert "Traceback" not in ran.output


def test_a_rejected_manifest_writes_nothing_anywhere(rejected: Rejected) -> None:
    assert rejected.after == rejected.before
    assert not (rejected.project.root / "backups").exists()
    assert not (rejected.project.root / "site" / "inner").exists()


def test_a_problem_outside_targets_does_not_hide_the_problems_of_targets(project: Project) -> None:
    # One run of `invoke validate` must list every problem: a typo in defaults (or at the top level)
    # must not hide a duplicate name or an undefined variable, which do not depend on it.
    write(
        project,
        "version: 1",
        "defaults:",
        "  kepp: {last: 2}",
        "targets:",
        "  - name: site",
        "    path: ${UNSET_VARIABLE_5}",
        "  - name: SITE",
        "    path: b",
    )
    assert problems_of(project.manifest) == [
        "backups.yml:3:3: defaults.kepp: unknown key 'kepp'; did you mean 'keep'?",
        "backups.yml:6:5: targets[0].path: undefined environment variable ${UNSET_VARIABLE_5}; "
        "set it or change the path",
        "backups.yml:7:5: targets[1].name: duplicate target name 'SITE' (also targets[0])",
    ]


# --- missing manifest ------------------------------------------------------------------------------


def test_a_missing_manifest_is_exit_2_with_a_message_naming_the_file(project: Project) -> None:
    missing = project.root / "nowhere" / "backups.yml"
    [problem] = load_problems(missing)
    assert (problem.file, problem.line, problem.message) == (missing, 0, "manifest not found; pass --manifest PATH")

    ran = run_invoke("validate", "--manifest", str(missing))
    assert ran.code == 2
    assert ran.stdout == ""
    assert "manifest not found; pass --manifest PATH" in ran.stderr
    assert ran.stderr.endswith(f"\n{summary(1)}\n")
    assert "Traceback" not in ran.output
    assert list(project.root.iterdir()) == []
    # The operator must learn which file was looked for: the default lies beside tasks.py, not in the cwd.
    assert str(missing) in ran.stderr
    # Named as given from the working folder, as every other problem's file is.
    here = run_invoke("validate", "--manifest", "nowhere/backups.yml", cwd=project.root)
    assert here.stderr.startswith("nowhere/backups.yml: manifest not found; pass --manifest PATH\n"), here.output


# --- validate and list through invoke ------------------------------------------------------------


def test_invoke_validate_reports_a_valid_manifest_and_touches_nothing(project: Project) -> None:
    write(project, "version: 1", "targets:", "  - {name: site, path: site}", "  - {name: notes, path: notes.txt}")
    before = project.snapshot_tree()
    ran = project.invoke("validate")
    assert (ran.code, ran.stdout, ran.stderr) == (0, "backups.yml: valid, 2 targets\n", "")
    assert project.snapshot_tree() == before


def test_invoke_list_shows_resolved_settings_as_text(project: Project) -> None:
    project.write_manifest(
        """
        version: 1
        defaults:
          destination: vault
          keep: {last: 3}
          compression: {level: 6}
        targets:
          - name: site
            path: site
            tags: [web, nightly]
            exclude: ["*.tmp", cache]
          - name: notes
            path: notes.txt
            keep: {daily: 5}
        """
    )
    root = project.root
    before = project.snapshot_tree()
    ran = project.invoke("list")
    assert (ran.code, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        "site:",
        f"  path: {root / 'site'}",
        "  type: auto",
        f"  destination: {root / 'vault'}",
        "  keep: {last: 3}",
        '  exclude: ["*.tmp", cache]',  # `*` starts a YAML alias: quoted so the output reads back
        "  tags: [web, nightly]",
        "  compression: {level: 6, inflate_check: true}",
        "  sqlite: {check: integrity, busy_timeout: 30}",
        "  skip_unchanged: false",
        "  lock_timeout: 0",
        "  changed_files: auto",
        "notes:",
        f"  path: {root / 'notes.txt'}",
        "  type: auto",
        f"  destination: {root / 'vault'}",
        "  keep: {daily: 5}",
        "  compression: {level: 6, inflate_check: true}",
        "  sqlite: {check: integrity, busy_timeout: 30}",
        "  skip_unchanged: false",
        "  lock_timeout: 0",
        "  changed_files: auto",
    ]
    assert project.snapshot_tree() == before


@dataclass
class Listed:
    root: Path  # the project folder, holding the manifest
    cwd: Path  # where invoke ran
    home: Path
    vault: Path
    ran: Ran


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Listed:
    """`invoke list --format json` run from another folder, with a relative --manifest, ~ and ${VAR}."""
    root = tmp_path_factory.mktemp("listed-project")
    cwd = tmp_path_factory.mktemp("listed-cwd")
    home = tmp_path_factory.mktemp("listed-home")
    vault = tmp_path_factory.mktemp("listed-vault")
    project = Project(root)
    project.write_manifest(
        """
        version: 1
        defaults:
          destination: ${VAULT}/archives
          keep: {last: 3}
        targets:
          - name: site
            path: sub/site
            tags: [2024-01-01]
            exclude: [12:30, 2024-01-01]
          - name: notes
            path: ~/notes.txt
            destination: ~/saved
            exclude:
              - 12:30
          - name: app
            path: ${APP_HOME}/data.db
            destination: local
            keep: {daily: 2}
        """
    )
    relative_manifest = os.path.relpath(project.manifest, cwd)
    ran = run_invoke(
        "list", "--manifest", relative_manifest, "--format", "json",
        cwd=cwd, env={"HOME": str(home), "VAULT": str(vault), "APP_HOME": str(home / "app")},
    )  # fmt: skip
    return Listed(root, cwd, home, vault, ran)


def test_invoke_list_json_is_one_document_of_every_target(listed: Listed) -> None:
    assert (listed.ran.code, listed.ran.stderr) == (0, "")
    assert [t["name"] for t in listed.ran.json()] == ["site", "notes", "app"]
    assert list(listed.cwd.iterdir()) == []
    assert list(listed.vault.iterdir()) == []


def test_invoke_resolves_relative_paths_against_the_manifest_folder_not_the_cwd(listed: Listed) -> None:
    by_name = {t["name"]: t for t in listed.ran.json()}
    assert by_name["site"]["path"] == str(listed.root / "sub" / "site")
    assert by_name["app"]["destination"] == str(listed.root / "local")


def test_invoke_expands_tilde_and_variables(listed: Listed) -> None:
    by_name = {t["name"]: t for t in listed.ran.json()}
    assert (by_name["site"]["path"], by_name["site"]["destination"]) == (
        str(listed.root / "sub" / "site"),
        str(listed.vault / "archives"),
    )
    assert (by_name["notes"]["path"], by_name["notes"]["destination"]) == (
        str(listed.home / "notes.txt"),
        str(listed.home / "saved"),
    )
    assert by_name["app"]["path"] == str(listed.home / "app" / "data.db")


def test_invoke_list_shows_inherited_defaults_and_overrides(listed: Listed) -> None:
    by_name = {t["name"]: t for t in listed.ran.json()}
    assert {name: t["keep"] for name, t in by_name.items()} == {
        "site": {"last": 3},
        "notes": {"last": 3},
        "app": {"daily": 2},
    }
    assert by_name["app"] == {
        "name": "app",
        "path": str(listed.home / "app" / "data.db"),
        "type": "auto",
        "destination": str(listed.root / "local"),
        "keep": {"daily": 2},
        "exclude": [],
        "tags": [],
        "compression": {"level": 2, "inflate_check": True},
        "sqlite": {"check": "integrity", "busy_timeout": 30},
        "skip_unchanged": False,
        "lock_timeout": 0,
        "changed_files": "auto",
        "critical": [],
        "hooks": {"before": [], "after": [], "on_failure": []},
        "offsite": {},
        "max_age": None,
    }


def test_invoke_list_keeps_dates_and_times_as_text(listed: Listed) -> None:
    by_name = {t["name"]: t for t in listed.ran.json()}
    assert (by_name["site"]["tags"], by_name["site"]["exclude"]) == (["2024-01-01"], ["12:30", "2024-01-01"])
    assert by_name["notes"]["exclude"] == ["12:30"]


# --- the schema ------------------------------------------------------------------------------------


def schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every sub-schema of the schema (each dict that describes a value, not a `properties` table)."""
    if isinstance(node, list):
        for item in node:
            yield from schema_nodes(item)
        return
    if not isinstance(node, dict):
        return
    yield node
    for key, value in node.items():
        if key in ("properties", "definitions"):
            for sub in value.values():
                yield from schema_nodes(sub)
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "not"):
            yield from schema_nodes(value)


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and "description" not in node:
        node = manifest.schema()["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return node


def test_the_schema_is_a_valid_draft_7_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema == manifest.schema()


def test_every_property_in_the_schema_has_a_description() -> None:
    properties = [
        (name, sub) for node in schema_nodes(manifest.schema()) for name, sub in node.get("properties", {}).items()
    ]
    assert len(properties) >= 44  # root 5, defaults 10, target 12, keep 7, compression 2, sqlite 2, hooks 3, hook 3
    assert [name for name, sub in properties if not resolve(sub).get("description")] == []


def test_every_object_in_the_schema_forbids_unknown_keys() -> None:
    objects = [node for node in schema_nodes(manifest.schema()) if node.get("type") == "object" or "properties" in node]
    assert len(objects) >= 8  # root, defaults, target, keep, compression, sqlite, hooks, hook
    # An object with named keys forbids others; a map (remotes: by name) holds only closed objects.
    assert [
        sorted(node.get("properties", {}))
        for node in objects
        if node.get("additionalProperties") is not False
        and not ("properties" not in node and "$ref" in node.get("additionalProperties", {}))
    ] == []


def test_the_shipped_manifest_validates_and_names_its_schema() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# yaml-language-server: $schema=schema/backups.schema.json"
    assert (SHIPPED.parent / "schema" / "backups.schema.json").resolve() == SCHEMA_FILE.resolve()
    document, problems = yaml_source.load(SHIPPED, text)
    assert problems == []
    assert document is not None
    assert [e.message for e in jsonschema.Draft7Validator(manifest.schema()).iter_errors(document.data)] == []
    loaded = manifest.load(SHIPPED)
    assert [t.name for t in loaded.targets] == ["site", "app-db", "notes"]
    assert all(t.path.is_relative_to(REPO) and t.destination.is_relative_to(REPO) for t in loaded.targets)


def test_schema_and_target_settings_do_not_drift(project: Project) -> None:
    schema = manifest.schema()
    target_properties = schema["properties"]["targets"]["items"]["properties"]
    default_properties = schema["properties"]["defaults"]["properties"]
    # Everything a target can set can be set in defaults, except what makes a target itself.
    assert set(target_properties) - set(default_properties) == {"name", "path"}
    assert set(default_properties) <= set(target_properties)

    # One target that sets every property (and every nested key) to a value that is not its default.
    project.write_manifest(
        """
        version: 1
        targets:
          - name: everything
            path: src
            type: sqlite
            destination: out
            keep: {last: 2, hourly: 3, daily: 4, weekly: 5, monthly: 6, yearly: 7, within: 8d}
            exclude: ['*.log']
            tags: [t1]
            compression: {level: 9, inflate_check: false}
            sqlite: {check: quick, busy_timeout: 11}
            skip_unchanged: true
            lock_timeout: 12
            changed_files: warn
            critical: ['*.db']
            hooks: {before: [[a]], after: [[b]], on_failure: [{run: c d, shell: true, timeout: 5}]}
            offsite: [nas]
            max_age: 2d
        remotes: {nas: {type: folder, path: nas}}
        """
    )
    document, _ = yaml_source.load(project.manifest, project.manifest.read_text(encoding="utf-8"))
    assert document is not None
    # A new schema property fails here until this test (and Target.settings) handle it.
    assert set(document.data["targets"][0]) == set(target_properties)
    shown = settings(project)["everything"]
    assert shown == {
        "name": "everything",
        "path": str(project.root / "src"),
        "type": "sqlite",
        "destination": str(project.root / "out"),
        "keep": {"last": 2, "hourly": 3, "daily": 4, "weekly": 5, "monthly": 6, "yearly": 7, "within": "8d"},
        "exclude": ["*.log"],
        "tags": ["t1"],
        "compression": {"level": 9, "inflate_check": False},
        "sqlite": {"check": "quick", "busy_timeout": 11},
        "skip_unchanged": True,
        "lock_timeout": 12,
        "changed_files": "warn",
        "critical": ["*.db"],
        "hooks": {"before": ["a"], "after": ["b"], "on_failure": ["c d"]},
        "offsite": {"nas": {"type": "folder", "where": str(project.root / "nas")}},
        "max_age": "2d",
    }
    assert set(shown) == set(target_properties)
    for key in ("keep", "compression", "sqlite", "hooks"):
        assert set(shown[key]) == set(schema["definitions"][key]["properties"]), key


def test_schema_defaults_are_the_defaults_a_bare_target_gets(project: Project) -> None:
    write(project, "version: 1", "targets:", "  - {name: bare, path: bare}")
    shown = settings(project)["bare"]
    definitions = manifest.schema()["definitions"]
    keys = ("type", "keep", "exclude", "tags", "compression", "sqlite", "skip_unchanged", "lock_timeout")
    for key in (*keys, "changed_files", "critical"):
        assert shown[key] == definitions[key]["default"], key
    assert shown["destination"] == str(project.root / definitions["destination"]["default"])
    assert manifest.load(project.manifest, environ={}).jobs == manifest.schema()["properties"]["jobs"]["default"]


@pytest.mark.parametrize(
    "run", ['"C:\\Program Files\\Tools\\notify.exe" --to="ops team" C:\\data\\x.txt', 'sc start \\"my svc\\"']
)
def test_a_windows_hook_command_line_reaches_the_program_as_written(
    project: Project, monkeypatch: pytest.MonkeyPatch, run: str
) -> None:
    # POSIX splitting took each backslash of a path for an escape (C:Toolsnotify.exe); any
    # splitting here breaks some Windows syntax (--to="a b", \\"): there each program splits
    # its own command line, so the string is passed as it is.  (Windows' rule switched on here.)
    from backup_core.manifest import loader

    monkeypatch.setattr(loader, "_WHOLE_LINES", True)
    project.file("a.txt")
    project.manifest.write_text(
        "version: 1\ntargets:\n  - name: t\n    path: a.txt\n    hooks:\n      before:\n        - run: "
        + json.dumps(run) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    (hook,) = manifest.load(project.manifest, environ={}).targets[0].hooks.before
    assert (hook.argv, hook.command, hook.line, hook.describe()) == (None, None, run, run)


def test_a_hook_whose_program_is_empty_is_refused_by_validate(project: Project) -> None:
    # Validated, it failed every run: "could not start: Permission denied".
    write(project, "version: 1", "hooks: {after: [['']]}", "targets: [{name: site, path: site}]")
    assert problems_of(project.manifest) == ["backups.yml:2:18: hooks.after[0][0]: '' should be non-empty"]


def test_a_remote_prefix_too_long_for_a_key_is_refused_by_validate(project: Project) -> None:
    # Accepted, every upload to S3 failed with KeyTooLongError.
    write(
        project, "version: 1", f"remotes: {{nas: {{type: folder, path: nas, prefix: {'a' * 900}}}}}",
        "targets: [{name: site, path: site, offsite: [nas]}]",
    )  # fmt: skip
    [problem] = problems_of(project.manifest)
    assert problem.endswith(
        "remotes.nas.prefix: prefix is 900 bytes long; a copy's key (prefix, target name and archive name) may be "
        "at most 1,024 bytes: keep the prefix to 800 bytes"
    ), problem
