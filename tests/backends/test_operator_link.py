"""The operator (this machine) and a dial-up link that is down: the hub's internet
interface does not exist then, so a connection to its address is refused, as any internet
host's is, instead of being taken as one from the LAN with its relay rights. In process
only: on Docker the operator's forwarded ports lead to each node's address on the
operator's own network (the hub's LAN address), never to its internet one."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab

HOME_DIALUP = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"


def _endpoint(lab: Lab, key: str) -> tuple[str, int]:
    host, port = lab.status()["nodes"]["hub"]["endpoints"][key].rsplit(":", 1)
    return host, int(port)


def _greeting(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        return sock.recv(512)


def _refused(address: tuple[str, int]) -> None:
    """The connection is turned away before any greeting: reset at once (the in-process
    interface's socket still listens, for the host's own use) or refused outright."""
    try:
        sock = socket.create_connection(address, timeout=5)
    except ConnectionRefusedError:
        return
    with sock:
        try:
            got = sock.recv(512)
        except ConnectionResetError:
            return
        assert got == b"", f"{address} answered {got!r}"


@pytest.mark.lab_backend("inprocess")
def test_operator_to_a_down_interface_is_refused(
    lab_factory: Callable[..., Lab], wire: Any
) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        internet, lan = _endpoint(lab, "smtp@internet"), _endpoint(lab, "smtp@lan")
        _refused(internet)
        assert _greeting(lan).startswith(b"220 ")  # the LAN side is there all along

        lab.link("dialup").up()
        assert _endpoint(lab, "smtp@internet") == internet  # the same port again
        with socket.create_connection(internet, timeout=5) as open_session:
            assert open_session.recv(512).startswith(b"220 ")
            lab.link("dialup").down()  # the interface goes, and the session with it
            open_session.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # a reset or the end
                assert open_session.recv(512) == b""
        _refused(internet)
        # the hub saw one session on its internet address: the one while the link was up
        on_internet = [
            e
            for e in lab.events
            if e.node == "hub" and e.kind == "smtp.connect" and e.get("local") == "10.20.9.201"
        ]
        assert len(on_internet) == 1, on_internet
