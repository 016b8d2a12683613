"""The lab clock: time that tests can move.

Lab time runs with real time and can be pushed forward with `advance()`. Services never
read the system clock or sleep for retry schedules; they ask the lab clock to call them
back at a lab time (`call_at`). `advance(d)` runs every timer that falls due within `d`,
in time order (ties in the order they were set), waiting for the work each one starts
to settle before the next: five days of retries take milliseconds and always happen in
the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Callback = Callable[[], Awaitable[None] | None]


@dataclass(order=True)
class Timer:
    when: float
    seq: int
    callback: Callback = field(compare=False)
    name: str = field(default="", compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class LabClock:
    """Real time plus an offset that only grows; timers on lab time."""

    def __init__(
        self, start: float | None = None, *, settle: Callable[[], Awaitable[None]] | None = None
    ):
        self._real0 = time.time()
        self._start = self._real0 if start is None else start
        self._offset = 0.0
        # lab start, as a lab timestamp: what "10m" in a fault's window or a schedule is
        # counted from (a host of a Docker lab is given its lab's)
        self.epoch = self._start
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._settle = settle
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._stopped = False
        self.errors: list[tuple[str, BaseException]] = []
        self.on_error: Callable[[str, BaseException], object] | None = None

    # reading --------------------------------------------------------------------------

    def time(self) -> float:
        """Lab time as a Unix timestamp."""
        return self._start + (time.time() - self._real0) + self._offset

    @property
    def offset(self) -> float:
        """How far lab time has been pushed ahead of real time, in seconds."""
        return self._offset

    def catch_up(self, offset: float) -> None:
        """Put lab time `offset` seconds ahead of real time, as a clock that has already
        been pushed that far (a host joining a lab whose time has moved). The clock only
        moves forward: a smaller offset than the present one is a ValueError."""
        if offset < self._offset:
            raise ValueError("the lab clock only moves forward")
        self._offset = offset

    def reset(self) -> None:
        """Back to where a new clock starts: lab time is real time again (the one way it
        goes back) and no timer is left. For `Lab.reset()`; the owners of the timers
        forget them themselves."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._offset = 0.0
        self._real0 = time.time()
        self._start = self._real0
        self.epoch = self._start
        if self._wake is not None:
            self._wake.set()

    # timers ---------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callback, name: str = "") -> Timer:
        timer = Timer(when, next(self._seq), callback, name)
        heapq.heappush(self._timers, timer)
        if self._wake is not None:
            self._wake.set()
        return timer

    def call_later(self, delay: float, callback: Callback, name: str = "") -> Timer:
        return self.call_at(self.time() + delay, callback, name)

    def next_due(self) -> float | None:
        """When the earliest timer falls due, or None."""
        live = [t.when for t in self._timers if not t.cancelled]
        return min(live) if live else None

    def pending(self) -> list[Timer]:
        return sorted(t for t in self._timers if not t.cancelled)

    async def _fire(self, timer: Timer) -> None:
        result = timer.callback()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
        if self._settle is not None:
            await self._settle()

    def _pop_due(self, until: float) -> Timer | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if self._timers and self._timers[0].when <= until:
            return heapq.heappop(self._timers)
        return None

    async def advance(self, seconds: float) -> int:
        """Move lab time forward, running every timer that falls due, in order.

        Returns how many timers ran.
        """
        if seconds < 0:
            raise ValueError("the lab clock only moves forward")
        return await self._advance(lambda: self.time() + seconds)

    async def advance_to(self, when: float) -> int:
        """Move lab time forward to `when` (not at all if it is past), running every timer
        due by then, in order: a timer just after `when` stays, however long this took
        in real time (as `advance` by `when - time()` would not promise)."""
        return await self._advance(lambda: max(when, self.time()))

    async def _advance(self, until: Callable[[], float]) -> int:
        assert self._lock is not None, "the clock is not running"
        ran = 0
        async with self._lock:
            if self._settle is not None:
                await self._settle()
            target = until()
            while (timer := self._pop_due(target)) is not None:
                now = self.time()
                if timer.when > now:
                    self._offset += timer.when - now
                await self._fire(timer)
                ran += 1
            now = self.time()
            if target > now:
                self._offset += target - now
        if self._wake is not None:  # the background runner waits by the old time: look again
            self._wake.set()
        return ran

    # background: timers that fall due as real time passes ------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="lab-clock")

    async def stop(self) -> None:
        """Stop running timers in the background. Work a timer started is cancelled; a
        callback that swallows the cancellation cannot keep the clock running."""
        self._stopped = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=2.0)
            self._runner = None

    async def _run(self) -> None:
        assert self._wake is not None and self._lock is not None
        while not self._stopped:
            self._wake.clear()
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            delay = self._timers[0].when - self.time() if self._timers else None
            if delay is not None and delay <= 0:
                async with self._lock:
                    timer = self._pop_due(self.time())
                    if timer is not None:
                        try:
                            await self._fire(timer)
                        except Exception as exc:  # one failing timer must not stop the clock
                            self.errors.append((timer.name, exc))
                            if self.on_error is not None:
                                self.on_error(timer.name, exc)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(delay or 60.0, 60.0))
