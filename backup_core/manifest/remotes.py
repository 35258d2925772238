"""Remotes in the manifest: the top-level `remotes:` resolved, and what the schema cannot check.

The schema has checked each remote's shape.  What is left needs the world outside
the document: variables in the prefix or path, an AWS profile that must exist in
the shared config files, recipients that must parse as age or SSH public keys.
Credentials never pass through here: boto3 finds them itself, later, in the
standard chain.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_core.errors import Problem
from backup_core.manifest import redact
from backup_core.manifest.variables import expand, home_expanded
from backup_core.manifest.yaml_source import Document, KeyPath, format_path
from backup_core.sources import held

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Remote:
    """One resolved remote: where copies go, and how."""

    name: str
    type: str  # "s3" or "folder"
    prefix: str = ""
    bucket: str = ""
    path: Path | None = None
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str | None = None
    addressing_style: str = "auto"
    checksum: str = "sha256"
    max_bandwidth: int | None = None  # bytes per second
    keep: dict[str, Any] | None = None  # None: the target's keep
    recipients: tuple[str, ...] = ()  # age or SSH public keys; empty: copies are not encrypted

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    def describe(self) -> str:
        """Where the copies go, as an operator would write it (never a credential)."""
        if self.type == "s3":
            return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")
        return str(Path(self.path or ".", self.prefix) if self.prefix else self.path)

    def settings(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "where": self.describe()}
        for key in ("region", "profile", "storage_class", "max_bandwidth", "keep"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.encrypted:
            data["encryption"] = {"recipients": len(self.recipients)}
        return data


# A key is the prefix, the target's name (at most 64) twice, and about 45 bytes of time stamp,
# suffixes and slashes: what is left of S3's 1,024 bytes for the prefix, with room to spare.
_LONGEST_PREFIX = 800


def resolve(
    document: Document, environ: Mapping[str, str], problems: list[Problem], broken: Set[str] = frozenset()
) -> dict[str, Remote]:
    """Every remote of the manifest by name; problems are appended, never raised.  A remote the
    schema refused (a key path in `broken` under it) is left out: its values may be of any type
    (`max_bandwidth: 10k`, `profile: [a]` ended every command in a traceback), and the schema's
    messages already say what is wrong with it."""
    raw_remotes = document.data.get("remotes") or {}
    remotes = {}
    if not isinstance(raw_remotes, dict):
        return {}
    for name, raw in raw_remotes.items():
        if not isinstance(raw, dict) or raw.get("type") not in ("s3", "folder"):
            continue  # the schema has said why
        if any(where == f"remotes.{name}" or where.startswith(f"remotes.{name}.") for where in broken):
            continue
        here: KeyPath = ("remotes", name)
        remotes[name] = _resolve_one(document, name, raw, here, environ, problems)
    return remotes


def landing(remote: Remote, target: str) -> tuple[str, ...]:
    """Where a remote puts a target's copies, as two remotes naming one place would both say it:
    a folder by the folder itself (`Daily-` and `daily-`, or `sub/` and a path ending in `sub`,
    are one folder on Windows' disks), a bucket by its endpoint, name and key prefix."""
    if remote.type == "folder":
        return ("folder", os.path.normcase(Path(remote.path or ".", f"{remote.prefix}{target}")))
    endpoint = (remote.endpoint or "").rstrip("/").lower()
    return ("s3", endpoint, remote.bucket, f"{remote.prefix}{target}")


def _resolve_one(
    document: Document,
    name: str,
    raw: dict[str, Any],
    here: KeyPath,
    environ: Mapping[str, str],
    problems: list[Problem],
) -> Remote:
    prefix = expand(document, raw.get("prefix", ""), (*here, "prefix"), environ, problems, "prefix") or ""
    if prefix.startswith("/") or "//" in prefix or ".." in prefix.split("/"):
        problems.append(
            document.problem((*here, "prefix"), f"prefix {prefix!r} must be relative, without '//' or '..' parts")
        )
    elif (length := len(prefix.encode("utf-8", "surrogateescape"))) > _LONGEST_PREFIX:
        # S3 refuses a key over 1,024 bytes: every upload failed with KeyTooLongError.
        problems.append(
            document.problem(
                (*here, "prefix"),
                f"prefix is {length} bytes long; a copy's key (prefix, target name and archive name) may be at "
                f"most 1,024 bytes: keep the prefix to {_LONGEST_PREFIX} bytes",
            )
        )
    path = None
    if raw["type"] == "folder" and isinstance(raw.get("path"), str):
        expanded = expand(document, raw["path"], (*here, "path"), environ, problems, "path")
        home = None if expanded is None else home_expanded(document, expanded, (*here, "path"), problems)
        path = None if home is None else Path(os.path.abspath(document.file.parent / home))  # noqa: PTH100 - no link resolution
    if raw["type"] == "folder":
        for key in ("bucket", "endpoint", "region", "profile", "storage_class"):
            if key in raw:
                problems.append(document.problem((*here, key), f"{key} is for s3 remotes; a folder remote has a path"))
    elif "path" in raw:
        problems.append(document.problem((*here, "path"), "path is for folder remotes; an s3 remote has a bucket"))
    profile = raw.get("profile")
    if profile is not None:
        found, unread = _aws_profiles(environ)
        if unread and profile not in found:
            # Not "missing": the file that may define it cannot be read as the AWS tools read it.
            said = f"AWS profile {profile!r} cannot be looked up: {'; '.join(unread)}"
            problems.append(document.problem((*here, "profile"), said))
        elif profile not in found:
            problems.append(
                document.problem(
                    (*here, "profile"),
                    f"AWS profile {profile!r} is in neither the shared config nor the credentials file; "
                    "add it (aws configure --profile) or remove profile:",
                )
            )
    bandwidth = raw.get("max_bandwidth")
    return Remote(
        name=name,
        type=raw["type"],
        prefix=prefix,
        bucket=raw.get("bucket", ""),
        path=path,
        endpoint=raw.get("endpoint"),
        region=raw.get("region"),
        profile=profile,
        storage_class=raw.get("storage_class"),
        addressing_style=raw.get("addressing_style", "auto"),
        checksum=raw.get("checksum", "sha256"),
        max_bandwidth=_rate(bandwidth) if isinstance(bandwidth, str) else None,
        keep=dict(raw["keep"]) if isinstance(raw.get("keep"), dict) else None,
        recipients=_recipients(document, raw.get("encryption"), (*here, "encryption"), environ, problems),
    )


def _rate(text: str) -> int:
    """'10M' as bytes per second (the schema has checked the form)."""
    unit = text[-1] if text[-1] in _UNITS else ""
    return int(text.removesuffix(unit)) * _UNITS[unit]


def _aws_profiles(environ: Mapping[str, str]) -> tuple[set[str], list[str]]:
    """Profile names in the shared AWS files, found where boto3 looks for them; and what is
    wrong with a file that exists but cannot be read as boto3 reads it (it refuses such a file
    at the run: a duplicate section, a line that is no key = value, a file it may not read)."""
    home = Path("~").expanduser()
    config = Path(environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()
    credentials = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials").expanduser()
    names: set[str] = set()
    unread: list[str] = []
    for file, strip in ((config, "profile "), (credentials, "")):
        parser = configparser.RawConfigParser()
        try:
            # Read here: configparser.read() passes over a file it cannot open without a word.
            parser.read_string(file.read_text(encoding="utf-8"), source=str(file))
        except FileNotFoundError:
            continue
        except OSError as exc:
            unread.append(f"{file} cannot be read ({exc.strerror or exc}); fix its permissions")
            continue
        except (configparser.Error, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            unread.append(f"{file} is not a valid AWS file ({first}); fix it")
            continue
        for section in parser.sections():
            names.add(section.removeprefix(strip).strip() if strip else section.strip())
    return names, unread


def _recipients(
    document: Document, raw: Any, where: KeyPath, environ: Mapping[str, str], problems: list[Problem]
) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        return ()
    from backup_core.stores import encryption  # imported only when a manifest encrypts

    if "recipients" in raw:
        given = raw["recipients"]
        if not isinstance(given, list) or not all(isinstance(item, str) for item in given):
            return ()  # the schema said what it must be
        lines = [(item, (*where, "recipients", index), 0) for index, item in enumerate(given)]
    elif "recipients_file" in raw:
        if not isinstance(raw["recipients_file"], str):
            return ()  # the schema said what it must be
        if redact.holds_private_key(raw["recipients_file"]):
            problems.append(document.problem((*where, "recipients_file"), redact.PRIVATE_KEY))
            return ()
        name = expand(document, raw["recipients_file"], (*where, "recipients_file"), environ, problems, "path")
        home = None if name is None else home_expanded(document, name, (*where, "recipients_file"), problems)
        if home is None:
            return ()
        file = document.file.parent / home
        try:
            # Opened without waiting: a named pipe there held every command, `list` included.
            text = held.read_own(file).removeprefix("\ufeff")  # a byte-order mark from Notepad is no key
            text.encode("utf-8")  # a byte that is not UTF-8 (kept by read_own as a surrogate): not a text file
        except (OSError, UnicodeEncodeError) as exc:
            why = "it is not UTF-8 text" if isinstance(exc, UnicodeEncodeError) else exc.strerror or str(exc)
            problems.append(document.problem((*where, "recipients_file"), f"cannot read {file}: {why}"))
            return ()
        # Numbered so that a bad recipient is reported at its own line of that file.
        numbered = [(line.strip(), (*where, "recipients_file"), n) for n, line in enumerate(text.splitlines(), 1)]
        lines = [(line, place, n) for line, place, n in numbered if line and not line.startswith("#")]
        if any(redact.holds_private_key(line) for line, _, _ in lines):
            # The whole file, in one line: reported line by line, the body of an SSH private
            # key would be refused one base64 line at a time, each a piece of the key.
            problems.append(
                document.problem(
                    (*where, "recipients_file"),
                    f"{file} holds a private key, which must never be on the backup host; list public keys "
                    "in it (age-keygen -y KEYFILE, or the .pub file of an SSH key)",
                )
            )
            return ()
        if not lines:
            problems.append(document.problem((*where, "recipients_file"), f"{file} holds no recipient"))
    else:
        return ()
    good = []
    for text, place, number in lines:
        reason = encryption.recipient_problem(text)
        if reason and number:
            problems.append(Problem(file, number, 1, format_path(place), reason))
        elif reason:
            problems.append(document.problem(place, reason))
        else:
            good.append(text)
    return tuple(good)
