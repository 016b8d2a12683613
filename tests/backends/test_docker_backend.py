"""What only the Docker backend has: real hosts with the topology's addresses, links as
filters on real interfaces, labs of the same topology side by side, hands-on commands,
and clean-up after a lab whose process was killed.

The scenario stories and every topology check run on both backends elsewhere (the tests
that use `lab_factory`, such as tests/services/mta/test_mta_stories.py, and the checks
of topologies/*.yaml); these tests need a Docker engine (skipped without one, failing
under CI=true).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.backends.docker.labels import LABEL_KIND, LABEL_OWNER, LABEL_RUN
from lab.harness import Lab
from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
LG45 = ROOT / "topologies" / "lg45-envelope.yaml"

pytestmark = [pytest.mark.docker, pytest.mark.lab_backend("docker")]


def container(lab: Lab, node: str) -> Any:
    return lab.backend.containers[node]


def run_in(lab: Lab, node: str, script: str, timeout: float = 30) -> tuple[int, str]:
    """Run a Python script in a node's container; (exit code, output)."""
    result = container(lab, node).exec_run(["timeout", str(timeout), "python3", "-c", script])
    return result.exit_code, result.output.decode("utf-8", "replace")


CONNECT = """
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection(({address!r}, {port}), timeout={timeout})
    print("connected", round(time.monotonic() - t, 2))
except ConnectionRefusedError:
    print("refused", round(time.monotonic() - t, 2))
except (TimeoutError, socket.timeout):
    print("timeout", round(time.monotonic() - t, 2))
except OSError as exc:
    print("error", exc.errno, round(time.monotonic() - t, 2))
"""


def connect_from(lab: Lab, node: str, address: str, port: int = 25, timeout: float = 2) -> str:
    code, out = run_in(lab, node, CONNECT.format(address=address, port=port, timeout=timeout))
    assert code == 0, out
    return out.split()[0]


def test_hosts_have_the_topology_addresses_and_names(
    lab_factory: Callable[..., Lab], docker_client: Any
) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        hub = container(lab, "hub")
        out = hub.exec_run(["ip", "-4", "-o", "addr"]).output.decode()
        assert "192.168.10.1/24" in out and "10.20.9.201/16" in out, out
        assert hub.exec_run(["hostname", "-f"]).output.decode().strip() in (
            "moriah.shofar.org.uk",
            "moriah",
        )
        # pc1 resolves through the lab DNS and reaches the hub by name
        dig = container(lab, "pc1").exec_run(["dig", "+short", "MX", "freeuk.com"])
        assert dig.output.decode().split() == ["10", "scrabble.freeuk.net."]
        assert connect_from(lab, "pc1", "hub") == "connected"
        # the hub sees pc1 as 192.168.10.11, as the topology says
        result = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["keith@shofar.org.uk"])
        assert result.accepted, result.to_json()
        message = lab.assert_delivered("keith@shofar.org.uk", node="hub", mailbox="keith")
        assert "[192.168.10.11]" in message["Received"]
        status = lab.status()
        assert status["backend"] == "docker"
        assert status["nodes"]["hub"]["addresses"] == {
            "lan": "192.168.10.1",
            "internet": "10.20.9.201",
        }
        assert status["links"]["dialup"]["state"] == "down"


def test_a_refusing_link_refuses_both_ways_and_cuts_open_connections(
    lab_factory: Callable[..., Lab], docker_client: Any
) -> None:
    # a lab of its own: the exec's output stream below stays open until the lab's engine
    # client is closed, which its down does
    with lab_factory(HOME_DIALUP, fresh=True) as lab:
        # down at start (refuse): both ends fail at once
        assert connect_from(lab, "isp", "10.20.9.201") == "refused"
        assert connect_from(lab, "hub", "10.20.0.25") == "refused"
        lab.link("dialup").up()
        assert connect_from(lab, "isp", "10.20.9.201") == "connected"
        assert connect_from(lab, "hub", "10.20.0.25") == "connected"
        # a session open across the link is cut when it drops
        hold = container(lab, "isp").exec_run(
            [
                "python3",
                "-c",
                "import socket; s = socket.create_connection(('10.20.9.201', 25), timeout=20)\n"
                "print(s.recv(100)); print('open', flush=True)\n"
                "try:\n  d = s.recv(100); print('closed' if not d else d)\n"
                "except OSError as e: print('cut', e.errno)",
            ],
            stream=True,
        )
        first = b""
        for chunk in hold.output:
            first += chunk
            if b"open" in first:
                break
        assert b"220 " in first
        lab.link("dialup").down()
        rest = b"".join(hold.output).decode()
        assert "cut" in rest or "closed" in rest, rest
        cut = [e for e in lab.events if e.kind == "link.down"]
        assert cut and cut[-1].get("cut") >= 1


def test_a_blackholed_link_times_out(lab_factory: Callable[..., Lab], docker_client: Any) -> None:
    topology = load(HOME_DIALUP).model
    topology.links["dialup"].when_down = type(topology.links["dialup"].when_down)("blackhole")
    with lab_factory(topology) as lab:
        assert connect_from(lab, "isp", "10.20.9.201", timeout=1.5) == "timeout"
        assert connect_from(lab, "hub", "10.20.0.25", timeout=1.5) == "timeout"
        lab.link("dialup").up()
        assert connect_from(lab, "isp", "10.20.9.201") == "connected"


def test_two_labs_of_one_topology_run_side_by_side(
    lab_factory: Callable[..., Lab], docker_client: Any
) -> None:
    with (
        lab_factory(HOME_DIALUP) as a,
        lab_factory(HOME_DIALUP) as b,
    ):
        assert a.backend.run != b.backend.run
        # the same addresses in both, each its own world
        assert a.status()["nodes"]["hub"]["addresses"] == b.status()["nodes"]["hub"]["addresses"]
        sent = a.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        assert sent.accepted
        a.assert_queued(on="hub")
        assert b.queue("hub") == []
        b.link("dialup").up()
        assert a.link("dialup").state == "down"
        assert a.queue("hub")[0]["id"] == sent.queue_id
        other = b.send("pc2", mail_from="keith@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        b.assert_delivered("paulmidgley@freeuk.com", node="freeuk")
        assert a.mailbox("freeuk", "paulmidgley") == []
        assert [m.id for m in b.mailbox("freeuk", "paulmidgley")]
        assert other.queue_id not in {e.get("id") for e in a.events}


def test_the_clock_moves_every_host_in_order(
    lab_factory: Callable[..., Lab], docker_client: Any
) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        lab.assert_queued(on="hub")
        lab.clock.advance("5d")
        # a delay warning after 4 h, then returned after 5 days, to the (masqueraded) sender
        delayed = [e for e in lab.events if e.kind == "dsn.sent" and e.get("action") == "delayed"]
        assert delayed, [str(e) for e in lab.events[-20:]]
        lab.assert_bounced(recipient="paulmidgley@freeuk.com", by="hub")
        assert lab.queue("hub") == []


SIGKILLED = textwrap.dedent(
    """
    import json, sys, time
    sys.path[:0] = {paths!r}
    from lab.harness import Lab
    lab = Lab.up({topology!r}, backend="docker")
    print(json.dumps({{"run": lab.backend.run}}), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("reaper", [False, True], ids=["maillab-gc", "next-lab-reaps"])
def test_a_killed_lab_is_collected(
    lab_factory: Callable[..., Lab], docker_client: Any, tmp_path: Path, reaper: bool
) -> None:
    from lab.backends.docker.gc import find_runs, gc

    script = tmp_path / "hold.py"
    script.write_text(SIGKILLED.format(paths=sys.path, topology=str(LG45)))
    env = {**os.environ, "MAILLAB_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else ""
        run = json.loads(line)["run"]
        objects = docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run}"})
        assert len(objects) >= 4
        owner = objects[0].labels[LABEL_OWNER]
        assert owner.split(":")[1] == str(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    # the run's switch notices its owner is gone and ends; gc removes the rest
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        switch = docker_client.containers.list(
            all=True, filters={"label": [f"{LABEL_RUN}={run}", f"{LABEL_KIND}=switch"]}
        )
        if not switch or switch[0].status != "running":
            break
        time.sleep(0.5)
    else:
        pytest.fail("the switch container outlived the process that owned the lab")
    from lab.backends.docker.gc import runtime_dir

    state = Path(objects[0].labels["io.maillab.state"])
    assert state.name.startswith("maillab-")  # its queues and mailboxes, in a temporary dir
    # (the next-lab-reaps case, running at the same time on another worker with
    # reap_after=0, may collect this run at any moment from here on)
    runs = find_runs(docker_client)
    if reaper or run in runs:
        assert runs[run].owner_alive is False
        assert runtime_dir(run).is_dir()  # its spec and sockets, left by the killed process
    if reaper:  # the next Docker lab on this machine collects it (once it is old enough)
        with lab_factory(LG45, reap_after=0) as lab:
            reaped = [e for e in lab.events if e.kind.startswith("lab.reap")]
            assert reaped and run in reaped[0].get("runs"), (reaped, find_runs(docker_client))
    else:
        removed = gc(docker_client, runs=[run])
        # [] only when a lab of the other parametrisation, running at the same time on
        # another worker with reap_after=0, collected it first; gc's own cases are in
        # tests/backends/test_docker_gc.py
        assert [r.run for r in removed] in ([run], [])
    deadline = time.monotonic() + 20  # a reaper of another worker may still be removing it
    while (runtime_dir(run).exists() or state.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not runtime_dir(run).exists()
    assert not state.exists()
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run}"}) == []
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run}"}) == []
    assert docker_client.networks.list(filters={"label": f"{LABEL_RUN}={run}"}) == []


INTERRUPTED = textwrap.dedent(
    """
    import signal, sys
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when this run of the
    # suite was started where SIGINT is ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path[:0] = {paths!r}
    from lab.harness import Lab
    from lab.topology import load
    topology = load({topology!r}).model
    topology.name = {name!r}
    Lab.up(topology, backend="docker")
    print("up", flush=True)
    """
)


def test_ctrl_c_during_up_removes_what_was_created(docker_client: Any, tmp_path: Path) -> None:
    from lab.backends.docker.labels import LABEL_LAB

    name = f"interrupted-{os.getpid()}"
    script = tmp_path / "up.py"
    script.write_text(INTERRUPTED.format(paths=sys.path, topology=str(HOME_DIALUP), name=name))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # interrupt once the first containers exist
            found = docker_client.containers.list(  # sparse: one removed meanwhile is no error
                all=True, sparse=True, filters={"label": f"{LABEL_LAB}={name}"}
            )
            if found:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no container of the lab appeared")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"up" not in out.split(), "the lab came up before the interrupt"
    assert b"KeyboardInterrupt" in err
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_LAB}={name}"}) == []
    assert docker_client.networks.list(filters={"label": f"{LABEL_LAB}={name}"}) == []


def test_a_host_that_does_not_come_up_fails_with_its_log(
    lab_factory: Callable[..., Lab],
    docker_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lab.backends.docker.provision import Provision
    from lab.errors import LabError

    plan = Provision._plan

    def broken_plan(self: Provision) -> dict[str, Any]:
        spec = plan(self)
        spec["dns_timeout"] = "soon"  # the agents cannot start their services with this
        return spec

    monkeypatch.setattr(Provision, "_plan", broken_plan)
    with pytest.raises(LabError) as excinfo:
        lab_factory(LG45)
    text = str(excinfo.value)
    assert "did not come up" in text
    assert "could not convert string to float: 'soon'" in text
    assert "--- its log (last lines) ---" in text and "agent for " in text
    assert "hint: " in text and "docker logs maillab-" in text
    # and nothing is left behind
    run = text.split("docker logs maillab-")[1].split("-")[0]
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run}"}) == []


def test_hands_on_commands_against_a_detached_lab(docker_client: Any, tmp_path: Path) -> None:
    env = {**os.environ, "MAILLAB_HOME": str(tmp_path / "home")}
    maillab = [sys.executable, "-m", "lab"]
    name = f"hands-on-{os.getpid()}"

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*maillab, *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    up = run("up", str(HOME_DIALUP), "--backend", "docker", "--name", name, "-d", "--json")
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        status = json.loads(up.stdout)
        assert status["backend"] == "docker"
        dig = run("exec", "--lab", name, "pc1", "--", "dig", "+short", "MX", "freeuk.com")
        assert dig.returncode == 0, dig.stderr
        assert dig.stdout.split() == ["10", "scrabble.freeuk.net."]
        swaks = run(
            "exec",
            "--lab",
            name,
            "pc1",
            "--",
            "swaks",
            "--server",
            "hub",
            "--from",
            "eddy@shofar.org.uk",
            "--to",
            "paulmidgley@freeuk.com",
        )
        assert swaks.returncode == 0, swaks.stdout + swaks.stderr
        assert "250 2.0.0" in swaks.stdout and "Message accepted" in swaks.stdout
        queue = json.loads(run("queue", "--lab", name, "hub", "--json").stdout)
        assert [q["recipients"] for q in queue] == [["paulmidgley@freeuk.com"]]
        failing = run("exec", "--lab", name, "pc1", "--", "sh", "-c", "exit 3")
        assert failing.returncode == 3
        logs = run("logs", "--lab", name, "hub", "--tail", "50")
        assert logs.returncode == 0 and "agent for hub" in logs.stdout
        # the operator's forwarded endpoint: this machine, seen as pc1
        host, _, port = status["nodes"]["hub"]["endpoints"]["smtp"].rpartition(":")
        import smtplib

        with smtplib.SMTP(host, int(port), timeout=10) as smtp:
            code, text = smtp.ehlo("pc1.shofar.org.uk")
            assert code == 250 and b"[192.168.10.11]" in text
    finally:
        down = run("down", "--lab", name)
        assert down.returncode == 0, down.stderr
    left = docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_RUN}={status['run']}"}
    )
    assert left == []


def test_real_mta_software_is_refused_clearly_for_now(
    lab_factory: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lab.software
    from lab.errors import LabError
    from lab.topology.software import ServiceSoftware, Software

    # every real program runs on Docker now: a planned one is sendmail taken out
    monkeypatch.setattr(lab.software, "ON_DOCKER", lab.software.ON_DOCKER - {Software.sendmail})
    topology = load(LG45).model
    topology.nodes["heaven"].software = ServiceSoftware(smtp=Software.sendmail)
    with pytest.raises(LabError) as excinfo:
        lab_factory(topology)
    assert str(excinfo.value) == (
        "node 'heaven': smtp software 'sendmail' (sendmail, in a container (Docker backend))"
        " is not available yet in this version: the docker backend runs builtin, dovecot,"
        " exim, fetchmail and postfix only; use software: builtin for smtp"
    )
