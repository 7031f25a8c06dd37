"""A deliver_sm flood while Redis is slow: the bind stops reading, memory stays flat.

Each parsed chunk of receipts/MO (up to 256 PDUs) becomes a handler task that awaits
Redis and only then answers the SMSC. An SMSC's window normally bounds them; one that
ignores it (here the simulator writes 150 x 256 MO at once) while Redis is paused would
pile up tasks without end. The session stops reading past MAX_ANSWERING tasks (TCP then
pushes back on the SMSC) and reads again at half; once Redis answers, every MO is stored
once and answered ESME_ROK, none lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.carrier.smpp.session import MAX_ANSWERING
from gatewayd.daemon import Daemon
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, load, running_daemon, write_config

SHORT = "10690001"
CHUNKS, PER_CHUNK = 150, 256


def _answering(d: Daemon) -> int:
    """Handler tasks of the daemon's carrier under way right now."""
    assert d.pool is not None
    return sum(len(e.deliveries.tasks) for e in d.pool._engines.values())


async def test_a_deliver_sm_flood_while_redis_is_paused_is_held_back_by_tcp(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01, receipt_resend_s=120.0)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            mo_country_code="86"))
    total = CHUNKS * PER_CHUNK
    async with running_daemon(cfg) as d:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not sim.bound_count():
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        admin = aioredis.from_url(redis_url, decode_responses=True)
        try:
            # Scripts count as writes: every MO's store waits for the pause to end.
            await admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
            peak = 0
            for k in range(CHUNKS):
                await sim.inject_mo_chunk([(f"861390{k:03d}{i:03d}", SHORT, f"hi {k}.{i}")
                                           for i in range(PER_CHUNK)])
                peak = max(peak, _answering(d))
            for _ in range(100):  # the paused second: whatever the daemon reads now
                await asyncio.sleep(0.01)
                peak = max(peak, _answering(d))
        finally:
            await admin.aclose()
        # Without the hold this reaches ~CHUNKS; with it, MAX_ANSWERING plus what one
        # read already held in the session's buffer.
        assert 0 < peak <= 2 * MAX_ANSWERING, peak
        deadline = loop.time() + 120
        while await redis.xlen(keys.inbound) < total or sim.stats.mo_acked < total:
            assert loop.time() < deadline, (await redis.xlen(keys.inbound),
                                            sim.stats.mo_acked)
            await asyncio.sleep(0.1)
    assert await redis.xlen(keys.inbound) == total  # each stored once
    assert sim.stats.mo_nacked == 0 and sim.stats.mo_acked == total
