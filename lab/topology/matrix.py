"""The fidelity matrix's marks in a topology (`matrix:`): the device under test, the node
whose MTA `maillab check --software ...` runs as each software in turn, and the checks
that do not apply to some software, each with the reason.

    matrix:
      dut: hub                    # default: the one node with role hub; false: none
      not_on:
        queued-while-down: {exim: "why it does not apply"}
      notes:
        delay-warning-after-4h: "each MTA's own behaviour, where the check allows it"
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lab.topology.fields import Base

# The MTAs the matrix compares, in the order of its columns.
MATRIX_SOFTWARE: tuple[str, ...] = ("builtin", "postfix", "exim", "sendmail")


class Matrix(Base):
    """Where the topology stands in the fidelity matrix."""

    dut: str | Literal[False] | None = Field(
        None,
        description="the device under test: the node whose MTA the matrix swaps (default:"
        " the one node with role hub; false: the topology is not in the matrix)",
    )
    not_on: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="check name -> {software: why}: checks that do not apply to a software",
    )

    notes: dict[str, str] = Field(
        default_factory=dict,
        description="check name -> what the MTAs do differently where the check passes on"
        " each (each MTA's own behaviour and the setting behind it), listed in"
        " docs/fidelity.md",
    )

    @field_validator("not_on")
    @classmethod
    def _software(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for check, marks in value.items():
            unknown = [s for s in marks if s not in MATRIX_SOFTWARE]
            if unknown:
                raise ValueError(
                    f"check {check!r}: unknown software {', '.join(map(repr, unknown))};"
                    f" expected one of: {', '.join(MATRIX_SOFTWARE)}"
                )
            empty = [s for s, why in marks.items() if not why.strip()]
            if empty:
                raise ValueError(f"check {check!r}: say why it does not apply on {empty[0]}")
        return value


def dut_of(topology: Any) -> str | None:
    """The device under test of `topology` (a lab.topology.model.Topology, which imports
    this module), or None when it is not in the matrix."""
    dut = topology.matrix.dut
    if dut is False:
        return None
    if dut:
        return dut
    hubs = [name for name, node in topology.nodes.items() if node.role == "hub"]
    return hubs[0] if len(hubs) == 1 else None


def not_applicable(topology: Any, check: str, software: str) -> str | None:
    """Why `check` does not apply to `software` (its mark), or None when it does."""
    return topology.matrix.not_on.get(check, {}).get(software)
