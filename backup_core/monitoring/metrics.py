"""Prometheus metrics after every run, as a text file for node_exporter's textfile collector.

After a backup, prune, push, verify or status run, the file named by `metrics_file:`
(or --metrics-file) is rewritten whole: prometheus_client formats it, and it is
written under a temporary name that is then renamed over the old file, so the
collector never reads half a file.  A run that selects only some targets keeps every other
target's last values, read back from the file itself: `--only` must never make a
target look as if it had never succeeded.  Targets no longer in the manifest are
dropped, so a removed target stops alerting.

Names follow Prometheus' conventions: snake case, base units as suffixes
(`_seconds`, `_bytes`), `_total` for counters, a `target` label on everything
about one target and a `store` label on what one store ("local", or a remote's
name) holds.  Timestamps are Unix seconds: an alert computes `time() - x`, which
keeps growing when the tool stops running, unlike an age written by the tool.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import filelock
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backup_core.errors import BackupError, UsageError
from backup_core.monitoring.status import TargetState
from backup_core.results import FAILED, OK, SKIPPED, STATUSES, TargetResult
from backup_core.stores import archives, retention

LabelValues = tuple[str, ...]
Samples = dict[str, dict[LabelValues, float]]  # metric name -> its label values (in its label order) -> value

_LOCK_TIMEOUT = 60  # seconds: another run writing the same file finishes in far less


@dataclass(frozen=True)
class Definition:
    """One metric: its name, type, help text and label names."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...]


_T, _CT, _TS = ("target",), ("command", "target"), ("target", "store")
METRICS = (
    Definition("backup_last_run_timestamp_seconds", "gauge", "When the command last ran on the target.", _CT),
    Definition(
        "backup_last_run_status",
        "gauge",
        "1 for the status the command's last run on the target ended with (ok, changed, failed, skipped), "
        "0 for the others.",
        (*_CT, "status"),
    ),
    Definition("backup_last_run_duration_seconds", "gauge", "How long the command's last run on the target took.", _CT),
    Definition(
        "backup_runs_total",
        "counter",
        "Runs of the command on the target, by the status they ended with.",
        (*_CT, "status"),
    ),
    Definition(
        "backup_last_success_timestamp_seconds",
        "gauge",
        "When a backup of the target last succeeded (a new archive, or a source unchanged since the newest).",
        _T,
    ),
    Definition(
        "backup_last_archive_size_bytes", "gauge", "Size of the archive the last successful backup made or kept.", _T
    ),
    Definition("backup_last_source_size_bytes", "gauge", "Bytes the last successful backup read from the source.", _T),
    Definition(
        "backup_max_age_seconds", "gauge", "The target's max_age: how old its newest archive may be in any store.", _T
    ),
    Definition("backup_run_timestamp_seconds", "gauge", "When the command last ran, on any targets.", ("command",)),
    Definition("backup_run_duration_seconds", "gauge", "How long the command's last run took.", ("command",)),
    Definition("backup_store_up", "gauge", "1 when the store could be listed at the last run, else 0.", _TS),
    Definition("backup_archives", "gauge", "The target's archives in the store.", _TS),
    Definition("backup_archives_size_bytes", "gauge", "Total size of the target's archives in the store.", _TS),
    Definition(
        "backup_newest_archive_timestamp_seconds",
        "gauge",
        "The time in the name of the target's newest archive in the store.",
        _TS,
    ),
    Definition(
        "backup_newest_archive_age_seconds",
        "gauge",
        "Age of the target's newest archive in the store when the file was written; alert on "
        "time() - backup_newest_archive_timestamp_seconds, which keeps growing if runs stop.",
        _TS,
    ),
    Definition(
        "backup_unchanged_timestamp_seconds",
        "gauge",
        "skip_unchanged: when a run last found the source to hold what the store's newest archive "
        "holds (later than that archive's time); alert on time() - (this or "
        "backup_newest_archive_timestamp_seconds).",
        _TS,
    ),
)
BY_NAME = {metric.name: metric for metric in METRICS}
_STORE_METRICS = [m.name for m in METRICS if m.labels == _TS]


class MetricsError(BackupError):
    """The metrics file could not be written: one sentence naming it and the reason."""


@dataclass(frozen=True)
class TargetRun:
    """What one command did to one target, as the metrics tell it."""

    name: str
    status: str
    seconds: float
    archive_bytes: int | None = None  # a successful backup: the archive it made or kept
    source_bytes: int | None = None


def runs_of(command: str, results: Iterable[TargetResult]) -> list[TargetRun]:
    """One TargetRun per target (verify gives one result per archive: the worst status counts)."""
    grouped: dict[str, list[TargetResult]] = {}
    for result in results:
        grouped.setdefault(result.name, []).append(result)
    runs = []
    for name, group in grouped.items():
        status = next((s for s in (FAILED, "changed", SKIPPED, OK) if any(r.status == s for r in group)), OK)
        seconds = sum(r.seconds for r in group)
        last = group[-1]
        if command == "backup" and status in (OK, "changed"):
            runs.append(TargetRun(name, status, seconds, _archive_size(last), last.bytes_in))
        else:
            runs.append(TargetRun(name, status, seconds))
    return runs


def _archive_size(result: TargetResult) -> int:
    try:
        return result.archive.stat().st_size if result.archive else result.bytes_out
    except OSError:
        return result.bytes_out


def record(
    path: Path,
    command: str,
    targets: dict[str, str | None],
    runs: list[TargetRun],
    states: list[TargetState],
    run_seconds: float,
    now: datetime,
) -> list[str]:
    """Merge this run into the metrics file at `path` and replace it atomically; return warnings.

    `targets` maps every target of the manifest to its max_age; `runs` and `states`
    cover the selected ones.  Raises MetricsError when the file cannot be written.
    """
    if (why := folder_problem(path)) is not None:
        raise MetricsError(f"{why}; the run itself is done")
    try:
        # Two runs at once (a nightly backup and a status check every few minutes) would each
        # read the old file and the second to write would drop the first one's values.  The lock
        # file is made first here: filelock retries a creation that fails with ENOENT (in /proc,
        # say) for its whole timeout, then the line blamed another run that never was.
        os.close(os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o644))
        with filelock.FileLock(f"{path}.lock", timeout=_LOCK_TIMEOUT):
            previous, warnings = read(path)
            write(path, merge(previous, command, targets, runs, states, run_seconds, now))
    except filelock.Timeout:
        raise MetricsError(
            f"metrics file {path}: another run held {path}.lock for {_LOCK_TIMEOUT}s; it was not updated"
        ) from None
    except OSError as exc:
        raise MetricsError(
            f"metrics file {path}: cannot write it ({exc.strerror or exc}); the run itself is done, "
            "but monitoring will not see it until the file can be written"
        ) from None
    return warnings


def folder_problem(path: Path) -> str | None:
    """Why the metrics file cannot be written in its folder, or None.  The folder is never
    made: a typo in the path would make one no collector reads, and monitoring would go stale
    in silence.  The collector's folder exists where it is installed."""
    if path.parent.is_dir():
        return None
    blocker = archives.file_in_the_way(path.parent)
    why = f"{blocker} is a file, not a folder" if blocker else f"the folder {path.parent} does not exist"
    return f"metrics file {path}: {why}; check the path (the textfile collector's folder) or create the folder"


def read(path: Path) -> tuple[Samples, list[str]]:
    """The samples of our metrics in an existing file (none when it does not exist), and warnings."""
    samples: Samples = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return samples, []
    except (OSError, UnicodeDecodeError) as exc:
        return samples, [f"metrics file {path} could not be read ({_reason(exc)}); earlier values were dropped"]
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                metric = BY_NAME.get(sample.name)
                if metric is None or set(sample.labels) != set(metric.labels):
                    continue  # not ours, or from an older layout: dropped
                samples.setdefault(metric.name, {})[tuple(sample.labels[n] for n in metric.labels)] = sample.value
    except ValueError as exc:
        return {}, [f"metrics file {path} is not valid Prometheus text ({exc}); it was rewritten, earlier values lost"]
    return samples, []


def merge(
    previous: Samples,
    command: str,
    targets: dict[str, str | None],
    runs: list[TargetRun],
    states: list[TargetState],
    run_seconds: float,
    now: datetime,
) -> Samples:
    """The new samples: this run's values over the previous ones, other targets' values kept."""
    # A target that left the manifest has no place in the file: its series would alert forever.
    samples: Samples = {name: _known(name, values, targets) for name, values in previous.items()}

    def put(name: str, labels: LabelValues, value: float) -> None:
        samples.setdefault(name, {})[labels] = float(value)

    stamp = now.timestamp()
    put("backup_run_timestamp_seconds", (command,), stamp)
    put("backup_run_duration_seconds", (command,), run_seconds)
    samples["backup_max_age_seconds"] = {
        (name,): retention.parse_duration(max_age).total_seconds() for name, max_age in targets.items() if max_age
    }
    for run in runs:
        put("backup_last_run_timestamp_seconds", (command, run.name), stamp)
        put("backup_last_run_duration_seconds", (command, run.name), run.seconds)
        for status in STATUSES:
            put("backup_last_run_status", (command, run.name, status), 1 if status == run.status else 0)
        counted = samples.get("backup_runs_total", {}).get((command, run.name, run.status), 0)
        put("backup_runs_total", (command, run.name, run.status), counted + 1)
        if run.archive_bytes is not None:
            put("backup_last_success_timestamp_seconds", (run.name,), stamp)
            put("backup_last_archive_size_bytes", (run.name,), run.archive_bytes)
        if run.source_bytes is not None:
            put("backup_last_source_size_bytes", (run.name,), run.source_bytes)
    for state in states:
        # What a store holds is replaced whole: a store that could not be listed says so with
        # backup_store_up 0 rather than with counts from an earlier run.
        for name in _STORE_METRICS:
            samples[name] = {labels: v for labels, v in samples.get(name, {}).items() if labels[0] != state.name}
        for store in state.stores:
            labels = (state.name, store.store)
            put("backup_store_up", labels, 1 if store.listed else 0)
            if not store.listed:
                continue
            put("backup_archives", labels, store.archives)
            put("backup_archives_size_bytes", labels, store.bytes)
            if store.newest_when is not None and store.age is not None:
                # An empty or cut-short newest archive is no backup: the newest good one counts,
                # and with none, the epoch, so every staleness rule fires.
                newest = store.newest_when
                if store.newest_problem is not None:
                    newest = store.good_when or datetime.fromtimestamp(0, timezone.utc)
                put("backup_newest_archive_timestamp_seconds", labels, newest.timestamp())
                # The archive's own age: status counts `age` from a later "found unchanged", if any.
                confirmed = store.confirmed_when if store.newest_problem is None else None
                since = (confirmed or store.newest_when) - newest
                put("backup_newest_archive_age_seconds", labels, store.age + since.total_seconds())
                if store.confirmed_when is not None:
                    put("backup_unchanged_timestamp_seconds", labels, store.confirmed_when.timestamp())
    return samples


def _known(metric: str, values: dict[LabelValues, float], targets: dict[str, str | None]) -> dict[LabelValues, float]:
    labels = BY_NAME[metric].labels
    if "target" not in labels:
        return dict(values)
    where = labels.index("target")
    return {key: value for key, value in values.items() if key[where] in targets}


class _Collector:
    """Hands prometheus_client the samples as metric families, in a stable order."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        for metric in METRICS:
            values = self.samples.get(metric.name)
            if not values:
                continue
            family: GaugeMetricFamily | CounterMetricFamily
            if metric.kind == "counter":
                family = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
            else:
                family = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
            yield family


def write(path: Path, samples: Samples) -> None:
    """Replace the file in one rename.  Written here rather than by prometheus_client's
    write_to_textfile, which removes its temporary file on an Exception only: a signal
    while it wrote left one more file beside the metrics every time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(samples))  # type: ignore[arg-type]
    text = generate_latest(registry)
    # Not *.prom: the collector reads only those, and so never this one half written.
    temporary = path.with_name(f".backups-metrics.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(text)
        for attempt in range(10):
            try:
                temporary.replace(path)
                return
            except PermissionError:
                # Windows: a collector or virus scanner reading the old file blocks the rename for a moment.
                if sys.platform != "win32" or attempt == 9:
                    raise
                time.sleep(0.1 * (attempt + 1))
    finally:
        with contextlib.suppress(OSError):  # gone already once renamed
            temporary.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def check_path(value: str) -> Path:
    """A --metrics-file flag's value, refused unless the textfile collector would read it."""
    if not value.endswith(".prom"):
        raise UsageError(
            f"--metrics-file {value}: the name must end in .prom; node_exporter's textfile collector reads only *.prom"
        )
    return Path(os.path.abspath(value))  # noqa: PTH100 - resolve() would follow links
