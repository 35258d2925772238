"""The installed `backups` command: `make dist` builds it from a clean copy of the repository, offline,
and the wheel installed into a fresh virtual environment backs up the shipped example without a checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from backup_core import __version__
from tests.conftest import REPO, Ran, run_invoke

VENV = Path(sys.executable).parent.parent


def clean_copy(destination: Path) -> Path:
    """The files a fresh clone would have (tracked and new, never ignored): no .venv, no build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def make(clone: Path, *goals: str) -> subprocess.CompletedProcess[str]:
    """The repository's own Makefile recipes, with this test run's virtual environment (never re-installed)."""
    stamp = VENV / ".installed"
    return subprocess.run(
        ["make", "-C", str(clone), f"VENV={VENV}", "-o", str(stamp), *goals],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clone = clean_copy(tmp_path_factory.mktemp("clone"))
    built = make(clone, "dist")
    assert built.returncode == 0, built.stdout + built.stderr
    return clone / "dist"


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("backup_core-*-py3-none-any.whl")
    return wheel


def test_dist_builds_a_wheel_and_an_sdist_holding_every_module_and_the_schema(dist: Path) -> None:
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "backup_core").rglob("*.py")}
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        in_wheel = set(wheel.namelist())
        entry_points = next(n for n in in_wheel if n.endswith(".dist-info/entry_points.txt"))
        assert "backups = backup_core.cli:main" in wheel.read(entry_points).decode()
        schema = wheel.read("backup_core/schema/backups.schema.json")
    # A package missing from pyproject's list would install a command that fails on import.
    assert source - in_wheel == set()
    assert schema == (REPO / "schema" / "backups.schema.json").read_bytes()
    (sdist,) = dist.glob("backup_core-*.tar.gz")
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("/schema/backups.schema.json") for n in archive.getnames())


def run(command: list[str], cwd: Path) -> Ran:
    # No PYTHONPATH and a folder outside the repository: only what the wheel installed can be imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NO_COLOR": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`backups` from the wheel, in a fresh virtual environment (its dependencies from pip's usual sources)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel_of(dist))], check=True, timeout=600
    )  # fmt: skip
    return python.with_name("backups.exe" if os.name == "nt" else "backups")


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_backs_up_the_shipped_example(installed: Path, tmp_path: Path) -> None:
    shutil.copy2(REPO / "backups.yml", tmp_path / "backups.yml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")

    ran = run([str(installed), "backup", "-m", "backups.yml"], cwd=tmp_path)

    assert ran.code == 0, ran.output
    assert "RECAP" in ran.stdout
    archives = sorted(p.name.split("-2")[0] for p in (tmp_path / "backups").glob("*.zip"))
    assert archives == ["app-db", "notes", "site"]
    (site,) = (tmp_path / "backups").glob("site-*.zip")
    with zipfile.ZipFile(site) as archive:
        assert archive.testzip() is None
        assert "index.html" in archive.namelist()


@pytest.mark.slow
def test_the_installed_command_defaults_to_backups_yml_in_the_current_folder(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "backups.yml").write_text("version: 1\ntargets:\n  - {name: notes, path: notes.txt}\n", "utf-8")

    ran = run([str(installed), "validate"], cwd=tmp_path)

    assert (ran.code, ran.stdout.strip()) == (0, "backups.yml: valid, 1 target")
    # Whatever Invoke's own configuration says: an ~/.invoke.yaml or INVOKE_RUNTIME_CONFIG
    # naming another manifest made the command run that one, its header still "backups.yml".
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "backups.yml").write_text(
        "version: 1\ntargets:\n  - {name: a, path: .}\n  - {name: b, path: .}\n", "utf-8"
    )
    config = tmp_path / "home" / ".invoke.yaml"
    config.parent.mkdir()
    config.write_text(f"backups:\n  manifest: {other / 'backups.yml'}\n", encoding="utf-8")
    for variable in ("HOME", "INVOKE_RUNTIME_CONFIG"):
        value = str(config.parent if variable == "HOME" else config)
        done = subprocess.run(
            [str(installed), "validate"],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {variable: value},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "backups.yml: valid, 1 target"), (variable, done)


@pytest.mark.slow
def test_the_installed_command_reports_a_bad_manifest_with_its_place(installed: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yml"
    manifest.write_text("version: 1\ntargets:\n  - {name: notes, path: n.txt, kepp: {last: 2}}\n", "utf-8")

    ran = run([str(installed), "validate", "-m", str(manifest)], cwd=tmp_path)

    assert ran.code == 2
    assert "bad.yml:3:" in ran.output and "did you mean 'keep'?" in ran.output
    assert "Traceback" not in ran.output


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--bogus"], ["backup", "--bogus"], ["nosuchtask"]])
def test_the_installed_command_treats_an_unknown_flag_or_task_as_a_usage_error(
    installed: Path, tmp_path: Path, argv: list[str]
) -> None:
    ran = run([str(installed), *argv], cwd=tmp_path)

    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output


@pytest.mark.slow
def test_a_bad_value_of_one_of_invokes_own_options_is_a_usage_error_not_a_traceback(
    installed: Path, tmp_path: Path
) -> None:
    # Invoke's program answered these with its traceback (a number flag's int(), an unknown
    # list format, a config file of no known type) or with exit 1 (help or list of a name it
    # does not know), where the README promises 2 for any flag the command does not take.
    (tmp_path / "bad.yaml").write_text("a: [\n", encoding="utf-8")
    cases = {
        ("-D", "x", "--list"): "takes a whole number",
        ("--list-depth=x", "validate"): "takes a whole number",
        ("-F", "bogus", "--list"): "-F/--list-format takes one of flat, nested, json",
        ("-f", str(tmp_path / "absent.yml"), "validate"): "no such file",
        ("-f", "/etc/hostname" if Path("/etc/hostname").is_file() else str(installed), "validate"): "not supported",
        ("-f", str(tmp_path / "bad.yaml"), "validate"): "-f/--config",
        ("-h", "nosuch"): "--help nosuch: no such command",
        ("--list=nosuch",): "--list takes no value here",
    }
    for argv, expected in cases.items():
        ran = run([str(installed), *argv], cwd=tmp_path)
        assert ran.code == 2, (argv, ran.output)
        assert expected in ran.stderr and "Traceback" not in ran.output, (argv, ran.output)
    assert run([str(installed), "-F", "json", "--list"], cwd=tmp_path).code == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag", [["-w"], ["--command-timeout", "5"], ["-T", "0"], ["--echo"], ["--pty"], ["--hide", "both"]]
)
def test_invokes_options_for_shell_commands_are_refused_not_ignored(
    installed: Path, tmp_path: Path, flag: list[str]
) -> None:
    # Accepted and ignored, -w read as "a failed backup is only a warning".
    shutil.copy2(REPO / "backups.yml", tmp_path / "backups.yml")
    ran = run([str(installed), *flag, "validate"], cwd=tmp_path)
    assert ran.code == 2, ran.output
    assert "is Invoke's, for shell commands, and does nothing here" in ran.stderr


@pytest.mark.slow
def test_two_commands_on_one_line_are_a_usage_error_and_neither_runs(installed: Path, tmp_path: Path) -> None:
    # Invoke ran each: two JSON documents on one stdout, or, after a failure, the second never
    # ran without a word.
    shutil.copy2(REPO / "backups.yml", tmp_path / "backups.yml")
    ran = run([str(installed), "status", "--format", "json", "backup", "--format", "json"], cwd=tmp_path)
    assert ran.code == 2, ran.output
    assert ran.stdout == ""
    assert ran.stderr == "error: one command at a time (status and backup were given); run each on its own\n"
    assert not (tmp_path / "backups").exists()


@pytest.mark.slow
def test_help_offers_no_option_it_refuses(installed: Path, tmp_path: Path) -> None:
    ran = run([str(installed), "--help"], cwd=tmp_path)
    assert ran.code == 0, ran.output
    # The first column of each line: "-l [STRING], --list[=STRING]   List available tasks, ..."
    columns = [line.strip().split("   ")[0] for line in ran.stdout.splitlines() if line.startswith("  -")]
    flags = {flag for column in columns for flag in re.findall(r"(?<![\w-])--?[\w-]+", column)}
    assert {"--version", "--list", "--config"} <= flags, ran.stdout
    refused = {"-w", "--warn-only", "-T", "--command-timeout", "-e", "--echo", "-p", "--pty", "--hide", "-R", "--dry"}
    assert not refused & flags, ran.stdout
    assert "prompt-for-sudo-password" not in ran.stdout
    # Invoke's --list[=STRING] narrows to a namespace; this command has none and refuses a value.
    assert "-l, --list " in ran.stdout and "--list[" not in ran.stdout and "namespace" not in ran.stdout, ran.stdout
    assert "backup     Back up every selected target" in ran.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="a POSIX pipe closed by its reader")
def test_help_into_a_reader_that_goes_away_ends_without_a_traceback(installed: Path, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first byte, as `| head -1` is after the first line
    try:
        ran = subprocess.run([str(installed), "--help"], stdout=write_end, capture_output=False,
                             stderr=subprocess.PIPE, text=True, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr


@pytest.mark.slow
def test_the_installed_command_lists_the_same_tasks_as_invoke_in_the_checkout(installed: Path, tmp_path: Path) -> None:
    ran = run([str(installed), "--list"], cwd=tmp_path)

    assert ran.code == 0
    for name in ("backup", "list", "prune", "restore", "validate", "verify"):
        assert f"  {name} " in ran.stdout or ran.stdout.rstrip().endswith(f"  {name}"), ran.stdout
    assert run([str(installed), "--version"], cwd=tmp_path).stdout.strip() == f"backups {__version__}"


@pytest.mark.slow
def test_advice_in_a_message_names_the_command_the_operator_ran(installed: Path, tmp_path: Path) -> None:
    # On a host with only the installed command, "see `invoke list`" names a command that is not there.
    shutil.copy2(REPO / "backups.yml", tmp_path / "backups.yml")
    refused = ["backup", "-m", "backups.yml", "--tags", "web", "--skip-tags", "web"]
    advice = "error: the selection matches no target; see `{} list` for names and tags\n"

    ran = run([str(installed), *refused], cwd=tmp_path)
    assert (ran.code, ran.stderr) == (2, advice.format("backups")), ran.output

    # A checkout's invoke says invoke, even run from a hook of an installed command's run.
    ran = run_invoke(*refused, cwd=tmp_path, env={"BACKUP_PROGRAM": "backups"})
    assert (ran.code, ran.stderr) == (2, advice.format("invoke")), ran.output
