"""Delivery status notifications as they landed in a mailbox: the blocks of their
message/delivery-status part (RFC 3464), read from the message itself, not from the
MTA's log, so a check means the same whatever MTA wrote the DSN."""

from __future__ import annotations

import email.message
from typing import Any

from lab.topology.checks import DsnExpect


def dsn_words(d: DsnExpect) -> str:
    """'a DSN with Action: delayed for paulmidgley@freeuk.com'."""
    words = f"a DSN with Action: {d.action}"
    if d.recipient:
        words += f" for {d.recipient}"
    if d.status:
        words += f", Status: {d.status}..."
    return words


def recipient_blocks(message: email.message.Message) -> list[dict[str, str]]:
    """The per-recipient blocks (those with an Action:) of every message/delivery-status
    part, each as lowercase field name -> value."""
    found: list[dict[str, str]] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload: Any = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in blocks:
            fields = {str(k).lower(): str(v).strip() for k, v in block.items()}
            if "action" in fields:
                found.append(fields)
    return found


def _about(block: dict[str, str], recipient: str) -> bool:
    want = recipient.strip("<>").lower()
    for name in ("final-recipient", "original-recipient"):
        value = block.get(name, "")
        address = value.partition(";")[2] if ";" in value else value
        if address.strip().strip("<>").lower() == want:
            return True
    return False


def dsn_mismatch(message: email.message.Message, want: DsnExpect) -> str | None:
    """None when the message is a DSN as `want` says; else what it is instead."""
    blocks = recipient_blocks(message)
    if not blocks:
        kind = message.get_content_type()
        return f"it is not a DSN (no message/delivery-status part; it is {kind})"
    for block in blocks:
        if want.recipient and not _about(block, want.recipient):
            continue
        if block["action"].lower() != want.action:
            continue
        if want.status and not block.get("status", "").startswith(want.status):
            continue
        return None
    said = "; ".join(
        f"{b.get('final-recipient', '?')}: Action: {b['action']}, Status: {b.get('status', '?')}"
        for b in blocks
    )
    return f"its delivery-status blocks say {said}"
