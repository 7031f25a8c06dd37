"""A coarse timer wheel: items due in the same 5 ms tick are handled in one batch.

One ``call_later`` per receipt costs a heap entry and a callback each; at 30k receipts a
second that is most of a core. Here each tick holds a list, a heap orders only the ticks,
and one task wakes once per non-empty tick and hands the whole batch to a handler that
writes it with one ``transport.write`` per connection.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from typing import Any, Final

TICK_S: Final = 0.005
log = logging.getLogger("gatewayd.sim")


class TimerWheel:
    def __init__(self, handler: Callable[[list[Any]], None]) -> None:
        self._handler = handler
        self._buckets: dict[int, list[Any]] = {}
        self._ticks: list[int] = []
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, due: float, item: Any) -> None:
        """Schedule item for loop time ``due`` (never handled early, at most a tick late)."""
        tick = int(due / TICK_S) + 1
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.append(item)
            return
        self._buckets[tick] = [item]
        ticks = self._ticks
        heapq.heappush(ticks, tick)
        waiter = self._waiter
        if ticks[0] == tick and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-wheel")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def clear(self) -> None:
        self._buckets.clear()
        self._ticks.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = self._ticks
        buckets = self._buckets
        while True:
            now = loop.time()
            if ticks and ticks[0] * TICK_S <= now:
                due: list[Any] = []
                while ticks and ticks[0] * TICK_S <= now:
                    due.extend(buckets.pop(heapq.heappop(ticks)))
                try:
                    self._handler(due)
                except Exception:
                    log.exception("timer batch of %d items failed", len(due))
                # Let the connections read between batches so a backlog of timers
                # never starves the submit path.
                await asyncio.sleep(0)
                continue
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(ticks[0] * TICK_S - now, _wake, waiter) if ticks else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
