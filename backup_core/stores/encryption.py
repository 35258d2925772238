"""age encryption (age-encryption.org/v1) of what leaves the machine, as a wrapper around a store.

The cryptography is pyrage's, bindings to the Rust age library; nothing here is
hand-written cryptography.  Only public keys are needed to write: the backup host
can encrypt but not decrypt, so a host that is broken into does not hand over the
history stored offsite.  The ciphertext streams through a bounded buffer to a
scratch file beside the archive (kept only as long as its upload), and its SHA-256
is what the store records and confirms, so a quick remote verify proves the object
intact without any key.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any, BinaryIO

from backup_core.errors import TargetError, UsageError
from backup_core.manifest.redact import PRIVATE_KEY, holds_private_key
from backup_core.stores import archives
from backup_core.stores.base import ENCRYPTED_SUFFIX, Progress, Store, Stored, StoreError

_HEADER = b"age-encryption.org/v1\n"


def recipient_problem(text: str) -> str | None:
    """None when `text` is an age X25519 recipient or an SSH public key pyrage accepts, else why not.

    The reason never repeats a private key, nor anything that is not shaped like a public key
    (a line of a private key file, a password pasted by mistake): a secret must not end up in
    a terminal, a log or a CI transcript.  The problem's place names the line instead.
    """
    if holds_private_key(text):
        return PRIVATE_KEY
    try:
        _recipient(text)
    except Exception as exc:
        kind = text.split(" ", 1)[0]
        shown = (repr(text if len(text) <= 40 else text[:37] + "...") + " is") if _public_shape(text) else "this is"
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            why = f"not a valid {kind} public key: its key data does not decode (copy the whole .pub line)"
        elif " " in text and _public_shape(text) and not text.startswith("age1"):
            return f"{shown} an SSH key of type {kind}, which age does not support; use ssh-ed25519 or ssh-rsa"
        else:
            why = f"not a valid age recipient ({_first_line(exc)})"
        return f"{shown} {why}; use an age1... public key (age-keygen -y KEYFILE) or an SSH public key"
    return None


def _public_shape(text: str) -> bool:
    # Public keys begin so; a private key's lines and most secrets do not.
    return text.startswith(("age1", "ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"))


def _recipient(text: str) -> Any:
    import pyrage

    if text.startswith("ssh-"):
        return pyrage.ssh.Recipient.from_str(text)
    return pyrage.x25519.Recipient.from_str(text)


class _Guarded:
    """A file pyrage reads or writes through, which keeps any exception raised on its behalf.

    pyrage turns an exception raised in a Python callback into its own error: a Ctrl-C or
    SIGTERM into EncryptError('KeyboardInterrupt: '), a full disk into an error without its
    errno.  The original is raised again instead, so an interrupted run exits 130 and a full
    disk is called a full disk, never a damaged archive.  A writer can also hash what it writes.
    """

    def __init__(self, file: BinaryIO, hashing: bool = False) -> None:
        self.file = file
        self.error: BaseException | None = None
        self.digest = hashlib.sha256() if hashing else None

    def read(self, size: int = -1) -> bytes:
        try:
            return self.file.read(size)
        except BaseException as exc:
            self.error = exc
            raise

    def write(self, data: bytes) -> int:
        try:
            if self.digest is not None:
                self.digest.update(data)
            self.file.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        self.file.flush()


def _raise_original(exc: BaseException, *files: _Guarded) -> None:
    """Raise again what pyrage wrapped: an exception of a callback, or a Ctrl-C (SIGTERM) that arrived
    between callbacks, which pyrage reports only as text ('KeyboardInterrupt: ')."""
    for file in files:
        if file.error is not None:
            raise file.error
    if str(exc).startswith("KeyboardInterrupt"):
        raise KeyboardInterrupt from None


def encrypt(source: Path, ciphertext: Path, recipients: tuple[str, ...]) -> str:
    """Encrypt `source` into a new file `ciphertext`; return the ciphertext's SHA-256.

    OSError when a file cannot be read or written; StoreError when age refuses.
    """
    import pyrage

    keys = [_recipient(r) for r in recipients]
    with source.open("rb") as plain, archives.create_private(ciphertext) as file:
        reader, writer = _Guarded(plain), _Guarded(file, hashing=True)
        try:
            pyrage.encrypt_io(reader, writer, keys)
        except pyrage.EncryptError as exc:
            _raise_original(exc, reader, writer)
            raise StoreError(f"age refused to encrypt it: {_first_line(exc)}") from None
        file.flush()
    assert writer.digest is not None
    return writer.digest.hexdigest()


class EncryptedStore:
    """A store whose copies are age-encrypted: `<archive>.age`, named so in listings."""

    def __init__(self, inner: Store, recipients: tuple[str, ...]) -> None:
        self.inner, self.recipients, self.name = inner, recipients, inner.name

    def describe(self) -> str:
        return f"{self.inner.describe()} (encrypted)"

    def list(self, target: str) -> list[Stored]:
        return [stored for stored in self.inner.list(target) if stored.encrypted]

    def put(self, target: str, file: Path, name: str, sha256: str, progress: Progress | None = None) -> Stored:
        # Callers name the object they want (`<archive>.age`, as listings show it); a bare
        # archive name gets the suffix, never a second one.
        stored_name = name if name.endswith(ENCRYPTED_SUFFIX) else name + ENCRYPTED_SUFFIX
        # A name the runner's clean-up of interrupted work recognises (.<target>-<stamp>.<what>.partial),
        # so a run killed while encrypting leaves nothing that lasts beyond the next run.
        scratch = file.with_name(f".{stored_name.removesuffix(ENCRYPTED_SUFFIX).removesuffix('.zip')}.age.partial")
        archives.remove(scratch)  # left by a run that was killed (push, unlike backup, clears none first)
        try:
            try:
                # The plaintext's checksum proves nothing about the object: the ciphertext's is recorded.
                digest = encrypt(file, scratch, self.recipients)
            except OSError as exc:
                reason = "no space left" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
                where = f"{stored_name} in {scratch.parent}"
                raise StoreError(f"remote {self.name}: cannot encrypt {where}: {reason}") from None
            except StoreError as exc:
                raise StoreError(f"remote {self.name}: cannot encrypt {stored_name}: {exc}") from None
            return self.inner.put(target, scratch, stored_name, digest, progress)
        finally:
            archives.remove(scratch)

    def delete(self, target: str, stored: Stored) -> bool:
        return self.inner.delete(target, stored)

    def fetch(self, target: str, stored: Stored, scratch: Path) -> Path:
        return self.inner.fetch(target, stored, scratch)

    def check(self, target: str, stored: Stored) -> str | None:
        return self.inner.check(target, stored)

    def checked(self, target: str, stored: Stored) -> str:
        return self.inner.checked(target, stored)

    def vouched(self, target: str, stored: Stored) -> str | None:
        return self.inner.vouched(target, stored)

    def recorded(self, target: str, stored: Stored) -> str | None:
        return self.inner.recorded(target, stored)  # the ciphertext's, as put() recorded it

    def sender(self, target: str, stored: Stored) -> str:
        return self.inner.sender(target, stored)


def load_identities(file: Path) -> list[Any]:
    """The identities in an age identity file or an SSH private key file; UsageError if none."""
    import pyrage

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"--identity {file}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY-----" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except Exception as exc:
            raise UsageError(
                f"--identity {file}: not a usable SSH private key ({exc}); passphrase-protected keys are not supported"
            ) from None
    identities = []
    # PowerShell 5's `age-keygen > key.txt` writes UTF-16 with a byte-order mark; Notepad may add a UTF-8 one.
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    for number, raw in enumerate(data.decode(encoding, "replace").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except Exception:
                # The line itself is never shown: it may be a secret key with one character wrong.
                if line.startswith("age1"):
                    why = "is a public key (age1...), which encrypts; restoring needs the secret key it was made from"
                elif line.upper().startswith("AGE-SECRET-KEY-1"):
                    why = "looks like an age secret key but is not a valid one (cut short, or mistyped?)"
                else:
                    why = "is not an age secret key (AGE-SECRET-KEY-1...)"
                raise UsageError(f"--identity {file}: line {number} {why}") from None
    if not identities:
        raise UsageError(f"--identity {file}: holds no age secret key")
    return identities


def decrypt(ciphertext: Path, plaintext: Path, identities: list[Any]) -> None:
    """Decrypt into a new file; TargetError (exit 1) for a wrong key, a truncated or tampered file.

    age authenticates its header and then every 64 KiB chunk, and marks the last chunk, so
    a wrong byte anywhere or a file cut short is found; the plaintext written so far is then
    deleted, so nothing from a damaged copy is ever used.
    """
    import pyrage

    with ciphertext.open("rb") as encrypted:
        if encrypted.read(len(_HEADER)) != _HEADER:
            raise TargetError(f"{ciphertext.name} is not in the age format: its first line is missing or damaged")
        encrypted.seek(0)
        reader = _Guarded(encrypted)
        try:
            with archives.create_private(plaintext) as file:
                writer = _Guarded(file)
                try:
                    pyrage.decrypt_io(reader, writer, identities)
                except Exception as exc:
                    _raise_original(exc, reader, writer)
                    raise
        except pyrage.DecryptError as exc:
            # Raised while the header is read: no recipient stanza opens with these keys, or the
            # header itself is cut short or altered (its MAC fails).
            plaintext.unlink(missing_ok=True)
            reason = _first_line(exc)
            if "No matching keys" in reason:
                raise TargetError(
                    f"{ciphertext.name} cannot be decrypted with this identity (not one of its recipients)"
                ) from None
            raise TargetError(
                f"{ciphertext.name} is truncated or has been tampered with: its age header is damaged ({reason})"
            ) from None
        except OSError as exc:
            plaintext.unlink(missing_ok=True)
            if exc.errno is not None:
                raise  # a real input/output error (no space for the plaintext, say), reported as such
            # pyrage reports a chunk that fails authentication, or a stream without its last
            # chunk, as an OSError without an errno.
            raise TargetError(
                f"{ciphertext.name} is truncated or has been tampered with: {_first_line(exc)} "
                "(a piece of its ciphertext does not authenticate, or the file ends early)"
            ) from None
        except BaseException:
            plaintext.unlink(missing_ok=True)
            raise


def _first_line(exc: BaseException) -> str:
    """pyrage's message, on one line (some of its messages carry a second line of advice)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
