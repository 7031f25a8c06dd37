"""Several daemons, one Redis: shared work, shared carrier TPS, nothing lost or doubled.

Two `gatewayd run --burst` subprocesses (distinct consumer names, the same carrier
account) drain one queue against the SMSC simulator running in the test process.

- Exactly once when nobody dies: every message submitted once, one final event each.
- The carrier's TPS cap is the account's, not the process's: the shared Redis token
  bucket (policy/ratelimit.py CarrierRateGate) bounds the SUM of both daemons' submits
  (any 2-s window at the SMSC <= 2.2 x the cap: the promised 1.1 x a second, over two
  seconds so the SMSC's receive jitter does not count). The cap is set below what one
  daemon manages alone, so per-process buckets would show about twice the cap. No
  lower bound: a loaded machine sends slower, and speed belongs in bench/.
- SIGKILL one daemon mid-run: the survivor reclaims its pending entries; every
  message still ends exactly once and the SMSC sees at most the killed daemon's
  in-flight entries twice (dispatch_workers x read_batch).

Sizes are chosen to keep each test well under a minute on a 2-core machine; override
with GW_SCALE_TOTAL / GW_SCALE_TPS for a longer run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.config import QueueConfig
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.keys import Keys
from tests.scale_helpers import (
    busiest_window,
    daemon_config,
    shares,
    spawn,
    steady_rate,
    stop_all,
    tally,
)

TOTAL = int(os.environ.get("GW_SCALE_TOTAL", "50000"))
CAPPED_TOTAL = int(os.environ.get("GW_SCALE_CAPPED_TOTAL", "12000"))
CAP_TPS = float(os.environ.get("GW_SCALE_TPS", "800"))
KILL_TOTAL = int(os.environ.get("GW_SCALE_KILL_TOTAL", "20000"))


async def enqueue(redis_url: str, n: int, tag: str) -> list[str]:
    async with Client(redis_url, queue=QueueConfig()) as client:
        return [i for i, _ in await client.send(
            [{"to": f"+86137{n_:08d}", "text": f"{tag} parcel {n_} is on its way",
              "category": "transactional"} for n_ in range(n)], chunk=5000)]


async def test_two_daemons_drain_one_queue_exactly_once(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, keep_submissions=-1))
    port = await sim.start()
    procs = []
    try:
        ids = await enqueue(redis_url, TOTAL, "a")
        for i, name in enumerate(("gw-a", "gw-b"), 1):
            cfg = daemon_config(tmp_path, name, redis_url=redis_url, sim_port=port,
                                source_addr=f"106900{i}",
                                tps=100_000)
            procs.append(await spawn(cfg, name, tmp_path, burst=True, burst_timeout_s=110))
        started = time.monotonic()
        for p in procs:
            assert await p.wait(120) == 0, p.log_text()[-2000:]
        elapsed = time.monotonic() - started
        t = await tally(redis, keys, ids, sim)
        assert not t.not_one_final[:5], t.not_one_final[:5]
        assert t.finals == {"delivered": TOTAL}
        assert len(t.submissions_per_dest) == TOTAL
        assert t.duplicates == 0
        work = shares(sim)
        assert set(work) == {"1069001", "1069002"}
        assert min(work.values()) > TOTAL // 5, work  # both took a real share
        print(f"{TOTAL} messages, 2 daemons: {elapsed:.1f}s ({TOTAL / elapsed:.0f}/s)")
        assert await redis.xlen(keys.queue("transactional")) == 0
    finally:
        await stop_all(procs)
        await sim.stop()


async def test_two_daemons_hold_the_shared_carrier_tps_cap(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, keep_submissions=-1))
    port = await sim.start()
    procs = []
    try:
        ids = await enqueue(redis_url, CAPPED_TOTAL, "b")
        for i, name in enumerate(("gw-a", "gw-b"), 1):
            cfg = daemon_config(tmp_path, name, redis_url=redis_url, sim_port=port,
                                source_addr=f"106900{i}",
                                tps=CAP_TPS)
            procs.append(await spawn(cfg, name, tmp_path, burst=True, burst_timeout_s=110))
        for p in procs:
            assert await p.wait(120) == 0, p.log_text()[-2000:]
        t = await tally(redis, keys, ids, sim)
        assert not t.not_one_final[:3], t.not_one_final[:3]
        assert t.finals == {"delivered": CAPPED_TOTAL}
        assert t.duplicates == 0
        times = [s.received_at for s in sim.submissions]
        # Both daemons did a real share of the work (else this proves nothing).
        work = shares(sim)
        assert min(work.values()) > CAPPED_TOTAL // 5, work
        busiest = busiest_window(times, 2.0)
        print(f"2 daemons, shared cap {CAP_TPS:.0f}/s: steady {steady_rate(times):.0f}/s, "
              f"busiest 2 s {busiest}")
        assert busiest <= 2.2 * CAP_TPS, busiest
    finally:
        await stop_all(procs)
        await sim.stop()


async def test_one_of_two_daemons_killed_mid_run(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    read_batch, workers = 128, 2
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, keep_submissions=-1))
    port = await sim.start()
    procs = []
    try:
        ids = await enqueue(redis_url, KILL_TOTAL, "c")
        for i, name in enumerate(("gw-a", "gw-b"), 1):
            cfg = daemon_config(tmp_path, name, redis_url=redis_url, sim_port=port,
                                source_addr=f"106900{i}",
                                tps=100_000, read_batch=read_batch, workers=workers)
            procs.append(await spawn(cfg, name, tmp_path, burst=True, burst_timeout_s=110))
        victim, survivor = procs
        deadline = time.monotonic() + 60
        while len(sim.submissions) < KILL_TOTAL // 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert victim.proc.returncode is None, victim.log_text()[-2000:]
        victim.kill()
        await victim.wait(10)
        killed_at = len(sim.submissions)
        assert 0 < killed_at < KILL_TOTAL
        assert await survivor.wait(120) == 0, survivor.log_text()[-2000:]
        t = await tally(redis, keys, ids, sim)
        assert not t.not_one_final[:5], t.not_one_final[:5]
        assert t.finals == {"delivered": KILL_TOTAL}
        assert len(t.submissions_per_dest) == KILL_TOTAL
        print(f"killed one of 2 daemons after {killed_at} submissions: "
              f"{t.duplicates} duplicates")
        # The killed daemon's window: a batch per worker, its reclaim batch, its
        # express batch (tests/e2e_helpers.in_flight_bound).
        assert t.duplicates <= (workers + 1) * read_batch + QueueConfig().express_batch
        assert await redis.xlen(keys.queue("transactional")) == 0
    finally:
        await stop_all(procs)
        await sim.stop()
