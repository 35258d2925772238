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
# ?key=, client_secret, X-Amz-Signature), so --passes, --keyfile, pkill --signal, monkey=, gpg
# --recv-key and curl's --key FILE are left alone.
_SECRET_NAME = (
    r"[\w.-]*(?:pass|passwd|password|passphrase|token|secret|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|auth|authorization|signature|credentials?|(?<![\w.-])key)"
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
# Flags whose value is a password only for certain programs, and only after that program's
# name (docker's -u user:group, rsync -p, a folder named sshpass are no secrets).
_USER_P = frozenset(("curl", "wget"))  # -u/--user user:password
_JOINED_P = frozenset(("mysql", "mysqldump", "mysqladmin", "mariadb", "mariadb-dump", "mariadb-admin"))  # -pX
_SEPARATE_P = {"sshpass": "-p", "sqlcmd": "-P", "bcp": "-P"}  # -p X (sshpass: its first only), -PX
_EXTENSIONS = (".exe", ".cmd", ".bat", ".com")
_WORD = re.compile(r"\"[^\"]*\"|'[^']*'|[^\s'\"]+")
_BREAKS = frozenset((";", "&&", "||", "|", "&"))


def _program(word: str) -> str:
    """A word as the program it names: `"C:\\Tools\\curl.exe"` and `/usr/bin/curl` are both curl."""
    name = re.split(r"[\\/]", word.strip("'\""))[-1].lower()
    return next((name[: -len(ext)] for ext in _EXTENSIONS if name.endswith(ext)), name)


def _masked_words(words: list[str]) -> list[str]:
    """`words` (one command's, as written or as arguments) with the values of program-specific
    password flags masked; a flag counts only after its program's name."""
    shown, program, used = list(words), "", set[str]()
    for index, word in enumerate(words):
        bare = word.strip("'\"")
        flag = words[index - 1].strip("'\"") if index else ""
        if bare in _BREAKS or flag.endswith((";", "&", "|")):  # `x;` ends a command too
            program = ""
            if bare in _BREAKS:
                continue
        named = _program(word)
        # A program's name stands first, or after a word that is not a flag (sudo curl, cmd /c
        # mysqldump); after a flag it is the flag's value (tar -C /srv/sshpass).
        if (named in _USER_P or named in _JOINED_P or named in _SEPARATE_P) and not flag.startswith("-"):
            program, used = named, set()
            continue
        if program in _USER_P and (flag in ("-u", "--user") or bare.startswith("--user=")) and ":" in bare:
            shown[index] = f"{bare.partition(':')[0]}:{MASK}"
        elif program in _JOINED_P and bare.startswith("-p") and len(bare) > 2:
            shown[index] = f"-p{MASK}"
        elif program in _SEPARATE_P:
            own = _SEPARATE_P[program]
            if program == "sshpass" and own in used:
                continue  # sshpass -p X ssh -p 22: the second is ssh's port
            if flag == own:
                shown[index] = MASK
                used.add(own)
            elif bare.startswith(own) and len(bare) > len(own):
                shown[index] = f"{own}{MASK}"
                used.add(own)
    return shown


def text(line: str) -> str:
    """A command line with the secrets it holds masked."""
    line = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", line)
    line = _SECRET_PAIR.sub(rf"\g<1>{MASK}", line)
    line = _SECRET_HEADER.sub(rf"\g<1>{MASK}", line)
    line = _SECRET_FLAG_IN_LINE.sub(rf"\g<1>{MASK}", line)
    words = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(line)]
    masked = _masked_words([w for _, _, w in words])
    for (start, end, word), new in reversed(list(zip(words, masked, strict=True))):
        if new != word:
            line = line[:start] + new + line[end:]
    return line


def argv(arguments: tuple[str, ...]) -> str:
    """Arguments as one line to read (quoted as the platform would need), secrets masked.  The
    programs are looked for in every argument: `cmd /c mysqldump -p…` and `sudo curl -u …`."""
    shown = _masked_words(list(arguments))
    for index, argument in enumerate(arguments):
        if shown[index] != argument:
            continue  # a program's own password flag
        flag = arguments[index - 1] if index else ""
        pair = _WHOLE_PAIR.match(argument)
        if pair:  # one argument: all of it after '=' is the value, spaces included
            shown[index] = pair.group(1) + MASK
        elif _SECRET_FLAG.match(flag) and not argument.startswith("-"):
            shown[index] = MASK
        else:
            shown[index] = text(argument)
    return subprocess.list2cmdline(shown) if os.name == "nt" else shlex.join(shown)
