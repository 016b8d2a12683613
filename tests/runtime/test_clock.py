"""The lab clock (lab.runtime.clock.LabClock): timers on lab time, moved by `advance`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lab.runtime.clock import LabClock


def run(test: Callable[[LabClock], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        clock = LabClock(**kwargs)
        clock.start()
        try:
            return await test(clock)
        finally:
            await clock.stop()

    return asyncio.run(main())


def test_timers_run_in_time_order() -> None:
    async def body(clock: LabClock) -> None:
        now = clock.time()
        ran: list[str] = []
        clock.call_at(now + 300, lambda: ran.append("c"))
        clock.call_at(now + 100, lambda: ran.append("a"))
        clock.call_later(200, lambda: ran.append("b"))
        assert await clock.advance(400) == 3
        assert ran == ["a", "b", "c"]

    run(body)


def test_ties_run_in_the_order_they_were_set() -> None:
    async def body(clock: LabClock) -> None:
        when = clock.time() + 60
        ran: list[int] = []
        for n in range(10):
            clock.call_at(when, lambda n=n: ran.append(n))
        clock.call_at(when - 1, lambda: ran.append(-1))
        assert await clock.advance(61) == 11
        assert ran == [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

    run(body)


def test_advance_moves_time_by_exactly_that_much() -> None:
    async def body(clock: LabClock) -> None:
        before = clock.time()
        assert await clock.advance(5 * 86400) == 0
        after = clock.time()
        assert after - before == pytest.approx(5 * 86400, abs=0.5)
        assert after - before >= 5 * 86400
        assert clock.offset == pytest.approx(5 * 86400, abs=0.5)
        assert await clock.advance(0) == 0
        assert clock.time() - after < 0.5

    run(body)


def test_each_timer_sees_the_lab_time_it_was_set_for() -> None:
    async def body(clock: LabClock) -> None:
        start = clock.time()
        seen: dict[float, float] = {}
        for delay in (1800.0, 3600.0, 4 * 3600.0):
            clock.call_at(start + delay, lambda d=delay: seen.__setitem__(d, clock.time()))
        await clock.advance(5 * 3600)
        for delay, when in seen.items():
            assert when - start == pytest.approx(delay, abs=0.5)
            assert when >= start + delay
        assert sorted(seen) == [1800.0, 3600.0, 4 * 3600.0]
        assert clock.time() - start == pytest.approx(5 * 3600, abs=0.5)

    run(body)


def test_timers_beyond_the_window_wait_for_the_next_advance() -> None:
    async def body(clock: LabClock) -> None:
        ran: list[str] = []
        clock.call_later(100, lambda: ran.append("soon"))
        clock.call_later(1000, lambda: ran.append("later"), name="later")
        assert await clock.advance(500) == 1
        assert ran == ["soon"]
        assert [t.name for t in clock.pending()] == ["later"]
        assert await clock.advance(500) == 1
        assert ran == ["soon", "later"]
        assert clock.pending() == []

    run(body)


def test_cancelled_timers_do_not_run() -> None:
    async def body(clock: LabClock) -> None:
        ran: list[str] = []
        keep = clock.call_later(10, lambda: ran.append("keep"), name="keep")
        drop = clock.call_later(20, lambda: ran.append("drop"), name="drop")
        clock.call_later(5, lambda: drop.cancel(), name="cancels")  # from inside a timer
        gone = clock.call_later(1, lambda: ran.append("gone"), name="gone")
        gone.cancel()
        assert [t.name for t in clock.pending()] == ["cancels", "keep", "drop"]
        assert await clock.advance(60) == 2
        assert ran == ["keep"]
        assert not keep.cancelled
        assert clock.pending() == []

    run(body)


def test_advance_awaits_async_callbacks_one_after_another() -> None:
    async def body(clock: LabClock) -> None:
        log: list[str] = []

        def job(name: str) -> Callable[[], Awaitable[None]]:
            async def work() -> None:
                log.append(f"{name} start")
                for _ in range(3):
                    await asyncio.sleep(0.001)
                log.append(f"{name} end")

            return work

        clock.call_later(10, job("a"))
        clock.call_later(20, job("b"))
        assert await clock.advance(30) == 2
        assert log == ["a start", "a end", "b start", "b end"]

    run(body)


def test_timers_set_by_a_timer_run_in_the_same_advance_when_due() -> None:
    async def body(clock: LabClock) -> None:
        times: list[float] = []
        start = clock.time()

        def retry() -> None:
            times.append(clock.time() - start)
            clock.call_later(1800, retry)  # a retry schedule keeps itself going

        clock.call_later(1800, retry)
        assert await clock.advance(4 * 3600 + 60) == 8  # off the edge: real time runs too
        assert [round(t) for t in times] == [1800 * n for n in range(1, 9)]
        assert len(clock.pending()) == 1

    run(body)


def test_settle_runs_before_and_after_each_timer() -> None:
    calls: list[str] = []

    async def settle() -> None:
        calls.append("settle")

    async def body(clock: LabClock) -> None:
        clock.call_later(10, lambda: calls.append("t1"))
        clock.call_later(20, lambda: calls.append("t2"))
        await clock.advance(30)
        assert calls == ["settle", "t1", "settle", "t2", "settle"]

    run(body, settle=settle)


def test_the_clock_only_moves_forward() -> None:
    async def body(clock: LabClock) -> None:
        before = clock.time()
        with pytest.raises(ValueError, match="only moves forward"):
            await clock.advance(-1)
        assert clock.time() - before < 0.5

    run(body)


def test_timers_fall_due_as_real_time_passes() -> None:
    async def body(clock: LabClock) -> None:
        fired = asyncio.Event()
        clock.call_later(0.05, fired.set)
        await asyncio.wait_for(fired.wait(), 5)
        assert clock.offset == 0.0

    run(body)


def test_a_fixed_start_time() -> None:
    async def body(clock: LabClock) -> None:
        assert clock.time() == pytest.approx(946_684_800.0, abs=0.5)  # 2000-01-01
        await clock.advance(86400)
        assert clock.time() == pytest.approx(946_684_800.0 + 86400, abs=0.5)

    run(body, start=946_684_800.0)


def test_a_timer_set_during_an_advance_just_past_its_end_fires_in_real_time() -> None:
    """The background runner waits by the time it read before the advance; moved past
    it, it must look again, or a retry a few ms after the advance's end waits a minute."""

    async def body(clock: LabClock) -> None:
        ran: list[str] = []
        start = clock.time()
        # a timer inside the window sets one 50 ms (lab time) past the window's end
        clock.call_at(start + 10, lambda: clock.call_at(start + 60.05, lambda: ran.append("x")))
        await asyncio.sleep(0)  # the runner now waits for the first timer, 10 s away
        await clock.advance(60)
        assert ran == []
        await asyncio.wait_for(_until(lambda: ran == ["x"]), 2.0)

    run(body, settle=lambda: asyncio.sleep(0.01))  # as the lab's: the loop turns meanwhile


async def _until(done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.sleep(0.01)


def test_the_epoch_is_lab_start_and_next_due_the_earliest_live_timer() -> None:
    async def body(clock: LabClock) -> None:
        start = clock.epoch
        assert start <= clock.time() < start + 1
        assert clock.next_due() is None
        now = clock.time()
        late = clock.call_at(now + 50, lambda: None)
        early = clock.call_at(now + 10, lambda: None)
        assert clock.next_due() == now + 10
        early.cancel()
        assert clock.next_due() == now + 50
        await clock.advance(3600)
        assert clock.epoch == start  # advancing moves time, not lab start
        late.cancel()
        clock.reset()
        assert clock.epoch >= start and clock.epoch <= clock.time() < clock.epoch + 1

    run(body)


def test_advance_to_a_time_never_runs_a_timer_after_it() -> None:
    """`advance_to(when)` stops at `when` however long its settling took in real time:
    a host brought to just before a step (the Docker backend's advance) runs nothing of
    the step yet."""

    async def slow_settle() -> None:
        await asyncio.sleep(0.02)  # real time passes while the clock settles

    async def body(clock: LabClock) -> None:
        now = clock.time()
        ran: list[str] = []
        clock.call_at(now + 600, lambda: ran.append("at 10m"))
        assert await clock.advance_to(now + 600 - 1e-3) == 0
        assert ran == []
        assert now + 600 - 1e-3 <= clock.time() < now + 600
        assert await clock.advance_to(now + 600) == 1 and ran == ["at 10m"]
        assert await clock.advance_to(now) == 0  # the past: the clock stays where it is
        assert clock.time() >= now + 600

    run(body, settle=slow_settle)
