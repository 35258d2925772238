#!/usr/bin/python
"""Ansible module backup_core.fleet.run: run a host's backups now and report every target in Ansible's terms."""

from __future__ import annotations

DOCUMENTATION = r"""
module: run
short_description: Run the backups of a host now and report every target
version_added: "0.1.0"
description:
  - Runs C(backups backup --format json) on the host with its manifest and reports the run
    in Ansible's own terms.
  - The task is C(changed) when any target wrote a new archive (in check mode, when any
    target would), and returns every target's result as data in RV(results).
  - When a target fails (the command exits 1) the task fails, and its result still holds
    every target's result, so the recap says which target of which host failed.
  - When the manifest or a flag is wrong (the command exits 2) the task fails with the
    manifest's located messages; nothing was written or deleted.
  - In check mode the command runs with C(--check), which reports what would be archived and
    which archives would be deleted, and writes, deletes and locks nothing.
  - In check mode after the role M(backup_core.fleet.backups) on the same host, the preview reads
    the manifest that role would install, not the installed one (see O(candidate)); when the
    role found that the command a run would use is not installed yet, the task is skipped with
    a message saying so, since the run would install it first.
options:
  manifest:
    description: The manifest to run, on the host.
    type: path
    default: /etc/backups/backups.yml
  only:
    description: Run only these targets (names or shell patterns such as C(db-*)).
    type: list
    elements: str
    default: []
  tags:
    description: Run only the targets that have any of these tags.
    type: list
    elements: str
    default: []
  skip_tags:
    description: Leave out the targets that have any of these tags.
    type: list
    elements: str
    default: []
  force:
    description: Archive even when C(skip_unchanged) finds a source unchanged.
    type: bool
    default: false
  log_file:
    description: Also append the run, with timestamps, to this plain-text log on the host.
    type: path
  executable:
    description:
      - Path of the C(backups) command on the host.
      - When not given, the C(backups) beside the Python interpreter that runs this module is
        used (the role M(backup_core.fleet.backups) installs it into its own virtual environment;
        set C(ansible_python_interpreter) to that environment's python), else the first
        C(backups) on the PATH.
    type: path
  candidate:
    description:
      - In check mode, the text of the manifest a deploy would install at O(manifest), to preview
        instead of the installed one. It is written for the preview into a scratch file beside
        O(manifest), readable by its owner only, so that relative paths in it start at the same
        folder as in the installed manifest, and removed afterwards.
      - When not given in check mode, the manifest rendered by the role M(backup_core.fleet.backups)
        earlier in the play for the same O(manifest) is used, if any (the collection's action
        plugin passes it on); otherwise the installed manifest is previewed.
      - Ignored, with a warning, outside check mode; a run backs up the installed manifest only.
    type: str
attributes:
  check_mode:
    description: Runs C(backups backup --check), which writes, deletes and locks nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
  platform:
    description: POSIX hosts; Windows hosts are not supported yet.
    platforms: posix
notes:
  - The exit status of C(backups) decides the outcome; the text report it prints is returned
    in RV(report) for the log.
seealso:
  - role: backup_core.fleet.backups
    description: Installs the command, renders and validates the manifest, schedules the runs.
author:
  - backup_core maintainers
"""

EXAMPLES = r"""
- name: Back up every target of the host now
  backup_core.fleet.run:
    manifest: /etc/backups/backups.yml

- name: Back up the databases only, even if unchanged, with the role's command
  backup_core.fleet.run:
    tags: [db]
    force: true
    executable: /opt/backups/venv/bin/backups

- name: Show what a run would archive and delete
  backup_core.fleet.run:
  check_mode: true
  register: preview

- name: Keep going on other hosts, then list the failed targets
  backup_core.fleet.run:
  register: backup
  ignore_errors: true

- name: Report the failed targets of each host
  ansible.builtin.debug:
    msg: "{{ backup.results | selectattr('status', 'equalto', 'failed') | map(attribute='name') | list }}"
"""

RETURN = r"""
results:
  description: Every selected target's result, in the order of the manifest.
  returned: when the manifest was valid
  type: list
  elements: dict
  contains:
    name:
      description: The target's name.
      type: str
      sample: app-db
    status:
      description: C(ok) (nothing needed doing), C(changed) (a new archive), C(failed) or C(skipped)
        (another run holds the target).
      type: str
      sample: changed
    archive:
      description: Path of the new archive on the host (null in check mode and when none was made).
      type: str
      sample: /var/backups/app-db-20261126T121705.084728Z.zip
    error:
      description: Why the target failed, in one sentence; null when it did not.
      type: str
      sample: "source not found: /srv/app/data.db; check the path in the manifest"
    deleted:
      description: Archives rotated away (in check mode, those that would be).
      type: list
      elements: str
    reason:
      description: In check mode, what the run would do.
      type: str
      sample: would archive
  sample:
    - {name: site, status: changed, archive: /var/backups/site-20261126T121705.084728Z.zip, error: null}
recap:
  description: Per target, the counts C(backups) prints in its RECAP.
  returned: when the manifest was valid
  type: dict
  sample: {site: {ok: 0, changed: 1, failed: 0, skipped: 0}}
summary:
  description: The recap's counts added up over the host's targets.
  returned: when the manifest was valid
  type: dict
  sample: {ok: 2, changed: 1, failed: 0, skipped: 0}
errors:
  description: Problems of the run itself (a run-level hook), or the manifest's located messages
    when it was invalid.
  returned: always
  type: list
  elements: str
  sample: ["backups.yml:12:7: targets[2].keep.last: 0 is less than the minimum of 1"]
check:
  description: Whether this was a check-mode run that changed nothing.
  returned: always
  type: bool
candidate:
  description:
    - Whether the preview read the manifest a deploy would install (O(candidate)) rather than the
      installed one. RV(cmd) names the scratch file it was written to, already removed.
  returned: when the command ran
  type: bool
manifest:
  description: The manifest the results are of (O(manifest), also when its candidate was previewed).
  returned: when the manifest was valid
  type: str
  sample: /etc/backups/backups.yml
rc:
  description: Exit status of C(backups) (0 ok, 1 a target failed, 2 bad manifest or usage, 130 interrupted).
  returned: always
  type: int
  sample: 0
cmd:
  description: The command that ran.
  returned: always
  type: list
  elements: str
report:
  description: The text report C(backups) printed (its Ansible-style lines and RECAP).
  returned: always
  type: list
  elements: str
"""

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

_STATUSES = ("ok", "changed", "failed", "skipped")


def find_executable(module: AnsibleModule) -> str:
    """The `executable` option, else `backups` beside this module's interpreter (the role's venv), else the PATH."""
    given = module.params["executable"]
    if given:
        if not Path(given).is_file():
            module.fail_json(
                msg=f"executable {given} does not exist on the host; install it with the backups role "
                "or correct the path",
                changed=False,
            )
        return str(given)
    beside = Path(sys.executable).with_name("backups")
    if beside.is_file():
        return str(beside)
    found = module.get_bin_path("backups")
    if found:
        return str(found)
    module.fail_json(
        msg="the backups command was not found beside the module's Python interpreter "
        f"({sys.executable}) nor on the PATH; set the executable option to its path "
        "(the backups role installs it as <backups_prefix>/venv/bin/backups)",
        changed=False,
        rc=None,
        errors=[],
        check=module.check_mode,
        cmd=[],
        report=[],
    )
    raise AssertionError  # fail_json exits


def write_candidate(module: AnsibleModule) -> str | None:
    """In check mode, the `candidate` text in a scratch file beside the manifest (so its relative paths mean
    the same); its path, or None when the installed manifest is to be previewed."""
    candidate = module.params["candidate"]
    if candidate is None:
        return None
    if not module.check_mode:
        module.warn("candidate is only previewed in check mode; this run backs up the installed manifest")
        return None
    manifest = Path(module.params["manifest"])
    if not manifest.parent.is_dir():
        module.fail_json(
            msg=f"cannot preview the candidate manifest: the folder of {manifest} does not exist on the host",
            changed=False,
        )
    descriptor, scratch = tempfile.mkstemp(prefix=f".{manifest.name}.check-", dir=manifest.parent)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(candidate)
    return scratch


def command(module: AnsibleModule, executable: str, manifest: str) -> list[str]:
    params = module.params
    argv = [executable, "backup", "--manifest", manifest, "--format", "json"]
    for option in ("only", "tags", "skip_tags"):
        for value in params[option]:
            argv += ["--" + option.replace("_", "-"), value]
    if params["force"]:
        argv.append("--force")
    if params["log_file"]:
        argv += ["--log-file", str(params["log_file"])]
    if module.check_mode:
        argv.append("--check")
    return argv


def parse(stdout: str) -> dict[str, Any] | None:
    """The JSON document on stdout, or None when there is none (older versions print usage errors as text)."""
    try:
        document = json.loads(stdout)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def message(error: Any) -> str:
    """One error of the JSON document as one line (a string, or a record with a place and a message)."""
    if isinstance(error, dict) and "message" in error:
        place = ":".join(str(error[key]) for key in ("file", "line", "column") if error.get(key) not in (None, ""))
        return f"{place}: {error['message']}" if place else str(error["message"])
    return error if isinstance(error, str) else json.dumps(error)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "manifest": {"type": "path", "default": "/etc/backups/backups.yml"},
            "only": {"type": "list", "elements": "str", "default": []},
            "tags": {"type": "list", "elements": "str", "default": []},
            "skip_tags": {"type": "list", "elements": "str", "default": []},
            "force": {"type": "bool", "default": False},
            "log_file": {"type": "path"},
            "executable": {"type": "path"},
            "candidate": {"type": "str", "no_log": True},  # a manifest may hold credentials
        },
        supports_check_mode=True,
    )
    executable = find_executable(module)
    scratch = write_candidate(module)
    argv = command(module, executable, scratch or str(module.params["manifest"]))
    try:
        rc, stdout, stderr = module.run_command(argv, environ_update={"NO_COLOR": "1"})
    finally:
        if scratch:
            Path(scratch).unlink(missing_ok=True)
    document = parse(stdout) or {}
    outcome: dict[str, Any] = {
        "rc": rc,
        "cmd": argv,
        "check": module.check_mode,
        "candidate": scratch is not None,
        "report": lines(stderr),
        "errors": [message(e) for e in document.get("errors") or []],
    }

    if rc == 2:
        # The manifest or a flag is wrong; nothing was done. The messages are located (file:line:column).
        messages = outcome["errors"] or [line for line in lines(stderr) if not line.startswith("BACKUP [")]
        outcome["errors"] = messages
        module.fail_json(
            msg="; ".join(messages) or "backups reported a usage error (exit status 2)", changed=False, **outcome
        )

    targets = document.get("targets")
    if not isinstance(targets, list):
        last = (lines(stderr) or lines(stdout) or ["no output"])[-1]
        module.fail_json(
            msg=f"backups exited with status {rc} without its JSON report: {last}",
            changed=False,
            stdout=stdout,
            **outcome,
        )
        return

    recap = document.get("recap") or {}
    summary = {status: sum(int(counts.get(status, 0)) for counts in recap.values()) for status in _STATUSES}
    changed = any(target.get("status") == "changed" for target in targets)
    manifest = str(module.params["manifest"]) if scratch else document.get("manifest")
    outcome.update(results=targets, recap=recap, summary=summary, manifest=manifest)

    if rc == 0:
        module.exit_json(changed=changed, **outcome)
    elif rc == 130:
        module.fail_json(
            msg="backups was interrupted; no partial archive was left in place", changed=changed, **outcome
        )
    else:
        failed = [target for target in targets if target.get("status") == "failed"]
        reasons = [f"{target.get('name')}: {target.get('error')}" for target in failed] + outcome["errors"]
        head = f"{len(failed)} of {len(targets)} targets failed" if failed else f"backups exited with status {rc}"
        module.fail_json(msg=f"{head}: " + "; ".join(reasons), changed=changed, **outcome)


if __name__ == "__main__":
    main()
