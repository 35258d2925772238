"""Operator commands run around a target or a run: before, after and on_failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from .errors import TargetError
from .manifest import Hook


class HookError(TargetError):
    """A hook command failed, timed out or could not start."""


def run_hooks(when: str, hooks: tuple[Hook, ...], variables: Mapping[str, str]) -> None:
    """Run `hooks` in order; the first failure raises HookError and stops the list.

    Commands run without a shell unless the manifest asks for one; what happened so
    far is passed in BACKUP_* environment variables.
    """
    environment = {**os.environ, **variables, "BACKUP_HOOK": when}
    for hook in hooks:
        command: str | list[str] = hook.command if hook.command is not None else list(hook.argv or ())
        try:
            completed = subprocess.run(
                command,
                shell=hook.command is not None,
                env=environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=hook.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HookError(f"{when} hook `{hook.describe()}` timed out after {hook.timeout:g}s") from None
        except OSError as exc:
            raise HookError(f"{when} hook `{hook.describe()}` could not start: {exc.strerror or exc}") from None
        if completed.returncode != 0:
            said = _last_line(completed.stderr) or _last_line(completed.stdout)
            detail = f": {said}" if said else ""
            raise HookError(f"{when} hook `{hook.describe()}` exited with status {completed.returncode}{detail}")


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1].strip()[:200] if lines else ""
