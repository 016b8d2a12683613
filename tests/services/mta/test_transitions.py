"""The table of a recipient's states (lab.services.mta.transitions), and that the MTA
changes a recipient's state only through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lab.services.mta
from lab.services.mta.queue import QueuedMessage, Recipient
from lab.services.mta.transitions import (
    ACCEPTED,
    DEFERRED,
    DELIVERED,
    DSN_SENT,
    EXPIRED,
    FAILED,
    FINAL,
    GIVE_UP,
    NOTIFIED,
    OWED_DSN,
    PENDING,
    PERMFAIL,
    STATES,
    TEMPFAIL,
    TRANSITIONS,
    TRIGGERS,
    WAITING,
    IllegalTransition,
    move,
)

# Every (state, trigger) and where it leads; None: illegal, raises.
EXPECTED: dict[tuple[str, str], str | None] = {
    (PENDING, ACCEPTED): DELIVERED,
    (PENDING, TEMPFAIL): DEFERRED,
    (PENDING, PERMFAIL): FAILED,
    (PENDING, GIVE_UP): EXPIRED,
    (PENDING, NOTIFIED): None,
    (DEFERRED, ACCEPTED): DELIVERED,
    (DEFERRED, TEMPFAIL): DEFERRED,
    (DEFERRED, PERMFAIL): FAILED,
    (DEFERRED, GIVE_UP): EXPIRED,
    (DEFERRED, NOTIFIED): None,
    (DELIVERED, ACCEPTED): None,
    (DELIVERED, TEMPFAIL): None,
    (DELIVERED, PERMFAIL): None,
    (DELIVERED, GIVE_UP): None,
    (DELIVERED, NOTIFIED): None,
    (FAILED, ACCEPTED): None,
    (FAILED, TEMPFAIL): None,
    (FAILED, PERMFAIL): None,
    (FAILED, GIVE_UP): None,
    (FAILED, NOTIFIED): DSN_SENT,
    (EXPIRED, ACCEPTED): None,
    (EXPIRED, TEMPFAIL): None,
    (EXPIRED, PERMFAIL): None,
    (EXPIRED, GIVE_UP): None,
    (EXPIRED, NOTIFIED): DSN_SENT,
    (DSN_SENT, ACCEPTED): None,
    (DSN_SENT, TEMPFAIL): None,
    (DSN_SENT, PERMFAIL): None,
    (DSN_SENT, GIVE_UP): None,
    (DSN_SENT, NOTIFIED): None,
}


def rcpt(state: str = PENDING) -> Recipient:
    return Recipient("bob@example.org", "bob@example.org", state=state)


def test_the_expectations_cover_every_state_and_trigger() -> None:
    assert set(EXPECTED) == {(s, t) for s in STATES for t in TRIGGERS}


def test_the_table_names_only_known_states_and_triggers() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for row in TRANSITIONS.values():
        assert set(row) <= set(TRIGGERS)
        assert set(row.values()) <= set(STATES)


@pytest.mark.parametrize(
    ("state", "trigger", "after"),
    [(s, t, a) for (s, t), a in EXPECTED.items() if a is not None],
    ids=[f"{s}-{t}" for (s, t), a in EXPECTED.items() if a is not None],
)
def test_a_legal_move(state: str, trigger: str, after: str) -> None:
    r = rcpt(state)
    assert move(r, trigger) == after
    assert r.state == after


@pytest.mark.parametrize(
    ("state", "trigger"),
    [(s, t) for (s, t), a in EXPECTED.items() if a is None],
    ids=[f"{s}-{t}" for (s, t), a in EXPECTED.items() if a is None],
)
def test_an_illegal_move_raises_and_changes_nothing(state: str, trigger: str) -> None:
    r = rcpt(state)
    with pytest.raises(IllegalTransition) as caught:
        move(r, trigger)
    assert r.state == state
    assert "bob@example.org" in str(caught.value)
    assert repr(trigger) in str(caught.value) and repr(state) in str(caught.value)


def test_an_unknown_state_raises() -> None:
    with pytest.raises(IllegalTransition):
        move(rcpt("bounced"), NOTIFIED)


def test_final_states_have_no_way_out_and_every_way_ends_in_one() -> None:
    assert {DELIVERED, DSN_SENT} == FINAL
    # every state reaches a final one
    for start in STATES:
        seen, todo = {start}, [start]
        while todo:
            for after in TRANSITIONS[todo.pop()].values():
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
        assert seen & FINAL, start


def test_waiting_and_owed() -> None:
    assert {PENDING, DEFERRED} == WAITING
    assert {FAILED, EXPIRED} == OWED_DSN
    assert not (WAITING | OWED_DSN) & FINAL
    for state in STATES:
        assert rcpt(state).pending == (state in WAITING)


def test_a_recipients_way_deferred_then_expired_then_bounced() -> None:
    r = rcpt()
    for trigger, state in [
        (TEMPFAIL, DEFERRED),
        (TEMPFAIL, DEFERRED),
        (GIVE_UP, EXPIRED),
        (NOTIFIED, DSN_SENT),
    ]:
        assert move(r, trigger) == state
    with pytest.raises(IllegalTransition):
        move(r, NOTIFIED)  # one DSN, never two


def test_a_message_is_done_when_no_recipient_waits() -> None:
    message = QueuedMessage("ID", "a@b.test", [rcpt(), rcpt(DEFERRED), rcpt(FAILED)], 0.0)
    assert [r.state for r in message.pending] == [PENDING, DEFERRED]
    move(message.recipients[0], ACCEPTED)
    move(message.recipients[1], PERMFAIL)
    assert message.done


def test_queue_files_from_before_the_dsn_state_load() -> None:
    """Files written when `dsn_sent` was a flag beside `failed`."""
    data = QueuedMessage("ID", "a@b.test", [rcpt(), rcpt(), rcpt(DELIVERED)], 0.0).to_json()
    data["recipients"][0].update(state=FAILED, dsn_sent=True)
    data["recipients"][1].update(state=FAILED, dsn_sent=False)
    data["recipients"][2].update(dsn_sent=False)
    loaded = QueuedMessage.from_json(data)
    assert [r.state for r in loaded.recipients] == [DSN_SENT, FAILED, DELIVERED]


def _state_assignments(path: Path) -> list[int]:
    """Lines of `path` that assign to an attribute named `state` (x.state = ...)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        flat: list[ast.expr] = []
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            else:
                flat.append(target)
        lines += [t.lineno for t in flat if isinstance(t, ast.Attribute) and t.attr == "state"]
    return lines


def test_the_mta_changes_a_recipients_state_only_through_the_table() -> None:
    package = Path(lab.services.mta.__file__).parent
    offenders = {
        path.name: lines
        for path in sorted(package.glob("*.py"))
        if path.name != "transitions.py" and (lines := _state_assignments(path))
    }
    assert not offenders, f"state set outside transitions.move: {offenders}"
    assert _state_assignments(package / "transitions.py")  # the check does find them
