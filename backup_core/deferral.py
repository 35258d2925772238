"""A signal's KeyboardInterrupt, held back from a few steps that must not be cut between them.

Python runs a signal handler in the main thread between two steps of its work, wherever it
stands; the handlers of a task raise KeyboardInterrupt there, and the clean-up it unwinds
through does the rest.  A few steps must not be cut apart: making a file's descriptor and
handing it to the file object that will close it (cut there, a descriptor leaked, or was
closed twice and could shut a file that had taken its number).  Such steps run in an
`interrupts_held` block; a handler calls `interrupt`, which raises at once outside one and as
the block ends inside it.

Nothing is installed on import: a --jobs child answers signals its own way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

# Depth of the held blocks the main thread is in, and whether an interrupt waits for their end.
# Only the main thread runs signal handlers: other threads need no holding.
_holding = [0, False]


def interrupt() -> None:
    """Stop the task: raise KeyboardInterrupt where the main thread stands, or as its held block ends."""
    if _holding[0]:
        _holding[1] = True
        return
    raise KeyboardInterrupt


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold an interrupt back until the block ends.  It is dropped if the block raised an error
    of its own: that error unwinds through the same clean-up, and the handler has already told
    the run to stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding[0] += 1
    try:
        yield
    finally:
        _holding[0] -= 1
    if not _holding[0] and _holding[1]:
        _holding[1] = False
        raise KeyboardInterrupt


def open_private(path: os.PathLike[str] | str, mode: str, **options: Any) -> IO[Any]:
    """open(), a file it creates readable and writable by its owner only, whatever the umask.

    One call, held against interrupts: made in two steps (os.open, then os.fdopen, closing
    the descriptor by hand if that failed), a SIGTERM's KeyboardInterrupt raised as fdopen
    returned closed the descriptor twice, once as the new object was dropped and once by hand
    (seen as a database snapshot stopped by SIGTERM failing "Bad file descriptor")."""
    file = None
    try:
        with interrupts_held():
            file = open(path, mode, opener=_owner_only, **options)  # noqa: SIM115 - the caller's to close
    except BaseException:
        if file is not None:
            file.close()  # now, not with the traceback: Windows removes no open file
        raise
    return file


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
