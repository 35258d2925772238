"""Which targets a run touches: --only names or patterns, --tags and --skip-tags."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from backup_core.errors import UsageError, command
from backup_core.manifest import Target


def split_words(values: Iterable[str] | None) -> list[str]:
    """Repeated flags and comma-separated lists, flattened: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    return [word.strip() for value in values or () for word in value.split(",") if word.strip()]


def select(
    targets: Sequence[Target],
    only: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    skip_tags: Iterable[str] | None = None,
) -> list[Target]:
    """The targets that match, in manifest order; selecting nothing is a usage error."""
    for flag, given in (("--only", only), ("--tags", tags), ("--skip-tags", skip_tags)):
        # `--only "$T"` with T empty must not quietly mean every target; nor, beside another
        # (`--only web --only "$DB"`), quietly leave out the one the script meant.
        if any(not split_words([value]) for value in given or ()):
            raise UsageError(f"{flag} was given without a name")
    names, wanted, unwanted = split_words(only), set(split_words(tags)), set(split_words(skip_tags))
    known = [t.name for t in targets]
    for pattern in names:
        if not any(fnmatchcase(name, pattern) for name in known):
            raise UsageError(f"--only {pattern}: no target matches; targets are: {', '.join(known)}")
    chosen = [
        t
        for t in targets
        if (not names or any(fnmatchcase(t.name, p) for p in names))
        and (not wanted or wanted & set(t.tags))
        and not unwanted & set(t.tags)
    ]
    if not chosen:
        raise UsageError(f"the selection matches no target; see `{command('list')}` for names and tags")
    return chosen
