"""The `make bench` figure of a day of dial-ups (bench/dialup.py), at a tenth of its size:
every message queued while the line was down is delivered once, at the first dial, and
the day of dials, retries and queue runs takes seconds, not a day."""

from __future__ import annotations

import asyncio

from bench.dialup import bench_dial_day


def test_a_day_of_hourly_dials_delivers_each_queued_message_once() -> None:
    day = asyncio.run(bench_dial_day(100))
    assert day["ok"], day
    assert (day["delivered"], day["unique"], day["left_in_queues"]) == (100, 100, 0)
    assert day["dials"] == 24
    assert day["deferrals"] == 200  # at submission and at the retry 30m later: down both times
    assert day["seconds"] < 5.0, day
