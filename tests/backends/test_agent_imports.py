"""An agent starts on every container of a Docker lab, all at once on a few cores: what
it loads before it answers is the lab's start-up time. dnspython and the CA's
cryptography wait for a host's first lookup and first TLS session, and the topology
models' validators are not built (the agent gets the topology the lab validated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HOME_DIALUP = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"

PROBE = """
import json, sys
import lab.backends.docker.agent
from lab.topology.model import Topology
print(json.dumps({
    "dns": sorted(m for m in sys.modules if m == "dns" or m.startswith("dns.")),
    "trustme": "trustme" in sys.modules,
    "cryptography": any(m.startswith("cryptography") for m in sys.modules),
    "validator_built": bool(Topology.__pydantic_complete__),
}))
"""


def test_an_agent_starts_without_dnspython_cryptography_or_validators() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    assert loaded == {"dns": [], "trustme": False, "cryptography": False, "validator_built": False}


def test_a_pickled_topology_needs_no_validator() -> None:
    probe = f"""
import pickle
from pathlib import Path
from lab.topology.loader import load
print(pickle.dumps(load(Path({str(HOME_DIALUP)!r})).model).hex())
"""
    made = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    read = """
import json, pickle, sys
from lab.topology.model import Topology
topology = pickle.loads(bytes.fromhex(sys.stdin.read()))
print(json.dumps([sorted(topology.nodes), bool(Topology.__pydantic_complete__)]))
"""
    out = subprocess.run(
        [sys.executable, "-c", read],
        input=made.stdout,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    nodes, built = json.loads(out.stdout)
    assert "hub" in nodes and "dns" in nodes
    assert built is False
