"""pipeline.events.Book: the one-script batch write leaves Redis as the command path does."""

from __future__ import annotations

import redis.asyncio as aioredis

from gatewayd.config import Config, QueueConfig
from gatewayd.pipeline.events import Book, Ledger
from gatewayd.pipeline.intake import parse_message
from gatewayd.store import fastpipe
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]


def _batch(ledger: Ledger, book: Book, prefix: str) -> None:
    a = parse_message({"id": f"{prefix}-a", "to": "+8613800138000", "text": "code 1",
                       "category": "otp", "ref": "order-7"}, classes=CLASSES,
                      max_segments=10, now=1000.0)
    b = parse_message({"id": f"{prefix}-b", "to": "+8613900139000", "text": "sale",
                       "category": "marketing", "tenant": "shop"}, classes=CLASSES,
                      max_segments=10, now=1000.0)
    ledger.record(book, a, "submitted", 1001.5, carrier="cmcc",
                  carrier_id="0a1b", segments=2)
    ledger.record(book, b, "deferred", 1001.25, reason="quiet_hours",
                  until=2000.0)
    ledger.record(book, b, "rejected", 1002.0,
                  reason="keyword:block:x")


async def _written(redis: aioredis.Redis, keys: Keys, prefix: str) -> tuple[object, ...]:
    statuses = [await redis.hgetall(keys.status(f"{prefix}-{x}")) for x in "ab"]
    ttls = [await redis.ttl(keys.status(f"{prefix}-{x}")) for x in "ab"]
    events = [{k: v for k, v in f.items() if k != "id"} | {"id": f["id"][len(prefix):]}
              for _, f in await redis.xrange(keys.events)
              if f["id"].startswith(prefix)]
    corr = [(await redis.get(keys.correlation("cmcc", f"{prefix}{i}")),
             await redis.ttl(keys.correlation("cmcc", f"{prefix}{i}"))) for i in range(2)]
    return statuses, ttls, events, [(v and v[len(prefix):], t) for v, t in corr]


async def test_book_script_writes_what_the_command_path_writes(
    redis: aioredis.Redis, keys: Keys
) -> None:
    cfg = Config(queue=QueueConfig(status_ttl_s=3600, receipt_timeout_s=600))
    scripted = Ledger(keys, cfg, redis)
    plain = Ledger(keys, cfg)  # no client: the per-command path
    assert scripted.script is not None and plain.script is None
    for ledger, prefix in ((scripted, "s"), (plain, "p")):
        book = ledger.book()
        _batch(ledger, book, prefix)
        for i in range(2):
            book.correlate(keys.correlation("cmcc", f"{prefix}{i}"), f"{prefix}-a {i}")
        pipe = redis.pipeline(transaction=False)
        book.flush(pipe)
        await fastpipe.execute(pipe)
        assert not book.records and not book.correlations
    s, p = await _written(redis, keys, "s"), await _written(redis, keys, "p")
    statuses, ttls, events, corr = s
    assert statuses[0]["state"] == "submitted" and statuses[0]["segments"] == "2"
    assert statuses[1]["state"] == "rejected" and statuses[1]["until"] == "2000.0"
    assert all(3590 < t <= 3600 for t in ttls)
    assert [e["state"] for e in events] == ["submitted", "deferred", "rejected"]
    assert all(v == f"-a {i}" and 590 < t <= 600 for i, (v, t) in enumerate(corr))
    # Same fields, values and TTLs whichever path wrote them (ids differ by prefix).
    assert statuses == p[0] and events == p[2] and corr == p[3]
    assert all(abs(x - y) <= 1 for x, y in zip(p[1], ttls, strict=True))


async def test_an_empty_book_writes_nothing(redis: aioredis.Redis, keys: Keys) -> None:
    ledger = Ledger(keys, Config(), redis)
    pipe = redis.pipeline(transaction=False)
    ledger.book().flush(pipe)
    assert await fastpipe.execute(pipe) == []


async def test_a_big_book_is_one_script_call_and_writes_everything(
    redis: aioredis.Redis, keys: Keys
) -> None:
    ledger = Ledger(keys, Config(), redis)
    n = 300  # more than read_batch is ever set to in the benches
    book = ledger.book()
    for i in range(n):
        m = parse_message({"id": f"big-{i}", "to": "+8613800138000", "text": "t"},
                          classes=CLASSES, max_segments=10, now=1000.0)
        ledger.record(book, m, "submitted", 1001.0 + i, carrier="cmcc", carrier_id=f"{i:x}")
    for i in range(n + 5):  # more correlation keys than records (multipart messages)
        book.correlate(keys.correlation("cmcc", f"c{i}"), f"big-{i % n} {i // n}")
    pipe = redis.pipeline(transaction=False)
    book.flush(pipe)
    assert len(pipe.command_stack) == 1
    await fastpipe.execute(pipe)
    events = [f for _, f in await redis.xrange(keys.events)]
    assert [e["id"] for e in events] == [f"big-{i}" for i in range(n)]  # batch order kept
    for i in (0, 63, 64, n - 1):
        st = await redis.hgetall(keys.status(f"big-{i}"))
        assert st["state"] == "submitted" and st["carrier_id"] == f"{i:x}"
    assert [await redis.get(keys.correlation("cmcc", f"c{i}")) for i in (0, n, n + 4)] == [
        "big-0 0", "big-0 1", "big-4 1"]
