"""The maillab pytest plugin: a `lab` fixture, a `topology` marker, a `--lab-backend` option.

    @pytest.mark.topology("home-dialup")          # a file in topologies/, or a path
    def test_queued_while_down(lab):
        lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        lab.assert_queued(on="hub")

Each test gets its own lab with its own state directory under pytest's tmp_path and its
own ephemeral ports, so tests are safe under pytest-xdist.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.backends.base import BACKENDS


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maillab")
    group.addoption(
        "--lab-backend",
        action="store",
        default="inprocess",
        choices=sorted(BACKENDS),
        help="backend for the `lab` fixture (default: inprocess)",
    )
    parser.addini(
        "lab_topologies",
        "directory of topology files for @pytest.mark.topology",
        default="topologies",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "topology(name_or_path, **options): the topology the `lab` fixture brings up",
    )
    config.addinivalue_line("markers", "lab_backend(name): run this test on this backend only")


def resolve_topology(config: pytest.Config, ref: str | Path) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    base = Path(str(config.rootpath)) / str(config.getini("lab_topologies"))
    for candidate in (base / path, base / f"{path}.yaml", base / f"{path}.yml"):
        if candidate.exists():
            return candidate
    raise pytest.UsageError(f"topology {ref!r} not found (looked in {base})")


@pytest.fixture
def lab_backend(request: pytest.FixtureRequest) -> str:
    """The backend the `lab` fixture uses (--lab-backend, or a lab_backend marker)."""
    marker = request.node.get_closest_marker("lab_backend")
    if marker is not None:
        return str(marker.args[0])
    param = getattr(request, "param", None)
    return str(param or request.config.getoption("--lab-backend"))


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_backend: str, tmp_path: Path) -> Iterator[Any]:
    """A running lab of the test's `topology` marker; stopped after the test."""
    from lab.harness.lab import Lab

    marker = request.node.get_closest_marker("topology")
    if marker is None or not marker.args:
        raise pytest.UsageError(
            f"{request.node.nodeid}: the lab fixture needs @pytest.mark.topology('NAME')"
        )
    path = resolve_topology(request.config, marker.args[0])
    options = dict(marker.kwargs)
    options.setdefault("state_dir", tmp_path / "lab")
    running = Lab.up(path, backend=lab_backend, **options)
    try:
        yield running
    finally:
        running.down()
