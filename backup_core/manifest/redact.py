"""A hook's command as it may be shown: credentials written into it are masked.

A hook's line appears in every message about it (terminal, log file, JSON, the Ansible
module's failure) and in `list`.  A ping URL with a password in it, `--token=…`, an
`Authorization:` header or `mysqldump -p…` would be copied to all of them; what is masked is
the secret, never the part that tells the operator which command it was.  Better still is
to keep secrets out of the manifest (a hook inherits the environment).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

MASK = "***"

# A name that says its value is secret: it ends in one of these words (PGPASSWORD, --api-key,
# ?key=, client_secret, X-Amz-Signature), so --passes, --keyfile and pkill --signal are left alone.
_SECRET_NAME = (
    r"[\w.-]*(?:pass|passwd|password|passphrase|token|secret|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|auth|authorization|signature|credentials?|key)"
)
# scheme://user:password@host -> scheme://user:***@host (a password may hold a '/')
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^\s@]+(@)")
# name=value, the value bare or quoted: --password=x, ?token=x&, PGPASSWORD="a b"
_SECRET_PAIR = re.compile(rf"(?i)(\b{_SECRET_NAME}=)(\"[^\"]*\"|'[^']*'|[^&\s'\"]+)")
_WHOLE_PAIR = re.compile(rf"(?i)^(--?(?!-)(?!no-){_SECRET_NAME}=|{_SECRET_NAME}=)")
# A header: Authorization: Digest …, X-Api-Key: k, PRIVATE-TOKEN: t (to the end of its quotes)
_SECRET_HEADER = re.compile(rf"(?i)(\b{_SECRET_NAME}:\s*)([^'\"\n]+)")
# A flag naming a secret, then its value: --password x, --token 'a b' (not --no-pass)
_SECRET_FLAG = re.compile(rf"(?i)^--?(?!-)(?!no-){_SECRET_NAME}$")
_SECRET_FLAG_IN_LINE = re.compile(
    rf"(?i)((?:^|\s)--?(?!-)(?!no-){_SECRET_NAME}\s+)(\"[^\"]*\"|'[^']*'|[^\s'\"-][^\s'\"]*)"
)
# curl's -u/--user user:password (docker's -u user:group is no secret)
_USER_IN_LINE = re.compile(r"((?:^|\s)(?:-u\s*|--user[=\s]+)['\"]?[^\s:'\"]+:)[^\s'\"]+")
# Programs whose -p carries the password itself (-pSECRET), and those whose password flag is
# followed by it (sshpass -p X ssh -p 22: only the first, its own).
_JOINED_P = frozenset(("mysql", "mysqldump", "mysqladmin", "mariadb", "mariadb-dump", "mariadb-admin"))
_SEPARATE_P = {"sshpass": "-p", "sqlcmd": "-P", "bcp": "-P"}
_USER_P = frozenset(("curl", "wget"))
_EXTENSIONS = (".exe", ".cmd", ".bat", ".com")


def _program(word: str) -> str:
    """A word as the program it names: `"C:\\Tools\\curl.exe"` and `/usr/bin/curl` are both curl."""
    name = re.split(r"[\\/]", word.strip("'\""))[-1].lower()
    return next((name[: -len(ext)] for ext in _EXTENSIONS if name.endswith(ext)), name)


def text(line: str) -> str:
    """A command line with the secrets it holds masked."""
    line = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", line)
    line = _SECRET_PAIR.sub(rf"\g<1>{MASK}", line)
    line = _SECRET_HEADER.sub(rf"\g<1>{MASK}", line)
    line = _SECRET_FLAG_IN_LINE.sub(rf"\g<1>{MASK}", line)
    programs = {_program(word) for word in line.split()}
    if programs & _USER_P:
        line = _USER_IN_LINE.sub(rf"\g<1>{MASK}", line)
    if programs & _JOINED_P:
        line = re.sub(r"((?:^|\s)-p)(?=[^\s])[^\s'\"]+", rf"\g<1>{MASK}", line)
    for program, flag in _SEPARATE_P.items():
        if program in programs:
            line = re.sub(rf"((?:^|\s){flag}\s+)[^\s'\"]+", rf"\g<1>{MASK}", line, count=1)
    return line


def argv(arguments: tuple[str, ...]) -> str:
    """Arguments as one line to read (quoted as the platform would need), secrets masked.  The
    programs are looked for in every argument: `cmd /c mysqldump -p…` and `sudo curl -u …`."""
    programs = [_program(argument) for argument in arguments]
    present = set(programs)
    separate = {_SEPARATE_P[p] for p in present if p in _SEPARATE_P}  # masked once each
    shown: list[str] = []
    for index, argument in enumerate(arguments):
        flag = arguments[index - 1] if index else ""
        user, colon, _ = argument.partition(":")
        pair = _WHOLE_PAIR.match(argument)
        curl_user = flag in ("-u", "--user") or argument.startswith("--user=")
        if present & _USER_P and curl_user and colon:
            shown.append(f"{user}:{MASK}")
        elif pair:  # one argument: all of it after '=' is the value, spaces included
            shown.append(pair.group(1) + MASK)
        elif _SECRET_FLAG.match(flag) and not argument.startswith("-"):
            shown.append(MASK)
        elif present & _JOINED_P and argument.startswith("-p") and len(argument) > 2:
            shown.append(f"-p{MASK}")
        elif flag in separate:
            shown.append(MASK)
            separate.discard(flag)
        else:
            shown.append(text(argument))
    return subprocess.list2cmdline(shown) if os.name == "nt" else shlex.join(shown)
