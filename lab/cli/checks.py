"""`maillab check`: run the checks of topology files, each on a fresh lab."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lab.cli.output import emit_json, friendly
from lab.errors import TopologyError


def _is_topology_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="FILE... [NAME...]")
@click.option(
    "--backend",
    type=click.Choice(["inprocess", "docker"]),
    default="inprocess",
    show_default=True,
    help="Where the hosts run.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Bring a new lab up for every check (default: one lab per topology, reset"
    " between checks).",
)
@click.option(
    "--software",
    metavar="NAME,...",
    help="Run the fidelity matrix: each check of each topology with a device under test"
    " (matrix: dut, default its hub), with the DUT's MTA as each software: builtin, postfix,"
    " exim, sendmail (or all). The built-in runs in process, real MTAs on Docker.",
)
@click.option(
    "--write",
    "write",
    type=click.Path(dir_okay=False),
    help="With --software: write the matrix as Markdown to this file (docs/fidelity.md).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    help="The seed every fault's chance is drawn from (over the topology's `seed:`); a"
    " failing check prints the seed it ran with, so the same --seed replays it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@friendly
def check(
    args: tuple[str, ...],
    backend: str,
    fresh: bool,
    seed: int | None,
    software: str | None,
    write: str | None,
    as_json: bool,
) -> None:
    """Run the checks of topology FILEs: all of them, or only those NAMEd.

    Each check runs on the topology's lab in its initial state (one lab per topology,
    reset between checks; --fresh: a new lab each), step by step, and stops at its
    first failing step. Arguments ending in .yaml or .yml (or naming a file) are topology
    files; the others are check names. Exits 0 when every check passes, 1 when any
    fails, 2 for an invalid topology or an unknown check name.
    """
    import time

    from lab.harness.checks import (
        CheckResult,
        UnknownCheckError,
        select_checks,
    )
    from lab.harness.pool import LabPool
    from lab.topology import load

    files = [a for a in args if _is_topology_file(a)]
    names = list(dict.fromkeys(a for a in args if not _is_topology_file(a)))
    if not files:
        raise click.UsageError("give at least one topology FILE (ending in .yaml or .yml)")
    loaded = []
    problems = []
    for file in files:
        try:
            loaded.append((file, load(file).model))
        except TopologyError as exc:
            problems += exc.problems
    if problems:
        raise TopologyError(problems)
    if write and not software:
        raise click.UsageError("--write needs --software (it writes the fidelity matrix)")
    if software:
        from lab.cli.matrix import run_matrix_command

        run_matrix_command(loaded, names, software, write, as_json)
        return
    if not as_json and not names:
        for file, topology in loaded:
            if not topology.checks:
                click.echo(f"{file}: no checks")
    plan: list[tuple[str, Any, list[str]]] = []
    if len(loaded) == 1:
        file, topology = loaded[0]
        plan.append((file, topology, select_checks(topology, names, file)))
    else:
        unknown = [n for n in names if not any(n in t.checks for _, t in loaded)]
        if unknown:
            known = "; ".join(f"{f}: {', '.join(t.checks) or '(none)'}" for f, t in loaded)
            raise UnknownCheckError(
                f"unknown check{'s' if len(unknown) > 1 else ''}"
                f" {', '.join(repr(n) for n in unknown)}; known checks: {known}"
            )
        for file, topology in loaded:
            chosen = [n for n in names if n in topology.checks] if names else list(topology.checks)
            if chosen:
                plan.append((file, topology, chosen))

    started = time.monotonic()
    results: list[CheckResult] = []
    pool = None if fresh else LabPool()
    try:
        _run_plan(plan, backend, as_json, pool, results, seed)
    finally:
        if pool is not None:
            pool.close()
    failed = sum(1 for r in results if not r.ok)

    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        took = time.monotonic() - started
        click.echo(
            f"\n{len(results)} check{'s' if len(results) != 1 else ''}:"
            f" {len(results) - failed} passed, {failed} failed ({took:.2f}s)"
        )
    if failed:
        sys.exit(1)


def _run_plan(
    plan: list[tuple[str, Any, list[str]]],
    backend: str,
    as_json: bool,
    pool: Any,
    results: list[Any],
    seed: int | None = None,
) -> None:
    from lab.harness.checks import StepResult, check_header, run_check

    def show(step: StepResult) -> None:
        click.echo(step.report())

    for file, topology, chosen in plan:
        for name in chosen:
            if not as_json:
                if results:
                    click.echo()
                click.echo(check_header(name, file, backend))
            on_step = None if as_json else show
            options: dict[str, Any] = {} if seed is None else {"seed": seed}
            result = run_check(
                topology, name, backend=backend, file=file, on_step=on_step, pool=pool, **options
            )
            results.append(result)
            if not as_json:
                if result.error:
                    click.echo("\n".join("  " + line for line in result.error.splitlines()))
                if not result.ok and result.seed is not None:
                    click.echo(
                        f"  seed {result.seed}: `maillab check --seed {result.seed}` replays"
                        " this run"
                    )
                click.echo(result.summary())
