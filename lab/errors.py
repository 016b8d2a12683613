"""Errors for people: each says where, what is wrong, and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


class LabError(Exception):
    """Base of every error maillab reports to a person (the CLI prints it, no traceback)."""

    exit_code = 1


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a topology file, with its place."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class TopologyError(LabError):
    """A topology file that cannot be used; carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))
