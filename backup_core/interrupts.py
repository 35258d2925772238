"""Ctrl-C, SIGTERM and SIGHUP while the program loads, before a command's own handling is in place.

Left to Python, Ctrl-C while the program loaded printed a traceback, or ended in exit
status 1 (Invoke's answer to an interrupt it catches; the exit table says 1 is a failed
target), and SIGTERM killed the process with status 143.  Before a task runs nothing has
been read or written, so the program now ends at once with 130 and one line.  Once a task
runs, the interrupt unwinds through its clean-up instead (see cli._run, and the run's own
handler in commands.py, which replaces this one).

The handlers are installed when this module is imported, which the command line does
before it imports Invoke: of the installed command's start-up only the interpreter's own
comes first (in a checkout, `invoke` loads itself before it reads tasks.py).
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading

in_task = threading.Event()  # set while a task runs: a signal then stops its work


_SAID = "interrupted before the command started; nothing was done"


def _interrupted(signum: int, frame: object) -> None:
    if in_task.is_set():
        raise KeyboardInterrupt
    if _json_wanted(sys.argv[1:]):
        # The document every outcome gets in JSON mode (report.error_document's shape, written
        # here by hand: the report module may not be loaded yet).
        command = next((a for a in sys.argv[1:] if not a.startswith("-") and a in _COMMANDS), "")
        document = {
            "command": command, "manifest": _manifest(sys.argv[1:]), "check": False, "exit_code": 130,
            "interrupted": True, "seconds": 0.0, "errors": [_SAID], "recap": {}, "targets": [],
        }  # fmt: skip
        print(json.dumps(document, indent=2), flush=True)
    # SystemExit, not Invoke's Exit: this may run while Invoke itself is being imported, and
    # nothing catches it on the way out (Invoke catches its own Exit and KeyboardInterrupt).
    print(_SAID, file=sys.stderr)
    raise SystemExit(130)


_COMMANDS = ("backup", "prune", "push", "verify", "status", "validate", "list", "restore")


def _json_wanted(argv: list[str]) -> bool:
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in itertools.pairwise(argv))


def _manifest(argv: list[str]) -> str:
    for flag, value in itertools.pairwise(argv):
        if flag in ("-m", "--manifest"):
            return value
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--manifest=")), "")


def handled() -> tuple[signal.Signals, ...]:
    """The signals that stop a run: SIGTERM; SIGINT unless it was ignored when the program
    started (a shell script's background job ignores it, so that Ctrl-C at the terminal leaves
    the job alone; Python keeps that choice too); and on POSIX SIGHUP, unless ignored (`nohup`).

    SIGHUP is what a dropped SSH session sends a backup run by hand.  Left to its default it
    killed the process on the spot: no on_failure hook (a service a before hook stopped stayed
    stopped), no result, a partial archive left for the next run."""
    return tuple(s for s in (signal.SIGINT, signal.SIGTERM, HANGUP, BREAK) if s is not None and s not in _IGNORED)


HANGUP: signal.Signals | None = getattr(signal, "SIGHUP", None)
BREAK: signal.Signals | None = getattr(signal, "SIGBREAK", None)  # Windows: Ctrl-Break, cleaned up as Ctrl-C
_IGNORED = {s for s in (signal.SIGINT, HANGUP, BREAK) if s is not None and signal.getsignal(s) == signal.SIG_IGN}
if threading.current_thread() is threading.main_thread():
    for _signal in handled():
        signal.signal(_signal, _interrupted)
