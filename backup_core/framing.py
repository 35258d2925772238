"""Child processes of this tool and the messages they exchange with it: length-prefixed
pickles over the child's standard input and output.

Two kinds of children use it: the zip writer's worker processes (backup_core.zip.workers)
and the processes that run whole targets for --jobs (backup_core.fanout).  Each is a plain
`python -m backup_core...` child, not a multiprocessing pool: a spawned pool re-imports the
parent's main module, here the whole of Invoke, in every child.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

# The child's PYTHONPATH finds this package wherever it lies; what it was before is kept here,
# and serve() puts it back, so the hooks a child runs see the environment the command had.
_SAVED_PATH = "BACKUP_CORE_PARENT_PYTHONPATH"
_LENGTH = struct.Struct("<Q")
_LONGEST = 1 << 30  # no message is near this long: a longer length means garbled output
# Set to 1, every child starts with the site module (tests instrument children with sitecustomize).
CHILD_SITE = "BACKUP_CHILD_SITE"


def setting(name: str, default: int) -> int:
    """A whole number from the environment (thresholds tests lower); the default when unset or not one."""
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def start(module: str, env: dict[str, str] | None = None, site: bool = True) -> subprocess.Popen[bytes]:
    """`python -m module` with pipes for its input and output, in a process group of its own:
    Ctrl-C reaches this process, which stops its children itself (closing their input).
    Without `site`, a child that needs nothing outside the standard library and this package
    starts without the site module: in a virtual environment holding many packages, processing
    their .pth files cost more than the child's own imports."""
    import subprocess  # here: children import this module too, and need none of it

    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **(env or {})}
    before = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, before]))
    env[_SAVED_PATH] = "unset" if before is None else f"set:{before}"
    return subprocess.Popen(
        [sys.executable, *(() if site or os.environ.get(CHILD_SITE) == "1" else ("-S",)), "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # failures come back as messages; a crash shows as a closed pipe
        env=env,
        start_new_session=os.name == "posix",
        creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
    )


def serve(hello: bytes) -> IO[bytes]:
    """In a child: its channel back to the parent, opened with `hello` (which proves to the parent
    that the output is the protocol).  Standard output then goes to standard error, so a stray
    print (a library's, a hook's) cannot corrupt the messages."""
    saved = os.environ.pop(_SAVED_PATH, "unset")
    if saved.startswith("set:"):
        os.environ["PYTHONPATH"] = saved[4:]
    else:
        os.environ.pop("PYTHONPATH", None)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    answers.write(hello)
    answers.flush()
    return answers


def greeted(stream: IO[bytes], hello: bytes) -> bool:
    """In the parent: whether a child's output opens with `hello` (see serve())."""
    return stream.read(len(hello)) == hello


def send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next message, or None once the other side closed the stream; EOFError when garbled."""
    head = stream.read(_LENGTH.size)
    if not head:
        return None
    if len(head) < _LENGTH.size:
        raise EOFError("cut short")
    (length,) = _LENGTH.unpack(head)
    if length > _LONGEST:
        raise EOFError(f"garbled (a length of {length})")
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("cut short")
    return pickle.loads(data)


def picklable(value: object) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


def leave_stopping_to_parent() -> None:
    """In a child: ignore the signals a terminal sends its whole process group (Ctrl-C, a hang-up,
    Ctrl-Break): the parent receives them too and decides when, and how, its children stop."""
    for stopping in (signal.SIGINT, getattr(signal, "SIGHUP", None), getattr(signal, "SIGBREAK", None)):
        if stopping is not None:
            signal.signal(stopping, signal.SIG_IGN)
