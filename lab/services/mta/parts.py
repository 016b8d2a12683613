"""The seams between the MTA's parts along a message's way.

A DSN goes in through acceptance like any message, and acceptance (an alias loop) and
delivery (a failure, a delay) hand recipients to the DSN writer. So the parts refer to
each other through these Protocols, not through each other's modules: no part imports
another in a circle, and MtaService (service.py) joins them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from lab.services.mta.queue import QueuedMessage, Recipient


class Accepts(Protocol):
    """The one way a message goes in (acceptance.Acceptance)."""

    async def accept(
        self,
        content: bytes,
        *,
        envelope_from: str,
        recipients: list[tuple[str, list[str]]],
        client: str,
        helo: str,
        rdns: str | None,
        protocol: str = "ESMTP",
        tls: str | None = None,
        dsn_ret: str = "",
        envid: str = "",
        at_once: bool = True,
        replied: asyncio.Future[bool] | None = None,
    ) -> QueuedMessage: ...


class Bouncer(Protocol):
    """Who writes DSNs (dsn.Bounces): durable when each call returns."""

    async def bounce(
        self, message: QueuedMessage, content: bytes, failed: list[Recipient]
    ) -> None: ...

    async def warn(self, message: QueuedMessage, content: bytes, late: list[Recipient]) -> None: ...
