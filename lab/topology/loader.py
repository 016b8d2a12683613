"""Read a topology file: YAML -> plain data with positions -> validated model.

Every problem is reported with FILE:LINE:COLUMN, the field path and what was expected,
all of them at once (a YAML syntax error included), so that `maillab validate` is the
only tool a person needs to fix a file.

YAML is read with the YAML 1.2 idea of booleans (only true/false), so `on: rcpt` and
`state: off` mean what they say.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from lab.errors import Problem, TopologyError
from lab.topology.fields import EXCHANGE_PATTERN, HOSTNAME_PATTERN
from lab.topology.model import Topology
from lab.topology.positions import PathT, Positions, format_path
from lab.topology.validate import semantic_check

# Limits on what a topology file may make the loader build. A real topology has a few
# hundred values, nested under ten deep, in a few kilobytes; these are tens of times more,
# and small enough that any file within them is read in well under 2 s and 200 MB. They
# are checked while composing, before any Python value is built, so that a file that
# expands through aliases (a "billion laughs") is refused without being expanded.
MAX_FILE_BYTES = 128 * 1024  # the file itself (PyYAML reads some 100 KB a second)
MAX_DEPTH = 32  # mappings and lists inside each other, aliases expanded
MAX_VALUES = 20_000  # values (scalars, mappings, lists), every alias counted as expanded
MAX_EXPANDED_CHARS = 1_000_000  # characters in scalars, every alias counted as expanded
MAX_NUMBER_CHARS = 64  # an integer's text: Python's int() of long digit strings is slow


class _LimitError(yaml.MarkedYAMLError):
    """A file beyond one of the limits above, or a recursive alias: not a syntax error."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(None, None, problem, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (yes/no/on/off stay strings) whose composer
    refuses recursive aliases and keeps within the limits above, counting each node as
    it is composed and each alias as the size of the node it names."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._values = 0  # values so far, aliases expanded
        self._chars = 0  # scalar characters so far, aliases expanded
        self._heights: list[int] = []  # per open collection: the height of its highest child
        self._open: set[str] = set()  # anchors of the collections being composed
        self._sizes: dict[str, tuple[int, int, int]] = {}  # anchor -> values, chars, height

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        self._sizes.clear()
        return node

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        anchor = event.anchor
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open:
                raise _LimitError(
                    f"alias *{anchor} stands inside the node &{anchor} it names"
                    " (a recursive alias); expected an alias after its anchor's node ends",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)  # an undefined alias: PyYAML says so
            values, chars, height = self._sizes[anchor]
            self._count(values, chars, height, event.start_mark, anchor)
            if self._heights:
                self._heights[-1] = max(self._heights[-1], height)
            return node
        before = (self._values, self._chars)
        if isinstance(event, yaml.ScalarEvent):
            self._count(1, len(event.value), 0, event.start_mark, "")
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.ScalarNode):
                self._number(node)
            height = 0
        else:
            self._count(1, 0, 1, event.start_mark, "")
            self._heights.append(0)
            if anchor is not None:
                self._open.add(anchor)
            node = super().compose_node(parent, index)
            self._open.discard(anchor)
            height = 1 + self._heights.pop()
            if self._heights:
                self._heights[-1] = max(self._heights[-1], height)
        if anchor is not None:
            self._sizes[anchor] = (self._values - before[0], self._chars - before[1], height)
        return node

    def _count(self, values: int, chars: int, height: int, mark: Any, alias: str) -> None:
        """Count a value, or the whole node an alias names, about to join the open
        collections; `alias` is the alias's name, or '' for a value of its own."""
        self._values += values
        self._chars += chars
        what = f"alias *{alias}, expanded," if alias else "this value"
        why = ""
        if len(self._heights) + height > MAX_DEPTH:
            why = (
                f"nests mappings and lists more than {MAX_DEPTH} deep (a topology needs under ten)"
            )
        elif self._values > MAX_VALUES:
            why = f"takes the file past {MAX_VALUES} values (a topology has a few hundred)"
        elif self._chars > MAX_EXPANDED_CHARS:
            why = f"takes the file past {MAX_EXPANDED_CHARS} characters of text"
        if why:
            hint = "; are aliases nested to multiply?" if alias and height != 0 else ""
            raise _LimitError(f"{what} {why}{hint}", mark)

    def _number(self, node: yaml.ScalarNode) -> None:
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_NUMBER_CHARS:
            raise _LimitError(
                f"a number {len(node.value)} characters long; expected at most"
                f" {MAX_NUMBER_CHARS} (quote it to make it a string)",
                node.start_mark,
            )


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _place(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


_TAG_WORDS = {
    "tag:yaml.org,2002:int": "a whole number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true or false",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:null": "null",
}


class _Builder:
    """Turn a composed YAML node tree into plain data, noting every node's place."""

    def __init__(self, positions: Positions):
        self.positions = positions
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: PathT) -> Any:
        self.positions.values.setdefault(path, _place(node))
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line, col = _place(key_node)
                    self.problems.append(
                        Problem(
                            self.positions.file,
                            line,
                            col,
                            format_path(path),
                            "a key must be a plain name, not a list or mapping",
                        )
                    )
                    continue
                key = str(key_node.value)
                if key in result:
                    line, col = _place(key_node)
                    first = self.positions.keys[(*path, key)]
                    self.problems.append(
                        Problem(
                            self.positions.file,
                            line,
                            col,
                            format_path((*path, key)),
                            f"duplicate key {key!r} (first given at line {first[0]})",
                        )
                    )
                    continue
                self.positions.keys[(*path, key)] = _place(key_node)
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            # PyYAML's constructors raise whatever Python raises on an explicit tag with a
            # value that does not fit it (`!!bool maybe`: KeyError, `!!int 12x`: ValueError,
            # `!!timestamp x`: AttributeError) and on impossible dates (2001-02-30).
            self.constructor.recursive_objects.pop(node, None)
            line, col = _place(node)
            kind = _TAG_WORDS.get(node.tag, node.tag)
            reason = f" ({exc})" if type(exc) is ValueError else ""
            self.problems.append(
                Problem(
                    self.positions.file,
                    line,
                    col,
                    format_path(path),
                    f"YAML error: cannot read {node.value!r} as {kind}{reason}",
                )
            )
            return None


def _yaml_hint(problem: str) -> str:
    """A plain-words hint for PyYAML's most puzzling messages."""
    if "'\\t'" in problem:
        return " (indent with spaces; YAML does not allow tabs here)"
    if problem.startswith("mapping values are not allowed"):
        return " (check the indentation of this line, or quote a value that contains ': ')"
    if "expected <block end>" in problem:
        return " (check the indentation of this line)"
    return ""


def _too_large(file: str) -> TopologyError:
    return TopologyError(
        [
            Problem(
                file,
                1,
                1,
                "",
                f"the file is larger than {MAX_FILE_BYTES // 1024} KiB; a topology file is"
                " a few kilobytes (is this the right file?)",
            )
        ]
    )


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at `index`."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse_yaml(text: str, file: str) -> tuple[Any, Positions]:
    """Plain data and positions from YAML text; a syntax error, or a file beyond the
    loader's limits (MAX_FILE_BYTES and the others), becomes a TopologyError."""
    positions = Positions(file)
    if len(text) > MAX_FILE_BYTES:
        raise _too_large(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _LimitError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise TopologyError([Problem(file, line, col, "", f"YAML error: {exc.problem}")]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_column(text, exc.position)
        if isinstance(exc.character, int):
            what = f"the character {chr(exc.character)!r} (U+{exc.character:04X}) is not allowed"
        else:  # pragma: no cover - bytes, undecodable: the text is decoded already
            what = f"cannot decode the file as {exc.encoding}: {exc.reason}"
        raise TopologyError([Problem(file, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (exc.problem or "invalid YAML") + _yaml_hint(exc.problem or "")
        if exc.context:
            start = exc.context_mark
            if start and (start.line, start.column) != (line - 1, col - 1):
                what = (
                    f"{exc.context} that starts at line {start.line + 1},"
                    f" column {start.column + 1}: {what}"
                )
            else:
                what = f"{exc.context}, {what}"
        raise TopologyError([Problem(file, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is marked today
        raise TopologyError([Problem(file, 1, 1, "", f"YAML error: {exc}")]) from None
    if root is None:
        raise TopologyError([Problem(file, 1, 1, "", "the file is empty; expected a topology")])
    builder = _Builder(positions)
    try:
        data = builder.build(root, ())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise TopologyError([Problem(file, line, col, "", f"YAML error: {exc.problem}")]) from None
    if builder.problems:
        raise TopologyError(builder.problems)
    if not isinstance(data, dict):
        raise TopologyError(
            [Problem(file, 1, 1, "", f"expected a mapping of topology fields, got {_kind(data)}")]
        )
    return data, positions


# --------------------------------------------------------------------------------------
# pydantic errors -> problems


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return repr(value)


def _unwrap(annotation: Any) -> list[Any]:
    """The member types of an annotation, Optional and Annotated peeled off."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    return [annotation]


def _model_at(model: type[BaseModel], path: PathT) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (for 'did you mean')."""
    current: list[Any] = [model]
    for part in path:
        following: list[Any] = []
        for ann in current:
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                for name, info in ann.model_fields.items():
                    if part in (name, info.alias):
                        following.extend(_unwrap(info.annotation))
            elif typing.get_origin(ann) in (dict, list):
                args = typing.get_args(ann)
                if args:
                    following.extend(_unwrap(args[-1]))
        current = following
    for ann in current:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "ip_v4_address": "an IPv4 address such as 10.20.0.25",
    "ip_v4_network": "an IPv4 network such as 10.20.0.0/16",
}


_PATTERN_WORDS = {
    HOSTNAME_PATTERN: "a host name such as mail.example.org",
    EXCHANGE_PATTERN: "a host name such as mx.example.org, or '.' for a null MX",
}


def _message(err: ErrorDetails, path: PathT, data_has_path: bool) -> tuple[str, bool]:
    """A sentence for one pydantic error, and whether it belongs at the key."""
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1])
        model = _model_at(Topology, path[:-1])
        known = field_names(model) if model else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown field {key!r}{hint} (expected one of: {', '.join(known)})", True
    if kind == "missing":
        return f"missing required field {str(path[-1])!r}", False
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error") or err["msg"])
        return text, False
    if kind in ("literal_error", "enum"):
        return (
            f"expected {ctx.get('expected', 'one of the allowed values')}, got {_kind(value)}",
            False,
        )
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {_kind(value)}", False
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_WORDS:
        return f"expected {_PATTERN_WORDS[ctx['pattern']]}, got {_kind(value)}", False
    if kind == "string_pattern_mismatch":
        return f"{_kind(value)} does not have the expected form ({ctx.get('pattern')})", False
    if kind.startswith(("greater_than", "less_than")):
        return (
            f"expected a number {err['msg'].removeprefix('Input should be ')}, got {_kind(value)}",
            False,
        )
    msg = err["msg"].replace("Input should be", "expected")
    return f"{msg}, got {_kind(value)}", False


def problems_from_validation(exc: ValidationError, positions: Positions) -> list[Problem]:
    problems: dict[str, Problem] = {}
    for err in exc.errors(include_url=False):
        # Keep the parts of loc that are data (drop pydantic's union/function tags).
        path: PathT = ()
        for part in err["loc"]:
            candidate = (*path, part)
            # A list index not in the file belongs to a single value given for a list
            # (`MX: "10 mx.example.org"`): the error is at that value, not at item [0].
            if (
                candidate in positions.values
                or err["type"] in ("missing",)
                or (isinstance(part, str) and (*path, part) in positions.keys)
            ):
                path = candidate
        message, at_key = _message(err, path, path in positions.values)
        at_key = at_key or "[key]" in err["loc"]
        problem = positions.problem(path, message, at_key=at_key)
        problems.setdefault(f"{problem.path}|{problem.message}", problem)
    return list(problems.values())


# --------------------------------------------------------------------------------------


@dataclass
class LoadedTopology:
    """A validated topology and where it came from (positions are for later checks), with
    the warnings the checks found: things that work, but probably not as meant."""

    model: Topology
    positions: Positions
    source: Path | None
    warnings: list[Problem] = field(default_factory=list)


def load_text(text: str, file: str = "<topology>", base: Path | None = None) -> LoadedTopology:
    """Validate a topology's text; `file` names it in problems. Paths in it (a node's
    `config`) are relative to `base`, by default the directory of `file`."""
    data, positions = parse_yaml(text, file)
    base = (base or Path(file).parent).absolute()
    try:
        model = Topology.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise TopologyError(problems_from_validation(exc, positions)) from None
    problems, warnings = semantic_check(model, positions)
    if problems:
        raise TopologyError(problems, warnings)
    return LoadedTopology(model, positions, None, warnings)


def load(path: str | Path) -> LoadedTopology:
    """Load and validate a topology file, or raise TopologyError with every problem."""
    path = Path(path)
    try:
        with path.open("rb") as stream:  # no more than the limit: not all of /dev/zero
            raw = stream.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise _too_large(str(path))
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise TopologyError([Problem(str(path), 0, 0, "", "no such file")]) from None
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise TopologyError(
            [
                Problem(
                    str(path),
                    line,
                    column,
                    "",
                    f"the file is not UTF-8 text: byte {raw[exc.start]:#04x} {exc.reason}",
                )
            ]
        ) from None
    except OSError as exc:
        raise TopologyError(
            [Problem(str(path), 0, 0, "", f"cannot read the file: {exc}")]
        ) from None
    loaded = load_text(text, str(path))
    loaded.source = path
    return loaded
