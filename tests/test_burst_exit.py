"""``gatewayd run --burst`` exits only once every message it took has its outcome
recorded: submits answered late (stragglers, recorded by a task of their own), their
receipts, and messages retried after a failed submit.

Real Redis, a real SMSC simulator over TCP, and the daemon as its own process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.model import FINAL_STATES
from gatewayd.store.keys import keys_for
from tests.e2e_helpers import Smsc, load, write_config


async def burst(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "run", "--burst", "--burst-timeout", "120",
        "-c", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def outcomes(redis: aioredis.Redis, config: Path, ids: list[str]) -> dict[str, str]:
    """Each message's recorded state ("" when none)."""
    keys = keys_for(load(config))
    return {i: await redis.hget(keys.status(i), "state") or "" for i in ids}


async def test_burst_exits_after_slow_answers_and_their_receipts_are_recorded(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, smsc: Smsc
) -> None:
    # Every submit answered 1.5 s late: past the batch's grace (at most half the
    # response timeout, and a few typical answer times), so each outcome comes to a
    # detached straggler task; each receipt 1 s after that.
    sim = await smsc(response_delay_s=1.5, receipt_delay_s=1.0)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                        response_timeout_s=2.5)
    cfg = load(path)
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86139{n:08d}", "text": f"slow {n}"} for n in range(12)])]
    rc, out = await burst(path)
    assert rc == 0, out
    states = await outcomes(redis, path, ids)
    assert all(s == "delivered" for s in states.values()), (states, out[-3000:])
    assert len(sim.submissions) == len(ids)


async def test_burst_exits_after_unanswered_submits_are_retried_to_an_outcome(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, smsc: Smsc
) -> None:
    # Some submits are never answered: they time out (a straggler to the end), go back
    # to the queue for a retry, and are answered then. The burst waits for all of it.
    sim = await smsc(unanswered_fraction=0.3, receipt_delay_s=0.2, seed=7)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                        response_timeout_s=1.0)
    cfg = load(path)
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86138{n:08d}", "text": f"lost {n}"} for n in range(12)])]
    rc, out = await burst(path)
    assert rc == 0, out
    states = await outcomes(redis, path, ids)
    assert all(s in FINAL_STATES for s in states.values()), (states, out[-3000:])
    assert sim.stats.unanswered > 0
