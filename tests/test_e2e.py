"""End to end through the real daemon: Redis stream -> policies -> SMPP over TCP -> receipts."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.model import FINAL_STATES
from gatewayd.ops import metrics
from gatewayd.store.keys import Keys
from tests.e2e_helpers import (
    Smsc,
    events_by_id,
    load,
    running_daemon,
    sim_texts,
    wait_final,
    write_config,
)

LONG_GSM = "Dear customer, your parcel {n} is out for delivery today between 14:00 and 18:00. " * 4
LONG_UCS2 = (
    "【京东】尊敬的客户，您的包裹{n}今天由京东物流配送，"
    "配送员会在送达前与您电话联系，请保持电话畅通。"
) * 3


async def test_messages_reach_the_smsc_intact_and_receipts_come_back(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.05)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    items = []
    for n in range(60):
        kind = n % 4
        text = {
            0: f"Your code is {1000 + n} {{ok}} [€5]",
            1: f"【京东】您的验证码是 {1000 + n}，5分钟内有效。",
            2: LONG_GSM.format(n=n),
            3: LONG_UCS2.format(n=n),
        }[kind]
        items.append({"to": f"+86138{n:08d}", "text": text,
                      "category": ["otp", "transactional"][n % 2], "ref": f"r{n}"})
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(items)]

    def histogram_counts() -> tuple[float, ...]:
        get = metrics.REGISTRY.get_sample_value
        return tuple(get(name, labels) or 0.0 for name, labels in (
            ("gatewayd_queue_wait_seconds_count", {"klass": "otp"}),
            ("gatewayd_queue_wait_seconds_count", {"klass": "transactional"}),
            ("gatewayd_receipt_latency_seconds_count", {"carrier": "sim"}),
        ))

    before = histogram_counts()
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    # Observed a batch at a time (metrics.observe_many): one observation a message.
    assert [b - a for a, b in zip(before, histogram_counts(), strict=True)] == [30, 30, 60]
    texts = sim_texts(sim)
    for item in items:
        assert texts[item["to"].lstrip("+")] == [item["text"]], item["to"]
    for mid, rec in records.items():
        expected = 1 if len(items[ids.index(mid)]["text"]) < 70 else None
        if expected:
            assert rec["segments"] == "1"
    events = await events_by_id(redis, keys)
    for mid in ids:
        states = [e["state"] for e in events[mid]]
        assert states == ["queued", "submitted", "delivered"], (mid, states)
        submitted = events[mid][1]
        assert submitted["carrier"] == "sim" and submitted["carrier_id"]
        assert events[mid][2]["ref"] == submitted["ref"]


async def test_raw_xadd_with_bad_entries_goes_to_dead_letters(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    q = keys.queue("otp")
    await redis.xadd(q, {"to": "+8613800138000", "text": "good one", "id": "good-1"})
    await redis.xadd(q, {"to": "12", "text": "bad number", "id": "bad-1"})
    await redis.xadd(q, {"text": "no recipient"})
    await redis.xadd(q, {"to": "+8613800138000", "text": "x", "category": "marketing"})
    await redis.xadd(q, {"to": "+8613800138000", "text": "x", "not_before": "soon"})
    await redis.xadd(q, {"json": '{"to": "+8613800138001", "text": "as JSON", "id": "j-1"}'})
    await redis.xadd(q, {"json": '{"to": "+8613800138001", "text": '})
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ["good-1", "bad-1", "j-1"], timeout_s=30)
        for _ in range(100):
            if await redis.xlen(keys.dead) >= 5:
                break
            await asyncio.sleep(0.05)
    assert records["good-1"]["state"] == "delivered"
    assert records["j-1"]["state"] == "delivered"
    assert records["bad-1"]["state"] == "rejected"
    assert records["bad-1"]["reason"].startswith("invalid:to")
    dead = [f for _, f in await redis.xrange(keys.dead)]
    reasons = sorted(d["reason"].split(":")[1] for d in dead)
    assert reasons == ["category", "json", "not_before", "to", "to"]
    assert await redis.xlen(q) == 0  # nothing left behind, nothing lost


async def test_permanent_and_temporary_errors(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    # ESME_RINVDSTADR: a permanent error
    sim = await smsc(receipt_delay_s=0.01, error_fraction=1.0, error_status=0x0B)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    async with Client(redis_url, queue=cfg.queue) as client:
        [(mid, _)] = await client.send([{"to": "+8613800138000", "text": "hi"}])
    async with running_daemon(cfg):
        rec = (await wait_final(redis, keys, [mid], timeout_s=30))[mid]
    assert rec["state"] == "failed"
    assert rec["reason"] == "ESME_RINVDSTADR"


async def test_throttling_delays_but_loses_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01, throttle_fraction=0.3, seed=7)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86139{n:08d}", "text": f"notice {n}"} for n in range(300)])]
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=90)
    states = collections.Counter(r.get("state") for r in records.values())
    assert states == {"delivered": 300}
    assert sim.stats["throttled"] > 0  # type: ignore[index]


async def test_every_message_ends_in_exactly_one_final_event(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01, undeliverable_fraction=0.2, seed=3)
    port = sim.port
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=port))
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86137{n:08d}", "text": f"n{n}"} for n in range(500)])]
    async with running_daemon(cfg, burst=True) as daemon:
        await asyncio.wait_for(daemon.stop_event.wait(), 60)
    events = await events_by_id(redis, keys)
    finals = collections.Counter()
    for mid in ids:
        f = [e["state"] for e in events[mid] if e["state"] in FINAL_STATES]
        assert len(f) == 1, (mid, f)
        finals[f[0]] += 1
    assert set(finals) == {"delivered", "undeliverable"}
    assert finals["undeliverable"] > 0


async def test_throttled_parts_of_a_long_message_are_resent_alone(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Part 2 of 3 throttled: only part 2 goes again, the handset gets each part once."""
    sim = await smsc(receipt_delay_s=0.01, throttle_fraction=0.3, seed=5)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    items = [{"to": f"+86150{n:08d}", "text": LONG_GSM.format(n=n)} for n in range(100)]
    async with Client(redis_url, queue=cfg.queue) as client:
        ids = [i for i, _ in await client.send(items)]
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids, timeout_s=60)
    assert {r["state"] for r in records.values()} == {"delivered"}
    accepted = collections.Counter(
        s.destination.lstrip("+") for s in sim.submissions if s.status == 0)
    parts = {r["segments"] for r in records.values()}
    assert parts == {"3"}
    assert set(accepted.values()) == {3}  # every part accepted exactly once
    assert sim.stats.throttled > 0
    texts = sim_texts(sim)
    for item in items:
        assert texts[item["to"].lstrip("+")] == [item["text"]]
