"""One lab host inside a container: `python -m lab.node` (see agent.py)."""
