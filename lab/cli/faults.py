"""Run-time faults and dial schedules of a running lab: `maillab fault add|clear|dns|
dns-clear` and `maillab schedule`. A fault or schedule is written as in a topology file,
in YAML flow style: `maillab fault add isp 'on: mail, rate: {messages: 2, per: 1m}'`.
The spec is checked here, so a mistake is a message, not a failure inside the lab."""

from __future__ import annotations

from typing import Any

import click

from lab.cli.output import emit_json, friendly, json_option, lab_option
from lab.errors import LabError


def parse_spec(text: str, model: Any, what: str) -> dict[str, Any]:
    """A YAML mapping (braces optional), validated by `model`; LabError when it is not."""
    from pydantic import ValidationError

    from lab.errors import TopologyError
    from lab.topology.loader import parse_yaml

    source = text.strip()
    if not source.startswith("{"):
        source = "{" + source + "}"
    try:  # the topology's reading of YAML: `on: mail` is the key "on", not true
        data, _ = parse_yaml(source, what)
    except TopologyError as exc:
        raise LabError(f"{what}: not a YAML mapping: {text!r}\n{exc}") from None
    if not isinstance(data, dict):
        raise LabError(f"{what}: expected a mapping such as 'on: mail, reply: 421 busy'")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
        )
        raise LabError(f"{what}: {problems}") from None
    return {str(k): v for k, v in data.items()}


@click.group("fault")
def fault_group() -> None:
    """Add or remove faults of a running lab's MTAs and DNS (docs/faults.md)."""


@fault_group.command("add")
@lab_option
@click.argument("node")
@click.argument("spec", metavar="FAULT")
@json_option
@friendly
def fault_add(lab_name: str | None, node: str, spec: str, as_json: bool) -> None:
    """Add FAULT to NODE's SMTP server, e.g. 'on: rcpt, reply: 451 later, chance: 0.3'."""
    from lab.harness.control import request
    from lab.topology.model import Fault

    result = request(
        lab_name, "fault", action="add", node=node, spec=parse_spec(spec, Fault, "fault")
    )
    emit_json(result) if as_json else click.echo(f"{node}: fault added")


@fault_group.command("clear")
@lab_option
@click.argument("node")
@friendly
def fault_clear(lab_name: str | None, node: str) -> None:
    """Remove the faults added to NODE while the lab runs (its topology's stay)."""
    from lab.harness.control import request

    result = request(lab_name, "fault", action="clear", node=node)
    click.echo(f"{node}: {result['cleared']} fault(s) removed")


@fault_group.command("dns")
@lab_option
@click.argument("spec", metavar="RULE")
@friendly
def fault_dns(lab_name: str | None, spec: str) -> None:
    """Make the lab DNS fail: RULE such as 'name: "*.isp.test", fault: servfail, until: 1h'."""
    from lab.harness.control import request
    from lab.topology.model import DnsFaultRule

    rule = parse_spec(spec, DnsFaultRule, "DNS fault")
    request(lab_name, "fault", action="dns", spec=rule)
    click.echo(f"dns: {rule['fault']} for {rule['name']}")


@fault_group.command("dns-clear")
@lab_option
@friendly
def fault_dns_clear(lab_name: str | None) -> None:
    """Remove the DNS fault rules added while the lab runs."""
    from lab.harness.control import request

    result = request(lab_name, "fault", action="dns-clear")
    click.echo(f"dns: {result['cleared']} rule(s) removed")


@click.command()
@lab_option
@click.argument("link_name", metavar="LINK")
@click.argument("spec", metavar="SCHEDULE", required=False)
@click.option("--clear", is_flag=True, help="Dial on no schedule from now on.")
@json_option
@friendly
def schedule(
    lab_name: str | None, link_name: str, spec: str | None, clear: bool, as_json: bool
) -> None:
    """Make LINK dial on SCHEDULE ('every: 1h, for: 5m', 'at: [10m, 2h]'), or --clear it.
    Each dial raises the link, runs its on_up hooks, and drops it after `for`."""
    from lab.harness.control import request
    from lab.topology.model import Schedule

    if clear == (spec is not None):
        raise click.UsageError("give a SCHEDULE or --clear (one of them)")
    parsed = None if spec is None else parse_spec(spec, Schedule, "schedule")
    result = request(lab_name, "schedule", link=link_name, spec=parsed)
    if as_json:
        emit_json(result)
    elif result.get("schedule"):
        click.echo(f"link {link_name}: dials on a schedule, next at lab time {result['next_dial']}")
    else:
        click.echo(f"link {link_name}: no schedule")
