"""Each daemon's watcher of the carrier overrides: read every second, applied to its pool.

Suspension and tuning are applied when they differ from what the pool holds (so a
daemon started later, or restarted, takes them on its first read, before its binds
start). A restart generation is remembered at the first read and acted on only when it
goes up afterwards: a daemon started after a restart request does not restart its fresh
binds. Each pass also publishes this daemon's binds and what it applied
(state.publish), which is what ``gatewayd carrier list`` shows for every daemon.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

from redis.exceptions import RedisError

from gatewayd.carrier import CarrierPool
from gatewayd.control import state
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

log = logging.getLogger("gatewayd.control")

# Stale daemons' published binds are deleted every this many passes.
_PRUNE_EVERY = 30


class CarrierWatch:
    def __init__(self, redis: Redis, keys: Keys, pool: CarrierPool, consumer: str,
                 interval_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.pool = pool
        self.consumer = consumer
        self.interval_s = interval_s
        self._restart_seen: dict[str, int] = {}
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._passes = 0

    async def apply_once(self) -> None:
        """Read the overrides and apply what differs (RedisError to the caller)."""
        overrides = await state.read(self.redis, self.keys)
        pool = self.pool
        for name in pool.carriers():
            o = overrides.get(name, state.Override())
            if pool.suspended(name) != o.suspended:
                pool.suspend(name, o.suspended)
                log.warning("%s: %s by the operator", name,
                            "suspended (no new submits; receipts and MO still flow)"
                            if o.suspended else "resumed")
            if pool.tuning(name) != (o.tps, o.window):
                try:
                    pool.set_tuning(name, o.tps, o.window)
                except ValueError as e:
                    log.error("%s: override not applied: %s", name, e)
                else:
                    tps, window = pool.effective(name)
                    log.warning("%s: tps %g, window %d (%s)", name, tps, window,
                                "operator's override" if (o.tps, o.window) != (None, None)
                                else "the config's")
            seen = self._restart_seen.get(name)
            self._restart_seen[name] = max(o.restart, seen or 0)
            if seen is not None and o.restart > seen:
                self._restart(name)

    def _restart(self, name: str) -> None:
        running = self._restarts.get(name)
        if running is not None and not running.done():
            # Requests while one runs: the binds it brings up are new ones already.
            log.warning("%s: a restart of its binds is under way; this one joins it", name)
            return
        log.warning("%s: restarting its binds (operator)", name)
        task = asyncio.create_task(self._restart_binds(name), name=f"restart-{name}")
        self._restarts[name] = task

    async def _restart_binds(self, name: str) -> None:
        try:
            await self.pool.restart_binds(name)
        except Exception:  # the binds' own loops go on; say why this one failed
            log.exception("%s: restarting its binds failed", name)

    def applied(self) -> dict[str, Any]:
        """This daemon's binds and the settings its pool holds (the published doc)."""
        pool = self.pool
        carriers = {}
        for name in pool.carriers():
            tps, window = pool.effective(name)
            carriers[name] = {"suspended": pool.suspended(name), "tps": tps, "window": window,
                              "restart": self._restart_seen.get(name, 0)}
        return {"binds": [asdict(b) for b in pool.snapshot()], "carriers": carriers}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.apply_once()
                self._passes += 1
                await state.publish(self.redis, self.keys, self.consumer, self.applied())
                if self._passes % _PRUNE_EVERY == 0:
                    await state.published(self.redis, self.keys, prune=True)
            except (RedisError, OSError) as e:  # Redis away: the pool keeps what it has
                log.warning("carrier control: %s: %s", type(e).__name__, e)
            except Exception:  # never let the watcher die
                log.exception("carrier control failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def close(self) -> None:
        tasks = list(self._restarts.values())
        for t in tasks:
            t.cancel()  # before the pool stops: a restart must not start binds again
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await state.unpublish(self.redis, self.keys, self.consumer)
        except (RedisError, OSError):
            pass
