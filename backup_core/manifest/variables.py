"""${VAR} in manifest values: the environment, with the host's name always defined."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

from backup_core.errors import Problem
from backup_core.manifest.yaml_source import Document, KeyPath

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CMD_FORM = re.compile(r"%[A-Za-z_][A-Za-z0-9_()]*%")  # Windows: %ProgramData% made a folder of that name
_SHELL_FORM = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*\})[^}]*\}?")  # ${ that is not ${NAME}
# $HOME and $(command): a shell would expand them, this tool would make a folder named `$HOME`.
# Not on Windows, where `$` begins real folder names ($Recycle.Bin) and no shell uses $NAME.
_BARE_FORM = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\()")
# Windows' environment ignores case (${ProgramData} is PROGRAMDATA), and os.environ keeps its
# names in upper case there: copied into a plain dict, a name in any other case went undefined.
FOLD_CASE = os.name == "nt"


def with_builtins(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment, with ${BACKUP_HOST} (this machine's name) and ${HOSTNAME} when it is not exported.

    Interactive shells set HOSTNAME without exporting it, so a manifest that works by hand
    would fail under cron; both name the host as the operating system knows it.
    """
    host = socket.gethostname()
    merged = {"BACKUP_HOST": host, "HOSTNAME": host, **environ}
    return {name.upper(): value for name, value in merged.items()} if FOLD_CASE else merged


def expand(
    document: Document, value: str, where: KeyPath, environ: Mapping[str, str], problems: list[Problem], what: str
) -> str | None:
    """`value` with ${VAR} replaced from `environ`; None, and a located problem, when one is
    undefined or empty.  Empty counts as missing: `${DATA}/out` with DATA set to "" would
    otherwise name /out, and `${DATA}` alone the manifest's own folder."""

    def known(name: str) -> str | None:
        return environ.get(name.upper() if FOLD_CASE else name)

    shell_form = _SHELL_FORM.search(value) or (_CMD_FORM.search(value) if FOLD_CASE else _BARE_FORM.search(value))
    if shell_form:
        # `${DATA:-/srv}` or `${ DATA }` would have stayed as text, and a folder named `${DATA:-`
        # been made beside the manifest.
        problems.append(
            document.problem(
                where,
                f"{shell_form.group(0)!r} is not a variable this tool expands: only ${{NAME}} is, with no default "
                f"or other shell form; export the variable (to its default, if need be) and write ${{NAME}}",
            )
        )
        return None
    used = dict.fromkeys(m.group(1) for m in _VARIABLE.finditer(value))
    undefined = [name for name in used if known(name) is None]
    empty = [name for name in used if known(name) == ""]
    for unusable, how in ((undefined, "undefined"), (empty, "empty")):
        if unusable:
            names = ", ".join(f"${{{name}}}" for name in unusable)
            problems.append(document.problem(where, f"{how} environment variable {names}; set it or change the {what}"))
    if undefined or empty:
        return None
    return _VARIABLE.sub(lambda m: known(m.group(1)) or "", value)


def home_expanded(document: Document, value: str, where: KeyPath, problems: list[Problem]) -> Path | None:
    """`value` as a path with a leading `~` or `~user` made that user's home folder; None, and a
    located problem, when there is no such user (or no home folder to be found).  On Windows
    `~user` is refused: Python there guesses another user's folder from this one's
    (C:\\Users\\<user>), which may not be where that user's profile is."""
    user = value[1:].replace("\\", "/").partition("/")[0] if value.startswith("~") else ""
    if user and FOLD_CASE:
        problems.append(
            document.problem(where, f"{value}: ~{user} is not supported on Windows; write the path in full")
        )
        return None
    home = "USERPROFILE" if FOLD_CASE else "HOME"
    if value.startswith("~") and not user and os.environ.get(home) == "":
        # Python takes an empty HOME as the home folder: `~/data` became `/data`.
        problems.append(
            document.problem(where, f"{value} begins with ~, but {home} is set empty; set it or write the path in full")
        )
        return None
    try:
        return Path(value).expanduser()
    except RuntimeError:  # Python's "Could not determine home directory."
        who = f"no user '{user}'" if user else f"no home folder ({home} is not set, and the user has no entry)"
        problems.append(document.problem(where, f"{value} begins with ~, but this machine has {who}"))
        return None
