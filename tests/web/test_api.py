"""The HTTP API over real HTTP, on every --lab-backend backend: what the CLI does
(status, send, link, flush, queue, mailbox, trace, clock, DNS, faults, events), the
event stream, the server-side wait, and the checks that keep other web pages out."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
from conftest import Api

from lab.harness import Lab

TO = "paulmidgley@freeuk.com"
SEND = {"from_node": "pc1", "mail_from": "eddy@shofar.org.uk", "to": [TO], "subject": "api"}


def test_a_message_through_the_api(web_api: tuple[Lab, Api]) -> None:
    _lab, api = web_api
    topology = api.get("/api/topology")
    assert set(topology["networks"]) == {"lan", "internet"}
    assert topology["nodes"]["hub"]["role"] == "hub"
    assert topology["nodes"]["hub"]["addresses"] == {
        "lan": "192.168.10.1",
        "internet": "10.20.9.201",
    }
    assert topology["nodes"]["hub"]["software"]["smtp"] == "builtin"
    assert topology["links"]["dialup"]["state"] == "down"
    assert api.get("/api/status")["links"]["dialup"]["state"] == "down"

    sent = api.post("/api/send", SEND | {"headers": {"X-Lab": "api"}, "body": "The modem is down."})
    assert sent["accepted"] and sent["queue_id"]
    qid = sent["queue_id"]
    waited = api.get(f"/api/wait?until=queued&node=hub&to={TO}&timeout=10")
    assert waited["event"]["kind"] == "queue.deferred" and waited["event"]["data"]["id"] == qid
    [entry] = api.get("/api/nodes/hub/queue")
    assert entry["id"] == qid and entry["recipients"] == [TO] and entry["attempts"] >= 1
    assert "link to internet is down" in entry["last_reply"]
    clock = api.get("/api/clock")
    assert any(qid in t["name"] for t in clock["timers"]), clock

    assert api.post("/api/links/dialup", {"state": "up"}) == {"link": "dialup", "state": "up"}
    delivered = api.get(f"/api/wait?until=delivered&to={TO}&timeout=20")["event"]
    assert delivered["node"] == "freeuk"
    assert delivered["data"]["envelope_from"] == "eddy@shofar.uklinux.net"  # masqueraded
    assert api.get("/api/nodes/hub/queue?settle=true") == []
    assert api.get("/api/nodes/freeuk/mailboxes")["paulmidgley"] == 1
    [message] = api.get("/api/nodes/freeuk/mailboxes/paulmidgley")
    assert message["subject"] == "api" and message["body"].strip() == "The modem is down."
    assert ["X-Lab", "api"] in message["headers"]
    assert len(message["received"]) >= 3 and "by scrabble.freeuk.net" in message["received"][0]
    assert message["raw"].startswith("Return-Path:") or "Received:" in message["raw"]

    trace = api.get(f"/api/trace/{qid}")
    assert [h["node"] for h in trace["hops"]] == ["hub", "isp", "freeuk"]
    hub = trace["hops"][0]
    commands = [
        (d["data"]["command"], d["data"]["arg"])
        for d in hub["dialogue"]
        if d["kind"] == "smtp.command"
    ]
    assert ("MAIL", "FROM:<eddy@shofar.org.uk>") in commands
    isp = trace["hops"][1]
    isp_mail = [d["data"]["arg"] for d in isp["dialogue"] if d["data"].get("command") == "MAIL"]
    assert isp_mail == ["FROM:<eddy@shofar.uklinux.net>"]

    by_message = api.get(f"/api/events?message={qid}&kind=queue.*")
    assert by_message and all(e["kind"].startswith("queue.") for e in by_message)
    assert all(e["node"] == "hub" for e in api.get("/api/events?node=hub&limit=5"))

    advanced = api.post("/api/clock/advance", {"duration": "1h"})
    assert advanced["advanced"] == "1h" and advanced["now"] >= clock["now"] + 3600


def test_dns_faults_and_flush(web_api: tuple[Lab, Api]) -> None:
    _lab, api = web_api
    rows = api.get("/api/dns")
    assert {"name": "freeuk.com", "type": "MX", "values": ["10 scrabble.freeuk.net"]} in rows
    edited = api.post("/api/dns", {"name": "freeuk.com", "type": "MX", "values": ["20 lug.org.uk"]})
    assert edited["records"] == [{"name": "freeuk.com", "type": "MX", "values": ["20 lug.org.uk"]}]
    api.post("/api/dns", {"name": "freeuk.com", "type": "MX", "values": ["10 scrabble.freeuk.net"]})
    api.post("/api/nodes/freeuk/faults", {"on": "rcpt", "reply": "452 4.3.1 try later", "times": 1})
    api.post("/api/links/dialup", {"state": "up"})
    api.post("/api/send", SEND)
    api.get("/api/wait?until=event&kind=fault.triggered&node=freeuk&timeout=10")
    api.get(f"/api/wait?until=queued&node=isp&to={TO}&timeout=10")  # the ISP tries later
    flushed = api.post("/api/nodes/isp/flush")
    assert flushed["node"] == "isp" and flushed["tried"] >= 1
    api.get(f"/api/wait?until=delivered&to={TO}&timeout=20")


def test_a_wait_that_times_out_says_what_happened(web_api: tuple[Lab, Api]) -> None:
    _lab, api = web_api
    api.post("/api/send", SEND)
    started = time.monotonic()
    reply = api.call("GET", f"/api/wait?until=delivered&to={TO}&timeout=0.5")
    assert reply.status == 408
    assert time.monotonic() - started < 5
    assert reply.json["error"] == f"not delivered for {TO} within 0.5s"
    kinds = [e["kind"] for e in reply.json["happened"]]
    assert "queue.deferred" in kinds and "link.initial" in kinds


def test_the_wait_answers_when_the_event_comes(web_api: tuple[Lab, Api]) -> None:
    lab, api = web_api
    since = lab.events[-1].seq
    result: dict[str, Any] = {}

    def wait() -> None:
        reply = api.call("GET", f"/api/wait?until=delivered&to={TO}&since={since}&timeout=30")
        result["reply"], result["at"] = reply, time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    api.post("/api/links/dialup", {"state": "up"})
    api.post("/api/send", SEND)
    waiter.join(40)
    reply = result["reply"]
    assert reply.status == 200 and reply.json["event"]["data"]["rcpt"] == TO
    assert reply.json["event"]["seq"] > since


def test_the_event_stream(web_api: tuple[Lab, Api]) -> None:
    """Server-Sent Events: the backlog after `since`, then new events as they come."""
    _lab, api = web_api
    host, port = api.origin.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"GET /api/events/stream?since=0&token={api.token} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n\r\n".encode()
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0] and b"text/event-stream" in head
        api.post("/api/send", SEND)
        seqs: list[int] = []
        kinds: list[str] = []
        # the hub defers the message once its 250 went out: after the client's
        # submission or before it, as the two hosts run
        while not {"client.submitted", "queue.deferred"} <= set(kinds):
            chunk = sock.recv(65536)
            assert chunk, "the stream ended"
            buffer += chunk
            for line in buffer.split(b"\n"):
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event["seq"] not in seqs:
                        seqs.append(event["seq"])
                        kinds.append(event["kind"])
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert "link.initial" in kinds and "queue.deferred" in kinds


def test_every_request_needs_the_token_and_this_origin(web_api: tuple[Lab, Api]) -> None:
    lab, api = web_api
    for method, path in (("GET", "/api/status"), ("POST", "/api/links/dialup"), ("GET", "/")):
        reply = api.call(method, path, {"state": "up"} if method == "POST" else None, token=None)
        assert reply.status == 401 and "token" in reply.json["error"]
        wrong = api.call(method, path, {"state": "up"} if method == "POST" else None, token="x")
        assert wrong.status == 401
    evil = {"Origin": "http://evil.example"}
    reply = api.call("POST", "/api/links/dialup", {"state": "up"}, headers=evil)
    assert reply.status == 403 and "evil.example" in reply.json["error"]
    reply = api.call(
        "POST", "/api/links/dialup", {"state": "up"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert reply.status == 403
    rebound = api.call("GET", "/api/status", headers={"Host": "attacker.example:80"})
    assert rebound.status == 403
    assert lab.link("dialup").state == "down"  # none of them reached the lab
    same = api.call("POST", "/api/links/dialup", {"state": "up"}, headers={"Origin": api.origin})
    assert same.status == 200 and "access-control-allow-origin" not in {
        k.lower() for k in same.headers
    }
    openapi = api.call("GET", "/api/openapi.json", token=None)
    assert openapi.status == 200 and "/api/wait" in openapi.json["paths"]


def test_errors_are_json_with_the_labs_message(web_api: tuple[Lab, Api]) -> None:
    _lab, api = web_api
    reply = api.call("GET", "/api/nodes/nowhere/queue")
    assert reply.status == 404 and reply.json["error"].startswith("unknown node 'nowhere'")
    reply = api.call("POST", "/api/links/nowhere", {"state": "up"})
    assert reply.status == 404 and reply.json["error"].startswith("unknown link 'nowhere'")
    reply = api.call("POST", "/api/clock/advance", {"duration": "soon"})
    assert reply.status == 400 and "expected a duration" in reply.json["error"]
    reply = api.call("POST", "/api/send", {"from_node": "pc1"})
    assert reply.status == 422 and "mail_from: Field required" in reply.json["error"]
    reply = api.call("POST", "/api/nodes/pc1/flush")
    assert reply.status == 400 and reply.json["error"] == "node 'pc1' runs no MTA (smtp service)"
    reply = api.call("POST", "/api/nodes/hub/faults", {"on": "rcpt", "reply": "oops"})
    assert reply.status == 400 and "expected an SMTP reply" in reply.json["error"]
    reply = api.call("GET", "/api/wait?until=queued&to=x@y")
    assert reply.status == 400 and "needs node=NODE" in reply.json["error"]


@pytest.mark.lab_backend("inprocess")
def test_make_style_up_with_ui_prints_a_url_that_serves_the_page(tmp_path: Any) -> None:
    """`maillab up --ui -d` prints the page's URL; `maillab ui` gives the same server."""
    import os
    import subprocess
    import sys
    import urllib.request

    from conftest import HOME_DIALUP, ROOT

    env = dict(os.environ, MAILLAB_HOME=str(tmp_path / "home"))

    def maillab(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "lab", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    out = maillab("up", str(HOME_DIALUP), "--name", "webtest", "--ui", "-d")
    try:
        url = next(line.split()[-1] for line in out.splitlines() if "Web dashboard:" in line)
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        with urllib.request.urlopen(url, timeout=10) as page:
            html = page.read().decode()
        assert '<meta name="maillab-token"' in html and "/static/app.js" in html
        info = json.loads(maillab("ui", "--lab", "webtest", "--json"))
        assert info["url"] == url
        # docs/ui/example.sh: a test in another language (bash, curl, jq) passes
        script = subprocess.run(
            ["bash", str(ROOT / "docs" / "ui" / "example.sh")],
            cwd=ROOT,
            env=env | {"LAB": "webtest", "MAILLAB": f"{sys.executable} -m lab"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert script.returncode == 0, script.stdout + script.stderr
        assert "trace: the hub's dialogue has MAIL FROM:<eddy@shofar.org.uk>" in script.stdout
    finally:
        maillab("down", "--lab", "webtest")


def test_schedules_and_timed_faults_through_the_api(web_api: tuple[Lab, Api]) -> None:
    lab, api = web_api
    link = api.call("PUT", "/api/links/dialup/schedule", {"every": "1h", "for": "5m"}).json
    assert link["schedule"]["every"] == "1h" and link["next_dial"] > 0
    api.post("/api/clock/advance", {"duration": "1h1m"})
    ups = [e for e in lab.events if e.kind == "link.up"]
    assert [e.get("cause") for e in ups] == ["schedule"]
    cleared = api.call("DELETE", "/api/links/dialup/schedule").json
    assert "schedule" not in cleared
    reply = api.call("PUT", "/api/links/dialup/schedule", {"every": "1h", "for": "2h"})
    assert reply.status == 400 and "must hang up before the next one" in reply.json["error"]
    rule = {"name": "*.freeuk.com", "fault": "servfail", "until": "30m", "chance": 0.5}
    assert api.post("/api/dns/faults", rule) == {"rule": rule}
    reply = api.call("POST", "/api/dns/faults", {"name": "x", "fault": "broken"})
    assert reply.status == 400 and "fault" in reply.json["error"]
    assert api.call("DELETE", "/api/dns/faults").json == {"cleared": 1}
    api.post("/api/nodes/freeuk/faults", {"on": "mail", "rate": {"messages": 5, "per": "1m"}})
    assert api.call("DELETE", "/api/nodes/freeuk/faults").json == {"node": "freeuk", "cleared": 1}
