"""Bad topologies and the exact errors they give: place, field path and message.

Each case starts from BASE, a small valid topology, and changes one thing in it, so the
expected line and column can be read off BASE. Problems are reported in file order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab.errors import Problem, TopologyError
from lab.topology import Service, load_text
from lab.topology.addressing import assign_addresses
from lab.topology.model import Topology
from lab.topology.software import Software

BASE = """\
name: mini
description: a small valid lab that each case breaks in one place
operator: pc1
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: hub, network: internet, state: down, on_up: [flush, fetch]}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org"}
      mx: {A: 10.20.0.25}
      pop: {CNAME: mx.example.org}
nodes:
  ns: {role: dns, networks: {internet: 10.20.0.53}}
  hub:
    role: hub
    hostname: hub.home.test
    networks: {lan: 192.168.10.1, internet: 10.20.9.1}
    local_domains: [home.test]
    users: [eddy, keith]
    aliases: {staff: [eddy, keith]}
    relay_from: [lan]
    smarthost: mx.example.org
    retry: {intervals: [30m, 1h], warn_after: 4h, give_up_after: 5d}
    policy: {max_size: 10MB}
    fetch:
      - server: pop.example.org
        user: home
        password: pw
        to: eddy
  isp:
    role: isp
    hostname: mx.example.org
    networks: {internet: 10.20.0.25}
    local_domains: [example.org]
    users: [postmaster, user]
    mailboxes: {home: {password: pw}}
  pc1: {role: client, networks: {lan: 192.168.10.11}, submit_to: hub}
checks:
  queued:
    - send: {from: pc1, mail_from: eddy@home.test, to: user@example.org}
    - expect: {queued: {on: hub}}
    - link: {dialup: up}
    - expect: {delivered: {to: user@example.org, node: isp}}
"""


def change(old: str, new: str) -> str:
    """BASE with one piece of text replaced (the piece must occur exactly once)."""
    assert BASE.count(old) == 1, f"{old!r} occurs {BASE.count(old)} times in BASE"
    return BASE.replace(old, new)


def errors_of(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_text(text, "bad.yaml")
    return info.value


def test_base_is_valid() -> None:
    loaded = load_text(BASE, "bad.yaml")
    assert loaded.model.name == "mini"
    assert set(loaded.model.nodes) == {"ns", "hub", "isp", "pc1"}


CASES = [
    # YAML syntax
    pytest.param(
        change("    hostname: hub.home.test\n", "     hostname: hub.home.test\n"),
        [
            "bad.yaml:19:14: YAML syntax error: mapping values are not allowed here (check the"
            " indentation of this line, or quote a value that contains ': ')",
        ],
        id="yaml-indented-too-far",
    ),
    pytest.param(
        change("    hostname: hub.home.test\n", "   hostname: hub.home.test\n"),
        [
            "bad.yaml:19:4: YAML syntax error: while parsing a block mapping that starts at line"
            " 16, column 3: expected <block end>, but found '<block mapping start>' (check the"
            " indentation of this line)",
        ],
        id="yaml-indented-too-little",
    ),
    pytest.param(
        change("users: [eddy, keith]", "users: [eddy, keith"),
        [
            "bad.yaml:23:12: YAML syntax error: while parsing a flow sequence that starts at line"
            " 22, column 12: expected ',' or ']', but got ':'",
        ],
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        change("node: isp}}\n", "node: isp}\n"),
        [
            "bad.yaml:47:1: YAML syntax error: while parsing a flow mapping that starts at line"
            " 46, column 15: expected ',' or '}', but got '<stream end>'",
        ],
        id="yaml-unclosed-brace-at-end",
    ),
    pytest.param(
        change("  ns: {role: dns,", "  ns: {role: 'dns,"),
        [
            "bad.yaml:47:1: YAML syntax error: while scanning a quoted scalar that starts at line"
            " 16, column 14: found unexpected end of stream",
        ],
        id="yaml-unclosed-quote",
    ),
    pytest.param(
        change("    role: hub\n", "\trole: hub\n"),
        [
            "bad.yaml:18:1: YAML syntax error: while scanning for the next token, found character"
            " '\\t' that cannot start any token (indent with spaces; YAML does not allow tabs"
            " here)",
        ],
        id="yaml-tab-indent",
    ),
    pytest.param(
        change("    users: [eddy, keith]\n", "    users: [eddy, keith]\n    users: [eddy]\n"),
        [
            "bad.yaml:23:5: nodes.hub.users: duplicate key 'users' (first given at line 22)",
        ],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        BASE + "name: again\n",
        [
            "bad.yaml:47:1: name: duplicate key 'name' (first given at line 1)",
        ],
        id="yaml-duplicate-top-level-key",
    ),
    pytest.param(
        change("aliases: {staff: [eddy, keith]}", "aliases: {staff: [eddy], staff: [keith]}"),
        [
            "bad.yaml:23:30: nodes.hub.aliases.staff: duplicate key 'staff' (first given at line"
            " 23)",
        ],
        id="yaml-duplicate-key-in-flow-mapping",
    ),
    pytest.param(
        "",
        [
            "bad.yaml:1:1: the file is empty; expected a topology",
        ],
        id="empty-file",
    ),
    pytest.param(
        "# yaml-language-server: $schema=schema.json\n",
        [
            "bad.yaml:1:1: the file is empty; expected a topology",
        ],
        id="comments-only",
    ),
    pytest.param(
        "- name: mini\n- networks: {}\n",
        [
            "bad.yaml:1:1: expected a mapping of topology fields, got a list",
        ],
        id="top-level-list",
    ),
    pytest.param(
        "just a string\n",
        [
            "bad.yaml:1:1: expected a mapping of topology fields, got 'just a string'",
        ],
        id="top-level-string",
    ),
    # unknown keys
    pytest.param(
        change("operator: pc1\n", "operater: pc1\n"),
        [
            "bad.yaml:3:1: operater: unknown field 'operater'; did you mean 'operator'? (expected"
            " one of: name, description, networks, links, dns, nodes, seed, operator, checks,"
            " matrix)",
        ],
        id="unknown-top-level-key",
    ),
    pytest.param(
        change("    smarthost: mx.example.org\n", "    smarthst: mx.example.org\n"),
        [
            "bad.yaml:25:5: nodes.hub.smarthst: unknown field 'smarthst'; did you mean"
            " 'smarthost'? (expected one of: role, services, hostname, networks, software,"
            " config, settings, local_domains, users, aliases, relay_from, relay_domains,"
            " smarthost, masquerade, policy, retry, faults, mailboxes, fetch, submit_to,"
            " submit_port)",
        ],
        id="unknown-node-key",
    ),
    pytest.param(
        change("state: down,", "statte: down,"),
        [
            "bad.yaml:8:42: links.dialup.statte: unknown field 'statte'; did you mean 'state'?"
            " (expected one of: node, network, state, when_down, on_up, schedule, impair)",
        ],
        id="unknown-link-key",
    ),
    pytest.param(
        change("        to: eddy\n", "        too: eddy\n"),
        [
            "bad.yaml:32:9: nodes.hub.fetch[0].too: unknown field 'too'; did you mean 'to'?"
            " (expected one of: server, protocol, port, user, password, to, multidrop, aka,"
            " postmaster, keep, poll, stls)",
        ],
        id="unknown-fetch-key",
    ),
    pytest.param(
        change("warn_after: 4h", "warn_afte: 4h"),
        [
            "bad.yaml:26:35: nodes.hub.retry.warn_afte: unknown field 'warn_afte'; did you mean"
            " 'warn_after'? (expected one of: intervals, warn_after, give_up_after)",
        ],
        id="unknown-retry-key",
    ),
    pytest.param(
        change("policy: {max_size: 10MB}", "policy: {max_size: 10MB, colour: blue}"),
        [
            "bad.yaml:27:30: nodes.hub.policy.colour: unknown field 'colour' (expected one of:"
            " verify_sender_domain, helo_rdns, spf, vrfy, expn, max_size, max_recipients,"
            " max_received, greylist, starttls, tls_outbound)",
        ],
        id="unknown-policy-key-no-suggestion",
    ),
    pytest.param(
        change("mx: {A: 10.20.0.25}", "mx: {AAAA: 10.20.0.25}"),
        [
            "bad.yaml:13:12: dns.zones[\"example.org\"].mx.AAAA: unknown field 'AAAA' (expected one"
            " of: A, MX, CNAME, TXT, NS, PTR, fault, ttl)",
        ],
        id="unknown-record-type",
    ),
    pytest.param(
        change("{queued: {on: hub}}", "{queud: {on: hub}}"),
        [
            "bad.yaml:44:16: checks.queued[1].expect.queud: unknown field 'queud'; did you mean"
            " 'queued'? (expected one of: delivered, not_delivered, queued, bounced, rejected,"
            " within)",
        ],
        id="unknown-expect-kind",
    ),
    pytest.param(
        change("mail_from: eddy@home.test", "mail_form: eddy@home.test"),
        [
            "bad.yaml:43:13: checks.queued[0].send.mail_from: missing required field 'mail_from'",
            "bad.yaml:43:25: checks.queued[0].send.mail_form: unknown field 'mail_form'; did you"
            " mean 'mail_from'? (expected one of: from, mail_from, to, subject, body, headers,"
            " via, attach)",
        ],
        id="unknown-send-key-and-missing",
    ),
    # wrong types
    pytest.param(
        change("users: [eddy, keith]", "users: eddy"),
        [
            "bad.yaml:22:12: nodes.hub.users: expected a list, got 'eddy'",
        ],
        id="string-for-list",
    ),
    pytest.param(
        change("networks:\n  lan", "networks: lan\nxnetworks:\n  lan"),
        [
            "bad.yaml:4:11: networks: expected a mapping, got 'lan'",
            "bad.yaml:5:1: xnetworks: unknown field 'xnetworks'; did you mean 'networks'?"
            " (expected one of: name, description, networks, links, dns, nodes, seed, operator,"
            " checks, matrix)",
        ],
        id="string-for-mapping",
    ),
    pytest.param(
        change("    hostname: hub.home.test\n", "    hostname: {name: hub.home.test}\n"),
        [
            "bad.yaml:19:15: nodes.hub.hostname: expected a string, got a mapping",
        ],
        id="mapping-for-string",
    ),
    pytest.param(
        change("    smarthost: mx.example.org\n", "    smarthost: true\n"),
        [
            "bad.yaml:25:16: nodes.hub.smarthost: expected a string, got the boolean true",
        ],
        id="bool-for-string",
    ),
    pytest.param(
        change("aliases: {staff: [eddy, keith]}", "aliases: [staff]"),
        [
            "bad.yaml:23:14: nodes.hub.aliases: expected a mapping, got a list",
        ],
        id="list-for-mapping",
    ),
    pytest.param(
        change("    fetch:\n      - server", "    fetch:\n        server"),
        [
            "bad.yaml:29:9: nodes.hub.fetch: expected a list, got a mapping",
        ],
        id="mapping-for-list",
    ),
    pytest.param(
        change("policy: {max_size: 10MB}", "policy: {verify_sender_domain: maybe}"),
        [
            "bad.yaml:27:36: nodes.hub.policy.verify_sender_domain: expected true or false, got"
            " 'maybe'",
        ],
        id="not-a-boolean",
    ),
    pytest.param(
        change("submit_to: hub}", "submit_to: hub, submit_port: twenty-five}"),
        [
            "bad.yaml:40:84: nodes.pc1.submit_port: expected a whole number, got 'twenty-five'",
        ],
        id="string-for-integer",
    ),
    pytest.param(
        change("submit_to: hub}", "submit_to: hub, submit_port: 70000}"),
        [
            "bad.yaml:40:84: nodes.pc1.submit_port: expected a number less than or equal to"
            " 65535, got 70000",
        ],
        id="port-out-of-range",
    ),
    pytest.param(
        change("  pc1: {role: client, networks: {lan: 192.168.10.11}, submit_to: hub}", "  pc1:"),
        [
            "bad.yaml:40:7: nodes.pc1: expected a mapping, got nothing (null)",
        ],
        id="null-node",
    ),
    pytest.param(
        change("checks:\n  queued:\n", "checks:\n  queued: {send: x}\n  other:\n"),
        [
            "bad.yaml:42:11: checks.queued: expected a list, got a mapping",
        ],
        id="checks-not-a-list",
    ),
    pytest.param(
        change("policy: {max_size: 10MB}", "policy: {vrfy: 550}"),
        [
            "bad.yaml:27:20: nodes.hub.policy.vrfy: expected 250, 252 or 502, got 550",
        ],
        id="vrfy-code-not-allowed",
    ),
    # missing fields
    pytest.param(
        change("name: mini\n", ""),
        [
            "bad.yaml:1:1: name: missing required field 'name'",
        ],
        id="missing-name",
    ),
    pytest.param(
        change("  lan: {subnet: 192.168.10.0/24}", "  lan: {description: home}"),
        [
            "bad.yaml:5:8: networks.lan.subnet: missing required field 'subnet'",
        ],
        id="missing-subnet",
    ),
    pytest.param(
        change(
            "  pc1: {role: client, networks: {lan: 192.168.10.11}, submit_to: hub}",
            "  pc1: {role: client, submit_to: hub}",
        ),
        [
            "bad.yaml:40:8: nodes.pc1.networks: missing required field 'networks'",
        ],
        id="missing-node-networks",
    ),
    pytest.param(
        change("        password: pw\n", ""),
        [
            "bad.yaml:29:9: nodes.hub.fetch[0].password: missing required field 'password'",
        ],
        id="missing-fetch-password",
    ),
    pytest.param(
        change(
            "    policy: {max_size: 10MB}\n",
            "    policy: {max_size: 10MB}\n    masquerade: {domains: [home.test]}\n",
        ),
        [
            "bad.yaml:28:17: nodes.hub.masquerade.as: missing required field 'as'",
        ],
        id="missing-masquerade-as",
    ),
    # dangling references
    pytest.param(
        change("dialup: {node: hub,", "dialup: {node: hubb,"),
        [
            "bad.yaml:8:18: links.dialup.node: unknown node 'hubb'; did you mean 'hub'? (expected"
            " one of: ns, hub, isp, pc1)",
        ],
        id="link-unknown-node",
    ),
    pytest.param(
        change("network: internet, state", "network: internett, state"),
        [
            "bad.yaml:8:32: links.dialup.network: unknown network 'internett'; did you mean"
            " 'internet'? (expected one of: lan, internet)",
        ],
        id="link-unknown-network",
    ),
    pytest.param(
        change(
            "dialup: {node: hub, network: internet, state: down, on_up: [flush, fetch]}",
            "dialup: {node: isp, network: lan}",
        ),
        [
            "bad.yaml:8:32: links.dialup.network: node 'isp' is not attached to network 'lan';"
            " expected one of its networks: internet",
        ],
        id="link-network-not-attached",
    ),
    pytest.param(
        change("      - server: pop.example.org\n", "      - server: pop3.example.org\n"),
        [
            "bad.yaml:29:17: nodes.hub.fetch[0].server: 'pop3.example.org' does not resolve in"
            " the lab; did you mean 'pop.example.org'? (expected a node name, a node's hostname,"
            " an IP address or a name with an A record in dns.zones)",
        ],
        id="fetch-server-does-not-resolve",
    ),
    pytest.param(
        change("submit_to: hub}", "submit_to: hubb}"),
        [
            "bad.yaml:40:66: nodes.pc1.submit_to: 'hubb' does not resolve in the lab; did you"
            " mean 'hub'? (expected a node name, a node's hostname, an IP address or a name with"
            " an A record in dns.zones)",
        ],
        id="submit-to-does-not-resolve",
    ),
    pytest.param(
        change("send: {from: pc1,", "send: {from: pc9,"),
        [
            "bad.yaml:43:20: checks.queued[0].send.from: unknown node 'pc9'; did you mean 'pc1'?"
            " (expected one of: ns, hub, isp, pc1)",
        ],
        id="check-send-unknown-node",
    ),
    pytest.param(
        change("{queued: {on: hub}}", "{queued: {on: pc1}}"),
        [
            "bad.yaml:44:29: checks.queued[1].expect.queued.on: node 'pc1' runs no smtp service",
        ],
        id="check-queued-on-non-mta",
    ),
    pytest.param(
        change("node: isp}}", "node: ips}}"),
        [
            "bad.yaml:46:56: checks.queued[3].expect.delivered.node: unknown node 'ips'; did you"
            " mean 'isp'? (expected one of: ns, hub, isp, pc1)",
        ],
        id="check-delivered-unknown-node",
    ),
    pytest.param(
        change("- link: {dialup: up}", "- link: {modem: up}"),
        [
            "bad.yaml:45:14: checks.queued[2].link.modem: unknown link 'modem' (expected one of:"
            " dialup)",
        ],
        id="check-unknown-link",
    ),
    pytest.param(
        change("operator: pc1\n", "operator: pc2\n"),
        [
            "bad.yaml:3:11: operator: unknown node 'pc2'; did you mean 'pc1'? (expected one of:"
            " ns, hub, isp, pc1)",
        ],
        id="operator-unknown-node",
    ),
    pytest.param(
        change("operator: pc1\n", "operator: hub\n"),
        [
            "bad.yaml:3:11: operator: 'hub' is not a client; expected a node with role: client",
        ],
        id="operator-not-a-client",
    ),
    pytest.param(
        change("relay_from: [lan]", "relay_from: [wan]"),
        [
            "bad.yaml:24:18: nodes.hub.relay_from[0]: 'wan' is neither a network of this lab"
            " (lan, internet) nor a CIDR such as 10.20.1.0/24",
        ],
        id="relay-from-unknown-network",
    ),
    pytest.param(
        change("relay_from: [lan]", "relay_from: [lan]\n    relay_domains: [home.test]"),
        [
            "bad.yaml:25:21: nodes.hub.relay_domains[0]: 'home.test' is delivered here"
            " (local_domains or a maildrop's domains); expected a domain this node relays to"
            " its mail exchangers",
        ],
        id="relay-domain-is-local",
    ),
    pytest.param(
        change("relay_from: [lan]", "relay_from: [lan]\n    relay_domains: [nowhere.test]"),
        [
            "bad.yaml:25:21: nodes.hub.relay_domains[0]: 'nowhere.test' has no MX and no"
            " address in the lab's DNS, so its mail would have nowhere to go; expected an MX"
            " record for it under dns.zones",
        ],
        id="relay-domain-without-mx",
    ),
    pytest.param(
        change("submit_to: hub}", "submit_to: hub, relay_domains: [example.org]}"),
        [
            "bad.yaml:40:71: nodes.pc1.relay_domains: relay_domains is an MTA setting but node"
            " 'pc1' runs no smtp service; expected role: mta, hub or isp",
        ],
        id="relay-domain-on-a-non-mta",
    ),
    # networks and addresses
    pytest.param(
        change(
            "  internet: {subnet: 10.20.0.0/16}\n",
            "  internet: {subnet: 10.20.0.0/16}\n  dmz: {subnet: 192.168.10.128/25}\n",
        ),
        [
            "bad.yaml:7:17: networks.dmz.subnet: 192.168.10.128/25 overlaps network 'lan'"
            " (192.168.10.0/24); expected separate subnets",
        ],
        id="overlapping-subnets",
    ),
    pytest.param(
        change("  lan: {subnet: 192.168.10.0/24}", "  lan: {subnet: 192.168.10.1/24}"),
        [
            "bad.yaml:5:17: networks.lan.subnet: expected an IPv4 network in CIDR form such as"
            " 192.168.10.0/24, got '192.168.10.1/24' (192.168.10.1/24 has host bits set)",
        ],
        id="subnet-with-host-bits",
    ),
    pytest.param(
        change("  lan: {subnet: 192.168.10.0/24}", "  lan: {subnet: home-lan}"),
        [
            "bad.yaml:5:17: networks.lan.subnet: expected an IPv4 network in CIDR form such as"
            " 192.168.10.0/24, got 'home-lan' (Expected 4 octets in 'home-lan')",
        ],
        id="subnet-not-cidr",
    ),
    pytest.param(
        change("{lan: 192.168.10.1, internet", "{lan: 192.168.11.1, internet"),
        [
            "bad.yaml:20:21: nodes.hub.networks.lan: 192.168.11.1 is not inside lan"
            " (192.168.10.0/24)",
        ],
        id="address-outside-subnet",
    ),
    pytest.param(
        change("{lan: 192.168.10.1, internet", "{lan: 192.168.10.0, internet"),
        [
            "bad.yaml:20:21: nodes.hub.networks.lan: 192.168.10.0 is the network or broadcast"
            " address of 192.168.10.0/24; expected a host address",
        ],
        id="network-address",
    ),
    pytest.param(
        change("{lan: 192.168.10.1, internet", "{lan: 192.168.10.255, internet"),
        [
            "bad.yaml:20:21: nodes.hub.networks.lan: 192.168.10.255 is the network or broadcast"
            " address of 192.168.10.0/24; expected a host address",
        ],
        id="broadcast-address",
    ),
    pytest.param(
        change("{lan: 192.168.10.11}", "{lan: 192.168.10.1}"),
        [
            "bad.yaml:40:39: nodes.pc1.networks.lan: address 192.168.10.1 is already used by node"
            " 'hub'",
        ],
        id="duplicate-address",
    ),
    pytest.param(
        change("{lan: 192.168.10.11}", "{lan: 192.168.10.300}"),
        [
            "bad.yaml:40:39: nodes.pc1.networks.lan: expected an IPv4 address on that network, or"
            " 'auto', got '192.168.10.300'",
        ],
        id="not-an-ipv4-address",
    ),
    pytest.param(
        change("{lan: 192.168.10.11}", "{wan: 192.168.10.11}"),
        [
            "bad.yaml:40:34: nodes.pc1.networks.wan: unknown network 'wan'; expected one of: lan,"
            " internet",
        ],
        id="unknown-network-on-node",
    ),
    pytest.param(
        change(
            "  internet: {subnet: 10.20.0.0/16}\n",
            "  internet: {subnet: 10.20.0.0/16}\n  home lan: {subnet: 172.16.0.0/24}\n",
        ),
        [
            "bad.yaml:7:3: networks[\"home lan\"]: 'home lan' is not a usable name; expected"
            " letters, digits, '-' and '_', starting with a letter",
        ],
        id="invalid-network-name",
    ),
    pytest.param(
        change(
            "  internet: {subnet: 10.20.0.0/16}\n",
            "  internet: {subnet: 10.20.0.0/16}\n  10net: {subnet: 172.16.0.0/24}\n",
        ),
        [
            "bad.yaml:7:3: networks[\"10net\"]: '10net' is not a usable name; expected letters,"
            " digits, '-' and '_', starting with a letter",
        ],
        id="network-name-starts-with-digit",
    ),
    pytest.param(
        change("  pc1: {role", '  "pc 2": {role: client, networks: [lan]}\n  pc1: {role'),
        [
            "bad.yaml:40:3: nodes[\"pc 2\"]: 'pc 2' is not a usable name; expected letters, digits,"
            " '-' and '_', starting with a letter",
        ],
        id="invalid-node-name",
    ),
    pytest.param(
        change("name: mini\n", "name: my lab\n"),
        [
            "bad.yaml:1:7: name: expected a name of letters, digits, '-' and '_' starting with a"
            " letter, got 'my lab'",
        ],
        id="invalid-lab-name",
    ),
    pytest.param(
        change("    hostname: hub.home.test\n", "    hostname: hub..home.test\n"),
        [
            "bad.yaml:19:15: nodes.hub.hostname: expected a host name such as mail.example.org,"
            " got 'hub..home.test'",
        ],
        id="invalid-hostname",
    ),
    # roles and services
    pytest.param(
        change("    role: hub\n", "    role: relay\n"),
        [
            "bad.yaml:18:11: nodes.hub.role: unknown role 'relay'; expected one of: dns, mta,"
            " hub, isp, pop3, client",
        ],
        id="unknown-role",
    ),
    pytest.param(
        change("  ns: {role: dns,", "  ns: {services: [dns, ldap],"),
        [
            "bad.yaml:16:18: nodes.ns.services: unknown service 'ldap'; expected one of: smtp (or"
            " mta), pop3, dns, fetch, client",
        ],
        id="unknown-service",
    ),
    pytest.param(
        change("  ns: {role: dns,", "  ns: {"),
        [
            "bad.yaml:16:7: nodes.ns: a node needs a role or a list of services",
        ],
        id="no-role-or-services",
    ),
    pytest.param(
        change("  pc1: {role: client,", "  pc1: {services: [client, dns],"),
        [
            "bad.yaml:40:3: nodes.pc1: only one node may run the lab DNS (already 'ns')",
        ],
        id="two-dns-nodes",
    ),
    pytest.param(
        change("submit_to: hub}", "submit_to: hub, smarthost: hub}"),
        [
            "bad.yaml:40:71: nodes.pc1.smarthost: smarthost is an MTA setting but node 'pc1' runs"
            " no smtp service; expected role: mta, hub or isp",
        ],
        id="mta-setting-on-client",
    ),
    pytest.param(
        change("  pc1: {role: client,", "  pc1: {role: client, users: [eddy],"),
        [
            "bad.yaml:40:23: nodes.pc1.users: users is an MTA setting but node 'pc1' runs no smtp"
            " service; expected role: mta, hub or isp",
        ],
        id="users-on-client",
    ),
    # links
    pytest.param(
        change("state: down,", "state: off,"),
        [
            "bad.yaml:8:49: links.dialup.state: expected 'up' or 'down', got 'off'",
        ],
        id="link-state-not-up-or-down",
    ),
    pytest.param(
        change("on_up: [flush, fetch]", "on_up: [flush, fetchmail]"),
        [
            "bad.yaml:8:70: links.dialup.on_up[1]: expected 'flush' or 'fetch', got 'fetchmail'",
        ],
        id="link-unknown-hook",
    ),
    # durations and sizes
    pytest.param(
        change("intervals: [30m, 1h]", "intervals: [30m, 1hour]"),
        [
            "bad.yaml:26:30: nodes.hub.retry.intervals[1]: expected a duration such as 90s, 30m,"
            " 4h, 5d or 1h30m (units ms s m h d w), got '1hour'",
        ],
        id="duration-unknown-unit",
    ),
    pytest.param(
        change("give_up_after: 5d", "give_up_after: -5"),
        [
            "bad.yaml:26:66: nodes.hub.retry.give_up_after: expected a duration of zero or more,"
            " got -5",
        ],
        id="duration-negative",
    ),
    pytest.param(
        change("warn_after: 4h", "warn_after: true"),
        [
            "bad.yaml:26:47: nodes.hub.retry.warn_after: expected a duration such as 90s, 30m,"
            " 4h, 5d or 1h30m, got true",
        ],
        id="duration-boolean",
    ),
    pytest.param(
        change("intervals: [30m, 1h]", "intervals: []"),
        [
            "bad.yaml:26:24: nodes.hub.retry.intervals: expected at least one retry interval,"
            " each longer than zero",
        ],
        id="retry-intervals-empty",
    ),
    pytest.param(
        change("max_size: 10MB", "max_size: 10 megs"),
        [
            "bad.yaml:27:24: nodes.hub.policy.max_size: expected a size in bytes or such as"
            " 512KB, 10MB, 1MiB, got '10 megs'",
        ],
        id="size-unknown-unit",
    ),
    pytest.param(
        change("max_size: 10MB", "max_size: -1"),
        [
            "bad.yaml:27:24: nodes.hub.policy.max_size: expected a size of zero or more, got -1",
        ],
        id="size-negative",
    ),
    # DNS
    pytest.param(
        change('"@": {MX: "10 mx.example.org"}', '"@": {MX: "mx.example.org"}'),
        [
            'bad.yaml:12:17: dns.zones["example.org"].@.MX: expected an MX record as \'PREFERENCE'
            " HOST' such as '10 mx.example.org', got 'mx.example.org'",
        ],
        id="mx-missing-preference",
    ),
    pytest.param(
        change('"@": {MX: "10 mx.example.org"}', '"@": {MX: "70000 mx.example.org"}'),
        [
            'bad.yaml:12:17: dns.zones["example.org"].@.MX: MX preference 70000 is out of range;'
            " expected 0 to 65535, got '70000 mx.example.org'",
        ],
        id="mx-preference-too-big",
    ),
    pytest.param(
        change('"@": {MX: "10 mx.example.org"}', '"@": {MX: "10 mx..example.org"}'),
        [
            "bad.yaml:12:17: dns.zones[\"example.org\"].@.MX: MX exchange 'mx..example.org' is not"
            " a host name (or '.' for null MX)",
        ],
        id="mx-bad-host",
    ),
    pytest.param(
        change('"@": {MX: "10 mx.example.org"}', '"@": {MX: ["10 mx.example.org", "20"]}'),
        [
            'bad.yaml:12:39: dns.zones["example.org"].@.MX[1]: expected an MX record as'
            " 'PREFERENCE HOST' such as '10 mx.example.org', got '20'",
        ],
        id="mx-second-item-bad",
    ),
    pytest.param(
        change(
            '"@": {MX: "10 mx.example.org"}',
            '"@": {MX: {preference: 70000, exchange: mx.example.org}}',
        ),
        [
            'bad.yaml:12:30: dns.zones["example.org"].@.MX.preference: expected a number less'
            " than or equal to 65535, got 70000",
        ],
        id="mx-mapping-preference-too-big",
    ),
    pytest.param(
        change("pop: {CNAME: mx.example.org}", "pop: {CNAME: mx.example.org, A: 10.20.0.110}"),
        [
            'bad.yaml:14:12: dns.zones["example.org"].pop: a CNAME cannot stand beside other'
            " records at the same name",
        ],
        id="cname-beside-other-records",
    ),
    pytest.param(
        change(
            "      pop: {CNAME: mx.example.org}\n",
            "      pop: {CNAME: mx.example.org}\n      www.example.com.: {A: 10.20.0.80}\n",
        ),
        [
            'bad.yaml:15:7: dns.zones["example.org"]["www.example.com."]: \'www.example.com.\' is'
            " not inside zone 'example.org'; expected a name ending in .example.org.",
        ],
        id="record-outside-zone",
    ),
    pytest.param(
        change("  ns: {role: dns, networks: {internet: 10.20.0.53}}\n", ""),
        [
            "bad.yaml:10:3: dns.zones: zones are defined but no node runs the dns service;"
            " expected a node with role: dns",
        ],
        id="zones-without-dns-node",
    ),
    pytest.param(
        change("    example.org:\n", '    "example org":\n'),
        [
            'bad.yaml:11:5: dns.zones["example org"]: expected a host name such as'
            " mail.example.org, got 'example org'",
        ],
        id="invalid-zone-name",
    ),
    pytest.param(
        change("mx: {A: 10.20.0.25}", "mx: {A: 10.20.0.25, fault: broken}"),
        [
            "bad.yaml:13:34: dns.zones[\"example.org\"].mx.fault: expected 'servfail', 'timeout',"
            " 'nxdomain' or 'refused', got 'broken'",
        ],
        id="unknown-dns-fault",
    ),
    pytest.param(
        change("mx: {A: 10.20.0.25}", "mx: {A: 10.20.0.256}"),
        [
            'bad.yaml:13:15: dns.zones["example.org"].mx.A: expected an IPv4 address such as'
            " 10.20.0.25, got '10.20.0.256'",
        ],
        id="bad-a-record",
    ),
    # aliases and fetch
    pytest.param(
        change("aliases: {staff: [eddy, keith]}", "aliases: {staff: [eddy, kieth]}"),
        [
            "bad.yaml:23:29: nodes.hub.aliases.staff[1]: 'kieth' is not a local user or alias;"
            " expected one of the users, another alias, or a remote address user@domain",
        ],
        id="alias-target-not-a-user",
    ),
    pytest.param(
        change("        to: eddy\n", "        to: eddy\n        multidrop: {eddy: null}\n"),
        [
            "bad.yaml:29:9: nodes.hub.fetch[0]: a fetch job is single-drop (to) or multidrop, not"
            " both",
        ],
        id="fetch-both-to-and-multidrop",
    ),
    pytest.param(
        change("        to: eddy\n", ""),
        [
            "bad.yaml:29:9: nodes.hub.fetch[0]: a fetch job needs a single-drop user (to) or a"
            " multidrop map",
        ],
        id="fetch-neither-to-nor-multidrop",
    ),
    pytest.param(
        change("        to: eddy\n", "        multidrop: {eddy: null, nelug: edward}\n"),
        [
            "bad.yaml:32:40: nodes.hub.fetch[0].multidrop.nelug: 'edward' is not a local user of"
            " 'hub'; expected one of: eddy, keith, postmaster, staff",
        ],
        id="fetch-multidrop-target-not-local",
    ),
    pytest.param(
        change("        to: eddy\n", "        to: edward\n"),
        [
            "bad.yaml:32:13: nodes.hub.fetch[0].to: 'edward' is not a local user of 'hub';"
            " expected one of: eddy, keith, postmaster, staff",
        ],
        id="fetch-to-not-local",
    ),
    # checks
    pytest.param(
        change("- link: {dialup: up}", "- {link: {dialup: up}, advance: 5m}"),
        [
            "bad.yaml:45:7: checks.queued[2]: a step has exactly one action (send, link, advance,"
            " flush, fetch, expect), got link, advance",
        ],
        id="step-with-two-actions",
    ),
    pytest.param(
        change("- link: {dialup: up}", "- {}"),
        [
            "bad.yaml:45:7: checks.queued[2]: a step has exactly one action (send, link, advance,"
            " flush, fetch, expect), got nothing",
        ],
        id="step-with-no-action",
    ),
    pytest.param(
        change("- expect: {queued: {on: hub}}", "- expect: {within: 5s}"),
        [
            "bad.yaml:44:15: checks.queued[1].expect: expected exactly one of delivered,"
            " not_delivered, queued, bounced, rejected",
        ],
        id="expect-with-none",
    ),
    pytest.param(
        change(
            "- expect: {queued: {on: hub}}", "- expect: {queued: {on: hub}, bounced: {to: eddy}}"
        ),
        [
            "bad.yaml:44:15: checks.queued[1].expect: expected exactly one of delivered,"
            " not_delivered, queued, bounced, rejected, got queued, bounced",
        ],
        id="expect-with-two",
    ),
    pytest.param(
        change("- link: {dialup: up}", "- link: {dialup: on}"),
        [
            "bad.yaml:45:22: checks.queued[2].link.dialup: expected 'up' or 'down', got 'on'",
        ],
        id="link-step-bad-state",
    ),
    # software, config and settings per service
    pytest.param(
        change("    role: hub\n", "    role: hub\n    software: postfx\n"),
        [
            "bad.yaml:19:15: nodes.hub.software: unknown software 'postfx'; did you mean"
            " 'postfix'? (expected one of: builtin, postfix, exim, sendmail, dovecot, fetchmail)",
        ],
        id="software-unknown",
    ),
    pytest.param(
        change("    role: isp\n", "    role: isp\n    software: {smtp: courier}\n"),
        [
            "bad.yaml:35:22: nodes.isp.software.smtp: unknown software 'courier' (expected one"
            " of: builtin, postfix, exim, sendmail, dovecot, fetchmail)",
        ],
        id="software-unknown-in-mapping",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    software: dovecot\n"),
        [
            "bad.yaml:19:15: nodes.hub.software: dovecot does not run smtp (it runs pop3), and"
            " one name is the smtp software: expected builtin, postfix, exim or sendmail; for"
            " pop3 write software: {pop3: dovecot}",
        ],
        id="software-pop3-name-alone",
    ),
    pytest.param(
        change("    role: isp\n", "    role: isp\n    software: {pop3: postfix}\n"),
        [
            "bad.yaml:35:22: nodes.isp.software.pop3: postfix does not run pop3 (it runs smtp);"
            " expected builtin or dovecot",
        ],
        id="software-not-offered-for-service",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    software: {smtp: postfix, pop3: dovecot}\n"),
        [
            "bad.yaml:19:31: nodes.hub.software.pop3: dovecot runs pop3, but node 'hub' runs no"
            " pop3 service; expected mailboxes, or role: isp or pop3",
        ],
        id="software-for-a-service-not-run",
    ),
    pytest.param(
        change("  ns: {role: dns,", "  ns: {role: dns, software: exim,"),
        [
            "bad.yaml:16:19: nodes.ns.software: exim runs smtp, but node 'ns' runs no smtp"
            " service; expected role: mta, hub or isp",
        ],
        id="software-on-a-node-without-smtp",
    ),
    pytest.param(
        change("    role: isp\n", "    role: isp\n    software: {pop: dovecot}\n"),
        [
            "bad.yaml:35:16: nodes.isp.software.pop: unknown field 'pop'; did you mean 'pop3'?"
            " (expected one of: smtp, pop3, fetch)",
        ],
        id="software-unknown-service",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    software:\n"),
        [
            "bad.yaml:19:14: nodes.hub.software: expected a software name for smtp (builtin,"
            " postfix, exim or sendmail) or a mapping of service -> software, got nothing"
            " (null)",
        ],
        id="software-empty",
    ),
    pytest.param(
        change(
            "    role: hub\n",
            "    role: hub\n    software: postfix\n    config: /nonexistent/hub-postfix\n",
        ),
        [
            "bad.yaml:20:13: nodes.hub.config: no such directory /nonexistent/hub-postfix"
            " (postfix takes a directory holding main.cf and/or master.cf)",
        ],
        id="config-missing-directory",
    ),
    pytest.param(
        change(
            "    role: isp\n",
            "    role: isp\n    software: {pop3: dovecot}\n"
            "    config: {pop3: /nonexistent/dovecot.conf}\n",
        ),
        [
            "bad.yaml:36:20: nodes.isp.config.pop3: no such file /nonexistent/dovecot.conf"
            " (dovecot takes a file such as dovecot.conf)",
        ],
        id="config-missing-file",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    config: /nonexistent/hub-postfix\n"),
        [
            "bad.yaml:19:5: nodes.hub.config: config is for real software, but smtp runs"
            " builtin on node 'hub'; name its software too (software: postfix)",
        ],
        id="config-for-builtin",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    config: {pop3: /nonexistent/dovecot.conf}\n"),
        [
            "bad.yaml:19:14: nodes.hub.config.pop3: config for pop3, but node 'hub' runs no"
            " pop3 service; expected mailboxes, or role: isp or pop3",
        ],
        id="config-for-a-service-not-run",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    software: postfix\n    config: ''\n"),
        [
            "bad.yaml:20:13: nodes.hub.config: expected a path to a file or directory, relative"
            " to the topology file, got an empty string",
        ],
        id="config-empty",
    ),
    pytest.param(
        change("    role: hub\n", "    role: hub\n    settings: {queue_run_delay: 5s}\n"),
        [
            "bad.yaml:19:5: nodes.hub.settings: settings are passed to real software, but smtp"
            " runs builtin on node 'hub' (the built-in software takes the node's own fields);"
            " name its software too (software: postfix)",
        ],
        id="settings-for-builtin",
    ),
    pytest.param(
        change(
            "    role: isp\n",
            "    role: isp\n    software: postfix\n"
            "    settings: {smtp: {maillog_file: /dev/stdout}, pop3: {mail_debug: 'yes'}}\n",
        ),
        [
            "bad.yaml:36:51: nodes.isp.settings.pop3: settings are passed to real software, but"
            " pop3 runs builtin on node 'isp' (the built-in software takes the node's own"
            " fields); name its software too (software: {pop3: dovecot})",
        ],
        id="settings-for-builtin-pop3",
    ),
    pytest.param(
        change(
            "    role: hub\n",
            "    role: hub\n    software: postfix\n"
            "    settings: {soft_bounce: true, mynetworks: [127.0.0.0/8], relayhost: }\n",
        ),
        [
            "bad.yaml:20:29: nodes.hub.settings.soft_bounce: expected a string or a number, got"
            " the boolean true (write it as the software spells it, such as yes or no)",
            "bad.yaml:20:47: nodes.hub.settings.mynetworks: expected a string or a number, got"
            " a list",
            "bad.yaml:20:72: nodes.hub.settings.relayhost: expected a string or a number, got"
            " nothing (null)",
        ],
        id="settings-bad-values",
    ),
    pytest.param(
        change(
            "    role: hub\n",
            "    role: hub\n    software: postfix\n"
            "    settings: {queue_run_delay: 5s, pop3: {mail_debug: 'yes'}}\n",
        ),
        [
            "bad.yaml:20:15: nodes.hub.settings: expected key: value settings (the smtp"
            " software's) or a mapping of service -> key: value settings, not a mix of both",
        ],
        id="settings-mixed-forms",
    ),
    pytest.param(
        change("  ns: {role: dns,", "  ns: {role: dns, settings: {smtp: {a: 1}},"),
        [
            "bad.yaml:16:30: nodes.ns.settings.smtp: settings for smtp, but node 'ns' runs no"
            " smtp service; expected role: mta, hub or isp",
        ],
        id="settings-for-a-service-not-run",
    ),
    # faults
    pytest.param(
        change(
            "    policy: {max_size: 10MB}\n",
            "    policy: {max_size: 10MB}\n    faults: [{on: rcpt, reply: 'try later'}]\n",
        ),
        [
            "bad.yaml:28:32: nodes.hub.faults[0].reply: expected an SMTP reply such as '421 4.3.2"
            " try later', got 'try later'",
        ],
        id="fault-bad-reply",
    ),
    pytest.param(
        change(
            "    policy: {max_size: 10MB}\n",
            "    policy: {max_size: 10MB}\n    faults: [{on: rcpt}]\n",
        ),
        [
            "bad.yaml:28:14: nodes.hub.faults[0]: a fault needs a reply, disconnect: true, a"
            " delay or a rate",
        ],
        id="fault-does-nothing",
    ),
    pytest.param(
        change(
            "    policy: {max_size: 10MB}\n",
            "    policy: {max_size: 10MB}\n    faults: [{on: quit, reply: 421 bye}]\n",
        ),
        [
            "bad.yaml:28:19: nodes.hub.faults[0].on: expected 'connect', 'helo', 'mail', 'rcpt',"
            " 'data' or 'dot', got 'quit'",
        ],
        id="fault-unknown-stage",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_bad_topology(text: str, expected: list[str]) -> None:
    error = errors_of(text)
    assert [str(p) for p in error.problems] == expected
    assert str(error) == "\n".join(expected)
    assert error.exit_code == 2


def test_cases_are_many_and_distinct() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    texts = [case.values[0] for case in CASES]
    assert len(set(texts)) == len(texts)


def test_every_problem_is_reported_in_file_order() -> None:
    """Five mistakes in five places: all five are reported, sorted by line and column."""
    text = BASE
    for old, new in [
        ("    smarthost: mx.example.org\n", "    smarthst: mx.example.org\n"),  # line 25
        ("operator: pc1\n", "operater: pc1\n"),  # line 3
        ("intervals: [30m, 1h]", "intervals: [30m, 1hour]"),  # line 26
        ("state: down,", "state: off,"),  # line 8
        ("    role: hub\n", "    role: relay\n"),  # line 18
    ]:
        assert text.count(old) == 1
        text = text.replace(old, new)
    error = errors_of(text)
    assert len(error.problems) == 5
    assert [(p.line, p.column, p.path) for p in error.problems] == [
        (3, 1, "operater"),
        (8, 49, "links.dialup.state"),
        (18, 11, "nodes.hub.role"),
        (25, 5, "nodes.hub.smarthst"),
        (26, 30, "nodes.hub.retry.intervals[1]"),
    ]
    assert str(error).splitlines() == [str(p) for p in error.problems]
    assert all(p.file == "bad.yaml" for p in error.problems)


def test_every_cross_reference_problem_is_reported() -> None:
    """The checks across the file also report everything at once, in file order."""
    text = BASE
    for old, new in [
        ("submit_to: hub}", "submit_to: hubb}"),
        ("dialup: {node: hub,", "dialup: {node: hubb,"),
        ("operator: pc1\n", "operator: pc2\n"),
        ("{lan: 192.168.10.11}", "{lan: 192.168.10.1}"),
        ("- link: {dialup: up}", "- link: {modem: up}"),
    ]:
        text = text.replace(old, new)
    error = errors_of(text)
    assert [str(p) for p in error.problems] == [
        "bad.yaml:3:11: operator: unknown node 'pc2'; did you mean 'pc1'?"
        " (expected one of: ns, hub, isp, pc1)",
        "bad.yaml:8:18: links.dialup.node: unknown node 'hubb'; did you mean 'hub'?"
        " (expected one of: ns, hub, isp, pc1)",
        "bad.yaml:40:39: nodes.pc1.networks.lan: address 192.168.10.1 is already used by"
        " node 'hub'",
        "bad.yaml:40:65: nodes.pc1.submit_to: 'hubb' does not resolve in the lab; did you mean"
        " 'hub'? (expected a node name, a node's hostname, an IP address or a name with an A"
        " record in dns.zones)",
        "bad.yaml:45:14: checks.queued[2].link.modem: unknown link 'modem'"
        " (expected one of: dialup)",
    ]


def test_one_wrong_address_does_not_cause_a_second_report() -> None:
    """A name in the lab DNS (pop.example.org, a CNAME) still resolves for the fetch job
    when some node's address is wrong."""
    error = errors_of(change("{lan: 192.168.10.11}", "{lan: 192.168.10.1}"))
    assert [p.path for p in error.problems] == ["nodes.pc1.networks.lan"]


def test_problem_fields() -> None:
    error = errors_of(change("    role: hub\n", "    role: relay\n"))
    assert error.problems == [
        Problem(
            "bad.yaml",
            18,
            11,
            "nodes.hub.role",
            "unknown role 'relay'; expected one of: dns, mta, hub, isp, pop3, client",
        )
    ]


def mx_of(model: Topology) -> list[tuple[int, str]]:
    records = model.dns.zones["example.org"]["@"].MX or []
    return [(r.preference, r.exchange) for r in records]


def pc1_address(model: Topology) -> str:
    return str(assign_addresses(model)["pc1"]["lan"])


@pytest.mark.parametrize(
    ("old", "new", "probe", "expected"),
    [
        pytest.param(
            '"@": {MX: "10 mx.example.org"}', '"@": {MX: "0 ."}', mx_of, [(0, ".")], id="null-mx"
        ),
        pytest.param(
            '"@": {MX: "10 mx.example.org"}',
            '"@": {MX: {preference: 10, exchange: mx.example.org}}',
            mx_of,
            [(10, "mx.example.org")],
            id="mx-as-one-mapping",
        ),
        pytest.param(
            '"@": {MX: "10 mx.example.org"}',
            '"@": {MX: ["10 mx.example.org", {preference: 20, exchange: mx.example.org.}]}',
            lambda m: [(p, x.rstrip(".")) for p, x in mx_of(m)],
            [(10, "mx.example.org"), (20, "mx.example.org")],
            id="mx-list-mixed",
        ),
        pytest.param(
            "state: down,", "state: up,", lambda m: m.links["dialup"].state, "up", id="state-up"
        ),
        # an address left to the lab is the first free one of the subnet (the hub has .1)
        pytest.param(
            "{lan: 192.168.10.11}", "{lan: auto}", pc1_address, "192.168.10.2", id="address-auto"
        ),
        pytest.param(
            "{lan: 192.168.10.11}", "{lan: }", pc1_address, "192.168.10.2", id="address-empty"
        ),
        pytest.param(
            "networks: {lan: 192.168.10.11}",
            "networks: [lan]",
            pc1_address,
            "192.168.10.2",
            id="network-list",
        ),
        pytest.param(
            "  ns: {role: dns,",
            "  ns: {services: [dns],",
            lambda m: (m.nodes["ns"].role, m.nodes["ns"].service_set()),
            (None, {Service.dns}),
            id="services-instead-of-role",
        ),
        pytest.param(
            "    role: hub\n",
            "    services: [mta, fetch]\n",
            lambda m: (m.nodes["hub"].role, m.nodes["hub"].service_set()),
            (None, {Service.smtp, Service.fetch}),  # mta is another name for smtp
            id="mta-alias",
        ),
        pytest.param(
            "    role: hub\n",
            "    role: hub\n    software: postfix\n",
            lambda m: m.nodes["hub"].software_for(Service.smtp),
            Software.postfix,
            id="software-one",
        ),
        pytest.param(
            "    role: hub\n",
            "    role: hub\n    software: {smtp: exim, fetch: fetchmail}\n",
            lambda m: [m.nodes["hub"].software_for(s) for s in (Service.smtp, Service.fetch)],
            [Software.exim, Software.fetchmail],
            id="software-per-service",
        ),
        pytest.param(
            "    role: isp\n",
            "    role: isp\n    software: {smtp: builtin, pop3: dovecot}\n",
            lambda m: [m.nodes["isp"].software_for(s) for s in (Service.smtp, Service.pop3)],
            [Software.builtin, Software.dovecot],
            id="software-builtin-named",
        ),
        pytest.param(
            "    role: hub\n",
            "    role: hub\n    software: postfix\n"
            "    settings: {queue_run_delay: 5s, smtpd_delay_reject: 'no', process_limit: 10}\n",
            lambda m: m.nodes["hub"].settings_for(Service.smtp),
            {"queue_run_delay": "5s", "smtpd_delay_reject": "no", "process_limit": 10},
            id="settings-short-form",
        ),
        pytest.param(
            "    role: isp\n",
            "    role: isp\n    software: {smtp: sendmail, pop3: dovecot}\n"
            "    settings: {smtp: {confTO_QUEUEWARN: 10s}, pop3: {mail_debug: 'yes', x: 0.5}}\n",
            lambda m: [m.nodes["isp"].settings_for(s) for s in (Service.smtp, Service.pop3)],
            [{"confTO_QUEUEWARN": "10s"}, {"mail_debug": "yes", "x": 0.5}],
            id="settings-per-service",
        ),
    ],
)
def test_valid_variants(
    old: str, new: str, probe: Callable[[Topology], object], expected: object
) -> None:
    """Alternative spellings the format allows load, and mean what they say."""
    assert probe(load_text(change(old, new), "good.yaml").model) == expected
