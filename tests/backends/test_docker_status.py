"""`maillab status` on Docker lists only endpoints this machine reaches (the operator's
forwarded ports) and marks the other services as inside the lab: a lab address such as
10.20.0.25 routes from here to the real network, never to the lab. The text, the JSON
(the same status dict) and the web page's topology all say so."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.cli.running import print_status
from lab.harness import Lab
from lab.web import views

HOME_DIALUP = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"

pytestmark = [pytest.mark.docker, pytest.mark.lab_backend("docker")]


def test_status_lists_only_endpoints_reachable_from_here(
    lab_factory: Callable[..., Lab], capsys: pytest.CaptureFixture[str]
) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        status = lab.status()
        subnets = [ipaddress.ip_network(n.subnet) for n in lab.topology.networks.values()]
        nodes = status["nodes"]
        # pc1 (the operator) shares the LAN with the hub only: the rest is inside the lab
        assert set(nodes["hub"]["endpoints"]) == {"smtp"}
        assert nodes["hub"]["inside_lab"] == []
        assert nodes["isp"]["endpoints"] == {} and nodes["isp"]["inside_lab"] == ["pop3", "smtp"]
        assert nodes["dns"]["endpoints"] == {} and nodes["dns"]["inside_lab"] == ["dns"]
        assert nodes["freeuk"]["endpoints"] == {} and nodes["freeuk"]["inside_lab"] == ["smtp"]
        for node in nodes.values():
            for endpoint in node["endpoints"].values():
                host, _, port = endpoint.rpartition(":")
                assert not any(ipaddress.ip_address(host) in s for s in subnets), endpoint
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.settimeout(10)
                    greeting = sock.recv(512)  # the lab's own server answers
                assert greeting.startswith(b"220 ") and node["hostname"].encode() in greeting

        print_status(status)
        text = capsys.readouterr().out
        assert "pop3=(inside the lab)" in text and "dns=(inside the lab)" in text
        assert "10.20.0.25:" not in text and "10.20.0.53:" not in text
        host, _, port = nodes["hub"]["endpoints"]["smtp"].rpartition(":")
        assert f"Try: telnet {host} {port}" in text

        page = views.topology_view(lab, status)["nodes"]
        assert page["isp"]["endpoints"] == {} and page["isp"]["inside_lab"] == ["pop3", "smtp"]
        assert page["hub"]["endpoints"] == {"smtp": nodes["hub"]["endpoints"]["smtp"]}
