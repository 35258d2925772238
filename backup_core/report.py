"""Two readers of the same results: Ansible-style text lines with a RECAP, and one JSON document.

The text reporter also hears the run as it goes (to print each target's line as
it finishes, each file with -v, and a progress bar on a terminal); it never
decides anything.  Colour and progress bars appear only on a terminal.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from backup_core.manifest import Target
from backup_core.results import CHANGED, FAILED, OK, SKIPPED, RunResult, TargetResult

_COLOURS = {OK: "green", CHANGED: "yellow", FAILED: "red", SKIPPED: "cyan"}
_ANSI_CODE = re.compile(r"\033\[[0-9;]*m")
_ANSI = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "bold": "1"}


def human_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def count(number: int, noun: str) -> str:
    """'1 file', '2 files'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def describe(result: TargetResult, command: str, check: bool) -> str:
    """The one line that says what happened to a target."""
    if result.status == FAILED:
        where = f"{result.archive.name}: " if command == "verify" and result.archive else ""
        return f"{where}{result.error}"
    if result.status == SKIPPED:
        return result.reason
    if command == "verify":
        name = result.archive.name if result.archive else ""
        return (
            f"{name} ({count(result.files, 'file')}, {count(result.directories, 'folder')}, "
            f"{count(result.databases, 'database')} checked, {human_bytes(result.bytes_in)}, {result.seconds:.2f}s)"
        )
    deleted = ", ".join(result.deleted) if result.deleted else "nothing"
    if check and command == "backup":
        size = human_bytes(result.bytes_in)
        return f"{result.reason} {count(result.files, 'file')} ({size}); would delete {deleted}"
    if check or command == "prune":
        return f"{'would delete' if check else 'deleted'} {deleted}" if result.deleted else result.reason
    if result.status == OK:
        return result.reason
    name = result.archive.name if result.archive else ""
    databases = f", {count(result.databases, 'database')}" if result.databases else ""
    changed = ""
    if result.changed:
        more = f" and {len(result.changed) - 1} more" if len(result.changed) > 1 else ""
        changed = f"; changed while read: {result.changed[0]}{more}, so nothing rotated"
    return (
        f"{name} ({count(result.files, 'file')}{databases}, {human_bytes(result.bytes_in)} -> "
        f"{human_bytes(result.bytes_out)}, {result.seconds:.2f}s, {len(result.deleted)} rotated{changed})"
    )


class TextReporter:
    """Lines for people: one per target as it finishes, then a RECAP."""

    def __init__(
        self, stream: IO[str], command: str, check: bool = False, verbose: bool = False, log_file: Path | None = None
    ) -> None:
        self.stream, self.command, self.check, self.verbose = stream, command, check, verbose
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self._lock = threading.Lock()  # lines from parallel targets never interleave
        # A name that is not valid UTF-8 must not stop a run halfway through: escape it.
        self._log = log_file.open("a", encoding="utf-8", errors="backslashreplace") if log_file else None
        self._progress = _Progress(stream) if self.colour and command == "backup" and not check else None
        self.wants_totals = self._progress is not None

    # Observer: called from worker threads while the run goes on.
    def started(self, target: Target, total_bytes: int | None) -> None:
        if self._progress:
            self._progress.start(target.name, total_bytes)

    def advanced(self, target: Target, done_bytes: int) -> None:
        if self._progress:
            self._progress.advance(target.name, done_bytes)

    def file(self, target: Target, name: str) -> None:
        if self.verbose:
            self._say(f"  [{target.name}] {name}")
        elif self._log:
            self._write_log(f"  [{target.name}] {name}")

    def finished(self, result: TargetResult) -> None:
        if self._progress:
            self._progress.stop(result.name)
        line = describe(result, self.command, self.check)
        self._say(f"{self._paint(result.status, result.status)}: [{result.name}] => {line}")
        for warning in result.warnings:
            self._say(f"  [WARNING] [{result.name}] {warning}")

    # The run's opening and closing.
    def begin(self, manifest: Path, targets: int) -> None:
        title = f"{self.command.upper()} [{manifest.name}: {count(targets, 'target')}]"
        if self.check:
            title += " (CHECK MODE: nothing is written, deleted or locked)"
        self._say(self._paint("bold", f"{title} " + "*" * max(3, 72 - len(title))))

    def end(self, outcome: RunResult) -> None:
        if self._progress:
            self._progress.close()
            self._progress = None
        for error in outcome.errors:
            self._say(self._paint(FAILED, f"ERROR: {error}"))
        self._say("")
        self._say(self._paint("bold", "RECAP " + "*" * 66))
        recap = outcome.recap()
        width = max((len(name) for name in recap), default=0)
        for name, counts in recap.items():
            cells = "  ".join(self._paint(s, f"{s}={n}") if n else f"{s}={n}" for s, n in counts.items())
            self._say(f"{self._paint(_worst(counts), name.ljust(width))} : {cells}")
        if self._log:
            self._log.close()

    def _paint(self, style: str, text: str) -> str:
        code = _ANSI.get(_COLOURS.get(style, style))
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    def _say(self, line: str) -> None:
        with self._lock:
            if self._progress:
                self._progress.print(line)
            else:
                print(line, file=self.stream, flush=True)
            self._write_log(line)

    def _write_log(self, line: str) -> None:
        if not self._log:
            return
        plain = _ANSI_CODE.sub("", line)
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        self._log.write(f"{stamp} {plain}\n")
        self._log.flush()


def _worst(counts: dict[str, int]) -> str:
    for status in (FAILED, CHANGED, SKIPPED, OK):
        if counts.get(status):
            return status
    return OK


class _Progress:
    """Progress bars on a terminal (rich draws them; nothing is drawn without a terminal)."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )  # fmt: skip

        self._bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(file=stream), transient=True,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}
        self._bars.start()

    def start(self, name: str, total: int | None) -> None:
        self._tasks[name] = self._bars.add_task(name, total=total)

    def advance(self, name: str, done: int) -> None:
        if name in self._tasks:
            self._bars.advance(self._tasks[name], done)

    def stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._bars.remove_task(task)

    def print(self, line: str) -> None:
        from rich.text import Text

        self._bars.console.print(Text.from_ansi(line), soft_wrap=True)

    def close(self) -> None:
        self._bars.stop()


def json_document(outcome: RunResult) -> str:
    """The whole run as one JSON document (for --format json)."""
    return json.dumps(outcome.as_json(), indent=2, ensure_ascii=False)


def print_json(outcome: RunResult, stream: IO[str]) -> None:
    print(json_document(outcome), file=stream, flush=True)
