"""Housekeeping steps are isolated: one failing step (a key of the wrong type in real
Redis) skips none of the others, and a script or type error is not "Redis down"."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gatewayd.ops import metrics
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_poisoned_step_stops_no_other_and_is_not_redis_down(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No receipts: messages wait for one until receipt_timeout_s, then expire_awaiting
    # (a housekeeping step) ends them as expired.
    sim = await smsc(receipts=False)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra="[queue]\nreceipt_timeout_s = 1.0\n"))
    # Poison two steps for real: the otp class's delayed set and the early-receipt set
    # are strings, so move_due (for otp) and retry_early fail with WRONGTYPE.
    await redis.set(keys.delayed("otp"), "not a zset")
    await redis.set(keys.early_receipts, "not a zset")
    moved_before = sample("gatewayd_housekeeping_errors_total", step="move_due")
    early_before = sample("gatewayd_housekeeping_errors_total", step="retry_early")
    caplog.set_level(logging.INFO, logger="gatewayd.daemon")
    try:
        await _run_poisoned(cfg, redis, keys, sim, caplog, moved_before, early_before)
    finally:  # the poison stays here, not in the next test's daemon
        await redis.delete(keys.delayed("otp"), keys.early_receipts)


async def _run_poisoned(cfg: Any, redis: aioredis.Redis, keys: Keys, sim: Any,
                        caplog: pytest.LogCaptureFixture, moved_before: float,
                        early_before: float) -> None:
    async with running_daemon(cfg) as daemon:
        # A deferred transactional message: the mover must still move it although the
        # otp class before it fails each tick.
        due = time.time() + 0.5
        await redis.xadd(keys.queue("transactional"), {
            "id": "later-1", "to": "+8613800138001", "text": "deferred",
            "not_before": repr(due)})
        await redis.xadd(keys.queue("otp"), {"id": "now-1", "to": "+8613800138002",
                                             "text": "at once"})
        up: set[float] = set()
        beats: set[str] = set()
        deadline = asyncio.get_running_loop().time() + 30
        records: dict[str, dict[str, str]] = {}
        while asyncio.get_running_loop().time() < deadline:
            up.add(sample("gatewayd_redis_up"))
            beats.add(str(await redis.get(keys.heartbeat(daemon.consumer))))
            records = await wait_final(redis, keys, ["later-1", "now-1"], timeout_s=0)
            if all(r.get("state") == "expired" for r in records.values()):
                break
            await asyncio.sleep(0.1)
        moved = sample("gatewayd_housekeeping_errors_total", step="move_due") - moved_before
        early = sample("gatewayd_housekeeping_errors_total", step="retry_early") - early_before
        depth = sample("gatewayd_queue_depth", **{"class": "transactional"})
        ready = daemon.readiness()[1]["redis"]
    # Both were sent (the deferred one moved in time) and expired for want of a receipt:
    # expire_awaiting ran while two steps before it failed every tick.
    assert {k: r.get("state") for k, r in records.items()} == {
        "later-1": "expired", "now-1": "expired"}, records
    assert sim.texts_to("8613800138001") == ["deferred"]
    # Redis stayed "up" throughout; the heartbeat was renewed tick after tick; the gauges
    # were set (the delivered backlog reads 0).
    assert up == {1.0}
    assert ready == "ok"
    assert len(beats - {"None"}) >= 2
    assert depth == 0
    # The failures were counted each tick, and logged once each, not every tick.
    assert moved >= 3 and early >= 3
    failed_logs = [r for r in caplog.records if "housekeeping step" in r.getMessage()
                   and "failed" in r.getMessage()]
    assert sorted({r.getMessage().split()[2] for r in failed_logs}) == [
        "move_due", "retry_early"]
    assert len(failed_logs) == 2
    assert not any("Redis unreachable" in r.getMessage() for r in caplog.records)


async def test_redis_down_is_still_reported(tmp_path: Path, smsc: Smsc) -> None:
    """The other side: a connection error still flips gatewayd_redis_up to 0 and back."""
    from gatewayd.store.embedded import EmbeddedRedis, free_port

    rport = free_port()
    server = EmbeddedRedis(tmp_path / "r", port=rport)
    url = server.start()
    sim = await smsc()
    try:
        cfg = load(write_config(tmp_path, redis_url=url, sim_port=sim.port))
        async with running_daemon(cfg):
            server.kill()
            for _ in range(100):
                if sample("gatewayd_redis_up") == 0:
                    break
                await asyncio.sleep(0.1)
            assert sample("gatewayd_redis_up") == 0
            server.port = rport
            server.start()
            for _ in range(150):
                if sample("gatewayd_redis_up") == 1:
                    break
                await asyncio.sleep(0.1)
            assert sample("gatewayd_redis_up") == 1
    finally:
        server.stop()
