"""The second process of an unchanged check: it walks the source's last chunks while the
command walks the first ones.

An unchanged re-run is a metadata walk, and one lstat per entry is most of it (a bare
loop of those calls over the benchmark tree takes two thirds of the check).  Threads
cannot share that work: each call gives the GIL back and takes it again, and two threads
walking halves of the tree took longer than one.  A second process can.  It costs about
25 ms to start, so it is used for trees of _SPLIT_FROM chunks or more, and is given fewer
entries than the command keeps, so that both finish at about the same time.

The helper starts its walk at the recorded first name of its first chunk, as if the walk
had begun at the top (backup_core.sources.walk's `start`), compares each chunk with the
recorded one as it closes, and answers with its tallies.  The command checks that its own
part ends just before that name.  A helper that cannot start or dies leaves its part to the
command, so the worst case is the walk without it; one that finds a difference, or fails
in any way, makes the check fall back to comparing contents, never to a wrong `ok`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import subprocess

_HELLO = b"backup_core.stores.statewalk 1\n"
_SPLIT_FROM = 5  # chunks: more than 16,384 entries


class Answer(NamedTuple):
    same: bool  # every chunk of the helper's part is the recorded one
    tallies: tuple[int, int, int, int, bool, bool]  # what Recorder.merge adds


def split_at(chunks: int) -> int:
    """The first of `chunks` that a helper walks, or 0 to walk them all in this process."""
    if chunks < 2:
        return 0  # the common case decided without importing what starting a process needs
    from backup_core import framing

    if chunks < framing.setting("BACKUP_SPLIT_WALK_FROM", _SPLIT_FROM) or _cores() < 2:
        return 0
    # One chunk beyond half stays here: the helper starts about 25 ms later, about the time
    # one chunk's walk took on the benchmark machine.
    return min(chunks - 1, chunks // 2 + 1)


def _cores() -> int:
    """Cores this process may run on (a taskset or cpuset limit, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Helper:
    """A helper process for one check, stopped when the check leaves its `with` block."""

    def __init__(
        self, source: Path, exclude: tuple[str, ...], expected: list[tuple[str, str]], first: int, now_ns: int
    ) -> None:
        self._request = {
            "source": str(source),
            "exclude": exclude,
            "expected": expected,
            "first": first,
            "now_ns": now_ns,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Helper:
        from backup_core import framing

        try:
            # It imports only the standard library and this package: no site module (see framing.start).
            self._process = framing.start("backup_core.stores.statewalk", site=False)
            assert self._process.stdin is not None  # started with pipes
            framing.send(self._process.stdin, self._request)
            # Its input stays open: the helper stops when it closes, so it cannot outlive this
            # process (killed, it closes too), as the --jobs children do.
        except OSError:
            self._stop()  # no process to spare, or it died at once: this process walks it all
        except BaseException:
            self._stop()  # an interrupt while it starts: stop it before leaving
            raise
        return self

    def result(self, should_stop: Callable[[], bool] | None = None) -> Answer | None:
        """The helper's answer; None when it did not give one (this process then walks its part).
        `should_stop` is asked while the helper still walks (POSIX): a run stopped in another
        thread raises TargetError rather than wait for the rest of the helper's walk."""
        from backup_core import framing

        if self._process is None or self._process.stdout is None:
            return None
        _wait_for(self._process.stdout, should_stop)  # it may not have started yet
        try:
            if not framing.greeted(self._process.stdout, _HELLO):
                return None
        except Exception:  # a broken pipe, garbled or cut short: as if it had not run
            return None
        _wait_for(self._process.stdout, should_stop)
        try:
            answer = framing.receive(self._process.stdout)
        except Exception:
            return None
        return _valid(answer)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()  # answered, or no longer needed (a difference found, an interrupt)
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def _wait_for(stream: IO[bytes], should_stop: Callable[[], bool] | None) -> None:
    """Until `stream` has something to read (the answer, or its end), asking `should_stop` ten
    times a second.  Windows cannot wait on a pipe so: there the read simply waits."""
    if should_stop is None or os.name != "posix":
        return
    import select

    # The greeting comes at the helper's start and is read alone: the answer comes at its end.
    while not select.select([stream], [], [], 0.1)[0]:
        if should_stop():
            from backup_core.errors import TargetError

            raise TargetError("interrupted; nothing was written")


def _valid(answer: object) -> Answer | None:
    """`answer` when it has the shape of one (only a broken helper would send another)."""
    if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], bool)):
        return None
    tallies = answer[1]
    if not (isinstance(tallies, tuple) and len(tallies) == 6):
        return None
    if not all(isinstance(n, int) for n in tallies):  # bools are ints too
        return None
    return Answer(answer[0], tallies)


def main() -> None:
    from backup_core import framing
    from backup_core.sources.walk import entries
    from backup_core.stores.state import Recorder

    answers = framing.serve(_HELLO)
    requests = sys.stdin.buffer
    try:
        request = framing.receive(requests)
        # The command closing our input (it stopped, or was killed) ends the walk at once.
        threading.Thread(target=_stop_at_end_of, args=(requests,), daemon=True).start()
        expected = request["expected"]
        walked = Recorder("", request["now_ns"], request["first"], expected)
        source, exclude, start = Path(request["source"]), tuple(request["exclude"]), expected[0][0]
        same = walked.add_all(entries(source, "folder", exclude, start)) and walked.finish()
        answer = (bool(same and len(walked.chunks) == len(expected)), walked.tallies())
    except Exception:  # any failure only means "not proven the same"
        answer = (False, (0, 0, 0, 0, True, False))
    framing.send(answers, answer)
    # At once, not through the interpreter's shutdown, which would wait for the thread reading
    # our input and abort ("could not acquire lock for stdin").
    os._exit(0)


def _stop_at_end_of(requests: object) -> None:
    while requests.read(1 << 16):  # type: ignore[attr-defined]
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
