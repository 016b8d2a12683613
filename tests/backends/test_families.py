"""Family images: one layer per real program a node runs, stacked in a fixed order."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.backends.docker.families import FAMILIES, family_chain, family_image_tag, family_repo
from lab.errors import LabError
from lab.software.registry import image_families
from lab.topology.loader import load_text

NODE = "maillab-node:0123456789ab"


def test_every_family_has_its_dockerfile_with_faketime() -> None:
    root = Path(__file__).resolve().parents[2]
    for family, dockerfile in FAMILIES.items():
        text = (root / dockerfile).read_text()
        assert "FROM ${NODE_IMAGE}" in text, family
        assert "faketime" in text, family
        assert f"io.maillab.image={family}" in text, family


def test_the_chain_is_in_a_fixed_order_whatever_the_order_asked() -> None:
    assert family_chain(["fetchmail", "postfix"]) == ("postfix", "fetchmail")
    assert family_chain("dovecot") == ("dovecot",)
    assert family_repo(("fetchmail", "postfix")) == "maillab-postfix-fetchmail"


def test_an_unknown_family_is_named() -> None:
    with pytest.raises(LabError, match=r"no image family 'qmail'; expected one of: postfix"):
        family_chain(["postfix", "qmail"])


def test_a_layer_tag_follows_the_tag_below_it() -> None:
    one = family_image_tag("postfix", NODE)
    two = family_image_tag(["postfix", "fetchmail"], NODE)
    assert one.startswith("maillab-postfix:") and two.startswith("maillab-postfix-fetchmail:")
    assert family_image_tag(["fetchmail", "postfix"], NODE) == two
    # a new node image gives every family a new tag
    assert family_image_tag("postfix", "maillab-node:ba9876543210") != one
    assert family_image_tag(["postfix", "fetchmail"], "maillab-node:ba9876543210") != two


def test_a_node_runs_the_families_of_its_real_programs() -> None:
    topology = load_text(
        """
name: families
networks: {lan: {subnet: 192.168.1.0/24}}
nodes:
  hub:
    networks: [lan]
    services: [smtp, fetch]
    software: {smtp: postfix, fetch: fetchmail}
    fetch: [{server: isp, user: u, password: p, to: postmaster}]
  isp:
    networks: [lan]
    services: [smtp, pop3]
    software: {pop3: dovecot}
    mailboxes: {u: {password: p}}
  pc:
    networks: [lan]
    services: [client]
""",
        base=Path("."),
    ).model
    assert image_families(topology.nodes["hub"]) == ("postfix", "fetchmail")
    assert image_families(topology.nodes["isp"]) == ("dovecot",)
    assert image_families(topology.nodes["pc"]) == ()
