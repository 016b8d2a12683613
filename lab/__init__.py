"""maillab: a local mail lab and simulation harness.

Layers, top to bottom: cli / pytest_plugin -> harness (Lab) -> backends -> nodes ->
protocols; topology is the data every layer reads; software adapts real MTAs.
"""

__version__ = "0.1.0"
