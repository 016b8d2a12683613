"""The Docker backend: a container per host, real addresses on real bridge networks.

It implements the same contract as the in-process backend (lab.backends.base.Backend).
It is not available in this version of maillab: choosing it is an error that says so,
rather than a lab that silently runs somewhere else.
"""

from __future__ import annotations

from typing import Any

from lab.errors import LabError


class DockerBackend:
    name = "docker"

    def __init__(self, topology: Any, **options: Any):
        raise LabError(
            "the Docker backend is not available in this version of maillab;"
            " use --backend inprocess (the default)"
        )
