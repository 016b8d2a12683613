"""One delivery run's bookkeeping (delivery.py runs it): the messages it took, the ones
a session about to end claims for its next hop, and when each message is finished.

A message is finished (`Delivery.finish`: bounced, scheduled again, or removed from the
queue) as soon as the last of its parts has its replies, a part being the recipients
that go to one next hop, or the local ones. So a message the next hop said 250 for
leaves the queue at once, not when the whole run (a flush of thousands) ends, and a
crash in the middle of a long run sends again only what was in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lab.services.mta.queue import QueuedMessage, Recipient


@dataclass
class Work:
    message: QueuedMessage
    content: bytes
    recipients: list[Recipient]
    parts: int = 0  # next hops (or the local part) still to answer in this run
    finished: bool = False


Taken = list[tuple[Work, list[Recipient]]]


class Run:
    def __init__(
        self,
        work: list[Work],
        claim: Callable[[str], Taken],
        finish: Callable[[QueuedMessage, bytes], Awaitable[None] | None],
        running: set[str],
    ):
        self.work = work
        self._claim = claim
        self._finish = finish
        self._running = running
        self.notifying: list[Awaitable[None]] = []  # DSNs still being written

    def claim(self, key: str) -> Taken:
        """Newly accepted messages for next hop `key`, for a session about to end."""
        taken = self._claim(key)
        for item, _ in taken:
            item.parts = 1
            self.work.append(item)
        return taken

    def done(self, item: Work) -> None:
        """One part of `item` has its replies; when it was the last, finish it now."""
        item.parts -= 1
        if item.parts <= 0:
            self.finish(item)

    def finish(self, item: Work) -> None:
        if item.finished:
            return
        item.finished = True
        notified = self._finish(item.message, item.content)
        if notified is not None:  # a DSN to write first: it stays running till then
            self.notifying.append(notified)
        else:
            self._running.discard(item.message.id)
