"""proxy/core/deadlines.py, the keep-alive deadlines of waiting streams: a callback runs once its
delay has passed (up to a quarter of it late), never when removed before, and the one timer runs
only while some are pending."""

from __future__ import annotations

import asyncio

from proxy.core import Deadlines


async def test_due_callbacks_run_and_removed_ones_never():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.2)
    ran: dict[str, float] = {}
    start = loop.time()
    deadlines.add(lambda: ran.setdefault("first", loop.time() - start))
    removed = deadlines.add(lambda: ran.setdefault("removed", loop.time() - start))
    await asyncio.sleep(0.1)
    deadlines.add(lambda: ran.setdefault("later", loop.time() - start))
    deadlines.remove(removed)
    await asyncio.sleep(0.5)
    assert set(ran) == {"first", "later"}
    assert 0.2 <= ran["first"] <= 0.2 * 1.25 + 0.05
    assert 0.3 <= ran["later"] <= 0.3 + 0.2 * 0.25 + 0.05
    assert deadlines._timer is None  # nothing pending: no timer left running


async def test_removed_before_due_leaves_nothing_running():
    deadlines = Deadlines(0.1)
    for _ in range(1000):
        deadlines.remove(deadlines.add(lambda: None))
    await asyncio.sleep(0.2)
    assert deadlines._timer is None


async def test_a_failing_callback_stops_no_other():
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        deadlines = Deadlines(0.1)
        ran = []

        def fail() -> None:
            raise RuntimeError("callback bug")
        deadlines.add(fail)
        deadlines.add(lambda: ran.append(1))
        await asyncio.sleep(0.3)
        deadlines.add(lambda: ran.append(2))
        await asyncio.sleep(0.3)
    finally:
        loop.set_exception_handler(None)
    assert ran == [1, 2] and len(reported) == 1, (ran, reported)
