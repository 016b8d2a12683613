"""What the commands share: the table printer, events as lines, message defaults."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from lab.cli import main
from lab.cli.output import print_events, print_table
from lab.runtime.events import Event
from lab.topology.checks import SendStep
from lab.topology.defaults import DEFAULT_BODY, DEFAULT_SUBJECT

ROOT = Path(__file__).resolve().parents[2]


def _printed(func: Callable[..., None], *args: Any, **kwargs: Any) -> str:
    @click.command()
    def command() -> None:
        func(*args, **kwargs)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    return result.output


def test_table_columns_are_as_wide_as_their_widest_cell() -> None:
    rows = [("NODE", "ADDRESS"), ("hub", "192.168.10.1"), ("pc1", "")]
    assert _printed(print_table, rows).splitlines() == [
        "NODE  ADDRESS",
        "hub   192.168.10.1",
        "pc1",
    ]
    assert _printed(print_table, rows, indent="  ").splitlines()[1] == "  hub   192.168.10.1"


def test_events_from_the_control_channel_print_as_the_harness_shows_them() -> None:
    events = [
        Event(7, 1.5, "hub", "queue.queued", {"id": "ABC", "size": 12}),
        Event(8, 2.0, "freeuk", "mailbox.delivered", {"user": "paul"}),
    ]
    printed = _printed(print_events, [e.to_json() for e in events])
    assert printed == (
        "#7 hub        queue.queued           id=ABC size=12\n"
        "#8 freeuk     mailbox.delivered      user=paul\n"
    )
    assert Event.from_json(events[0].to_json()) == events[0]
    assert _printed(print_events, []) == ""


def test_message_defaults_come_from_one_place() -> None:
    step = SendStep.model_validate({"from": "pc1", "mail_from": "a@b", "to": "c@d"})
    assert (step.subject, step.body) == (DEFAULT_SUBJECT, DEFAULT_BODY)
    send = main.commands["send"]
    subject = next(p for p in send.params if p.name == "subject")
    assert subject.default == DEFAULT_SUBJECT


def test_every_command_module_stays_small() -> None:
    for module in (ROOT / "lab" / "cli").glob("*.py"):
        lines = len(module.read_text().splitlines())
        assert lines < 400, f"{module.name} has {lines} lines"


def test_python_m_lab_cli_is_maillab() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "maillab, version 0.1.0\n")
