"""The command line: Invoke tasks that parse flags, call backup_core and turn its errors into exit codes.

The tasks are defined once, here.  The checkout's tasks.py hands them to `invoke`;
the installed `backups` command runs them as a program of its own (`main`).

Exit status: 0 all selected targets succeeded, 1 a target (or archive) failed,
2 the manifest or the command line is wrong (nothing was done), 130 interrupted.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from backup_core import interrupts  # first: its signal handlers cover Invoke's import too

# isort: split
from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit, ParseError
from invoke.executor import Executor
from invoke.program import Program
from invoke.tasks import Task, task

from backup_core import __version__
from backup_core.errors import EXIT_USAGE, PROGRAM_VARIABLE, BackupError, ManifestError

DEFAULT_MANIFEST = "backups.yml"  # in the current folder, unless the configuration names one


def _manifest(c: Context, given: str) -> str:
    """A flag wins over configuration (the checkout's tasks.py sets its own backups.yml), that over ./backups.yml.
    The installed command has no checkout: it reads no configuration for it, or an ~/.invoke.yaml,
    /etc/invoke.yaml or INVOKE_RUNTIME_CONFIG naming a manifest ran that one instead of ./backups.yml."""
    if os.environ.get(PROGRAM_VARIABLE) == "backups":
        return given or DEFAULT_MANIFEST
    return given or c.config.get("backups", {}).get("manifest") or DEFAULT_MANIFEST


_SELECT = {
    "manifest": "Manifest to run (default: backups.yml beside tasks.py in a checkout, else ./backups.yml).",
    "only": "Target names or shell patterns (repeatable, or comma separated).",
    "tags": "Run targets with any of these tags (repeatable, or comma separated).",
    "skip-tags": "Leave out targets with any of these tags.",
    "format": "text (default) or json: one JSON document on stdout, text on stderr.",
}
_METRICS = "Write Prometheus metrics to this .prom file after the run (overrides the manifest's metrics_file)."


# Short flags are chosen here, not guessed: Invoke's automatic ones depend on argument order
# (--format would silently have become -r).
_SHORT_FLAGS = {"manifest": "m", "only": "o", "tags": "t", "jobs": "j", "verbose": "v"}


# The selection flags, as typed.  Invoke gives a list flag typed with no value (`--only
# --check`) the same empty list as an absent one, so `--only $T` with T empty would quietly
# select every target: the command line is read again to tell the two apart.
_SELECTION_FLAGS = {"only": ("--only", "-o"), "tags": ("--tags", "-t"), "skip_tags": ("--skip-tags",)}


def _given_empty(flag: str, short: str | None, argv: list[str]) -> bool:
    """Whether `flag` (or its one-letter form) stands in `argv` with an empty value."""
    spelled = {flag, f"-{short}"} if short else {flag}
    return any(f"{name}=" in argv for name in spelled) or any(
        t in spelled and i + 1 < len(argv) and argv[i + 1] == "" for i, t in enumerate(argv)
    )


def _given_bare(flags: tuple[str, ...], task: Task, argv: list[str]) -> bool:  # type: ignore[type-arg]
    """Whether one of `flags` stands in `task`'s part of `argv` with nothing after it but
    another of the task's flags (a value may begin with '-': a tag may)."""
    names = {task.name, *task.aliases}
    start = next((i + 1 for i, token in enumerate(argv) if token in names), len(argv))
    others = set(namespace.task_names) | {alias for aliases in namespace.task_names.values() for alias in aliases}
    part = []
    for token in argv[start:]:
        if token in others or token == "--":  # the next task's part, or Invoke's remainder
            break
        part.append(token)
    spelled = {f"--{n}" if len(n) > 1 else f"-{n}" for argument in task.get_arguments() for n in argument.names}
    spelled |= {"-h", "--help"}
    return any(
        token in flags and (index + 1 == len(part) or part[index + 1].split("=", 1)[0] in spelled)
        for index, token in enumerate(part)
    )


class _Task(Task):  # type: ignore[type-arg]
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], Context) and args[0].config.run.dry:
            # Invoke's -R/--dry echoes shell commands instead of running them. These tasks run
            # none, so it would change nothing: a "dry" backup would write and delete for real.
            self._refuse("--dry is Invoke's, for shell commands, and previews nothing here; use --check", kwargs)
        for name, flags in _SELECTION_FLAGS.items():
            if name in kwargs and not kwargs[name] and _given_bare(flags, self, sys.argv[1:]):
                kwargs[name] = [""]  # which selection.select refuses: "--only was given without a name"
        for name, value in kwargs.items():
            # An empty value reads as the flag's absence: `--manifest $M` with M unset would run
            # the default manifest, `--metrics-file $F` write no metrics, both without a word.
            flag = "--" + name.replace("_", "-")
            if value == "" and _given_empty(flag, _SHORT_FLAGS.get(name), sys.argv[1:]):
                self._refuse(f"{flag} was given an empty value; give one, or leave the flag out", kwargs)
        return super().__call__(*args, **kwargs)

    def _refuse(self, message: str, kwargs: dict[str, Any]) -> None:
        """A usage error found before the command runs: exit 2, with the JSON document
        `--format json` promises for every usage error."""
        if kwargs.get("format") == "json":
            from backup_core import report

            manifest = kwargs.get("manifest") or "backups.yml"
            report.print_json(report.error_document(self.name, manifest, 2, [message]), sys.stdout)
        raise Exit(f"error: {message}", code=2)

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name in _SHORT_FLAGS:
            opts["names"].append(_SHORT_FLAGS[name])
        return opts


def _task(**options: Any) -> Any:
    return task(klass=_Task, auto_shortflags=False, **options)


def _commands() -> ModuleType:
    # Imported when a task runs, not when the program starts: --list and --help stay quick.
    from backup_core import commands

    return commands


def _finish(code: int) -> None:
    if code:
        raise Exit(code=code)


# What writing to stdout raises when what it goes to cannot take it (a disk full or failing).
_OUTPUT_LOST = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _lost_stdout(exc: OSError) -> str:
    """The line for output stdout would not take (`> /dev/full`); stdout then goes nowhere, so
    the interpreter's own flush at exit does not fail again with a traceback."""
    sys.stdout = Path(os.devnull).open("w")  # noqa: SIM115 - stands in for stdout until exit
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    return f"ERROR: could not write to stdout ({exc.strerror or exc}); what this command printed is lost"


def _run(call: object, *args: object, **kwargs: object) -> None:
    interrupts.in_task.set()
    _commands().tolerant_output()
    try:
        code = call(*args, **kwargs)  # type: ignore[operator]
        sys.stdout.flush()  # here, not in the interpreter's exit: a full disk is said in one line
    except ManifestError as exc:
        raise Exit(str(exc), code=exc.exit_code) from None
    except BackupError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    except BrokenPipeError:
        # The reader went away (`invoke list | head`): nothing more can be said.
        sys.stdout = Path(os.devnull).open("w")  # noqa: SIM115 - stands in for the closed pipe until exit
        raise Exit(code=1) from None
    except OSError as exc:
        if exc.filename is None and exc.errno in _OUTPUT_LOST:
            raise Exit(_lost_stdout(exc), code=1) from None
        where = f" ({exc.filename})" if exc.filename is not None else ""
        raise Exit(f"error: {exc.strerror or exc}{where}", code=1) from None
    except KeyboardInterrupt:
        raise Exit("interrupted; no partial archive was left in place", code=130) from None
    finally:
        # The command's work is done and its files closed: the interpreter's exit would now trace
        # every object the run created (jsonschema's, invoke's, a walk's) for cycles: about 25 ms,
        # a tenth of an unchanged re-run.  Frozen, they are left to the process's end instead.
        gc.freeze()
    _finish(code)


@_task(
    iterable=["only", "tags", "skip_tags"],
    help={
        **_SELECT,
        "check": "Preview: show what would be archived and deleted; write, delete and lock nothing.",
        "force": "Archive even when skip_unchanged finds the source unchanged, or a folder gives no file where "
        "its archives held some; record this source as the origin of the target's archives.",
        "jobs": "Targets to run at once (default: the manifest's jobs, else 1).",
        "verbose": "Show every file as it is archived.",
        "log-file": "Append a plain-text log with timestamps to this file.",
        "metrics-file": _METRICS,
    },
)
def backup(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    check: bool = False,
    force: bool = False,
    jobs: str = "",  # parsed by backup_core, so a bad value is a usage error, not a traceback
    format: str = "text",
    verbose: bool = False,
    log_file: str = "",
    metrics_file: str = "",
) -> None:
    """Back up every selected target, then rotate its old archives."""
    _run(
        _commands().run_targets, "backup", _manifest(c, manifest), only, tags, skip_tags, check=check, force=force,
        jobs=jobs, output=format, verbose=verbose, log_file=log_file or None, metrics_file=metrics_file or None,
    )  # fmt: skip


@_task(
    iterable=["only", "tags", "skip_tags"],
    help={
        **_SELECT,
        "check": "Show which archives would be deleted, here and on remotes; delete nothing.",
        "force": "Delete what keep says even when the newest archive kept is incomplete or holds files that "
        "changed while read (never when it is not a whole zip).",
        "jobs": "Targets to run at once (default: the manifest's jobs, else 1).",
        "metrics-file": _METRICS,
    },
)
def prune(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    check: bool = False,
    force: bool = False,
    jobs: str = "",  # parsed by backup_core, as backup's
    format: str = "text",
    metrics_file: str = "",
) -> None:
    """Apply each target's keep: policy, here and on its remotes, without making a new archive."""
    _run(
        _commands().run_targets, "prune", _manifest(c, manifest), only, tags, skip_tags, check=check, force=force,
        jobs=jobs, output=format, metrics_file=metrics_file or None,
    )  # fmt: skip


@_task(
    iterable=["only", "tags", "skip_tags"],
    help={
        **_SELECT,
        "latest": "Check only the newest archive of each target.",
        "remote": "Check the copies on this remote instead: their size and the checksum recorded at upload.",
        "download": "With --remote: download each copy and verify it in full, as the local verify does.",
        "identity": "With --download: the age identity file or SSH private key that decrypts encrypted copies.",
        "metrics-file": _METRICS,
    },
)
def verify(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    latest: bool = False,
    remote: str = "",
    download: bool = False,
    identity: str = "",
    format: str = "text",
    metrics_file: str = "",
) -> None:
    """Read every archive back in full (CRC of every member, integrity_check of every database)."""
    _run(
        _commands().run_targets, "verify", _manifest(c, manifest), only, tags, skip_tags, latest=latest,
        remote=remote or None, download=download, identity=identity or None, output=format,
        metrics_file=metrics_file or None,
    )  # fmt: skip


@_task(
    iterable=["only", "tags", "skip_tags"],
    help={
        **_SELECT,
        "remote": "Only this remote (default: every remote of each target).",
        "check": "Show what would be uploaded; send nothing.",
        "metrics-file": _METRICS,
    },
)
def push(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    remote: str = "",
    check: bool = False,
    format: str = "text",
    metrics_file: str = "",
) -> None:
    """Upload the local archives that each target's remotes lack, without making a new archive."""
    _run(
        _commands().run_targets, "push", _manifest(c, manifest), only, tags, skip_tags, check=check,
        remote=remote or None, output=format, metrics_file=metrics_file or None,
    )  # fmt: skip


@_task(
    positional=["target"],
    help={
        "target": "The target whose archive to restore.",
        "to": "Folder to restore into (required; created if missing).",
        "archive": "Archive file name to restore (default: the newest).",
        "member": "Restore only this file or folder of the archive.",
        "force": "Overwrite files that already exist.",
        "remote": "Restore from this remote's copy instead of the local archives.",
        "identity": "The age identity file or SSH private key that decrypts an encrypted remote's copies.",
        "manifest": _SELECT["manifest"],
    },
)
def restore(
    c: Context,
    target: str,
    to: str = "",
    archive: str = "",
    member: str = "",
    force: bool = False,
    remote: str = "",
    identity: str = "",
    manifest: str = "",
) -> None:
    """Restore a target's archive into a folder, safely."""
    if target in ("--help", "-h"):
        # Invoke gives a flag where a positional argument is awaited to the argument: `restore
        # --help` said "restore needs --to DIR".  The help of every other task shows that way.
        binary = os.environ.get(PROGRAM_VARIABLE) or "invoke"
        Program(binary=binary, namespace=Collection(restore)).run([binary, "--help", "restore"])
    _run(
        _commands().restore,
        _manifest(c, manifest),
        target,
        to or None,
        archive=archive or None,
        member=member or None,
        force=force,
        remote=remote or None,
        identity=identity or None,
    )


@_task(help={"manifest": _SELECT["manifest"]})
def validate(c: Context, manifest: str = "") -> None:
    """Check the manifest without running anything."""
    _run(_commands().validate, _manifest(c, manifest))


@_task(name="list", iterable=["only", "tags", "skip_tags"], help=_SELECT)
def list_(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    format: str = "text",
) -> None:
    """Show the targets a selection would run, with their resolved settings."""
    _run(_commands().list_targets, _manifest(c, manifest), only, tags, skip_tags, output=format)


@_task(iterable=["only", "tags", "skip_tags"], help={**_SELECT, "metrics-file": _METRICS})
def status(
    c: Context,
    manifest: str = "",
    only: list[str] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    format: str = "text",
    metrics_file: str = "",
) -> None:
    """Show each target's newest archive, its age and every store's holdings; exit 1 if one is older than max_age."""
    _run(
        _commands().status, _manifest(c, manifest), only, tags, skip_tags, output=format,
        metrics_file=metrics_file or None,
    )  # fmt: skip


namespace = Collection(backup, prune, push, verify, restore, validate, list_, status)


class OneTask(Executor):
    """Runs the one command given.  Invoke runs several in turn: two JSON documents on one
    stdout, and after a failure the next command never ran, without a word.  `backups` uses
    it; `invoke` in a checkout through the project's invoke.yaml (tasks.executor_class)."""

    def execute(self, *tasks: Any) -> dict[Any, Any]:
        if len(tasks) > 1:
            names = " and ".join(str(getattr(t, "name", t)) for t in tasks)
            _usage(f"error: one command at a time ({names} were given); run each on its own")
        return super().execute(*tasks)  # type: ignore[no-any-return]


class _Program(Program):
    """`backups`: the same tasks as a program, where a flag it does not know is a usage error (exit 2)."""

    # Invoke exits 1 for a flag it cannot parse; SystemExit passes through its handler unchanged.
    def parse_core(self, argv: list[str] | None) -> None:
        with _usage_errors():
            super().parse_core(argv)
        # Invoke's options for the shell commands its tasks run: these tasks run none, so each
        # would be accepted and change nothing (-w would not make a failed backup a warning).
        values = [(names, self.args[names[-1].lstrip("-")].value) for names in _SHELL_OPTIONS]
        given = [names for names, value in values if value is not None and value is not False]  # -T 0 too
        if given:
            _usage(f"error: {'/'.join(given[0])} is Invoke's, for shell commands, and does nothing here")
        if self.args["list-format"].value not in _LIST_FORMATS:
            _usage(f"error: -F/--list-format takes one of {', '.join(_LIST_FORMATS)}")
        if isinstance(self.args.list.value, str):
            # Invoke's --list NAMESPACE: this program's tasks have no namespaces to narrow to.
            _usage(f"error: --list takes no value here ({self.args.list.value!r}): there are no namespaces")

    def parse_tasks(self) -> None:
        with _usage_errors():
            super().parse_tasks()

    def print_help(self) -> None:
        # Invoke's help, without the options refused above: help must not offer what then fails.
        refused = {name for names in (*_SHELL_OPTIONS, ("-R", "--dry")) for name in names}
        offered = [
            _LIST_HELP if "--list[" in flags else (flags, said)
            for flags, said in self.initial_context.help_tuples()
            if not refused & {part.split("=")[0].split(" ")[0] for part in flags.split(", ")}
        ]
        print(f"Usage: {self.binary} [--core-opts] <subcommand> [--subcommand-opts] ...\n\nCore options:\n")
        self.print_columns(offered)
        self.list_tasks()

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if isinstance(wanted, str) and wanted not in self.parser.contexts:
            _usage(f"error: --help {wanted}: no such command; backups --list shows them")
        super().parse_cleanup()

    def update_config(self, merge: bool = True) -> None:
        # Where -f/--config's file is read: one that is missing, of another type or not
        # valid YAML would end in Invoke's traceback.
        given = self.args.config.value
        # Without -f, Invoke reads the file INVOKE_RUNTIME_CONFIG names: say which was given.
        named = f"-f/--config {given}" if given else f"INVOKE_RUNTIME_CONFIG={os.environ.get('INVOKE_RUNTIME_CONFIG')}"
        if given and not Path(given).exists():
            _usage(f"error: {named}: no such file")
        if given and not Path(given).is_file():
            _usage(f"error: {named}: not a file")
        try:
            super().update_config(merge)
        except Exception as exc:  # every failure here is the file's
            _usage(f"error: {named}: {exc}".splitlines()[0])


_SHELL_OPTIONS = [
    ("-w", "--warn-only"), ("-T", "--command-timeout"), ("-e", "--echo"), ("-p", "--pty"), ("--hide",),
    ("--prompt-for-sudo-password",),
]  # fmt: skip


_LIST_FORMATS = ("flat", "nested", "json")
# Invoke describes --list[=NAMESPACE]; this program has no namespaces and refuses a value.
_LIST_HELP = ("-l, --list", "List the subcommands and exit.")


def _usage(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


@contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except ParseError as exc:
        _usage(str(exc))
    except ValueError as exc:  # a number flag (-D, -T) given something else: Invoke's int() fails
        _usage(f"error: a flag that takes a whole number was given something else ({exc})")


program = _Program(name="backups", binary="backups", version=__version__, namespace=namespace, executor_class=OneTask)


def main() -> None:
    """Entry point of the installed `backups` command."""
    os.environ[PROGRAM_VARIABLE] = "backups"  # advice in messages names this command, not invoke
    try:
        program.run()
    except BrokenPipeError:
        # The reader went away (`backups --help | head`): nothing more can be said, and the
        # interpreter's own flush at exit must not fail again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as exc:  # --help or --version into a full disk
        print(_lost_stdout(exc), file=sys.stderr)
        raise SystemExit(1) from None
