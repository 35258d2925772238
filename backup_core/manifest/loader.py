"""backups.yml → validated, resolved targets.

The JSON Schema in schema/backups.schema.json is the one source of truth: it
validates the manifest and supplies every default; this module adds only what
a schema cannot say (duplicate names, variables, paths that swallow themselves).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup_core.errors import ManifestError, Problem
from backup_core.manifest import passes, redact, variables, yaml_source
from backup_core.manifest import remotes as remotes_module
from backup_core.manifest.remotes import Remote
from backup_core.manifest.yaml_source import Document, KeyPath

if TYPE_CHECKING:
    import jsonschema


def _schema_path() -> Path:
    """The schema inside an installed package, else the checkout's schema/ folder (editable installs too)."""
    # pyproject.toml ships the repository's schema/ folder as backup_core/schema/ in wheels and sdists.
    package = Path(__file__).resolve().parents[1]
    packaged = package / "schema" / "backups.schema.json"
    return packaged if packaged.is_file() else package.parent / "schema" / "backups.schema.json"


SCHEMA_PATH = _schema_path()
# Settings a target inherits from `defaults:`; the schema lists them under defaults.properties.
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few KiB; anything this big is the wrong file


@cache
def _schema_bytes() -> bytes:
    return SCHEMA_PATH.read_bytes()  # read once a run: the schema's text is part of a pass's key too


@cache
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema."""
    return json.loads(_schema_bytes())  # type: ignore[no-any-return]


def schema_default(setting: str) -> Any:
    """The schema's default for a target setting (the single place defaults are written)."""
    definition = schema()["definitions"][setting]
    return json.loads(json.dumps(definition.get("default")))  # a fresh copy every time


@dataclass(frozen=True)
class Hook:
    """One command of a hook list."""

    argv: tuple[str, ...] | None
    command: str | None  # a command line for the platform shell, when asked for
    timeout: float
    # Windows: a string `run` as the command line itself, without a shell.  There each program
    # splits its own command line (quotes, backslashes, `--to="a b"`), so nothing here may.
    line: str | None = None

    def describe(self) -> str:
        """The command as messages and `list` show it: credentials written into it are masked."""
        text = self.command if self.command is not None else self.line
        return redact.text(text) if text is not None else redact.argv(self.argv or ())


@dataclass(frozen=True)
class Hooks:
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Target:
    """One resolved target: every setting filled in, every path absolute."""

    name: str
    path: Path
    type: str
    destination: Path
    keep: dict[str, Any]
    exclude: tuple[str, ...]
    tags: tuple[str, ...]
    compression_level: int
    inflate_check: bool
    sqlite_check: str
    busy_timeout: float
    skip_unchanged: bool
    lock_timeout: float
    hooks: Hooks
    offsite: tuple[Remote, ...] = ()
    max_age: str | None = None  # how old the newest archive may be before `status` fails the target
    line: int = 0
    changed_files: str = "auto"  # a file that keeps changing while read: auto, fail or warn
    critical: tuple[str, ...] = ()  # files that fail the target if they change while read
    # Whether a run that finds the source unchanged records so beside the archives (see
    # archives.confirm): not when the destination lies in another target's source, whose own
    # unchanged check the record, rewritten every run, would defeat.
    records_unchanged: bool = True

    def settings(self) -> dict[str, Any]:
        """The resolved settings as plain data (for `invoke list` and JSON output)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "type": self.type,
            "destination": str(self.destination),
            "keep": self.keep,
            "exclude": list(self.exclude),
            "tags": list(self.tags),
            "compression": {"level": self.compression_level, "inflate_check": self.inflate_check},
            "sqlite": {"check": self.sqlite_check, "busy_timeout": self.busy_timeout},
            "skip_unchanged": self.skip_unchanged,
            "lock_timeout": self.lock_timeout,
            "changed_files": self.changed_files,
            "critical": list(self.critical),
            "hooks": {
                when: [h.describe() for h in getattr(self.hooks, when)] for when in ("before", "after", "on_failure")
            },
            "offsite": {remote.name: remote.settings() for remote in self.offsite},
            "max_age": self.max_age,
        }


@dataclass(frozen=True)
class Manifest:
    file: Path
    targets: tuple[Target, ...]
    jobs: int
    hooks: Hooks = field(default_factory=Hooks)
    remotes: dict[str, Remote] = field(default_factory=dict)
    metrics_file: Path | None = None  # Prometheus text file rewritten after every run


def load(file: Path, environ: dict[str, str] | None = None, trust_passes: bool = True, record: bool = True) -> Manifest:
    """Read, validate and resolve a manifest; raise ManifestError listing every problem.

    A text that passed the schema before is not checked again (see passes) unless
    `trust_passes` is false; a pass is recorded for the next run when `record` is true."""
    file = Path(file).absolute()
    text = _read(file)
    document, problems = yaml_source.load(file, text)
    if document is None:
        raise ManifestError(problems)
    verdict = passes.key(text.encode("utf-8"), _schema_bytes())
    if trust_passes and passes.passed(file, verdict):
        schema_problems = []
    else:
        schema_problems = _schema_problems(document)
        if not schema_problems and record:
            passes.remember(file, verdict)
    # A value YAML already flagged (say 0755) needs no second sentence from the schema, unless
    # the sentence is about its key: `mode: 0755` under a target is an unknown key as well.
    flagged = {p.where for p in problems}
    problems += [p for p in schema_problems if p.where not in flagged or p.message.startswith(_UNKNOWN_KEY)]
    problems += _nul_problems(document, document.data, ())
    if document.data is None:
        raise ManifestError([Problem(file, 1, 1, "", "the manifest is empty; it needs `version: 1` and `targets:`")])
    manifest = None
    if _resolvable(document.data):
        # Keep looking (duplicate names, variables, paths) in every target the schema accepted,
        # so one run of `invoke validate` lists every problem.
        broken = {
            ".".join(p.where.split(".")[:2]) if p.where.startswith("defaults.") else p.where.split(".")[0]
            for p in problems
        } | {p.where for p in problems if p.where.startswith("remotes.")}  # whole: see remotes.resolve
        manifest, more = _resolve(document, variables.with_builtins(os.environ if environ is None else environ), broken)
        problems += more
    if problems or manifest is None:
        raise ManifestError(problems)
    return manifest


def _read(file: Path) -> str:
    """The manifest's text; a FIFO, a device or a huge file is refused before it is read."""
    try:
        # Opened without blocking: opening a FIFO with no writer would wait for ever.
        descriptor = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ManifestError([Problem(file, 0, 0, "", "manifest not found; pass --manifest PATH")]) from None
    except OSError as exc:
        raise ManifestError([Problem(file, 0, 0, "", f"cannot read the manifest: {_reason(exc)}")]) from None
    # Judged before it is wrapped: Python refuses to open a folder as a file object.
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ManifestError([Problem(file, 0, 0, "", "the manifest is not a regular file (a FIFO, device or folder?)")])
    with os.fdopen(descriptor, "rb") as stream:
        try:
            # The size is read, not trusted: a file may grow while it is read.
            raw = stream.read(MAX_MANIFEST_BYTES + 1)
            if len(raw) > MAX_MANIFEST_BYTES:
                limit = f"{MAX_MANIFEST_BYTES // 1024} KiB"
                raise ManifestError(
                    [Problem(file, 0, 0, "", f"the manifest is larger than {limit}; is it the right file?")]
                )
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = raw[: exc.start].decode("utf-8", "replace")  # in characters, as editors count
            line, column = yaml_source.position(before, len(before))
            raise ManifestError(
                [
                    Problem(
                        file, line, column, "", f"byte 0x{raw[exc.start]:02x} is not UTF-8; save the manifest as UTF-8"
                    )
                ]
            ) from None
        except OSError as exc:
            raise ManifestError([Problem(file, 0, 0, "", f"cannot read the manifest: {_reason(exc)}")]) from None


def _resolvable(data: Any) -> bool:
    # Targets can be resolved when the structure they hang from is sound.
    return (
        isinstance(data, dict) and isinstance(data.get("targets"), list) and isinstance(data.get("defaults", {}), dict)
    )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


# --- validation ---------------------------------------------------------------------------------


@cache
def _validator() -> Any:
    # Imported here, not at the top: a run whose manifest passed before never needs it (passes).
    import jsonschema

    # JSON Schema counts 1.0 as an integer; YAML's `1.0` is a float the operator typed on purpose
    # or by mistake (`version: 1.0`, `jobs: 2.5` rounded), so an integer must be written as one.
    strict_types = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    extended = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=strict_types)  # type: ignore[no-untyped-call]
    return extended(schema())


def _nul_problems(document: Document, value: Any, where: KeyPath) -> list[Problem]:
    """Every string holding a NUL byte (YAML's "\\0"): no path, name or command can, and the
    system calls that would meet it later raise instead of saying where it is."""
    if isinstance(value, str):
        return (
            [document.problem(where, "contains a NUL byte (\\0), which no path or command can hold")]
            if "\0" in value
            else []
        )
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _nul_problems(document, item, (*where, key))]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _nul_problems(document, item, (*where, index))]
    return []


def _schema_problems(document: Document) -> list[Problem]:
    validator = _validator()
    errors = list(validator.iter_errors(document.data))
    # A value of the wrong type fails its other rules too (version: "1" is no integer, and not
    # 1 either): one line, the type's, says it.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems = []
    for error in errors:
        if error.validator == "type" or tuple(error.absolute_path) not in mistyped:
            problems.extend(_explain(document, error))
    return problems


_SCHEMA_KINDS = {
    "object": "a mapping (key: value)",
    "array": "a list",
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
}
# What a target's or a remote's name may hold (the schema's pattern for either).
_SAFE_NAME = "use letters, digits, '-' and '_' (at most 64, starting with a letter or digit)"
# What a key's text must look like, for the messages of its type and pattern checks.
_DURATION = "a duration like 36h, 14d, 8w, 6m or 1y"
_FORMS = {
    "within": _DURATION,
    "max_age": _DURATION,
    "max_bandwidth": "a rate in bytes a second like 512K, 10M or 1G (a whole number, then K, M or G, 1024-based)",
}


def _yaml_kind(value: Any) -> str:
    """A YAML value as its author wrote it: `true`, `1.5`, a list, a mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)


# Names Windows keeps for devices, in any case (the schema's name pattern refuses them too).
_WINDOWS_DEVICE = re.compile(r"(?i:con|prn|aux|nul|com[1-9]|lpt[1-9])")


def _masked(value: Any) -> Any:
    """A value written under `hooks` as a message may quote it: credentials masked as in a
    hook's description, wherever they sit in it."""
    if isinstance(value, str):
        return redact.text(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return redact.arguments(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value


_UNKNOWN_KEY = "unknown key"


def _explain(document: Document, error: jsonschema.ValidationError) -> list[Problem]:
    """Turn one schema error into located sentences an operator can act on."""
    path: KeyPath = tuple(error.absolute_path)
    if "hooks" in path:
        # A hook is a command, and a command may hold a password: every sentence below that
        # quotes the value quotes it masked (error.message quotes it as repr).
        shown = _masked(error.instance)
        error.message = error.message.replace(repr(error.instance), repr(shown))
        error.instance = shown
    # A private key pasted where a public key or a file name goes (or anywhere else) is never
    # quoted back: the message would carry it to the terminal, the log and the JSON.
    instance: Any = error.instance
    keys_only = error.validator == "additionalProperties" and isinstance(instance, dict)
    if redact.holds_private_key_anywhere(list(instance) if keys_only else instance):
        return [document.problem(path, redact.PRIVATE_KEY)]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}) if isinstance(error.schema, dict) else {})
        problems = []
        for key in error.instance:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(allowed)}"
            shown = redact.text(key) if "hooks" in path else key  # a command written as a mapping
            problems.append(document.problem((*path, key), f"{_UNKNOWN_KEY} '{shown}'; {suggestion}"))
        return problems
    if error.validator in ("anyOf", "oneOf") and error.context:
        # Explain the branch meant for this kind of value (an object's problem, not "is not
        # an array"); context errors know their absolute place through their parent.
        meant = [e for e in error.context if not (e.validator == "type" and not e.path)]
        from jsonschema.exceptions import best_match

        chosen = max(meant, key=lambda e: len(e.path)) if meant else best_match(error.context)
        return _explain(document, chosen)
    if error.validator == "type" and not isinstance(error.instance, str):
        kinds: Any = error.validator_value
        expected = " or ".join(_SCHEMA_KINDS.get(k, k) for k in ([kinds] if isinstance(kinds, str) else kinds))
        like = _FORMS.get(str(path[-1])) if path and expected == "text" else None
        expected = f"text: {like}" if like else expected  # `max_age: 30`: a number, but of what?
        return [document.problem(path, f"{_yaml_kind(error.instance)} found, expected {expected}")]
    if error.validator == "exclusiveMinimum" and isinstance(error.instance, (int, float)):
        # jsonschema's own words, "-1 is less than or equal to the minimum of 0", call the bound a minimum.
        return [document.problem(path, f"{error.instance} is too small: it must be more than {error.validator_value}")]
    if error.validator == "pattern" and path and path[-1] in _FORMS:
        return [document.problem(path, f"'{error.instance}' is not {_FORMS[path[-1]]}")]
    if error.validator == "pattern" and len(path) > 1 and path[-2] == "tags":
        return [document.problem(path, f"'{error.instance}' is not a tag: use letters, digits, '.', '-' and '_'")]
    if error.validator == "pattern" and path == ("remotes",):
        return [
            document.problem(
                path,
                f"'{error.instance}' is not a safe remote name: {_SAFE_NAME}",
            )
        ]
    if error.validator == "type" and isinstance(error.instance, str):
        wanted = error.validator_value
        if wanted == "boolean":
            return [document.problem(path, f"'{error.instance}' is not true or false; write true or false")]
        if len(path) >= 3 and path[-3] == "hooks" and isinstance(path[-1], int):
            # `before: ["systemctl", "stop", "app"]` is a list of three hooks, not one command.
            when = path[-2]
            return [
                document.problem(
                    path,
                    f"'{error.instance}' is a string, not a hook: each hook is a list of arguments or "
                    f'{{run: ...}}, so one command is {when}: [["systemctl", "stop", "app"]] or '
                    f'{when}: [{{run: "systemctl stop app"}}]',
                )
            ]
        return [document.problem(path, f"'{error.instance}' is a string, expected {wanted}")]
    if error.validator == "pattern" and path and path[-1] == "name":
        if isinstance(error.instance, str) and _WINDOWS_DEVICE.fullmatch(error.instance):
            return [
                document.problem(
                    path,
                    f"'{error.instance}' is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9): no "
                    "file or folder can be named so there (a folder remote makes one per target); choose another",
                )
            ]
        return [
            document.problem(
                path,
                f"'{error.instance}' is not a safe name: {_SAFE_NAME}",
            )
        ]
    if error.validator == "pattern" and path == ("metrics_file",):
        return [
            document.problem(
                path, f"'{error.instance}' does not end in .prom; node_exporter's textfile collector reads only *.prom"
            )
        ]
    if error.validator == "pattern" and path and path[-1] == "endpoint":
        # Never echoed: a URL with a user and password (or a token in its query) holds a secret.
        return [
            document.problem(
                path,
                "is not a URL like https://s3.example.net (http or https, then the host and a path; no user, "
                "password, query or fragment in it: credentials come from the environment or a profile, never "
                "the manifest)",
            )
        ]
    if error.validator == "pattern" and len(path) > 1 and path[-2] in ("exclude", "critical"):
        bare = re.sub(r"^(?:\.{0,2}/)+", "", str(error.instance))
        if str(error.instance).startswith("../"):
            return [
                document.problem(path, f"'{error.instance}' is outside the target's folder, which no pattern reaches")
            ]
        return [
            document.problem(
                path,
                f"'{error.instance}' would match nothing: patterns match paths relative to the target's folder, "
                f"with no leading /, ./ or ../; write '{bare}'" + ("" if bare else " without them"),
            )
        ]
    if error.validator == "pattern" and path and path[-1] == "bucket":
        return [
            document.problem(
                path,
                f"'{error.instance}' is not a bucket name: 3 to 63 lowercase letters, digits, dots and dashes, "
                "beginning and ending with a letter or digit",
            )
        ]
    if error.validator == "not" and path == ("remotes",):
        return [
            document.problem(path, f"'{error.instance}' names this machine's own archives; name the remote otherwise")
        ]
    if error.validator == "minProperties" and path and path[-1] == "keep":
        return [document.problem(path, "keep needs at least one rule (last, hourly, daily, ...), or it keeps nothing")]
    return [document.problem(path, error.message)]


# --- resolution ---------------------------------------------------------------------------------


def _resolve(document: Document, environ: Any, broken: set[str]) -> tuple[Manifest, list[Problem]]:
    data = document.data
    problems: list[Problem] = []
    remotes = remotes_module.resolve(document, environ, problems, broken)
    targets = []
    indices: list[int] = []  # each resolved target's place in targets:, for messages
    seen: dict[str, int] = {}
    # A default with a problem of its own (already reported) is left out rather than inherited.
    defaults = {key: value for key, value in data.get("defaults", {}).items() if f"defaults.{key}" not in broken}
    for index, raw in enumerate(data["targets"]):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name.lower() in seen:
            # Case-blind: two names that differ only in case share archive names on Windows.
            first = seen[name.lower()]
            problems.append(
                document.problem(("targets", index, "name"), f"duplicate target name '{name}' (also targets[{first}])")
            )
        if isinstance(name, str):
            seen.setdefault(name.lower(), index)
        if f"targets[{index}]" not in broken:
            targets.append(_resolve_target(document, index, raw, defaults, environ, remotes, problems))
            indices.append(index)
    if not problems:
        problems += _swallowing(document, targets, indices)
    jobs = data.get("jobs", schema()["properties"]["jobs"]["default"])
    # Run-level hooks with a problem of their own (already reported) are not read further.
    run_hooks = Hooks() if "hooks" in broken else _hooks(data.get("hooks") or {}, document, ("hooks",), problems)
    metrics_file = None
    if isinstance(data.get("metrics_file"), str) and "metrics_file" not in broken:
        base = document.file.parent
        metrics_file = _expand_path(document, data["metrics_file"], ("metrics_file",), base, environ, problems)
    return Manifest(document.file, tuple(_recording(targets)), jobs, run_hooks, remotes, metrics_file), problems


def _landings(target: Target) -> list[tuple[Path, str]]:
    """Where `target`'s archives land on this machine: its destination and its folder remotes'
    folders for it, each with the words that name it."""
    found = [(target.destination, "its destination")]
    for remote in target.offsite:
        if remote.type == "folder" and remote.path is not None:
            found.append((Path(remote.path, f"{remote.prefix}{target.name}"), f"remote {remote.name}'s copies of it"))
    return found


def _swallowing(document: Document, targets: list[Target], indices: list[int]) -> list[Problem]:
    """Targets whose archives end up, through each other's sources, inside their own: each run
    archives the archives before it, and they grow every run (2.5 times a run, measured, for two
    targets holding each other's destinations) until the disk is full.  A folder remote inside
    its target's source does it alone.  A source that holds another target's archives one way
    only is fine (they are bounded by that target's keep).  Paths as written, not resolved:
    one look up the parents of each landing folder; an exclude that covers it settles it."""
    from backup_core.sources.walk import matches  # the walk's own matching, loaded only here

    def norm(path: Path) -> str:
        return os.path.normcase(os.path.normpath(path))

    sources: dict[str, list[int]] = {}
    for at, target in enumerate(targets):
        sources.setdefault(norm(target.path), []).append(at)
    # holds[a]: (b, where, what) for each target b whose archives land inside a's source
    holds: dict[int, list[tuple[int, Path, str]]] = {}
    for b, target in enumerate(targets):
        # What lands there: archives, and beside a remote's copies their checksums.
        sample = f"{target.name}-20000101T000000.000000Z.zip"
        for landing, what in _landings(target):
            names = [sample] if what == "its destination" else [sample, f"{sample}.sha256"]
            written = Path(os.path.normpath(landing))
            place = Path(norm(landing))
            for depth, folder in enumerate((place, *place.parents)):
                for a in sources.get(str(folder), ()):
                    if a == b and what == "its destination":
                        continue  # said already, where the destination is resolved
                    # As written, not case-folded: exclude matches case as the walk does.
                    parts = list(written.parts[len(written.parts) - depth :]) if depth else []
                    covered = any(
                        matches("/".join(parts[: n + 1]), targets[a].exclude) for n in range(len(parts))
                    ) or all(matches("/".join([*parts, name]), targets[a].exclude) for name in names)
                    if not covered:
                        holds.setdefault(a, []).append((b, landing, what))
    problems: list[Problem] = []
    reported: set[int] = set()
    for a in sorted(holds):
        for b, landing, what in holds[a]:
            back = next(((land, w) for c, land, w in holds.get(b, ()) if c == a), None)
            if a in reported or back is None:
                continue
            here = ("targets", indices[a], "path")
            if a == b:
                text = (
                    f"source {targets[a].path} holds {landing}, {what}: each backup would archive the copies "
                    "before it, and they would grow every run until the disk is full; give the remote a "
                    "folder outside the source, or exclude it"
                )
            else:
                other = targets[b].name
                text = (
                    f"source {targets[a].path} holds {landing} (target '{other}': {what}), and the source of "
                    f"'{other}' holds {back[0]} (this target: {back[1]}): each would archive the other's "
                    "archives, and both would grow every run until the disk is full; move one of them out of "
                    "the other's source, or exclude it there"
                )
                reported.add(b)
            reported.add(a)
            problems.append(document.problem(here, text))
    for a in sorted(holds):  # longer rings: a holds b's, b holds c's, c holds a's
        ring = None if a in reported else _ring(holds, a)
        if ring is not None:
            reported.update(ring)
            chain = ", whose source holds those of ".join(f"'{targets[b].name}'" for b in ring[1:])
            problems.append(
                document.problem(
                    ("targets", indices[a], "path"),
                    f"source {targets[a].path} holds the archives of {chain}, whose source holds this "
                    "target's: each run would archive the others' archives, and all would grow every run until "
                    "the disk is full; move one destination out of the source that holds it, or exclude it there",
                )
            )
    return problems


def _ring(holds: dict[int, list[tuple[int, Path, str]]], start: int) -> list[int] | None:
    """A chain start -> b -> ... back to start through `holds` (three targets or more), or None."""
    stack, seen = [(start, [start])], {start}
    while stack:
        node, path = stack.pop()
        for nxt, _, _ in holds.get(node, ()):
            if nxt == start and len(path) >= 3:
                return path
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _recording(targets: list[Target]) -> list[Target]:
    """`targets`, those with skip_unchanged whose destination lies in another target's source
    told not to record an unchanged run there.  Paths as written (absolute, links not followed):
    one look up the parents of each such destination, not a comparison of every pair."""
    sources = {target.path: target.name for target in targets}
    return [
        dataclasses.replace(target, records_unchanged=False)
        if target.skip_unchanged
        and any(
            sources.get(folder, target.name) != target.name
            for folder in (target.destination, *target.destination.parents)
        )
        else target
        for target in targets
    ]


def _resolve_target(
    document: Document,
    index: int,
    raw: dict[str, Any],
    defaults: dict[str, Any],
    environ: Any,
    remotes: dict[str, Remote],
    problems: list[Problem],
) -> Target:
    """One target with every setting filled in: its own value, else defaults:, else the schema's default."""
    here: KeyPath = ("targets", index)

    def setting(key: str) -> Any:
        if key in raw:
            return raw[key]
        return defaults[key] if key in defaults else schema_default(key)

    def source(key: str) -> KeyPath:
        # Where a value was written, for the message; a schema default is written nowhere,
        # so its problems point at the target.
        return (*here, key) if key in raw else ("defaults", key) if key in defaults else here

    base = document.file.parent
    path = _expand_path(document, raw["path"], source("path"), base, environ, problems)
    destination = _expand_path(document, setting("destination"), source("destination"), base, environ, problems)
    if path is not None and destination is not None and _is_within(destination, path):
        problems.append(
            document.problem(
                source("destination"),
                f"destination {destination} is inside the source {path}; the backup would swallow its own archives",
            )
        )
    # Nested settings merge key by key: schema default, then defaults:, then the target's own.
    compression = {**schema_default("compression"), **defaults.get("compression", {}), **raw.get("compression", {})}
    sqlite = {**schema_default("sqlite"), **defaults.get("sqlite", {}), **raw.get("sqlite", {})}
    return Target(
        name=raw["name"],
        path=path or Path(),
        type=setting("type"),
        destination=destination or Path(),
        keep=dict(setting("keep")),
        exclude=tuple(setting("exclude")),
        tags=tuple(setting("tags")),
        compression_level=compression["level"],
        inflate_check=compression["inflate_check"],
        sqlite_check=sqlite["check"],
        busy_timeout=float(sqlite["busy_timeout"]),
        skip_unchanged=setting("skip_unchanged"),
        lock_timeout=float(setting("lock_timeout")),
        hooks=_hooks(setting("hooks") or {}, document, source("hooks"), problems),
        offsite=_offsite_beside(document, raw["name"], destination, setting("offsite"), source, remotes, problems),
        max_age=setting("max_age"),
        line=document.place(here)[0],
        changed_files=setting("changed_files"),
        critical=tuple(setting("critical")),
    )


def _offsite_beside(
    document: Document,
    name: str,
    destination: Path | None,
    names: list[str],
    source: Callable[[str], KeyPath],
    remotes: dict[str, Remote],
    problems: list[Problem],
) -> tuple[Remote, ...]:
    """The target's remotes; a folder remote whose copies of it would land in its destination
    is a problem (every run failed with "already exists with other content" on its own archive)."""
    chosen = _offsite(document, names, source("offsite"), remotes, problems)
    places: dict[tuple[str, ...], str] = {}
    here = ("folder", os.path.normcase(destination)) if destination is not None else None
    for remote in chosen:
        landing = remotes_module.landing(remote, name)
        first = places.setdefault(landing, remote.name)
        if first != remote.name:
            # Each would count and prune the other's copies by its own keep, and send again what
            # the other deleted: `b +2 (3 held), a -2 (1 held)` on every run.  (Remotes naming
            # one place for different targets are fine: each target has its own folder there.)
            problems.append(
                document.problem(
                    source("offsite"),
                    f"remotes {first} and {remote.name} name the same place ({remote.describe()}): each would "
                    "apply its own keep to the other's copies of this target; keep one, or give each its own prefix",
                )
            )
        if landing == here:
            problems.append(
                document.problem(
                    source("destination"),
                    f"destination {destination} is where remote {remote.name} puts this target's copies; "
                    "give the remote another path or prefix",
                )
            )
    return chosen


def _offsite(
    document: Document, names: list[str], where: KeyPath, remotes: dict[str, Remote], problems: list[Problem]
) -> tuple[Remote, ...]:
    chosen = []
    for index, name in enumerate(names):
        if name in remotes:
            chosen.append(remotes[name])
        elif name not in (document.data.get("remotes") or {}):  # a broken remote is reported where it is
            known = ", ".join(sorted(remotes)) or "none defined"
            problems.append(
                document.problem(
                    (*where, index),
                    f"unknown remote '{name}'; remotes: {known} (define it under remotes:)",
                )
            )
    return tuple(chosen)


def _expand_path(
    document: Document, value: str, where: KeyPath, base: Path, environ: Any, problems: list[Problem]
) -> Path | None:
    expanded = variables.expand(document, value, where, environ, problems, "path")
    if expanded is None:
        return None
    path = variables.home_expanded(document, expanded, where, problems)
    return None if path is None else Path(os.path.abspath(base / path))  # noqa: PTH100 - resolve() would follow links


def _is_within(inner: Path, outer: Path) -> bool:
    # Resolve links so an alias of the source folder is caught too.
    try:
        inner, outer = inner.resolve(), outer.resolve()
    except (RuntimeError, OSError):  # a loop of links: the run names it as the target's failure
        return False
    return inner == outer or outer in inner.parents


# Windows passes a string hook's command line to the program as it is (see Hook.line).
_WHOLE_LINES = os.name == "nt"


def _hooks(raw: dict[str, Any], document: Document, where: KeyPath, problems: list[Problem]) -> Hooks:
    default_timeout = schema()["definitions"]["hook"]["anyOf"][1]["properties"]["timeout"]["default"]

    def one(item: Any, here: KeyPath) -> Hook:
        if isinstance(item, list):
            return Hook(tuple(item), None, default_timeout)
        run, timeout = item["run"], float(item.get("timeout", default_timeout))
        if isinstance(run, str) and item.get("shell"):
            return Hook(None, run, timeout)
        if isinstance(run, str) and _WHOLE_LINES:
            if run.strip() == "":
                problems.append(document.problem((*here, "run"), "the command is empty"))
            return Hook(None, None, timeout, line=run)
        if isinstance(run, str):
            try:
                argv = tuple(shlex.split(run))
            except ValueError as exc:
                problems.append(document.problem((*here, "run"), f"cannot split this command ({exc}); fix its quotes"))
                argv = ()
            if not argv and run.strip() == "":
                problems.append(document.problem((*here, "run"), "the command is empty"))
            return Hook(argv, None, timeout)
        return Hook(tuple(run), None, timeout)

    return Hooks(
        *(
            tuple(one(item, (*where, when, index)) for index, item in enumerate(raw.get(when, [])))
            for when in ("before", "after", "on_failure")
        )
    )
