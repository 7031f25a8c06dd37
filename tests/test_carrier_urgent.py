"""Codes before bulk at the carrier: window slots and tokens, over real SMPP (TCP) and a
real Redis bucket. ``urgent`` is what the dispatcher passes for a batch of the highest
class (gatewayd/carrier/linkops.py, gatewayd/policy/ratelimit.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gatewayd.carrier import CarrierPool, SubmitRequest
from gatewayd.policy.ratelimit import SharedTokenBucket
from gatewayd.store.keys import Keys
from tests.interop.pysmsc import PySmsc, Recorder, carrier, config, wait_until


@pytest.fixture
async def smsc() -> AsyncIterator[PySmsc]:
    s = PySmsc()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def started(pool: CarrierPool) -> CarrierPool:
    await pool.start()
    assert await pool.wait_bound(5.0)
    return pool


def bulk(n: int, tag: str = "b") -> list[SubmitRequest]:
    return [SubmitRequest(msg_id=f"{tag}{i}", destination="+8613800138000", text=f"{tag}{i}")
            for i in range(n)]


def code(tag: str) -> list[SubmitRequest]:
    return [SubmitRequest(msg_id=tag, destination="+8613900139000", text=tag)]


def order(smsc: PySmsc) -> list[str]:
    return [s.short_message.decode() for s in smsc.submitted]


def outstanding(smsc: PySmsc) -> int:
    return sum(c.outstanding for c in smsc.bound_conns())


async def test_a_code_gets_a_slot_while_bulk_fills_the_window(smsc: PySmsc) -> None:
    smsc.resp_delay_s = 0.5
    pool = await started(CarrierPool(config(carrier("a", smsc.port, window=10)), Recorder()))
    try:
        # A link that has carried no code: bulk takes the whole window.
        first = asyncio.create_task(pool.submit_batch(bulk(20, "x")))
        await wait_until(lambda: outstanding(smsc) == 10, 2.0)
        assert all(o.ok for o in await first)
        assert smsc.max_outstanding == 10

        assert all(o.ok for o in (await pool.submit(code("c1"), urgent=True)).outcomes if o)
        # Codes go over this link now: bulk leaves the window's last tenth free ...
        more = asyncio.create_task(pool.submit_batch(bulk(30)))
        await wait_until(lambda: outstanding(smsc) == 9, 2.0)
        await asyncio.sleep(0.1)
        assert outstanding(smsc) == 9  # and does not take it
        # ... so a code is written at once, not after an answer frees a slot (0.5 s).
        t0 = time.monotonic()
        sent = asyncio.create_task(pool.submit(code("c2"), urgent=True))
        await wait_until(lambda: "c2" in order(smsc), 2.0)
        assert time.monotonic() - t0 < 0.3
        assert outstanding(smsc) == 10
        assert order(smsc).index("c2") == 20 + 1 + 9  # right after the bulk in flight
        assert (await sent).outcomes[0] is not None
        assert all(o.ok for o in await more)
        assert smsc.max_outstanding == 10  # never over the window
    finally:
        await pool.stop(2.0)


async def test_a_code_waiting_for_a_slot_goes_before_waiting_bulk(smsc: PySmsc) -> None:
    # A window of 5 keeps no headroom: the code waits for a slot, but takes the first.
    smsc.resp_delay_s = 0.3
    pool = await started(CarrierPool(config(carrier("a", smsc.port, window=5)), Recorder()))
    try:
        flood = asyncio.create_task(pool.submit_batch(bulk(20)))
        await wait_until(lambda: outstanding(smsc) == 5, 2.0)
        sent = await asyncio.wait_for(pool.submit(code("c"), urgent=True), 5.0)
        out = sent.outcomes[0]
        assert out is not None and out.ok
        assert order(smsc).index("c") == 5  # the first slot freed, before b5..b19
        outs = await flood
        assert len(outs) == 20 and all(o.ok for o in outs)
        assert smsc.max_outstanding == 5
    finally:
        await pool.stop(2.0)


async def test_shared_bucket_serves_an_urgent_caller_before_queued_bulk(
    redis: aioredis.Redis, keys: Keys
) -> None:
    rate = 20.0
    b = SharedTokenBucket(redis, keys, "urgent", rate=rate, burst=1)
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def worker() -> None:  # a dispatch worker: 10 tokens a batch, back to back
        while not stop.is_set():
            await b.acquire(10)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    await asyncio.sleep(0.3)  # the bucket is dry and bulk is queued on it
    t1 = time.monotonic()
    await asyncio.wait_for(b.acquire(1, urgent=True), 5.0)
    waited = time.monotonic() - t1
    stop.set()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.monotonic() - t0
    # Behind the queued bulk (4 x 10 tokens at 20/s) it would wait ~2 s; it waits for the
    # next token or two (one bulk round trip may be in flight).
    assert waited < 0.5, waited
    # And the rate holds: no more granted than the bucket's rate over the time plus its
    # burst, counting the chunk a bulk caller may have taken and not handed out.
    assert b.granted <= rate * elapsed + 1 + 10
