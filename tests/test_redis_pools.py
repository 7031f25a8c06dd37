"""gatewayd.store.connection.WaitingPool against a real Redis: a checkout that finds
every connection busy waits for one (never MaxConnectionsError), bounded by its
timeout; waiters are served in turn, and a cancelled or timed-out waiter loses no
wake-up for the others."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gatewayd.store.connection import WaitingPool, connect


async def test_busy_pool_waits_instead_of_raising(redis_url: str) -> None:
    client = connect(redis_url, max_connections=2, pool_wait_s=30)
    pool = client.connection_pool
    assert isinstance(pool, WaitingPool)
    most = 0

    async def hold(n: int) -> None:
        nonlocal most
        # BLPOP on an empty key holds its connection for 50 ms.
        assert await client.blpop([f"test:pool:empty:{n}"], timeout=0.05) is None
        most = max(most, len(pool._in_use_connections))

    try:
        await asyncio.gather(*(hold(n) for n in range(30)))
        # Many short commands at once through two connections: all answered.
        assert await asyncio.gather(*(client.set(f"test:pool:{n}", n) for n in range(500)))
    finally:
        await client.aclose()
    assert most <= 2


async def test_the_wait_is_bounded_and_the_pool_recovers(redis_url: str) -> None:
    client = connect(redis_url, max_connections=1, pool_wait_s=0.2)
    try:
        held = asyncio.create_task(client.blpop(["test:pool:empty"], timeout=1))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        # A cancelled waiter leaves the line clean.
        waiter = asyncio.create_task(client.ping())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await held is None
        assert await client.ping()
        assert not client.connection_pool._waiters  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_no_wakeup_is_lost_when_waiters_give_up(redis_url: str) -> None:
    """Waiters timing out or cancelled while connections come back: whoever is still
    waiting is served (a lost wake-up would leave them waiting out their timeout)."""
    client = connect(redis_url, max_connections=2, pool_wait_s=5)
    try:
        for _ in range(5):
            holders = [asyncio.create_task(client.blpop([f"test:pool:e{n}"], timeout=0.1))
                       for n in range(2)]
            await asyncio.sleep(0.02)
            doomed = [asyncio.create_task(client.ping()) for _ in range(5)]
            patient = [asyncio.create_task(client.ping()) for _ in range(20)]
            await asyncio.sleep(0.05)
            for t in doomed:
                t.cancel()
            # A lost wake-up leaves connections idle and waiters in line until their
            # timeout: "No connection available." would fail this gather.
            assert all(await asyncio.gather(*patient))
            await asyncio.gather(*holders)
            await asyncio.gather(*doomed, return_exceptions=True)
        assert not client.connection_pool._waiters  # type: ignore[attr-defined]
    finally:
        await client.aclose()
