"""record.lua, receipts.lua and receipt.lua after their Redis-CPU trims (bench/record_script.py).

The scripts reuse one event table for a whole call, fill their reply in place, convert
each count text once and take apply_receipt's results as values instead of a table:
these pin what that must not change: every stored field, in order, the TTLs, the
events' fields in order and the replies. A short record or event right after a long
one checks that nothing of the longer leaks into it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gatewayd.config import Config, QueueConfig
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.intake import parse_message
from gatewayd.store import fastpipe
from gatewayd.store.connection import load_script
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
TO = "+86138****8000"


def msg(msg_id: str, category: str, **extra: str) -> OutboundMessage:
    return parse_message({"id": msg_id, "to": "+8613800138000", "text": "x",
                          "category": category, **extra}, classes=CLASSES, max_segments=10,
                         now=1000.0)


async def flush(redis: aioredis.Redis, led: Ledger, fill: Any) -> None:
    book = led.book()
    fill(book)
    pipe = redis.pipeline(transaction=False)
    book.flush(pipe)
    await fastpipe.execute(pipe)


async def hash_of(redis: aioredis.Redis, key: str) -> list[tuple[str, str]]:
    return list((await redis.hgetall(key)).items())  # Redis's field order


async def events(redis: aioredis.Redis, keys: Keys) -> list[list[tuple[str, str]]]:
    return [list(f.items()) for _, f in await redis.xrange(keys.events)]


async def test_record_writes_exactly_these_fields(redis: aioredis.Redis, keys: Keys) -> None:
    led = Ledger(keys, Config(queue=QueueConfig(status_ttl_s=3600, receipt_timeout_s=600)),
                 redis)
    a = msg("m-a", "otp", ref="r-7", tenant="acme")
    b = msg("m-b", "marketing")

    def fill(book: Any) -> None:
        led.record(book, a, "submitted", 1001.5, carrier="cmcc", carrier_id="a1b", segments=2)
        led.record(book, b, "deferred", 1001.5, reason="quiet_hours", until=2000.0)  # shorter
        led.record(book, b, "rejected", 1002.0, reason="keyword:block:x")  # same hash again
        book.correlate(keys.correlation("cmcc", "a1b"), "m-a 0")
        book.correlate(keys.correlation("cmcc", "a1c"), "m-a 1")

    await flush(redis, led, fill)
    assert await hash_of(redis, keys.status("m-a")) == [
        ("state", "submitted"), ("updated_at", "1001.5"), ("category", "otp"), ("to", TO),
        ("carrier", "cmcc"), ("carrier_id", "a1b"), ("segments", "2"),
        ("ref", "r-7"), ("tenant", "acme"), ("attempts", "0"), ("submitted_at", "1001.5")]
    assert await hash_of(redis, keys.status("m-b")) == [
        ("state", "rejected"), ("updated_at", "1002.0"), ("category", "marketing"),
        ("to", TO), ("reason", "keyword:block:x"), ("until", "2000.0"), ("attempts", "0"),
        ("done_at", "1002.0")]
    assert await events(redis, keys) == [
        [("id", "m-a"), ("state", "submitted"), ("at", "1001.5"), ("category", "otp"),
         ("to", TO), ("carrier", "cmcc"), ("carrier_id", "a1b"), ("segments", "2"),
         ("ref", "r-7"), ("tenant", "acme")],
        [("id", "m-b"), ("state", "deferred"), ("at", "1001.5"), ("category", "marketing"),
         ("to", TO), ("reason", "quiet_hours"), ("until", "2000.0")],
        [("id", "m-b"), ("state", "rejected"), ("at", "1002.0"), ("category", "marketing"),
         ("to", TO), ("reason", "keyword:block:x")]]
    for k in (keys.status("m-a"), keys.status("m-b")):
        assert 3590 < await redis.ttl(k) <= 3600
    for i, sid in enumerate(("a1b", "a1c")):
        assert await redis.get(keys.correlation("cmcc", sid)) == f"m-a {i}"
        assert 590 < await redis.ttl(keys.correlation("cmcc", sid)) <= 600


async def test_receipts_replies_and_final_events(redis: aioredis.Redis, keys: Keys) -> None:
    led = Ledger(keys, Config(), redis)
    msgs = {"a": msg("a", "otp", ref="r-1", tenant="acme"), "b": msg("b", "marketing"),
            "c": msg("c", "otp"), "d": msg("d", "otp"), "e": msg("e", "otp"),
            "f": msg("f", "otp")}

    def fill(book: Any) -> None:
        for name in "abde":
            led.record(book, msgs[name], "submitted", 1001.5, carrier="cm",
                       carrier_id=f"{name}0", segments=1)
            book.correlate(keys.correlation("cm", f"{name}0"), f"{name} 0")
        led.record(book, msgs["c"], "submitted", 1001.5, carrier="cm", carrier_id="c0",
                   segments=2)
        for part in range(2):
            book.correlate(keys.correlation("cm", f"c{part}"), f"c {part}")
        led.record(book, msgs["f"], "queued", 1001.5)
        book.correlate(keys.correlation("cm", "f0"), "f")  # no part: part 0
        book.correlate(keys.correlation("cm", "g0"), "g 0")  # no status record

    await flush(redis, led, fill)
    await redis.xtrim(keys.events, maxlen=0)
    await redis.zadd(keys.awaiting_receipt, {"a": 1, "b": 1, "c": 1, "d": 1})
    # d and e final already (their final event published for e only: not awaiting).
    for name in "de":
        await redis.hset(keys.status(name), mapping={"state": "delivered", "err": "001"})
    now = "1800000005.5"
    receipts = [  # (candidate correlation ids, state, err)
        (["a0"], "delivered", "000"), (["zz", "b0"], "undeliverable", "034"),
        (["c0"], "delivered", "000"), (["c1"], "expired", ""), (["d0"], "delivered", "000"),
        (["e0"], "delivered", "000"), (["f0"], "delivered", "000"), (["zz", "yy"], "expired", ""),
        ([], "expired", ""), (["g0"], "delivered", "")]
    ks = [keys.events, keys.awaiting_receipt]
    args: list[Any] = [now, "1000", *keys.status("\x00").split("\x00"), len(receipts)]
    for cands, state, err in receipts:
        ks += [keys.correlation("cm", c) for c in cands]
        args += [state, err, len(cands)]
    reply = await load_script(redis, "receipts")(keys=ks, args=args)
    assert [reply[i:i + 6] for i in range(0, len(reply), 6)] == [
        ["final", "a", "delivered", "cm", "1001.5", 1],
        ["final", "b", "undeliverable", "cm", "1001.5", 1],
        ["partial", "c", "", "", "", 0],
        ["final", "c", "expired", "cm", "1001.5", 1],
        ["late", "d", "delivered", "cm", "1001.5", 1],
        ["late", "e", "delivered", "cm", "1001.5", 0],
        ["early", "f", "queued", "", "", 0],
        ["unmatched", "", "", "", "", 0],
        ["unmatched", "", "", "", "", 0],
        ["missing", "g", "", "", "", 0]]
    at = ("at", now)
    assert await events(redis, keys) == [
        [("id", "a"), ("state", "delivered"), at, ("category", "otp"), ("carrier", "cm"),
         ("carrier_id", "a0"), ("segments", "1"), ("ref", "r-1"), ("tenant", "acme"),
         ("to", TO)],
        [("id", "b"), ("state", "undeliverable"), at, ("category", "marketing"),
         ("carrier", "cm"), ("carrier_id", "b0"), ("segments", "1"), ("to", TO),
         ("err", "034")],
        [("id", "c"), ("state", "expired"), at, ("category", "otp"), ("carrier", "cm"),
         ("carrier_id", "c0"), ("segments", "2"), ("to", TO)],
        [("id", "d"), ("state", "delivered"), at, ("category", "otp"), ("carrier", "cm"),
         ("carrier_id", "d0"), ("segments", "1"), ("to", TO), ("err", "001")]]
    assert await redis.zrange(keys.awaiting_receipt, 0, -1) == []
    common = [("category", "otp"), ("to", TO), ("carrier", "cm")]
    att = ("attempts", "0")  # after the event's fields (Ledger.build)
    assert await hash_of(redis, keys.status("a")) == [
        ("state", "delivered"), ("updated_at", now), *common, ("carrier_id", "a0"),
        ("segments", "1"), ("ref", "r-1"), ("tenant", "acme"), att,
        ("submitted_at", "1001.5"), ("p0", "delivered"), ("done_at", now)]
    assert await hash_of(redis, keys.status("b")) == [
        ("state", "undeliverable"), ("updated_at", now), ("category", "marketing"),
        common[1], common[2], ("carrier_id", "b0"), ("segments", "1"), att,
        ("submitted_at", "1001.5"), ("p0", "undeliverable"), ("e0", "034"), ("err", "034"),
        ("done_at", now)]
    assert await hash_of(redis, keys.status("c")) == [
        ("state", "expired"), ("updated_at", now), *common, ("carrier_id", "c0"),
        ("segments", "2"), att, ("submitted_at", "1001.5"), ("p0", "delivered"),
        ("p1", "expired"), ("done_at", now)]


async def test_receipt_script_replies(redis: aioredis.Redis, keys: Keys) -> None:
    """receipt.lua (the cluster path) returns apply_receipt's values as one table."""
    one = load_script(redis, "receipt")
    key = keys.status("m")
    assert await one(keys=[key], args=["0", "delivered", "5.0", ""]) == ["missing"]
    await redis.hset(key, mapping={"state": "queued"})
    assert await one(keys=[key], args=["0", "delivered", "5.0", ""]) == ["early", "queued"]
    await redis.hset(key, mapping={"state": "submitted", "segments": "2", "carrier": "cm",
                                   "submitted_at": "1.5"})
    assert await one(keys=[key], args=["1", "undeliverable", "5.0", "011"]) == ["partial"]
    assert await one(keys=[key], args=["0", "delivered", "6.0", "000"]) == [
        "final", "undeliverable", "", "cm", "", "2", "", "", "", "1.5", "011"]
    assert await one(keys=[key], args=["0", "delivered", "7.0", "000"]) == [
        "late", "undeliverable", "", "cm", "", "2", "", "", "", "1.5", "011"]
    assert await hash_of(redis, key) == [
        ("state", "undeliverable"), ("segments", "2"), ("carrier", "cm"),
        ("submitted_at", "1.5"), ("p1", "undeliverable"), ("e1", "011"), ("p0", "delivered"),
        ("err", "011"), ("done_at", "6.0"), ("updated_at", "6.0")]
