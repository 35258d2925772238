"""The Ansible collection backup_core.fleet, built by `make collection` and run by the real `ansible-playbook`
against three hosts that are all this machine (local connection, each with its own install prefix,
manifest, unit folder and data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup_core import __version__
from tests.conftest import REPO, Ran
from tests.test_installed_command import clean_copy, make

BIN = Path(sys.executable).parent
COLLECTION = REPO / "ansible" / "backup_core" / "fleet"
PLAYBOOK = REPO / "examples" / "fleet" / "playbook.yml"
HOSTS = ("alpha", "beta", "gamma")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible-core is not installed"),
]


@dataclass
class Built:
    wheel: Path
    collections: Path
    wheelhouse: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make dist collection` in a clean copy, the collection installed, the wheel's dependencies at hand."""
    clone = clean_copy(tmp_path_factory.mktemp("clone"))
    done = make(clone, "dist", "collection")
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (clone / "dist").glob("backup_core-*.whl")
    (collection,) = (clone / "dist").glob("backup_core-fleet-*.tar.gz")
    collections = tmp_path_factory.mktemp("collections")
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", str(collection), "-p", str(collections)],
        check=True,
        capture_output=True,
        env=ansible_env(tmp_path_factory.mktemp("galaxy")),
    )
    # The hosts install from this folder with --no-index: three installs cost one download.
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse), str(wheel)],
        check=True,
        timeout=600,
    )
    return Built(wheel, collections, wheelhouse)


def ansible_env(root: Path, collections: Path | None = None) -> dict[str, str]:
    """Ansible's settings for a test: nothing read from or written to the home folder or the working folder."""
    config = root / "ansible.cfg"
    config.write_text("[defaults]\n", encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return environment | {
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(root / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(root / "ansible-remote"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections or root / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_CALLBACK_FORMAT_PRETTY": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "NO_COLOR": "1",
    }


_RESULT = re.compile(r"^(ok|changed|fatal|skipping): \[([^\]]+)\](?:: FAILED!)? => (\{.*\})$")


@dataclass
class Play:
    """What one `ansible-playbook` run did: its exit status, output, and each task's results per host."""

    ran: Ran

    @property
    def code(self) -> int:
        return self.ran.code

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: `host : ok=N changed=N unreachable=N failed=N ...` per host."""
        text = self.ran.stdout.split("PLAY RECAP")[-1]
        found = re.findall(r"^(\S+)\s+:\s+(.*)$", text, re.MULTILINE)
        return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)} for host, counts in found}

    def results(self, task: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """Each host's outcome and result of the task of this name (needs -v for ok results)."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        current = ""
        for line in self.ran.stdout.splitlines():
            header = re.match(r"^(TASK|RUNNING HANDLER|PLAY) \[(.*)\] \*+$", line)
            if header:  # a handler's results are not the task's before it
                current = header.group(2) if header.group(1) == "TASK" else ""
                continue
            result = _RESULT.match(line)
            if result and current.endswith(task):
                found[result.group(2)] = (result.group(1), json.loads(result.group(3)))
        return found


class Fleet:
    """Three hosts that are this machine, each under its own folder, and the playbook run against them."""

    def __init__(self, root: Path, built: Built) -> None:
        self.root = root
        self.built = built
        self.runs = 0
        self.manifests_before: dict[str, bytes] = {}
        for host in HOSTS:
            data = self.home(host) / "data"
            shutil.copytree(REPO / "examples" / "site", data / "site")
            shutil.copy2(REPO / "examples" / "data" / "app.db", data / "app.db")
            (data / "notes.txt").write_text(f"notes of {host}\n", encoding="utf-8")

    def home(self, host: str) -> Path:
        return self.root / host

    def manifest(self, host: str) -> Path:
        return self.home(host) / "etc" / "backups.yml"

    def executable(self, host: str) -> Path:
        return self.home(host) / "opt" / "venv" / "bin" / "backups"

    def units(self, host: str) -> Path:
        return self.home(host) / "systemd"

    def host_vars(self, host: str) -> dict[str, Any]:
        home = self.home(host)
        variables: dict[str, Any] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "backups_python": sys.executable,
            "backups_wheel": str(self.built.wheel),
            "backups_pip_extra_args": ["--no-index", "--find-links", str(self.built.wheelhouse)],
            "backups_prefix": str(home / "opt"),
            "backups_manifest": str(self.manifest(host)),
            "backups_systemd_unit_dir": str(self.units(host)),
            "backups_systemd_enable": False,  # no running systemd here: the units are rendered and verified
            "backups_cron_file": str(home / "cron.d" / "backups"),
            "backups_host_defaults": {"destination": str(home / "backups")},
            "backups_targets": [
                {"name": "site", "path": str(home / "data" / "site"), "exclude": ["*.tmp"], "tags": ["web"]},
                {"name": "app-db", "path": str(home / "data" / "app.db"), "tags": ["db"]},
                {"name": "notes", "path": str(home / "data" / "notes.txt")},
            ],
        }
        if host == "beta":  # beta layers targets: a group's entry and the host's own are merged by name
            variables |= {
                "backups_group_targets": [{"name": "notes", "keep": {"last": 9}, "tags": ["docs"]}],
                "backups_host_targets": [
                    {"name": "notes", "tags": ["mine"]},
                    {"name": "extra", "path": str(home / "data" / "notes.txt")},
                ],
            }
        return variables

    def inventory(self, **changes: dict[str, Any]) -> Path:
        """An inventory of the three hosts; `changes` adds or replaces variables of one host, or adds a
        host with only the variables given (another name for one of the three takes its host_vars)."""
        group_vars = {"backups_version": __version__, "backups_defaults": {"keep": {"last": 3}}, "backups_jobs": 2}
        hosts = {host: self.host_vars(host) for host in HOSTS}
        for host, variables in changes.items():
            hosts[host] = hosts.get(host, {}) | variables
        path = self.root / f"inventory-{self.runs}.yml"
        path.write_text(json.dumps({"backup_servers": {"hosts": hosts, "vars": group_vars}}), encoding="utf-8")
        return path

    def playbook(self, *args: str, inventory: Path | None = None) -> Play:
        self.runs += 1
        # The operator's copy, in the folder that holds the hosts' files: Ansible runs a local
        # host's modules in the playbook's folder, so a path the role hands over relative to it
        # would show in its messages.
        playbook = self.root / PLAYBOOK.name
        if not playbook.exists():
            shutil.copyfile(PLAYBOOK, playbook)
        command = [str(BIN / "ansible-playbook"), "-v", "-i", str(inventory or self.inventory()), str(playbook), *args]
        done = subprocess.run(
            command,
            cwd=self.root,
            env=ansible_env(self.root, self.built.collections),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return Play(Ran(done.returncode, done.stdout, done.stderr))

    def tree(self) -> dict[str, tuple[int, int]]:
        """Every file and folder of every host, files with their size and mtime (byte code caches aside).

        A folder's own mtime is left out: check mode validates and previews the manifest a run would
        install in a scratch file beside the installed one, removed at once, which touches the folder."""
        return {
            str(p.relative_to(self.root)): (0, 0) if p.is_dir() else (p.lstat().st_size, p.lstat().st_mtime_ns)
            for host in HOSTS
            for p in sorted(self.home(host).rglob("*"))
            if "__pycache__" not in p.parts
        }


@dataclass
class Deployed:
    fleet: Fleet
    first: Play
    second: Play
    cron: Fleet


@pytest.fixture(scope="module")
def deployed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """The role deployed twice to the three hosts, without running a backup.

    The first deploy also schedules, by cron, beta of a fleet of its own (host cron_beta), for the
    cron test: another host adds little to a run, while a run of its own cost about as much as this one."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), built)
    cron = Fleet(tmp_path_factory.mktemp("cron"), built)
    cron_beta = cron.host_vars("beta") | {"backups_schedule": "cron"}
    first = fleet.playbook("--skip-tags", "backups_run", inventory=fleet.inventory(cron_beta=cron_beta))
    second = fleet.playbook("--skip-tags", "backups_run")
    return Deployed(fleet, first, second, cron)


def test_the_role_installs_validates_and_schedules_on_every_host(deployed: Deployed) -> None:
    fleet = deployed.fleet
    assert deployed.first.code == 0, deployed.first.ran.output
    for host in HOSTS:
        assert deployed.first.recap()[host]["failed"] == 0
        version = subprocess.run([fleet.executable(host), "--version"], capture_output=True, text=True, check=True)
        assert version.stdout.strip() == f"backups {__version__}"
        manifest = yaml.safe_load(fleet.manifest(host).read_text(encoding="utf-8"))
        assert manifest["defaults"] == {"keep": {"last": 3}, "destination": str(fleet.home(host) / "backups")}
        names = ["site", "app-db", "notes", "extra"] if host == "beta" else ["site", "app-db", "notes"]
        assert [t["name"] for t in manifest["targets"]] == names
        assert (fleet.manifest(host).stat().st_mode & 0o777) == 0o600
        service = (fleet.units(host) / "backups.service").read_text(encoding="utf-8")
        assert f'ExecStart="{fleet.executable(host)}" "backup" "--manifest" "{fleet.manifest(host)}"' in service
        timer = (fleet.units(host) / "backups.timer").read_text(encoding="utf-8")
        assert "Persistent=true" in timer and "RandomizedDelaySec=3600" in timer
        assert not (fleet.home(host) / "cron.d" / "backups").exists()
        assert not (fleet.home(host) / "backups").exists(), "deploying must not run a backup"


def test_a_second_run_of_the_role_changes_nothing(deployed: Deployed) -> None:
    assert deployed.second.code == 0, deployed.second.ran.output
    recap = deployed.second.recap()
    assert sorted(recap) == sorted(HOSTS)
    assert all(counts["changed"] == 0 and counts["failed"] == 0 for counts in recap.values()), recap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_rendered_units_pass_systemd_analyze_verify(deployed: Deployed) -> None:
    units = deployed.fleet.units("alpha")
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "backups.timer"), str(units / "backups.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "", verified.stderr


def test_targets_layer_by_name_across_group_and_host(deployed: Deployed) -> None:
    fleet = deployed.fleet
    targets = yaml.safe_load(fleet.manifest("beta").read_text(encoding="utf-8"))["targets"]

    assert targets[2] == {
        "name": "notes",
        "path": str(fleet.home("beta") / "data" / "notes.txt"),
        "keep": {"last": 9},
        "tags": ["mine"],  # a later layer's key replaces the earlier one's whole
    }
    assert targets[3] == {"name": "extra", "path": str(fleet.home("beta") / "data" / "notes.txt")}


SECRET = "SECRETzq60b"


@dataclass
class Previewed:
    fleet: Fleet
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]
    installed: dict[str, bytes]
    play: Play


@pytest.fixture(scope="module")
def previewed(deployed: Deployed) -> Previewed:
    """The whole playbook (role, then a backup) in check mode with --diff at -vvv, one scenario per host:
    alpha as deployed but for a hook whose URL holds a password, beta with a target added by a path
    relative to the manifest's folder, gamma with an invalid target.  One run, not four: Ansible's
    cost per task, not per host, is what a run costs."""
    fleet = deployed.fleet
    hooks = {"after": [["curl", "-fsS", f"https://ops:{SECRET}@hc.example/ping"]]}
    # Relative to the manifest's folder: previewed from a file anywhere else, it would not be found.
    beta = [*fleet.host_vars("beta")["backups_host_targets"], {"name": "added", "path": "../data/notes.txt"}]
    gamma = fleet.host_vars("gamma")["backups_targets"] + [{"name": "broken", "path": "x", "keep": {"last": 0}}]
    # flags: beta again, with a flag the scheduled command refuses (the preview passed it).
    flags = fleet.host_vars("beta") | {"backups_backup_args": ["--bogus"]}
    inventory = fleet.inventory(
        alpha={"backups_hooks": hooks},
        beta={"backups_host_targets": beta},
        gamma={"backups_targets": gamma},
        flags=flags,
    )
    before = fleet.tree()
    installed = {host: fleet.manifest(host).read_bytes() for host in HOSTS}
    play = fleet.playbook("--check", "--diff", "-vvv", inventory=inventory)
    return Previewed(fleet, before, fleet.tree(), installed, play)


def test_check_mode_writes_nothing_and_reports_what_a_run_would_do(previewed: Previewed) -> None:
    play = previewed.play

    assert play.recap()["alpha"]["failed"] == 0, play.ran.output
    assert previewed.after == previewed.before
    outcome, result = play.results("Back up every target now")["alpha"]
    assert result["check"] is True and "--check" in result["cmd"]
    assert {t["name"]: (t["status"], t["reason"]) for t in result["results"]}["app-db"] == ("changed", "would archive")
    assert all(t["archive"] is None for t in result["results"])
    assert outcome == "changed"


def test_check_mode_previews_the_manifest_a_run_would_install_not_the_installed_one(previewed: Previewed) -> None:
    fleet, play = previewed.fleet, previewed.play

    assert play.recap()["beta"]["failed"] == 0, play.ran.output
    outcome, validated = play.results("Validate the rendered manifest on the host")["beta"]
    assert (outcome, validated["rc"]) == ("ok", 0), validated
    assert Path(validated["cmd"][-1]).parent == fleet.manifest("beta").parent, "validated beside the installed one"
    outcome, result = play.results("Back up every target now")["beta"]
    assert result["check"] is True and result["candidate"] is True, result
    assert result["manifest"] == str(fleet.manifest("beta"))
    assert Path(result["cmd"][result["cmd"].index("--manifest") + 1]).parent == fleet.manifest("beta").parent
    previewed_targets = {t["name"]: (t["status"], t["reason"]) for t in result["results"]}
    assert list(previewed_targets) == ["site", "app-db", "notes", "extra", "added"]
    assert previewed_targets["added"] == ("changed", "would archive"), result
    assert fleet.manifest("beta").read_bytes() == previewed.installed["beta"]
    assert previewed.after == previewed.before, "the scratch files are removed"


def test_no_verbosity_or_diff_shows_a_credential_written_into_the_manifest(previewed: Previewed) -> None:
    # Check mode at -v printed the whole rendered manifest (a fact, and the module's argument at
    # -vvv), and --diff showed the manifest's lines: a hook's password with them (alpha's).
    play = previewed.play

    assert play.recap()["alpha"]["failed"] == 0, play.ran.output
    assert "backups_preview" in play.ran.stdout  # the fact was set, its value censored
    assert SECRET not in play.ran.output


def test_check_mode_fails_a_host_whose_inventory_a_run_would_refuse(previewed: Previewed) -> None:
    play = previewed.play

    assert play.code == 2, play.ran.output
    outcome, result = play.results("Stop, keeping the installed manifest, when the rendered one is invalid")["gamma"]
    assert outcome == "fatal"
    assert re.search(r"targets\[3\]\.keep\.last: 0 is less than the minimum", "\n".join(result["msg"]))
    assert play.recap()["alpha"]["failed"] == 0 and play.recap()["beta"]["failed"] == 0
    assert previewed.after == previewed.before  # a preview still writes nothing on the hosts
    # The scheduled command's flags, checked by a run, are checked by its preview too.
    outcome, result = play.results("Stop when the scheduled command would refuse its flags")["flags"]
    assert outcome == "fatal", result
    assert result["msg"][0] == "backups_backup_args --bogus would make every scheduled run fail:", result


@dataclass
class Fresh:
    fleet: Fleet
    before: dict[str, tuple[int, int]]
    play: Play


@pytest.fixture(scope="module")
def fresh(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Fresh:
    """The whole playbook in check mode against three hosts where nothing is installed yet."""
    fleet = Fleet(tmp_path_factory.mktemp("fresh"), built)
    before = fleet.tree()
    return Fresh(fleet, before, fleet.playbook("--check"))


def test_check_mode_on_a_fresh_host_says_what_it_cannot_check_and_fails_no_host_for_it(fresh: Fresh) -> None:
    play = fresh.play

    assert play.code == 0, play.ran.output
    assert all(counts["failed"] == 0 for counts in play.recap().values()), play.recap()
    said = play.results("Say why check mode cannot validate the manifest on this host")
    previewed = play.results("Back up every target now")
    for host in HOSTS:
        outcome, result = said[host]
        assert outcome == "ok", (host, result)
        text = " ".join(result["msg"])
        assert f"{fresh.fleet.manifest(host)} was not validated: backups {__version__} is not installed" in text
        targets = "site, app-db, notes, extra" if host == "beta" else "site, app-db, notes"
        assert f"The manifest a run would install holds the targets: {targets}." in text, text
        outcome, result = previewed[host]
        assert outcome == "skipping", (host, result)
        assert result["msg"].startswith(f"the backup was not previewed: backups {__version__} is not installed")
    validated = play.results("Validate the rendered manifest on the host")
    assert all(validated[host][0] == "skipping" for host in HOSTS), validated
    assert fresh.fleet.tree() == fresh.before, "check mode writes nothing on the hosts"


@dataclass
class Refused:
    fleet: Fleet
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]
    manifests: dict[str, bytes]
    play: Play

    def changed(self) -> set[str]:
        """The files and folders of the hosts that the run added, removed or changed."""
        return {p for p in self.before.keys() | self.after.keys() if self.before.get(p) != self.after.get(p)}


@pytest.fixture(scope="module")
def refused(deployed: Deployed) -> Refused:
    """One deploy (no backup) in which every host fails, each for its own setting, instead of a run each.

    alpha and gamma give a target name twice (their manifests are rendered, then refused); beta's
    manifest is fine but its backup flags are not.  The other hosts are more names for beta, each
    with one setting the role refuses before it writes anything: beta's files, which beta's own
    failure leaves as deployed, would show it if one of them got further."""
    fleet = deployed.fleet
    # alpha: a name twice in one layer (a typo, not a layer); gamma: a host entry meant to
    # override a group's, spelled in other case.  Merged, either would drop a target quietly.
    alpha = fleet.host_vars("alpha")["backups_targets"]
    alpha = [*alpha, {"name": alpha[0]["name"], "path": str(fleet.home("alpha") / "data" / "notes.txt")}]
    gamma = {"backups_host_targets": [{"name": fleet.host_vars("gamma")["backups_targets"][0]["name"].upper()}]}
    beta = fleet.host_vars("beta")
    inventory = fleet.inventory(
        alpha={"backups_targets": alpha},
        gamma=gamma,
        beta={"backups_backup_args": ["--bogus"]},
        minute_61=beta | {"backups_schedule": "cron", "backups_cron_minute": "61"},
        relative_manifest=beta | {"backups_manifest": "backups.yml"},
        relative_prefix=beta | {"backups_prefix": "opt"},
        next_version=beta | {"backups_version": "9.9.9"},
        # Its flags are checked on the manifest it installs, so it gets a manifest of its own.
        metrics_folder=beta
        | {
            "backups_manifest": str(fleet.home("beta") / "etc" / "metrics-check.yml"),
            "backups_backup_args": ["--metrics-file", str(fleet.root / "gone" / "backups.prom")],
        },
        # The manifest's own metrics_file, no flags: the flags' check ran only when there were some.
        manifest_metrics=beta
        | {
            "backups_manifest": str(fleet.home("beta") / "etc" / "manifest-metrics.yml"),
            "backups_manifest_extra": {"metrics_file": str(fleet.root / "gone" / "backups.prom")},
        },
        # Cron drops a line with a step of 0 or a range backwards; --check makes every run a preview.
        step_0=beta | {"backups_schedule": "cron", "backups_cron_minute": "*/0"},
        backwards=beta | {"backups_schedule": "cron", "backups_cron_hour": "5-3"},
        preview_only=beta | {"backups_backup_args": ["--log-file", "/tmp/x.log", "--check"]},
    )
    before = fleet.tree()
    manifests = {host: fleet.manifest(host).read_bytes() for host in HOSTS}
    play = fleet.playbook("--skip-tags", "backups_run", "--forks", "8", inventory=inventory)  # all hosts at once
    return Refused(fleet, before, fleet.tree(), manifests, play)


def candidates(fleet: Fleet, *hosts: str) -> set[str]:
    """The tree()'s names of these hosts' rendered manifests, which a run writes before validating them."""
    manifests = [fleet.manifest(host) for host in hosts]
    return {str(m.with_name(f".{m.name}.candidate").relative_to(fleet.root)) for m in manifests}


def refusals_may_write(fleet: Fleet) -> set[str]:
    """What the refused deploy may change: alpha's and gamma's refused manifests, and the
    manifest of the host whose flags are refused only once its manifest is installed."""
    owns = [fleet.home("beta") / "etc" / name for name in ("metrics-check.yml", "manifest-metrics.yml")]
    return candidates(fleet, "alpha", "gamma") | {
        str(m.relative_to(fleet.root)) for own in owns for m in (own, own.with_name(f".{own.name}.candidate"))
    }


def test_a_target_name_given_twice_fails_the_host_instead_of_losing_an_entry(refused: Refused) -> None:
    fleet, play = refused.fleet, refused.play

    assert play.code == 2, play.ran.output
    failed = play.results("Stop, keeping the installed manifest, when the rendered one is invalid")
    for host in ("alpha", "gamma"):
        outcome, result = failed[host]
        assert outcome == "fatal", (host, result)
        assert "duplicate target name" in "\n".join(result["msg"]), (host, result)
        assert fleet.manifest(host).read_bytes() == refused.manifests[host]
    assert failed["beta"][0] == "skipping"  # beta's inventory is fine


def test_settings_that_would_make_a_schedule_that_never_works_fail_the_host(refused: Refused) -> None:
    # Each was accepted with "ok": cron drops a line whose minute is 61, an unknown flag made
    # every scheduled run exit 2, and a relative manifest path failed a file task with an empty path.
    play = refused.play

    assert play.code == 2, play.ran.output
    settings = play.results("Check the role's settings")
    assert settings["minute_61"][0] == "fatal"
    assert "must be cron fields: minutes 0-59" in settings["minute_61"][1]["msg"]
    assert settings["relative_manifest"][0] == "fatal"
    assert "backups_manifest must be an absolute path, not backups.yml" in settings["relative_manifest"][1]["msg"]
    refusals = play.results("Stop when the scheduled command would refuse its flags")
    outcome, result = refusals["beta"]
    assert outcome == "fatal" and "backups_backup_args --bogus would make every scheduled run fail" in result["msg"][0]
    # A metrics file in a folder that does not exist failed every scheduled run's metrics step.
    outcome, result = refusals["metrics_folder"]
    assert outcome == "fatal" and "would make every scheduled run fail" in result["msg"][0], result
    assert "gone" in "\n".join(result["msg"]), result
    outcome, result = refusals["manifest_metrics"]
    assert outcome == "fatal", result
    own = refused.fleet.home("beta") / "etc" / "manifest-metrics.yml"
    assert result["msg"][0] == f"the manifest {own} would make every scheduled run fail:", result
    assert "gone" in "\n".join(result["msg"]), result
    for host in ("step_0", "backwards"):
        outcome, result = settings[host]
        assert outcome == "fatal" and "a range (low-high), a list or a step above 0" in result["msg"], (host, result)
    outcome, result = settings["preview_only"]
    assert outcome == "fatal", result
    assert result["msg"] == "backups_backup_args must not hold --check: every scheduled run would then back up nothing"
    # A relative prefix would put the command in the login's folder, where no schedule finds it.
    outcome, result = settings["relative_prefix"]
    assert outcome == "fatal" and "backups_prefix must be an absolute path, not opt" in result["msg"]
    assert refused.changed() <= refusals_may_write(refused.fleet)  # and beta's files are as deployed


def test_a_new_backups_version_reinstalls_and_a_wheel_of_another_version_is_refused(refused: Refused) -> None:
    play = refused.play

    assert play.code == 2, play.ran.output
    outcome, result = play.results("Check that the wheel is of the pinned version")["next_version"]
    assert outcome == "fatal"
    assert f"holds version {__version__} but backups_version is 9.9.9" in result["msg"]
    assert refused.changed() <= refusals_may_write(refused.fleet)  # and beta's files are as deployed


def test_the_cron_schedule_mails_a_failed_runs_reasons_and_nothing_when_it_succeeds(
    deployed: Deployed, tmp_path: Path
) -> None:
    # The line sent the run's output to /dev/null: the mail cron sends said "exit status 1" and
    # never which target failed or why.  The line is run here as cron runs it, with sh.
    fleet, play = deployed.cron, deployed.first
    assert play.code == 0 and "cron_beta" in play.recap(), play.ran.output
    line = (fleet.home("beta") / "cron.d" / "backups").read_text(encoding="utf-8").splitlines()[-1]
    *_, user, command = line.split(" ", 6)
    assert user == "root"
    environment = {"PATH": os.environ["PATH"], "NO_COLOR": "1", "HOME": str(tmp_path)}
    cron = ["sh", "-c", command.replace("\\%", "%")]

    succeeded = subprocess.run(cron, capture_output=True, text=True, env=environment, check=False)
    (fleet.home("beta") / "data" / "notes.txt").unlink()
    failed = subprocess.run(cron, capture_output=True, text=True, env=environment, check=False)

    assert (succeeded.returncode, succeeded.stdout, succeeded.stderr) == (0, "", "")
    assert failed.stdout.startswith("backups failed with exit status 1\n"), failed.stdout
    assert "failed: [notes] => " in failed.stdout and "RECAP" in failed.stdout


@pytest.fixture(scope="module")
def failing(deployed: Deployed) -> Play:
    """The playbook (role, then a backup) where gamma's inventory has an invalid target and beta's
    app-db target points at a database that is not there; alpha is fine."""
    fleet = deployed.fleet
    gamma = fleet.host_vars("gamma")["backups_targets"] + [{"name": "broken", "path": "x", "keep": {"last": 0}}]
    beta = fleet.host_vars("beta")["backups_targets"]
    beta = [beta[0], {"name": "app-db", "path": str(fleet.home("beta") / "data" / "gone.db")}, *beta[2:]]
    fleet.manifests_before = {host: fleet.manifest(host).read_bytes() for host in HOSTS}
    return fleet.playbook(inventory=fleet.inventory(gamma={"backups_targets": gamma}, beta={"backups_targets": beta}))


def test_a_host_with_invalid_targets_fails_with_the_validators_message_and_keeps_its_manifest(
    deployed: Deployed, failing: Play
) -> None:
    fleet = deployed.fleet
    assert failing.code == 2, failing.ran.output
    assert failing.recap()["gamma"]["failed"] == 1
    outcome, result = failing.results("Stop, keeping the installed manifest, when the rendered one is invalid")["gamma"]
    assert outcome == "fatal"
    message = "\n".join(result["msg"])
    assert f"{fleet.manifest('gamma')} was not replaced" in message
    # Named in full, whatever folder ansible-playbook ran in.
    candidate = re.escape(str(fleet.manifest("gamma").parent / ".backups.yml.candidate"))
    located = rf"(?m)^{candidate}:\d+:\d+: targets\[3\]\.keep\.last: 0 is less than the minimum"
    assert re.search(located, message), message
    assert fleet.manifest("gamma").read_bytes() == fleet.manifests_before["gamma"]
    assert "gamma" not in failing.results("Back up every target now"), "a host whose manifest failed runs no backup"


def test_the_run_module_fails_the_host_with_a_failing_target_and_keeps_every_result(
    deployed: Deployed, failing: Play
) -> None:
    fleet, play = deployed.fleet, failing
    assert play.code == 2, play.ran.output  # ansible-playbook's status when a host failed
    recap = play.recap()
    assert recap["beta"]["failed"] == 1 and recap["alpha"]["failed"] == 0
    results = play.results("Back up every target now")
    outcome, beta = results["beta"]
    assert outcome == "fatal"
    assert beta["msg"].startswith("1 of 4 targets failed: app-db: source not found")
    assert [(t["name"], t["status"]) for t in beta["results"]] == [
        ("site", "changed"),
        ("app-db", "failed"),
        ("notes", "changed"),
        ("extra", "changed"),
    ]
    assert beta["summary"] == {"ok": 0, "changed": 3, "failed": 1, "skipped": 0}
    assert beta["rc"] == 1 and beta["changed"] is True
    for host in ("alpha",):
        outcome, result = results[host]
        assert outcome == "changed"
        assert result["summary"] == {"ok": 0, "changed": 3, "failed": 0, "skipped": 0}
        for target in result["results"]:
            with zipfile.ZipFile(target["archive"]) as archive:
                assert archive.testzip() is None
            assert Path(target["archive"]).parent == fleet.home(host) / "backups"


def ad_hoc(fleet: Fleet, host: str, arguments: str) -> tuple[int, str, dict[str, Any]]:
    """`ansible HOST -m backup_core.fleet.run -a ARGS` with the one-line JSON result parsed."""
    done = subprocess.run(
        [str(BIN / "ansible"), host, "-i", str(fleet.inventory()), "-m", "backup_core.fleet.run", "-a", arguments],
        cwd=fleet.root,
        env=ansible_env(fleet.root, fleet.built.collections) | {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    match = re.search(r"^\S+ \| (SUCCESS|CHANGED|FAILED!) => (\{.*\})$", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return done.returncode, match.group(1), json.loads(match.group(2))


def test_the_run_module_reports_a_bad_manifest_with_its_located_messages(deployed: Deployed) -> None:
    fleet = deployed.fleet
    bad = fleet.home("alpha") / "bad.yml"
    bad.write_text("version: 1\ntargets:\n  - {name: a, path: a.txt, kepp: {last: 2}}\n", encoding="utf-8")

    code, outcome, result = ad_hoc(fleet, "alpha", f"manifest={bad} executable={fleet.executable('alpha')}")

    assert (code, outcome) == (2, "FAILED!")
    assert result["rc"] == 2 and result["changed"] is False
    assert any(re.match(r".*bad\.yml:3:\d+: .*did you mean 'keep'\?", e) for e in result["errors"]), result
    assert "did you mean 'keep'?" in result["msg"]


def test_the_run_module_names_a_missing_executable(deployed: Deployed) -> None:
    fleet = deployed.fleet
    missing = fleet.home("alpha") / "nowhere" / "backups"

    code, outcome, result = ad_hoc(fleet, "alpha", f"manifest={fleet.manifest('alpha')} executable={missing}")

    assert (code, outcome) == (2, "FAILED!")
    assert result["msg"].startswith(f"executable {missing} does not exist on the host")


def test_the_run_module_finds_the_command_beside_its_interpreter(deployed: Deployed) -> None:
    fleet = deployed.fleet
    venv_python = fleet.executable("gamma").with_name("python")
    inventory = fleet.inventory(gamma={"ansible_python_interpreter": str(venv_python)})
    done = subprocess.run(
        [str(BIN / "ansible"), "gamma", "-i", str(inventory), "-m", "backup_core.fleet.run", "--check",
         "-a", f"manifest={fleet.manifest('gamma')} only=notes"],
        cwd=fleet.root, env=ansible_env(fleet.root, fleet.built.collections),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.split(" => ", 1)[1])
    assert result["cmd"][0] == str(fleet.executable("gamma"))
    assert [t["name"] for t in result["results"]] == ["notes"]


def test_the_module_and_role_documentation_renders_with_ansible_doc(built: Built, tmp_path: Path) -> None:
    env = ansible_env(tmp_path, built.collections)
    doc = [BIN / "ansible-doc"]
    module = subprocess.run([*doc, "backup_core.fleet.run"], env=env, capture_output=True, text=True, check=False)
    role = subprocess.run(
        [*doc, "-t", "role", "backup_core.fleet.backups"], env=env, capture_output=True, text=True, check=False
    )

    assert module.returncode == 0, module.stderr
    assert "RETURN VALUES" in module.stdout and "check_mode" in module.stdout and "executable" in module.stdout
    assert role.returncode == 0, role.stderr
    assert "backups_targets" in role.stdout and "backups_schedule" in role.stdout


def test_the_collection_role_and_package_versions_agree() -> None:
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((COLLECTION / "roles/backups/defaults/main.yml").read_text(encoding="utf-8"))
    specs = yaml.safe_load((COLLECTION / "roles/backups/meta/argument_specs.yml").read_text(encoding="utf-8"))
    options = specs["argument_specs"]["main"]["options"]

    assert galaxy["version"] == defaults["backups_version"] == __version__
    assert set(options) == set(defaults), "every role variable is described in meta/argument_specs.yml"
    assert all(options[name].get("default") == value for name, value in defaults.items())


def test_ansible_lint_passes_at_the_production_profile(built: Built, tmp_path: Path) -> None:
    if not (BIN / "ansible-lint").exists():
        pytest.skip("ansible-lint is not installed")
    env = ansible_env(tmp_path, built.collections)
    # Each folder's own .ansible-lint asks for the production profile, offline.
    for folder in (COLLECTION, REPO / "examples" / "fleet"):
        done = subprocess.run(
            [BIN / "ansible-lint", "--nocolor"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 failure(s)" in done.stderr and " 0 files processed" not in done.stderr, done.stderr
