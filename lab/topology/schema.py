"""The JSON Schema of the topology format, for editors (yaml-language-server) and tools."""

from __future__ import annotations

import json
from typing import Any

from lab.topology.model import Topology

SCHEMA_ID = "https://maillab.invalid/schema/topology.json"


def topology_schema() -> dict[str, Any]:
    schema = Topology.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "maillab topology",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(topology_schema(), indent=2, sort_keys=False) + "\n"
