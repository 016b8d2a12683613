"""`maillab check --software ...`: the fidelity matrix, as text, JSON or Markdown."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from lab.cli.output import emit_json


def run_matrix_command(
    loaded: list[tuple[str, Any]],
    names: list[str],
    software: str,
    write: str | None,
    as_json: bool,
) -> None:
    """Run the matrix of the loaded topologies; exit 1 when a check that applies fails."""
    from lab.harness.matrix import Cell, TopologyMatrix, parse_software, render_markdown, run_matrix

    chosen = parse_software(software)
    started = time.monotonic()

    def show(row: TopologyMatrix, cell: Cell) -> None:
        took = f" ({cell.result.duration:.1f}s)" if cell.result is not None else ""
        where = f" on {cell.backend}" if cell.backend else ""
        line = f"{cell.status.upper():6} {row.file} {cell.check} [{cell.software}]{where}{took}"
        click.echo(line + (f": {cell.reason}" if cell.reason else ""), err=as_json)

    rows = run_matrix(loaded, chosen, names, on_cell=show)
    took = time.monotonic() - started
    if not rows:
        click.echo("no topology with a device under test (matrix: dut, or a hub)", err=True)
    cells = [c for row in rows for c in row.cells.values()]
    failed = sum(1 for c in cells if c.status == "failed")
    if write:
        Path(write).write_text(render_markdown(rows), encoding="utf-8")
    if as_json:
        emit_json({"duration": round(took, 1), "topologies": [r.to_json() for r in rows]})
    else:
        passed = sum(1 for c in cells if c.status == "passed")
        click.echo(
            f"\n{len(cells)} cells: {passed} passed, {failed} failed,"
            f" {len(cells) - passed - failed} not applicable ({took:.1f}s)"
            + (f"; wrote {write}" if write else "")
        )
    if failed:
        sys.exit(1)
