"""Reusing a message id is refused, never overwrites the earlier status (issue 14, item 5).

Intake creates the status record only where none exists (lua/queued.lua): HTTP answers
409 ``duplicate_id``, the client raises. A raw entry claims its id when read
(lua/claim.lua): one whose id is another message's goes to the dead-letter stream as
``duplicate_id``, and the earlier message's record is left as it was. With an
idempotency key a repeat is what it always was: the first id, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.errors import MessageError
from gatewayd.store.connection import load_script
from gatewayd.store.keys import GROUP, Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config

KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_http_and_client_refuse_an_id_in_use(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]'))
    cfg = load(p)
    first = {"id": "order-1", "to": "+8613800138000", "text": "first", "ref": "a"}
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/v1/messages"
        async with http.post(url, json=first, headers=AUTH) as r:
            assert r.status == 202
        before = (await wait_final(redis, keys, ["order-1"], 30))["order-1"]
        again = {**first, "to": "+8613900000000", "text": "second", "ref": "b"}
        async with http.post(url, json=again, headers=AUTH) as r:
            assert r.status == 409
            body = await r.json()
        assert body["error"]["code"] == "duplicate_id"
        [err] = body["results"][0]["errors"]
        assert err["field"] == "id" and err["reason"].startswith("duplicate_id: order-1")
        # in a batch with a valid message: the other is queued, the answer is still 409
        async with http.post(url, json=[again, {**again, "id": "order-2"}], headers=AUTH) as r:
            assert r.status == 409
            assert (await r.json())["results"][1]["id"] == "order-2"
        # keyed: a resend of the same message is a duplicate, not a conflict
        keyed = {**first, "id": "order-3", "idempotency_key": "k-3"}
        for _ in range(2):
            async with http.post(url, json=keyed, headers=AUTH) as r:
                assert r.status == 202
        async with Client(redis_url, queue=cfg.queue) as client:
            with pytest.raises(MessageError) as e:
                await client.send([again])
            assert e.value.code == "duplicate_id"
        await wait_final(redis, keys, ["order-2", "order-3"], 30)
    assert await redis.hgetall(keys.status("order-1")) == before  # untouched
    assert before["ref"] == "a" and before["state"] == "delivered"
    sent = [s.destination for s in sim.submissions]
    assert sent.count("8613900000000") == 1  # order-2 only
    assert sent.count("8613800138000") == 2  # order-1 and order-3, each once


async def test_raw_entries_reusing_an_id_are_dead_lettered(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    q = keys.queue("transactional")
    await redis.xadd(q, {"id": "raw-1", "to": "+8613800138000", "text": "first"})
    async with Client(redis_url, queue=cfg.queue) as client:
        await client.send([{"id": "api-1", "to": "+8613800138001", "text": "by the client"}])
    async with running_daemon(cfg):
        before = await wait_final(redis, keys, ["raw-1", "api-1"], 30)
        await redis.xadd(q, {"id": "raw-1", "to": "+8613900000001", "text": "reused"})
        await redis.xadd(q, {"id": "api-1", "to": "+8613900000002", "text": "reused"})
        await redis.xadd(q, {"id": "raw-1", "to": "12", "text": "invalid, reused id"})
        await redis.xadd(q, {"id": "api-1", "to": "+8613900000005", "text": "new key",
                             "idempotency_key": "new"})
        for _ in range(2):  # the same keyed message pushed twice: sent once
            await redis.xadd(q, {"id": "raw-k", "to": "+8613900000003", "text": "k",
                                 "idempotency_key": "kk"})
        await redis.xadd(q, {"id": "raw-2", "to": "+8613900000004", "text": "fresh"})
        after = await wait_final(redis, keys, ["raw-k", "raw-2"], 30)
        for _ in range(200):
            if await redis.xlen(keys.dead) >= 4:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        pending = (await redis.xpending(q, GROUP))["pending"]
    dead = sorted(d["reason"] for _, d in await redis.xrange(keys.dead))
    assert dead == ["duplicate_id: api-1 is already used by another message",
                    "duplicate_id: api-1 is already used by another message",
                    "duplicate_id: raw-1 is already used by another message",
                    "invalid:to: not an E.164 number (+ and 6-15 digits, e.g. +8613800138000)"]
    for msg_id in ("raw-1", "api-1"):  # the earlier messages' records are theirs still
        now = await redis.hgetall(keys.status(msg_id))
        assert now == before[msg_id] and now["state"] == "delivered"
    assert {r["state"] for r in after.values()} == {"delivered"}
    sent = [s.destination for s in sim.submissions]
    assert not {"8613900000001", "8613900000002", "8613900000005"} & set(sent)
    assert not await redis.exists(keys.idempotency("transactional", "new"))
    assert sent.count("8613900000003") == 1
    assert pending == 0 and await redis.xlen(q) == 0


async def test_claim_script_holds_an_id_for_its_entry(redis: aioredis.Redis, keys: Keys) -> None:
    claim = load_script(redis, "claim")
    key = keys.status("m-1")
    assert await claim(keys=[key], args=["otp 1-0", 60, 1.0]) == [1, "queued"]
    await redis.hset(key, "state", "submitted")
    # the same entry read again (after a crash): it holds the id, at the state it reached
    assert await claim(keys=[key], args=["otp 1-0", 60, 2.0]) == [1, "submitted"]
    assert await claim(keys=[key], args=["otp 2-0", 60, 3.0]) == [0, ""]
    await redis.hset(keys.status("m-2"), mapping={"state": "queued"})  # made by intake
    assert await claim(keys=[keys.status("m-2")], args=["otp 3-0", 60, 4.0]) == [0, ""]
