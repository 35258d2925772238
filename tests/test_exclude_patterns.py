"""`exclude` and `critical` patterns match as fnmatch matches each pattern on its own.

The walk tries every name against one regular expression per kind of pattern (those with a
slash match the path from the target's root, the others the name alone), instead of one
fnmatch call a pattern.  These tests hold the two to the same answers, for patterns and
names drawn at random from the characters that mean something to either, and through a
real backup of a tree with many patterns.
"""

from __future__ import annotations

import zipfile
from fnmatch import fnmatchcase

from conftest import Project
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_core.sources import walk

_PATTERN = st.text(alphabet="ab.*?[]!-/^\\(|)$", min_size=1, max_size=8)
_PART = st.text(alphabet="ab.*?[]!-^\\(|)$\n", min_size=1, max_size=6)


def _one_by_one(relative: str, patterns: tuple[str, ...]) -> bool:
    """The rule as the README states it, one fnmatch call a pattern."""
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatchcase(relative if "/" in p else name, p.rstrip("/")) for p in patterns)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PATTERN, min_size=1, max_size=6).map(tuple), st.lists(_PART, min_size=1, max_size=3))
def test_many_patterns_match_as_each_would_alone(patterns: tuple[str, ...], parts: list[str]) -> None:
    relative = "/".join(parts)
    assert walk.matches(relative, patterns) == _one_by_one(relative, patterns)


def test_a_backup_with_many_patterns_leaves_out_exactly_what_each_names(project: Project) -> None:
    names = ["keep.txt", "a.tmp", "sub/b.tmp", "sub/keep.log", "cache/c.txt", "logs/d.gz", "logs/sub/e.gz", "x[1].dat"]
    for name in names:
        project.file(f"src/{name}", name.encode())
    patterns = ["*.tmp", "cache", "logs/*.gz", "x[[]1].dat", *(f"never-{n}-*" for n in range(50))]
    project.write_manifest(
        f"""
        version: 1
        targets:
          - {{name: src, path: src, exclude: {patterns}}}
        """
    )
    ran = project.invoke("backup")
    assert ran.code == 0, ran.output
    (archive,) = project.archives(target="src")
    with zipfile.ZipFile(archive) as zf:
        files = sorted(n for n in zf.namelist() if not n.endswith("/"))
    # An excluded folder takes what it holds; "logs/*.gz" matches the path from the root, and its
    # * does not stop at a slash, as in fnmatch.
    assert files == ["keep.txt", "sub/keep.log"], files


def test_an_anchored_pattern_that_would_match_nothing_is_a_located_error(project: Project) -> None:
    # `/a.txt` and `./a.txt` were valid and excluded nothing: `--check` said "would archive 2 files".
    project.file("data/a.txt")
    project.write_manifest(
        """
        version: 1
        targets:
          - {name: t, path: data, exclude: ["/a.txt", "./b", "../c", ".git", "*.tmp"], critical: ["/x"]}
        """
    )

    ran = project.invoke("validate")

    assert ran.code == 2, ran.output
    nothing = "would match nothing: patterns match paths relative to the target's folder, with no leading /, ./ or ../"
    assert ran.stderr.splitlines() == [
        f"backups.yml:3:37: targets[0].exclude[0]: '/a.txt' {nothing}; write 'a.txt'",
        f"backups.yml:3:47: targets[0].exclude[1]: './b' {nothing}; write 'b'",
        "backups.yml:3:54: targets[0].exclude[2]: '../c' is outside the target's folder, which no pattern reaches",
        f"backups.yml:3:91: targets[0].critical[0]: '/x' {nothing}; write 'x'",
        "4 problems in the manifest; nothing was done",
    ]


def test_a_first_run_whose_exclude_leaves_no_file_says_so(project: Project) -> None:
    # exclude: ["*"] made an archive of nothing, exit 0, without a word (a later run refuses it).
    project.file("data/a.txt")
    project.file("data/sub/b.txt")
    project.write_manifest("version: 1\ntargets: [{name: t, path: data, exclude: ['*.txt']}]\n")

    ran = project.invoke("backup", "--format", "json")

    assert ran.code == 0, ran.output
    (target,) = ran.json()["targets"]
    assert target["warnings"] == [
        f"{project.root / 'data'} holds no file to archive after exclude: the archive holds folders at most; check "
        "the exclude patterns"
    ]
