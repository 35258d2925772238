"""One function per command: load the manifest, pick targets, run, report, return the exit status.

tasks.py only parses flags and calls these; they raise UsageError (exit 2) for a
bad manifest or command line and otherwise return the status the results give.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from backup_core.errors import EXIT_OK, TargetError, UsageError

if TYPE_CHECKING:
    from backup_core.manifest import Manifest, Target

# The modules that do the work are imported by the commands that use them, not here:
# `invoke --list` and `--help` then start without jsonschema, the zip writer or SQLite.

FORMATS = ("text", "json")


def _load(manifest_path: Path | str) -> Manifest:
    from backup_core import manifest as manifest_module

    return manifest_module.load(Path(manifest_path))


def _format(value: str) -> str:
    if value not in FORMATS:
        raise UsageError(f"--format {value}: choose one of {', '.join(FORMATS)}")
    return value


def run_targets(
    command: str,
    manifest_path: Path | str,
    only: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    skip_tags: Iterable[str] | None = None,
    check: bool = False,
    force: bool = False,
    jobs: int | str = 0,
    output: str = "text",
    verbose: bool = False,
    log_file: str | None = None,
    latest: bool = False,
) -> int:
    """backup, prune or verify the selected targets; return the exit status."""
    from backup_core import report, runner
    from backup_core.manifest import selection

    output = _format(output)
    jobs = _jobs(jobs)
    _tolerant_output()
    loaded = _load(manifest_path)
    targets = selection.select(loaded.targets, only, tags, skip_tags)
    # In JSON mode stdout carries the document alone; people's text goes to stderr.
    try:
        text = report.TextReporter(
            sys.stderr if output == "json" else sys.stdout,
            command,
            check=check,
            verbose=verbose,
            log_file=Path(log_file) if log_file else None,
        )
    except OSError as exc:
        raise UsageError(f"--log-file {log_file}: {exc.strerror or exc}") from None
    options = runner.Options(check=check, force=force, jobs=jobs or loaded.jobs, latest=latest, observer=text)
    _stop_on_terminate()
    text.begin(loaded.file, len(targets))
    outcome = runner.run(command, loaded, targets, options)
    text.end(outcome)
    if output == "json":
        report.print_json(outcome, sys.stdout)
    return outcome.exit_code


def _jobs(value: int | str) -> int:
    try:
        jobs = int(value)
    except ValueError:
        jobs = -1
    if jobs < 0:
        raise UsageError(f"--jobs {value}: give a number of targets to run at once, 1 or more")
    return jobs


def _tolerant_output() -> None:
    """A file name the console cannot show (a cp1252 console, a strict pipe) is escaped, not fatal."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _stop_on_terminate() -> None:
    """cron, CI and systemd stop a job with SIGTERM: clean up exactly as for Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def validate(manifest_path: Path | str) -> int:
    """Check a manifest without running it."""
    from backup_core import report

    loaded = _load(manifest_path)
    print(f"{loaded.file.name}: valid, {report.count(len(loaded.targets), 'target')}")
    return EXIT_OK


def list_targets(
    manifest_path: Path | str,
    only: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    skip_tags: Iterable[str] | None = None,
    output: str = "text",
) -> int:
    """Show the targets a selection would run, with every resolved setting."""
    from backup_core.manifest import selection

    output = _format(output)
    loaded = _load(manifest_path)
    targets = selection.select(loaded.targets, only, tags, skip_tags)
    if output == "json":
        print(json.dumps([t.settings() for t in targets], indent=2, ensure_ascii=False))
        return EXIT_OK
    for target in targets:
        print(_describe_target(target))
    return EXIT_OK


def _describe_target(target: Target) -> str:
    settings = target.settings()
    lines = [f"{target.name}:"]
    for key, value in settings.items():
        if key == "name" or value in ([], {}, None) or value == {"before": [], "after": [], "on_failure": []}:
            continue
        lines.append(f"  {key}: {_plain(value)}")
    return "\n".join(lines)


def _plain(value: object) -> str:
    """A setting as the manifest would spell it: true, 30, [a, b], {last: 7}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, bool) else str(value)


def restore(
    manifest_path: Path | str,
    target_name: str,
    to: str | None,
    archive: str | None = None,
    member: str | None = None,
    force: bool = False,
) -> int:
    """Restore a target's archive (the newest unless named) into a folder."""
    from backup_core import restore as restore_module

    if not to:
        raise UsageError("restore needs --to DIR: the folder to restore into (it is created if missing)")
    loaded = _load(manifest_path)
    matches = [t for t in loaded.targets if t.name == target_name]
    if not matches:
        known = ", ".join(t.name for t in loaded.targets)
        raise UsageError(f"no target named {target_name!r}; targets are: {known}")
    target = matches[0]
    try:
        chosen = restore_module.choose_archive(target, archive)
        done = restore_module.restore(chosen, Path(to), member=member, force=force)
    except TargetError as exc:
        print(f"failed: [{target.name}] => {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"failed: [{target.name}] => {exc.strerror or exc} ({exc.filename or to})", file=sys.stderr)
        return TargetError.exit_code
    for warning in done.warnings:
        print(f"  [WARNING] [{target.name}] {warning}")
    print(
        f"restored: [{target.name}] => {chosen.name} -> {done.folder} "
        f"({done.files} files, {done.directories} folders, {done.links} links, "
        f"{done.databases} databases passed integrity_check)"
    )
    return EXIT_OK
