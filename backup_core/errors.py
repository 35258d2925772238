"""Errors as values with a place, and the exit codes they map to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

EXIT_OK = 0
EXIT_FAILED = 1  # a target (or an archive, for verify) failed
EXIT_USAGE = 2  # the manifest or the command line is wrong; nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)

# How the operator runs this tool, for advice that names a command: the installed `backups`
# sets it (in the environment, so --jobs children and worker processes say the same).
PROGRAM_VARIABLE = "BACKUP_PROGRAM"
NOW_VARIABLE = "BACKUP_NOW"  # an ISO 8601 time to use instead of the clock (tests, replays)


def command(task: str) -> str:
    """`task` as the operator would type it: `invoke verify ...` in a checkout, `backups verify ...`
    once installed (where `invoke` may not be on the PATH at all)."""
    program = os.environ.get(PROGRAM_VARIABLE)
    return f"{program if program in ('backups', 'invoke') else 'invoke'} {task}"


def shown(file: Path) -> str:
    """How a message names a file: relative to the working folder when it lies inside it (as the
    operator most likely typed it), else in full.  Never the bare file name: with manifests of the
    same name in several folders, that would not say which one is wrong."""
    # Folded for display only (`../d/../m.yml` is ../m.yml): the file read is the one given.
    file = Path(os.path.normpath(os.path.abspath(file)))  # noqa: PTH100 - no link resolution
    try:
        here = Path.cwd()
        # From the root (a systemd service's working folder) every path is "inside": a relative
        # etc/backups/backups.yml in the journal reads as a mistake.
        return str(file) if here == Path(here.anchor) else str(file.relative_to(here))
    except (ValueError, OSError):  # outside the working folder, or the folder is gone
        return str(file)


class Problem(NamedTuple):
    """One thing wrong with a manifest, located at a line and column.  A named tuple, not a
    dataclass: the processes that walk and pack import this module, and dataclasses' imports
    (inspect, ast) were a tenth of an unchanged check's helper's start."""

    file: Path
    line: int  # 1-based; 0 when the problem has no place in the file
    column: int
    where: str  # path to the key, e.g. targets[2].keep.last
    message: str

    def __str__(self) -> str:
        place = f"{shown(self.file)}:{self.line}:{self.column}" if self.line else shown(self.file)
        return f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"


class BackupError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_FAILED


class UsageError(BackupError):
    """The command line asks for something impossible (exit 2)."""

    exit_code = EXIT_USAGE


class ManifestError(UsageError):
    """A manifest that cannot run; carries every problem found, sorted by place."""

    def __init__(self, problems: list[Problem]):
        # A problem in defaults: is found once per target that inherits it: say it once.
        self.problems = sorted(set(problems), key=lambda p: (str(p.file), p.line, p.column, p.where, p.message))
        count = len(self.problems)
        summary = f"{count} problem{'s' if count != 1 else ''} in the manifest; nothing was done"
        super().__init__("\n".join([*(str(p) for p in self.problems), summary]))


class TargetError(BackupError):
    """One target failed; the message is a sentence an operator can act on."""
