"""The second process of an unchanged check: it walks the source's last chunks while the
command walks the first ones.

An unchanged re-run is a metadata walk, and one lstat per entry is most of it (a bare
loop of those calls over the benchmark tree takes two thirds of the check).  Threads
cannot share that work: each call gives the GIL back and takes it again, and two threads
walking halves of the tree took longer than one.  A second process can.  It costs about
25 ms to start, so it is used for trees of SPLIT_FROM chunks or more, and is given fewer
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
from pathlib import Path
from types import TracebackType
from typing import Any

_HELLO = b"backup_core.stores.statewalk 1\n"
_SPLIT_FROM = 5  # chunks: 20,480 entries or more
# Chunks the command keeps beyond half: the helper starts about 25 ms later, which is about
# the time of one chunk's walk on the benchmark machine.
_HEAD_START = 2


def split_at(chunks: int) -> int:
    """The first of `chunks` that a helper walks, or 0 to walk them all in this process."""
    if chunks < 2:
        return 0  # the common case decided without importing what starting a process needs
    from backup_core import framing

    if chunks < framing.setting("BACKUP_SPLIT_WALK_FROM", _SPLIT_FROM) or (os.cpu_count() or 1) < 2:
        return 0
    return min(chunks - 1, (chunks + _HEAD_START) // 2)


class Helper:
    """A helper process for one check, stopped when the check leaves its `with` block."""

    def __init__(
        self,
        source: Path,
        exclude: tuple[str, ...],
        expected: list[tuple[str, str]],
        first: int,
        settings: str,
        now_ns: int,
    ) -> None:
        self._request = {
            "source": str(source),
            "exclude": exclude,
            "expected": expected,
            "first": first,
            "settings": settings,
            "now_ns": now_ns,
        }
        self._process: Any = None

    def __enter__(self) -> Helper:
        from backup_core import framing

        try:
            self._process = framing.start("backup_core.stores.statewalk")
            framing.send(self._process.stdin, self._request)
            self._process.stdin.close()
        except OSError:
            self._stop()  # no process to spare, or it died at once: this process walks it all
        return self

    def result(self) -> dict[str, Any] | None:
        """The helper's answer: "same" and its tallies; None when it did not answer."""
        from backup_core import framing

        if self._process is None:
            return None
        try:
            if self._process.stdout.read(len(_HELLO)) != _HELLO:
                return None
            answer = framing.receive(self._process.stdout)
        except (OSError, EOFError, ValueError):
            return None
        return answer if isinstance(answer, dict) and "same" in answer else None

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


def main() -> None:
    from backup_core import framing
    from backup_core.sources.walk import entries
    from backup_core.stores.state import Recorder

    answers = framing.serve(_HELLO)
    request = framing.receive(sys.stdin.buffer)
    answer: dict[str, object]
    try:
        expected = request["expected"]
        walked = Recorder(request["settings"], request["now_ns"], request["first"], expected)
        source, exclude, start = Path(request["source"]), tuple(request["exclude"]), expected[0][0]
        same = walked.add_all(entries(source, "folder", exclude, start)) and walked.finish()
        answer = {"same": same and len(walked.chunks) == len(expected), **walked.tallies()}
    except Exception as exc:  # any failure only means "not proven the same"
        answer = {"same": False, "error": f"{type(exc).__name__}: {exc}"}
    framing.send(answers, answer)


if __name__ == "__main__":
    main()
