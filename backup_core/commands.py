"""One function per command: load the manifest, pick targets, run, report, return the exit status.

tasks.py only parses flags and calls these; they raise UsageError (exit 2) for a
bad manifest or command line and otherwise return the status the results give.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from backup_core import interrupts, report
from backup_core import manifest as manifest_module
from backup_core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    NOW_VARIABLE,
    BackupError,
    ManifestError,
    TargetError,
    UsageError,
    shown,
)
from backup_core.manifest import Manifest, Remote, Target, selection

# The runner (and through it the zip writer, the stores, filelock), restore and the offsite
# stores are imported by the commands that use them: `validate` and `list` need none of
# them, and they were a third of their start-up.
if TYPE_CHECKING:
    from backup_core import restore as restore_module
    from backup_core.monitoring.metrics import TargetRun
    from backup_core.monitoring.status import TargetState

FORMATS = ("text", "json")


def _load(manifest_path: Path | str, check: bool = False) -> Manifest:
    _check_clock()
    # A preview writes nothing, not even the record that the manifest passed the schema.
    return manifest_module.load(Path(manifest_path), record=not check)


def _check_clock() -> None:
    """A BACKUP_NOW that names no time an archive can be named by is the command's usage error,
    not an "unexpected error" on every target."""
    fixed = os.environ.get(NOW_VARIABLE)
    if not fixed:
        return
    from datetime import datetime, timedelta, timezone

    try:
        moment = datetime.fromisoformat(fixed.replace("Z", "+00:00"))
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
        # An archive's name holds a four-digit year, and names are made a little after it.
        if not 1000 <= (moment + timedelta(days=1)).year <= 9998:
            raise ValueError(moment)
    except (ValueError, OverflowError):
        raise UsageError(
            f"{NOW_VARIABLE}={fixed}: not a time this tool can name archives by; give an ISO 8601 time "
            "in the years 1000 to 9998 (2026-03-01T12:00:00Z) or unset it"
        ) from None


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
    jobs: int | str = "",
    output: str = "text",
    verbose: bool = False,
    log_file: str | None = None,
    latest: bool = False,
    remote: str | None = None,
    download: bool = False,
    identity: str | None = None,
    metrics_file: str | None = None,
) -> int:
    """backup, prune, push or verify the selected targets; return the exit status."""
    output = _format(output)
    # Everything from here on, the runner's import included (50 ms), answers a signal with exit
    # 130 and, in JSON mode, a document.
    with _json_on_error(command, manifest_path, output == "json"):
        _stop_on_terminate()
        from backup_core import runner

        jobs = _jobs(jobs)
        loaded = _load(manifest_path, check)
        targets = selection.select(loaded.targets, only, tags, skip_tags)
        _known_remote(loaded, remote)
        _needs_remote(remote, identity=identity, download=download)
        if identity and not download:
            # Accepted, it decrypted nothing: the checksums alone were compared, and a key that
            # cannot open the copies passed for one that can.
            raise UsageError(
                "--identity decrypts the copies that --download reads back; without --download only their "
                "checksums are compared: add --download"
            )
        metrics = _metrics_path(loaded, metrics_file)
        if check and metrics is not None:
            # A preview writes no metrics, but says what every real run would meet (the Ansible
            # role checks a schedule's flags with one): the run would be done, its metrics not.
            from backup_core.monitoring import metrics as metrics_module

            if (why := metrics_module.folder_problem(metrics)) is not None:
                raise UsageError(f"{why}; every run would back up, then fail (exit 1) to write it")
        identities = _identities(identity)
        if download and remote is not None and loaded.remotes[remote].encrypted and not identities:
            # Said once, before anything is downloaded, rather than as a failure of every copy.
            raise UsageError(
                f"remote {remote} is encrypted; pass --identity FILE "
                "(the age identity or SSH private key of a recipient)"
            )
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
    options = runner.Options(
        check=check, force=force, jobs=jobs or loaded.jobs, latest=latest, observer=text,
        remote=remote, download=download, identities=identities,
    )  # fmt: skip
    text.begin(loaded.file, len(targets))
    outcome = runner.run(command, loaded, targets, options)
    # Output that failed during the run fails it too (a log that ends early), but never stopped it.
    outcome.errors.extend(message for message, fails in text.problems if fails)
    reported = len(text.problems)
    if metrics is not None and not check:  # a check run did nothing worth recording
        from backup_core.monitoring import metrics as metrics_module
        from backup_core.monitoring import status as status_module

        try:
            # The stores are listed again: what they hold now, after uploads and rotation.
            states = status_module.survey(targets, runner.utc_now())
            runs = metrics_module.runs_of(command, outcome.results)
            _record_metrics(loaded, metrics, command, runs, states, outcome.seconds, outcome.errors, text)
        except KeyboardInterrupt:
            # The targets' results stand; the run still reports them (JSON included) and exits 130.
            runner.stop()
            outcome.interrupted = True
            outcome.errors.append(f"interrupted while the metrics file was being brought up to date; {metrics} "
                                  "was not updated")  # fmt: skip
    text.end(outcome)
    if output == "json" and not report.print_json(outcome, sys.stdout):
        text.problems.append(("could not write the JSON document to stdout", True))
    late = text.problems[reported:]
    if any(fails for _, fails in late):
        outcome.errors.extend(message for message, fails in late if fails)
    _tell(text.problems)
    return outcome.exit_code


def status(
    manifest_path: Path | str,
    only: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    skip_tags: Iterable[str] | None = None,
    output: str = "text",
    metrics_file: str | None = None,
) -> int:
    """Each selected target's newest archive in every store, judged against its max_age; writes no archive."""
    from backup_core import runner
    from backup_core.monitoring import status as status_module

    output = _format(output)
    # A remote that does not answer holds the listing up to its timeout: a signal meanwhile ends
    # the command at once (130), with its JSON document.
    with _json_on_error("status", manifest_path, output == "json", "interrupted; nothing was written"):
        _stop_on_terminate()
        loaded = _load(manifest_path)
        targets = selection.select(loaded.targets, only, tags, skip_tags)
        metrics = _metrics_path(loaded, metrics_file)
        started = time.monotonic()
        now = runner.utc_now()
        found = status_module.StatusReport(loaded.file, now, status_module.survey(targets, now))
        found.seconds = time.monotonic() - started
    text = report.TextReporter(sys.stderr if output == "json" else sys.stdout, "status")
    if metrics is not None:
        from backup_core.monitoring import metrics as metrics_module

        runs = [metrics_module.TargetRun(t.name, t.status, t.seconds) for t in found.targets]
        _record_metrics(loaded, metrics, "status", runs, found.targets, found.seconds, found.errors, text)
    failed = [t.name for t in found.targets if t.status == "failed"]
    text.begin(loaded.file, len(targets), f"; {len(failed)} failed: {', '.join(failed)}" if failed else "; all ok")
    for state in found.targets:
        text.verdict(state.status, state.name, report.describe_status(state))
    text.end(found)
    # Lines stdout or the log would not take fail the command, as for a run: monitoring that
    # reads the output must not take silence for "all ok".
    found.errors.extend(message for message, fails in text.problems if fails)
    printed = output != "json" or _document(found.as_json())
    _tell(text.problems)
    return found.exit_code if printed else max(found.exit_code, EXIT_FAILED)


def _document(data: dict[str, Any] | list[Any]) -> bool:
    """Print a command's JSON document; False, said on stderr, when stdout would not take it."""
    if report.print_json(data, sys.stdout):
        return True
    print("ERROR: could not write the JSON document to stdout", file=sys.stderr)  # as a run says its lost output
    return False


def _metrics_path(loaded: Manifest, flag: str | None) -> Path | None:
    """The flag's file, else the manifest's metrics_file:, else None (no metrics)."""
    if flag:
        from backup_core.monitoring import metrics as metrics_module

        return metrics_module.check_path(flag)
    return loaded.metrics_file


def _record_metrics(
    loaded: Manifest,
    path: Path,
    command: str,
    runs: list[TargetRun],
    states: list[TargetState],
    seconds: float,
    errors: list[str],
    text: report.TextReporter,
) -> None:
    """Write the metrics file; a failure is a run-level error (exit 1), since monitoring that
    silently goes stale is the failure metrics exist to catch."""
    from backup_core import runner
    from backup_core.monitoring import metrics as metrics_module

    max_ages = {t.name: t.max_age for t in loaded.targets}
    try:
        warnings = metrics_module.record(path, command, max_ages, runs, states, seconds, runner.utc_now())
    except metrics_module.MetricsError as exc:
        errors.append(str(exc))
        return
    for warning in warnings:
        text.warn(warning)


def _known_remote(loaded: Manifest, remote: str | None) -> None:
    if remote is not None and remote not in loaded.remotes:
        known = ", ".join(sorted(loaded.remotes)) or "none are defined"
        raise UsageError(f"--remote {remote}: no such remote in {shown(loaded.file)}; remotes: {known}")


def _needs_remote(remote: str | None, **given: object) -> None:
    """--download and --identity work on a remote's copies: without --remote they would be
    accepted and do nothing, and a run meant to check every copy in full would check none."""
    flags = [f"--{name}" for name, value in given.items() if value]
    if remote is None and flags:
        raise UsageError(f"{flags[0]} works on a remote's copies; add --remote NAME")


def _identities(identity: str | None) -> list[Any]:
    if not identity:
        return []
    from backup_core.stores import encryption

    return encryption.load_identities(Path(identity))


@contextmanager
def _json_on_error(
    command: str,
    manifest_path: Path | str,
    wanted: bool,
    interrupted: str = "interrupted before the run started; nothing was done",
) -> Iterator[None]:
    """With --format json, a run that cannot start still prints a JSON document (then the text)."""
    try:
        yield
    except ManifestError as exc:
        if wanted:
            report.print_json(
                report.error_document(command, str(manifest_path), exc.exit_code, [str(p) for p in exc.problems]),
                sys.stdout,
            )
        raise
    except UsageError as exc:
        if wanted:
            report.print_json(report.error_document(command, str(manifest_path), exc.exit_code, [str(exc)]), sys.stdout)
        raise
    except KeyboardInterrupt:
        if wanted:
            report.print_json(
                report.error_document(command, str(manifest_path), EXIT_INTERRUPTED, [interrupted]), sys.stdout
            )
        raise


def _tell(problems: list[tuple[str, bool]]) -> None:
    """Say on stderr what output was lost (stdout may hold a JSON document); failing that, the status says it."""
    try:
        for message, fails in problems:  # ERROR for what fails the run (exit 1), as it does
            print(f"{'ERROR' if fails else 'WARNING'}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        report.silence(sys.stderr)


def _jobs(value: int | str) -> int:
    """--jobs as a number; 0 when it was not given (the manifest's `jobs` then counts).  The
    bounds are the schema's for `jobs`, so the flag and the manifest accept the same values."""
    if value in ("", 0):
        return 0
    bounds = manifest_module.schema()["properties"]["jobs"]
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if not bounds["minimum"] <= jobs <= bounds["maximum"]:
        raise UsageError(
            f"--jobs {value}: give a number of targets to run at once, {bounds['minimum']} to {bounds['maximum']}"
        )
    return jobs


def tolerant_output() -> None:
    """A file name the console cannot show (a cp1252 console, a strict pipe) is escaped, not fatal.
    Called for every command (by the CLI): each prints paths or names."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _stop_on_terminate() -> None:
    """cron, CI and systemd stop a job with SIGTERM: clean up exactly as for Ctrl-C.

    The first signal stops the run; later ones (an impatient second Ctrl-C, systemd
    repeating itself) must not cut short the clean-up and on_failure hooks it started.
    """
    from backup_core import runner  # here, not in the handler: a signal may arrive mid-import

    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        runner.stop()  # targets in other threads stop within a piece of data
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for signum in interrupts.handled():
            signal.signal(signum, interrupt)


def validate(manifest_path: Path | str) -> int:
    """Check a manifest without running it."""
    from backup_core import report

    # Asked to check the manifest, the validator checks it, whatever an earlier run recorded.
    loaded = manifest_module.load(Path(manifest_path), trust_passes=False)
    print(f"{shown(loaded.file)}: valid, {report.count(len(loaded.targets), 'target')}")
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
    with _json_on_error("list", manifest_path, output == "json"):
        loaded = _load(manifest_path)
        targets = selection.select(loaded.targets, only, tags, skip_tags)
    if output == "json":
        return EXIT_OK if _document([t.settings() for t in targets]) else EXIT_FAILED
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
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) and _reads_back(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value) if isinstance(value, bool) else str(value)


# Text printed without quotes only when YAML reads it back as the same text: `*.tmp` would
# be an alias, `no` a boolean to YAML 1.1 readers, `a: b` a mapping.
_PLAIN = re.compile(r"[A-Za-z0-9_/.~$(][A-Za-z0-9_/.~$(){} -]*(?<! )")


def _reads_back(text: str) -> bool:
    try:
        return bool(yaml.safe_load(f"[{text}]") == [text])
    except yaml.YAMLError:
        return False


def restore(
    manifest_path: Path | str,
    target_name: str,
    to: str | None,
    archive: str | None = None,
    member: str | None = None,
    force: bool = False,
    remote: str | None = None,
    identity: str | None = None,
) -> int:
    """Restore a target's archive (the newest unless named), local or from a remote, into a folder."""
    if not to:
        raise UsageError("restore needs --to DIR: the folder to restore into (it is created if missing)")
    loaded = _load(manifest_path)
    matches = [t for t in loaded.targets if t.name == target_name]
    if not matches:
        known = ", ".join(t.name for t in loaded.targets)
        raise UsageError(f"no target named {target_name!r}; targets are: {known}")
    target = matches[0]
    _known_remote(loaded, remote)
    _needs_remote(remote, identity=identity)
    identities = _identities(identity)
    _stop_on_terminate()  # a stopped restore must not leave a decrypted scratch copy behind
    from backup_core import restore as restore_module

    try:
        if remote is None:
            chosen, passed = restore_module.choose_archive(target, archive)
            done = restore_module.restore(chosen, Path(to), member=member, force=force, warnings=passed)
        else:
            chosen, done = _restore_remote(target, loaded.remotes[remote], Path(to), archive, member, force, identities)
    except (BackupError, KeyboardInterrupt, OSError) as exc:
        return _restore_failed(target, to, exc)
    return _restored(target, chosen.name, done)


def _restore_failed(target: Target, to: str, exc: BaseException) -> int:
    """One line for a restore that stopped, after the warnings it had gathered (an archive marked
    incomplete, a link it could not make): each says what was restored before it stopped."""
    partly = getattr(exc, "restored", None)
    for warning in partly.warnings if partly is not None else []:
        print(f"  [WARNING] [{target.name}] {warning}", file=sys.stderr)
    written = partly.written() if partly is not None else ""
    if isinstance(exc, KeyboardInterrupt):
        # Ctrl-C or SIGTERM: the file being written was removed; those before it stay.
        print(f"interrupted: [{target.name}] => {written or 'nothing was restored'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, BackupError):
        if isinstance(exc, UsageError):
            raise exc  # a usage error (exit 2) is the CLI's to say, as before
        print(f"failed: [{target.name}] => {exc}", file=sys.stderr)
        return exc.exit_code
    assert isinstance(exc, OSError)
    where = exc.filename or to
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and Path(where).is_file():
        # --force replaces a file with a file, never a file with a folder (nor its contents).
        advice = f"{where} is a file where the archive has a folder; move it away and restore again"
    else:
        advice = f"{exc.strerror or exc} ({where}); choose a folder this user can create and write"
    print(f"failed: [{target.name}] => cannot restore into {to}: {advice}{'; ' + written if written else ''}",
          file=sys.stderr)  # fmt: skip
    return TargetError.exit_code


def _restore_remote(
    target: Target,
    remote: Remote,
    to: Path,
    archive: str | None,
    member: str | None,
    force: bool,
    identities: list[Any],
) -> tuple[Path, restore_module.Restored]:
    from backup_core import restore as restore_module
    from backup_core import runner
    from backup_core.stores import offsite

    store = offsite.store_for(remote)
    held = store.list(target.name)
    if archive:
        named = [s for s in held if archive in (s.name, s.archive)]
        inner = getattr(store, "inner", None)  # an encrypted remote's own store, which lists plain copies too
        if inner is not None:
            # A plain copy from before encryption was turned on, named by its file's name: its
            # series is kept, and it is restored as it is (it was "no copy of that name", while
            # the file was there).  The same archive's encrypted copy is named with its .age.
            plain = [s for s in inner.list(target.name) if not s.encrypted and s.name == archive]
            if plain:
                store, named = inner, plain
        if not named:
            # A name that is not there is the flag's mistake, as for a local restore (exit 2).
            raise UsageError(
                f"--archive {archive}: no copy of that name of {target.name} on remote {remote.name}; "
                f"{restore_module.newest_first([s.name for s in held])}"
            )
        held = named
    if not held:
        raise TargetError(f"no copies of {target.name} on remote {remote.name} ({store.describe()})")
    warnings: list[str] = []
    if archive:
        chosen = held[-1]  # checked against its recorded checksum once downloaded, as every copy is
    else:
        newest = offsite.newest_good(store, target.name, held, runner.utc_now())
        if newest.damaged is not None:  # an older copy in its place must not look like success
            raise TargetError(newest.damaged)
        if newest.chosen is None:
            raise TargetError(
                f"no copy of {target.name} on remote {remote.name} can be restored: "
                + (newest.passed[0] if newest.passed else "every copy is dated in the future")
                + "; name one with --archive"
            )
        chosen, warnings = newest.chosen, newest.warnings()
    restore_module.refuse_blocked(to)  # before the scratch folder is made beside it
    near = to.absolute().parent
    near.mkdir(parents=True, exist_ok=True)
    if to.is_dir() and not os.access(near, os.W_OK | os.X_OK):
        # A folder this user may write in, under one it may not (its own /srv/app under root's
        # /srv, a writable volume under a read-only root): the scratch folder goes inside it,
        # on the same disk all the same, and is removed before the restore says it is done.
        near = to
    try:
        with offsite.fetched(target.name, store, chosen, identities, near) as path:
            # The scratch copy is gone once restore returns: its advice names the copy itself.
            how = f"{chosen.name} from remote {remote.name}" + (
                ", decrypt it (age -d -i KEY)" if chosen.encrypted else ""
            )
            scratch = offsite.scratch_of(path, near)
            done = restore_module.restore(path, to, member=member, force=force, fetched=how, scratch=scratch)
    except offsite.DamagedCopy as damaged:
        # Damage that only a download shows (same size, metadata kept): the copy to take instead
        # is named as when the record alone shows it.  One the operator named stays their choice.
        older = None if archive else offsite.older_than(store, target.name, held, chosen, runner.utc_now())
        if older is None:
            raise
        raise damaged.instead(older) from None
    done.warnings.extend(warnings)
    return Path(chosen.name), done


def _restored(target: Target, archive: str, done: restore_module.Restored) -> int:
    for warning in done.warnings:
        print(f"  [WARNING] [{target.name}] {warning}")
    print(
        f"restored: [{target.name}] => {archive} -> {done.folder} "
        f"({report.count(done.files, 'file')}, {report.count(done.directories, 'folder')}, "
        f"{report.count(done.links, 'link')}, {report.count(done.databases, 'database')} passed integrity_check)"
    )
    return EXIT_OK
