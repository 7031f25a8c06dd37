"""Concurrent HTTP requests share Redis round trips (issue 17 item 4), each keeping its
own exact answer: ids, duplicates of a shared idempotency key, 422 for a bad item beside
a good one, 409 for an id already in use."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.config import Config, QueueConfig
from gatewayd.model import OutboundMessage
from gatewayd.ops import metrics
from gatewayd.pipeline.coalesce import Coalescer
from gatewayd.pipeline.intake import parse_message
from gatewayd.pipeline.queue import DUPLICATE, QUEUED, QueueStore
from gatewayd.store.embedded import free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import load, running_daemon, write_config
from tests.test_daemon_http import metric

KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _eval_calls(redis: aioredis.Redis) -> int:
    """Script calls, by source or by hash (enqueue_many.lua goes by EVALSHA)."""
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


async def test_concurrent_requests_share_calls_and_keep_their_answers(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    # No carrier listening: the daemon does intake only and leaves the queue alone, so
    # the EVALs counted below are intake's (and housekeeping's few).
    p = write_config(tmp_path, redis_url=redis_url, sim_port=free_port(), http=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:0"\napi_keys = ["{digest}"]'))
    n = 160
    conn = aiohttp.TCPConnector(limit=n)
    async with running_daemon(load(p)) as daemon, aiohttp.ClientSession(connector=conn) as http:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        url = f"{base}/v1/messages"
        taken = [{"id": f"taken-{i}", "to": "+8613800000000", "text": "first", "ref": "old"}
                 for i in range(n)]
        async with http.post(url, json=taken, headers=AUTH) as r:
            assert r.status == 202

        def body(i: int) -> Any:
            to = f"+86139{i:08d}"
            kind = i % 4
            if kind == 0:  # plain
                return {"to": to, "text": f"hello {i}", "ref": f"r-{i}"}
            if kind == 1:  # requests 1 and 5, 9 and 13, ... repeat one key
                return {"to": to, "text": f"keyed {i}", "ref": f"r-{i}",
                        "idempotency_key": f"shared-{i // 8}"}
            if kind == 2:  # one good, one bad: 422, the good one queued
                return [{"to": to, "text": f"good {i}", "ref": f"r-{i}"},
                        {"to": "not-a-number", "text": "bad"}]
            return {"id": f"taken-{i}", "to": to, "text": "reuse", "ref": f"r-{i}"}

        async def post(i: int) -> tuple[int, dict[str, Any]]:
            async with http.post(url, json=body(i), headers=AUTH) as r:
                return r.status, await r.json()

        # every connection open first, so the requests below arrive together
        await asyncio.gather(*(http.get(f"{base}/healthz") for _ in range(n)))
        m0 = await (await http.get(f"{base}/metrics")).text()
        e0 = await _eval_calls(redis)
        answers = await asyncio.gather(*(post(i) for i in range(n)))
        e1 = await _eval_calls(redis)
        m1 = await (await http.get(f"{base}/metrics")).text()

        keyed: dict[str, list[tuple[str, bool]]] = {}
        for i, (status, doc) in enumerate(answers):
            kind = i % 4
            if kind == 0:
                assert status == 202, doc
                [res] = doc["results"]
                assert not res["duplicate"]
                assert await redis.hget(keys.status(res["id"]), "ref") == f"r-{i}"
            elif kind == 1:
                assert status == 202, doc
                [res] = doc["results"]
                keyed.setdefault(f"shared-{i // 8}", []).append((res["id"], res["duplicate"]))
            elif kind == 2:
                assert status == 422, doc
                good, bad = doc["results"]
                assert await redis.hget(keys.status(good["id"]), "ref") == f"r-{i}"
                assert [e["field"] for e in bad["errors"]] == ["to"]
            else:
                assert status == 409, doc
                assert doc["error"]["code"] == "duplicate_id"
                [res] = doc["results"]
                assert res["errors"][0]["reason"].startswith(f"duplicate_id: taken-{i}")
                assert await redis.hget(keys.status(f"taken-{i}"), "ref") == "old"
        # each shared key: one request queued it, the other got the same id, a duplicate
        assert len(keyed) == n // 8
        for pair in keyed.values():
            assert sorted(d for _, d in pair) == [False, True]
            assert pair[0][0] == pair[1][0]
            assert await redis.hget(keys.status(pair[0][0]), "state") == "queued"
        queued = sum([await redis.xlen(keys.queue(k)) for k in ("otp", "transactional",
                                                                "marketing")])
        assert queued == n + n // 4 + n // 8 + n // 4  # taken-*, plain, keyed, good halves

    calls = metric(m1, "gatewayd_intake_batches_total") - metric(
        m0, "gatewayd_intake_batches_total")
    requests = metric(m1, "gatewayd_intake_batched_requests_total") - metric(
        m0, "gatewayd_intake_batched_requests_total")
    assert requests == n  # every request had a message to queue
    assert 1 <= calls < n / 4  # shared: far fewer Redis calls than requests
    assert e1 - e0 < n / 2  # and Redis saw as much (EVALs, housekeeping's included)


async def test_codes_skip_the_coalescer_and_are_queued_at_once(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    """A request of express-class messages only (otp) does not wait for the turn's
    shared call (issue 17 item 6): codes share calls with codes only (an eager
    coalescer, not counted in the shared call's metrics); the others still share."""
    p = write_config(tmp_path, redis_url=redis_url, sim_port=free_port(), http=True)
    n = 40
    conn = aiohttp.TCPConnector(limit=2 * n)
    async with running_daemon(load(p)) as daemon, aiohttp.ClientSession(connector=conn) as http:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"

        async def post(i: int) -> tuple[int, dict[str, Any]]:
            item = ({"to": f"+86137{i:08d}", "text": f"code {i}", "category": "otp",
                     "ref": f"c-{i}"} if i % 2 else
                    {"to": f"+86136{i:08d}", "text": f"news {i}", "category": "marketing"})
            async with http.post(f"{base}/v1/messages", json=item) as r:
                return r.status, await r.json()

        await asyncio.gather(*(http.get(f"{base}/healthz") for _ in range(2 * n)))
        m0 = await (await http.get(f"{base}/metrics")).text()
        answers = await asyncio.gather(*(post(i) for i in range(2 * n)))
        m1 = await (await http.get(f"{base}/metrics")).text()
    assert {s for s, _ in answers} == {202}
    for i, (_, doc) in enumerate(answers):
        if i % 2:
            [res] = doc["results"]
            assert await redis.hget(keys.status(res["id"]), "ref") == f"c-{i}"
    assert await redis.xlen(keys.queue("otp")) == n
    assert await redis.xlen(keys.queue("marketing")) == n
    shared = metric(m1, "gatewayd_intake_batched_requests_total") - metric(
        m0, "gatewayd_intake_batched_requests_total")
    assert shared == n  # the marketing requests only


@pytest.mark.parametrize("eager", [False, True])
async def test_a_call_in_flight_gathers_the_next_requests(
    redis: aioredis.Redis, keys: Keys, eager: bool
) -> None:
    """With max_in_flight calls out, the requests of the next turns wait for one to come
    back and then share one call (a flood shares a call a round trip, not a turn), each
    still answered exactly, in order; a lone request goes at the end of its turn (eager:
    at once)."""
    q = QueueStore(redis, keys, Config(queue=QueueConfig()), "c1")
    co = Coalescer(q, max_in_flight=1, eager=eager)
    n = 60

    def msgs(i: int) -> list[OutboundMessage]:
        raw = {"id": f"m-{i}", "to": f"+86137{i:08d}", "text": f"hello {i}",
               "ref": f"r-{i}", "idempotency_key": f"k-{i // 2}"}  # pairs share a key
        return [parse_message(raw, classes=("otp", "transactional", "marketing"),
                              max_segments=10, now=1000.0)]

    batches0 = metrics.INTAKE_BATCHES._value.get()
    tasks = []
    for i in range(n):  # one request a loop turn, as a flood of connections brings them
        tasks.append(asyncio.ensure_future(co.enqueue_each(msgs(i), source="http")))
        await asyncio.sleep(0)
    answers = await asyncio.gather(*tasks)
    calls = metrics.INTAKE_BATCHES._value.get() - batches0
    # Unbounded, each turn made its own call (n calls); a real round trip spans turns.
    assert 2 <= calls < n // 2, calls
    for i, [(mid, outcome)] in enumerate(answers):
        # The first of each pair queues, the second is its duplicate: the calls kept
        # the requests' order, across calls too.
        assert (mid, outcome) == ((f"m-{i}", QUEUED) if i % 2 == 0 else
                                  (f"m-{i - 1}", DUPLICATE)), (i, mid, outcome)
    assert await redis.xlen(keys.queue("marketing")) + await redis.xlen(
        keys.queue("transactional")) + await redis.xlen(keys.queue("otp")) == n // 2

    # Nothing in flight: a lone request is not held back.
    batches0 = metrics.INTAKE_BATCHES._value.get()
    [(mid, outcome)] = await asyncio.wait_for(co.enqueue_each(msgs(n), source="http"), 5)
    assert (mid, outcome) == (f"m-{n}", QUEUED)
    assert metrics.INTAKE_BATCHES._value.get() - batches0 == 1


async def test_eager_goes_before_the_turn_ends_and_gathers_the_rest(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Three requests of one turn, one call out at most: the turn coalescer sends them in
    one call at the turn's end; the eager one (the codes') sends the first at once, in
    its own task, and the two that came while it was out together once it is back.
    Answers exact and in order across the calls (a key shared by the first two: the
    first queues it, the second is its duplicate)."""
    q = QueueStore(redis, keys, Config(queue=QueueConfig()), "c1")

    def msgs(i: int, key: str) -> list[OutboundMessage]:
        raw = {"id": f"e-{i}", "to": f"+86135{i:08d}", "text": f"code {i}",
               "category": "otp", "idempotency_key": key}
        return [parse_message(raw, classes=("otp", "transactional", "marketing"),
                              max_segments=10, now=1000.0)]

    for eager, want_calls in ((False, 1), (True, 2)):
        co = Coalescer(q, max_in_flight=1, eager=eager)
        base = 10 * int(eager)
        b0 = metrics.INTAKE_BATCHES._value.get()
        tasks = [asyncio.ensure_future(co.enqueue_each(
            msgs(base + i, f"k{eager}" if i < 2 else f"own-{base + i}"),
            source="http")) for i in range(3)]
        answers = await asyncio.gather(*tasks)
        assert metrics.INTAKE_BATCHES._value.get() - b0 == want_calls, eager
        assert answers == [[(f"e-{base}", QUEUED)], [(f"e-{base}", DUPLICATE)],
                           [(f"e-{base + 2}", QUEUED)]]
    assert await redis.xlen(keys.queue("otp")) == 4

    # Not counted: the codes' calls are not the turn's shared ones (metrics' meaning).
    co = Coalescer(q, eager=True, counted=False)
    b0 = metrics.INTAKE_BATCHES._value.get()
    [(mid, outcome)] = await co.enqueue_each(msgs(99, "own-99"), source="http")
    assert (mid, outcome) == ("e-99", QUEUED)
    assert metrics.INTAKE_BATCHES._value.get() == b0
