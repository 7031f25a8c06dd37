"""A status record is kept at least queue.status_ttl_s after each transition, with one
EXPIRE fewer a message (lua/queued_ttl_lib.lua).

Every "queued" writer gives the record status_ttl_s + QUEUED_SLACK_S; the transition
that follows within QUEUED_RECENT_S of it (updated_at) keeps that TTL instead of an
EXPIRE of its own; any other transition refreshes the TTL as before. Both record
paths: the batch script (lua/record.lua, single Redis) and the per-command one
(lua/status.lua, the cluster's), and the queued writers (queued.lua through
QueueStore.enqueue, enqueue_many.lua, claim.lua). Last, the accounts' usage keys, which
receipts.lua now expires only when a field it counts is new.
"""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gatewayd.config import Config, QueueConfig
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.intake import parse_message
from gatewayd.pipeline.queue import QueueStore
from gatewayd.store import fastpipe
from gatewayd.store.connection import load_script, pipe_script
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
TTL = 3600
SLACK = 3600  # queued_ttl_lib's QUEUED_SLACK_S
RECENT = 1800  # queued_ttl_lib's QUEUED_RECENT_S


def cfg() -> Config:
    return Config(queue=QueueConfig(status_ttl_s=TTL, receipt_timeout_s=600))


def msg(msg_id: str, now: float) -> OutboundMessage:
    return parse_message({"id": msg_id, "to": "+8613800138000", "text": "x",
                          "category": "otp"}, classes=CLASSES, max_segments=10, now=now)


async def expires(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_expire", {}).get("calls", 0))


async def write(redis: aioredis.Redis, led: Ledger, m: OutboundMessage, state: str,
                now: float) -> None:
    book = led.book()
    led.record(book, m, state, now, carrier="cm", carrier_id="x1", segments=1)
    pipe = redis.pipeline(transaction=False)
    book.flush(pipe)
    await fastpipe.execute(pipe)


@pytest.mark.parametrize("scripted", [True, False], ids=["record.lua", "status.lua"])
async def test_a_transition_after_a_fresh_queued_record_keeps_its_ttl(
    redis: aioredis.Redis, keys: Keys, scripted: bool
) -> None:
    led = Ledger(keys, cfg(), redis if scripted else None)
    assert (led.script is not None) is scripted
    t0 = 1_800_000_000.0
    fresh, late, back, deferred = (msg(x, t0) for x in ("fresh", "late", "back", "def"))
    for m in (fresh, late, back, deferred):
        await write(redis, led, m, "queued", t0)
        # Every "queued" record holds the slack.
        assert TTL + SLACK - 10 < await redis.ttl(keys.status(m.id)) <= TTL + SLACK

    before = await expires(redis)
    await write(redis, led, fresh, "submitted", t0 + RECENT - 1)  # within: no EXPIRE
    await write(redis, led, back, "submitted", t0 - RECENT + 1)  # a clock behind: within
    assert await expires(redis) == before
    for m in (fresh, back):
        assert (await redis.hget(keys.status(m.id), "state")) == "submitted"
        # Still at least status_ttl_s after the transition (Redis's clock: now).
        assert TTL + SLACK - 10 < await redis.ttl(keys.status(m.id)) <= TTL + SLACK

    await write(redis, led, late, "submitted", t0 + RECENT)  # not within: refreshed
    assert await expires(redis) == before + 1
    assert TTL - 10 < await redis.ttl(keys.status(late.id)) <= TTL

    # Only the transition from "queued" keeps the TTL: the next one refreshes it.
    await write(redis, led, deferred, "deferred", t0 + 1)
    assert await expires(redis) == before + 1
    await write(redis, led, deferred, "submitted", t0 + 2)
    assert await expires(redis) == before + 2
    assert TTL - 10 < await redis.ttl(keys.status(deferred.id)) <= TTL
    await write(redis, led, fresh, "submitted", t0 + 3)  # a resubmission: refreshed
    assert TTL - 10 < await redis.ttl(keys.status(fresh.id)) <= TTL

    # Never backwards, as before: a late "queued" over "submitted" writes nothing.
    await write(redis, led, late, "queued", t0 + 4)
    assert (await redis.hget(keys.status(late.id), "state")) == "submitted"


async def test_a_record_without_updated_at_or_state_gets_its_expire(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """A record some other writer left without updated_at, and a message with no record
    (pushed with a raw XADD and never claimed): the EXPIRE as before."""
    led = Ledger(keys, cfg(), redis)
    t0 = time.time()
    await redis.hset(keys.status("bare"), mapping={"state": "queued"})
    before = await expires(redis)
    await write(redis, led, msg("bare", t0), "submitted", t0)
    await write(redis, led, msg("none", t0), "submitted", t0)
    assert await expires(redis) == before + 2
    for k in ("bare", "none"):
        assert TTL - 10 < await redis.ttl(keys.status(k)) <= TTL


async def test_every_queued_writer_gives_the_slack(redis: aioredis.Redis, keys: Keys) -> None:
    t0 = time.time()
    c = cfg()
    store = QueueStore(redis, keys, c, "t")
    # enqueue_many.lua (the client's and HTTP's path) and queued.lua (one at a time).
    await store.enqueue([msg("many-1", t0), msg("many-2", t0)], source="client", now=t0)
    await store.enqueue([msg("one", t0)], source="client", now=t0)
    # claim.lua: a raw entry's record, made by the dispatcher.
    pipe = redis.pipeline(transaction=False)
    pipe_script(pipe, load_script(redis, "claim"), [keys.status("raw")],
                ["otp 1-0", TTL, repr(t0)])
    # queued.lua (links, campaigns and templates; the cluster's staging).
    pipe_script(pipe, load_script(redis, "queued"), [keys.status("q1")],
                [TTL, "state", "queued", "updated_at", repr(t0)])
    await fastpipe.execute(pipe)
    for k in ("many-1", "many-2", "one", "raw", "q1"):
        assert (await redis.hget(keys.status(k), "state")) == "queued"
        assert TTL + SLACK - 10 < await redis.ttl(keys.status(k)) <= TTL + SLACK
    # The submit that follows keeps it: no EXPIRE, at least status_ttl_s left.
    led = Ledger(keys, c, redis)
    before = await expires(redis)
    for k in ("many-1", "one", "raw", "q1"):
        await write(redis, led, msg(k, t0), "submitted", t0 + 5)
    assert await expires(redis) == before
    for k in ("many-1", "one", "raw", "q1"):
        assert await redis.ttl(keys.status(k)) > TTL


async def test_usage_keys_expire_when_a_field_is_new(redis: aioredis.Redis,
                                                     keys: Keys) -> None:
    """receipts.lua counts each published final in the tenant's usage key of the day
    and sets its TTL only when one of the fields it counts was new: a key is never
    left without a TTL, and a call that only adds to existing fields runs no EXPIRE."""
    led = Ledger(keys, cfg(), redis)
    script = load_script(redis, "receipts")
    day_ttl = 40 * 86400
    usage = keys.account_day("acme", "20261207")
    n = 0

    async def receipts(states: list[str]) -> int:
        """The EXPIREs the receipts' call ran."""
        nonlocal n
        book = led.book()
        names = []
        for _ in states:
            n += 1
            m = parse_message({"id": f"u{n}", "to": "+8613800138000", "text": "x",
                               "category": "otp", "tenant": "acme"}, classes=CLASSES,
                              max_segments=10, now=1000.0)
            led.record(book, m, "submitted", 1000.0, carrier="cm", carrier_id=f"c{n}",
                       segments=1)
            book.correlate(keys.correlation("cm", f"c{n}"), f"u{n} 0")
            names.append(f"c{n}")
        pipe = redis.pipeline(transaction=False)
        book.flush(pipe)
        await fastpipe.execute(pipe)
        ks = [keys.events, keys.awaiting_receipt,
              *(keys.correlation("cm", c) for c in names)]
        args: list[object] = ["1800000005.5", "1000", *keys.status("\x00").split("\x00"),
                              len(states)]
        for state in states:
            args += [state, "", 1]
        args += [*usage.replace("acme", "\x00").split("\x00"), day_ttl]
        before = await expires(redis)
        reply = await script(keys=ks, args=args)
        assert [reply[i] for i in range(0, len(reply), 6)] == ["final"] * len(states)
        return await expires(redis) - before

    assert await receipts(["delivered", "delivered"]) == 1  # the key made: its TTL set
    assert day_ttl - 10 < await redis.ttl(usage) <= day_ttl
    assert await receipts(["delivered"]) == 0  # only an existing field: no EXPIRE
    assert await redis.hgetall(usage) == {"delivered:otp": "3"}
    assert await receipts(["expired", "delivered"]) == 1  # a new field: the TTL again
    assert await redis.hgetall(usage) == {"delivered:otp": "4", "expired:otp": "1"}
    # A key made by another writer without a TTL (a refund's bare HINCRBY of "sent:"):
    # the receipts' first field in it is new, so it gets one.
    await redis.delete(usage)
    await redis.hincrby(usage, "sent:otp", -1)
    assert await redis.ttl(usage) == -1
    assert await receipts(["delivered"]) == 1
    assert day_ttl - 10 < await redis.ttl(usage) <= day_ttl
