"""The Docker engine: a client for it (with a clear error when none answers), the API
timeouts, the errors its calls raise, and a few questions (does an image exist, what
architecture does the engine run)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from collections.abc import Iterator
from typing import Any

from lab.errors import LabError

__all__ = [
    "DOCKER_TIMEOUT",
    "api_timeout",
    "docker_client",
    "docker_errors",
    "engine_arch",
    "image_exists",
    "tag_latest",
]

DOCKER_TIMEOUT = 60.0  # the Docker SDK's usual timeout for other API calls


def docker_client(timeout: float = 10.0) -> Any:
    """A Docker SDK client for the engine of the environment (DOCKER_HOST or the local
    socket), checked to answer within timeout seconds; a LabError when none does."""
    import docker
    import docker.errors
    import requests

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://"):
        # asked first with a socket of our own: the SDK leaves its socket open on failure
        reason = _unix_socket_problem(where.removeprefix("unix://"), timeout)
        if reason:
            raise LabError(
                f"no Docker engine answers at {where} ({reason}); "
                "start dockerd or use --backend inprocess"
            )
    try:
        client = docker.from_env(timeout=max(timeout, 1.0))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc)
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise LabError(
            f"no Docker engine answers at {where} ({reason}); "
            "start dockerd or use --backend inprocess"
        ) from None
    client.api.timeout = DOCKER_TIMEOUT
    return client


def _unix_socket_problem(path: str, timeout: float) -> str:
    """Why nothing listens on a Unix socket ('' when something does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


@contextlib.contextmanager
def api_timeout(client: Any, seconds: float | None) -> Iterator[None]:
    """Run a few API calls with another timeout (the SDK has no per-call argument)."""
    saved = client.api.timeout
    client.api.timeout = seconds
    try:
        yield
    finally:
        client.api.timeout = saved


def docker_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def image_exists(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.api.inspect_image(ref)
    except docker.errors.NotFound:
        return False
    return True


def tag_latest(client: Any, tag: str, repo: str) -> None:
    """Point REPO:latest at tag, unless it already does (an image of an earlier source
    tree may hold it: latest is the image last made or found for use)."""
    try:
        image_id = client.api.inspect_image(tag)["Id"]
        with contextlib.suppress(*docker_errors()):
            if client.api.inspect_image(f"{repo}:latest")["Id"] == image_id:
                return
        client.api.tag(tag, repo, "latest")
    except docker_errors() as exc:
        raise LabError(f"tagging {tag} as {repo}:latest failed: {exc}") from None


def engine_arch(client: Any) -> str:
    try:
        arch = client.version().get("Arch")
    except docker_errors():
        arch = None
    return str(arch or platform.machine())
