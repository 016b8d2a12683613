"""The commands for running labs, as a person types them: `maillab up`, `status`, `send`,
`queue`, `link`, `mailbox`, `clock`, `events`, `trace`, `down`, and `shell` refusing an
in-process lab.

Every command runs as its own process (`python -m lab ...`), and every test has its own
registry of running labs ($MAILLAB_HOME under tmp_path), so parallel test workers never
see each other's labs. Labs started here are always stopped, whatever the test does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from conftest import SmtpWire

from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
TOPOLOGY = load(HOME_DIALUP).model
NO_LAB = "no lab is running; start one with `maillab up FILE` (or `make lab-up`)"
ENDPOINT = re.compile(r"^127\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5}$")
QUEUE_ID = re.compile(r"^[0-9A-F]{10}$")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Maillab:
    """The `maillab` command, run with its own registry of labs."""

    home: Path
    env: dict[str, str]

    @property
    def registry(self) -> Path:
        return self.home / "labs"

    def __call__(self, *args: str, timeout: float = 60) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "lab", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str) -> Run:
        run = self(*args)
        assert run.code == 0, f"maillab {' '.join(args)} exited {run.code}: {run.err}"
        assert "Traceback" not in run.err, run.err
        return run

    def up(self, name: str) -> Run:
        return self.ok("up", str(HOME_DIALUP), "-d", "--name", name)

    def entries(self) -> dict[str, dict[str, Any]]:
        """The registry's lab entries (running or not), by name."""
        found = {}
        for path in sorted(self.registry.glob("*.json")):
            info = json.loads(path.read_text())
            found[info["name"]] = info
        return found


def fails(run: Run, message: str) -> None:
    """A command that failed for a person: exit 1, one line on stderr, no traceback."""
    assert run.code == 1, (run.code, run.out, run.err)
    assert "Traceback" not in run.err, run.err
    assert run.err.strip() == message
    assert run.out == ""


def gone(pid: int) -> bool:
    """True when the process has ended (or is only waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def maillab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Maillab]:
    """`maillab` with MAILLAB_HOME in tmp_path; stops every lab still registered after."""
    home = tmp_path / "maillab-home"
    monkeypatch.setenv("MAILLAB_HOME", str(home))
    command = Maillab(home, dict(os.environ))
    yield command
    for name, info in command.entries().items():
        command("down", "--lab", name)
        pid = int(info.get("pid", 0))
        if pid and not wait_until(lambda pid=pid: gone(pid), 5):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dialup(maillab: Maillab) -> tuple[str, Run]:
    """home-dialup running in the background under a name of its own."""
    name = "dialup-cli"
    return name, maillab.up(name)


def table_rows(out: str) -> dict[str, list[str]]:
    """The node table printed by `up` and `status`: node -> its cells."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[0] in TOPOLOGY.nodes:
            rows[cells[0]] = cells
    return rows


class Background:
    """`maillab ARGS` running on its own: stdout read line by line in a thread, stderr kept
    in a file. Used as a context manager, which always ends the process."""

    def __init__(self, maillab: Maillab, *args: str):
        self.errors = maillab.home.parent / f"stderr-{args[0]}-{id(self):x}"
        with self.errors.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lab", *args],
                cwd=ROOT,
                env=maillab.env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, done: Callable[[str], bool], timeout: float) -> list[str]:
        """Lines up to and with the first one for which `done` is true."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; read so far: {lines}") from None
            if line is None:
                raise AssertionError(f"output ended; read: {lines}; stderr: {self.stderr}")
            lines.append(line)
            if done(line):
                return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, list[str]]:
        """Send `sig`, wait for the end; (exit code, the lines not read yet)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.thread.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        rest = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return code, rest

    @property
    def stderr(self) -> str:
        return self.errors.read_text()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.proc.stdout or not self.proc.stdout.closed:
            self.stop(signal.SIGKILL)


# --- up -d, status ------------------------------------------------------------------------


def test_up_detached_prints_the_node_table_and_returns(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    name, run = dialup
    lines = run.out.splitlines()
    assert lines[0] == f"lab {name!r} (topology home-dialup) is up (inprocess backend, 8 nodes)"
    assert lines[1].split() == ["NODE", "HOSTNAME", "SERVICES", "ADDRESSES", "ENDPOINTS"]
    rows = table_rows(run.out)
    assert list(rows) == list(TOPOLOGY.nodes)
    hub = rows["hub"]
    assert hub[1:5] == [
        "moriah.shofar.org.uk",
        "fetch,smtp",
        "lan=192.168.10.1",
        "internet=10.20.9.201",
    ]
    assert hub[5].startswith("smtp=") and ENDPOINT.match(hub[5][5:])
    assert rows["isp"][4].startswith("smtp=") and rows["isp"][5].startswith("pop3=")
    assert rows["pc1"][1:] == ["pc1.shofar.org.uk", "client", "lan=192.168.10.11"]
    assert "  link dialup: down (hub on internet)" in lines
    assert "  You connect from this machine as pc1 (192.168.10.11)." in lines
    host, port = hub[5][5:].split(":")
    assert f"  Try: telnet {host} {port}" in lines
    assert re.fullmatch(
        rf"  Running in the background \(pid \d+\); `maillab down --lab {name}` stops it\.",
        lines[-1],
    )
    # the command returned, and the lab runs on in a process registered under its name
    entries = maillab.entries()
    assert list(entries) == [name]
    pid = int(lines[-1].split("pid ")[1].split(")")[0])
    assert entries[name]["pid"] == pid
    assert not gone(pid)
    assert entries[name]["backend"] == "inprocess"
    assert Path(entries[name]["socket"]).is_socket()


def test_status_json_has_the_contract_shape(maillab: Maillab, dialup: tuple[str, Run]) -> None:
    status = maillab.ok("status", "--json").json
    assert isinstance(status["name"], str) and status["name"]
    assert status["backend"] == "inprocess"
    assert list(status["nodes"]) == list(TOPOLOGY.nodes)
    services = {"smtp", "pop3", "dns"}
    for node_name, node in status["nodes"].items():
        spec = TOPOLOGY.nodes[node_name]
        assert {"hostname", "addresses", "endpoints"} <= set(node), node_name
        assert node["hostname"] == (spec.hostname or node_name)
        assert node["addresses"] == {net: str(address) for net, address in spec.networks.items()}
        for address in node["addresses"].values():
            ipaddress.IPv4Address(address)
        for key, endpoint in node["endpoints"].items():
            service, _, network = key.partition("@")
            assert service in services, key
            assert not network or network in node["addresses"], key
            assert ENDPOINT.match(endpoint), endpoint
        plain = {k for k in node["endpoints"] if "@" not in k}
        expected = {s.value for s in spec.service_set()} & services
        assert plain == expected, node_name
    assert (
        status["nodes"]["hub"]["endpoints"]["smtp"]
        == status["nodes"]["hub"]["endpoints"]["smtp@lan"]
    )
    assert set(status["links"]) == {"dialup"}
    assert status["links"]["dialup"]["state"] == "down"
    # the plain form prints the same table as `up`
    plain_status = maillab.ok("status")
    assert table_rows(plain_status.out) == table_rows(dialup[1].out)


def test_status_name_is_the_name_given_to_up(maillab: Maillab) -> None:
    run = maillab.up("my-lab")
    assert run.out.splitlines()[0] == (
        "lab 'my-lab' (topology home-dialup) is up (inprocess backend, 8 nodes)"
    )
    assert maillab.ok("status", "--json").json["name"] == "my-lab"


# --- the tour: send, queue, link, mailbox, clock, events, trace ------------------------------


def test_send_queue_link_mailbox_clock_events_trace(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    run = maillab.ok(
        "send", "--from-node", "pc1", "--mail-from", "eddy@shofar.org.uk",
        "--to", "paulmidgley@freeuk.com", "--subject", "NELUG meeting",
    )  # fmt: skip
    queue_id = run.out.strip()
    assert QUEUE_ID.match(queue_id), run.out

    # queued on the hub: the modem is down
    entries = maillab.ok("queue", "hub", "--json").json
    assert len(entries) == 1
    entry = entries[0]
    assert entry["id"] == queue_id
    assert entry["envelope_from"] == "eddy@shofar.org.uk"
    assert entry["recipients"] == ["paulmidgley@freeuk.com"]
    assert entry["attempts"] >= 1
    text = maillab.ok("queue", "hub").out.splitlines()
    assert text[0] == f"{queue_id}  <eddy@shofar.org.uk>  attempts={entry['attempts']}"
    assert text[1] == "    paulmidgley@freeuk.com"
    assert maillab.ok("mailbox", "freeuk", "paulmidgley", "--json").json == []

    # `events --follow` sees the link come up while it runs
    with Background(maillab, "events", "--follow", "--kind", "link.*", "--json") as follower:
        assert maillab.ok("link", "dialup", "up").out == "link dialup: up\n"
        followed = follower.until(lambda line: '"link.up"' in line, timeout=15)
        follower.stop()
    kinds = [json.loads(line)["kind"] for line in followed]
    assert kinds[0] == "link.initial"
    assert kinds[-1] == "link.up"
    assert set(kinds) <= {"link.initial", "link.up", "link.hook"}

    assert maillab.ok("status", "--json").json["links"]["dialup"]["state"] == "up"
    assert maillab.ok("queue", "hub", "--json").json == []
    assert maillab.ok("queue", "hub").out == "hub: mail queue is empty\n"
    messages = maillab.ok("mailbox", "freeuk", "paulmidgley", "--json").json
    assert len(messages) == 1
    message = messages[0]
    assert set(message) >= {"id", "envelope_from", "raw"}
    assert message["envelope_from"] == "eddy@shofar.uklinux.net"
    assert message["raw"].startswith("Return-Path: <eddy@shofar.uklinux.net>\r\n")
    assert "\r\nSubject: NELUG meeting\r\n" in message["raw"]
    assert "\r\nFrom: eddy@shofar.uklinux.net\r\n" in message["raw"]
    assert f"id {queue_id}\r\n" in message["raw"]
    shown = maillab.ok("mailbox", "freeuk", "paulmidgley").out
    assert shown.startswith(f"=== {message['id']} (envelope from <eddy@shofar.uklinux.net>)\n")
    assert "\r" not in shown

    # four hours of lab time
    before = maillab.ok("status", "--json").json["clock"]["time"]
    advanced = maillab.ok("clock", "advance", "4h").out
    assert re.fullmatch(r"advanced 4h: \d+ timer\(s\) ran\n", advanced)
    after = maillab.ok("status", "--json").json["clock"]["time"]
    assert 4 * 3600 <= after - before < 4 * 3600 + 60

    # every line of `events --json` is an event
    lines = maillab.ok("events", "--json").out.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(set(e) == {"seq", "time", "node", "kind", "data"} for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = {(e["node"], e["kind"]) for e in events}
    assert {
        ("hub", "queue.queued"),
        ("freeuk", "mailbox.delivered"),
        ("lab", "clock.advanced"),
    } <= kinds
    advanced_events = [e for e in events if e["kind"] == "clock.advanced"]
    assert [e["data"]["seconds"] for e in advanced_events] == [14400]
    only = maillab.ok("events", "--kind", "delivery.*", "--json").out.splitlines()
    assert only and all(json.loads(line)["kind"].startswith("delivery.") for line in only)
    plain = maillab.ok("events", "--kind", "mailbox.delivered").out.splitlines()
    assert len(plain) == 1
    assert re.match(
        r"^#\d+ freeuk +mailbox\.delivered +id=[0-9A-F]{10} user=paulmidgley ", plain[0]
    )

    # the trace follows the message hop by hop
    trace = maillab.ok("trace", queue_id).out.splitlines()
    assert all(re.match(r"^#\d+ \S+ +\S+", line) for line in trace)
    hops = [(line.split()[1], line.split()[2]) for line in trace]
    queued = [node for node, kind in hops if kind == "queue.queued"]
    assert queued == ["hub", "isp", "freeuk"]
    assert ("freeuk", "mailbox.delivered") in hops
    assert any(f"id={queue_id}" in line for line in trace)
    as_json = maillab.ok("trace", queue_id, "--json").json
    assert [e["seq"] for e in as_json] == [int(line.split()[0][1:]) for line in trace]


def test_telnet_from_this_machine_is_seen_as_the_operator(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    _, run = dialup
    telnet = next(line for line in run.out.splitlines() if line.startswith("  Try: telnet "))
    host, port = telnet.split()[2:4]
    with SmtpWire(f"{host}:{port}") as session:
        assert session.reply() == (220, ["220 moriah.shofar.org.uk ESMTP maillab"])
        code, lines = session.cmd("EHLO heaven.home")
        assert code == 250
        assert lines[0] == (
            "250-moriah.shofar.org.uk Hello heaven.home [192.168.10.11], pleased to meet you"
        )
        assert session.code("MAIL FROM:<eddy@shofar.org.uk>") == 250
        assert session.code("RCPT TO:<paulmidgley@freeuk.com>") == 250
        assert session.code("DATA") == 354
        session.send(b"Subject: hello from the LAN\r\n\r\nThe modem is down.\r\n.\r\n")
        code, lines = session.reply()
        assert code == 250, lines
        queue_id = lines[0].split()[2]
        assert session.code("QUIT") == 221

    assert [e["id"] for e in maillab.ok("queue", "hub", "--json").json] == [queue_id]
    maillab.ok("link", "dialup", "up")
    (message,) = maillab.ok("mailbox", "freeuk", "paulmidgley", "--json").json
    raw = message["raw"]
    assert "\r\nSubject: hello from the LAN\r\n" in raw
    received = re.findall(r"(?m)^Received: ([^\r\n]*(?:\r\n\t[^\r\n]*)*)", raw)
    assert len(received) == 3
    first_hop = re.sub(r"\s+", " ", received[-1])
    assert first_hop.startswith("from heaven.home ([192.168.10.11]) by moriah.shofar.org.uk ")
    assert f" id {queue_id} " in first_hop
    assert "127.0.0.1" not in raw
    connects = maillab.ok("events", "--kind", "smtp.connect", "--json").out.splitlines()
    at_hub = [json.loads(line)["data"] for line in connects if '"node": "hub"' in line]
    assert at_hub[0] == {"peer": "192.168.10.11", "local": "192.168.10.1", "session": ANY}


# --- mistakes, and commands without a lab ---------------------------------------------------


def test_mistakes_give_one_line_errors_without_traceback(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    name, _ = dialup
    fails(
        maillab("clock", "advance", "4x"),
        "expected a duration such as 90s, 30m, 4h, 5d or 1h30m (units ms s m h d w), got '4x'",
    )
    fails(maillab("status", "--lab", "nosuch"), f"no running lab named 'nosuch' (running: {name})")
    fails(maillab("down", "--lab", "nosuch"), f"no running lab named 'nosuch' (running: {name})")
    nodes = ", ".join(TOPOLOGY.nodes)
    fails(maillab("queue", "nosuch"), f"unknown node 'nosuch'; expected one of: {nodes}")
    fails(maillab("link", "modem", "up"), "unknown link 'modem'; expected one of: dialup")
    fails(maillab("trace", "0000000000"), "no events about '0000000000'")
    # the DNS server shares only the internet with the hub, and the modem is down
    cut_off = maillab("send", "--from-node", "dns", "--mail-from", "", "--to", "eddy@shofar.org.uk")
    fails(
        cut_off,
        "not accepted by moriah.shofar.org.uk: cannot connect to"
        " moriah.shofar.org.uk[10.20.9.201]:25: connection refused: hub's link to internet is down",
    )
    # the lab is unharmed by all of that
    assert maillab.ok("status", "--lab", name, "--json").json["links"]["dialup"]["state"] == "down"


def test_send_refused_at_rcpt_reports_the_refusal(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    refused = maillab(
        "send", "--from-node", "pc1", "--mail-from", "eddy@shofar.org.uk",
        "--to", "nobody@shofar.org.uk",
    )  # fmt: skip
    fails(
        refused,
        "not accepted by moriah.shofar.org.uk: 550 5.1.1 <nobody@shofar.org.uk>... User unknown",
    )


def test_commands_without_a_running_lab_say_so(maillab: Maillab) -> None:
    for args in (
        ["status"],
        ["status", "--json"],
        ["down"],
        ["send", "--from-node", "pc1", "--mail-from", "eddy@shofar.org.uk", "--to", "x@y.org"],
        ["queue", "hub", "--json"],
        ["link", "dialup", "up"],
        ["mailbox", "freeuk", "paulmidgley"],
        ["clock", "advance", "1h"],
        ["events", "--json"],
        ["trace", "0000000000"],
    ):
        fails(maillab(*args), NO_LAB)
    assert maillab.entries() == {}


def test_two_labs_at_once_need_lab(maillab: Maillab) -> None:
    maillab.up("first")
    maillab.up("second")
    several = "several labs are running (first, second); choose one with --lab NAME"
    fails(maillab("status"), several)
    fails(maillab("queue", "hub"), several)
    fails(maillab("down"), several)
    # a name already running is refused
    again = maillab("up", str(HOME_DIALUP), "-d", "--name", "second")
    fails(
        again,
        "a lab named 'second' is already running; stop it with `maillab down --lab second`"
        " or choose another --name",
    )
    first = maillab.ok("status", "--lab", "first", "--json").json
    second = maillab.ok("status", "--lab", "second", "--json").json
    assert first["nodes"]["hub"]["endpoints"]["smtp"] != second["nodes"]["hub"]["endpoints"]["smtp"]

    # each acts on its own lab only
    maillab.ok("link", "--lab", "second", "dialup", "up")
    assert (
        maillab.ok("status", "--lab", "first", "--json").json["links"]["dialup"]["state"] == "down"
    )
    assert (
        maillab.ok("status", "--lab", "second", "--json").json["links"]["dialup"]["state"] == "up"
    )

    assert maillab.ok("down", "--lab", "first").out == "lab 'first' is down\n"
    assert list(maillab.entries()) == ["second"]
    # one left: --lab is optional again
    assert maillab.ok("status", "--json").json["links"]["dialup"]["state"] == "up"


def test_down_stops_the_lab_and_empties_the_registry(
    maillab: Maillab, dialup: tuple[str, Run]
) -> None:
    name, _ = dialup
    info = maillab.entries()[name]
    pid = int(info["pid"])
    assert maillab.ok("down").out == f"lab '{name}' is down\n"
    assert wait_until(lambda: gone(pid)), f"the lab process {pid} is still running"
    fails(maillab("status"), NO_LAB)
    assert maillab.entries() == {}
    assert list(maillab.registry.glob("*.sock")) == []
    assert not Path(info["socket"]).exists()
    assert not Path(info["state_dir"]).exists()


# --- up in the foreground -------------------------------------------------------------------


def test_up_in_the_foreground_until_ctrl_c(maillab: Maillab) -> None:
    with Background(maillab, "up", str(HOME_DIALUP), "--name", "front") as lab:
        printed = lab.until(lambda line: "Press Ctrl-C" in line, timeout=30)
        assert printed[0] == "lab 'home-dialup' is up (inprocess backend, 8 nodes)"
        assert printed[-1] == "  Press Ctrl-C to stop the lab."
        assert list(maillab.entries()) == ["front"]
        assert maillab.entries()["front"]["pid"] == lab.proc.pid

        status = maillab.ok("status", "--json").json
        hub_smtp = status["nodes"]["hub"]["endpoints"]["smtp"]
        assert f"smtp={hub_smtp}" in table_rows("\n".join(printed))["hub"]
        sent = maillab.ok(
            "send", "--from-node", "pc2", "--mail-from", "keith@shofar.org.uk",
            "--to", "eddy@shofar.org.uk",
        )  # fmt: skip
        assert QUEUE_ID.match(sent.out.strip())

        code, rest = lab.stop(signal.SIGINT)
        assert code == 0, lab.stderr
        assert "Traceback" not in lab.stderr
        assert rest == ["", "stopping"]
    assert maillab.entries() == {}
    assert list(maillab.registry.glob("*.sock")) == []
    fails(maillab("status"), NO_LAB)


def test_clock_takes_lab_before_or_after_advance(maillab: Maillab, dialup: tuple[str, Run]) -> None:
    """The contract's form is `maillab clock [--lab NAME] advance DURATION`."""
    name, _ = dialup
    before = maillab.ok("status", "--json").json["clock"]["time"]
    maillab.ok("clock", "--lab", name, "advance", "1m")
    maillab.ok("clock", "advance", "--lab", name, "1m")
    after = maillab.ok("status", "--json").json["clock"]["time"]
    assert 120 <= after - before < 180


def test_shell_refuses_an_inprocess_lab_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "MAILLAB_HOME": str(tmp_path / "home")}
    name = f"inproc-{os.getpid()}"
    maillab = [sys.executable, "-m", "lab"]
    up = subprocess.run(
        [*maillab, "up", str(ROOT / "topologies" / "lg45-envelope.yaml"), "--name", name, "-d"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert up.returncode == 0, up.stderr
    try:
        shell = subprocess.run(
            [*maillab, "shell", "--lab", name, "pc"], env=env, capture_output=True, text=True
        )
        assert shell.returncode != 0
        assert "Traceback" not in shell.stderr
        assert "inprocess backend" in shell.stderr + shell.stdout
    finally:
        subprocess.run([*maillab, "down", "--lab", name], env=env, capture_output=True)
