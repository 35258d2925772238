"""Run a command and measure it: wall time, exit status and peak memory.

Each command runs under benchmarks/launch.py, a small child process that starts
the command and records its wall time and peak memory: the larger of wait4's
ru_maxrss (the largest single process) and the sampled sum over the command's
process tree (see launch.py).  `os.wait4` and /proc exist on Linux, so the
benchmark runs there.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).resolve().with_name("launch.py")


@dataclass(frozen=True)
class Run:
    """One run of a command."""

    seconds: float
    peak_bytes: int  # 0 when not measured (work done inside the benchmark's own process)
    exit_code: int


def measure(argv: Sequence[str | Path], cwd: Path, log: Path, env: Mapping[str, str] | None = None) -> Run:
    """Run `argv` in `cwd` with its output (stdout and stderr) in `log`; time it and take its peak memory."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".result")
    result.unlink(missing_ok=True)
    # -I -S: no site-packages, no environment: the launcher stays as small as Python can be.
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(result), *map(str, argv)]
    # Untimed: write out what earlier commands left in the page cache (the original script and
    # tar | zstd do not sync), so that no command pays for another's writes competing for the disk.
    os.sync()
    with log.open("wb") as output:
        subprocess.run(launcher, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=env, check=False)
    try:
        seconds, peak, code = result.read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return Run(0.0, 0, 127)  # the launcher could not start the command; the log says why
    return Run(float(seconds), int(peak), int(code))


def launcher_floor(cwd: Path, log: Path) -> int:
    """The peak memory a command that uses almost none shows under the launcher: the floor of every figure."""
    return measure(["true"], cwd, log).peak_bytes


@dataclass(frozen=True)
class Summary:
    """The runs of one command over all rounds."""

    runs: tuple[Run, ...]

    @property
    def seconds(self) -> float:
        """The median wall time: one slow round (another process woke up) does not move it."""
        return statistics.median(run.seconds for run in self.runs)

    @property
    def peak_bytes(self) -> int:
        """The largest peak of any round: memory is a limit, so the worst case is what counts."""
        return max(run.peak_bytes for run in self.runs)


def tail(log: Path, lines: int = 20) -> str:
    """The last lines of a log, to show why a command failed."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
