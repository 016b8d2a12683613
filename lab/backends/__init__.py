"""Backends bring a topology to life: `inprocess` (asyncio) and `docker` (containers).

The names below are loaded when first used, so that a Docker host's agent, which
imports lab.backends.docker.agent, does not pay for the backends' own machinery."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.backends.base import BACKENDS, Backend, HostHandle, LabBackend, backend_class

__all__ = ["BACKENDS", "Backend", "HostHandle", "LabBackend", "backend_class"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("lab.backends.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
