"""Where packing jobs run: on threads for a small archive, in worker processes for a big one.

Why processes: compressing releases the GIL, but reading, checksumming and framing
tens of thousands of small files is Python work, and on threads it runs on one core
at a time while the writer waits its turn.  Worker processes run all of it in
parallel, and write their data into the archive themselves, at the offset the
writer gives them once every member before it is placed: the data never crosses
a pipe.  They cost about 50 ms to start, so an archive uses them only once enough
data is queued to repay that (small archives, and most test runs, never start one).

The processes are plain `python -m backup_core.zip.workers` children (see
backup_core.framing).  Jobs only read sources, so when a worker process cannot
start or dies before answering, its jobs run again on a thread and the archive is
still made; one that dies holding data it was to write fails the archive.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from backup_core import framing
from backup_core.errors import TargetError
from backup_core.zip import packing

# Data queued before worker processes start (overridable, so tests reach that path with
# small trees), or members: 100,000 tiny files are Python work too.
PROCESSES_FROM = framing.setting("BACKUP_PROCESSES_FROM", 16 << 20)
_PROCESSES_FROM_MEMBERS = 4096
_JOBS: dict[str, Callable[..., tuple[Any, bytes]]] = {
    "pack_batch": packing.pack_batch,
    "pack_piece": packing.pack_piece,
}
# The first jobs of an archive run on the calling thread: starting a thread costs more than
# packing a small file, and most targets of a large fleet hold a few small files.
_INLINE_UP_TO = 256 << 10
_HELLO = b"backup_core.zip.workers 1\n"  # a worker's first bytes: proves its output is the protocol
_O_BINARY = getattr(os, "O_BINARY", 0)


class Job:
    """A job handed to a thread or a process.  Every job returns (facts, data): what the writer
    records, and the bytes to place in the archive."""

    def __init__(self, name: str, args: tuple[Any, ...], future: Future[Any] | None, process: _Process | None):
        self.name, self.args, self.future, self.process = name, args, future, process


class _Broken(Exception):
    """A worker process stopped answering."""


class Workers:
    """`count` threads, then `count` processes once PROCESSES_FROM bytes were submitted."""

    def __init__(self, count: int, archive: Path | None) -> None:
        self._count = count
        self._archive = archive  # where processes write; None: they are never used
        self._threads = ThreadPoolExecutor(count, thread_name_prefix="zip")
        self._processes: list[_Process] = []
        self._submitted = 0
        self._members = 0
        self.warning: str | None = None  # why worker processes were given up, once

    def submit(self, name: str, size: int, members: int, *args: Any) -> Job:
        """Run job `name` (a function of packing.py) on `args`; it reads `size` bytes of `members`."""
        self._submitted += size
        self._members += members
        self.foresee(self._submitted, self._members)
        if self._processes:
            # To the process with the least work waiting: jobs differ tenfold in cost.
            process = min(self._processes, key=_Process.waiting)
            try:
                process.send(("job", name, args))
                process.sent += 1
                return Job(name, args, None, process)
            except _Broken as exc:
                self._lost(process, exc)
        if self._submitted <= _INLINE_UP_TO:
            return Job(name, args, _done_here(_JOBS[name], args), None)
        return Job(name, args, self._threads.submit(_JOBS[name], *args), None)

    def foresee(self, size: int, members: int) -> bool:
        """Start the worker processes now if `size` bytes of `members` members lie ahead and that
        repays them: before the first job, not after thousands of small files were packed on
        threads one core at a time.  True once the choice is made (started, or never to be), so
        looking further ahead adds nothing."""
        if self._processes or not self._may_use_processes():
            return True
        if not _enough(size, members):
            return False
        self._start_processes()
        return True

    def facts(self, job: Job) -> tuple[Any, bytes | None]:
        """Wait for `job`: what to record, and its data, or None when its process holds the data."""
        if job.future is not None:
            return job.future.result()  # type: ignore[no-any-return]
        process = job.process
        assert process is not None
        if not process.retired:
            try:
                return process.answer(), None
            except _Broken as exc:
                self._lost(process, exc)
        return _JOBS[job.name](*job.args)

    def place(self, job: Job, offset: int) -> None:
        """Have the process that ran `job` write its data at `offset`."""
        assert job.process is not None
        try:
            job.process.send(("place", str(self._archive), offset))
        except _Broken as exc:
            self._lost(job.process, exc)  # raises: this process had answered, so it held data
            raise TargetError(f"a worker process failed ({exc}); run the backup again") from None

    def close(self, abandon: bool = False) -> None:
        """Stop the workers; without `abandon`, once every process has written all it was told to
        (raising what went wrong writing)."""
        processes = self._processes
        try:
            self._threads.shutdown(wait=True, cancel_futures=abandon)
            for process in processes:
                process.stop(abandon)
            if not abandon:
                for process in processes:
                    process.check_finished()
        except BaseException:  # Ctrl-C while waiting, or a failed write: leave no worker running
            for process in processes:
                process.stop(abandon=True)
            raise
        finally:
            self._processes = []

    def settle(self) -> None:
        """Have every worker process write all it was told to place, then stop it (raising what
        went wrong writing).  Jobs it had not placed run again on a thread when the writer asks for
        them; later jobs may start new processes."""
        processes, self._processes = self._processes, []
        try:
            for process in processes:
                process.stop(abandon=False)
            for process in processes:
                process.check_finished(skip_answers=True)
        except BaseException:
            for process in processes:
                process.stop(abandon=True)
            raise

    def _may_use_processes(self) -> bool:
        return self._archive is not None and self.warning is None and self._count > 1

    def _start_processes(self) -> None:
        try:
            for _ in range(self._count):
                self._processes.append(_Process())
        except (OSError, ValueError) as exc:
            self._give_up(_Broken(f"cannot start: {exc}"))

    def _lost(self, process: _Process, why: _Broken) -> None:
        """A process stopped: go on with threads if no process has answered yet (so none holds
        data to write), else raise why it stopped: the archive has a hole."""
        if any(p.answered for p in self._processes):
            process.stop(abandon=True)
            raise process.failure(why)
        self._give_up(why)

    def _give_up(self, why: Exception) -> None:
        # Only while no process has answered: none holds data, so stopping them loses nothing.
        self.warning = f"worker processes failed ({why}); compressed on threads instead"
        for process in self._processes:
            process.stop(abandon=True)
        self._processes = []


class _Process:
    """One worker process and the thread that collects its answers."""

    def __init__(self) -> None:
        # glibc hands out buffers this big (2 MiB pieces, 1 MiB batches) as fresh mappings and
        # returns them on free, so every piece would fault its pages in anew: keep them on the
        # heap, where the next piece reuses them (about 5% of a big backup's time).
        self._child = framing.start(
            "backup_core.zip.workers",
            {
                "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(64 << 20)),
                "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", str(256 << 20)),
            },
        )
        self._answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._why_gone = ""  # the collector's reason for killing it, once it has one
        self.answered = 0
        self.sent = 0
        self.retired = False
        self._reader = threading.Thread(target=self._collect, name="zip-answers", daemon=True)
        self._reader.start()

    def waiting(self) -> int:
        """Jobs sent that it has not answered yet."""
        return self.sent - self.answered - self._answers.qsize()

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            framing.send(self._stdin(), message)
        except (OSError, ValueError) as exc:
            # A broken pipe is most often the collector's doing (it kills a process whose output
            # it cannot trust): its reason, once it has one, says why; the pipe only says that.
            self._reader.join(timeout=5)
            raise _Broken(self._why_gone or f"cannot send it work: {exc}") from None

    def answer(self) -> Any:
        """The next answer; raises what the job raised, or _Broken if the process is gone."""
        kind, value = self._answers.get()
        if kind == "gone":
            self._answers.put((kind, value))  # every later job of this process is lost too
            raise _Broken(value)
        if kind in ("failed", "unwritten"):
            try:
                raise value
            finally:
                value = None  # no cycle through this frame: the collector is paused during a run
        self.answered += 1
        return value

    def stop(self, abandon: bool) -> None:
        self.retired = True
        if abandon:
            self._child.kill()  # before closing its input, whose flush could wait on a full pipe
        with contextlib.suppress(OSError):
            self._stdin().close()  # end of work: the process writes what it still holds, then exits
        with contextlib.suppress(subprocess.TimeoutExpired):  # a killed process that does not die
            self._child.wait(timeout=None if not abandon else 30)
        self._reader.join(timeout=30)
        if not self._reader.is_alive() and self._child.stdout is not None:
            self._child.stdout.close()

    def check_finished(self, skip_answers: bool = False) -> None:
        """After stop(): raise what went wrong writing, or if the process did not finish its work.
        `skip_answers`: answers not yet taken are expected (their jobs run again elsewhere)."""
        kind, value = self._answers.get()
        while skip_answers and kind in ("done", "failed"):
            kind, value = self._answers.get()
        if kind == "unwritten":
            try:
                raise value
            finally:
                value = None  # no cycle through this frame: the collector is paused during a run
        if kind != "gone" or self._child.returncode != 0:
            raise TargetError(f"a worker process did not finish writing its part of the archive ({value})")

    def failure(self, why: _Broken) -> Exception:
        """After stop(): the error that made this process stop writing (a full disk, most often)."""
        while True:
            kind, value = self._answers.get()
            if kind == "unwritten":
                return value  # type: ignore[no-any-return]
            if kind == "gone":
                return TargetError(f"a worker process failed ({why}); run the backup again")

    def _stdin(self) -> IO[bytes]:
        assert self._child.stdin is not None
        return self._child.stdin

    def _collect(self) -> None:
        assert self._child.stdout is not None
        why = ""
        try:
            if not framing.greeted(self._child.stdout, _HELLO):
                why = "it did not start (something else wrote to its output)"
                return
            while (answer := framing.receive(self._child.stdout)) is not None:
                self._answers.put(answer)
        except BaseException as exc:  # whatever it is, the writer must hear that this process is gone
            why = f"its answer could not be read: {type(exc).__name__}: {exc}"
        finally:
            if why:
                self._why_gone = why
                self._child.kill()  # its output cannot be trusted: it must not write anything either
            code = self._child.wait()
            self._answers.put(("gone", why or ("it exited" if code == 0 else f"it exited with status {code}")))


def _enough(size: int, members: int) -> bool:
    """Whether packing `size` bytes of `members` members repays starting worker processes."""
    return size >= PROCESSES_FROM or members >= _PROCESSES_FROM_MEMBERS


def _done_here(job: Callable[..., tuple[Any, bytes]], args: tuple[Any, ...]) -> Future[Any]:
    """`job` run now, on this thread, as a finished future (its exception kept for facts())."""
    future: Future[Any] = Future()
    try:
        future.set_result(job(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


# --- the worker process ----------------------------------------------------------------------------


def _serve() -> None:
    """Answer jobs from standard input, and write the data of each when told where, until
    standard input closes."""
    framing.leave_stopping_to_parent()
    requests = sys.stdin.buffer
    answers = framing.serve(_HELLO)
    held: deque[bytes] = deque()  # data of answered jobs, in order, until placed
    archive: int | None = None
    try:
        while (message := framing.receive(requests)) is not None:
            if message[0] == "job":
                _, name, args = message
                try:
                    facts, data = _JOBS[name](*args)
                except Exception as exc:  # raised in the writer, as on a thread
                    failure = exc if framing.picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}")
                    framing.send(answers, ("failed", failure))
                    continue
                held.append(data)
                framing.send(answers, ("done", facts))
            else:
                _, path, offset = message
                if archive is None:
                    archive = os.open(path, os.O_WRONLY | _O_BINARY)
                _write_at(archive, held.popleft(), offset)
        if archive is not None:
            os.close(archive)
    except OSError as exc:  # a full disk, most often: the writer names it
        with contextlib.suppress(OSError):
            framing.send(answers, ("unwritten", exc))


def _write_at(descriptor: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(descriptor, view, offset)
        else:  # Windows: this process's own descriptor, so seeking it disturbs no one
            os.lseek(descriptor, offset, os.SEEK_SET)
            written = os.write(descriptor, view)
        view, offset = view[written:], offset + written


if __name__ == "__main__":
    _serve()
