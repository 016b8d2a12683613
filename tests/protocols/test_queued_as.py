"""The next hop's queue id in its 250 after the data, in each server's words: what links
one hop of a trace to the next (Postfix and Exim logs quote the reply they got)."""

from __future__ import annotations

import pytest

from lab.protocols.smtp import queued_as


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("250 2.0.0 Ok: queued as 4F1C2A9B3D", "4F1C2A9B3D"),  # Postfix
        ("250 OK id=1qXyZa-000123-AB", "1qXyZa-000123-AB"),  # Exim
        ("250 2.0.0 14C4F092D1 Message accepted for delivery", "14C4F092D1"),  # built-in
        ("250 p4BLhT3x012345 Message accepted for delivery", "p4BLhT3x012345"),  # sendmail
        ("250 ok", ""),
        ("250 2.0.0 OK DONE", ""),
    ],
)
def test_queue_id_in_a_reply(reply: str, queue_id: str) -> None:
    assert queued_as(reply) == queue_id
