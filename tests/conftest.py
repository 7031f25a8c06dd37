"""Shared fixtures: a real Redis server for the session (or REDIS_URL), flushed per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when given (a throwaway database!), else a private redis-server."""
    url = os.environ.get("GATEWAYD_TEST_REDIS_URL", "")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="gw-test-redis-") as d:
        server = EmbeddedRedis(d, port=free_port())
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # decode_responses=True: the daemon uses str replies everywhere, so tests do too.
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys("gw:")


@pytest.fixture
async def smsc() -> AsyncIterator[Callable[..., Awaitable[SmscSimulator]]]:
    """Start SMSC simulators on free ports (``await smsc(receipt_delay_s=0.05)``);
    every one is stopped when the test ends."""
    started: list[SmscSimulator] = []

    async def start(**settings: Any) -> SmscSimulator:
        settings.setdefault("port", 0)
        sim = SmscSimulator(SimSettings(**settings))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()
