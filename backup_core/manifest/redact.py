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
# The patterns below are kept as strings and compiled by `re` on first use (and cached there):
# most runs never show a hook, and compiling them all at import cost 8 to 11 ms of every
# command's start-up.

# A name that says its value is secret: it ends in one of these words (PGPASSWORD, --api-key,
# ?key=, client_secret, X-Amz-Signature, DB_KEY, MYSQL_PWD, DB_PW, plink's -pw,
# --oauth2-bearer), so --passes, --keyfile, pkill --signal, monkey=, gpg --recv-key, curl's
# --key FILE, client.key= and the shell's PWD= are left alone.
_SECRET_NAME = (
    r"[\w.-]*(?:pass|passwd|password|passphrase|token|secret|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|auth|authorization|signature|credentials?|bearer|(?<![a-z0-9.-])key|(?<![a-z0-9])pw|(?<=_)pwd"
    r"|(?<![a-z0-9])sig)"
)
# A value written bare ends at a space, or before the `;`, `&` or `|` that ends its command
# (`export PGPASSWORD=x; pg_dump` keeps its `;`); inside a word they are part of it.
_BARE_END = r"(?=[;&|]*(?:[\s'\"]|$))"
# scheme://user:password@host -> scheme://user:***@host (a password may hold a '/')
_URL_PASSWORD = r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^\s@]+(@)"
# name=value, the value bare or quoted: --password=x, ?token=x&, PGPASSWORD="a b"
_SECRET_PAIR = rf"(?i)(\b{_SECRET_NAME}=)(\"[^\"]*\"|'[^']*'|[^&\s'\"]+?(?=[;|]*(?:[&\s'\"]|$)))"
_WHOLE_PAIR = rf"(?i)^(--?(?!-)(?!no-){_SECRET_NAME}=|{_SECRET_NAME}=)"
# Programs whose own name reads like a secret's: `sshpass: not found` is no header.
_NAMED_LIKE_SECRETS = r"(?:sshpass|pass|gopass|passwd|htpasswd|chpasswd|gpasswd|smbpasswd):"
# A header: Authorization: Digest …, X-Api-Key: k, PRIVATE-TOKEN: t, Cookie: … (to the end of its quotes)
_SECRET_HEADER = rf"(?i)(\b(?!{_NAMED_LIKE_SECRETS})(?:{_SECRET_NAME}|[\w.-]*cookie):\s*)([^'\"\n]+)"
# A flag naming a secret, then its value: --password x, --token 'a b', --password -x (not
# --no-pass, and not a following flag: --auth --verbose, --password -v)
_SECRET_FLAG = rf"(?i)^--?(?!-)(?!no-){_SECRET_NAME}$"
_SECRET_FLAG_IN_LINE = (
    rf"(?i)((?:^|\s)--?(?!-)(?!no-){_SECRET_NAME}\s+)"
    rf"(\"[^\"]*\"|'[^']*'|[^\s'\"-][^\s'\"]*?{_BARE_END}|-[^\s'\"-][^\s'\"]+?{_BARE_END})"
)
# Flags whose value is a password only for certain programs, and only after that program's
# name (docker's -u user:group, rsync -p, a folder named sshpass are no secrets).
# -u user:password (lftp: user,password; Samba's tools: -U user%password), joined or not
_USER = {
    "curl": (("-u", "--user"), ":"),
    "wget": (("-u", "--user"), ":"),
    "lftp": (("-u", "--user"), ","),
    **{smb: (("-U", "--user"), "%") for smb in ("smbclient", "rpcclient", "smbcacls", "smbget", "smbtree")},
}
_JOINED_P = frozenset(("mysql", "mysqldump", "mysqladmin", "mariadb", "mariadb-dump", "mariadb-admin"))  # -pX
# -p X or -pX (sshpass: its first only)
_SEPARATE_P = {"sshpass": "-p", "sqlcmd": "-P", "bcp": "-P", "redis-cli": "-a"}
_COOKIE = {"curl": ("-b", "--cookie")}  # a cookie's name=value (without '=' it names a file)
# htpasswd -b [-c…] FILE USER PASSWORD, or -nb USER PASSWORD; -C and -r take a number
_BATCH = "htpasswd"
_PROGRAMS = frozenset((*_USER, *_JOINED_P, *_SEPARATE_P, *_COOKIE, _BATCH))
_EXTENSIONS = (".exe", ".cmd", ".bat", ".com")
# A word of a command line; a `;`, `&&` or `|` that ends a command is a word of its own.  A
# flag glued to a quoted value is one word (`-p'pa ss'`, as a shell hook quotes a password).
_QUOTED = r"\"[^\"]*\"|'[^']*'"
_WORD = rf"[^\s'\";&|]+(?:{_QUOTED})|{_QUOTED}|[;&|]+(?=\s|$)|[^\s'\"]+?{_BARE_END}|[^\s'\"]+"
_BREAKS = frozenset((";", "&&", "||", "|", "&"))


def holds_private_key(text: str) -> bool:
    """Whether `text` holds an age secret key or a PEM or OpenSSH private key, anywhere in it."""
    upper = text.upper()
    return "AGE-SECRET-KEY-1" in upper or "PRIVATE KEY-----" in upper  # the latter: a PEM or OpenSSH armour line


def holds_private_key_anywhere(value: object) -> bool:
    """Whether a manifest value (a string, or a list or mapping holding strings) holds one."""
    if isinstance(value, str):
        return holds_private_key(value)
    if isinstance(value, list):
        return any(holds_private_key_anywhere(item) for item in value)
    if isinstance(value, dict):
        return any(holds_private_key_anywhere(item) for item in (*value.keys(), *value.values()))
    return False


PRIVATE_KEY = (
    "this holds a private key, which must never be in the manifest or on the backup host; "
    "put its public key here (age-keygen -y KEYFILE) and keep the private key elsewhere"
)


def _program(word: str) -> str:
    """A word as the program it names: `"C:\\Tools\\curl.exe"` and `/usr/bin/curl` are both curl."""
    name = re.split(r"[\\/]", word.strip("'\""))[-1].lower()
    return next((name[: -len(ext)] for ext in _EXTENSIONS if name.endswith(ext)), name)


def _is_value(word: str) -> bool:
    """Whether a word after a secret's flag is its value: not a flag (`--verbose`, `-v`), though a
    value may begin with a dash (`--password -x7`)."""
    return not word.startswith("-") or (not word.startswith("--") and len(word) > 2)


def _masked_words(words: list[str]) -> list[str]:
    """`words` (one command's, as written or as arguments) with the values of program-specific
    password flags masked; a flag counts only after its program's name."""
    shown, program, used = list(words), "", set[str]()
    letters, arguments = "", 0  # htpasswd's flags and arguments so far
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
        if named in _PROGRAMS and not flag.startswith("-"):
            program, used, letters, arguments = named, set(), "", 0
            continue
        if program in _USER:
            names, between = _USER[program]
            short, long = names
            # Short flags bundle: `-su user:pw` and `-fsSuuser:pw` are -s -u … (curl, wget, lftp).
            bundle = None if bare.startswith("--") else re.match(rf"-[A-Za-z0-9#:]*?{short[1]}", bare)
            joined = bundle is not None and len(bare) > bundle.end()
            given = f"{long}=" if bare.startswith(f"{long}=") else bundle.group() if bundle and joined else ""
            follows = flag in names or re.fullmatch(rf"-[A-Za-z0-9#:]*{short[1]}", flag) is not None
            if between in bare and (follows or given):
                user = bare[len(given) :].partition(between)[0]
                shown[index] = f"{given}{user}{between}{MASK}"
        if program in _COOKIE and flag in _COOKIE[program] and "=" in bare:
            shown[index] = MASK
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
        elif program == _BATCH and flag not in ("-C", "-r"):  # those two take a number
            if bare.startswith("-") and len(bare) > 1:
                letters += bare[1:]
                continue
            arguments += 1
            if "b" in letters and arguments == (2 if "n" in letters else 3):  # -n: no file
                shown[index] = MASK
    return shown


def text(line: str) -> str:
    """A command line with the secrets it holds masked."""
    line = re.sub(_URL_PASSWORD, rf"\g<1>{MASK}\g<2>", line)
    line = re.sub(_SECRET_PAIR, rf"\g<1>{MASK}", line)
    line = re.sub(_SECRET_HEADER, rf"\g<1>{MASK}", line)
    line = re.sub(_SECRET_FLAG_IN_LINE, rf"\g<1>{MASK}", line)
    words = [(m.start(), m.end(), m.group(0)) for m in re.finditer(_WORD, line)]
    masked = _masked_words([w for _, _, w in words])
    for (start, end, word), new in reversed(list(zip(words, masked, strict=True))):
        if new != word:
            line = line[:start] + new + line[end:]
    return line


def arguments(given: list[str] | tuple[str, ...]) -> list[str]:
    """Arguments with the secrets they hold masked, one for one.  The programs are looked for in
    every argument: `cmd /c mysqldump -p…` and `sudo curl -u …`."""
    shown, after_value = _masked_words(list(given)), False
    for index, argument in enumerate(given):
        if shown[index] != argument:
            continue  # a program's own password flag
        flag = given[index - 1] if index and not after_value else ""  # a value is no flag (-x7TOKEN)
        pair = re.match(_WHOLE_PAIR, argument)
        after_value = False
        if pair:  # one argument: all of it after '=' is the value, spaces included
            shown[index] = pair.group(1) + MASK
        elif re.match(_SECRET_FLAG, flag) and _is_value(argument):
            shown[index], after_value = MASK, True
        else:
            shown[index] = text(argument)
    return shown


def argv(given: tuple[str, ...]) -> str:
    """Arguments as one line to read (quoted as the platform would need), secrets masked."""
    shown = arguments(given)
    return subprocess.list2cmdline(shown) if os.name == "nt" else shlex.join(shown)


# A URL as error texts quote it (in backquotes, quotes or bare): scheme://user-info@host/path?query
_URL = (
    r"(?i)(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s`'\"<>]*@)?(?P<place>[^\s`'\"<>?#]*)"
    r"(?:\?(?P<query>[^\s`'\"<>#]*))?"
)


def urls(said: str) -> str:
    """A text with the user-info and the query values of every URL in it masked, for texts
    that quote a URL someone else gave (a library's error): `http://***@host/path?x=***`."""

    def masked(found: re.Match[str]) -> str:
        user = f"{MASK}@" if found["user"] else ""
        shown = f"{found['scheme']}{user}{found['place']}"
        if found["query"] is None:
            return shown
        parts = [
            f"{part.partition('=')[0]}={MASK}" if "=" in part else MASK if part else ""
            for part in found["query"].split("&")
        ]
        return f"{shown}?{'&'.join(parts)}"

    return re.sub(_URL, masked, said)
