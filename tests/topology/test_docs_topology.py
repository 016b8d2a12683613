"""docs/topology.md keeps up with the format: every field is named, every example reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from lab.topology import ROLES, Service, load_text
from lab.topology import checks as checks_module
from lab.topology import faults as faults_module
from lab.topology import fields as fields_module
from lab.topology import matrix as matrix_module
from lab.topology import model as model_module
from lab.topology import software as software_module
from lab.topology.loader import field_names, parse_yaml
from lab.topology.model import Node, RecordSet, Topology
from lab.topology.software import Software

DOC = Path(__file__).resolve().parents[2] / "docs" / "topology.md"
TEXT = DOC.read_text(encoding="utf-8")
YAML_BLOCKS = re.findall(r"^```yaml\n(.*?)^```$", TEXT, flags=re.M | re.S)
MODELS = sorted(
    (
        cls
        for module in (
            fields_module,
            model_module,
            checks_module,
            software_module,
            faults_module,
            matrix_module,
        )
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, BaseModel)
        and cls.__module__ == module.__name__
        and cls is not fields_module.Base
    ),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("model", MODELS, ids=lambda cls: cls.__name__)
def test_every_field_is_documented(model: type[BaseModel]) -> None:
    missing = [name for name in field_names(model) if f"`{name}`" not in TEXT]
    assert missing == [], f"docs/topology.md does not mention {model.__name__} fields {missing}"


def test_every_role_and_service_is_documented() -> None:
    for name in [*ROLES, *(s.value for s in Service), "mta"]:
        assert f"`{name}`" in TEXT


def test_every_software_is_documented() -> None:
    for software in Software:
        assert f"`{software.value}`" in TEXT


def test_there_are_examples() -> None:
    assert len(YAML_BLOCKS) >= 10


def validate_fragment(data: dict[str, Any]) -> list[str]:
    """Validate each part of an example against the model of its place in a topology: a
    top-level section, a node setting, a node (it has a role or services) or, otherwise,
    the records of one name in a zone. Returns where each part was placed."""
    places = []
    for key, value in data.items():
        if key in Topology.model_fields:
            TypeAdapter(Topology.model_fields[key].annotation).validate_python(value)
            places.append(f"{key}: section")
        elif key in Node.model_fields:
            TypeAdapter(Node.model_fields[key].annotation).validate_python(value)
            places.append(f"{key}: node setting")
        elif isinstance(value, dict) and value.keys() & {"role", "services"}:
            Node.model_validate(value)
            places.append(f"{key}: node")
        else:
            RecordSet.model_validate(value)
            places.append(f"{key}: records")
    return places


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_every_yaml_example_reads(block: str) -> None:
    """Every example, whole or a fragment, is valid where it belongs (cross-references
    are not checked: a fragment may name hosts of another example)."""
    if all(line.startswith("#") for line in block.splitlines()):
        assert block.startswith("# yaml-language-server: $schema=")  # the only such block
        return
    data, _ = parse_yaml(block, "topology.md")
    assert validate_fragment(data)


def test_a_wrong_fragment_is_caught() -> None:
    assert validate_fragment({"hub": {"role": "hub", "networks": {"lan": "auto"}}}) == ["hub: node"]
    with pytest.raises(ValidationError):
        validate_fragment({"hub": {"role": "hub", "networks": {"lan": "auto"}, "smarthots": "mx"}})
    with pytest.raises(ValidationError):
        validate_fragment({"retry": {"intervals": ["soon"]}})
    with pytest.raises(ValidationError):
        validate_fragment({"www": {"CNAME": "a", "B": "b"}})


def test_complete_examples_are_valid() -> None:
    complete = [b for b in YAML_BLOCKS if re.search(r"^name: ", b, flags=re.M)]
    assert complete
    for block in complete:
        load_text(block, "topology.md")
