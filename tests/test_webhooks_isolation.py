"""Webhooks (issue 18): a hung endpoint (it takes the connection and never answers)
delays no other endpoint and not dispatch, and loses nothing once it answers again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.store.keys import Keys
from gatewayd.webhooks import runner as runner_module
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.test_webhooks import complete, send, wait_for_async
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml


async def test_a_hung_endpoint_holds_up_no_other_and_loses_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """Endpoint "hung" accepts its first request and does not answer it (a timeout far
    beyond the test); "ok" answers. With 2,000 events, more than the sender holds in
    memory (max_in_memory = 100: 1,000 entries), the hung request would pin the cursor:
    instead its events go to its retry queue and the reader goes on. Every message goes
    final and "ok" gets every event while "hung"'s first request is still open; once it
    answers, "hung" gets every event too, submitted before final."""
    hung, ok = Receiver(), Receiver()
    hung.hang = True
    await hung.start()
    await ok.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = (endpoint_toml(hung, "hung", "/a", batch=10, concurrency=1, timeout_s=600)
               + endpoint_toml(ok, "ok", "/b", batch=50))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(ok, endpoints=eps,
                                                    extra="max_in_memory = 100")))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            ids = await send(redis_url, cfg, 1000)
            await wait_final(redis, keys, ids, timeout_s=60)
            assert await wait_for(lambda: complete(ok, "/b", ids), 60)
            # All of "ok"'s events arrived while "hung" holds its first request unanswered.
            assert hung.requests["/a"] == 1 and hung.open == 1 and hung.answered == 0
            # Its events wait in its retry queue (the cursor did not wait for them).
            assert await redis.zcard(keys.webhook_queue("hung")) > 0
            hung.hang = False
            assert await wait_for(lambda: complete(hung, "/a", ids), 60)
            assert await wait_for(lambda: daemon.webhooks is not None
                                  and not daemon.webhooks.senders["hung"].queued, 10)
        assert hung.bad_signatures == 0 and ok.bad_signatures == 0
        assert all(hung.by_message("/a")[m][:2] == ["submitted", "delivered"] for m in ids)
        assert await redis.zcard(keys.webhook_queue("hung")) == 0
        assert await redis.xlen(keys.webhook_dead("hung")) == 0
        last = await redis.xrevrange(keys.events, count=1)
        assert await redis.hget(keys.webhook_cursor, "events") == last[0][0]
    finally:
        hung.hang = False
        await hung.stop()
        await ok.stop()


async def test_an_endpoint_that_never_answers_gets_its_events_dead_lettered(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """"hung" never answers (each request times out); once its events are older than
    retry_for_s they go to its dead-letter stream with the last error, every one of
    them, while "ok" has had everything."""
    hung, ok = Receiver(), Receiver()
    hung.hang = True
    await hung.start()
    await ok.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = (endpoint_toml(hung, "hung", "/a", batch=50, concurrency=2, timeout_s=0.5)
               + endpoint_toml(ok, "ok", "/b", batch=50))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(ok, endpoints=eps,
                                                    extra="retry_for_s = 1.0")))
        async with running_daemon(cfg):
            ids = await send(redis_url, cfg, 100)
            await wait_final(redis, keys, ids, timeout_s=60)
            assert await wait_for(lambda: complete(ok, "/b", ids), 60)
            assert await wait_for_async(
                lambda: redis.xlen(keys.webhook_dead("hung")), 2 * len(ids), 60)
            assert await redis.zcard(keys.webhook_queue("hung")) == 0
        rows = await redis.xrange(keys.webhook_dead("hung"))
        events = [json.loads(f["event"]) for _i, f in rows]
        assert {e["message_id"] for e in events} == set(ids)
        assert sorted(e["kind"] for e in events) == sorted(
            ["submitted"] * len(ids) + ["delivered"] * len(ids))
        assert all(f["error"] == "timeout after 0.5 s" for _i, f in rows)
        assert hung.answered == 0 and not hung.events["/a"]
    finally:
        hung.hang = False
        await hung.stop()
        await ok.stop()


async def test_the_reader_waits_for_an_endpoint_behind_only_while_no_other_starves(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """"hung" holds its first request and its memory queue passes its high-water mark
    (200 events), far below max_in_memory: "behind", in the reader's eyes. The 5 s
    after which it would count as slow is made endless, so only the rule under test
    can let the reader go on: it does, because "ok" ran out of events. "ok" gets
    everything while "hung"'s first request is open; "hung" everything once it answers."""
    monkeypatch.setattr(runner_module, "SLOW_AFTER_S", 1e9)
    hung, ok = Receiver(), Receiver()
    hung.hang = True
    await hung.start()
    await ok.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = (endpoint_toml(hung, "hung", "/a", batch=10, concurrency=1, timeout_s=600)
               + endpoint_toml(ok, "ok", "/b", batch=50))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(ok, endpoints=eps)))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            ids = await send(redis_url, cfg, 300)
            await wait_final(redis, keys, ids, timeout_s=60)
            assert await wait_for(lambda: complete(ok, "/b", ids), 60)
            sender = daemon.webhooks.senders["hung"]
            assert hung.requests["/a"] == 1 and hung.open == 1 and hung.answered == 0
            assert len(sender.live) >= sender.high_water and not sender.queued
            hung.hang = False
            assert await wait_for(lambda: complete(hung, "/a", ids), 60)
        assert all(hung.by_message("/a")[m][:2] == ["submitted", "delivered"] for m in ids)
        assert await redis.zcard(keys.webhook_queue("hung")) == 0
    finally:
        hung.hang = False
        await hung.stop()
        await ok.stop()
