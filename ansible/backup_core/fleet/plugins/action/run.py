"""Action of backup_core.fleet.run: in check mode, preview the manifest the role would install.

A check run of the role `backups` installs nothing, so the manifest on the host is still the old
one (or none).  The role leaves what a run would install in the host variable `backups_preview`;
for a task on that same manifest this plugin passes it to the module as `candidate`, or, when the
role could not check it on the host (the command a run would use, or the manifest's folder, is
not there yet), skips the task saying why: a run would put them there first, so that alone must
not fail the host.  Outside check mode the module runs as it is.
"""

from __future__ import annotations

import os
from typing import Any

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

_DEFAULT_MANIFEST = "/etc/backups/backups.yml"  # the module's default for `manifest`


def _same(one: Any, other: Any) -> bool:
    return os.path.normpath(str(one)) == os.path.normpath(str(other))


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = True  # as the module had before this plugin: a long run may be started with `async`

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        preview = self._preview(args, task_vars)
        if preview is not None:
            if not _ready(preview):
                # Shown without -v: the reason is the whole point of the skip.
                return result | {
                    "skipped": True,
                    "changed": False,
                    "check": True,
                    "msg": f"the backup was not previewed: {preview.get('reason')}",
                    "_ansible_verbose_always": True,
                }
            args["candidate"] = preview["content"]
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result.update(
            self._execute_module(
                module_name="backup_core.fleet.run", module_args=args, task_vars=task_vars, wrap_async=wrap_async
            )
        )
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _preview(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any] | None:
        """The role's `backups_preview` if it applies: check mode, no `candidate` given, the same manifest."""
        if not self._task.check_mode or args.get("candidate") is not None:
            return None
        preview = self._templar.template(task_vars.get("backups_preview"))
        if not isinstance(preview, dict) or "content" not in preview:
            return None
        if not _same(args.get("manifest") or _DEFAULT_MANIFEST, preview.get("manifest")):
            return None
        return preview


def _ready(preview: dict[str, Any]) -> bool:
    return boolean(preview.get("ready"), strict=False)
