"""The fidelity matrix (lab.harness.matrix, `maillab check --software`): which topologies
and cells are in it, what a cell records, the Markdown page. The built-in only: the real
MTAs' cells need Docker (make fidelity, pytest --lab-software)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import LabError, TopologyError
from lab.harness.matrix import (
    Cell,
    TopologyMatrix,
    parse_software,
    received_hosts,
    render_markdown,
    run_matrix,
    variant,
)
from lab.topology import load, load_text
from lab.topology.matrix import dut_of, not_applicable

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"


def loaded(name: str) -> tuple[str, object]:
    return f"topologies/{name}.yaml", load(TOPOLOGIES / f"{name}.yaml").model


def test_the_dut_is_the_hub_unless_marked() -> None:
    assert dut_of(load(TOPOLOGIES / "home-dialup.yaml").model) == "hub"
    assert dut_of(load(TOPOLOGIES / "home-dialup-postfix.yaml").model) is None  # dut: false
    assert dut_of(load(TOPOLOGIES / "lg45-envelope.yaml").model) == "heaven"  # dut: heaven
    assert dut_of(load(TOPOLOGIES / "mx-routing.yaml").model) is None  # no hub


def test_matrix_marks_are_validated() -> None:
    text = (TOPOLOGIES / "home-dialup.yaml").read_text()
    good = text + '\nmatrix:\n  not_on:\n    queued-while-down: {exim: "a reason"}\n'
    topology = load_text(good).model
    assert not_applicable(topology, "queued-while-down", "exim") == "a reason"
    assert not_applicable(topology, "queued-while-down", "postfix") is None
    for bad, words in (
        ("matrix: {dut: nosuchnode}", "nosuchnode"),
        ("matrix: {not_on: {no-such-check: {exim: why}}}", "no-such-check"),
        ("matrix: {not_on: {queued-while-down: {qmail: why}}}", "qmail"),
        ('matrix: {not_on: {queued-while-down: {exim: ""}}}', "say why"),
        ("matrix: {notes: {no-such-check: a note}}", "matrix.notes.no-such-check"),
    ):
        with pytest.raises(TopologyError, match=words):
            load_text(text + "\n" + bad + "\n")


def test_software_names() -> None:
    assert parse_software("all") == ["builtin", "postfix", "exim", "sendmail"]
    assert parse_software("exim, builtin,exim") == ["exim", "builtin"]
    with pytest.raises(LabError, match="qmail"):
        parse_software("builtin,qmail")


def test_variant_swaps_the_dut_only() -> None:
    _, topology = loaded("home-dialup")
    copy, backend, why = variant(topology, "hub", "postfix")
    assert (backend, why) == ("docker", "")
    assert copy is not None and copy.nodes["hub"].software.smtp == "postfix"
    assert topology.nodes["hub"].software.smtp is None  # the original is left alone
    copy, backend, _ = variant(topology, "hub", "builtin")
    assert backend == "inprocess"


def test_a_dut_with_its_own_configuration_is_not_applicable_elsewhere() -> None:
    _, topology = loaded("office-postfix")
    copy, _, why = variant(topology, "hub", "exim")
    assert copy is None and "own postfix configuration" in why
    assert variant(topology, "hub", "postfix")[1] == "docker"


def test_builtin_cells_record_where_messages_ended() -> None:
    rows = run_matrix([loaded("home-dialup"), loaded("mx-routing")], ["builtin"])
    assert [r.file for r in rows] == ["topologies/home-dialup.yaml"]  # mx-routing: no DUT
    row = rows[0]
    cell = row.cells["queued-while-down", "builtin"]
    assert cell.status == "passed" and cell.backend == "inprocess"
    assert cell.outcome[0] == "send 1: accepted by moriah.shofar.org.uk"
    assert any(
        line.startswith("delivered paulmidgley@freeuk.com in freeuk:paulmidgley,")
        and "Received by scrabble.freeuk.net < mail.uklinux.net < moriah.shofar.org.uk" in line
        for line in cell.outcome
    )
    assert not row.differs("queued-while-down")


def test_bounces_and_queues_are_recorded() -> None:
    row = run_matrix([loaded("queue-lifecycle")], ["builtin"], ["returned-after-5-days"])[0]
    outcome = row.cells["returned-after-5-days", "builtin"].outcome
    assert any(line.startswith("DSN (failed) from hub to ") for line in outcome), outcome


def test_markdown_shows_differences_side_by_side() -> None:
    row = TopologyMatrix("topologies/x.yaml", "x", "hub", ["builtin", "postfix", "exim"], ["c"])
    row.cells["c", "builtin"] = Cell("c", "builtin", "passed", outcome=["send 1: accepted"])
    row.cells["c", "postfix"] = Cell(
        "c", "postfix", "failed", "step 2 (expect): no", outcome=["send 1: refused 550 5.7.1"]
    )
    row.cells["c", "exim"] = Cell("c", "exim", "n/a", "hub has its own postfix configuration")
    assert row.differs("c")
    text = render_markdown([row])
    assert "| topologies/x.yaml (hub) | [c](#x-c) | pass | **FAIL** | n/a |" in text
    assert "- topologies/x.yaml, exim (c): hub has its own postfix configuration" in text
    assert "| | builtin | postfix |" in text
    assert "| outcome | send 1: accepted | send 1: refused 550 5.7.1 |" in text


def test_notes_of_the_topology_are_listed() -> None:
    """A check that passes everywhere has no differences section; its matrix note says
    what the MTAs do their own way, in a section of its own."""
    row = TopologyMatrix("topologies/x.yaml", "x", "hub", ["builtin", "postfix"], ["c", "d"])
    for check in ("c", "d"):
        for name in row.software:
            row.cells[check, name] = Cell(check, name, "passed", outcome=["send 1: accepted"])
    row.notes = {"c": "Postfix warns at its\n first try | later."}
    text = render_markdown([row])
    assert "## Notes: the MTAs' own behaviour where the checks allow it" in text
    assert "- topologies/x.yaml, c: Postfix warns at its first try \\| later." in text
    assert "topologies/x.yaml, d:" not in text
    assert "None: every check that ran had the same outcome on every software." in text
    notes = load(TOPOLOGIES / "queue-lifecycle.yaml").model.matrix.notes
    assert set(notes) == {"delay-warning-after-4h", "returned-after-5-days"}


def test_received_hosts_newest_first() -> None:
    import email

    message = email.message_from_string(
        "Received: from a (a [1.2.3.4])\n\tby mx.example.com (Postfix) with ESMTP id X;"
        " Mon, 1 Jan 2001\nReceived: from pc by Hub.Lan. with SMTP; Mon\n\nbody\n"
    )
    assert received_hosts(message) == ["mx.example.com", "hub.lan"]


def test_the_command_writes_the_page_and_json(tmp_path: Path) -> None:
    out = tmp_path / "fidelity.md"
    files = [str(TOPOLOGIES / f"{n}.yaml") for n in ("lg45-envelope-fixed", "office-postfix")]
    command = [sys.executable, "-m", "lab.cli", "check", "--software=builtin", "--json"]
    run = subprocess.run(
        [*command, f"--write={out}", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [t["dut"] for t in data["topologies"]] == ["heaven", "hub"]
    office = data["topologies"][1]["checks"]["local-mail-stays-in-the-office"]["builtin"]
    assert office["status"] == "n/a"
    page = out.read_text()
    assert page.startswith("# Fidelity matrix")
    assert "| envelope-rewritten-delivered | pass |" in page


def test_write_needs_software() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.cli",
            "check",
            "--write",
            "x.md",
            "topologies/home-dialup.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--write needs --software" in run.stderr
