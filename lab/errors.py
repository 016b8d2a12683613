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

    def as_warning(self) -> str:
        """FILE:LINE:COL: warning: field: message, for something that works but probably
        not as meant (the file is still valid)."""
        return f"{self.file}:{self.line}:{self.column}: warning: " + (
            f"{self.path}: {self.message}" if self.path else self.message
        )


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))


class TopologyError(LabError):
    """A topology file that cannot be used; carries every problem found, not only the first,
    and the warnings found beside them (printed after the problems)."""

    exit_code = 2

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None):
        self.problems = _in_file_order(problems)
        self.warnings = _in_file_order(warnings or [])
        super().__init__(
            "\n".join([str(p) for p in self.problems] + [w.as_warning() for w in self.warnings])
        )
