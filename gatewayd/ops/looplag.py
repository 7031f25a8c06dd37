"""How long the event loop keeps a ready task waiting: the wait every hop of a code's way
(its read, policy round trip, submit and answer) can add.

A task sleeps ``interval_s`` and records how late it woke (``gatewayd_loop_lag_seconds``):
the rest of the loop turn it fell into. Cheap (100 wake-ups a second at 10 ms) and
always on, so a dashboard shows when intake or a campaign's fan-out starts to cost the
codes time; bench/http_priority reads it from the daemon.
"""

from __future__ import annotations

import asyncio
import time

from gatewayd.ops import metrics


async def probe(stop: asyncio.Event, interval_s: float = 0.01) -> None:
    observe = metrics.LOOP_LAG.observe
    clock = time.perf_counter
    while not stop.is_set():
        t0 = clock()
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - t0 - interval_s))
