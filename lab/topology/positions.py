"""Where each part of a topology stands in its file: the paths of the data and their
(line, column), so that every problem, found while parsing or long after, names FILE:LINE:COL."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lab.errors import Problem

PathT = tuple[str | int, ...]


@dataclass
class Positions:
    """Where each path of the data stands in the file: (line, column), 1-based."""

    file: str
    keys: dict[PathT, tuple[int, int]] = field(default_factory=dict)
    values: dict[PathT, tuple[int, int]] = field(default_factory=dict)

    def of_key(self, path: PathT) -> tuple[int, int]:
        """The key's place if the path names a mapping entry, else the value's."""
        return self.keys.get(path) or self.of_value(path)

    def of_value(self, path: PathT) -> tuple[int, int]:
        """The value's place; for a path not in the file, the nearest parent that is."""
        for cut in range(len(path), -1, -1):
            place = self.values.get(path[:cut])
            if place:
                return place
        return (1, 1)

    def problem(self, path: PathT, message: str, *, at_key: bool = False) -> Problem:
        line, column = self.of_key(path) if at_key else self.of_value(path)
        return Problem(self.file, line, column, format_path(path), message)


_PLAIN_KEY = re.compile(r"^[A-Za-z_@][A-Za-z0-9_-]*$")


def format_path(path: PathT) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.match(str(part)):
            text += f'["{part}"]'
        else:
            text += ("." if text else "") + str(part)
    return text
