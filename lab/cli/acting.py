"""Commands that act on a running lab through its control channel: send, link, flush,
fetch, queue, mailbox, clock, events, trace, reset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lab.cli.output import emit_json, friendly, json_option, lab_option, print_events
from lab.errors import LabError
from lab.topology.defaults import DEFAULT_SUBJECT


@click.command()
@lab_option
@click.option("--from-node", required=True, help="The node that submits (a client or an MTA).")
@click.option("--mail-from", required=True, help="Envelope sender ('' for the null sender).")
@click.option("--to", "to", multiple=True, required=True, help="Envelope recipient (repeatable).")
@click.option("--subject", default=DEFAULT_SUBJECT, show_default=True)
@click.option("--body", help="Message body text.")
@click.option(
    "--file",
    "eml",
    type=click.Path(exists=True, path_type=Path),
    help="Send this message file as it is.",
)
@click.option("--via", help="Submit to this MTA instead of the node's submit_to.")
@json_option
@friendly
def send(
    lab_name: str | None,
    from_node: str,
    mail_from: str,
    to: tuple[str, ...],
    subject: str,
    body: str | None,
    eml: Path | None,
    via: str | None,
    as_json: bool,
) -> None:
    """Submit a message as FROM-NODE would; print the receiving MTA's queue id."""
    from lab.harness.control import request

    raw = eml.read_text(encoding="utf-8", errors="surrogateescape") if eml else None
    result = request(
        lab_name,
        "send",
        from_node=from_node,
        mail_from=mail_from,
        to=list(to),
        subject=subject,
        body=body,
        raw=raw,
        via=via,
    )
    if as_json:
        emit_json(result)
    elif result["accepted"]:
        click.echo(result["queue_id"])
    else:
        refusals = [result["mail"], *result["rcpt"].values(), result["data"]]
        detail = result["error"] or next(
            (r for r in refusals if r and not r.startswith("2")), "no reply"
        )
        raise LabError(f"not accepted by {result['server']}: {detail}")


@click.command()
@lab_option
@click.argument("name", metavar="LINK|NETWORK")
@click.option("--rate", help="the line's speed, e.g. 33.6kbit")
@click.option("--delay", help="one-way latency, e.g. 150ms")
@click.option("--jitter", help="variation of the delay, e.g. 20ms")
@click.option("--loss", help="packets lost, e.g. 1%")
@click.option("--drop-after", help="a link: hang up once after this many bytes, e.g. 50KB")
@click.option("--drop-at", help="a link: hang up once at this lab time after up, e.g. 90s")
@click.option("--clear", is_flag=True, help="start from no impairment (alone: remove it)")
@friendly
def impair(lab_name: str | None, name: str, clear: bool, **settings: str | None) -> None:
    """Change the impairment of a link or a network (docs/links.md); print what is in force."""
    from lab.harness.control import request

    given = {k: v for k, v in settings.items() if v is not None}
    result = request(lab_name, "impair", target=name, settings=given, clear=clear)
    knobs = " ".join(f"{k}={v}" for k, v in result["impair"].items()) or "none"
    click.echo(f"{result['target']}: {knobs}")


@click.command()
@lab_option
@click.argument("link_name", metavar="LINK")
@click.argument("state", type=click.Choice(["up", "down"]))
@friendly
def link(lab_name: str | None, link_name: str, state: str) -> None:
    """Raise or drop LINK; raising runs its on_up hooks (flush, fetch)."""
    from lab.harness.control import request

    result = request(lab_name, "link", link=link_name, state=state)
    click.echo(f"link {result['link']}: {result['state']}")


@click.command()
@lab_option
@click.argument("node")
@json_option
@friendly
def flush(lab_name: str | None, node: str, as_json: bool) -> None:
    """Run NODE's queue now, like `sendmail -q`."""
    from lab.harness.control import request

    result = request(lab_name, "flush", node=node)
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{node}: tried {result['tried']} message(s), {len(result['queue'])} still queued"
        )


@click.command()
@lab_option
@click.argument("node")
@friendly
def fetch(lab_name: str | None, node: str) -> None:
    """Run NODE's fetch jobs now, like fetchmail."""
    from lab.harness.control import request

    result = request(lab_name, "fetch", node=node)
    click.echo(f"{node}: fetched {result['fetched']} message(s)")


@click.command()
@lab_option
@friendly
def reset(lab_name: str | None) -> None:
    """Put the running lab back to its topology's initial state: queues, mailboxes,
    clock, links, faults, DNS edits and events (its hosts keep running)."""
    from lab.harness.control import request

    result = request(lab_name, "reset")
    click.echo(f"{result['name']}: reset in {result['seconds'] * 1000:.0f} ms")


@click.command()
@lab_option
@click.argument("node")
@json_option
@friendly
def queue(lab_name: str | None, node: str, as_json: bool) -> None:
    """List NODE's mail queue, like `mailq`."""
    from lab.harness.control import request

    entries = request(lab_name, "queue", node=node)
    if as_json:
        emit_json(
            [
                {k: e[k] for k in ("id", "envelope_from", "recipients", "attempts")} | e
                for e in entries
            ]
        )
        return
    if not entries:
        click.echo(f"{node}: mail queue is empty")
    for e in entries:
        click.echo(f"{e['id']}  <{e['envelope_from']}>  attempts={e['attempts']}")
        for rcpt in e["recipients"]:
            click.echo(f"    {rcpt}")
        if e.get("last_reply"):
            click.echo(f"    ({e['last_reply']})")


@click.command()
@lab_option
@click.argument("node")
@click.argument("user")
@json_option
@friendly
def mailbox(lab_name: str | None, node: str, user: str, as_json: bool) -> None:
    """Show the messages in USER's mailbox on NODE."""
    from lab.harness.control import request

    messages = request(lab_name, "mailbox", node=node, user=user)
    if as_json:
        emit_json(messages)
        return
    if not messages:
        click.echo(f"{user}@{node}: no messages")
    for m in messages:
        click.echo(f"=== {m['id']} (envelope from <{m['envelope_from']}>)")
        click.echo(m["raw"].replace("\r\n", "\n"))


@click.group()
@lab_option
@click.pass_context
def clock(ctx: click.Context, lab_name: str | None) -> None:
    """The lab clock: `maillab clock [--lab NAME] advance DURATION`."""
    ctx.obj = {"lab": lab_name}


@clock.command("advance")
@lab_option
@click.argument("duration")
@click.pass_context
@friendly
def clock_advance(ctx: click.Context, lab_name: str | None, duration: str) -> None:
    """Move the lab clock forward by DURATION (e.g. 30m, 4h, 5d), running due timers.

    --lab may come before or after `advance`.
    """
    from lab.harness.control import request
    from lab.topology.units import parse_duration

    lab_name = lab_name or (ctx.obj or {}).get("lab")

    try:
        parse_duration(duration)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    result = request(lab_name, "clock", advance=duration)
    click.echo(f"advanced {duration}: {result['timers']} timer(s) ran")


@click.command()
@lab_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--kind", help="Only events of this kind (a prefix ending in .* matches a family).")
@json_option
@friendly
def events(lab_name: str | None, follow: bool, kind: str | None, as_json: bool) -> None:
    """Print the lab's events (SMTP dialogue, queue, deliveries, DNS, links)."""
    import time

    from lab.harness.control import request

    since = 0
    while True:
        batch = request(lab_name, "events", since=since)
        since = max([since, *(e["seq"] for e in batch)])
        shown = [
            e
            for e in batch
            if not kind
            or e["kind"] == kind
            or (kind.endswith(".*") and e["kind"].startswith(kind[:-1]))
        ]
        if as_json:
            for e in shown:
                click.echo(json.dumps(e, default=str))
        else:
            print_events(shown)
        if not follow:
            return
        time.sleep(0.5)


@click.command()
@lab_option
@click.argument("ref", metavar="ID")
@json_option
@friendly
def trace(lab_name: str | None, ref: str, as_json: bool) -> None:
    """Follow one message (a queue id or <Message-ID>) hop by hop."""
    from lab.harness.control import request

    result = request(lab_name, "trace", ref=ref)
    if as_json:
        emit_json(result)
        return
    if not result:
        raise LabError(f"no events about {ref!r}")
    print_events(result)
