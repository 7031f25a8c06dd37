"""Webhooks (issue 18) through the real daemon, a real SMSC simulator and a real HTTP
receiver: every state change and MO pushed, signed, in order per message, never lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client, verify_webhook
from gatewayd.model import FINAL_STATES
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from gatewayd.webhooks.signing import sign
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml


async def send(redis_url: str, cfg: object, n: int, prefix: str = "86137",
               **fields: str) -> list[str]:
    async with Client(redis_url, queue=cfg.queue) as client:  # type: ignore[attr-defined]
        return [i for i, _ in await client.send(
            [{"to": f"+{prefix}{k:08d}", "text": f"parcel {k} is on its way",
              "category": "transactional", **fields} for k in range(n)])]


def in_order(by_msg: dict[str, list[str]]) -> bool:
    """Per message: submitted arrived, and before its final event."""
    for kinds in by_msg.values():
        finals = [i for i, k in enumerate(kinds) if k in FINAL_STATES]
        if "submitted" not in kinds or not finals or kinds.index("submitted") > finals[0]:
            return False
    return True


async def test_states_and_mo_pushed_signed_in_order(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        eps = (endpoint_toml(recv, "all", "/all", tenant="*", events=["*"], batch=20)
               + endpoint_toml(recv, "dlr", "/dlr", tenant="*", events=["final"],
                               format="kannel",
                               url="?d=%d&id=%I&to=%p&smsc=%i&t=%T&a=%A&pct=%%"))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps),
                                extra_carrier='mo_country_code = "86"'))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ids = await send(redis_url, cfg, 60, ref="order-7")
            await wait_final(redis, keys, ids, timeout_s=30)
            await sim.inject_mo("13800138000", "10690001", "hello back", wait=True)
            assert await wait_for(lambda: len(recv.by_message("/all")) == 60
                                  and in_order(recv.by_message("/all"))
                                  and any(e["kind"] == "mo" for e in recv.events["/all"])
                                  and len(recv.events["/dlr"]) >= 60)
        assert recv.bad_signatures == 0
        by_msg = recv.by_message("/all")
        assert set(by_msg) == set(ids)
        assert all(k[:3] == ["queued", "submitted", "delivered"] for k in by_msg.values())
        sample = next(e for e in recv.events["/all"] if e["kind"] == "delivered")
        assert sample["message_id"] in ids and sample["ref"] == "order-7"
        assert sample["carrier"] == "sim" and sample["carrier_id"]
        assert isinstance(sample["at"], float) and sample["event_id"].startswith("e")
        mo = next(e for e in recv.events["/all"] if e["kind"] == "mo")
        assert mo["from"] == "+8613800138000" and mo["text"] == "hello back"
        dlr = {q["id"]: q for q in recv.events["/dlr"]}
        assert set(dlr) == set(ids)
        q = dlr[ids[0]]
        assert q["d"] == "1" and q["smsc"] == "sim" and q["a"] == "delivered"
        assert q["to"].endswith("0000") and q["pct"] == "%" and int(q["t"]) > 0
        # Everything was done: the sender's saved cursor is at the stream's last entry.
        last = await redis.xrevrange(keys.events, count=1)
        assert await redis.hget(keys.webhook_cursor, "events") == last[0][0]
    finally:
        await recv.stop()


def test_signature_recipe() -> None:
    body = b'{"events":[]}'
    header = sign(b"k", body, 1_700_000_000)
    assert verify_webhook("k", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body + b" ", header, now=1_700_000_100)
    assert not verify_webhook("other", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body, header, now=1_700_000_000 + 301)  # a replay
    # The recipe of the README, by hand: HMAC-SHA256 over "<t>." + body, hex.
    import hashlib
    import hmac

    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify_webhook("k", body, f"t={int(time.time())},v1=x,v1="
                          + hmac.new(b"k", f"{int(time.time())}.".encode() + body,
                                     hashlib.sha256).hexdigest())


def complete(recv: Receiver, path: str, ids: list[str]) -> bool:
    """Every message's submitted and final event arrived at ``path``, in that order."""
    by_msg = recv.by_message(path)
    return set(by_msg) >= set(ids) and in_order({m: by_msg[m] for m in ids})


async def test_failing_slow_and_dead_endpoints_lose_nothing_and_hold_up_nobody(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """One endpoint answers 500s, times out and drops connections; another is down (no
    listener) until the messages are all final; a third is healthy. Dispatch finishes
    every message while one endpoint is down, the healthy one gets everything
    meanwhile, and once the others recover they get every event too, submitted before
    final for each message."""
    recv = Receiver(slow_s=2.0)
    late = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        recv.script["/flaky"] = ["500", "500", "close", "slow", "500", "close", "500"]
        eps = (endpoint_toml(recv, "ok", "/ok", batch=25)
               + endpoint_toml(recv, "flaky", "/flaky", batch=10, timeout_s=0.5,
                               concurrency=2)
               + endpoint_toml(late, "down", "/down", batch=50))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps)))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ids = await send(redis_url, cfg, 300)
            records = await wait_final(redis, keys, ids, timeout_s=60)
            assert all(r["state"] == "delivered" for r in records.values())
            assert await wait_for(lambda: complete(recv, "/ok", ids), 30)
            assert late.requests.total() == 0  # still down: nothing could arrive
            assert await redis.zcard(keys.webhook_queue("down")) > 0  # waiting in Redis
            await late.start()
            assert await wait_for(lambda: complete(late, "/down", ids)
                                  and complete(recv, "/flaky", ids), 60)
            await wait_for(lambda: daemon.webhooks is not None
                           and not daemon.webhooks.senders["down"].queued, 10)
        assert recv.bad_signatures == 0 and late.bad_signatures == 0
        assert recv.requests["/flaky"] > len(recv.script["/flaky"])  # retried past faults
        assert recv.script["/flaky"] == []  # every fault was served
        for r, path in ((recv, "/ok"), (recv, "/flaky"), (late, "/down")):
            kinds = r.by_message(path)
            assert all(kinds[m][:2] == ["submitted", "delivered"] for m in ids), path
        assert await redis.zcard(keys.webhook_queue("down")) == 0
        assert await redis.xlen(keys.webhook_dead("flaky")) == 0
    finally:
        await recv.stop()
        await late.stop()


async def test_kill_9_and_a_redis_restart_lose_no_event(tmp_path: Path, smsc: Smsc) -> None:
    """The daemon sending webhooks is killed with SIGKILL mid-delivery; a daemon and a
    separate `gatewayd webhooks run` take over; Redis restarts under them. Every
    message's submitted and delivered events reach the endpoint (at least once)."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=True)
    url = server.start()
    recv = Receiver()
    recv.delay_s = 0.03
    await recv.start()
    procs: list[asyncio.subprocess.Process] = []
    log = (tmp_path / "procs.log").open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = endpoint_toml(recv, "hook", "/hook", batch=20, concurrency=1)
        in_daemon = write_config(tmp_path, redis_url=url, sim_port=sim.port,
                                 extra=webhooks_toml(recv, endpoints=eps))
        apart = write_config(tmp_path, redis_url=url, sim_port=sim.port, name="apart.toml",
                             extra=webhooks_toml(recv, endpoints=eps).replace(
                                 "enabled = true", "enabled = false"))
        cfg = load(in_daemon)
        ids = await send(url, cfg, 1000)

        async def start(*args: str) -> asyncio.subprocess.Process:
            p = await asyncio.create_subprocess_exec(sys.executable, "-m", "gatewayd", *args,
                                                     env=env, stdout=log, stderr=log)
            procs.append(p)
            return p

        first = await start("run", "-c", str(in_daemon))
        assert await wait_for(lambda: len(recv.events["/hook"]) >= 300, 60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        got_at_kill = len(recv.ids("/hook"))
        assert got_at_kill < 2000  # killed mid-delivery
        await start("run", "-c", str(apart))
        await start("webhooks", "run", "-c", str(apart))
        assert await wait_for(lambda: len(recv.ids("/hook")) >= got_at_kill + 300, 60)
        server.stop()  # SIGTERM: Redis writes its append-only file and exits
        await asyncio.sleep(1.0)
        server.start()
        assert await wait_for(lambda: complete(recv, "/hook", ids), 120), (
            len(recv.ids("/hook")))
        assert recv.bad_signatures == 0
        dupes = len(recv.events["/hook"]) - len(recv.ids("/hook"))
        print(f"kill -9 + redis restart: {dupes} events delivered twice")
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except TimeoutError:
                    p.kill()
        log.close()
        await recv.stop()
        server.stop()
