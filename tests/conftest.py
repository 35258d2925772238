"""Shared fixtures: a project folder with a manifest, and the real `invoke` command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
        """`invoke COMMAND --manifest this-project's-manifest ARGS`."""
        command, *rest = args
        return run_invoke(command, "--manifest", str(self.manifest), *rest, env=env, timeout=timeout)

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


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


needs: Callable[[str], pytest.MarkDecorator] = lambda tool: pytest.mark.skipif(  # noqa: E731
    not have(tool), reason=f"{tool} is not installed"
)
