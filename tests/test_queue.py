"""Queue layer against a real Redis: priority, claim/ack, reclaim, delayed set, idempotency."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from gatewayd.config import Config, QueueConfig
from gatewayd.errors import MessageError
from gatewayd.pipeline.intake import parse_message, to_fields
from gatewayd.pipeline.queue import ID_TAKEN, QueueStore
from gatewayd.store.keys import GROUP, Keys
from gatewayd.store.seal import Seal

CLASSES = ["otp", "transactional", "marketing"]


def make_queue(redis: aioredis.Redis, keys: Keys, consumer: str = "c1", **q: object) -> QueueStore:
    return QueueStore(redis, keys, Config(queue=QueueConfig(**q)), consumer)  # type: ignore[arg-type]


def msg(to: str = "+8613800138000", text: str = "hello", category: str = "otp", **kw: object):  # type: ignore[no-untyped-def]
    return parse_message({"to": to, "text": text, "category": category, **kw},
                         classes=CLASSES, max_segments=10, now=1000.0)


async def test_strict_priority_reads_higher_class_first(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys)
    await q.ensure_groups()
    await q.enqueue([msg(category="marketing", text=f"m{i}") for i in range(50)], source="t")
    await q.enqueue([msg(category="otp", text="code 1234")], source="t")
    batch = await q.read(10)
    # The code alone: a batch holds one class, so it never waits for nine campaign
    # messages' checks and submits.
    assert [e.klass for e in batch] == ["otp"]
    assert [e.klass for e in await q.read(10)] == ["marketing"] * 10


async def test_weights_give_lower_class_a_share(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys, weights={"otp": 9, "marketing": 1})
    await q.ensure_groups()
    await q.enqueue([msg(category="otp", text=f"o{i}") for i in range(100)], source="t")
    await q.enqueue([msg(category="marketing", text=f"m{i}") for i in range(100)], source="t")
    batch = await q.read(100)
    kinds = [e.klass for e in batch]
    assert kinds.count("marketing") == 10 and kinds.count("otp") == 90


async def test_unacked_entries_are_reclaimed_by_another_consumer(
    redis: aioredis.Redis, keys: Keys
) -> None:
    crashed = make_queue(redis, keys, consumer="dead", reclaim_idle_s=0.001)
    await crashed.ensure_groups()
    await crashed.enqueue([msg(text=f"t{i}") for i in range(5)], source="t")
    taken = await crashed.read(5)
    assert len(taken) == 5
    survivor = make_queue(redis, keys, consumer="alive", reclaim_idle_s=0.001)
    await asyncio.sleep(0.01)  # idle for longer than reclaim_idle_s
    again = await survivor.reclaim(100)
    assert sorted(e.entry_id for e in again) == sorted(e.entry_id for e in taken)
    assert all(e.deliveries == 2 for e in again)
    async with redis.pipeline(transaction=False) as pipe:
        for e in again:
            survivor.ack(pipe, e)
        await pipe.execute()
    assert await redis.xlen(keys.queue("otp")) == 0
    assert (await redis.xpending(keys.queue("otp"), GROUP))["pending"] == 0


async def test_delayed_messages_move_back_when_due(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys)
    await q.ensure_groups()
    m = msg(category="marketing", text="later")
    async with redis.pipeline(transaction=False) as pipe:
        q.delay(pipe, m, due=2000.0)
        await pipe.execute()
    assert await q.move_due(1999.0) == 0
    assert await q.move_due(2000.0) == 1
    [entry] = await q.read(10)
    assert entry.fields is not None and entry.fields["id"] == m.id
    assert entry.fields["text"] == "later"


async def test_idempotency_key_queues_one_copy(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys)
    await q.ensure_groups()
    first = await q.enqueue([msg(idempotency_key="order-1")], source="t")
    second = await q.enqueue([msg(idempotency_key="order-1")], source="t")
    assert second == [(first[0][0], True)]
    assert await redis.xlen(keys.queue("otp")) == 1
    # The duplicate left no record of its own id and no "queued" event.
    assert await redis.exists(keys.status(first[0][0])) == 1
    [dup] = await q.enqueue([msg(idempotency_key="order-1", id="dup-1")], source="t")
    assert dup == (first[0][0], True)
    assert await redis.exists(keys.status("dup-1")) == 0
    assert [f["id"] for _, f in await redis.xrange(keys.events)] == [first[0][0]]


async def test_keyed_enqueue_never_overwrites_a_later_state(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """The record is written before the entry becomes readable, and never over an
    existing record of the same id: a daemon's "submitted" (or a delivered first copy)
    is never turned back into "queued" by the enqueue that created the entry."""
    q = make_queue(redis, keys)
    await q.ensure_groups()
    [(mid, _)] = await q.enqueue([msg(idempotency_key="k-2", id="same-1")], source="t")
    assert await redis.hget(keys.status(mid), "state") == "queued"
    await redis.hset(keys.status(mid), "state", "delivered")
    # Same id, same key again (an upstream retry): a duplicate, the record untouched.
    [(again, dup)] = await q.enqueue([msg(idempotency_key="k-2", id="same-1")], source="t")
    assert (again, dup) == (mid, True)
    assert await redis.hget(keys.status(mid), "state") == "delivered"
    # Same id, a new key: another message reusing the id, refused (issue 14); the
    # existing record is not overwritten and nothing more is queued.
    with pytest.raises(MessageError) as e:
        await q.enqueue([msg(idempotency_key="k-3", id="same-1")], source="t")
    assert e.value.code == "duplicate_id"
    assert await redis.hget(keys.status(mid), "state") == "delivered"
    assert await redis.xlen(keys.queue("otp")) == 1
    assert await q.enqueue_each([msg(id="same-1")], source="t") == [("same-1", ID_TAKEN)]


async def test_enqueue_script_survives_a_script_flush(redis: aioredis.Redis, keys: Keys) -> None:
    """enqueue_many.lua goes by EVALSHA: after SCRIPT FLUSH (a Redis restarted) the
    NOSCRIPT call ran nothing, the script is loaded and the batch sent again, each
    message queued exactly once."""
    q = make_queue(redis, keys)
    await q.ensure_groups()
    [(first, outcome)] = await q.enqueue_each([msg(ref="before")], source="t")
    assert outcome == "queued"
    await redis.script_flush()
    got = await q.enqueue_each([msg(ref="after", idempotency_key="k-1"),
                                msg(ref="again", idempotency_key="k-1")], source="t")
    assert [o for _, o in got] == ["queued", "duplicate"]
    assert got[1][0] == got[0][0] != first
    assert await redis.xlen(keys.queue("otp")) == 2
    assert await redis.hget(keys.status(got[0][0]), "state") == "queued"


async def test_enqueue_records_queued_state_and_event(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys)
    await q.ensure_groups()
    [(mid, _)] = await q.enqueue([msg(ref="r-9")], source="t")
    assert await redis.hget(keys.status(mid), "state") == "queued"
    [(_sid, ev)] = await redis.xrange(keys.events)
    assert ev["id"] == mid and ev["state"] == "queued" and ev["ref"] == "r-9"
    assert ev["to"] == "+86138****8000"  # masked


async def test_dead_letter_keeps_raw_payload_and_reason(redis: aioredis.Redis, keys: Keys) -> None:
    q = make_queue(redis, keys)
    await q.ensure_groups()
    await redis.xadd(keys.queue("otp"), {"to": "nope", "text": "x"})
    [entry] = await q.read(10)
    async with redis.pipeline(transaction=False) as pipe:
        q.dead_letter(pipe, entry, "invalid:to: not an E.164 number")
        await pipe.execute()
    [(_sid, dead)] = await redis.xrange(keys.dead)
    assert dead["reason"].startswith("invalid:to")
    assert json.loads(dead["raw"]) == {"to": "nope", "text": "x"}
    assert await redis.xlen(keys.queue("otp")) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"text": "x"}, "to"),
        ({"to": "+86138", "text": "x"}, "to"),
        ({"to": "+8613800138000"}, "text"),
        ({"to": "+8613800138000", "text": ""}, "text"),
        ({"to": "+8613800138000", "text": "x", "category": "bulk"}, "category"),
        ({"to": "+8613800138000", "text": "x", "colour": "red"}, "colour"),
        ({"to": "+8613800138000", "text": "x", "not_before": "tomorrow"}, "not_before"),
        ({"to": "+8613800138000", "text": "x", "not_before": "2026-01-01T00:00:00"}, "not_before"),
        ({"to": "+8613800138000", "text": "x", "attempts": "many"}, "attempts"),
        ({"to": "+8613800138000", "text": "x", "enqueued_at": "NAN"}, "enqueued_at"),
        ({"to": "+8613800138000", "text": "x", "expires_at": "inf"}, "expires_at"),
        ({"json": "{\"to\": \"+8613800138000\", \"text\": \"x\", \"not_before\": 1e999}"},
         "not_before"),
        ({"to": "+8613800138000", "text": "长" * 800}, "text"),
        ({"to": "+8613800138000", "text": "x", "id": "has space"}, "id"),
        ({"json": "{\"to\": \"+8613800138000\", \"text\": "}, "json"),
        ({"json": "[1, 2]"}, "json"),
        ({"json": "{\"to\": \"+8613800138000\"}"}, "text"),
    ],
)
def test_bad_messages_name_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(MessageError) as exc:
        parse_message(fields, classes=CLASSES, max_segments=10)
    assert exc.value.field == field


def test_json_field_wire_form() -> None:
    m = parse_message({"json": '{"to": "+8613800138000", "text": "【京东】验证码 1234", '
                               '"category": "otp", "not_before": 1700000000}'},
                      classes=CLASSES, max_segments=10)
    assert m.to == "+8613800138000" and m.category == "otp" and m.not_before == 1700000000.0


def test_stream_fields_roundtrip() -> None:
    m = msg(text="【京东】您的验证码是 1234", not_before="2026-11-24T10:00:00+08:00",
            **{"from": "10690"})
    seal = Seal("a test secret")  # enqueued_at is internal: it travels sealed
    back = parse_message(to_fields(m, seal), classes=CLASSES, max_segments=10, seal=seal)
    assert back == m
    assert to_fields(m)["from"] == "10690"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_read_parses_either_protocol(redis_url: str, keys: Keys, protocol: int) -> None:
    """The dispatcher reads raw XREADGROUP replies: a map under RESP3, lists under RESP2."""
    client = aioredis.from_url(redis_url, decode_responses=True, protocol=protocol)
    try:
        await client.flushdb()
        q = make_queue(client, keys)
        await q.ensure_groups()
        await q.enqueue([msg(text="a1"), msg(category="marketing", text="m1")], source="t")
        got = await q.read(10) + await q.read(10)
        assert [(e.klass, e.fields and e.fields["text"]) for e in got] == [
            ("otp", "a1"), ("marketing", "m1")]
        assert await q.read(10, block_ms=10) == []
        assert await q.read_class("otp", 10, block_ms=10) == []
    finally:
        await client.aclose()


async def test_read_after_redis_lost_its_groups_recreates_them(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Redis restarted empty (or flushed): the read answers nothing and recreates the
    consumer groups, so the next read sees new work, on both read paths."""
    for weights in ({}, {"otp": 1, "marketing": 1}):
        q = make_queue(redis, keys, weights=weights)
        await q.ensure_groups()
        await redis.flushdb()
        assert await q.read(10) == []
        await q.enqueue([msg(text="after")], source="t")
        [e] = await q.read(10)
        assert e.klass == "otp" and e.fields is not None and e.fields["text"] == "after"
        await redis.flushdb()
