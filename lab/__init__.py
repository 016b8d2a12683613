"""maillab: a local mail lab and simulation harness.

Layers, top to bottom: cli / pytest_plugin -> harness (Lab) -> backends -> nodes ->
protocols; topology is the data every layer reads; software adapts real MTAs.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in ("Lab", "LabAssertionError"):
        from lab.harness import lab as _lab

        return getattr(_lab, name)
    raise AttributeError(name)
