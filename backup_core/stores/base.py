"""One small interface for every place archives live: the local destination and each remote.

Retention, verify, restore and the offsite copy talk only to this interface, so a
folder on this machine, a folder on a NAS and an S3 bucket are handled by the same
code.  Cross-cutting concerns (encryption) wrap a store instead of living inside
each one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from backup_core.errors import TargetError
from backup_core.stores import archives

Progress = Callable[[int], None]  # called with the number of bytes just sent
ENCRYPTED_SUFFIX = ".age"


@dataclass(frozen=True, order=True)
class Stored:
    """An archive as a store holds it, ordered by the time in its name."""

    when: datetime
    name: str  # the stored name: the archive's file name, plus .age when encrypted
    size: int = 0

    @property
    def archive(self) -> str:
        """The zip file's name, which every copy of it shares."""
        return self.name.removesuffix(ENCRYPTED_SUFFIX)

    @property
    def encrypted(self) -> bool:
        return self.name.endswith(ENCRYPTED_SUFFIX)


def this_host() -> str:
    """The name this host records with every copy it sends: ${BACKUP_HOST} as the manifest sees it
    (the environment's, else the host name), so an operator can pin it where host names change;
    spaces at its ends dropped, as HTTP drops them from a header's value."""
    return (os.environ.get("BACKUP_HOST") or socket.gethostname()).strip()


def recorded_host(host: str) -> str:
    """`host` as a store records it: percent-encoded UTF-8 (S3 metadata takes ASCII only), so
    two names never record alike; a host name's letters, digits, dots and dashes stay as they are."""
    return urllib.parse.quote(host, safe="")


class Foreign(str):
    """A vouched() answer for a good copy that another host made (its recorded host differs).

    Hosts that share a remote's prefix and a target name would otherwise each apply their keep
    to the others' copies too, and delete them: such a copy is neither counted nor deleted."""

    __slots__ = ()


def foreign(name: str, host: str) -> Foreign | None:
    """Foreign when `host` (as recorded with copy `name`; "" for none) is another host's."""
    mine = recorded_host(this_host())
    if not host or host.casefold() == mine.casefold():  # host names ignore case
        return None
    return Foreign(f"{name} was copied there by host {host}, not by this host ({mine})")


class StoreError(TargetError):
    """A store could not do what was asked: one sentence naming the store and the reason."""


# Remotes that did not answer during this run, and what was said of the first failure.  A
# service that accepts connections and never answers costs every request 3 tries of up to
# 30 s: asked again for every later target (and every copy of each), one dead endpoint made
# a run of three small targets last four and a half minutes.  A remote given up on is not
# asked again until the next run, which tries it afresh.
_unanswered: dict[str, str] = {}
_unanswered_lock = threading.Lock()


def give_up_on(remote: str, why: str) -> None:
    """Remember that `remote` did not answer (`why`, the failure's own sentence)."""
    with _unanswered_lock:
        _unanswered.setdefault(remote, why)


def not_asked(remote: str) -> StoreError | None:
    """The error for a request that is not sent, when `remote` did not answer earlier in this run."""
    with _unanswered_lock:
        why = _unanswered.get(remote)
    if why is None:
        return None
    return StoreError(f"remote {remote}: not asked again in this run: {why}")


def forget_unanswered() -> None:
    """A new run asks every remote afresh."""
    with _unanswered_lock:
        _unanswered.clear()


class Store(Protocol):
    """What retention, verify, restore and the offsite copy need from a place that holds archives."""

    name: str  # "local", or the remote's name

    def describe(self) -> str:
        """Where it is, for messages (a folder, s3://bucket/prefix); never a credential."""
        ...

    def list(self, target: str) -> list[Stored]:
        """The target's archives, oldest first; only names that match its exact pattern."""
        ...

    def put(self, target: str, file: Path, name: str, sha256: str, progress: Progress | None = None) -> Stored:
        """Store `file` as `name`, never over an existing archive, and confirm the store holds exactly
        the bytes whose SHA-256 is `sha256`; raise StoreError otherwise (nothing half-made is left)."""
        ...

    def delete(self, target: str, stored: Stored) -> bool:
        """Delete one archive; False when the store refuses because a retention lock protects it."""
        ...

    def fetch(self, target: str, stored: Stored, scratch: Path) -> Path:
        """A local file with the archive's stored bytes: the file itself, or a download into `scratch`."""
        ...

    def check(self, target: str, stored: Stored) -> str | None:
        """A quick integrity check without a download: None, or what is wrong in one sentence."""
        ...

    def checked(self, target: str, stored: Stored) -> str:
        """What a check() that found nothing wrong compared, as verify's line says it: whether the
        copy's bytes were read (a folder's SHA-256) or only its size and a server's record."""
        ...

    def vouched(self, target: str, stored: Stored) -> str | None:
        """Whether this is still the copy this tool put there, by what put() recorded (a checksum
        in the object's metadata, a .sha256 file), without reading its data: None, or why not.
        Retention counts only such copies: an object someone else wrote under an archive's name
        must never be what makes a good copy look surplus.  A copy recorded as made by another
        host answers Foreign (see foreign())."""
        ...

    def recorded(self, target: str, stored: Stored) -> str | None:
        """The SHA-256 (hex) that put() recorded for this copy's stored bytes, without reading them;
        None when none is recorded (a copy this tool did not put there).  A download is checked
        against it before anything is restored or verified from it."""
        ...

    def sender(self, target: str, stored: Stored) -> str:
        """The host recorded as having sent this copy (as recorded_host() wrote it); "" when none is
        recorded or it cannot be read.  Cheap: never reads the copy's data, never raises."""
        ...


def parse(target: str, name: str, size: int = 0) -> Stored | None:
    """A stored name of `target`'s archives (plain or encrypted) as a Stored, else None."""
    when = archives.parse_when(target, name.removesuffix(ENCRYPTED_SUFFIX))
    return Stored(when, name, size) if when is not None else None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, in hex, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()
