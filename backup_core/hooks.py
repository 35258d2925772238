"""Operator commands run around a target or a run: before, after and on_failure."""

from __future__ import annotations

import contextlib
import locale
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from backup_core.errors import TargetError
from backup_core.manifest import Hook, Hooks, redact


class HookError(TargetError):
    """A hook command failed, timed out or could not start."""


def run_hooks(
    when: str,
    hooks: tuple[Hook, ...],
    variables: Mapping[str, str],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run `hooks` in order; the first failure raises HookError and stops the list.

    Commands run without a shell unless the manifest asks for one; what happened so
    far is passed in BACKUP_* environment variables.  When `should_stop` turns true (the
    run was interrupted while this target's thread waits on a hook) the hook is stopped.
    """
    if not hooks:
        return  # most targets have none: the environment's copy costs 0.1 ms a target
    environment = {**os.environ, **variables, "BACKUP_HOOK": when}
    for hook in hooks:
        # Output goes to files, not pipes: a hook is done when its process exits.  A command
        # it starts in the background (`myapp &`, a service started again) keeps the output
        # open; read through pipes, the hook seemed to hang until its timeout, and was killed
        # with everything it started.
        with contextlib.ExitStack() as files:
            try:
                stdout = files.enter_context(tempfile.TemporaryFile())
                stderr = files.enter_context(tempfile.TemporaryFile())
            except OSError as exc:  # nowhere to write them: the hook fails, and on_failure still runs
                raise HookError(
                    f"{when} hook `{hook.describe()}` could not start: no temporary file for its output "
                    f"({exc.strerror or exc}; set TMPDIR to a writable folder)"
                ) from None
            _run_one(when, hook, environment, should_stop, stdout, stderr)


def _run_one(
    when: str,
    hook: Hook,
    environment: Mapping[str, str],
    should_stop: Callable[[], bool],
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> None:
    command: str | list[str] = (
        hook.command if hook.command is not None else hook.line if hook.line is not None else list(hook.argv or ())
    )
    try:
        process = subprocess.Popen(
            command,
            shell=hook.command is not None,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            **_OWN_GROUP,
        )
    except OSError as exc:
        raise HookError(f"{when} hook `{hook.describe()}` could not start: {exc.strerror or exc}") from None
    try:
        _wait(process, hook.timeout, should_stop, (stdout, stderr))
    except _Stopped:
        _kill_group(process)
        process.wait()
        raise HookError(f"{when} hook `{hook.describe()}` was stopped: the run was interrupted") from None
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.wait()
        raise HookError(f"{when} hook `{hook.describe()}` timed out after {hook.timeout:g}s") from None
    except KeyboardInterrupt:
        # Interrupted while a hook runs: stop it, so the on_failure hooks that follow run promptly.
        _kill_group(process)
        process.wait()
        raise
    if process.returncode != 0:
        said = redact.text(_last_line(stderr) or _last_line(stdout))  # a command may echo its URL
        detail = f": {said}" if said else ""
        raise HookError(f"{when} hook `{hook.describe()}` {_ended(process.returncode)}{detail}")


def _ended(code: int) -> str:
    """How a process that failed ended, in words: Python gives a signal as a negative status."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = f" ({signal.Signals(-code).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-code}{name}"


class _Stopped(Exception):
    """The run was interrupted while a hook ran."""


# Bytes of a hook's output kept on disk.  Only its last line is ever shown, and a before hook
# that writes without end (`pg_dump app` without -f: the whole dump) filled the temporary
# folder, often the backups' own disk: past this, what it wrote so far is dropped.
_OUTPUT_KEPT = 8 << 20


def _wait(
    process: subprocess.Popen[bytes], timeout: float, should_stop: Callable[[], bool], outputs: tuple[IO[bytes], ...]
) -> None:
    """Wait for `process` to exit within `timeout`, looking at `should_stop` and at the size of
    its `outputs` several times a second."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            # Every 20 ms: what a hook can write between two looks is what the bound lets past
            # _OUTPUT_KEPT (1 MB at 50 MB/s; at 0.2 s it was 10 MB, and a 16 MiB disk filled).
            process.wait(timeout=max(0.0, min(left, 0.02)))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
            if should_stop():
                raise _Stopped from None
            for output in outputs:
                _bound(output)


def _bound(output: IO[bytes]) -> None:
    """Empty `output` when it holds more than _OUTPUT_KEPT.  The hook's descriptor shares the
    file's offset with ours, so it goes on writing from the start, not after a hole."""
    with contextlib.suppress(OSError):
        descriptor = output.fileno()
        if os.fstat(descriptor).st_size > _OUTPUT_KEPT:
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)


def run_closing_hooks(
    hooks: Hooks,
    variables: Callable[[], Mapping[str, str]],
    failed: Callable[[], bool],
    report: Callable[[HookError], None],
    then: Callable[[], None] = lambda: None,
) -> None:
    """`after` when all went well, then `then` if still well; `on_failure` if anything failed,
    `after` and `then` included."""
    if not failed():
        try:
            run_hooks("after", hooks.after, variables())
        except HookError as exc:
            report(exc)
    if not failed():
        then()
    if failed():
        try:
            run_hooks("on_failure", hooks.on_failure, variables())
        except HookError as exc:
            report(exc)


# A hook runs in its own process group (session) so a timeout stops everything it started,
# not only the shell in front of it.
_OWN_GROUP: dict[str, Any] = (
    {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    if sys.platform == "win32"
    else {"start_new_session": True}
)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _last_line(output: IO[bytes]) -> str:
    """The last line a hook wrote to `output` (its last 4 KiB are enough)."""
    end = output.seek(0, os.SEEK_END)
    output.seek(max(0, end - 4096))
    tail = output.read()
    if end > 4096:  # read from the middle: what is left of a UTF-8 character cut there goes
        skip = 0
        while skip < 3 and skip < len(tail) and 0x80 <= tail[skip] < 0xC0:
            skip += 1
        tail = tail[skip:]
    lines = tail.strip().splitlines()
    return _decoded(lines[-1].strip())[:200] if lines else ""


def _decoded(line: bytes) -> str:
    """A line of a hook's output as text: UTF-8, else the system's code page (on Windows the
    console's, which cmd.exe and its tools write), with what fits neither replaced.  One line
    alone, so a stray byte elsewhere in the output does not garble the line that is shown."""
    try:
        return line.decode()
    except UnicodeDecodeError:
        encoding = "oem" if os.name == "nt" else locale.getpreferredencoding(False)
        return line.decode(encoding, errors="replace")
