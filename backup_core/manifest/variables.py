"""${VAR} in manifest values: the environment, with the host's name always defined."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

from backup_core.errors import Problem
from backup_core.manifest.yaml_source import Document, KeyPath

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def with_builtins(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment, with ${BACKUP_HOST} (this machine's name) and ${HOSTNAME} when it is not exported.

    Interactive shells set HOSTNAME without exporting it, so a manifest that works by hand
    would fail under cron; both name the host as the operating system knows it.
    """
    host = socket.gethostname()
    return {"BACKUP_HOST": host, "HOSTNAME": host, **environ}


def expand(
    document: Document, value: str, where: KeyPath, environ: Mapping[str, str], problems: list[Problem], what: str
) -> str | None:
    """`value` with ${VAR} replaced from `environ`; None, and a located problem, when one is
    undefined or empty.  Empty counts as missing: `${DATA}/out` with DATA set to "" would
    otherwise name /out, and `${DATA}` alone the manifest's own folder."""
    used = dict.fromkeys(m.group(1) for m in _VARIABLE.finditer(value))
    undefined = [name for name in used if name not in environ]
    empty = [name for name in used if environ.get(name) == ""]
    for unusable, how in ((undefined, "undefined"), (empty, "empty")):
        if unusable:
            names = ", ".join(f"${{{name}}}" for name in unusable)
            problems.append(document.problem(where, f"{how} environment variable {names}; set it or change the {what}"))
    if undefined or empty:
        return None
    return _VARIABLE.sub(lambda m: environ[m.group(1)], value)
