"""The dashboard in a real headless Chromium: the topology drawn, a message sent while
the dial-up link is down waits on the hub, a click raises the link, the message leaves
the hub and lands in the mailbox, and its trace shows the hub's SMTP dialogue. With
MAILLAB_SCREENSHOTS=docs/ the same run writes the pictures of docs/ui.md."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import HOME_DIALUP, screenshot

from lab.web import serve

pytestmark = pytest.mark.lab_backend("inprocess")


def test_a_message_through_the_page(lab_factory: Any, browser: Any) -> None:
    lab = lab_factory(HOME_DIALUP)
    with serve(lab) as web:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(web.url)

        # the topology: both networks, every host with its role, the link down
        page.wait_for_selector("#topo .node[data-node=hub]")
        assert page.locator("#topo .net").count() == 2
        assert page.locator("#topo .node").count() == len(lab.topology.nodes)
        hub = page.locator("#topo .node[data-node=hub]")
        assert "hub · hub" in (hub.text_content() or "")
        assert "moriah.shofar.org.uk" in (hub.text_content() or "")
        link = page.locator("#topo .link[data-link=dialup]")
        assert link.get_attribute("data-state") == "down"
        page.wait_for_selector("#live.on")

        # send from pc1 with the form: the hub queues it (the link is down)
        page.click("#tabs button[data-tab=send]")
        page.select_option("#send-form select[name=from_node]", "pc1")
        page.fill("#send-form input[name=mail_from]", "eddy@shofar.org.uk")
        page.fill("#send-form input[name=to]", "paulmidgley@freeuk.com")
        page.fill("#send-form input[name=subject]", "sent from the page")
        page.fill("#send-form textarea[name=body]", "The modem is down.")
        page.click("#send-form button[type=submit]")
        page.wait_for_selector("#flash.ok >> text=accepted")
        queued = page.locator(".host[data-node=hub] .qentry")
        queued.first.wait_for()
        assert "paulmidgley@freeuk.com" in queued.first.inner_text()
        assert page.locator(".host[data-node=hub]").get_attribute("data-depth") == "1"
        queue_id = queued.first.get_attribute("data-id")
        assert queue_id
        page.click("#tabs button[data-tab=events]")
        page.wait_for_selector("#events .row >> text=queue.deferred")
        screenshot(page, "ui-queued")

        # click the link up: the hub's queue empties, the message lands at freeuk
        link.click()
        page.wait_for_selector("#topo .link[data-link=dialup][data-state=up]")
        page.wait_for_selector(".host[data-node=hub][data-depth='0']")
        page.click("#topo .node[data-node=freeuk]")
        page.click("#mbx-list .mbx-user[data-user=paulmidgley]")
        page.click("#mbx-messages li >> text=sent from the page")
        page.wait_for_selector("#mbx-message ol.received li")
        assert "by scrabble.freeuk.net" in page.inner_text("#mbx-message ol.received li >> nth=0")
        assert "The modem is down." in page.inner_text("#mbx-message pre.body")
        screenshot(page, "ui-delivered")

        # its trace: the hub's hop shows pc1's MAIL FROM, as the hub heard it
        page.click("#mbx-message .open-trace")
        hub_hop = page.locator("#trace .hop[data-node=hub]")
        hub_hop.wait_for()
        assert hub_hop.get_attribute("data-id") == queue_id
        dialogue = hub_hop.locator(".dialogue").inner_text()
        assert "C: MAIL FROM:<eddy@shofar.org.uk>" in dialogue
        assert "S: 250 2.0.0 " + queue_id in dialogue
        assert page.locator("#trace .hop").count() == 3  # hub, isp, freeuk
        screenshot(page, "ui-trace")
        assert errors == []
        page.close()


def test_the_event_list_keeps_up_with_ten_thousand_events(lab_factory: Any, browser: Any) -> None:
    """10,000 events reach the page, the DOM holds only the rows in view, and a filter
    over all of them answers at once."""
    lab = lab_factory(HOME_DIALUP)
    with serve(lab) as web:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(web.url)
        page.wait_for_selector("#live.on")

        async def burst() -> int:
            bus = lab.backend.events
            for i in range(10_000):
                bus.emit("hub", "test.burst", n=i, odd=i % 2 == 1)
            return bus.events[-1].seq

        last = lab.run(burst())
        page.wait_for_function(f"window.maillab.rendered >= {last}", timeout=20_000)
        rows = page.locator("#events .row").count()
        assert 0 < rows < 100, rows
        page.fill("#event-filters input[name=kind]", "test.burst")
        page.wait_for_selector("#event-count >> text=10000 of")
        started = page.evaluate("performance.now()")
        page.fill("#event-filters input[name=kind]", "smtp.*")
        page.wait_for_function(
            "!document.querySelector('#event-count').textContent.startsWith('10000')"
        )
        took = page.evaluate("performance.now()") - started
        assert took < 1000, f"filtering 10,000 events took {took:.0f} ms"
        page.close()


def test_the_page_needs_the_token(lab_factory: Any, browser: Any) -> None:
    lab = lab_factory(HOME_DIALUP)
    with serve(lab) as web:
        page = browser.new_page()
        response = page.goto(web.origin + "/")
        assert response is not None and response.status == 401
        assert "token" in page.inner_text("body")
        page.close()
