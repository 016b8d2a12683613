"""Shared fixtures: `lab_factory` (labs on every --lab-backend backend), an SMTP session
typed byte for byte over a plain socket (telnet), and the Docker engine; which tests are
Docker tests (the `docker` marker) and which run at all for the --lab-backend chosen; the
Hypothesis profiles of the fuzz tests (the `fuzz` marker)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from lab.harness import Lab
from lab.pytest_plugin import lab_backends, lab_pool, wants_fresh
from lab.topology import load_text
from lab.topology.model import Topology

LabFactory = Callable[..., Lab]

# Hypothesis profiles for the fuzz tests (marker `fuzz`), chosen by MAILLAB_HYPOTHESIS_PROFILE:
# "ci" (the default, what `make test` and CI run): a small fixed budget, the same examples
# every run (derandomize), so a failure is reproducible and no test takes more than a few
# seconds; "fuzz" (`make fuzz`): a long random search. No deadline in either: a slow
# example on a busy machine is not a bug (the tests that are about time measure it).
_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_FUZZ_HEALTH,
)
settings.register_profile(
    "fuzz",
    max_examples=5_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_FUZZ_HEALTH,
)
settings.load_profile(os.environ.get("MAILLAB_HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture
def lab_factory(
    request: pytest.FixtureRequest, lab_backend: str, tmp_path: Path
) -> Iterator[LabFactory]:
    """lab_factory(topology, **options) gives the test a running lab of `topology` on its
    backend; every lab it gave is given back (or stopped) after the test.

    `topology` is a path, the YAML text of a topology, or a (possibly edited) model. The
    test runs once per --lab-backend backend (ids [inprocess], [docker]) unless it is
    pinned with @pytest.mark.lab_backend(NAME). Labs are reused as the `lab` fixture's
    are: the worker's pool keeps one per topology (the model as the test made it),
    backend and options, and resets it before the next test that asks for the same. A
    test that passes state_dir (None: a temporary one of the backend's), passes
    fresh=True (it changes the running lab beyond what a reset puts back), is marked
    fresh_lab, or runs with --lab-fresh gets a new lab, its state under tmp_path.
    """
    pool = None if wants_fresh(request.node) else lab_pool(request.config)
    labs: list[tuple[Lab, bool]] = []

    def up(topology: str | Path | Topology, *, fresh: bool = False, **options: Any) -> Lab:
        if isinstance(topology, str) and "\n" in topology:
            topology = load_text(topology, "lab_factory.yaml").model
        if pool is None or fresh or "state_dir" in options:
            options.setdefault("state_dir", tmp_path / f"lab{len(labs)}")
            labs.append((Lab.up(topology, backend=lab_backend, **options), False))
        else:
            labs.append((pool.acquire(topology, backend=lab_backend, **options), True))
        return labs[-1][0]

    yield up
    for running, pooled in reversed(labs):
        if pooled and pool is not None:
            pool.release(running)
        else:
            running.down()


def _runs_on_docker(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    pinned = item.get_closest_marker("lab_backend")
    return (
        "docker_client" in getattr(item, "fixturenames", ())
        or (callspec is not None and callspec.params.get("lab_backend") == "docker")
        or (pinned is not None and pinned.args[:1] == ("docker",))
        or getattr(item, "backend", None) == "docker"  # a topology check
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs a Docker engine carries the `docker` marker (so -m "not docker"
    leaves it out); without docker in --lab-backend, such tests are deselected."""
    for item in items:
        if item.get_closest_marker("docker") is None and _runs_on_docker(item):
            item.add_marker(pytest.mark.docker)
    if "docker" in lab_backends(config):
        return
    docker = [item for item in items if item.get_closest_marker("docker") is not None]
    if docker:
        config.hook.pytest_deselected(items=docker)
        items[:] = [item for item in items if item.get_closest_marker("docker") is None]


def pytest_report_header(config: pytest.Config) -> str:
    backends = lab_backends(config)
    extra = "" if "docker" in backends else " (Docker tests deselected)"
    return f"lab backends: {', '.join(backends)}{extra}"


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
