"""Fuzzing the topology loader (Hypothesis): whatever the text, load_text gives a model or
a TopologyError whose every problem has a place in the file (FILE:LINE:COL), never
another exception.

Two kinds of input: YAML-ish text (pieces of YAML syntax, anchors and aliases, tags,
numbers and odd characters strung together) and near-valid topologies (a valid one with a
value replaced, a key dropped or a key added, dumped back to YAML). The budget is the
Hypothesis profile's (tests/conftest.py): small and fixed in CI, long with `make fuzz`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lab.errors import TopologyError
from lab.topology import LoadedTopology, load_text

pytestmark = pytest.mark.fuzz

VALID = """\
name: fuzz
operator: pc1
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: hub, network: internet, state: down, on_up: [flush, fetch]}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org", TXT: "v=spf1 -all"}
      mx: {A: 10.20.0.25}
      pop: {CNAME: mx.example.org}
nodes:
  ns: {role: dns, networks: {internet: 10.20.0.53}}
  hub:
    role: hub
    hostname: hub.home.test
    networks: {lan: 192.168.10.1, internet: auto}
    local_domains: [home.test]
    users: [eddy, keith]
    aliases: {staff: [eddy, keith]}
    relay_from: [lan]
    smarthost: mx.example.org
    masquerade: {as: example.org, domains: [home.test]}
    retry: {intervals: [30m, 1h], warn_after: 4h, give_up_after: 5d}
    policy: {max_size: 10MB}
    faults: [{on: rcpt, reply: "451 4.3.0 try later", times: 1}]
    fetch:
      - {server: pop.example.org, user: home, password: pw, to: eddy}
  isp:
    role: isp
    hostname: mx.example.org
    networks: {internet: 10.20.0.25}
    local_domains: [example.org]
    users: [postmaster, user]
    mailboxes: {home: {password: pw}}
  pc1: {role: client, networks: [lan], submit_to: hub}
checks:
  queued:
    - send: {from: pc1, mail_from: eddy@home.test, to: user@example.org}
    - expect: {queued: {on: hub}}
    - link: {dialup: up}
    - advance: 1h
    - expect: {delivered: {to: user@example.org, node: isp}, within: 5s}
"""

# Pieces of YAML: structure, anchors and aliases, tags, odd scalars, odd characters.
PIECES = [
    *("a: ", "name: ", "nodes: ", "networks: ", "- ", "? ", ": ", ", ", "<<: "),
    *("[", "]", "{", "}", "\n", "\n  ", "\n    ", "  ", "\t", "#c\n", "---\n", "...\n"),
    *("&a ", "&b ", "*a", "*b", "*c", "!!int ", "!!bool ", "!!str ", "!!map ", "!!seq "),
    *("!!binary ", "!!timestamp ", "!!float ", "!!set ", "!!omap ", "!!python/name:x ", "!x "),
    *("'q'", '"d\\x00"', '"\\u263a"', "|\n  t\n", ">-\n  t\n", "~", "null", "true", "yes"),
    *("0x1F", "0o7", "1_000", "1:20", ".inf", "-.nan", "1e999", "9" * 70, "2001-02-30"),
    *("2001-12-14t21:59:43.10-05:00", "10.20.0.0/16", "10.20.0.1", "auto", "5d", "10MB"),
    *("role", "mta", "hub", "client", "dns", "lan", "\u00e9", "\ufeff", "\x85", "%YAML 1.1\n"),
]

yamlish = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.text(alphabet=":-[]{},&*!|>'\"#%@`?<\n \tab01", max_size=200),
)


YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def check(text: str) -> LoadedTopology | TopologyError:
    """Load the text; anything but a model or a TopologyError with placed problems fails."""
    try:
        return load_text(text, "fuzz.yaml")
    except TopologyError as exc:
        lines = len(YAML_LINE_BREAK.split(text)) + 1  # a problem may stand at the end
        assert exc.problems, "a TopologyError without problems"
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml"
            assert 1 <= problem.line <= lines, problem
            assert problem.column >= 1, problem
            assert problem.message, problem
            assert str(problem).startswith(f"fuzz.yaml:{problem.line}:{problem.column}: ")
        return exc


def test_valid_is_valid() -> None:
    assert isinstance(check(VALID), LoadedTopology)


@given(yamlish)
def test_any_yamlish_text_gives_a_model_or_placed_problems(text: str) -> None:
    check(text)


@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_a_valid_topology_with_yaml_pieces_appended(text: str) -> None:
    check(VALID + text)


# --- near-valid topologies ---------------------------------------------------------------

DATA: dict[str, Any] = yaml.safe_load(VALID)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


PATHS = _paths(DATA)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            *("hub", "pc1", "isp", "ns", "lan", "internet", "dialup", "auto", "", "@", "."),
            *("10.20.0.25", "10.20.0.0/16", "192.168.10.300", "mx.example.org", "smtp"),
            *("postfix", "builtin", "1h", "-1s", "10MB", "10 mx.example.org", "user@x"),
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["role", "to"])), inner),
    ),
    max_leaves=12,
)


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@given(st.data())
def test_near_valid_topologies_give_a_model_or_placed_problems(data: st.DataObject) -> None:
    topology = copy.deepcopy(DATA)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(PATHS), label="path")
        try:
            parent = _parent(topology, path)
            parent[path[-1]]  # the path may be gone after an earlier mutation
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, (dict, list)):
            continue
        action = data.draw(st.sampled_from(["replace", "drop", "add"]), label="action")
        if action == "replace":
            parent[path[-1]] = data.draw(values, label="value")
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10), label="key")] = data.draw(values)
        else:
            parent.append(data.draw(values, label="item"))
    text = yaml.safe_dump(topology, sort_keys=False, allow_unicode=True)
    check(text)
