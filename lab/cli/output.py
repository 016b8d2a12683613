"""What every command shares: errors for people, JSON, tables, events, common options."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

from lab.errors import LabError

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn a LabError into a message and an exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Rows of cells (the first is the heading) in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())


def print_events(events: Iterable[dict[str, Any]]) -> None:
    """Events as the control channel sends them (Event.to_json), one line each."""
    from lab.runtime.events import Event, format_events

    text = format_events(Event.from_json(e) for e in events)
    if text:
        click.echo(text)


lab_option = click.option(
    "--lab",
    "lab_name",
    metavar="NAME",
    help="The running lab to act on (default: the only one running).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
