"""Impairments over the HTTP API, on every --lab-backend backend: a link's rate and
hang-up changed at run time, shown in the status, refused with a JSON error when wrong,
and a network's cleared again."""

from __future__ import annotations

from conftest import Api

from lab.harness import Lab


def test_impairments_through_the_api(web_api: tuple[Lab, Api]) -> None:
    lab, api = web_api
    changed = api.post("/api/impair/dialup", {"rate": "33.6kbit", "drop_after": "50KB"})
    assert changed == {"name": "dialup", "impair": {"rate": "33.6kbit", "drop_after": 50000}}
    assert api.get("/api/status")["links"]["dialup"]["impair"] == changed["impair"]
    more = api.post("/api/impair/dialup", {"rate": "56kbit"})
    assert more["impair"] == {"rate": "56kbit", "drop_after": 50000}
    assert lab.backend.impairs["dialup"] == more["impair"]

    wrong = api.call("POST", "/api/impair/dialup", {"rate": "fast"})
    assert wrong.status == 400, wrong
    assert wrong.json["error"].startswith("impairment of dialup: rate: expected a rate such as")
    unknown = api.call("POST", "/api/impair/modem", {"rate": "33.6kbit"})
    assert unknown.status in (400, 404), unknown
    assert "unknown link or network 'modem'" in unknown.json["error"]

    cleared = api.post("/api/impair/dialup", {"clear": True})
    assert cleared == {"name": "dialup", "impair": {}}
    assert api.get("/api/status")["links"]["dialup"]["impair"] == {}
    kinds = [e.kind for e in lab.events if e.kind == "link.impaired"]
    assert len(kinds) == 3
