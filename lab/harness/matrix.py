"""The fidelity matrix: every check of a topology with a device under test (its `matrix:`
`dut`, by default the hub), run with that node's MTA as each software in turn.

    from lab.harness.matrix import run_matrix
    from lab.topology import load

    rows = run_matrix([("topologies/home-dialup.yaml", load("topologies/home-dialup.yaml").model)],
                      ["builtin", "postfix"])
    print(render_markdown(rows))

Each (topology, software) gets its variant of the topology: a copy in which the DUT's
smtp software is the one asked for. A variant the software cannot run (a field it cannot
honour, a configuration written for another MTA) is "not applicable" with the reason
lab.software gives; so is a check the topology marks `not_on` that software. The builtin
variant runs in process when every other node can; real MTAs run on Docker. Each check's
outcome is recorded for comparison: the replies to each submission, where each message
ended (mailbox, envelope sender, the hosts of its Received chain), the DSNs sent, the
rejections, what is left in the DUT's queue.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from lab.errors import LabError
from lab.harness.checks import CheckResult, run_check
from lab.harness.lab import Lab
from lab.harness.pool import LabPool
from lab.software import check_topology
from lab.topology.matrix import MATRIX_SOFTWARE, dut_of, not_applicable
from lab.topology.model import Service, Software, Topology

CellStatus = Literal["passed", "failed", "n/a"]
_ACCEPTED = re.compile(r"^accepted by (\S+) as [^\s;]+(.*)$", re.S)
_REFUSED = re.compile(r"^refused by (\S+) at (\w+): (\d{3})(?:[ -](\d\.\d{1,3}\.\d{1,3}))?")
_BY = re.compile(r"\bby\s+([^\s;()]+)", re.I)


@dataclass
class Cell:
    """One check on one software: passed, failed or not applicable, and what happened."""

    check: str
    software: str
    status: CellStatus
    reason: str = ""  # why not applicable, or the failing step in a line
    backend: str = ""
    outcome: list[str] = field(default_factory=list)
    result: CheckResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "software": self.software,
            "status": self.status,
            "reason": self.reason,
            "backend": self.backend,
            "outcome": self.outcome,
            "result": None if self.result is None else self.result.to_json(),
        }


@dataclass
class TopologyMatrix:
    """The matrix of one topology: its checks by the software of its DUT."""

    file: str
    topology: str
    dut: str
    software: list[str]
    checks: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    duration: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)  # check -> the topology's note

    def differs(self, check: str) -> bool:
        """Whether the outcomes (or the verdicts) of `check` differ between software."""
        ran = [self.cells[check, s] for s in self.software if self.cells[check, s].status != "n/a"]
        return len({(c.status, tuple(c.outcome)) for c in ran}) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "topology": self.topology,
            "dut": self.dut,
            "software": self.software,
            "duration": round(self.duration, 2),
            "checks": {
                check: {s: self.cells[check, s].to_json() for s in self.software}
                for check in self.checks
            },
        }


def parse_software(value: str) -> list[str]:
    """'builtin,postfix' -> ['builtin', 'postfix'] ('all': the four MTAs)."""
    names = list(MATRIX_SOFTWARE) if value == "all" else [v.strip() for v in value.split(",")]
    names = [n for n in dict.fromkeys(names) if n]
    unknown = [n for n in names if n not in MATRIX_SOFTWARE]
    if unknown or not names:
        raise LabError(
            f"--software {value!r}: expected one or more of {', '.join(MATRIX_SOFTWARE)}, or all"
        )
    return names


def variant(topology: Topology, dut: str, software: str) -> tuple[Topology | None, str, str]:
    """(the topology with the DUT's MTA as `software`, the backend to run it on, '') or
    (None, '', why it cannot run)."""
    copy = topology.model_copy(deep=True)
    node = copy.nodes[dut]
    current = node.software_for(Service.smtp)
    if current.value != software and (
        node.config_for(Service.smtp) is not None or node.settings_for(Service.smtp)
    ):
        return None, "", f"{dut} has its own {current.value} configuration (config:, settings:)"
    node.software.smtp = Software(software)
    backends = ["inprocess", "docker"] if software == "builtin" else ["docker"]
    why = ""
    for backend in backends:
        try:
            check_topology(copy, backend)
        except LabError as exc:
            why = str(exc)
            continue
        return copy, backend, ""
    return None, "", why


def _reply_outcome(detail: str) -> str:
    """A send step's result without the queue id or the reply's wording."""
    accepted = _ACCEPTED.match(detail)
    if accepted:
        partly = re.findall(r"; (\S+) refused: (\d{3})", accepted.group(2))
        note = "".join(f", {rcpt} refused {code}" for rcpt, code in partly)
        return f"accepted by {accepted.group(1)}{note}"
    refused = _REFUSED.match(detail)
    if refused:
        server, stage, code, status = refused.groups()
        return f"refused by {server} at {stage}: {code}" + (f" {status}" if status else "")
    return detail.splitlines()[0] if detail else "(no reply)"


def received_hosts(message: Any) -> list[str]:
    """The hosts that added the Received fields of a message, newest first."""
    hosts = []
    for value in message.get_all("Received") or []:
        found = _BY.search(" ".join(str(value).split()))
        hosts.append(found.group(1).lower().rstrip(".") if found else "?")
    return hosts


def replies_of(result: CheckResult) -> list[str]:
    """The replies to the check's submissions, in step order."""
    return [
        f"send {step.index}: {_reply_outcome(step.detail)}"
        for step in result.steps
        if step.description.startswith("send ") and step.status == "passed"
    ]


def outcome_of(lab: Lab, dut: str) -> list[str]:
    """Where the check's messages ended, in lines that compare across software (sorted)."""
    ended: list[str] = []
    mailboxes: dict[tuple[str, str], list[Any]] = {}
    for e in lab.events:
        if e.kind == "mailbox.delivered":
            where = (e.node, str(e.get("user")))
            if where not in mailboxes:
                try:
                    mailboxes[where] = [m.message for m in lab.mailbox(*where)]
                except Exception:
                    mailboxes[where] = []
            chains = [" < ".join(received_hosts(m)) for m in mailboxes[where]]
            sender = e.get("envelope_from") or "<>"
            line = f"delivered {e.get('rcpt')} in {e.node}:{e.get('user')}, sender {sender}"
            ended.append(line + (f", Received by {'; '.join(sorted(set(chains)))}" * bool(chains)))
        elif e.kind == "dsn.sent":
            status = ",".join(map(str, e.get("status") or []))
            to = e.get("to") or "<>"
            ended.append(f"DSN ({e.get('action')}) from {e.node} to {to}: {status}")
        elif e.kind == "policy.reject":
            code = str(e.get("reply") or "")[:9].strip()
            ended.append(f"rejected by {e.node} at {e.get('stage')}: {code}")
    try:
        queued = len(lab.queue(dut))
    except Exception:
        queued = 0
    if queued:
        ended.append(f"{queued} message(s) left in the queue of {dut}")
    return sorted(set(ended))


class _RecordingPool(LabPool):
    """A pool that records the outcome of the check its lab ran, before the reset."""

    def __init__(self, dut: str):
        super().__init__()
        self.dut = dut
        self.outcome: list[str] = []

    def release(self, lab: Lab) -> None:
        try:
            self.outcome = outcome_of(lab, self.dut)
        finally:
            super().release(lab)


def run_matrix(
    loaded: Iterable[tuple[str, Topology]],
    software: list[str],
    names: Iterable[str] = (),
    on_cell: Callable[[TopologyMatrix, Cell], None] | None = None,
) -> list[TopologyMatrix]:
    """The matrix of each topology with a DUT: its checks (or the named ones) by software."""
    import time

    wanted = set(names)
    rows: list[TopologyMatrix] = []
    for file, topology in loaded:
        dut = dut_of(topology)
        checks = [c for c in topology.checks if not wanted or c in wanted]
        if dut is None or not checks:
            continue
        row = TopologyMatrix(file, topology.name, dut, list(software), checks)
        row.notes = {c: topology.matrix.notes[c] for c in checks if c in topology.matrix.notes}
        started = time.monotonic()
        for name in software:
            copy, backend, why = variant(topology, dut, name)
            pool = _RecordingPool(dut)
            try:
                for check in checks:
                    cell = _run_cell(copy, backend, why, check, name, pool, file, topology)
                    row.cells[check, name] = cell
                    if on_cell is not None:
                        on_cell(row, cell)
            finally:
                pool.close()  # one lab at a time: the next software's has the same name
        row.duration = time.monotonic() - started
        rows.append(row)
    return rows


def _run_cell(
    copy: Topology | None,
    backend: str,
    why: str,
    check: str,
    software: str,
    pool: _RecordingPool,
    file: str,
    topology: Topology,
) -> Cell:
    marked = not_applicable(topology, check, software)
    if marked is not None:
        return Cell(check, software, "n/a", marked)
    if copy is None:
        return Cell(check, software, "n/a", why)
    pool.outcome = []
    result = run_check(copy, check, backend=backend, file=file, pool=pool)
    outcome = replies_of(result) + pool.outcome
    failed = result.failed_step
    reason = ""
    if failed is not None:
        first = failed.detail.splitlines()[0] if failed.detail else ""
        reason = f"step {failed.index} ({failed.description}): {first}"
    elif result.error:
        reason = result.error.splitlines()[0]
    status: CellStatus = "passed" if result.ok else "failed"
    return Cell(check, software, status, reason, backend, outcome, result)


# ---------------------------------------------------------------------------------------
# the Markdown page (docs/fidelity.md)

MARK = {"passed": "pass", "failed": "**FAIL**", "n/a": "n/a"}
HEADER = """\
# Fidelity matrix: the built-in MTA against Postfix, Exim and sendmail

Generated by `make fidelity` (`maillab check --software builtin,postfix,exim,sendmail
topologies/*.yaml --write docs/fidelity.md`); do not edit it by hand.

How to read it. Each topology with a device under test (DUT: its `matrix: dut:`, by
default its one node with role hub) has its checks run with the DUT's MTA as each
software in turn; every other node stays as the topology has it. The table says for
each check whether it passed (**FAIL**: the check's expectations did not hold) or does
not apply (n/a: a check the topology marks `not_on` that software, or a DUT whose fields
or own configuration that software cannot honour; the reason is listed below the table).
The built-in runs in process, the real MTAs on the Docker backend.

Where the outcomes of a check differ between software, its section below shows them
side by side: the replies to each submission (`send N`, code and enhanced status, not
the wording), where each message ended (mailbox, envelope sender, the hosts that added
its Received fields, newest first), the DSNs sent (action, status), the rejections, and
what is left in the DUT's queue. Queue ids, times and reply texts are left out, so a
difference is a difference of behaviour. A difference between the built-in and all
three real MTAs is a fidelity gap of the built-in; one between real MTAs is theirs.
"""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<>", "&lt;&gt;").replace("\n", " ")


def render_markdown(rows: list[TopologyMatrix]) -> str:
    """docs/fidelity.md: the matrix, the reasons for n/a, the differences side by side."""
    software = list(dict.fromkeys(s for row in rows for s in row.software))
    out = [HEADER, "## The matrix", ""]
    out.append("| topology (DUT) | check | " + " | ".join(software) + " |")
    out.append("|---|---|" + "---|" * len(software))
    for row in rows:
        for check in row.checks:
            marks = []
            for name in software:
                cell = row.cells.get((check, name))
                marks.append("" if cell is None else MARK[cell.status])
            label = f"[{check}](#{_anchor(row, check)})" if row.differs(check) else check
            out.append(f"| {row.file} ({row.dut}) | {label} | " + " | ".join(marks) + " |")
    counts = {s: {"passed": 0, "failed": 0, "n/a": 0} for s in software}
    for row in rows:
        for (_, name), cell in row.cells.items():
            counts[name][cell.status] += 1
    out += [
        "",
        "Totals: "
        + "; ".join(
            f"{s} {c['passed']} passed, {c['failed']} failed, {c['n/a']} n/a"
            for s, c in counts.items()
        )
        + ".",
        "",
    ]
    reasons = [
        (row, cell)
        for row in rows
        for check in row.checks
        for name in software
        if (cell := row.cells.get((check, name))) is not None and cell.status == "n/a"
    ]
    if reasons:
        out += ["## Not applicable, and why", ""]
        seen: set[tuple[str, str, str]] = set()
        for row, cell in reasons:
            key = (row.file, cell.software, cell.reason)
            if key in seen:
                continue
            seen.add(key)
            which = [
                c.check
                for c in (row.cells.get((k, cell.software)) for k in row.checks)
                if c is not None and c.status == "n/a" and c.reason == cell.reason
            ]
            out.append(
                f"- {row.file}, {cell.software} ({', '.join(which)}): "
                + _escape(" ".join(cell.reason.split()))
            )
        out.append("")
    notes = [(row, check) for row in rows for check in row.checks if check in row.notes]
    if notes:
        out += ["## Notes: the MTAs' own behaviour where the checks allow it", ""]
        for row, check in notes:
            out.append(f"- {row.file}, {check}: " + _escape(" ".join(row.notes[check].split())))
        out.append("")
    out += ["## Differences", ""]
    any_difference = False
    for row in rows:
        for check in row.checks:
            if not row.differs(check):
                continue
            any_difference = True
            out += [f'<a id="{_anchor(row, check)}"></a>', "", f"### {row.file}: {check}", ""]
            ran = [s for s in software if (c := row.cells.get((check, s))) and c.status != "n/a"]
            out.append("| | " + " | ".join(ran) + " |")
            out.append("|---|" + "---|" * len(ran))
            cells = [row.cells[check, s] for s in ran]
            out.append(
                "| verdict | "
                + " | ".join(
                    MARK[c.status] + (f": {_escape(c.reason)}" if c.status == "failed" else "")
                    for c in cells
                )
                + " |"
            )
            out.append(
                "| outcome | "
                + " | ".join(
                    "<br>".join(_escape(line) for line in c.outcome) or "(nothing)" for c in cells
                )
                + " |"
            )
            out.append("")
    if not any_difference:
        out += ["None: every check that ran had the same outcome on every software.", ""]
    return "\n".join(out).rstrip() + "\n"


def _anchor(row: TopologyMatrix, check: str) -> str:
    stem = row.file.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    return f"{stem}-{check}".lower()
