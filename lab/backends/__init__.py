"""Backends bring a topology to life: `inprocess` (asyncio) and `docker` (containers)."""

from lab.backends.base import BACKENDS, Backend, HostHandle, LabBackend, backend_class

__all__ = ["BACKENDS", "Backend", "HostHandle", "LabBackend", "backend_class"]
