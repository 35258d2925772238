"""The command line: `invoke backup`, `prune`, `validate`, `list` as an operator runs them.

Behaviour is proved through the real `invoke` command in a subprocess, and the
pieces the commands are made of (selection, the result line, the recap) at the
function level.

Every subprocess run is a *scenario*: a function that builds a project in its own
folder, runs `invoke` once and returns what happened.  The `runs` fixture starts
all scenarios at once in a few threads (each waits on its own subprocess), so the
file costs about as long as its slowest few runs instead of the sum of them all;
the tests below each scenario only read its result.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, Project, Ran, have, run_invoke

from backup_core import manifest, report
from backup_core.errors import UsageError
from backup_core.manifest import selection
from backup_core.results import CHANGED, FAILED, OK, SKIPPED, RunResult, TargetResult

ANSI = "\x1b["
STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[+-]\d{2}:\d{2}|Z)"
ARCHIVE = r"[A-Za-z0-9_-]+-\d{8}T\d{6}\.\d{6}Z\.zip"
NOTHING = "the selection matches no target; see `invoke list` for names and tags"
NO_MATCH = "no target matches; targets are: site, sitemap, notes, db"
OLD = [f"site-202001{day:02d}T000000.000000Z.zip" for day in (1, 2, 3)]  # three old archives of `site`
RECAP = "RECAP " + "*" * 66

Tree = dict[str, tuple[int, int]]


# --- scenarios: every subprocess run of this file, started together ---------------------------------


@dataclass
class Done:
    """One scenario's run: its project, what invoke did, and the project before the run."""

    project: Project
    ran: Ran
    before: Tree = field(default_factory=dict)


Scenario = Callable[[Project], Done]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[name] = function
        return function

    return register


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Done]]:
    """Start every scenario now, each in its own folder; hand each test the one it names."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures: dict[str, Future[Done]] = {
            name: pool.submit(function, Project(tmp_path_factory.mktemp(name))) for name, function in SCENARIOS.items()
        }
        yield lambda name: futures[name].result(timeout=300)


# --- helpers ---------------------------------------------------------------------------------------


def make_sources(project: Project) -> None:
    """site: 2 files (13 bytes) and a sub-folder; docs: 2 files (8 bytes)."""
    project.file("site/a.txt", "hello\n")
    project.file("site/sub/b.txt", "world!\n")
    project.file("docs/x.md", "# x\n")
    project.file("docs/y.md", "# y\n")


def two_folders(project: Project, *more_targets: str) -> Project:
    make_sources(project)
    project.write_manifest(
        "version: 1\ntargets:\n  - {name: site, path: site}\n  - {name: docs, path: docs}\n" + "".join(more_targets)
    )
    return project


def header(command: str, count: int, check: bool = False) -> str:
    title = f"{command} [backups.yml: {count} target{'s' if count != 1 else ''}]"
    if check:
        title += " (CHECK MODE: nothing is written, deleted or locked)"
    return f"{title} " + "*" * max(3, 72 - len(title))


def recap_rows(lines: list[str]) -> list[str]:
    """The rows after RECAP, with runs of spaces folded (alignment is not the point)."""
    return [" ".join(line.split()) for line in lines[lines.index(RECAP) + 1 :]]


def assert_lines(actual: list[str], patterns: list[str]) -> None:
    """Each line matches its regular expression in full, and there are exactly as many lines."""
    assert len(actual) == len(patterns), "\n".join(actual)
    for line, pattern in zip(actual, patterns, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"


def changed_line(name: str, archive: Path, files: int, bytes_in: int, rotated: int = 0) -> str:
    size = archive.stat().st_size
    assert size < 1000  # shown in bytes
    return (
        rf"changed: \[{name}\] => {re.escape(archive.name)} \({files} files, {bytes_in} B -> {size} B, "
        rf"\d+\.\d\ds, {rotated} rotated\)"
    )


def plain_environment(**extra: str) -> dict[str, str]:
    """The caller's environment without the variables that switch colour off (or on) by themselves."""
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE")}
    return {**environment, "TERM": "xterm-256color", **extra}


def run_with_colour_allowed(*args: str) -> Ran:
    """`invoke ARGS` without NO_COLOR (which conftest's run_invoke sets), output to pipes."""
    completed = subprocess.run(
        [str(INVOKE), "--search-root", str(REPO), *args],
        cwd=REPO, env=plain_environment(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return Ran(completed.returncode, completed.stdout, completed.stderr)


def run_on_a_terminal(*args: str) -> Ran:
    """`invoke ARGS` with stdout and stderr on a pseudo-terminal; what it showed comes back as stdout."""
    import pty

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(INVOKE), "--search-root", str(REPO), *args],
        cwd=REPO, env=plain_environment(COLUMNS="120"), stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    chunks = []
    try:
        while select.select([main], [], [], 60)[0]:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        code = process.wait(timeout=60)
    return Ran(code, b"".join(chunks).decode("utf-8", "replace"), "")


def old_archives(project: Project, names: list[str], destination: str = "backups") -> None:
    """Files under archive names: empty zips (prune trusts the newest it keeps only if it ends as a zip)."""
    for name in names:
        project.file(f"{destination}/{name}", b"PK\x05\x06" + bytes(18))


# --- a small backup ----------------------------------------------------------------------------------


@scenario("small")
def _small(project: Project) -> Done:
    """`invoke backup` of two folders, with colour allowed but output to pipes."""
    two_folders(project)
    return Done(project, run_with_colour_allowed("backup", "-m", str(project.manifest)))


def test_backup_prints_one_line_per_target_then_a_recap(runs: Callable[[str], Done]) -> None:
    done = runs("small")
    ran, project = done.ran, done.project
    assert (ran.code, ran.stderr) == (0, ""), ran.output
    [site] = project.archives(target="site")
    [docs] = project.archives(target="docs")
    assert_lines(
        ran.stdout.splitlines(),
        [
            re.escape(header("BACKUP", 2)),
            changed_line("site", site, files=2, bytes_in=13),
            changed_line("docs", docs, files=2, bytes_in=8),
            "",
            re.escape(RECAP),
            r"site : ok=0  changed=1  failed=0  skipped=0",
            r"docs : ok=0  changed=1  failed=0  skipped=0",
        ],
    )
    assert recap_rows(ran.stdout.splitlines()) == [
        "site : ok=0 changed=1 failed=0 skipped=0",
        "docs : ok=0 changed=1 failed=0 skipped=0",
    ]


def test_backup_writes_one_archive_per_target_holding_its_files(runs: Callable[[str], Done]) -> None:
    project = runs("small").project
    [site] = project.archives(target="site")
    [docs] = project.archives(target="docs")
    assert re.fullmatch(ARCHIVE, site.name)
    assert re.fullmatch(ARCHIVE, docs.name)
    with zipfile.ZipFile(site) as archive:
        assert sorted(archive.namelist()) == ["a.txt", "sub/", "sub/b.txt"]
        assert archive.read("sub/b.txt") == b"world!\n"
    with zipfile.ZipFile(docs) as archive:
        assert sorted(archive.namelist()) == ["x.md", "y.md"]


def test_no_ansi_colour_when_the_output_is_not_a_terminal(runs: Callable[[str], Done]) -> None:
    ran = runs("small").ran
    assert ran.code == 0
    assert ANSI not in ran.output
    assert "\r" not in ran.output  # no progress bar either


@scenario("terminal")
def _terminal(project: Project) -> Done:
    if os.name == "nt":
        return Done(project, Ran(-1, "", "no pseudo-terminals on Windows"))
    two_folders(project)
    log = project.root / "run.log"
    return Done(project, run_on_a_terminal("backup", "--manifest", str(project.manifest), "--log-file", str(log)))


@pytest.mark.skipif(os.name == "nt", reason="pseudo-terminals are POSIX")
def test_colour_on_a_terminal_but_the_log_file_stays_plain(runs: Callable[[str], Done]) -> None:
    done = runs("terminal")
    assert done.ran.code == 0, done.ran.stdout
    # On a terminal the status is painted, so the test above would see colour if it leaked into pipes.
    assert f"{ANSI}33mchanged{ANSI}0m: [site] => " in done.ran.stdout
    text = (done.project.root / "run.log").read_text(encoding="utf-8")
    assert ANSI not in text
    assert re.search(rf"^{STAMP} changed: \[site\] => {ARCHIVE} ", text, re.MULTILINE)


# --- a failing target ----------------------------------------------------------------------------


@scenario("failing")
def _failing(project: Project) -> Done:
    make_sources(project)
    project.write_manifest("version: 1\ntargets:\n  - {name: gone, path: nothere}\n  - {name: site, path: site}\n")
    return Done(project, project.invoke("backup"))


def test_a_failing_target_does_not_stop_the_others_and_exits_1(runs: Callable[[str], Done]) -> None:
    done = runs("failing")
    ran, project = done.ran, done.project
    assert ran.code == 1
    assert ran.stderr == ""
    assert "Traceback" not in ran.output
    [site] = project.archives(target="site")
    assert_lines(
        ran.stdout.splitlines(),
        [
            re.escape(header("BACKUP", 2)),
            re.escape(
                f"failed: [gone] => source not found: {project.root / 'nothere'}; check the path in the manifest"
            ),
            changed_line("site", site, files=2, bytes_in=13),
            "",
            re.escape(RECAP),
            r"gone : ok=0  changed=0  failed=1  skipped=0",
            r"site : ok=0  changed=1  failed=0  skipped=0",
        ],
    )
    assert project.archives(target="gone") == []


# --- --format json -------------------------------------------------------------------------------


@scenario("json")
def _json(project: Project) -> Done:
    """`invoke backup --format json` of three targets, the middle one missing its source."""
    make_sources(project)
    project.write_manifest(
        "version: 1\ntargets:\n"
        "  - {name: site, path: site}\n  - {name: gone, path: nothere}\n  - {name: docs, path: docs}\n"
    )
    return Done(project, project.invoke("backup", "--format", "json"))


def test_json_stdout_is_exactly_one_json_document(runs: Callable[[str], Done]) -> None:
    ran = runs("json").ran
    assert ran.code == 1
    document = json.loads(ran.stdout)  # raises on anything before or after the one document
    assert isinstance(document, dict)
    assert ran.stdout.startswith("{")
    assert "RECAP" not in ran.stdout
    assert "Traceback" not in ran.output


def test_json_document_has_the_run_and_every_targets_result(runs: Callable[[str], Done]) -> None:
    done = runs("json")
    document, project = done.ran.json(), done.project
    [site] = project.archives(target="site")
    [docs] = project.archives(target="docs")
    assert {k: document[k] for k in ("command", "manifest", "check", "exit_code", "errors")} == {
        "command": "backup",
        "manifest": str(project.manifest),
        "check": False,
        "exit_code": 1,
        "errors": [],
    }
    assert document["recap"] == {
        "site": {"ok": 0, "changed": 1, "failed": 0, "skipped": 0},
        "gone": {"ok": 0, "changed": 0, "failed": 1, "skipped": 0},
        "docs": {"ok": 0, "changed": 1, "failed": 0, "skipped": 0},
    }
    assert isinstance(document["seconds"], (int, float))
    assert [t["name"] for t in document["targets"]] == ["site", "gone", "docs"]
    by_name = {t["name"]: t for t in document["targets"]}
    for name, archive, files, directories, bytes_in in (("site", site, 2, 1, 13), ("docs", docs, 2, 0, 8)):
        result = by_name[name]
        assert isinstance(result.pop("seconds"), (int, float))
        assert result == {
            "name": name,
            "status": "changed",
            "archive": str(archive),
            "files": files,
            "directories": directories,
            "databases": 0,
            "bytes_in": bytes_in,
            "bytes_out": archive.stat().st_size,
            "deleted": [],
            "reason": "",
            "compared": None,
            "error": None,
            "warnings": [],
            "future": [],
            "incomplete": [],
            "offsite": [],
            "changed": [],
            "links": 0,
        }
    gone = by_name["gone"]
    assert (gone["status"], gone["archive"], gone["error"]) == (
        "failed",
        None,
        f"source not found: {project.root / 'nothere'}; check the path in the manifest",
    )
    # The target after the failed one ran to the end.
    assert [p.name.rsplit("-", 1)[0] for p in project.archives()] == ["docs", "site"]


def test_json_mode_puts_the_human_text_on_stderr(runs: Callable[[str], Done]) -> None:
    done = runs("json")
    [site] = done.project.archives(target="site")
    [docs] = done.project.archives(target="docs")
    missing = done.project.root / "nothere"
    assert_lines(
        done.ran.stderr.splitlines(),
        [
            re.escape(header("BACKUP", 3)),
            changed_line("site", site, files=2, bytes_in=13),
            re.escape(f"failed: [gone] => source not found: {missing}; check the path in the manifest"),
            changed_line("docs", docs, files=2, bytes_in=8),
            "",
            re.escape(RECAP),
            r"site : ok=0  changed=1  failed=0  skipped=0",
            r"gone : ok=0  changed=0  failed=1  skipped=0",
            r"docs : ok=0  changed=1  failed=0  skipped=0",
        ],
    )


# --- selection -------------------------------------------------------------------------------------


def selection_project(project: Project) -> Project:
    make_sources(project)
    project.file("sitemap.xml", "<urlset/>\n")
    project.file("db/data.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - name: site
            path: site
            tags: [web]
          - name: sitemap
            path: sitemap.xml
            tags: [web, docs]
          - name: notes
            path: docs
            tags: [docs]
          - name: db
            path: db
        """
    )
    return project


SELECTIONS = {
    "repeated-and-pattern": (["--only", "notes", "--only", "si*"], ["site", "sitemap", "notes"]),
    "comma-list": (["-o", "db,site"], ["site", "db"]),  # in manifest order, not the order asked
    "tags-and-skip-tags": (["--tags", "docs", "--skip-tags", "web"], ["notes"]),  # sitemap has docs, but also web
}
for _key, (_flags, _) in SELECTIONS.items():
    scenario(f"select-{_key}")(
        lambda project, flags=_flags: Done(
            project, selection_project(project).invoke("backup", "--format", "json", *flags)
        )
    )


@pytest.mark.parametrize("key", list(SELECTIONS))
def test_only_tags_and_skip_tags_choose_what_is_backed_up(runs: Callable[[str], Done], key: str) -> None:
    done, chosen = runs(f"select-{key}"), SELECTIONS[key][1]
    assert done.ran.code == 0, done.ran.output
    document = done.ran.json()
    assert [t["name"] for t in document["targets"]] == chosen
    assert list(document["recap"]) == chosen
    assert sorted(p.name.rsplit("-", 1)[0] for p in done.project.archives()) == sorted(chosen)


EMPTY = "error: {} was given an empty value; give one, or leave the flag out"
REFUSALS = {
    "only-nosuch": (["--only", "nosuch"], f"error: --only nosuch: {NO_MATCH}"),
    "nothing-selected": (["--tags", "web", "--skip-tags", "web"], f"error: {NOTHING}"),
    "format-xml": (["--format", "xml"], "error: --format xml: choose one of text, json"),
    # An empty value read as the flag's absence: no metrics were written, no log kept, in silence.
    "metrics-empty": (["--metrics-file="], EMPTY.format("--metrics-file")),
    "log-empty": (["--log-file", ""], EMPTY.format("--log-file")),
    "jobs-empty": (["-j="], EMPTY.format("--jobs")),
}  # fmt: skip


@pytest.mark.parametrize("flag", [["--manifest", ""], ["-m", ""], ["-m="]])
def test_an_empty_manifest_flag_is_refused_not_read_as_the_default_manifest(project: Project, flag: list[str]) -> None:
    # `--manifest $M` with M unset ran ./backups.yml, whatever M was meant to name.
    selection_project(project)
    before = project.snapshot_tree()
    ran = run_invoke("backup", *flag, cwd=project.root)
    assert (ran.code, ran.stdout, ran.stderr) == (2, "", EMPTY.format("--manifest") + "\n")
    assert project.snapshot_tree() == before


def test_two_commands_on_one_line_are_a_usage_error_and_neither_runs(project: Project) -> None:
    # Invoke ran each in turn: a failed backup then skipped the prune after it without a word,
    # and with --format json two documents went to one stdout.
    selection_project(project)
    before = project.snapshot_tree()
    manifest = ["--manifest", str(project.manifest)]
    ran = run_invoke("backup", *manifest, "--format", "json", "prune", *manifest, cwd=project.root)
    expected = "error: one command at a time (backup and prune were given); run each on its own\n"
    assert (ran.code, ran.stdout, ran.stderr) == (2, "", expected)
    assert project.snapshot_tree() == before


def _refused(project: Project, flags: list[str]) -> Done:
    selection_project(project)
    before = project.snapshot_tree()
    return Done(project, project.invoke("backup", *flags), before)


for _key, (_flags, _) in REFUSALS.items():
    scenario(f"refuse-{_key}")(lambda project, flags=_flags: _refused(project, flags))


@pytest.mark.parametrize("key", list(REFUSALS))
def test_a_bad_selection_or_format_exits_2_and_writes_nothing(runs: Callable[[str], Done], key: str) -> None:
    done, message = runs(f"refuse-{key}"), REFUSALS[key][1]
    assert (done.ran.code, done.ran.stdout, done.ran.stderr) == (2, "", f"{message}\n")
    assert done.project.snapshot_tree() == done.before
    assert not (done.project.root / "backups").exists()


@pytest.mark.parametrize(
    ("only", "tags", "skip_tags", "chosen"),
    [
        (None, None, None, ["site", "sitemap", "notes", "db"]),
        (["notes"], None, None, ["notes"]),
        (["db,site"], None, None, ["site", "db"]),
        (["db", "site"], None, None, ["site", "db"]),
        (["si*"], None, None, ["site", "sitemap"]),
        (["site?ap"], None, None, ["sitemap"]),
        (["[nd]*"], None, None, ["notes", "db"]),
        ([" notes , db "], None, None, ["notes", "db"]),
        (None, ["web"], None, ["site", "sitemap"]),
        (None, ["web,docs"], None, ["site", "sitemap", "notes"]),
        (None, None, ["docs"], ["site", "db"]),
        (None, ["web"], ["docs"], ["site"]),
        (["si*"], ["docs"], None, ["sitemap"]),
    ],
)
def test_select_at_the_function_level(
    project: Project, only: list[str] | None, tags: list[str] | None, skip_tags: list[str] | None, chosen: list[str]
) -> None:
    targets = manifest.load(selection_project(project).manifest, environ={}).targets
    assert [t.name for t in selection.select(targets, only, tags, skip_tags)] == chosen


@pytest.mark.parametrize(
    ("only", "tags", "skip_tags", "message"),
    [
        (["nosuch"], None, None, f"--only nosuch: {NO_MATCH}"),
        (["site", "x*"], None, None, f"--only x*: {NO_MATCH}"),
        (["Site"], None, None, f"--only Site: {NO_MATCH}"),
        (None, ["nosuch"], None, NOTHING),
        (["db"], ["web"], None, NOTHING),
        (["site"], None, ["web"], NOTHING),
    ],
)
def test_selecting_nothing_is_a_usage_error(
    project: Project, only: list[str] | None, tags: list[str] | None, skip_tags: list[str] | None, message: str
) -> None:
    targets = manifest.load(selection_project(project).manifest, environ={}).targets
    with pytest.raises(UsageError) as caught:
        selection.select(targets, only, tags, skip_tags)
    assert str(caught.value) == message
    assert caught.value.exit_code == 2


# --- check mode and prune --------------------------------------------------------------------------


def retention_project(project: Project) -> Project:
    """site (keep last 2) with three old archives and a person's own zips; docs into a folder not made yet."""
    make_sources(project)
    old_archives(project, [*OLD, "mine.zip", "site-notes.zip"])
    project.write_manifest(
        """
        version: 1
        defaults:
          keep: {last: 2}
        targets:
          - name: site
            path: site
          - name: docs
            path: docs
            destination: fresh
        """
    )
    return project


@scenario("check")
def _check(project: Project) -> Done:
    retention_project(project)
    before = project.snapshot_tree()
    return Done(project, project.invoke("backup", "--check"), before)


def test_check_writes_nothing_and_shows_what_would_be_deleted(runs: Callable[[str], Done]) -> None:
    done = runs("check")
    assert (done.ran.code, done.ran.stderr) == (0, ""), done.ran.output
    assert done.ran.stdout.splitlines() == [
        header("BACKUP", 2, check=True),
        f"changed: [site] => would archive 2 files (13 B); would delete {OLD[0]}, {OLD[1]}",
        "changed: [docs] => would archive 2 files (8 B); would delete nothing",
        "",
        RECAP,
        "site : ok=0  changed=1  failed=0  skipped=0",
        "docs : ok=0  changed=1  failed=0  skipped=0",
    ]
    assert done.project.snapshot_tree() == done.before  # no archive, no deletion, no lock file
    assert not (done.project.root / "fresh").exists()


@scenario("prune-check")
def _prune_check(project: Project) -> Done:
    retention_project(project)
    old_archives(project, ["docs-20200101T000000.000000Z.zip"], destination="fresh")
    before = project.snapshot_tree()
    return Done(project, project.invoke("prune", "--check"), before)


def test_prune_check_shows_what_would_be_deleted_and_deletes_nothing(runs: Callable[[str], Done]) -> None:
    done = runs("prune-check")
    assert (done.ran.code, done.ran.stderr) == (0, ""), done.ran.output
    lines = done.ran.stdout.splitlines()
    assert lines[:2] == [header("PRUNE", 2, check=True), f"changed: [site] => would delete {OLD[0]}"]
    assert recap_rows(lines) == [
        "site : ok=0 changed=1 failed=0 skipped=0",
        "docs : ok=1 changed=0 failed=0 skipped=0",
    ]
    assert done.project.snapshot_tree() == done.before
    # docs has one archive and keeps two: the check must say nothing would be deleted, not "would prune".
    assert lines[2].startswith("ok: [docs] => "), lines[2]
    assert "nothing" in lines[2], lines[2]


@scenario("prune")
def _prune(project: Project) -> Done:
    retention_project(project)
    return Done(project, project.invoke("prune"))


def test_prune_deletes_only_what_keep_no_longer_keeps(runs: Callable[[str], Done]) -> None:
    done = runs("prune")
    assert (done.ran.code, done.ran.stderr) == (0, ""), done.ran.output
    assert done.ran.stdout.splitlines() == [
        header("PRUNE", 2),
        f"changed: [site] => deleted {OLD[0]}",
        "ok: [docs] => 0 archive(s), nothing to prune",
        "",
        RECAP,
        "site : ok=0  changed=1  failed=0  skipped=0",
        "docs : ok=1  changed=0  failed=0  skipped=0",
    ]
    # The two newest stay; a person's own zips, even one named like the target, are never touched.
    assert sorted(p.name for p in (done.project.root / "backups").glob("*.zip")) == sorted(
        [*OLD[1:], "mine.zip", "site-notes.zip"]
    )
    assert not (done.project.root / "fresh").exists()


# --- verbose and the log file ----------------------------------------------------------------------


@scenario("verbose")
def _verbose(project: Project) -> Done:
    two_folders(project)
    log = project.file("logs/backup.log", "an earlier line\n")
    return Done(project, project.invoke("backup", "-v", "--only", "site", "--log-file", str(log)))


def test_verbose_prints_each_file_and_the_log_file_gets_timestamped_plain_lines(runs: Callable[[str], Done]) -> None:
    done = runs("verbose")
    assert (done.ran.code, done.ran.stderr) == (0, ""), done.ran.output
    [site] = done.project.archives(target="site")
    shown = done.ran.stdout.splitlines()
    assert_lines(
        shown,
        [
            re.escape(header("BACKUP", 1)),
            r"  \[site\] a\.txt",
            r"  \[site\] sub/",
            r"  \[site\] sub/b\.txt",
            changed_line("site", site, files=2, bytes_in=13),
            "",
            re.escape(RECAP),
            r"site : ok=0  changed=1  failed=0  skipped=0",
        ],
    )
    logged = (done.project.root / "logs" / "backup.log").read_text(encoding="utf-8").splitlines()
    assert logged[0] == "an earlier line"  # appended, not overwritten
    stamped = [re.fullmatch(rf"({STAMP}) (.*)", line) for line in logged[1:]]
    assert all(stamped), logged
    assert [m.group(2) for m in stamped if m] == shown  # the same lines, each behind a time stamp
    assert ANSI not in "\n".join(logged)


def test_without_verbose_the_log_file_holds_the_output_and_no_line_per_file(project: Project) -> None:
    # Each file got a line in the log without --verbose: a million lines a night at a million files.
    two_folders(project)
    log = project.root / "backup.log"
    ran = project.invoke("backup", "--only", "site", "--log-file", str(log))
    assert ran.code == 0, ran.output
    logged = [re.fullmatch(rf"({STAMP}) (.*)", line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert all(logged) and [m.group(2) for m in logged if m] == ran.stdout.splitlines()
    assert "a.txt" not in log.read_text(encoding="utf-8")


@scenario("bad-log-file")
def _bad_log_file(project: Project) -> Done:
    two_folders(project)
    before = project.snapshot_tree()
    log = project.root / "no-such-folder" / "backup.log"
    return Done(project, project.invoke("backup", "--log-file", str(log)), before)


def test_an_unusable_log_file_is_a_usage_error_not_a_traceback(runs: Callable[[str], Done]) -> None:
    done = runs("bad-log-file")
    assert done.project.snapshot_tree() == done.before
    assert "Traceback" not in done.ran.output
    assert done.ran.code == 2
    assert str(done.project.root / "no-such-folder" / "backup.log") in done.ran.stderr


# --- the task list, help, make, and the default manifest -------------------------------------------


@scenario("task-list")
def _task_list(project: Project) -> Done:
    return Done(project, run_invoke("--list"))


def test_invoke_list_shows_every_task(runs: Callable[[str], Done]) -> None:
    ran = runs("task-list").ran
    assert (ran.code, ran.stderr) == (0, "")
    assert set(re.findall(r"^  ([a-z-]+) ", ran.stdout, re.MULTILINE)) == {
        "backup",
        "prune",
        "push",
        "verify",
        "restore",
        "validate",
        "list",
        "status",
    }


@scenario("help")
def _help(project: Project) -> Done:
    return Done(project, run_invoke("backup", "--help"))


def test_backup_help_shows_the_manifest_flag(runs: Callable[[str], Done]) -> None:
    ran = runs("help").ran
    assert (ran.code, ran.stderr) == (0, "")
    assert re.search(r"^\s+-m STRING, --manifest=STRING\s+Manifest to run", ran.stdout, re.MULTILINE)
    for flag in ("--check", "--format=STRING", "--log-file=STRING", "-o, --only", "-t, --tags", "--skip-tags",
                 "-v, --verbose", "-j STRING, --jobs=STRING"):  # fmt: skip
        assert flag in ran.stdout, flag


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_restore_help_shows_its_options_though_it_awaits_a_target(flag: str) -> None:
    # Invoke gave the flag to the awaited TARGET: "error: restore needs --to DIR", exit 2.
    ran = run_invoke("restore", flag)
    assert (ran.code, ran.stderr) == (0, ""), ran.output
    assert ran.stdout.startswith("Usage: invoke [--core-opts] restore [--options]"), ran.stdout
    for option in ("--archive=STRING", "--member=STRING", "--to=STRING", "--identity=STRING"):
        assert option in ran.stdout, option


@scenario("make")
def _make(project: Project) -> Done:
    if not have("make"):
        return Done(project, Ran(-1, "", "make is not installed"))
    two_folders(project)
    arguments = f"--manifest {shlex.quote(str(project.manifest))} --only site"
    # -o: never reinstall the virtual environment from inside a test.
    completed = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", "backup", f"ARGS={arguments}"],
        env={**os.environ, "NO_COLOR": "1"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return Done(project, Ran(completed.returncode, completed.stdout, completed.stderr))


@pytest.mark.skipif(not have("make"), reason="make is not installed")
def test_make_backup_passes_args_through(runs: Callable[[str], Done]) -> None:
    done = runs("make")
    arguments = f"--manifest {shlex.quote(str(done.project.manifest))} --only site"
    assert done.ran.code == 0, done.ran.output
    assert f"invoke backup {arguments}\n" in done.ran.stdout  # make echoes the one command it ran
    assert "changed: [site] => " in done.ran.stdout
    assert "[docs]" not in done.ran.stdout
    assert len(done.project.archives(target="site")) == 1
    assert done.project.archives(target="docs") == []


@scenario("default-manifest")
def _default_manifest(project: Project) -> Done:
    # A broken backups.yml in the working directory must not be the one read.
    project.manifest.write_text("version: [\n", encoding="utf-8")
    return Done(project, run_invoke("validate", cwd=project.root))


def test_the_default_manifest_is_the_one_beside_tasks_py(runs: Callable[[str], Done]) -> None:
    done = runs("default-manifest")
    count = len(manifest.load(REPO / "backups.yml").targets)
    # Run from another folder: the line names the manifest in full, so it says which was used.
    expected = f"{REPO / 'backups.yml'}: valid, {count} targets\n"
    assert (done.ran.code, done.ran.stdout, done.ran.stderr) == (0, expected, "")
    assert sorted(p.name for p in done.project.root.iterdir()) == ["backups.yml"]


# --- result lines and the recap at the function level -----------------------------------------------


def test_the_result_line_says_file_for_one_file() -> None:
    result = TargetResult("notes", CHANGED, Path("/b/notes-20240101T000000.000000Z.zip"), files=1, bytes_in=5)
    result.bytes_out, result.seconds = 120, 0.5
    assert report.describe(result, "backup", check=False) == (
        "notes-20240101T000000.000000Z.zip (1 file, 5 B -> 120 B, 0.50s, 0 rotated)"
    )


def test_recap_and_exit_code_come_from_the_results() -> None:
    outcome = RunResult("backup", Path("backups.yml"), order=["a", "b", "c", "d"])
    outcome.results = [TargetResult("a", CHANGED), TargetResult("b", OK), TargetResult("c", SKIPPED)]
    assert outcome.exit_code == 0
    outcome.results.append(TargetResult("d", FAILED, error="boom"))
    assert outcome.exit_code == 1
    assert outcome.recap() == {
        "a": {"ok": 0, "changed": 1, "failed": 0, "skipped": 0},
        "b": {"ok": 1, "changed": 0, "failed": 0, "skipped": 0},
        "c": {"ok": 0, "changed": 0, "failed": 0, "skipped": 1},
        "d": {"ok": 0, "changed": 0, "failed": 1, "skipped": 0},
    }


# --- start-up: each command imports what it uses ---------------------------------------------

_NEVER_FOR_LOCAL_WORK = {"boto3", "botocore", "pyrage", "prometheus_client", "rich"}
_ARCHIVE_WRITING = {"backup_core.zip.writer", "backup_core.zip.verify", "isal"}


def _imported(ran: Ran) -> set[str]:
    """Modules a successful command imported, from Python's own import log (PYTHONPROFILEIMPORTTIME)."""
    assert ran.code == 0, ran.output
    return _imported_any(ran)


def _imported_any(ran: Ran) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in ran.stderr.splitlines() if line.startswith("import time:")}


def test_each_command_imports_only_what_it_uses(project: Project) -> None:
    # Start-up is downtime before maintenance: validate and list load no runner, writer or
    # store; an unchanged re-run (a metadata walk) loads no zip writer, compressor or --jobs
    # children; nothing
    # local loads the S3 client, encryption, metrics or progress bars.
    project.file("site/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: site, skip_unchanged: true}
        """
    )
    log = {"PYTHONPROFILEIMPORTTIME": "1"}
    for command in ("validate", "list"):
        imported = _imported(project.invoke(command, env=log))
        assert "backup_core.manifest.loader" in imported  # the log is read right
        assert not imported & (_NEVER_FOR_LOCAL_WORK | _ARCHIVE_WRITING | {"backup_core.runner", "filelock"})
    # Dated later, so the files just written are not "racily" recent and the walk decides.
    first = _imported(project.invoke("backup", env={**log, "BACKUP_NOW": "2099-01-01T00:00:00Z"}))
    assert first >= _ARCHIVE_WRITING and not first & _NEVER_FOR_LOCAL_WORK
    again = project.invoke("backup", "--format", "json", env={**log, "BACKUP_NOW": "2099-01-02T00:00:00Z"})
    assert json.loads(again.stdout)["targets"][0]["compared"] == "metadata"
    unchanged = _imported(again)
    assert "backup_core.runner" in unchanged
    # One target, one job: no child processes, so neither their module nor pickle.
    assert not unchanged & (_NEVER_FOR_LOCAL_WORK | _ARCHIVE_WRITING | {"backup_core.fanout", "pickle"})


def test_a_manifest_that_passed_the_schema_is_checked_again_only_when_it_changes(
    project: Project, tmp_path: Path
) -> None:
    # Importing the validator is an eighth of an unchanged re-run: a text that passed is
    # recorded, and only a different text (or `validate`, asked to check) loads it again.
    cache = tmp_path / "cache"
    log = {"PYTHONPROFILEIMPORTTIME": "1", "XDG_CACHE_HOME": str(cache)}
    project.file("site/a.txt")
    good = """
        version: 1
        targets:
          - {name: site, path: site}
        """
    project.write_manifest(good)
    first = project.invoke("list", env=log)
    assert "jsonschema" in _imported(first)
    again = project.invoke("list", env=log)
    assert "jsonschema" not in _imported(again) and again.stdout == first.stdout
    assert "jsonschema" in _imported(project.invoke("validate", env=log))

    # A changed text is judged afresh, and a failure is never recorded: it is reported every time.
    project.write_manifest(good.replace("path: site}", "path: site, keep: {last: 0}}"))
    for _ in range(2):
        bad = project.invoke("list", env=log)
        assert bad.code == 2 and "targets[0].keep.last: 0 is less than the minimum of 1" in bad.output
        assert "jsonschema" in _imported_any(bad) and "Traceback" not in bad.output

    # A record that does not match (damaged, or written by another version) is not trusted.
    project.write_manifest(good)
    project.invoke("list", env=log)
    (record,) = (cache / "backup-core" / "schema-passes").iterdir()
    record.write_text("0" * 40 + "\n", encoding="ascii")
    assert "jsonschema" in _imported(project.invoke("list", env=log))
    assert "jsonschema" not in _imported(project.invoke("list", env=log))


def test_a_home_that_does_not_exist_is_not_made_for_the_cache(project: Project, tmp_path: Path) -> None:
    # Cron for an account whose HOME is /nonexistent: the run created it, .cache and all.
    project.file("site/a.txt")
    project.write_manifest("version: 1\ntargets: [{name: site, path: site}]\n")
    home = tmp_path / "nonexistent"
    env = {"HOME": str(home), "XDG_CACHE_HOME": ""}
    assert project.invoke("backup", env=env).code == 0
    assert project.invoke("validate", env=env).code == 0
    assert not home.exists()


def test_a_preview_records_no_pass_and_an_unusable_cache_only_costs_the_check(project: Project, tmp_path: Path) -> None:
    project.file("site/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: site, path: site}
        """
    )
    cache = tmp_path / "cache"
    assert project.invoke("backup", "--check", env={"XDG_CACHE_HOME": str(cache)}).code == 0
    assert not cache.exists()  # a preview writes nothing, this record included

    # A cache "folder" that is a file: every run checks the manifest, and says nothing of it.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("", encoding="utf-8")
    log = {"PYTHONPROFILEIMPORTTIME": "1", "XDG_CACHE_HOME": str(blocked)}
    for _ in range(2):
        ran = project.invoke("backup", env=log)
        assert "jsonschema" in _imported(ran)
        assert "cache" not in ran.stdout and "Traceback" not in ran.output
    assert len(project.archives()) >= 1
