"""Receipt correlation against a real Redis, on both paths of InboundHandler._apply:
the one-script batch (single Redis) and the step-by-step path a cluster takes. Both
must leave the same states and publish each final event exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gatewayd.carrier.cmpp import msgid
from gatewayd.carrier.cmpp.pdu import Report
from gatewayd.carrier.cmpp.receipts import to_receipt
from gatewayd.config import Config, QueueConfig
from gatewayd.model import Receipt
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.intake import parse_message
from gatewayd.store import fastpipe
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
NOW = 1_800_000_000.0


@pytest.fixture(params=["script", "steps"])
def handler(request: pytest.FixtureRequest, redis: aioredis.Redis, keys: Keys) -> InboundHandler:
    cfg = Config(queue=QueueConfig(early_receipt_hold_s=60))
    h = InboundHandler(redis, keys, cfg, lambda: None, clock=lambda: NOW + 5)
    if request.param == "steps":
        h._receipts = None  # what a cluster client gets
    else:
        assert h._receipts is not None
    return h


async def submitted(redis: aioredis.Redis, keys: Keys, msg_id: str, smsc_ids: list[str]) -> None:
    ledger = Ledger(keys, Config(), redis)
    m = parse_message({"id": msg_id, "to": "+8613800138000", "text": "x", "ref": "r-1"},
                      classes=CLASSES, max_segments=10, now=NOW)
    book = ledger.book()
    ledger.record(book, m, "submitted", NOW, carrier="cm", carrier_id=smsc_ids[0],
                  segments=len(smsc_ids))
    for part, sid in enumerate(smsc_ids):
        book.correlate(keys.correlation("cm", sid), f"{msg_id} {part}")
    pipe = redis.pipeline(transaction=False)
    book.flush(pipe)
    pipe.zadd(keys.awaiting_receipt, {msg_id: NOW + 3600})
    await fastpipe.execute(pipe)


def rcpt(smsc_id: str, state: str = "delivered", err: str = "000") -> Receipt:
    stat = {"delivered": "DELIVRD", "undeliverable": "UNDELIV", "expired": "EXPIRED"}[state]
    return Receipt(carrier="cm", smsc_id=smsc_id, stat=stat, state=state, err=err)


async def finals(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [f for _, f in await redis.xrange(keys.events)
            if f["state"] in ("delivered", "undeliverable", "expired")]


async def test_single_part_receipt_ends_the_message(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m1", ["a1"])
    await handler.on_receipts([rcpt("a1")])
    assert await redis.hget(keys.status("m1"), "state") == "delivered"
    [ev] = await finals(redis, keys)
    assert ev["id"] == "m1" and ev["carrier"] == "cm" and ev["ref"] == "r-1"
    assert ev["carrier_id"] == "a1" and ev["to"] == "+86138****8000" and float(ev["at"]) == NOW + 5
    assert await redis.zscore(keys.awaiting_receipt, "m1") is None


async def test_multipart_is_final_at_the_last_part_with_the_worst_state(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m2", ["b1", "b2", "b3"])
    await handler.on_receipts([rcpt("b1"), rcpt("b3", "undeliverable", "011")])
    assert await redis.hget(keys.status("m2"), "state") == "submitted"
    assert await finals(redis, keys) == []
    await handler.on_receipts([rcpt("b2", "expired")])
    status = await redis.hgetall(keys.status("m2"))
    assert status["state"] == "undeliverable" and status["err"] == "011"
    [ev] = await finals(redis, keys)
    assert ev["state"] == "undeliverable" and ev["err"] == "011" and ev["segments"] == "3"


async def test_a_duplicate_in_one_batch_publishes_once(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m3", ["c1"])
    await handler.on_receipts([rcpt("c1"), rcpt("c1")])
    assert len(await finals(redis, keys)) == 1


async def test_early_and_unknown_receipts_are_parked_then_matched(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await handler.on_receipts([rcpt("d1"), rcpt("zz")])  # before its submit was recorded
    assert await redis.zcard(keys.early_receipts) == 2
    await submitted(redis, keys, "m4", ["d1"])
    assert await handler.retry_early() == 2
    assert await redis.hget(keys.status("m4"), "state") == "delivered"
    assert [e["id"] for e in await finals(redis, keys)] == ["m4"]
    assert await redis.zcard(keys.early_receipts) == 1  # "zz": held until early_receipt_hold_s


async def test_a_late_receipt_republishes_only_an_unpublished_final(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m5", ["e1"])
    # Final recorded, but the daemon died before publishing: still in `awaiting`.
    await redis.hset(keys.status("m5"), mapping={"state": "delivered", "p0": "delivered"})
    await handler.on_receipts([rcpt("e1")])
    assert [e["id"] for e in await finals(redis, keys)] == ["m5"]
    assert await redis.zscore(keys.awaiting_receipt, "m5") is None
    await handler.on_receipts([rcpt("e1")])  # the SMSC resends it once more
    assert len(await finals(redis, keys)) == 1


async def test_interim_receipts_change_nothing(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m6", ["f1"])
    await handler.on_receipts([Receipt(carrier="cm", smsc_id="f1", stat="ENROUTE", state="")])
    assert await redis.hget(keys.status("m6"), "state") == "submitted"
    assert await redis.zcard(keys.early_receipts) == 0


async def test_single_part_failure_keeps_its_error_code(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    await submitted(redis, keys, "m7", ["g1"])
    await handler.on_receipts([rcpt("g1", "undeliverable", "0x0b")])
    status = await redis.hgetall(keys.status("m7"))
    assert (status["state"], status["err"], status["p0"]) == (
        "undeliverable", "0x0b", "undeliverable")
    assert float(status["done_at"]) == NOW + 5
    [ev] = await finals(redis, keys)
    assert (ev["state"], ev["err"]) == ("undeliverable", "0x0b")


async def test_more_receipts_than_one_script_call_takes(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    n = 600  # > the 256 receipts a script call takes
    for i in range(n):
        await submitted(redis, keys, f"many-{i}", [f"a{i:x}"])
    batch = [rcpt(f"a{i:x}") for i in range(n)] + [rcpt("ffffff")]  # one unknown
    await handler.on_receipts(batch)
    got = await finals(redis, keys)
    assert sorted(f["id"] for f in got) == sorted(f"many-{i}" for i in range(n))
    assert await redis.zcard(keys.awaiting_receipt) == 0
    assert await redis.zcard(keys.early_receipts) == 1  # the unknown one, parked


async def test_the_expiry_sweep_racing_receipts_publishes_each_message_once(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    """At the receipt deadline the sweep ends messages as expired while their receipts
    arrive, either a little ahead of the other: one final event a message, telling the
    state it kept."""
    sweeper = InboundHandler(redis, keys, handler.cfg, lambda: None,
                             clock=lambda: NOW + 3600 + 1)  # past `submitted`'s deadline
    sweeper._receipts = handler._receipts
    races = [(d / 4000, 0.0) for d in range(17)] + [(0.0, d / 4000) for d in range(1, 9)]
    for rnd, (receipt_delay, sweep_delay) in enumerate(races):
        ids = [f"s{rnd}-{i}" for i in range(20)]
        for i, msg_id in enumerate(ids):
            await submitted(redis, keys, msg_id, [f"5{rnd:02x}{i:03x}"])
        batch = [rcpt(f"5{rnd:02x}{i:03x}") for i in range(20)]

        async def later(delay: float, call: Awaitable[object]) -> None:
            await asyncio.sleep(delay)
            await call

        await asyncio.gather(later(sweep_delay, sweeper.expire_awaiting()),
                             later(receipt_delay, handler.on_receipts(batch)))
        await sweeper.expire_awaiting()  # nothing left behind to publish again
        events = [e for e in await finals(redis, keys) if e["id"] in ids]
        assert sorted(e["id"] for e in events) == sorted(ids), (receipt_delay, sweep_delay)
        for e in events:
            assert await redis.hget(keys.status(e["id"]), "state") == e["state"]
        assert await redis.zcard(keys.awaiting_receipt) == 0


async def test_an_exact_id_is_looked_up_as_it_is(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    """A CMPP report's Msg_Id (exact_id) has one correlation key, not the other bases'
    readings an SMPP receipt's id gets; it still ends its message, on both paths."""
    mid = msgid.pack(msgid.MsgIdFields(12, 7, 12, 0, 1, 0x2A0F1, 7))
    smsc_id = msgid.canonical(mid)
    r = to_receipt("cm", Report(mid, "DELIVRD", "2612071200", "2612071201", "13800138000", 7),
                   NOW, 8.0)
    assert r.exact_id and r.smsc_id == smsc_id
    assert handler.correlation_keys(r) == [keys.correlation("cm", smsc_id)]
    assert len(handler.correlation_keys(rcpt(smsc_id))) == 3  # decimal, hex, read as hex
    await submitted(redis, keys, "m9", [smsc_id])
    await handler.on_receipts([r])
    assert await redis.hget(keys.status("m9"), "state") == "delivered"
    assert [ev["id"] for ev in await finals(redis, keys)] == ["m9"]


async def test_a_sweeper_killed_after_its_claim_is_replaced_after_the_lease(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    """The expiry sweep expires a message and claims its final event (lua/receipt.lua),
    then publishes in a later round trip, on both paths. One killed between the two
    leaves the message due in `awaiting`: another daemon's sweep leaves it while the
    claim is live (Redis's clock) and publishes it once when the claim is stale."""
    lease = 1.0
    await submitted(redis, keys, "s1", ["z1"])
    await redis.zadd(keys.awaiting_receipt, {"s1": NOW})  # its receipt deadline passed
    # The dying sweeper's two steps, then nothing (killed before its event write).
    assert await handler._expire(keys=[keys.status("s1")], args=[NOW + 5, "receipt_timeout"])
    res = await handler._receipt(keys=[keys.status("s1")],
                                 args=["-", "expired", NOW + 5, "", lease])
    assert res[0] == "late" and res[-1] == 1
    survivor = InboundHandler(redis, keys, handler.cfg, lambda: None, clock=lambda: NOW + 6)
    survivor._receipts = handler._receipts  # the same path
    survivor.claim_lease_s = lease
    assert await survivor.expire_awaiting() == 1
    assert await finals(redis, keys) == []  # the claim is live: left to its holder
    assert await redis.zscore(keys.awaiting_receipt, "s1") is not None
    await asyncio.sleep(lease + 0.05)
    await survivor.expire_awaiting()
    [ev] = await finals(redis, keys)
    assert ev["id"] == "s1" and ev["state"] == "expired"
    assert await redis.zscore(keys.awaiting_receipt, "s1") is None
    await survivor.expire_awaiting()
    await survivor.on_receipts([rcpt("z1")])  # a receipt after all: nothing more
    assert len(await finals(redis, keys)) == 1


async def test_a_receipt_failing_half_way_leaves_no_published_final_awaiting(
    redis: aioredis.Redis, keys: Keys, handler: InboundHandler
) -> None:
    """receipts.lua removes a call's published finals from `awaiting` in one ZREM at
    the end: a later receipt of the same call that fails (a status key of the wrong
    type) must not keep the earlier ones there, or the sweep would publish them again."""
    if handler._receipts is None:
        pytest.skip("the cluster path publishes after its steps, not in one script")
    await submitted(redis, keys, "w1", ["f1"])
    await submitted(redis, keys, "w3", ["f3"])
    await redis.set(keys.correlation("cm", "f2"), "w2 0")
    await redis.set(keys.status("w2"), "not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await handler.on_receipts([rcpt("f1"), rcpt("f2"), rcpt("f3")])
    assert await redis.hget(keys.status("w1"), "state") == "delivered"
    assert [e["id"] for e in await finals(redis, keys)] == ["w1"]
    assert await redis.zscore(keys.awaiting_receipt, "w1") is None
    assert await redis.zscore(keys.awaiting_receipt, "w3") is not None  # never reached
    sweeper = InboundHandler(redis, keys, handler.cfg, lambda: None,
                             clock=lambda: NOW + 3600 + 1)
    sweeper._receipts = handler._receipts
    await sweeper.expire_awaiting()
    events = await finals(redis, keys)
    assert sorted((e["id"], e["state"]) for e in events) == [("w1", "delivered"),
                                                               ("w3", "expired")]
