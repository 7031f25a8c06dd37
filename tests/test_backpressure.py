"""queue.max_queued (issue 17 item 5): intake past a class's depth limit is refused,
never failed: HTTP 429 with the depth and Retry-After, the client raises QueueFull (a
retryable, typed error); the other messages of the call are queued."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.config import Config, QueueConfig
from gatewayd.errors import QueueFull
from gatewayd.pipeline.intake import parse_message
from gatewayd.pipeline.queue import QUEUE_FULL, QUEUED, QueueStore
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import load, running_daemon, write_config

KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_client_gets_queue_full_and_the_rest_is_queued(
    redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    q = QueueConfig(max_queued={"otp": 5})
    items = [{"to": f"+86138{i:08d}", "text": f"code {i}", "category": "otp"}
             for i in range(8)]
    items += [{"to": "+8613900000001", "text": "notice", "category": "transactional"}]
    async with Client(redis_url, queue=q) as c:
        with pytest.raises(QueueFull) as e:
            await c.send_many(items, chunk=4)
        assert e.value.retryable and e.value.klass == "otp"
        assert (e.value.depth, e.value.limit, len(e.value.ids)) == (5, 5, 3)
        assert await redis.xlen(keys.queue("otp")) == 5
        assert await redis.xlen(keys.queue("transactional")) == 1
        for mid in e.value.ids:  # refused: no record, no event
            assert not await redis.exists(keys.status(mid))
        assert await redis.xlen(keys.events) == 6
        # send() says the same
        with pytest.raises(QueueFull):
            await c.send(items[:1])


async def test_pipelined_path_honours_the_limit_too(redis: aioredis.Redis, keys: Keys) -> None:
    """Campaign messages (funnel counts) take the pipelined path: same refusal."""
    store = QueueStore(redis, keys, Config(queue=QueueConfig(max_queued={"marketing": 2})), "c")
    await store.ensure_groups()
    msgs = []
    for i in range(4):
        m = parse_message({"to": f"+86137{i:08d}", "text": f"sale {i}", "category": "marketing"},
                          classes=["otp", "transactional", "marketing"], max_segments=10)
        m.campaign = "spring"
        msgs.append(m)
    out = await store.enqueue_each(msgs, source="t")
    assert [o for _, o in out] == [QUEUED, QUEUED, QUEUE_FULL, QUEUE_FULL]
    assert store.full_depth["marketing"] == 2
    assert await redis.xlen(keys.queue("marketing")) == 2


async def test_http_answers_429_with_the_depth(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    # No carrier listening: nothing leaves the queue while the test fills it.
    p = write_config(tmp_path, redis_url=redis_url, sim_port=free_port(), http=True,
                     extra="[queue]\nmax_queued = { otp = 3 }\n")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]'))
    async with running_daemon(load(p)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/v1/messages"
        otp = [{"to": f"+86138{i:08d}", "text": f"code {i}", "category": "otp"}
               for i in range(3)]
        async with http.post(url, json=otp, headers=AUTH) as r:
            assert r.status == 202
        more = [{"to": "+8613800000009", "text": "late code", "category": "otp"},
                {"to": "+8613900000009", "text": "notice", "category": "transactional"}]
        async with http.post(url, json=more, headers=AUTH) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            doc = await r.json()
        assert doc["error"]["code"] == "queue_full" and doc["depth"] == 3
        assert (doc["accepted"], doc["rejected"]) == (1, 1)
        refused, queued = doc["results"]
        assert refused["errors"][0]["reason"].startswith("queue_full: queue 'otp' holds 3")
        assert await redis.hget(keys.status(queued["id"]), "state") == "queued"
        assert await redis.xlen(keys.queue("otp")) == 3
