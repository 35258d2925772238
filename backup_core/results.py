"""Results as data: what happened to each target, apart from how it is printed.

The runner fills these in; the text and JSON reporters only read them; the exit
status is computed from them alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backup_core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

OK, CHANGED, FAILED, SKIPPED = "ok", "changed", "failed", "skipped"
STATUSES = (OK, CHANGED, FAILED, SKIPPED)


@dataclass
class OffsiteResult:
    """What one remote received, lost and holds for one target."""

    remote: str
    where: str
    uploaded: list[str] = field(default_factory=list)  # in check mode: would upload
    deleted: list[str] = field(default_factory=list)  # in check mode: would delete
    locked: list[str] = field(default_factory=list)  # due for deletion, but a retention lock keeps them
    copies: int = 0  # this target's archives on the remote afterwards
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Archives whose copy there this tool cannot vouch for (damaged, replaced): the local one
    # is then not rotated away, since it may be the only good copy.
    unvouched: list[str] = field(default_factory=list)


@dataclass
class TargetResult:
    """One line of the run: a target backed up or pruned, or one archive verified."""

    name: str
    status: str = OK
    archive: Path | None = None  # the archive made, verified or compared against
    files: int = 0
    directories: int = 0
    databases: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)  # archives removed (or, in check mode, that would be)
    reason: str = ""  # why ok or skipped, in a few words
    compared: str | None = None  # skip_unchanged: what decided, "metadata" (a stat walk) or "content"
    error: str | None = None  # why it failed: a sentence an operator can act on
    warnings: list[str] = field(default_factory=list)
    future: list[str] = field(default_factory=list)  # archives dated after the clock: kept, never the newest
    incomplete: list[str] = field(default_factory=list)  # members left out of the archive, and why
    offsite: list[OffsiteResult] = field(default_factory=list)
    # Files that kept changing while they were read: what the archive holds of them may be torn.
    changed: list[str] = field(default_factory=list)
    links: int = 0

    def fail(self, error: str) -> None:
        self.status, self.error = FAILED, error

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["archive"] = str(self.archive) if self.archive else None
        data["seconds"] = round(self.seconds, 3)
        for copy in data["offsite"]:
            copy["seconds"] = round(copy["seconds"], 3)
        return data


@dataclass
class RunResult:
    """A whole run: the command, whether it was a check run, and every target's result."""

    command: str
    manifest: Path
    check: bool = False
    results: list[TargetResult] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # target names in manifest order, for the recap
    errors: list[str] = field(default_factory=list)  # run-level problems (run hooks)
    seconds: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM (exit 130)

    def recap(self) -> dict[str, dict[str, int]]:
        """Counts by status for each target, in manifest order."""
        counts = {name: dict.fromkeys(STATUSES, 0) for name in self.order}
        for result in self.results:
            counts.setdefault(result.name, dict.fromkeys(STATUSES, 0))[result.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(r.status == FAILED for r in self.results)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "manifest": str(self.manifest),
            "check": self.check,
            "exit_code": self.exit_code,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "recap": self.recap(),
            "targets": [r.as_json() for r in self.results],
        }
