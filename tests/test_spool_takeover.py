"""Receipts survive a Redis outage on local disk; pending entries are taken over fast.

Issue 16 items 8 and 9: an SMSC that retries a receipt three times a second apart must
not decide whether a delivered message ends `delivered` (the spool, fsynced before the
deliver_sm_resp, replayed in order, across kill -9); a restarted daemon resumes its own
pending entries at once (stable consumer name), and a dead consumer's entries are taken
over in one pass whatever their number.
"""

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
from gatewayd.daemon import default_consumer
from gatewayd.model import InboundMessage, Receipt
from gatewayd.ops import metrics
from gatewayd.pipeline.spool import Spool
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import GROUP, Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config

FAST = """
[queue]
read_batch = 64
dispatch_workers = 2
reclaim_idle_s = {reclaim}
early_receipt_hold_s = 60.0
retry_backoff_s = [0.2, 0.5, 1.0]
"""


async def send(url: str, cfg_queue: object, n: int, prefix: str) -> list[str]:
    async with Client(url, queue=cfg_queue) as client:  # type: ignore[arg-type]
        return [i for i, _ in await client.send(
            [{"to": f"+{prefix}{k:08d}", "text": f"parcel {k} is on its way",
              "category": "transactional"} for k in range(n)])]


# The spool itself ---------------------------------------------------------------------------

async def test_spool_replays_in_order_cuts_a_torn_tail_and_sets_bad_frames_aside(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    r = [Receipt(carrier="c", smsc_id=f"{i}", stat="DELIVRD", state="delivered")
         for i in range(3)]
    mo = [InboundMessage(carrier="c", source="+8613800138000", destination="1069",
                         text="TD", received_at=1.0)]
    await spool.append("r", r[:2])
    await spool.append("m", mo)
    await spool.append("r", r[2:])
    assert spool.active
    size = spool.log_path.stat().st_size
    # A crash in the middle of a write:
    spool.log_path.write_bytes(spool.log_path.read_bytes() + b"\x00\x00\x01\x00garbage")
    again = Spool(tmp_path / "spool")
    again.open()
    assert again.log_path.stat().st_size == size
    seen: list[tuple[str, list[str]]] = []
    fail_on_mo = {"left": 1}

    async def apply(kind: str, items: list[object]) -> None:
        if kind == "m" and fail_on_mo["left"]:
            fail_on_mo["left"] -= 1
            raise ConnectionError("Redis away")  # an outage: stop, keep the rest
        seen.append((kind, [getattr(x, "smsc_id", "") or getattr(x, "text", "")
                            for x in items]))

    assert await again.replay(apply, lambda e: isinstance(e, ConnectionError)) == 1
    assert again.active and seen == [("r", ["0", "1"])]
    # A restart mid-replay goes on from the saved position.
    third = Spool(tmp_path / "spool")
    third.open()
    assert await third.replay(apply, lambda e: isinstance(e, ConnectionError)) == 2
    assert seen == [("r", ["0", "1"]), ("m", ["TD"]), ("r", ["2"])]
    assert not third.active and third.log_path.stat().st_size == 0

    async def broken(kind: str, items: list[object]) -> None:
        raise ValueError("a bug")

    await third.append("r", r[:1])
    assert await third.replay(broken, lambda e: isinstance(e, ConnectionError)) == 1
    assert not third.active and b'"smsc_id":"0"' in third.bad_path.read_bytes()


# Redis away for 10 s, an impatient SMSC ------------------------------------------------------

async def test_receipts_during_a_redis_outage_are_spooled_and_every_message_ends_final(
    tmp_path: Path,
) -> None:
    rport = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=rport, persist=True)
    url = server.start()
    # Three tries a second apart, then the SMSC gives up on a receipt.
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=1.0, receipt_resend_s=1.0,
                                    receipt_max_attempts=3))
    port = await sim.start()
    client = aioredis.from_url(url, decode_responses=True)
    keys = Keys()
    spooled = metrics.REGISTRY.get_sample_value(
        "gatewayd_spooled_total", {"kind": "receipt", "action": "spooled"}) or 0
    try:
        cfg = load(write_config(tmp_path, redis_url=url, sim_port=port, tps=1500,
                                extra=FAST.format(reclaim=2.0)))
        ids = await send(url, cfg.queue, 3000, "86131")
        async with running_daemon(cfg) as daemon:
            while len(sim.submissions) < 1500:
                await asyncio.sleep(0.01)
            server.stop()
            await asyncio.sleep(10.0)
            assert daemon.spool is not None and daemon.spool.active
            server.port = rport
            server.start()
            await client.aclose()
            client = aioredis.from_url(url, decode_responses=True)
            records = await wait_final(client, keys, ids, timeout_s=90)
        states = collections.Counter(r.get("state") for r in records.values())
        assert states == {"delivered": 3000}, states
        assert sim.stats.receipts_abandoned == 0
        now_spooled = metrics.REGISTRY.get_sample_value(
            "gatewayd_spooled_total", {"kind": "receipt", "action": "spooled"}) or 0
        assert now_spooled - spooled >= 100
        assert not daemon.spool.active
    finally:
        await client.aclose()
        await sim.stop()
        server.stop()


async def test_kill_9_during_the_outage_loses_no_acknowledged_receipt(tmp_path: Path) -> None:
    rport = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=rport, persist=True)
    url = server.start()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.5, receipt_resend_s=1.0,
                                    receipt_max_attempts=3, keep_submissions=-1))
    port = await sim.start()
    keys = Keys()
    client = aioredis.from_url(url, decode_responses=True)
    path = write_config(tmp_path, redis_url=url, sim_port=port, tps=500,
                        extra=FAST.format(reclaim=1.0))
    cfg = load(path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gatewayd", "run", "-c", str(path)]
    log = (tmp_path / "daemon.log").open("ab")
    try:
        ids = await send(url, cfg.queue, 1000, "86132")
        first = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)
        while len(sim.submissions) < 400:
            await asyncio.sleep(0.01)
        server.stop()
        acked = sim.stats.receipts_acked
        deadline = time.monotonic() + 15
        while sim.stats.receipts_acked < acked + 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sim.stats.receipts_acked >= acked + 100  # acknowledged with Redis away
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert (tmp_path / "state" / "spool" / "inbound.log").stat().st_size > 0
        server.port = rport
        server.start()
        await client.aclose()
        client = aioredis.from_url(url, decode_responses=True)
        second = await asyncio.create_subprocess_exec(
            *cmd, "--burst", "--burst-timeout", "90", env=env, stdout=log, stderr=log)
        assert await asyncio.wait_for(second.wait(), 120) == 0
        records = await wait_final(client, keys, ids, timeout_s=5)
        states = collections.Counter(r.get("state") for r in records.values())
        assert states == {"delivered": 1000}, states
        assert sim.stats.receipts_abandoned == 0
    finally:
        log.close()
        await client.aclose()
        await sim.stop()
        server.stop()


# Takeover ---------------------------------------------------------------------------------

async def test_restart_resumes_its_own_pending_entries_at_once(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The previous run of this instance (same state_dir: same consumer name) died with
    256 entries pending and its heartbeat still alive: the new run takes them back at
    start, not after reclaim_idle_s (60 s here)."""
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra=FAST.format(reclaim=60.0)))
    ids = await send(redis_url, cfg.queue, 256, "86133")
    me = default_consumer(cfg)
    assert me == default_consumer(load(tmp_path / "gw.toml"))  # stable across runs
    got = await redis.xreadgroup(GROUP, me, {keys.queue("transactional"): ">"}, count=1000)
    assert sum(len(items) for _, items in got) == 256
    await redis.set(keys.heartbeat(me), 1, px=30_000)  # "alive": it just died
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=20)
    assert {r.get("state") for r in records.values()} == {"delivered"}
    assert len(sim.submissions) == 256


async def test_a_dead_consumer_is_taken_over_in_one_pass_whatever_the_count(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """2,000 entries pending on a consumer without a heartbeat, idle past reclaim_idle_s:
    all taken over in one pass (before: 64 a stream every reclaim_idle_s / 4)."""
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra=FAST.format(reclaim=60.0)))
    ids = await send(redis_url, cfg.queue, 2000, "86134")
    stream = keys.queue("transactional")
    got = await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=5000)
    entry_ids = [e for _, items in got for e, _ in items]
    assert len(entry_ids) == 2000
    # Idle for two minutes already (XCLAIM's IDLE sets it): past reclaim_idle_s.
    for i in range(0, len(entry_ids), 500):
        await redis.execute_command("XCLAIM", stream, GROUP, "ghost", 0,
                                    *entry_ids[i:i + 500], "IDLE", 120_000, "JUSTID")
    async with running_daemon(cfg):
        # The next pass would be reclaim_idle_s / 4 = 15 s away: the first one takes
        # every entry off the ghost (processing them as it goes).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 12.0
        while loop.time() < deadline:
            summary = await redis.xpending(stream, GROUP)
            if not any(c["name"] == "ghost" for c in summary["consumers"] or []):
                break
            await asyncio.sleep(0.1)
        assert loop.time() < deadline, summary
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert collections.Counter(r.get("state") for r in records.values()) == {"delivered": 2000}
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
