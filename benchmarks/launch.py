"""The benchmark's stopwatch: run one command, then record its wall time, peak memory and exit status.

Why a process of its own: on Linux a child's ru_maxrss also counts the process
it was forked from (the child starts as a copy of it, and exec keeps the copy's
peak), so a command started straight from the benchmark, which has generated
data and imported the tool, would inherit the benchmark's peak.  Started from
this launcher instead, run as `python -I -S` and importing nothing but os, sys
and time, a command inherits only a few MB: the benchmark measures that floor
and prints it beside the results.

Usage: python -I -S launch.py RESULT_FILE COMMAND [ARGUMENT ...]
Writes "SECONDS PEAK_BYTES EXIT_STATUS" to RESULT_FILE and exits with the command's status.
"""

import os
import sys
import time

# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def main(arguments: list[str]) -> int:
    if len(arguments) < 2:
        os.write(2, b"usage: python -I -S launch.py RESULT_FILE COMMAND [ARGUMENT ...]\n")
        return 2
    result, command = arguments[0], arguments[1:]
    started = time.perf_counter()
    child = os.posix_spawnp(command[0], command, os.environ)
    # wait4 returns the resource usage of exactly this child (and of any children it waited for).
    _, status, usage = os.wait4(child, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    # os.open, not pathlib or open(): every import here would raise the floor each command inherits.
    descriptor = os.open(result, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, f"{seconds!r} {usage.ru_maxrss * _MAXRSS_UNIT} {code}\n".encode())
    finally:
        os.close(descriptor)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
