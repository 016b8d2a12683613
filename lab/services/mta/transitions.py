"""A recipient's way through the queue, as one table: every change of state goes here.

A queued message keeps a state per recipient (queue.py stores it). A recipient starts
pending; an attempt ends it delivered (2xx), deferred (4xx: tried again on the retry
schedule) or failed (5xx); a recipient still waiting when `give_up_after` has passed
is expired; a failed or expired recipient ends once its DSN is durably queued (or the
sender asked for none with NOTIFY=NEVER). A message leaves the queue when every
recipient is final: delivered, or DSN sent.

The states and the triggers that move between them are the table `TRANSITIONS`, in the
manner of lab/protocols/pop3.py and h11's `_state.py`. `move` is the only way the MTA
changes a recipient's state; a trigger missing from a state's row is a bug in the
caller and raises `IllegalTransition`.
"""

from __future__ import annotations

from typing import Protocol

# States (the strings are what a queue file records)
PENDING = "pending"  # not tried yet
DEFERRED = "deferred"  # tried, with a temporary failure: tried again
DELIVERED = "delivered"  # final: the next hop or a mailbox took it
FAILED = "failed"  # a permanent failure: the sender is owed a DSN
EXPIRED = "expired"  # still waiting when the queue gave up: the sender is owed a DSN
DSN_SENT = "dsn_sent"  # final: failed or expired, and the DSN queued (or NOTIFY=NEVER)

STATES = (PENDING, DEFERRED, DELIVERED, FAILED, EXPIRED, DSN_SENT)

# Triggers
ACCEPTED = "accepted"  # a 2xx reply, or the message is in the mailbox
TEMPFAIL = "tempfail"  # a 4xx reply, or a local error worth trying again
PERMFAIL = "permfail"  # a 5xx reply (or an alias loop)
GIVE_UP = "give-up"  # give_up_after has passed
NOTIFIED = "notified"  # the DSN is on disk in the queue, or none was asked for

TRIGGERS = (ACCEPTED, TEMPFAIL, PERMFAIL, GIVE_UP, NOTIFIED)

# state -> trigger -> next state. A trigger missing from a state's row is illegal there.
TRANSITIONS: dict[str, dict[str, str]] = {
    PENDING: {
        ACCEPTED: DELIVERED,
        TEMPFAIL: DEFERRED,
        PERMFAIL: FAILED,
        GIVE_UP: EXPIRED,
    },
    DEFERRED: {
        ACCEPTED: DELIVERED,
        TEMPFAIL: DEFERRED,
        PERMFAIL: FAILED,
        GIVE_UP: EXPIRED,
    },
    DELIVERED: {},
    FAILED: {NOTIFIED: DSN_SENT},
    EXPIRED: {NOTIFIED: DSN_SENT},
    DSN_SENT: {},
}

WAITING = frozenset({PENDING, DEFERRED})  # to be tried (again)
OWED_DSN = frozenset({FAILED, EXPIRED})  # the sender is to be told
FINAL = frozenset(state for state, row in TRANSITIONS.items() if not row)


class IllegalTransition(Exception):
    """A recipient was moved in a way the table does not allow (a bug in the MTA)."""


class Stateful(Protocol):
    address: str
    state: str


def move(rcpt: Stateful, trigger: str) -> str:
    """Move `rcpt` by `trigger`; returns its new state. Raises `IllegalTransition`."""
    try:
        rcpt.state = new = TRANSITIONS[rcpt.state][trigger]
    except KeyError:
        raise IllegalTransition(
            f"recipient {rcpt.address}: {trigger!r} is not possible in state {rcpt.state!r}"
        ) from None
    return new
