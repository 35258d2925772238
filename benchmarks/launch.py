"""The benchmark's stopwatch: run one command, then record its wall time, peak memory and exit status.

Why a process of its own: on Linux a child's ru_maxrss also counts the process
it was forked from (the child starts as a copy of it, and exec keeps the copy's
peak), so a command started straight from the benchmark, which has generated
data and imported the tool, would inherit the benchmark's peak.  Started from
this launcher instead, run as `python -I -S` and importing nothing but os, sys,
threading and time, a command inherits only a few MB: the benchmark measures that floor
and prints it beside the results.

Peak memory is the larger of two figures:
* ru_maxrss from wait4: the largest resident set of any single process of the
  command, exact but blind to processes running side by side;
* the largest sum of the resident sets of the command's whole process tree
  (a pipeline's stages, this tool's worker processes), sampled from /proc every
  20 ms by a thread, while the main thread waits for the command (so the timing
  does not depend on the sampling).  Shared pages (the Python interpreter, libraries) count once per process,
  so the sum errs high, never low; only a forked child that has not yet started its own
  program is left out, since all it holds is its parent's memory.

Usage: python -I -S launch.py RESULT_FILE COMMAND [ARGUMENT ...]
Writes "SECONDS PEAK_BYTES EXIT_STATUS" to RESULT_FILE and exits with the command's status.
"""

import os
import sys
import threading
import time

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SAMPLE_EVERY = 0.02


def _read(path: str) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(descriptor, 4096)
    except OSError:
        return b""
    finally:
        os.close(descriptor)


def _tree_resident(root: int) -> int:
    """Resident bytes of `root` and every descendant (0 where /proc cannot say)."""
    total, todo = 0, [(root, b"")]  # a process that exits meanwhile just counts as 0
    while todo:
        pid, parent_command = todo.pop()
        command = _read(f"/proc/{pid}/cmdline")
        # A child still running its parent's command line is a fork that has not yet replaced
        # itself with the program it starts: its pages are its parent's, counted already.
        # Counted again, a sample taken in that instant (which a busy machine stretches)
        # doubled the parent's memory.
        if not command or command != parent_command:
            statm = _read(f"/proc/{pid}/statm").split()
            if len(statm) > 1:
                total += int(statm[1]) * _PAGE
        try:
            tasks = os.listdir(f"/proc/{pid}/task")  # noqa: PTH208 - pathlib would raise the floor
        except OSError:
            continue  # it has exited
        for task in tasks:
            todo += [(int(child), command) for child in _read(f"/proc/{pid}/task/{task}/children").split()]
    return total


def main(arguments: list[str]) -> int:
    if len(arguments) < 2:
        os.write(2, b"usage: python -I -S launch.py RESULT_FILE COMMAND [ARGUMENT ...]\n")
        return 2
    result, command = arguments[0], arguments[1:]
    started = time.perf_counter()
    child = os.posix_spawnp(command[0], command, os.environ)
    tree_peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(_SAMPLE_EVERY):
            tree_peak[0] = max(tree_peak[0], _tree_resident(child))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # wait4 returns the resource usage of exactly this child (and of any children it waited for).
    _, status, usage = os.wait4(child, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    peak = max(usage.ru_maxrss * _MAXRSS_UNIT, tree_peak[0])
    # os.open, not pathlib or open(): every import here would raise the floor each command inherits.
    descriptor = os.open(result, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, f"{seconds!r} {peak} {code}\n".encode())
    finally:
        os.close(descriptor)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
