"""Impaired connections: bytes held until their due time.

A connection that crosses an impaired link or network is relayed: the caller gets one
end of a socket pair, and a `Relay` carries the bytes between it and the real connection
to the server (bound to the caller's interface address, so the server still sees the
caller's lab address). Each direction has a `Pacer`, which says when a piece of data
arrives: when the line is free to send it, plus the time the bytes take at the line's
rate (with the TCP/IP headers a real line carries), plus the delay and its jitter, plus
a retransmission timeout for each segment lost. Pieces never overtake one another: TCP
delivers in order.

The due times are on the lab clock, as clock timers. So a transfer takes its time in lab
time: `clock advance` runs the timers in order and the transfer is over in milliseconds
of real time, while the events' timestamps show the seconds it took on the line. Without
an advance, the clock's timers fire as real time passes, and the link runs at its rate
in real time, as a real modem does. While bytes wait for the clock, the lab counts as
settled (`VirtualNetwork.idle_on_clock`): the work waiting on them waits for lab time.
In a Docker lab each host's agent paces the connections its services open: on its lab
clock where every host of the network is built-in, as here; on a real-time clock
(`RealTime`), as netem would, where a real daemon shares the network and the kernel has
no netem.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Clock(Protocol):
    """What a relay needs of a clock: the time, and a callback at a time."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], Any], name: str = "") -> Any: ...


class RealTime:
    """Real time (the event loop's), for pacing that netem would do in a kernel."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], Any], name: str = "") -> Any:
        return asyncio.get_running_loop().call_at(when, callback)


PIECE = 16384  # bytes released by one clock timer
SEGMENT = 1448  # TCP payload per segment (1500-byte MTU, timestamps on)
OVERHEAD = 66  # bytes of Ethernet, IP and TCP headers per segment on the line
RTO_MIN = 0.2  # Linux's minimum retransmission timeout, seconds


def wire_bytes(size: int) -> int:
    """The bytes a line carries for `size` bytes of TCP payload, headers included."""
    return size + math.ceil(size / SEGMENT) * OVERHEAD


@dataclass
class Pacer:
    """When each piece of one direction of a connection arrives, in lab time."""

    rate: float = 0.0  # bits per second; 0: no limit
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    free_at: float = 0.0  # when the line has sent what it was given
    last_due: float = 0.0

    def due(self, now: float, size: int) -> float:
        start = max(now, self.free_at)
        busy = wire_bytes(size) * 8 / self.rate if self.rate else 0.0
        if self.loss:
            segments = math.ceil(size / SEGMENT)
            lost = sum(1 for _ in range(segments) if self.rng.random() < self.loss)
            busy += lost * (RTO_MIN + 2 * self.delay)  # each waits for its retransmission
        self.free_at = start + busy
        delay = self.delay
        if self.jitter:
            delay = max(0.0, delay + self.rng.uniform(-self.jitter, self.jitter))
        self.last_due = max(self.free_at + delay, self.last_due)
        return self.last_due


class ParkedCount:
    """What a network whose relays wait for the lab clock counts (lab.services.host's
    ClockWait): the pieces waiting (`parked`), and a count that grows whenever one moves
    (`progress`); the class using it sets both to 0."""

    parked: int
    progress: int

    def moved(self, waiting: int) -> None:
        self.parked += waiting
        self.progress += 1

    def mark(self) -> int:
        return self.progress

    def idle_on_clock(self, mark: int) -> bool:
        """True when bytes wait for the lab clock and nothing moved since `mark`."""
        return self.parked > 0 and self.progress == mark


class Relay:
    """One impaired connection: two pumps that read as the bytes come, and hand each
    piece to the clock to be written at its due time."""

    def __init__(
        self,
        clock: Clock,
        caller: socket.socket,
        near: socket.socket,
        far: socket.socket,
        pacers: tuple[Pacer, Pacer],
        crossed: Callable[[int], int],
        moved: Callable[[int], None],
    ):
        self.clock = clock
        self.caller = caller  # the socket the caller was given
        self.near, self.far = near, far  # the other end of its pair, the real connection
        self.pacers = pacers
        self.crossed = crossed  # bytes that crossed -> how many of them may (a hang-up)
        self.moved = moved  # counts progress and bytes waiting for the clock (+n, -n)
        self.timers: dict[int, Any] = {}  # the clock's handles (each has cancel()), by id
        self.closed = False
        self.ended = 0  # directions whose end has been passed on
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for src, dst, pacer in (
            (self.near, self.far, self.pacers[0]),
            (self.far, self.near, self.pacers[1]),
        ):
            out: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.tasks.append(loop.create_task(self._pump(src, pacer, out)))
            self.tasks.append(loop.create_task(self._write(dst, out)))

    async def _pump(
        self, src: socket.socket, pacer: Pacer, out: asyncio.Queue[bytes | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                data = await loop.sock_recv(src, 65536)
            except OSError:
                data = b""
            pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]
            for piece in pieces:  # b"": the end, after what came before it
                self._schedule(pacer.due(self.clock.time(), len(piece)), piece, out)
            if not data:
                return

    def _schedule(self, due: float, piece: bytes, out: asyncio.Queue[bytes | None]) -> None:
        self.moved(1)

        def arrive() -> None:
            self.timers.pop(id(timer), None)
            self.moved(-1)
            if self.closed:
                return
            if not piece:
                out.put_nowait(None)
                return
            allowed = self.crossed(len(piece))
            if allowed:
                out.put_nowait(piece[:allowed])
            if allowed < len(piece):  # the line hung up in the middle of this piece
                self.hold()

        timer = self.clock.call_at(due, arrive, name="link:bytes")
        self.timers[id(timer)] = timer

    async def _write(self, dst: socket.socket, out: asyncio.Queue[bytes | None]) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            piece = await out.get()
            try:
                if piece is None:
                    dst.shutdown(socket.SHUT_WR)
                    self.ended += 1
                    if self.ended == 2:  # both ends said all they had to: let go
                        self.near.close()
                        self.far.close()
                    return
                await loop.sock_sendall(dst, piece)
                self.moved(0)
            except OSError:
                self.close()
                return

    def hold(self) -> None:
        """Deliver nothing more (the link hung up; the cut follows)."""
        self.closed = True
        for timer in self.timers.values():
            timer.cancel()
            self.moved(-1)
        self.timers.clear()

    def alive(self) -> bool:
        return self.far.fileno() != -1

    def close(self) -> None:
        """Cut both ends: the caller's read fails, the server sees a reset."""
        self.hold()
        with contextlib.suppress(OSError):
            self.caller.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for task in self.tasks:
            task.cancel()
        for sock in (self.near, self.far):
            with contextlib.suppress(OSError):
                sock.close()


def relay_pair() -> tuple[socket.socket, socket.socket]:
    """The caller's end and the relay's end of a connected, non-blocking socket pair."""
    caller, mine = socket.socketpair()
    for sock in (caller, mine):
        sock.setblocking(False)
    return caller, mine
