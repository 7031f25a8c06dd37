"""Token buckets shared by every gatewayd process through Redis.

``SharedTokenBucket`` keeps the bucket in Redis (gatewayd/store/lua/token_bucket.lua, atomic)
and takes tokens in small chunks (``max(1, rate/20)``, 50 ms worth) into a local
reserve, so the hot path does one round trip per chunk rather than per message. Tokens
taken are spent, wherever they sit, so the account-wide rate holds across processes;
a process may hold at most one chunk it has not used yet. An empty bucket makes
``acquire`` wait (never fail). ``rate`` must be > 0 (validated: a rate of 0 would
divide by zero) and ``burst`` >= 1.

``CarrierRateGate`` is gatewayd.carrier.api.RateGate: one bucket per carrier account,
named after the carrier, rate = the carrier's ``tps``, burst = max(1, tps/10), so any
one-second window sees at most 1.1 x tps even after an idle spell (carriers count
per second and answer ESME_RTHROTTLED beyond it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis

from gatewayd.config import Config
from gatewayd.policy.lua import LuaScript, text
from gatewayd.store.keys import Keys

SCRIPT: Final = LuaScript("token_bucket")


class SharedTokenBucket:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        name: str,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"token bucket {name!r}: rate must be greater than 0, got {rate}")
        if not burst >= 1:
            raise ValueError(f"token bucket {name!r}: burst must be at least 1, got {burst}")
        self.redis = redis
        self.key = keys.token_bucket(name)
        self.name = name
        self.rate = float(rate)
        self.burst = float(burst)
        self.chunk = max(1, min(int(rate / 20), int(burst)))
        self.clock = clock
        self.sleep = sleep
        self.reserve = 0  # tokens taken from Redis and not yet handed out
        self.granted = 0  # tokens handed out by acquire (for metrics and tests)
        self._lock = asyncio.Lock()

    async def take(self, want: int) -> tuple[int, float]:
        """One round trip: (tokens granted, 0..want; seconds until the next token)."""
        reply = await SCRIPT(self.redis, [self.key],
                             [repr(self.rate), repr(self.burst), repr(self.clock()), want])
        return int(reply[0]), float(text(reply[1]))

    async def acquire(self, n: int = 1) -> None:
        """Wait until n tokens are ours. Callers are served in arrival order."""
        if n <= 0:
            return
        async with self._lock:
            need = n
            while True:
                used = min(need, self.reserve)
                self.reserve -= used
                need -= used
                if need == 0:
                    self.granted += n
                    return
                got, wait = await self.take(max(need, self.chunk))
                self.reserve += got
                if got == 0:
                    await self.sleep(max(wait, 0.001))


class CarrierRateGate:
    """gatewayd.carrier.api.RateGate over one SharedTokenBucket per carrier account."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, cfg: Config) -> None:
        self.buckets = {
            c.name: SharedTokenBucket(redis, keys, f"carrier:{c.name}", c.tps,
                                      max(1.0, c.tps / 10))
            for c in cfg.carrier
        }

    async def acquire(self, carrier: str, n: int) -> None:
        try:
            bucket = self.buckets[carrier]
        except KeyError:
            raise KeyError(f"no rate limit for carrier {carrier!r}: not in the config") from None
        await bucket.acquire(n)
