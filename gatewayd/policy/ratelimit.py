"""Token buckets shared by every gatewayd process through Redis.

``SharedTokenBucket`` keeps the bucket in Redis (gatewayd/store/lua/token_bucket.lua, atomic)
and takes tokens in small chunks (``max(1, rate/20)``, 50 ms worth) into a local
reserve, so the hot path does one round trip per chunk rather than per message. Tokens
taken are spent, wherever they sit, so the account-wide rate holds across processes;
a process may hold at most one chunk it has not used yet. An empty bucket makes
``acquire`` wait (never fail). ``rate`` must be > 0 (validated: a rate of 0 would
divide by zero) and ``burst`` >= 1.

``CarrierRateGate`` is gatewayd.carrier.api.RateGate: one bucket per SMSC account
(``tb:{carrier:<account>}``, config.account_names: the carrier's name unless entries
share an account), shared by every bind of every process. Its rate is *learned*
(gatewayd.carrier.throttle): the account's ``tps`` until the SMSC throttles, then what
the SMSC accepted of it, probed upwards again after a hold (lua/carrier_bucket.lua keeps
rate and tokens in the one hash, so a cut by one daemon slows them all at once).

The bound, any one-second window <= 1.1 x the rate (carriers count per second and
answer ESME_RTHROTTLED beyond it), whatever the number of processes and across a Redis
failover (issue 15): tokens spent in a window were granted at most ``HOLD_S`` before it
(a process drops reserve tokens older than that), and the bucket grants at most its
burst plus the rate over that 1 + HOLD_S seconds: burst = rate/20 and HOLD_S = 0.05 s
make 1.1 x. Before, every process's unspent chunk (rate/20 each) came on top of a burst
of rate/10: 1.25 x with three daemons (measured 1.13-1.2 x). A bucket that is absent
(new, idle past its TTL, or lost with a master's last writes) starts empty, not full,
so a failover adds no second burst. Below 20/s the burst is one token (rate + 1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis

from gatewayd.carrier.throttle import LEARNING, Learning
from gatewayd.config import Config, account_names, accounts
from gatewayd.policy.lua import LuaScript, text
from gatewayd.store.keys import Keys

log = logging.getLogger("gatewayd.policy")

SCRIPT: Final = LuaScript("token_bucket")
CARRIER_SCRIPT: Final = LuaScript("carrier_bucket")
# How long an account's learned rate is remembered without traffic.
LEARNED_TTL_S: Final = 3600
# A carrier bucket's tokens are spent within this long of being granted, or dropped.
HOLD_S: Final = 0.05


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
        max_hold_s: float | None = None,
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
        # None: reserve tokens never go stale; else dropped when older (see HOLD_S).
        self.max_hold_s = max_hold_s
        self._reserved_at = 0.0
        self.granted = 0  # tokens handed out by acquire (for metrics and tests)
        self._lock = asyncio.Lock()
        # Urgent acquires (codes) in progress; bulk takes no token while there are any.
        self._urgent = 0
        self._calm = asyncio.Event()
        self._calm.set()

    async def take(self, want: int) -> tuple[int, float]:
        """One round trip: (tokens granted, 0..want; seconds until the next token)."""
        reply = await SCRIPT(self.redis, [self.key],
                             [repr(self.rate), repr(self.burst), repr(self.clock()), want])
        return int(reply[0]), float(text(reply[1]))

    def _fresh_reserve(self) -> int:
        if (self.reserve and self.max_hold_s is not None
                and self.clock() - self._reserved_at > self.max_hold_s):
            self.reserve = 0  # granted too long ago to be spent inside the bound
        return self.reserve

    async def acquire(self, n: int = 1, urgent: bool = False) -> None:
        """Wait until n tokens are ours. Callers are served in arrival order, except
        ``urgent`` ones (codes): they take the reserve's tokens at once, or their own
        from Redis without queueing behind bulk callers, and bulk takes none while an
        urgent caller waits. Every token still comes from the shared bucket."""
        if n <= 0:
            return
        if urgent:
            await self._acquire_urgent(n)
            return
        async with self._lock:
            need = n
            while True:
                if self._urgent:
                    await self._calm.wait()
                self._fresh_reserve()
                used = min(need, self.reserve)
                self.reserve -= used
                need -= used
                if need == 0:
                    self.granted += n
                    return
                got, wait = await self.take(max(need, self.chunk))
                self.reserve += got  # the reserve was empty: these are its oldest tokens
                self._reserved_at = self.clock()
                if got == 0:
                    await self.sleep(max(wait, 0.001))

    async def _acquire_urgent(self, n: int) -> None:
        self._urgent += 1
        self._calm.clear()
        try:
            need = n
            while True:
                used = min(need, self._fresh_reserve())
                self.reserve -= used
                need -= used
                if need == 0:
                    self.granted += n
                    return
                # Exactly what is missing: an urgent caller keeps no reserve of its own.
                got, wait = await self.take(need)
                need -= got
                if need == 0:
                    self.granted += n
                    return
                if got == 0:
                    await self.sleep(max(wait, 0.001))
        finally:
            self._urgent -= 1
            if not self._urgent:
                self._calm.set()


class LearnedBucket(SharedTokenBucket):
    """A carrier account's bucket at the rate learned from throttling (shared in Redis)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, account: str, cap: float, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 k: Learning = LEARNING) -> None:
        super().__init__(redis, keys, f"carrier:{account}", cap, max(1.0, cap / 20),
                         clock=clock, sleep=sleep, max_hold_s=HOLD_S)
        self.cap = float(cap)
        self.k = k
        self._params: list[str | int | float] = [
            repr(k.margin), repr(k.max_cut), repr(k.floor), repr(k.cooldown_s),
            repr(k.hold_s), repr(k.probe), LEARNED_TTL_S,
        ]

    def _learned(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 20)
        self.chunk = max(1, min(int(rate / 20), int(self.burst)))

    async def _call(self, want: int, accepted: int, throttled: int) -> tuple[int, float]:
        reply = await CARRIER_SCRIPT(self.redis, [self.key],
                                     [repr(self.cap), repr(self.clock()), want, accepted,
                                      throttled, *self._params])
        self._learned(float(text(reply[2])))
        return int(reply[0]), float(text(reply[1]))

    async def take(self, want: int) -> tuple[int, float]:
        return await self._call(want, 0, 0)

    def set_cap(self, tps: float) -> None:
        self.cap = float(tps)
        if self.rate > self.cap:
            self._learned(self.cap)

    async def report(self, accepted: int, throttled: int) -> None:
        await self._call(0, accepted, throttled)


class CarrierRateGate:
    """gatewayd.carrier.api.RateGate over one LearnedBucket per SMSC account."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, cfg: Config) -> None:
        self.redis = redis
        self.keys = keys
        self.account = account_names(cfg)
        self.buckets = {name: LearnedBucket(redis, keys, name, a.tps)
                        for name, a in accounts(cfg).items()}

    def learn_carriers(self, cfg: Config) -> None:
        self.account.update(account_names(cfg))
        for name, a in accounts(cfg).items():
            if name not in self.buckets:
                self.buckets[name] = LearnedBucket(self.redis, self.keys, name, a.tps)

    def _bucket(self, carrier: str) -> LearnedBucket:
        try:
            return self.buckets[self.account[carrier]]
        except KeyError:
            raise KeyError(f"no rate limit for carrier {carrier!r}: not in the config") from None

    async def acquire(self, carrier: str, n: int, urgent: bool = False) -> None:
        await self._bucket(carrier).acquire(n, urgent)

    async def throttled(self, carrier: str, accepted: int, throttled: int) -> None:
        bucket = self._bucket(carrier)
        before = bucket.rate
        await bucket.report(accepted, throttled)
        if bucket.rate < before:
            log.info("%s: throttled (%d of %d answers); learned rate now %.1f/s", carrier,
                     throttled, accepted + throttled, bucket.rate)

    def set_cap(self, carrier: str, tps: float) -> None:
        # The next script call of every daemon passes the new cap: the shared rate is
        # held under it, and one at the old cap moves to it (lua/carrier_bucket.lua).
        self._bucket(carrier).set_cap(tps)

    def rate(self, carrier: str) -> float:
        return self._bucket(carrier).rate
