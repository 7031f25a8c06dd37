"""The daemon's wait for Redis at start-up, for the processes it starts and the sender
started by hand: the ``http.workers`` intake processes, the fan-out child and ``gatewayd
webhooks run`` (with or without ``--child``).

Each pings Redis before it does anything else, again while Redis cannot answer (not up
yet, restarting, a cluster master failing over, loading its data) for
``redis.startup_wait_s``, saying once that it waits (gatewayd.store.connection.
while_unavailable, as the daemon's own start does); past that StoreError, one line and
exit 3. A child started again by the daemon during a Redis restart used to exit at the
first refused connection, and start again (backing off to 10 s) until Redis was back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gatewayd.config import Config
from gatewayd.store.connection import Redis, redacted, while_unavailable

log = logging.getLogger("gatewayd.store")


async def redis_answers(client: Redis, cfg: Config, url: str, *, what: str,
                        stop: asyncio.Event | None = None) -> bool:
    """True once ``client`` answers a PING; False if ``stop`` is set first (a TERM while
    waiting: the process stops at once rather than after the wait); StoreError once
    redis.startup_wait_s has passed (0: at the first failure). ``what``: the process,
    named in the one waiting line ("http worker 1", "fan-out process")."""
    said: list[str] = []
    step = asyncio.ensure_future(while_unavailable(
        client.ping, what=what, url=url,
        deadline=time.monotonic() + cfg.redis.startup_wait_s, said=said))
    if stop is not None:
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((step, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await step
            return False
    await step
    if said:
        log.info("start-up: Redis answers (%s)", what, extra={"url": redacted(url)})
    return True
