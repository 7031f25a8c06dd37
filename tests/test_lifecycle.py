"""Message lifecycle through the real daemon: priority, crash recovery, expiry, scheduling."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.model import FINAL_STATES
from gatewayd.store.keys import Keys
from tests.e2e_helpers import (
    Smsc,
    events_by_id,
    in_flight_bound,
    load,
    running_daemon,
    send_internal,
    wait_final,
    write_config,
)

QUEUE_SMALL = """
[queue]
read_batch = {batch}
dispatch_workers = {workers}
reclaim_idle_s = 1.0
early_receipt_hold_s = 2.0
"""


async def test_otp_overtakes_a_queued_flood(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """An otp message enqueued behind 10,000 queued lower-class messages goes next batch."""
    sim = await smsc(receipts=False)
    port = sim.port
    batch, workers = 128, 2
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port,
                            extra=QUEUE_SMALL.format(batch=batch, workers=workers)))
    async with Client(redis_url, queue=cfg.queue) as client:
        await client.send([{"to": f"+86135{n:08d}", "text": f"bulk {n}",
                            "category": "transactional"} for n in range(10_000)])
        async with running_daemon(cfg):
            while len(sim.submissions) < 1000:
                await asyncio.sleep(0.01)
            seen_before = len(sim.submissions)
            [(otp, _)] = await client.send([{"to": "+8613800138000", "text": "code 9",
                                              "category": "otp"}])
            for _ in range(1000):
                if any(s.destination.lstrip("+") == "8613800138000" for s in sim.submissions):
                    break
                await asyncio.sleep(0.005)
    position = next(i for i, s in enumerate(sim.submissions)
                    if s.destination.lstrip("+") == "8613800138000")
    # Batches already read (one per worker) may finish first; nothing more.
    assert position - seen_before <= workers * batch, (position, seen_before)
    assert len(sim.submissions) < 10_001  # it did not wait for the flood to drain
    assert otp


async def test_kill_9_mid_run_loses_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """SIGKILL the daemon under load, start it again: every message ends exactly once."""
    total, batch, workers = int(os.environ.get("GW_K9_TOTAL", "20000")), 128, 2
    sim = await smsc(receipt_delay_s=0.02)
    port = sim.port
    path = write_config(tmp_path, redis_url=redis_url, sim_port=port,
                        extra=QUEUE_SMALL.format(batch=batch, workers=workers))
    cfg = load(path)
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86136{n:08d}", "text": f"parcel {n} is on its way",
              "category": "transactional"} for n in range(total)])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = (tmp_path / "daemon.log").open("ab")
    cmd = [sys.executable, "-m", "gatewayd", "run", "-c", str(path)]
    first = await asyncio.create_subprocess_exec(*cmd, env=env,
                                                 stdout=log)
    deadline = time.monotonic() + 60
    while len(sim.submissions) < total // 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert first.returncode is None, "daemon died on its own"
    first.send_signal(signal.SIGKILL)
    await first.wait()
    killed_at = len(sim.submissions)
    assert 0 < killed_at < total
    second = await asyncio.create_subprocess_exec(
        *cmd, "--burst", "--burst-timeout", "100", env=env,
        stdout=log)
    assert await asyncio.wait_for(second.wait(), 180) == 0
    log.close()
    events = await events_by_id(redis, keys)
    finals: collections.Counter[str] = collections.Counter()
    for mid in ids:
        f = [e["state"] for e in events[mid] if e["state"] in FINAL_STATES]
        assert len(f) == 1, (mid, f)
        finals[f[0]] += 1
    assert finals == {"delivered": total}
    per_dest = collections.Counter(s.destination.lstrip("+") for s in sim.submissions)
    assert len(per_dest) == total  # the SMSC saw every message at least once
    duplicates = sum(per_dest.values()) - total
    print(f"kill -9 after {killed_at} submissions: {duplicates} duplicates")
    assert duplicates <= in_flight_bound(cfg)
    assert await redis.xlen(keys.queue("transactional")) == 0


async def test_expired_and_scheduled_messages(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    now = time.time()
    # enqueued_at is internal (sealed as gatewayd writes it; a client cannot set it)
    [stale, late_otp, later] = await send_internal(redis_url, cfg, [
        {"to": "+8613800000001", "text": "too late", "expires_at": now - 1},
        {"to": "+8613800000002", "text": "old code", "category": "otp",
         "enqueued_at": now - 301},
        {"to": "+8613800000003", "text": "at 9", "not_before": now + 1.5},
    ])
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, [stale, late_otp, later], timeout_s=20)
    assert records[stale]["state"] == "expired"
    assert records[late_otp]["state"] == "expired"  # otp default TTL 300 s
    assert records[later]["state"] == "delivered"
    events = await events_by_id(redis, keys)
    states = [e["state"] for e in events[later]]
    assert states == ["queued", "deferred", "submitted", "delivered"]
    sub = next(e for e in events[later] if e["state"] == "submitted")
    assert float(sub["at"]) >= now + 1.5
    assert {s.destination.lstrip("+") for s in sim.submissions} == {"8613800000003"}


async def test_idempotency_on_raw_xadd(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    q = keys.queue("transactional")
    for n in (1, 2):
        await redis.xadd(q, {"to": "+8613800000009", "text": "order 1 shipped",
                             "id": f"dup-{n}", "idempotency_key": "order-1"})
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ["dup-1", "dup-2"], timeout_s=20)
    assert records["dup-1"]["state"] == "delivered"
    assert records["dup-2"]["state"] == "rejected"
    assert records["dup-2"]["reason"] == "duplicate:idempotency_key of dup-1"
    assert len(sim.submissions) == 1
