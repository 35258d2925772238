"""A hook's command as it may be shown: credentials written into it are masked.

A hook's line appears in every message about it (terminal, log file, JSON, the Ansible
module's failure) and in `list`.  A ping URL with a password in it, `--token=…`, or an
`Authorization: Bearer …` header would be copied to all of them; what is masked is the
secret, never the part that tells the operator which command it was.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(@)")
# name=value where the name says it is a secret: --password=x, ?token=x&, API_KEY=x
_SECRET_PAIR = re.compile(r"(?i)([\w.-]*(?:pass|token|secret|key|auth|sig|credential)[\w.-]*=)[^&\s'\"]+")
# Authorization: Bearer x / Basic x / Token x
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[^\s'\"]+")
# An argument that follows a flag naming a secret: --password x, --token x
_SECRET_FLAG = re.compile(r"(?i)^(-{1,2}[\w-]*(?:pass|token|secret|key|auth|credential)[\w-]*)$")
# The same in a command line, and curl's -u user:password
_SECRET_FLAG_IN_LINE = re.compile(
    r"(?i)((?:^|\s)-{1,2}[\w-]*(?:pass|token|secret|key|auth|credential)[\w-]*\s+)([^\s'\"-][^\s'\"]*|'[^']*'|\"[^\"]*\")"
)
_USER_IN_LINE = re.compile(r"((?:^|\s)(?:-u|--user)\s+['\"]?[^\s:'\"]+:)[^\s'\"]+")


def text(line: str) -> str:
    """A command line with the secrets it holds masked."""
    line = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", line)
    line = _SECRET_PAIR.sub(rf"\g<1>{MASK}", line)
    line = _SECRET_FLAG_IN_LINE.sub(rf"\g<1>{MASK}", line)
    line = _USER_IN_LINE.sub(rf"\g<1>{MASK}", line)
    return _SCHEME_TOKEN.sub(rf"\g<1>\g<2>{MASK}", line)


def argv(arguments: tuple[str, ...]) -> str:
    """Arguments as one line to read (quoted as the platform would need), secrets masked."""
    shown: list[str] = []
    for index, argument in enumerate(arguments):
        flag = arguments[index - 1] if index else ""
        user, colon, _ = argument.partition(":")
        if flag in ("-u", "--user") and colon:  # curl's user:password; journalctl's -u unit stays
            shown.append(f"{user}:{MASK}")
        elif _SECRET_FLAG.match(flag):
            shown.append(MASK)
        else:
            shown.append(text(argument))
    return subprocess.list2cmdline(shown) if os.name == "nt" else shlex.join(shown)
