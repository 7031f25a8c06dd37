"""Faults survived, each with its accounting: every message ends in exactly one final
state, and duplicates (the SMSC seeing a message twice) are counted and bounded."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.model import FINAL_STATES
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import (
    Smsc,
    events_by_id,
    in_flight_bound,
    load,
    running_daemon,
    wait_final,
    write_config,
)

FAST = """
[queue]
read_batch = 64
dispatch_workers = 2
reclaim_idle_s = 1.0
early_receipt_hold_s = 30.0
receipt_timeout_s = {receipt_timeout}
retry_backoff_s = [0.2, 0.5, 1.0]
max_attempts = 8
"""


def fast(receipt_timeout: float = 600.0) -> str:
    return FAST.format(receipt_timeout=receipt_timeout)


async def accounting(
    redis: aioredis.Redis, keys: Keys, ids: list[str], sims: list[SmscSimulator]
) -> tuple[collections.Counter[str], int]:
    """Exactly one final event per message; returns final states and duplicates."""
    events = await events_by_id(redis, keys)
    finals: collections.Counter[str] = collections.Counter()
    for mid in ids:
        f = [e["state"] for e in events[mid] if e["state"] in FINAL_STATES]
        assert len(f) == 1, (mid, [e["state"] for e in events[mid]])
        finals[f[0]] += 1
    seen = collections.Counter(
        s.destination.lstrip("+") for sim in sims for s in sim.submissions if s.status == 0
    )
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return finals, duplicates


async def send(redis_url: str, cfg_queue: object, n: int, prefix: str) -> list[str]:
    async with Client(redis_url, queue=cfg_queue) as client:  # type: ignore[arg-type]
        return [i for i, _ in await client.send(
            [{"to": f"+{prefix}{k:08d}", "text": f"parcel {k} is on its way",
              "category": "transactional"} for k in range(n)])]


async def test_redis_restarted_mid_run(tmp_path: Path) -> None:
    """Redis goes away under load and comes back: unready meanwhile, binds kept, resumes."""
    rport = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=rport, persist=True)
    url = server.start()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, receipt_resend_s=1.0))
    port = await sim.start()
    client = aioredis.from_url(url, decode_responses=True)
    keys = Keys()
    try:
        cfg = load(write_config(tmp_path, redis_url=url, sim_port=port, extra=fast(),
                                tps=2000))
        ids = await send(url, cfg.queue, 3000, "86131")
        async with running_daemon(cfg) as daemon:
            while len(sim.submissions) < 800:
                await asyncio.sleep(0.01)
            server.stop()  # SIGTERM: Redis writes its append-only file and exits
            await asyncio.sleep(1.5)
            ready, why = daemon.readiness()
            assert not ready and why["redis"] != "ok"
            assert why["carriers"] == {"sim": "bound"}  # binds kept while Redis is away
            server.port = rport
            server.start()
            await client.aclose()
            client = aioredis.from_url(url, decode_responses=True)
            records = await wait_final(client, keys, ids, timeout_s=90)
            assert daemon.readiness()[0]
        states = collections.Counter(r.get("state") for r in records.values())
        assert states == {"delivered": 3000}, states
        _finals, duplicates = await accounting(client, keys, ids, [sim])
        print(f"redis restart: {duplicates} duplicates")
        assert duplicates <= in_flight_bound(cfg)
    finally:
        await client.aclose()
        await sim.stop()
        server.stop()


async def test_smsc_killed_and_restarted(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    """The carrier dies mid-window: binds come back, in-flight messages are retried.

    Receipts the dead SMSC still owed never come: those messages end `expired` at the
    receipt timeout, which is the honest outcome."""
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.3, response_delay_s=0.05))
    port = await sim.start()
    sim2: SmscSimulator | None = None
    try:
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port,
                                extra=fast(receipt_timeout=4.0), tps=3000))
        ids = await send(redis_url, cfg.queue, 2000, "86132")
        async with running_daemon(cfg) as daemon:
            while len(sim.submissions) < 500:
                await asyncio.sleep(0.01)
            await sim.stop(timeout_s=0)  # gone, with its window and owed receipts
            await asyncio.sleep(0.5)
            assert not daemon.readiness()[0]
            sim2 = SmscSimulator(SimSettings(port=port, receipt_delay_s=0.05))
            await sim2.start()
            records = await wait_final(redis, keys, ids, timeout_s=90)
        states = collections.Counter(r.get("state") for r in records.values())
        assert set(states) <= {"delivered", "expired"}, states
        assert states["delivered"] >= 2000 - 500 - 100
        finals, duplicates = await accounting(redis, keys, ids, [sim, sim2])
        print(f"smsc restart: {dict(finals)}, {duplicates} duplicates")
        assert duplicates <= cfg.carrier[0].window + in_flight_bound(cfg)
    finally:
        await sim.stop()
        if sim2 is not None:
            await sim2.stop()


async def test_throttle_storm(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Half of all submits answered ESME_RTHROTTLED: slower, nothing failed or lost."""
    sim = await smsc(receipt_delay_s=0.02, throttle_fraction=0.5, seed=11)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port, extra=fast()))
    ids = await send(redis_url, cfg.queue, 1000, "86133")
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=90)
    states = collections.Counter(r.get("state") for r in records.values())
    assert states == {"delivered": 1000}, states
    assert sim.stats.throttled >= 500
    _finals, duplicates = await accounting(redis, keys, ids, [sim])
    assert duplicates == 0


async def test_slow_smsc_with_a_full_window(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Two-second responses: the window fills and stays full; nothing times out or is lost."""
    sim = await smsc(receipt_delay_s=0.01, response_delay_s=2.0)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port, extra=fast(),
                            window=50))
    ids = await send(redis_url, cfg.queue, 300, "86134")
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=90)
    states = collections.Counter(r.get("state") for r in records.values())
    assert states == {"delivered": 300}, states
    assert max(sim.stats.max_outstanding.values()) == 50  # full, never over
    _finals, duplicates = await accounting(redis, keys, ids, [sim])
    assert duplicates == 0


async def test_receipt_flood(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Every receipt held back, then all at once: all correlated, none lost."""
    sim = await smsc(receipt_delay_s=2.0)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port, extra=fast()))
    ids = await send(redis_url, cfg.queue, 5000, "86135")
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=90)
    states = collections.Counter(r.get("state") for r in records.values())
    assert states == {"delivered": 5000}, states
    _finals, duplicates = await accounting(redis, keys, ids, [sim])
    assert duplicates == 0
    assert await redis.zcard(keys.awaiting_receipt) == 0
