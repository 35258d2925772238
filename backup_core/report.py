"""Two readers of the same results: Ansible-style text lines with a RECAP, and one JSON document.

The text reporter also hears the run as it goes (to print each target's line as
it finishes, each file with -v, and a progress bar on a terminal); it never
decides anything.  Colour and progress bars appear only on a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from backup_core.errors import EXIT_INTERRUPTED
from backup_core.manifest import Target
from backup_core.results import CHANGED, FAILED, OK, SKIPPED, RunResult, TargetResult

if TYPE_CHECKING:
    from backup_core.monitoring.status import StoreState, TargetState

_COLOURS = {OK: "green", CHANGED: "yellow", FAILED: "red", SKIPPED: "cyan"}
_ANSI_CODE = re.compile(r"\033\[[0-9;]*m")
_ANSI = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "bold": "1"}
# Control characters, and the stand-ins Python decodes a name's non-UTF-8 bytes to.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")


def shown(text: str) -> str:
    """`text` with control characters escaped as Python writes them (\\n, \\x1b): a file name
    holding a newline must not forge a line of its own, nor one holding ESC recolour the
    terminal.  Applied to what a line reports, before the reporter's own colours."""
    return _CONTROL.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    character = found.group()
    if "\udc80" <= character <= "\udcff":  # a byte that is not UTF-8, as the file system holds it
        return f"\\x{ord(character) - 0xDC00:02x}"
    return repr(character)[1:-1]


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
    """The one line that says what happened to a target, with what went offsite."""
    line = _describe_local(result, command, check)
    if result.offsite and result.status != FAILED and command != "verify":
        line += f"; {_offsite(result, check)}"
    return line


def _offsite(result: TargetResult, check: bool) -> str:
    """'2 copies offsite: s3 +1 (7 held), nas +1 -1 (5 held)'; in check mode what would be sent."""
    parts = []
    for copy in result.offsite:
        moves = "".join(f" {sign}{len(names)}" for sign, names in (("+", copy.uploaded), ("-", copy.deleted)) if names)
        locked = f", {len(copy.locked)} kept by a retention lock" if copy.locked else ""
        parts.append(f"{copy.remote}{moves} ({copy.copies} held{locked})")
    if check:
        return "offsite would be: " + ", ".join(parts)
    copies = len(result.offsite)
    return f"{copies} {'copy' if copies == 1 else 'copies'} offsite: " + ", ".join(parts)


def _describe_local(result: TargetResult, command: str, check: bool) -> str:
    if result.status == FAILED:
        error = result.error or ""
        if command == "verify" and result.archive:
            # The line begins with the archive's name; an error that begins with it too would
            # say it twice ("NAME: NAME does not match ...").  JSON keeps the error whole.
            return f"{result.archive.name}: {error.removeprefix(result.archive.name + ' ')}"
        if command == "prune" and result.deleted and "deleted before it" not in error:
            # A prune that failed part-way (a file it may not delete): what went is said too.
            return f"{error} (deleted before it: {', '.join(result.deleted)})"
        return error
    if result.status == SKIPPED:
        return result.reason
    if command == "verify":
        name = result.archive.name if result.archive else ""
        if result.reason:  # a remote copy checked against its record, not read through
            return f"{name} ({result.reason}, {human_bytes(result.bytes_in)}, {result.seconds:.2f}s)"
        links = f", {count(result.links, 'link')}" if result.links else ""
        return (
            f"{name} ({count(result.files, 'file')}, {count(result.directories, 'folder')}{links}, "
            f"{count(result.databases, 'database')} checked, {human_bytes(result.bytes_in)}, {result.seconds:.2f}s)"
        )
    deleted = ", ".join(result.deleted) if result.deleted else "nothing"
    if check and command == "backup":
        size = human_bytes(result.bytes_in)
        if result.status == OK:  # "would archive nothing: unchanged since NAME" (skip_unchanged)
            return f"{result.reason} ({count(result.files, 'file')}, {size}); would delete {deleted}"
        verb, _, condition = result.reason.partition(" unless ")  # "would archive N files (size) unless unchanged"
        condition = f" unless {condition}" if condition else ""
        return f"{verb} {count(result.files, 'file')} ({size}){condition}; would delete {deleted}"
    if command == "push":
        return result.reason or ("would upload" if check else "uploaded")
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


def describe_status(state: TargetState) -> str:
    """`invoke status`'s line: the newest archive, its age, then what each store holds; or why it failed."""
    from backup_core.monitoring.status import format_age

    stores = ", ".join(_store_holdings(store) for store in state.stores)
    if state.error:
        return f"{state.error} ({stores})"
    newest = state.newest
    limit = f", max_age {state.max_age}" if state.max_age else ""
    if newest is None or newest.age is None:
        # A destination moved away or unmounted looks like a target never backed up: say which.
        gone = next((f", and {s.where} does not exist" for s in state.stores if s.folder_missing), "")
        return f"no archive yet{limit or ' (no max_age, so not judged)'}{gone} ({stores})"
    age = f"{format_age(newest.age)} old" if newest.age >= 0 else f"dated {format_age(-newest.age)} ahead"
    if newest.confirmed_when is not None and newest.age >= 0:  # skip_unchanged: the source checked since
        age = f"source found unchanged {format_age(newest.age)} ago"
    return f"{newest.newest}, {age}{limit} ({stores})"


def _store_holdings(store: StoreState) -> str:
    """'local 3 archives 1.2 kB', 'nas 3 archives 1.2 kB', 'offsite unreachable'."""
    if not store.listed:
        return f"{store.store} not listed"
    return f"{store.store} {count(store.archives, 'archive')} {human_bytes(store.bytes)}"


class Recapped(Protocol):
    """What a run's closing lines read: run-level errors and counts by status per target."""

    errors: list[str]

    def recap(self) -> dict[str, dict[str, int]]: ...


def _open_log(file: Path) -> IO[str]:
    """The log, opened to append; one it creates is readable by its owner only (0600 on POSIX,
    as archives are: it names hooks, remotes and files), an existing one keeps its mode."""
    from backup_core.stores import archives

    # A name that is not valid UTF-8 must not stop a run halfway through: escape it.  One call,
    # so that no interrupt can close the descriptor twice (see archives.create_private).
    return open(file, "a", encoding="utf-8", errors="backslashreplace", opener=archives.owner_only)


class TextReporter:
    """Lines for people: one per target as it finishes, then a RECAP."""

    def __init__(
        self, stream: IO[str], command: str, check: bool = False, verbose: bool = False, log_file: Path | None = None
    ) -> None:
        self.stream: IO[str] | None = stream
        self.command, self.check, self.verbose = command, check, verbose
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        if self.colour and os.name == "nt":
            # The classic Windows console shows escape codes as text (←[32m); Windows Terminal
            # (WT_SESSION), ConEmu and MSYS2 terminals (TERM) understand them.
            self.colour = "WT_SESSION" in os.environ or "TERM" in os.environ or "ConEmuANSI" in os.environ
        self._lock = threading.Lock()  # lines from parallel targets never interleave
        self._log = _open_log(log_file) if log_file else None
        self._log_name = log_file
        # Output that could not be written (a full disk, a closed pipe): the run goes on and
        # the command reports these at the end, on whatever channel still works.  Each is
        # (sentence, whether it fails the run): a reader that closed the pipe chose to stop
        # reading; a log or a redirected output that lost lines did not.
        self.problems: list[tuple[str, bool]] = []
        moving = command in ("backup", "push") and not check
        self._progress = _Progress(stream) if self.colour and moving else None
        self.wants_totals = self._progress is not None
        # Files and progress are heard only from targets run in this process (not by --jobs' children).
        # The log holds what the output shows, a file's line included only with --verbose: at a
        # million files a night, one line each would fill /var/log and keep --jobs on threads.
        self.follows_targets = verbose or self._progress is not None

    # Observer: called from worker threads while the run goes on.
    def started(self, target: Target, total_bytes: int | None) -> None:
        if self._progress:
            self._progress.start(target.name, total_bytes)

    def advanced(self, target: Target, done_bytes: int) -> None:
        if self._progress:
            self._progress.advance(target.name, done_bytes)

    def file(self, target: Target, name: str) -> None:
        if self.verbose:
            self._say(f"  [{target.name}] {shown(name)}")

    def uploading(self, target: Target, remote: str, total_bytes: int) -> Callable[[int], None]:
        if not self._progress:
            return lambda sent: None
        bar = f"{target.name} -> {remote}"
        self._progress.stop(target.name)  # the archive is made: its bar gives way to the upload's
        self._progress.start(bar, total_bytes)
        return lambda sent: self._progress.advance(bar, sent) if self._progress else None

    def finished(self, result: TargetResult) -> None:
        if self._progress:
            self._progress.stop(result.name)
            for remote in result.offsite:
                self._progress.stop(f"{result.name} -> {remote.remote}")
        self.verdict(result.status, result.name, describe(result, self.command, self.check))
        for warning in result.warnings:
            self._say(f"  [WARNING] [{result.name}] {shown(warning)}")

    def verdict(self, status: str, name: str, line: str) -> None:
        """`status: [name] => line`, the status coloured on a terminal."""
        self._say(f"{self._paint(status, status)}: [{name}] => {shown(line)}")

    def warn(self, line: str) -> None:
        self._say(f"  [WARNING] {shown(line)}")

    # The run's opening and closing.
    def begin(self, manifest: Path, targets: int, summary: str = "") -> None:
        # The summary is for checks that show only the first line (Nagios, Icinga).
        title = f"{self.command.upper()} [{shown(manifest.name)}: {count(targets, 'target')}{summary}]"
        if self.check:
            title += " (CHECK MODE: nothing is written, deleted or locked)"
        self._say(self._paint("bold", f"{title} " + "*" * max(3, 72 - len(title))))

    def end(self, outcome: Recapped) -> None:
        if self._progress:
            self._progress.close()
            self._progress = None
        for error in outcome.errors:
            self._say(self._paint(FAILED, f"ERROR: {shown(error)}"))
        self._say("")
        self._say(self._paint("bold", "RECAP " + "*" * 66))
        recap = outcome.recap()
        width = max((len(name) for name in recap), default=0)
        for name, counts in recap.items():
            cells = "  ".join(self._paint(s, f"{s}={n}") if n else f"{s}={n}" for s, n in counts.items())
            self._say(f"{self._paint(_worst(counts), name.ljust(width))} : {cells}")
        if self._log:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def _paint(self, style: str, text: str) -> str:
        code = _ANSI.get(_COLOURS.get(style, style))
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    def _say(self, line: str) -> None:
        with self._lock:
            if self.stream is not None:
                try:
                    if self._progress:
                        self._progress.print(line)
                    else:
                        print(line, file=self.stream, flush=True)
                except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
                    self._lost_stream(exc)
            self._write_log(line)

    def _lost_stream(self, exc: BaseException) -> None:
        stream, self.stream, self._progress = self.stream, None, None
        name = "stdout" if stream is sys.stdout else "stderr" if stream is sys.stderr else "the output"
        if isinstance(exc, BrokenPipeError):
            self.problems.append((f"{name} was closed by its reader; the run went on without printing", False))
        else:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.problems.append((f"could not write to {name} ({reason}); the run went on without printing", True))
        silence(stream)

    def _write_log(self, line: str) -> None:
        if not self._log:
            return
        plain = _ANSI_CODE.sub("", line)
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            self._log.write(f"{stamp} {plain}\n")
            self._log.flush()
        except OSError as exc:
            log, self._log = self._log, None
            with contextlib.suppress(OSError):
                log.close()
            self.problems.append(
                (f"could not write the log file {self._log_name} ({exc.strerror or exc}); it ends early, "
                 "the run went on", True)
            )  # fmt: skip


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


def json_document(outcome: RunResult | dict[str, Any] | list[Any], ascii_only: bool = False) -> str:
    """The whole run as one JSON document (for --format json)."""
    data = outcome.as_json() if isinstance(outcome, RunResult) else outcome
    return json.dumps(data, indent=2, ensure_ascii=ascii_only)


def print_json(outcome: RunResult | dict[str, Any] | list[Any], stream: IO[str]) -> bool:
    """Print the document; False when the stream would not take it (the caller says so elsewhere)."""
    # A console that is not UTF-8 gets \u escapes: still the same JSON, whatever it can show.
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "")
    try:
        print(json_document(outcome, ascii_only=encoding != "utf8"), file=stream, flush=True)
    except (OSError, ValueError):
        silence(stream)
        return False
    return True


def error_document(command: str, manifest: str, exit_code: int, messages: list[str]) -> dict[str, Any]:
    """The JSON document of a run that did not start (a usage or manifest error) or stopped early."""
    return {
        "command": command,
        "manifest": manifest,
        "check": False,
        "exit_code": exit_code,
        "interrupted": exit_code == EXIT_INTERRUPTED,
        "seconds": 0.0,
        "errors": messages,
        "recap": {},
        "targets": [],
    }


def silence(stream: IO[str] | None) -> None:
    """Put /dev/null in place of a standard stream that can no longer be written.

    Python flushes stdout at exit; a pipe its reader closed would then add a traceback-like
    "Exception ignored" message and exit status 120 to a run that went well.
    """
    for name in ("stdout", "stderr"):
        if stream is not None and getattr(sys, name) is stream:
            setattr(sys, name, Path(os.devnull).open("w", encoding="utf-8"))  # noqa: SIM115 - until exit
