"""Commands on topology files that run nothing: validate, schema, graph."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from lab.cli.output import emit_json, friendly
from lab.errors import LabError, TopologyError


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check topology FILES; print every problem as FILE:LINE:COL: field: message.

    Warnings (FILE:LINE:COL: warning: ...) are things that work but probably not as
    meant, such as an MX record whose name has no address: the file is still valid.
    Exits 0 when every file is valid, 2 otherwise.
    """
    from lab.topology import load

    results = []
    failed = False
    for file in files:
        try:
            loaded = load(file)
        except TopologyError as exc:
            failed = True
            results.append(
                {
                    "file": str(file),
                    "ok": False,
                    "problems": [p.__dict__ for p in exc.problems],
                    "warnings": [w.__dict__ for w in exc.warnings],
                }
            )
            if not as_json:
                click.echo(str(exc), err=True)
            continue
        t = loaded.model
        results.append(
            {
                "file": str(file),
                "ok": True,
                "name": t.name,
                "nodes": len(t.nodes),
                "networks": len(t.networks),
                "links": len(t.links),
                "checks": len(t.checks),
                "warnings": [w.__dict__ for w in loaded.warnings],
            }
        )
        if not as_json:
            for warning in loaded.warnings:
                click.echo(warning.as_warning(), err=True)
            click.echo(
                f"{file}: ok ({t.name}: {len(t.nodes)} nodes, {len(t.networks)} networks,"
                f" {len(t.links)} links, {len(t.checks)} checks)"
            )
    if as_json:
        emit_json(results)
    if failed:
        sys.exit(2)


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the schema to this file instead of standard output.",
)
def schema(output: Path | None) -> None:
    """Print the JSON Schema of the topology format (for editors and tools)."""
    from lab.topology.schema import schema_text

    text = schema_text()
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "svg", "png"]),
    default="mermaid",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write here (default: standard output for text; FILE-stem.FORMAT for svg/png).",
)
@friendly
def graph(file: Path, fmt: str, output: Path | None) -> None:
    """Draw FILE: networks, hosts with services and addresses, links and their state."""
    from lab.topology import load
    from lab.topology.graph import to_dot, to_mermaid

    topology = load(file).model
    if fmt in ("mermaid", "dot"):
        text = to_mermaid(topology) if fmt == "mermaid" else to_dot(topology)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        return
    dot = shutil.which("dot")
    if dot is None:
        raise LabError(
            "Graphviz is not installed (no `dot` on PATH); `make setup` installs it,"
            " or use --format mermaid|dot"
        )
    target = output or Path(f"{file.stem}.{fmt}")
    result = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(target)],
        input=to_dot(topology),
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"dot failed: {result.stderr.strip()}")
    click.echo(f"wrote {target}", err=True)
