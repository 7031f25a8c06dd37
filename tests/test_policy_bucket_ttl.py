"""A tenant bucket's PEXPIRE only when its TTL no longer covers the refill (policy_batch.lua).

The key must outlive its refill to full by a second (an absent bucket is full, so an
early expiry would hand out a burst). The PEXPIRE gives it 10 s more than a refill
from empty needs and records when that runs out (``x``, with the ``ts`` it was written
with, ``xs``); later batches leave the PEXPIRE out while ``x`` still covers the refill
from what is left plus 5 s for the daemons' clocks. The rate itself is checked as before
(tests/test_policy_caps.py, test_policy_ratelimit.py).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gatewayd.policy.redischecks import SENT, RedisBatch
from gatewayd.store.keys import Keys

NOW = 1718000000.25
SPEC = "10:20"  # 10 a second, burst 20: a refill from empty takes 2 s
LIFE_MS = 2000 + 1000 + 10000


async def pexpires(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_pexpire", {}).get("calls", 0))


async def send(redis: aioredis.Redis, keys: Keys, now: float, n: int) -> tuple[int, int]:
    """n messages of tenant acme at ``now`` (only the tenant check): (sent, PEXPIREs)."""
    b = RedisBatch(keys, now)
    for i in range(n):
        b.add(digits=f"86138{i:08d}", optout_only=False, optout_fields=None, duplicate_ms=0,
              text_body="x", member=f"m-{now}-{i}", caps_key="", caps="", tenant="acme",
              tenant_spec=SPEC)
    before = await pexpires(redis)
    res = await b.run(redis)
    return sum(1 for r in res if r == [SENT]), await pexpires(redis) - before


async def test_the_bucket_ttl_is_set_when_it_no_longer_covers_the_refill(
    redis: aioredis.Redis, keys: Keys
) -> None:
    key = keys.token_bucket("tenant:acme")
    assert await send(redis, keys, NOW, 1) == (1, 1)  # a new bucket: its TTL set
    t, ts, x, xs = await redis.hmget(key, "t", "ts", "x", "xs")
    assert (t, ts, xs) == (f"{19.0:.17g}", f"{NOW:.17g}", f"{NOW:.17g}")
    assert float(x) == NOW + LIFE_MS / 1000
    assert LIFE_MS - 1000 < await redis.pttl(key) <= LIFE_MS
    # A second later, refilled to 20 and one taken: 0.1 s from full, x covers it.
    assert await send(redis, keys, NOW + 1, 1) == (1, 0)
    assert await redis.hmget(key, "ts", "x", "xs") == [f"{NOW + 1:.17g}", x, f"{NOW + 1:.17g}"]
    # Drained at NOW + 6: 2 s from full, x (NOW + 13) is just enough (5 s for the
    # daemons' clocks).
    assert await send(redis, keys, NOW + 6, 20) == (20, 0)
    # At NOW + 6.5: 5 tokens, one taken, 1.6 s from full: past x - 5 s, set again.
    assert await send(redis, keys, NOW + 6.5, 1) == (1, 1)
    assert float(await redis.hget(key, "x")) == NOW + 6.5 + LIFE_MS / 1000
    assert LIFE_MS - 1000 < await redis.pttl(key) <= LIFE_MS
    # Short of tokens: deferred, as before (the k-th short message waits k token-times).
    assert await send(redis, keys, NOW + 6.5, 5) == (4, 0)


async def test_a_bucket_written_without_x_gets_its_pexpire(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """A bucket an earlier version wrote (t and ts only, or ts rewritten after x): its
    TTL is not known, so the PEXPIRE runs as it did on every write before."""
    key = keys.token_bucket("tenant:acme")
    await redis.hset(key, mapping={"t": "20", "ts": repr(NOW)})
    await redis.pexpire(key, 3000)
    assert await send(redis, keys, NOW + 0.5, 1) == (1, 1)
    assert LIFE_MS - 1000 < await redis.pttl(key) <= LIFE_MS
    # An earlier version's write after ours: ts changes, x and xs stay.
    await redis.hset(key, mapping={"ts": repr(NOW + 0.75)})
    await redis.pexpire(key, 3000)
    assert await send(redis, keys, NOW + 1, 1) == (1, 1)
    assert LIFE_MS - 1000 < await redis.pttl(key) <= LIFE_MS
