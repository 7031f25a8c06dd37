"""Client.send_many and the one-call enqueue (lua/enqueue_many.lua), issue 17 item 3.

The script path must leave Redis exactly as the pipelined path does (status record,
idempotency key, sealed entry, queued event), with the same per-message outcomes, in one
round trip a chunk (counted in INFO commandstats).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.config import Config, QueueConfig
from gatewayd.errors import MessageError
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.intake import parse_message
from gatewayd.pipeline.queue import DUPLICATE, ID_TAKEN, QUEUED, QueueStore
from gatewayd.store.connection import script_source
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]


def _msg(i: int, **kw: Any) -> OutboundMessage:
    raw = {"to": f"+86138{i:08d}", "text": f"code {i} 验证码", "category": CLASSES[i % 3],
           "ref": f"r-{i}", "tenant": "shop", **kw}
    return parse_message(raw, classes=CLASSES, max_segments=10, now=1000.0)


async def _calls(redis: aioredis.Redis, cmd: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0))


async def _script_calls(redis: aioredis.Redis) -> int:
    """Script calls, lua/enqueue_many.lua loaded first (it goes by EVALSHA: a NOSCRIPT
    and its resend would count twice)."""
    await redis.script_load(script_source("enqueue_many"))
    return await _calls(redis, "eval") + await _calls(redis, "evalsha")


async def _state(redis: aioredis.Redis, keys: Keys, q: QueueStore) -> dict[str, Any]:
    """Everything an enqueue wrote, with ids and stream ids left out (they differ)."""
    records = {}
    for key in await redis.keys(keys.status("*")):
        rec = await redis.hgetall(key)
        records[rec["ref"]] = rec
    entries = {}
    for k in CLASSES:
        for _sid, f in await redis.xrange(keys.queue(k)):
            entries[f["ref"]] = {n: v for n, v in f.items() if n not in ("id", "_gw")}
    events = [{n: v for n, v in f.items() if n != "id"}
              for _sid, f in await redis.xrange(keys.events)]
    idem = {k: await redis.get(k) for k in await redis.keys(keys.idempotency("*", "*"))}
    ttls = {await redis.ttl(k) > 0 for k in [*await redis.keys(keys.status("*")), *idem]}
    return {"records": records, "entries": entries, "events": events,
            "idem": sorted(idem), "ttls": ttls}


async def test_script_path_writes_what_the_pipelined_path_writes(
    redis: aioredis.Redis, keys: Keys
) -> None:
    q = QueueStore(redis, keys, Config(queue=QueueConfig()), "c1")
    await q.ensure_groups()
    seal = await q.sealer()

    def batch() -> list[OutboundMessage]:
        ms = [_msg(i, id=f"m-{i}") for i in range(9)]
        ms += [_msg(20, id="k-1", idempotency_key="key-a", category="otp"),
               _msg(21, id="k-2", idempotency_key="key-a", category="otp"),  # repeat
               _msg(22, id="m-0")]  # an id taken within the batch
        return ms

    piped = await q._enqueue_pipelined(batch(), seal, "t", 1000.0, None, 0)
    want = await _state(redis, keys, q)
    await redis.flushdb()
    await q.ensure_groups()
    before = await _script_calls(redis)
    scripted = await q.enqueue_each(batch(), source="t", now=1000.0)
    assert await _script_calls(redis) - before == 1  # one call for the whole batch
    assert scripted == piped
    assert [o for _, o in scripted] == [QUEUED] * 10 + [DUPLICATE, ID_TAKEN]
    assert scripted[10] == ("k-1", DUPLICATE)
    got = await _state(redis, keys, q)
    assert got == want
    assert len(got["entries"]) == 10 and got["ttls"] == {True}
    # The entries read back sealed: internal fields (enqueued_at) intact.
    read = [e for k in CLASSES for e in await q.read_class(k, 100, 1)]
    assert len(read) == 10 and all(e.fields and "_gw" in e.fields for e in read)
    m = parse_message(read[0].fields, classes=CLASSES, max_segments=10, seal=seal)
    assert m.enqueued_at == 1000.0


async def test_send_many_chunks_keyed_repeats_and_taken_ids(
    redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    items = [{"to": f"+86139{i:08d}", "text": f"hello {i}", "category": CLASSES[i % 3],
              "ref": f"r-{i}"} for i in range(230)]
    async with Client(redis_url) as c:
        before = await _script_calls(redis)
        out = await c.send_many(items, chunk=50)  # 5 chunks, two in flight at a time
        assert await _script_calls(redis) - before == 5
        assert len(out) == 230 and len({i for i, _ in out}) == 230
        assert not any(dup for _, dup in out)
        for (mid, _), item in zip(out, items, strict=True):
            rec = await redis.hgetall(keys.status(mid))
            assert rec["state"] == "queued" and rec["ref"] == item["ref"]
        assert sum([await redis.xlen(keys.queue(k)) for k in CLASSES]) == 230
        assert await redis.xlen(keys.events) == 230

        # A key repeated across chunks: the first copy is queued, the others name it.
        keyed = [{"to": "+8613800000001", "text": f"t{i}", "idempotency_key": f"k{i % 3}"}
                 for i in range(9)]
        out2 = await c.send_many(keyed, chunk=2)
        firsts = [out2[i][0] for i in range(3)]
        assert [d for _, d in out2] == [False] * 3 + [True] * 6
        assert [i for i, _ in out2] == firsts * 3
        # ... and again in a later call: duplicates of the same first ids
        assert await c.send_many(keyed[:3]) == [(f, True) for f in firsts]

        # An id already another message's: the others are queued, the error names it.
        depth = await redis.xlen(keys.queue("transactional"))
        with pytest.raises(MessageError) as e:
            await c.send_many([{"to": "+8613800000002", "text": "x", "id": out[1][0]},
                               {"to": "+8613800000002", "text": "y", "id": "fresh-1"}])
        assert e.value.code == "duplicate_id" and out[1][0] in e.value.reason
        assert await redis.hget(keys.status("fresh-1"), "state") == "queued"
        assert await redis.hget(keys.status(out[1][0]), "ref") == "r-1"  # untouched
        assert await redis.xlen(keys.queue("transactional")) == depth + 1

        # An invalid item: nothing of the call is queued.
        depth = await redis.xlen(keys.queue("transactional"))
        with pytest.raises(MessageError) as e:
            await c.send_many([{"to": "+8613800000003", "text": "ok"},
                               {"to": "not a number", "text": "bad"}])
        assert e.value.field == "to"
        assert await redis.xlen(keys.queue("transactional")) == depth
