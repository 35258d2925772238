"""Read YAML without PyYAML's silent conversions, keeping where every value came from.

PyYAML (YAML 1.1) turns `no` into False, `0755` into 493, `12:30` into 750 and
`2024-01-01` into a date, and keeps the last of two duplicate keys.  A backup
manifest must never mean something other than what the operator typed, so this
loader resolves only what YAML 1.2's core schema resolves (true/false, decimal
numbers, null) and leaves everything else a string for the schema to judge.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from backup_core.errors import Problem
from backup_core.manifest import redact

Location = tuple[int, int]  # 1-based line and column
KeyPath = tuple[str | int, ...]


class _CoreResolver(yaml.resolver.Resolver):
    """YAML 1.2 core schema resolution: nothing implicit beyond bool, int, float, null."""


_CoreResolver.yaml_implicit_resolvers = {}
# What each kind of scalar may look like; an explicit tag (`!!int "0x10"`, `!!bool yes`) is held
# to the same forms, or it would reach int() (a traceback) or read `yes` as false.
_FORMS: dict[str, re.Pattern[str]] = {}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("float", r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$", "-+.0123456789"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _FORMS[_tag] = re.compile(_pattern)
    _CoreResolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", _FORMS[_tag], list(_first))
_WRITTEN = {"bool": "true or false", "int": "a whole number", "float": "a number", "null": "null or nothing"}


class _Composer(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _CoreResolver):
    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _CoreResolver.__init__(self)


# libyaml's parser (PyYAML's C extension, in its wheels) composes the same nodes about seven
# times faster: 0.4 ms a target in a manifest of 1,000.  It caps nesting at 1,000 levels itself.
# It is the parser that decides what a manifest means.  A document it refuses is parsed again
# by the Python parser, whose messages say more ("mapping values are not allowed here"), and
# stays refused even when the Python parser reads it.  The Python parser alone (PyYAML built
# without libyaml) is stricter in a few corners where libyaml follows the YAML spec: a tab
# inside or after a plain value, a `?` inside a flow value such as [log?.txt], a `#` straight
# after a block scalar's `|` or `>`, a tag before a flow comma.  It refuses those documents
# with a located message; it never reads them differently.
_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)  # None: built without libyaml

if _CParser is not None:

    class _FastComposer(_CParser, _CoreResolver):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            _CParser.__init__(self, text)
            _CoreResolver.__init__(self)


def _compose(text: str) -> yaml.Node | None:
    if _CParser is None:
        return _Composer(text).get_single_node()  # type: ignore[no-any-return]
    try:
        return _FastComposer(text).get_single_node()  # type: ignore[no-any-return]
    except yaml.YAMLError as refused:
        try:
            _Composer(text).get_single_node()  # for its clearer message, raised from here
        except yaml.YAMLError:
            raise
        except (ValueError, OverflowError):
            pass  # PyYAML's reader fails on an escape past U+10FFFF instead of refusing it: libyaml's says where
        raise refused from None  # read by the Python parser alone: still refused
    except UnicodeEncodeError:  # a lone surrogate cannot be handed to C; Python's reader locates it
        return _Composer(text).get_single_node()  # type: ignore[no-any-return]


_OCTAL_LOOKING = re.compile(r"^0[0-9]+$")
# An alias is a reference, cheap to parse, but every use of it is a copy once built: nine
# nested aliases of ten make a billion values ("billion laughs").  A real manifest has a
# few hundred values and a few levels; these limits are far above that and far below harm.
MAX_VALUES = 100_000
MAX_DEPTH = 64


class _TooBig(Exception):
    """The document would build into more than MAX_VALUES values or MAX_DEPTH levels."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node


class Document:
    """A parsed YAML document: plain Python data plus the place of every value and key."""

    def __init__(self, file: Path, data: Any, places: dict[KeyPath, Location]):
        self.file = file
        self.data = data
        self._places = places

    def place(self, path: KeyPath) -> Location:
        """Line and column of the value at `path`, or of its nearest located parent."""
        while path not in self._places and path:
            path = path[:-1]
        return self._places.get(path, (0, 0))

    def problem(self, path: KeyPath, message: str) -> Problem:
        line, column = self.place(path)
        return Problem(self.file, line, column, format_path(path), message)


def format_path(path: KeyPath) -> str:
    """targets[2].keep.last, the way an operator reads a key path.  A key under hooks other than
    their own is a command written as a mapping (`before: [{curl -u ops:…}]`): masked."""
    text = ""
    for index, part in enumerate(path):
        shown = redact.text(part) if isinstance(part, str) and "hooks" in path[:index] else part
        text += f"[{shown}]" if isinstance(shown, int) else (f".{shown}" if text else str(shown))
    return text


# Line breaks nobody sees (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR) and a byte-order mark
# after the start arrive with pasted text.  The two parsers count lines and split values
# differently around them, and a path holding one names another file, so they are refused.
_INVISIBLE_NAMES = {
    "\x85": "NEXT LINE",
    "\u2028": "LINE SEPARATOR",
    "\u2029": "PARAGRAPH SEPARATOR",
    "\ufeff": "BYTE ORDER MARK",
}
_INVISIBLE = re.compile("[" + "".join(_INVISIBLE_NAMES) + "]")


# What YAML (and so PyYAML's marks) counts as a line break: a file saved with CR alone, or
# holding U+2028, was located on its first line by counting "\n" only.
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def position(text: str, at: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of `text[at]`, as YAML counts lines."""
    line, begins = 1, 0
    for found in _BREAK.finditer(text, 0, at):
        line, begins = line + 1, found.end()
    return line, at - begins + 1


def _invisible(file: Path, text: str) -> Problem | None:
    found = _INVISIBLE.search(text, 1 if text.startswith("\ufeff") else 0)  # a BOM may open the file
    if found is None:
        return None
    character = found.group()
    what = f"invisible character U+{ord(character):04X} ({_INVISIBLE_NAMES[character]})"
    line, column = position(text, found.start())
    return Problem(file, line, column, "", f"{what}, often pasted in with copied text; delete it")


def load(file: Path, text: str) -> tuple[Document | None, list[Problem]]:
    """Parse `text`; return the document and every problem found (syntax stops at the first)."""
    invisible = _invisible(file, text)
    if invisible is not None:
        return None, [invisible]
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        reason = exc.problem or exc.context or "invalid YAML"
        opened = exc.context_mark
        if exc.context and opened and exc.problem_mark and opened.line != exc.problem_mark.line:
            reason += f" ({exc.context} started at line {opened.line + 1}, column {opened.column + 1})"
        return None, [Problem(file, line, column, "", f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, 0, "", f"YAML error: {exc}")]
    except RecursionError:
        # PyYAML composes nested collections recursively: thousands of `[` exhaust the stack.
        return None, [Problem(file, 0, 0, "", f"the manifest is nested too deeply (over {MAX_DEPTH} levels)")]
    places: dict[KeyPath, Location] = {}
    problems: list[Problem] = []
    try:
        data = _Builder(file, places, problems).build(node, ()) if node is not None else None
    except _TooBig as exc:
        line, column = exc.node.start_mark.line + 1, exc.node.start_mark.column + 1
        return None, [Problem(file, line, column, "", str(exc))]
    return Document(file, data, places), problems


class _Builder:
    """Plain data from composed nodes, within MAX_VALUES and MAX_DEPTH, refusing recursive aliases."""

    def __init__(self, file: Path, places: dict[KeyPath, Location], problems: list[Problem]) -> None:
        self.file, self.places, self.problems = file, places, problems
        self.values = 0
        self.open: set[int] = set()  # ids of the collections being built: an alias back to one is a loop

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _TooBig(node, f"the manifest expands to over {MAX_VALUES:,} values (aliases used as a bomb?)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(node, f"the manifest is nested too deeply (over {MAX_DEPTH} levels)")
        if isinstance(node, yaml.ScalarNode):
            self.places[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
            return _scalar(self.file, node, path, self.problems)
        if id(node) in self.open:
            raise _TooBig(node, "a YAML alias refers to a collection that contains it (a recursive alias)")
        self.open.add(id(node))
        try:
            return _build(self, node, path)
        finally:
            self.open.discard(id(node))


def _build(builder: _Builder, node: yaml.Node, path: KeyPath) -> Any:
    file, places, problems = builder.file, builder.places, builder.problems
    places[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.SequenceNode):
        return [builder.build(item, (*path, i)) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            here = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            merge = isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<" and not key_node.style  # plain
            if merge or not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                # YAML 1.2 has no merge key: `<<: *base` read as a key named "<<", and the keys it
                # was meant to bring in were reported missing.
                said = (
                    "merge keys (<<) are not supported: write the keys out, or put shared settings under defaults:"
                    if merge
                    else "keys must be plain words (no merge keys)"
                )
                problems.append(Problem(file, *here, format_path(path), said))
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                first = places[key_path]
                problems.append(
                    Problem(file, *here, format_path(key_path), f"duplicate key; first given at line {first[0]}")
                )
                continue
            result[key] = None  # reserve the slot so duplicates are found even if the value fails
            places[key_path] = here
            result[key] = builder.build(value_node, key_path)
            places[key_path] = here  # a key's place is where the key is written
        return result
    raise AssertionError(f"unexpected YAML node {node!r}")


def _scalar(file: Path, node: yaml.ScalarNode, path: KeyPath, problems: list[Problem]) -> Any:
    tag, value = node.tag, node.value
    kind = tag.rpartition(":")[2]
    if tag.startswith("tag:yaml.org,2002:") and kind in _FORMS and not _FORMS[kind].match(value):
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        # A hook's argument may be a password, and alone it cannot be told from one: not quoted.
        shown = "this value" if "hooks" in path else f"'{value}'"
        problems.append(
            Problem(file, line, column, format_path(path), f"{shown} is not {_WRITTEN[kind]}, as its tag !!{kind} says")
        )
        return value
    if tag.endswith(":bool"):
        return value.lower() == "true"
    if tag.endswith(":int"):
        if _OCTAL_LOOKING.match(value.lstrip("+-")):
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
            problems.append(
                Problem(file, line, column, format_path(path), f"{value} has a leading zero; quote it if it is text")
            )
        return int(value)
    if tag.endswith(":float"):
        number = float(value)
        if number in (float("inf"), float("-inf")):  # 1e400: past any float, it would read as "inf"
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
            problems.append(Problem(file, line, column, format_path(path), f"{value} is too large a number"))
        return number
    if tag.endswith(":null"):
        return None
    return value
