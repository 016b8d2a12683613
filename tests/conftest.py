"""Shared helpers: an SMTP session typed byte for byte over a plain socket (telnet)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.harness import Lab


class SmtpWire:
    """A hand-typed SMTP session: send exactly these bytes, read whole replies."""

    def __init__(self, endpoint: str, timeout: float = 5.0):
        host, _, port = endpoint.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self) -> tuple[int, list[str]]:
        """One reply: (code, its lines without CRLF); multi-line replies are joined."""
        lines = []
        while True:
            line = self._line()
            assert line.endswith(b"\r\n"), f"reply line not ended by CRLF: {line!r}"
            lines.append(line[:-2].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                break
        codes = {line[:3] for line in lines}
        assert len(codes) == 1, f"mixed codes in one reply: {lines}"
        return int(lines[0][:3]), lines

    def cmd(self, line: bytes | str) -> tuple[int, list[str]]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def code(self, line: bytes | str) -> int:
        return self.cmd(line)[0]

    def closed_by_peer(self) -> bool:
        """True when the server has closed the connection (EOF or reset); False when it
        sends more or stays silent for the whole timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Drop the connection at once (RST), as a client that dies does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> SmtpWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def smtp_endpoint(lab: Lab, node: str, network: str | None = None) -> str:
    endpoints = lab.status()["nodes"][node]["endpoints"]
    return endpoints[f"smtp@{network}" if network else "smtp"]


@pytest.fixture
def wire() -> Iterator[Callable[..., SmtpWire]]:
    """wire(lab, node) opens a raw SMTP session to the node's real endpoint (greeting unread)."""
    opened: list[SmtpWire] = []

    def open_wire(lab: Lab, node: str, network: str | None = None) -> SmtpWire:
        session = SmtpWire(smtp_endpoint(lab, node, network))
        opened.append(session)
        return session

    yield open_wire
    for session in opened:
        session.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker engine (the docker_client fixture)")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for the engine of this machine. Without an engine the test is
    skipped, except when CI=true: CI machines must have one, so there it fails."""
    from lab.backends.docker.engine import docker_client as connect
    from lab.errors import LabError

    try:
        client = connect(timeout=10.0)
    except LabError as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, and the CI machine must have a Docker engine: {problem}", False)
    if problem:
        pytest.skip(problem)
    try:
        yield client
    finally:
        client.close()
