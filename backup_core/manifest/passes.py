"""A record of the manifest texts that passed the schema, so that a run of an unchanged manifest
need not load the schema validator.

Importing jsonschema and building its validator is about 40 ms, more than a tenth of an
unchanged hourly re-run, paid again by every `list`, `status` and `backup` of a manifest
that has not changed since it last passed.  The schema's verdict on a text is a pure function
of three things, and the record's key is a digest of all three:

* the manifest's bytes (the YAML parser is deterministic, and the schema is checked before
  variables or the environment enter);
* the schema's bytes;
* the code that judges: the validator library's files and our own loader, by size and
  modification time, so an upgrade, a reinstall or an edit of either forgets every record.

Only a pass is recorded, never a failure, so a problem is always found and explained by the
validator itself.  One small file per manifest (named by a digest of its absolute path)
holds the key of its last pass, so the cache holds one line per manifest however often it
is edited.  `invoke validate` always runs the validator and renews the record; a preview
(`--check`) reads records but writes none.  A record that cannot be read, or a cache folder
that cannot be written (a read-only home, another user's), only means the validator runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

_FOLDER = ("backup-core", "schema-passes")


def key(text: bytes, schema: bytes) -> str | None:
    """The digest naming one verdict, or None when the judging code cannot be pinned down."""
    try:
        spec = importlib.util.find_spec("jsonschema")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    digest = hashlib.blake2b(digest_size=20)
    for judge in (Path(__file__).with_name("loader.py"), Path(spec.origin)):
        try:
            st = judge.stat()
        except OSError:
            return None
        digest.update(f"{judge}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    digest.update(schema)
    digest.update(b"\0manifest\0")
    digest.update(text)
    return digest.hexdigest()


def passed(manifest: Path, verdict: str | None) -> bool:
    """Whether the manifest's current text (named by `verdict`, from key) passed the schema before."""
    record = _record(manifest)
    if verdict is None or record is None:
        return False
    try:
        return record.read_text(encoding="ascii").strip() == verdict
    except (OSError, ValueError):
        return False


def remember(manifest: Path, verdict: str | None) -> None:
    """Record that the text named `verdict` passed; quietly nothing when it cannot be written."""
    record = _record(manifest)
    if verdict is None or record is None:
        return
    temporary = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    try:
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary.write_text(verdict + "\n", encoding="ascii")
        temporary.replace(record)  # whole or absent: a torn record would only fail to match
    except OSError:
        with contextlib.suppress(OSError):  # a full disk may have left part of it
            temporary.unlink(missing_ok=True)


def _record(manifest: Path) -> Path | None:
    folder = _cache_folder()
    if folder is None:
        return None
    name = hashlib.blake2b(str(manifest).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return folder.joinpath(*_FOLDER, name)


def _cache_folder() -> Path | None:
    """Where per-user caches live: $XDG_CACHE_HOME, else %LOCALAPPDATA% on Windows, else ~/.cache."""
    given = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None)
    if given and Path(given).is_absolute():  # a relative one is invalid (XDG): it would follow the working folder
        return Path(given)
    try:
        home = Path.home()
    except RuntimeError:  # no home folder to be found (a bare service account)
        return None
    # A home that does not exist (HOME=/nonexistent, the convention for accounts without one)
    # is not made: the cache is a convenience, and creating folders there a side effect.
    return home / ".cache" if home.is_dir() else None
