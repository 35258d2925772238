"""--jobs N over many targets: whole targets run in N-1 child processes as well as in this one.

Why processes: a target of a few small files is about a millisecond of Python and short
system calls, and on threads the GIL changes hands at every call: with --jobs 2, 1,000 such
targets took 1.5 s against 1.36 s with --jobs 1 (four times the context switches, half as
much CPU time again).  A child runs a target exactly as this process would (the same
runner, its own lock on the target) and sends the result back; this process reports each
as it comes, and the run lists them in manifest order.

Used by backup and prune from SPREAD_FROM targets, when no one follows the files or the
progress of a target (--verbose, --log-file and a terminal's progress bars stay with
threads, which can report them).  A child that does not start leaves its share to the
others; one that stops in the middle of a target fails that target, never the run.

Stopping (Ctrl-C, SIGTERM, or this process dying): the children's input is closed, and a
child that sees its input end stops its target within a piece of data (removing the partial
archive, as this process would), sends what it has and exits.  Children live in a process
group of their own, so a terminal's Ctrl-C reaches this process alone, which stops them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backup_core import framing
from backup_core.results import TargetResult

if TYPE_CHECKING:
    from backup_core.manifest import Target

# Below this many targets, threads: a child costs about a tenth of a second to start, which
# 32 small targets barely repay.  Overridable, so tests reach this path with a few targets.
SPREAD_FROM = framing.setting("BACKUP_SPREAD_FROM", 32)
COMMANDS = ("backup", "prune")
# A child whose targets come back quickly is sent one more ahead of its answers: waiting for
# the next target, it sat idle a fifth of its time with targets of a millisecond.  After a
# slow one it is sent one at a time, so a target never waits behind a long one in a child
# while another process could run it.
_QUICK = 0.05  # seconds from handing a target out to its answer
_HELLO_WITHIN = 60.0  # a child that has not started by then is stopped: its share goes to the others
_STOPPED = "stopped"  # a child's last message: it runs nothing more of what it was handed
_HELLO = b"backup_core.fanout 1\n"


class _Handout:
    """The next target to run, to whichever process asks first; none once closed."""

    def __init__(self, count: int) -> None:
        self._next, self._count, self._lock = 0, count, threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._count:
                return None
            self._next += 1
            return self._next - 1

    def close(self) -> None:
        with self._lock:
            self._count = 0


def run(
    targets: list[Target],
    jobs: int,
    one: Callable[[Target], list[TargetResult]],
    done: list[list[TargetResult] | None],
    command: str,
    settings: dict[str, Any],
    finished: Callable[[TargetResult], None],
    stopping: threading.Event,
) -> None:
    """Run every target once, here (`one`) or in one of `jobs - 1` children, putting each one's
    results at its index in `done`.  `settings`: the runner's options a child needs; `finished`
    hears each result of a child's target as it comes."""
    handout = _Handout(len(targets))
    children: list[_Child] = []
    try:
        for _ in range(jobs - 1):
            children.append(_Child(command, settings, targets, handout, done, finished, stopping))
        while not stopping.is_set() and (index := handout.take()) is not None:
            done[index] = one(targets[index])
        if not stopping.is_set():  # (a target stopped by a signal returns: the finally stops the children)
            for child in children:
                child.join()
            # Targets a child was handed but never started, because it stopped: run here.
            for index, results in enumerate(done):
                if results is None and not stopping.is_set():
                    done[index] = one(targets[index])
    except BaseException:
        stopping.set()  # Ctrl-C or SIGTERM here: the children stop too
        raise
    finally:
        handout.close()
        if stopping.is_set():
            for child in children:
                child.stop()  # its target stops within a piece of data; it sends what it has
        for child in children:
            child.join()


class _Child:
    """A child process and the thread that hands it targets and takes back their results."""

    def __init__(
        self,
        command: str,
        settings: dict[str, Any],
        targets: list[Target],
        handout: _Handout,
        done: list[list[TargetResult] | None],
        finished: Callable[[TargetResult], None],
        stopping: threading.Event,
    ) -> None:
        self._targets, self._handout, self._done, self._finished = targets, handout, done, finished
        self._stopping = stopping
        self._sending = threading.Lock()  # stop() closes the input the feeding thread writes to
        # Set once the feeding thread has stored its last answer.  Waited on instead of joining
        # the thread: in Python 3.11 a join interrupted by Ctrl-C marks the thread stopped, and
        # the next join returns at once, before the answer of the target at work is in.
        self._fed = threading.Event()
        try:
            self._process: subprocess.Popen[bytes] | None = framing.start("backup_core.fanout")
        except OSError:
            self._process = None  # its share goes to the others
        self._thread = threading.Thread(target=self._feeding, args=(command, settings), name="fanout", daemon=True)
        self._thread.start()

    def _feeding(self, command: str, settings: dict[str, Any]) -> None:
        try:
            self._feed(command, settings)
        finally:
            self._fed.set()

    def _feed(self, command: str, settings: dict[str, Any]) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        handed: deque[tuple[int, float]] = deque()  # sent to it, in order, not yet answered, and when
        try:
            late = threading.Timer(_HELLO_WITHIN, process.kill)
            late.start()
            try:
                started = framing.greeted(process.stdout, _HELLO)
            finally:
                late.cancel()
            if not started or not self._send(("start", command, settings)):
                return  # it did not start: nothing was handed to it
            self._hand_out(handed)
            while handed:
                try:
                    answer = framing.receive(process.stdout)
                except (OSError, EOFError, ValueError) as exc:
                    answer, why = None, f"its answer could not be read: {exc}"
                else:
                    why = "its answer was garbled" if answer is not None else _ended(process)
                if answer == _STOPPED:
                    return  # stopped (by us, or by a signal of its own): the rest was never started
                if not isinstance(answer, list):
                    if not self._stopping.is_set():  # when stopping, it runs nothing more: no line
                        self._lose(handed[0][0], why)
                    return  # what else it held was never started: run() runs it
                index, sent = handed.popleft()
                self._done[index] = answer
                if self._hand_out(handed) and time.monotonic() - sent < _QUICK and len(handed) < 2:
                    self._hand_out(handed)
                for result in answer:
                    self._finished(result)
        except Exception as exc:  # whatever it is, the target it was running must not vanish from the run
            if handed and self._done[handed[0][0]] is None:
                self._lose(handed[0][0], f"{type(exc).__name__}: {exc}")
        finally:
            self.stop()
            if process.poll() is None:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()  # it was told to stop a minute ago and holds no target of ours
                    process.wait()
            process.stdout.close()

    def _lose(self, index: int, why: str) -> None:
        """Fail the target this child was running, and report it like any other: a failure
        without its line would leave cron mail and the log with a RECAP and no reason."""
        result = _lost(self._targets[index], why)
        self._done[index] = [result]
        self._finished(result)

    def _hand_out(self, handed: deque[tuple[int, float]]) -> bool:
        """Send it the next target, if any is left; False when none is, or it cannot be sent."""
        index = None if self._stopping.is_set() else self._handout.take()
        if index is None:
            return False
        if not self._send(("target", self._targets[index])):
            return False  # never started: run() runs it
        handed.append((index, time.monotonic()))
        return True

    def _send(self, message: tuple[Any, ...]) -> bool:
        assert self._process is not None and self._process.stdin is not None
        with self._sending:
            try:
                framing.send(self._process.stdin, message)
            except (OSError, ValueError):  # it is gone, or stop() closed its input
                return False
        return True

    def stop(self) -> None:
        """Close its input: it stops the target at hand, answers for it, and exits."""
        if self._process is None or self._process.stdin is None:
            return
        with self._sending, contextlib.suppress(OSError):
            self._process.stdin.close()

    def join(self) -> None:
        while not self._fed.wait(1.0):  # waits in steps: a signal stays deliverable meanwhile
            pass


def _ended(process: subprocess.Popen[bytes]) -> str:
    try:
        code = process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return "it closed its output"
    return f"killed by signal {-code}" if code < 0 else f"it exited with status {code}"


def _lost(target: Target, why: str) -> TargetResult:
    result = TargetResult(target.name)
    result.fail(
        f"the process that ran this target for --jobs stopped ({why}); "
        "a partial archive it left is removed by the next run: run the backup again"
    )
    return result


# --- the child process ---------------------------------------------------------------------------


def _serve() -> None:
    """Run the targets sent on standard input, one at a time, answering each with its results,
    until standard input ends."""
    from backup_core import runner
    from backup_core.stores import archives

    answers = framing.serve(_HELLO)
    requests = sys.stdin.buffer
    start = framing.receive(requests)
    if not (isinstance(start, tuple) and start[0] == "start"):
        return
    _, command, settings = start
    work = runner.PER_TARGET[command]
    options = runner.Options(**settings)
    todo: queue.SimpleQueue[Target | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while (message := framing.receive(requests)) is not None:
                todo.put(message[1])
        except (OSError, EOFError, ValueError):
            pass
        # The parent closed our input: the run is over, or stopping (Ctrl-C, SIGTERM, or the
        # parent died).  A target at work stops within a piece of data, as in the parent.
        runner.stop()
        todo.put(None)

    # systemd stops a whole service's processes with SIGTERM: stop as the parent would.
    signal.signal(signal.SIGTERM, lambda signum, frame: runner.stop())
    framing.leave_stopping_to_parent()
    threading.Thread(target=read, name="requests", daemon=True).start()
    with archives.one_listing_per_run():
        while (target := todo.get()) is not None and not runner.stopped():
            try:
                results = work(target, options)
            except Exception as exc:  # _guarded catches a target's failures: this is a bug of ours
                failed = TargetResult(target.name)
                failed.fail(f"unexpected error: {type(exc).__name__}: {exc}")
                results = [failed]
            try:
                framing.send(answers, results)
            except (OSError, ValueError):
                break  # the parent is gone: nothing to tell
    with contextlib.suppress(OSError, ValueError):
        framing.send(answers, _STOPPED)
        answers.close()
    # Not a normal exit: the reading thread may still be blocked on standard input (a SIGTERM
    # of our own stopped us), and the interpreter's shutdown then aborts on that stream's lock.
    # Every target's work is finished and answered by now.
    os._exit(0)


if __name__ == "__main__":
    _serve()
