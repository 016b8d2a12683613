"""docs/faults.md keeps up with the format: every YAML example reads as the part of a
topology it shows, and every knob of a fault, a DNS fault rule and a schedule is named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from lab.topology.checks import Step
from lab.topology.loader import field_names, parse_yaml
from lab.topology.model import Dns, DnsFaultRule, Fault, Link, RateLimit
from lab.topology.schedule import Schedule

DOC = Path(__file__).resolve().parents[2] / "docs" / "faults.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```yaml\n(.*?)^```$", TEXT, flags=re.M | re.S)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_example_reads(block: str) -> None:
    data, _ = parse_yaml(block, "faults.md")
    assert isinstance(data, dict)
    for key, value in data.items():
        if key == "faults":
            TypeAdapter(list[Fault]).validate_python(value)
        elif key == "dns":
            Dns.model_validate(value)
        elif key == "links":
            TypeAdapter(dict[str, Link]).validate_python(value)
        elif key == "checks":
            TypeAdapter(dict[str, list[Step]]).validate_python(value)
        elif key == "nodes":
            for node in value.values():
                TypeAdapter(list[Fault]).validate_python(node["faults"])
        else:
            assert key == "seed" and isinstance(value, int)


@pytest.mark.parametrize("model", [Fault, RateLimit, DnsFaultRule, Schedule])
def test_every_knob_is_named(model: type) -> None:
    missing = [name for name in field_names(model) if name not in TEXT]
    assert missing == [], f"docs/faults.md does not mention {model.__name__} fields {missing}"
