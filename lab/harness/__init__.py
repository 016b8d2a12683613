"""The harness: a Lab runs a topology on a backend; clock, events and assertions."""

from typing import Any

__all__ = ["Lab", "LabAssertionError", "backend_names"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lab.harness import lab

        return getattr(lab, name)
    raise AttributeError(name)
