"""Prometheus metrics after every run: parsed with prometheus_client's own parser, and the
example alert rules checked against what the tool writes (parsed with a PromQL parser)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from conftest import INVOKE, REPO, Project, archive_file_name
from prometheus_client.parser import text_string_to_metric_families

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
RULES = REPO / "examples" / "monitoring" / "backups.rules.yml"
Labels = frozenset[tuple[str, str]]

# What the issue asks every target to have after a backup, and the run-level ones.
PER_TARGET = (
    "backup_last_run_timestamp_seconds",
    "backup_last_run_status",
    "backup_last_run_duration_seconds",
    "backup_runs_total",
    "backup_last_success_timestamp_seconds",
    "backup_last_archive_size_bytes",
    "backup_last_source_size_bytes",
)
PER_STORE = (
    "backup_store_up",
    "backup_archives",
    "backup_archives_size_bytes",
    "backup_newest_archive_timestamp_seconds",
    "backup_newest_archive_age_seconds",
)


def at(moment: datetime) -> dict[str, str]:
    return {"BACKUP_NOW": moment.isoformat().replace("+00:00", "Z")}


def read_metrics(path: Path) -> dict[str, dict[Labels, float]]:
    """Every sample in the file, by sample name, as prometheus_client's parser reads it."""
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(frozenset(labels.items()))


def make_project(project: Project, metrics: str = "metrics/backups.prom", folder: bool = True) -> Path:
    (project.root / "nas").mkdir()
    if folder:
        (project.root / metrics).parent.mkdir(parents=True, exist_ok=True)  # the collector's folder exists
    project.file("site/index.html", "<h1>hello</h1>\n" * 50)
    project.file("notes.txt", "remember\n")
    project.write_manifest(
        f"""
        version: 1
        metrics_file: {metrics}
        remotes: {{nas: {{type: folder, path: nas}}}}
        targets:
          - {{name: site, path: site, max_age: 26h, offsite: [nas]}}
          - {{name: notes, path: notes.txt}}
        """
    )
    return project.root / metrics


def test_after_a_backup_the_file_holds_every_metric_for_every_target(project: Project) -> None:
    metrics = make_project(project)
    ran = project.invoke("backup", env=at(T0))
    assert ran.code == 0, ran.output
    samples = read_metrics(metrics)
    stamp = T0.timestamp()
    for target in ("site", "notes"):
        [archive] = project.archives(target=target)
        for name in PER_TARGET:
            assert any(("target", target) in labels for labels in samples[name]), (name, target)
        assert value(samples, "backup_last_run_timestamp_seconds", command="backup", target=target) == stamp
        assert value(samples, "backup_last_success_timestamp_seconds", target=target) == stamp
        assert value(samples, "backup_last_run_status", command="backup", target=target, status="changed") == 1
        assert value(samples, "backup_last_run_status", command="backup", target=target, status="failed") == 0
        assert value(samples, "backup_runs_total", command="backup", target=target, status="changed") == 1
        assert value(samples, "backup_last_archive_size_bytes", target=target) == archive.stat().st_size
        assert value(samples, "backup_archives", target=target, store="local") == 1
        assert value(samples, "backup_archives_size_bytes", target=target, store="local") == archive.stat().st_size
        assert value(samples, "backup_newest_archive_timestamp_seconds", target=target, store="local") == stamp
        assert value(samples, "backup_newest_archive_age_seconds", target=target, store="local") == 0
        assert value(samples, "backup_store_up", target=target, store="local") == 1
    assert value(samples, "backup_last_source_size_bytes", target="site") == len("<h1>hello</h1>\n" * 50)
    assert value(samples, "backup_last_source_size_bytes", target="notes") == len("remember\n")
    # The remote is a store of its own.
    [copy] = (project.root / "nas" / "site").glob("site-*.zip")
    assert value(samples, "backup_archives", target="site", store="nas") == 1
    assert value(samples, "backup_archives_size_bytes", target="site", store="nas") == copy.stat().st_size
    for name in PER_STORE:
        assert value(samples, name, target="site", store="nas") is not None, name
    assert value(samples, "backup_max_age_seconds", target="site") == 26 * 3600
    assert value(samples, "backup_max_age_seconds", target="notes") is None  # none set: nothing to compare
    assert value(samples, "backup_run_timestamp_seconds", command="backup") == stamp
    duration = value(samples, "backup_run_duration_seconds", command="backup")
    assert duration is not None and duration > 0


@pytest.mark.parametrize("older", [True, False])
def test_an_empty_file_under_the_newest_archives_name_is_not_reported_as_a_fresh_archive(
    project: Project, older: bool
) -> None:
    # status failed the target, but the metrics gave the empty file's date as the newest
    # archive's, so the shipped staleness rule saw a fresh backup.
    metrics = make_project(project)
    if older:
        assert project.invoke("backup", "--only", "notes", env=at(T0)).code == 0
    later = T0 + timedelta(hours=30)
    (project.root / "backups").mkdir(exist_ok=True)
    (project.root / "backups" / archive_file_name("notes", later)).write_bytes(b"")

    ran = project.invoke("status", "--only", "notes", env=at(later))

    assert ran.code == 1, ran.output
    samples = read_metrics(metrics)
    newest = value(samples, "backup_newest_archive_timestamp_seconds", target="notes", store="local")
    age = value(samples, "backup_newest_archive_age_seconds", target="notes", store="local")
    if older:
        assert (newest, age) == (T0.timestamp(), 30 * 3600)
    else:
        assert (newest, age) == (0, later.timestamp())  # no good archive: every staleness rule fires


def test_the_file_follows_prometheus_naming_conventions(project: Project) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    families = list(text_string_to_metric_families(metrics.read_text(encoding="utf-8")))
    assert len(families) >= 15
    for family in families:
        assert family.name.startswith("backup_") and family.name == family.name.lower(), family.name
        assert family.documentation, family.name
        assert family.type in ("gauge", "counter"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            if "timestamp" in sample.name or "duration" in sample.name or "age" in sample.name:
                assert sample.name.endswith("_seconds"), sample.name
            if "size" in sample.name:
                assert sample.name.endswith("_bytes"), sample.name


@pytest.mark.slow
def test_an_only_run_keeps_the_other_targets_values_and_a_failure_keeps_the_last_success(project: Project) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    (project.root / "notes.txt").unlink()  # notes would fail from now on

    later = T0 + timedelta(hours=24)
    assert project.invoke("backup", "--only", "site", env=at(later)).code == 0
    samples = read_metrics(metrics)
    assert value(samples, "backup_last_success_timestamp_seconds", target="site") == later.timestamp()
    # notes did not run: every value of it is the one from the first run.
    assert value(samples, "backup_last_success_timestamp_seconds", target="notes") == T0.timestamp()
    assert value(samples, "backup_last_run_timestamp_seconds", command="backup", target="notes") == T0.timestamp()
    assert value(samples, "backup_archives", target="notes", store="local") == 1
    assert value(samples, "backup_runs_total", command="backup", target="site", status="changed") == 2
    assert value(samples, "backup_runs_total", command="backup", target="notes", status="changed") == 1

    latest = T0 + timedelta(hours=48)
    failed = project.invoke("backup", env=at(latest))
    assert failed.code == 1
    samples = read_metrics(metrics)
    # The failure is recorded, and the last success stays where it was: the alert keeps counting.
    assert value(samples, "backup_last_run_status", command="backup", target="notes", status="failed") == 1
    assert value(samples, "backup_last_run_status", command="backup", target="notes", status="changed") == 0
    assert value(samples, "backup_last_run_timestamp_seconds", command="backup", target="notes") == latest.timestamp()
    assert value(samples, "backup_last_success_timestamp_seconds", target="notes") == T0.timestamp()
    assert value(samples, "backup_runs_total", command="backup", target="notes", status="failed") == 1
    assert value(samples, "backup_newest_archive_age_seconds", target="notes", store="local") == 48 * 3600
    assert value(samples, "backup_last_success_timestamp_seconds", target="site") == latest.timestamp()


@pytest.mark.parametrize("command", ["prune", "verify", "push", "status"])
def test_prune_verify_push_and_status_write_their_own_runs(project: Project, command: str) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    later = T0 + timedelta(hours=30)
    ran = project.invoke(command, env=at(later))
    assert ran.code == (1 if command == "status" else 0), ran.output  # site is past its max_age
    samples = read_metrics(metrics)
    assert value(samples, "backup_run_timestamp_seconds", command=command) == later.timestamp()
    assert value(samples, "backup_last_run_timestamp_seconds", command=command, target="site") == later.timestamp()
    # status: site is past its max_age; push: the remote already holds everything.
    expected = "failed" if command == "status" else "ok"
    assert value(samples, "backup_last_run_status", command=command, target="site", status=expected) == 1
    # The backup's own values are untouched; the stores' ages are refreshed.
    assert value(samples, "backup_last_success_timestamp_seconds", target="site") == T0.timestamp()
    assert value(samples, "backup_last_run_timestamp_seconds", command="backup", target="site") == T0.timestamp()
    assert value(samples, "backup_newest_archive_age_seconds", target="site", store="nas") == 30 * 3600


def test_the_flag_overrides_the_manifest_and_check_runs_write_nothing(project: Project) -> None:
    metrics = make_project(project)
    elsewhere = project.root / "textfile" / "other.prom"
    elsewhere.parent.mkdir()
    assert project.invoke("backup", "--check", env=at(T0)).code == 0
    assert not metrics.exists()
    assert project.invoke("backup", "--metrics-file", str(elsewhere), env=at(T0)).code == 0
    assert not metrics.exists()
    assert value(read_metrics(elsewhere), "backup_last_success_timestamp_seconds", target="site") == T0.timestamp()


@pytest.mark.skipif(not Path("/proc/sys").is_dir(), reason="needs /proc/sys, where no file can be created")
def test_a_metrics_file_whose_lock_cannot_be_created_is_named_at_once_not_blamed_on_another_run(
    project: Project,
) -> None:
    # The lock library retried a creation that failed with "No such file or directory" for its
    # whole 60 s timeout, then the line said another run held the lock; there was none.
    make_project(project)

    ran = project.invoke("status", "--metrics-file", "/proc/sys/backups.prom", env=at(T0), timeout=50)

    assert ran.code == 1, ran.output
    assert "metrics file /proc/sys/backups.prom: cannot write it (No such file or directory)" in ran.output
    assert "another run" not in ran.output


def test_a_metrics_file_in_a_folder_that_does_not_exist_is_an_error_and_no_folder_is_made(project: Project) -> None:
    # A typo in the path made the folders, and the run said nothing: no collector reads there.
    make_project(project)
    typo = project.root / "textfile_colector" / "backups.prom"
    ran = project.invoke("backup", "--metrics-file", str(typo), env=at(T0))
    assert ran.code == 1, ran.output
    assert f"ERROR: metrics file {typo}: the folder {typo.parent} does not exist" in ran.output
    assert not typo.parent.exists()
    assert len(project.archives(target="site")) == 1  # the backups themselves were done


def test_a_preview_says_the_metrics_folder_every_real_run_would_miss(project: Project) -> None:
    # `backup --check` never looked at the metrics path, so the Ansible role's check of a
    # schedule's flags passed one that made every scheduled run exit 1.
    make_project(project)
    typo = project.root / "textfile_colector" / "backups.prom"
    ran = project.invoke("backup", "--check", "--metrics-file", str(typo), "--format", "json", env=at(T0))
    assert ran.code == 2, ran.output
    said = (
        f"metrics file {typo}: the folder {typo.parent} does not exist; check the path (the textfile collector's "
        "folder) or create the folder; every run would back up, then fail (exit 1) to write it"
    )
    assert ran.json()["errors"] == [said]
    assert not typo.parent.exists() and project.archives() == []


def test_a_name_the_textfile_collector_would_ignore_is_refused(project: Project) -> None:
    make_project(project, metrics="metrics/backups.txt")
    ran = project.invoke("status")
    assert ran.code == 2
    assert (
        "backups.yml:2:1: metrics_file: 'metrics/backups.txt' does not end in .prom; "
        "node_exporter's textfile collector reads only *.prom"
    ) in ran.stderr
    project.write_manifest("version: 1\ntargets: [{name: notes, path: notes.txt}]\n")
    flag = project.invoke("backup", "--metrics-file", "out.txt")
    assert flag.code == 2
    assert "--metrics-file out.txt: the name must end in .prom" in flag.stderr
    assert project.archives() == []


def test_a_metrics_file_that_cannot_be_written_fails_the_run_after_the_backup(project: Project) -> None:
    make_project(project, metrics="blocker/backups.prom", folder=False)
    project.file("blocker", "a file where the folder should be\n")
    ran = project.invoke("backup", "--format", "json", env=at(T0))
    assert ran.code == 1
    document = ran.json()
    assert [t["status"] for t in document["targets"]] == ["changed", "changed"]  # the backups themselves are done
    assert len(project.archives(target="site")) == 1
    [error] = document["errors"]
    assert error.startswith(f"metrics file {project.root / 'blocker' / 'backups.prom'}: ")
    assert f"{project.root / 'blocker'} is a file, not a folder" in error, error  # not "File exists"
    assert f"ERROR: {error}" in ran.stderr
    assert "Traceback" not in ran.output


def test_a_damaged_file_is_rewritten_with_a_warning(project: Project) -> None:
    metrics = make_project(project)
    metrics.write_text("this is { not prometheus\n", encoding="utf-8")
    ran = project.invoke("status", env=at(T0))
    assert "[WARNING] metrics file" in ran.stdout and "earlier values lost" in ran.stdout
    assert value(read_metrics(metrics), "backup_store_up", target="site", store="local") == 1


def test_a_target_removed_from_the_manifest_leaves_the_file(project: Project) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    text = project.manifest.read_text(encoding="utf-8")
    project.manifest.write_text(text.replace("  - {name: notes, path: notes.txt}\n", ""), encoding="utf-8")
    assert project.invoke("status", env=at(T0)).code == 0
    names = {label for series in read_metrics(metrics).values() for labels in series for label in labels}
    assert ("target", "site") in names
    assert ("target", "notes") not in names


READER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prometheus_client.parser import text_string_to_metric_families
    path, stop, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    reads = bad = 0
    while not stop.exists():
        if reads == 1:
            ready.touch()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        reads += 1
        try:
            names = {f.name for f in text_string_to_metric_families(text)}
        except ValueError:
            names = set()
        # Every complete file ends with the last family the tool writes.
        if "backup_newest_archive_age_seconds" not in names or not text.endswith("\\n"):
            bad += 1
    print(reads, bad)
    """
)


@pytest.mark.slow
def test_the_file_is_replaced_in_one_rename_and_never_seen_half_written(project: Project) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    stop, ready = project.root / "stop", project.root / "ready"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(metrics), str(stop), str(ready)], stdout=subprocess.PIPE, text=True
    )
    replaced = []
    try:
        while not ready.exists():  # the reader is reading before the first run starts
            assert reader.poll() is None, "the reader stopped early"
            time.sleep(0.01)
        for hour in range(1, 5):
            before = metrics.stat().st_ino
            assert project.invoke("status", env=at(T0 + timedelta(hours=hour))).code in (0, 1)
            # The new file is made while the old one still exists, so it cannot have its inode
            # (an inode freed by an earlier rename may come back: only consecutive ones differ).
            replaced.append(metrics.stat().st_ino != before)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    reads, bad = map(int, out.split())
    assert reads > 0
    assert bad == 0, f"{bad} of {reads} reads saw a partial file"
    # A new file each time (written beside it, then renamed over it), never the old one rewritten.
    if os.name != "nt":
        assert replaced == [True] * 4
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["backups.prom", "backups.prom.lock"]


def test_a_signal_while_the_file_is_written_leaves_no_temporary_file_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal lands exactly between the write and the rename (a SIGTERM is raised as
    KeyboardInterrupt): the old file stays whole and nothing else is left in its folder."""
    from backup_core.monitoring import metrics as module

    target = tmp_path / "backups.prom"
    target.write_text("# the last run's\n", encoding="utf-8")

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", interrupted)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.write(target, {"backup_last_run_timestamp_seconds": {("backup", "site"): 1.0}})
    assert [p.name for p in tmp_path.iterdir()] == ["backups.prom"]
    assert target.read_text(encoding="utf-8") == "# the last run's\n"


# --- the example alert rules ---------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_names(expression: Any) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(expression, visit)
    return names


def test_every_metric_the_alert_rules_name_is_in_what_the_tool_writes(project: Project) -> None:
    metrics = make_project(project)
    # With skip_unchanged, a run that finds notes unchanged gives backup_unchanged_timestamp_seconds.
    project.manifest.write_text(
        project.manifest.read_text(encoding="utf-8").replace(
            "path: notes.txt}", "path: notes.txt, skip_unchanged: true}"
        ),
        encoding="utf-8",
    )
    assert project.invoke("backup", env=at(T0)).code == 0
    assert project.invoke("backup", env=at(T0 + timedelta(hours=1))).code == 0
    assert project.invoke("status", env=at(T0 + timedelta(hours=2))).code == 0
    written = set(read_metrics(metrics))
    named: set[str] = set()
    for rule in rules():
        assert rule["alert"] and rule["annotations"]["summary"], rule
        named |= metric_names(promql_parser.parse(rule["expr"]))  # also proves each expression parses
    assert "backup_last_success_timestamp_seconds" in named
    assert named - written == set()
    assert len(named) >= 6


def evaluate(node: Any, samples: dict[str, dict[Labels, float]], now: float) -> dict[Labels, float] | float:
    """The PromQL the 26-hour rule uses (time(), selectors with = matchers, arithmetic, a
    comparison that filters), evaluated over the samples the tool wrote."""
    if isinstance(node, promql_parser.NumberLiteral):
        return float(node.val)
    if isinstance(node, promql_parser.ParenExpr):
        return evaluate(node.expr, samples, now)
    if isinstance(node, promql_parser.Call) and node.func.name == "time":
        return now
    if isinstance(node, promql_parser.VectorSelector):
        wanted = {(m.name, m.value) for m in node.matchers.matchers}
        return {labels: v for labels, v in samples.get(node.name, {}).items() if wanted <= labels}
    if isinstance(node, promql_parser.BinaryExpr):
        operations: dict[str, Callable[[float, float], float | bool]] = {
            "+": lambda a, b: a + b,
            "-": lambda a, b: a - b,
            "*": lambda a, b: a * b,
            ">": lambda a, b: a > b,
        }
        operation = operations[str(node.op)]
        left, right = evaluate(node.lhs, samples, now), evaluate(node.rhs, samples, now)
        if isinstance(left, float) and isinstance(right, float):
            return float(operation(left, right))
        assert not (isinstance(left, dict) and isinstance(right, dict)), "vector matching is not needed here"
        vector = left if isinstance(left, dict) else right
        assert isinstance(vector, dict)

        def apply(v: float) -> float | bool:
            return operation(v, right) if isinstance(right, float) else operation(left, v)  # type: ignore[arg-type]

        if str(node.op) == ">":  # a comparison keeps the series it holds for, with the vector's value
            return {labels: v for labels, v in vector.items() if apply(v)}
        return {labels: float(apply(v)) for labels, v in vector.items()}
    raise AssertionError(f"not supported by this small evaluator: {node}")


def test_the_26_hour_alert_fires_only_for_a_target_without_a_success_in_26_hours(project: Project) -> None:
    metrics = make_project(project)
    assert project.invoke("backup", env=at(T0)).code == 0
    (project.root / "notes.txt").unlink()
    assert project.invoke("backup", env=at(T0 + timedelta(hours=20))).code == 1  # notes fails, site succeeds
    samples = read_metrics(metrics)
    [rule] = [r for r in rules() if r["alert"] == "BackupTooOld"]
    expression = promql_parser.parse(rule["expr"])

    def firing(hours_after_first: float) -> set[str]:
        now = (T0 + timedelta(hours=hours_after_first)).timestamp()
        result = evaluate(expression, samples, now)
        assert isinstance(result, dict)
        return {dict(labels)["target"] for labels in result}

    assert firing(25) == set()
    assert firing(27) == {"notes"}  # its last success was the first run
    assert firing(47) == {"notes", "site"}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="finds the waiting connection in /proc/net/tcp")
@pytest.mark.parametrize("command", ["backup", "status"])
def test_a_signal_while_a_silent_remote_is_listed_ends_the_command_at_once_with_its_document(
    project: Project, command: str
) -> None:
    # The listing ran on a thread pool, whose threads the exit waited for: SIGTERM took 86 to
    # 90 s (systemd kills at 90), and the run printed no JSON document and wrote no metrics.
    import json
    import signal
    import socket

    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    project.write_manifest(
        f"""
        version: 1
        remotes:
          off: {{type: s3, bucket: bkt, endpoint: "http://127.0.0.1:{port}", addressing_style: path, region: us-east-1}}
        targets:
          - {{name: gone, path: no-such-source, offsite: [off]}}
        """
    )
    metrics = project.root / "backups.prom"
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    args = [str(INVOKE), "--search-root", str(REPO), command, "--manifest", str(project.manifest), "--format", "json"]
    try:
        child = subprocess.Popen(
            [*args, "--metrics-file", str(metrics)], cwd=project.root, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60  # until the run waits on the silent remote
            while "ESTABLISHED" not in _connections(port):
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the run never connected to the silent remote"
                time.sleep(0.05)
            time.sleep(0.3)  # past the connect, into the wait for an answer
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=20)  # was 86 to 90 s
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    finally:
        silent.close()
    assert child.returncode == 130, err
    document = json.loads(out)
    assert document["interrupted"] is True and document["exit_code"] == 130, document
    if command == "backup":
        assert [t["status"] for t in document["targets"]] == ["failed"]  # its result stands
        assert any(f"{metrics} was not updated" in e for e in document["errors"]), document
    else:
        assert document["errors"] == ["interrupted; nothing was written"], document


def _connections(port: int) -> str:
    """The states of this machine's TCP connections to `port`, as the kernel lists them."""
    states = {"01": "ESTABLISHED"}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as listing:  # noqa: PTH123
            for line in listing.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    found.append(states.get(fields[3], fields[3]))
    return " ".join(found)
