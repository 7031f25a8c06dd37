"""gatewayd.store.fastpipe against redis-py's own Pipeline.execute, on a real Redis.

fastpipe reaches into redis-py's pipeline (command stack, connection, response
callbacks, script loading): these tests are what lets a new redis-py release in
(pyproject caps the major). Each builds the same pipeline twice and expects the same
replies, errors and connection state from both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewayd.store import fastpipe
from gatewayd.store.connection import pipe_script

Fill = Callable[[Any], Any]  # queues commands; may be async (a Script call on a pipeline)


def every_kind_of_reply(p: Any) -> None:
    """Commands whose replies redis-py post-processes in different ways."""
    p.set("k:s", "v", ex=60)
    p.get("k:s")
    p.get("k:absent")
    p.incrbyfloat("k:f", 1.5)
    p.hset("k:h", mapping={"a": "1", "b": "2"})
    p.hgetall("k:h")
    p.hmget("k:h", "a", "zz", "b")
    p.zadd("k:z", {"x": 1.25, "y": "2.5"})
    p.zrange("k:z", 0, -1, withscores=True)
    p.zscore("k:z", "y")
    p.zscore("k:z", "nope")
    p.xadd("k:x", {"f": "1", "g": "é中"}, id="1-1")
    p.xrange("k:x")
    p.exists("k:s", "k:absent")
    p.expire("k:h", 60)
    p.ttl("k:h")
    p.execute_command("EVAL", "return {1, 'two', {3}}", 0)


async def both(redis: aioredis.Redis, fill: Fill) -> tuple[list[Any], list[Any]]:
    """redis-py's replies, then fastpipe's, each on a freshly flushed database."""
    await redis.flushdb()
    p = redis.pipeline(transaction=False)
    if inspect.isawaitable(queued := fill(p)):
        await queued
    theirs = list(await p.execute())
    await redis.flushdb()
    p = redis.pipeline(transaction=False)
    if inspect.isawaitable(queued := fill(p)):
        await queued
    assert fastpipe.raw_ok(p)
    ours = await fastpipe.execute(p)
    return theirs, ours


async def test_replies_equal_redis_py_for_every_kind_of_reply(
    redis: aioredis.Redis,
) -> None:
    theirs, ours = await both(redis, every_kind_of_reply)
    assert ours == theirs
    assert ours[1] == "v" and ours[2] is None and ours[9] == 2.5


async def test_replies_equal_redis_py_without_decoding(redis_url: str) -> None:
    raw = aioredis.from_url(redis_url)  # bytes replies
    try:
        theirs, ours = await both(raw, every_kind_of_reply)
        assert ours == theirs
        assert ours[1] == b"v"
    finally:
        await raw.aclose()


async def test_a_script_object_is_loaded_first_as_redis_py_does(
    redis: aioredis.Redis,
) -> None:
    script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    await redis.script_flush()

    async def fill(p: Any) -> None:
        await script(keys=["k:n"], args=[3], client=p)
        await script(keys=["k:n"], args=[4], client=p)
        pipe_script(p, script, ["k:n"], [5])

    theirs, ours = await both(redis, fill)
    assert ours == theirs == [3, 7, 12]
    await redis.script_flush()  # NOSCRIPT would follow if fastpipe skipped the load
    _, ours = await both(redis, fill)
    assert ours == [3, 7, 12]


async def test_an_error_raises_like_redis_py_after_every_command_ran(
    redis: aioredis.Redis,
) -> None:
    def fill(p: Any) -> None:
        p.set("k:a", "1")
        p.hset("k:a", "f", "v")  # WRONGTYPE
        p.set("k:b", "2")

    await redis.flushdb()
    p = redis.pipeline(transaction=False)
    fill(p)
    with pytest.raises(ResponseError) as theirs:
        await p.execute()
    await redis.flushdb()
    p = redis.pipeline(transaction=False)
    fill(p)
    with pytest.raises(ResponseError) as ours:
        await fastpipe.execute(p)
    assert str(ours.value) == str(theirs.value)
    assert "WRONGTYPE" in str(ours.value) and "Command # 2" in str(ours.value)
    # The commands after it ran, and the connection went back clean: the next
    # pipeline's replies are its own, not the tail of this one's.
    assert await redis.get("k:b") == "2"
    p = redis.pipeline(transaction=False)
    p.get("k:a")
    p.get("k:b")
    assert await fastpipe.execute(p) == ["1", "2"]


async def test_raw_replies_skip_the_callbacks(redis: aioredis.Redis) -> None:
    p = redis.pipeline(transaction=False)
    p.hset("k:h", mapping={"a": "1"})
    p.hgetall("k:h")
    p.xadd("k:x", {"f": "1"}, id="1-1")
    p.xrange("k:x")
    # The parser's own shapes (RESP3 maps arrive as dicts), not redis-py's pairs.
    hset, hgetall, xadd, xrange = await fastpipe.execute(p, raw=True)
    assert (hset, xadd) == (1, "1-1")
    assert dict(hgetall) == {"a": "1"} if isinstance(hgetall, dict) else hgetall == ["a", "1"]
    assert xrange == [["1-1", ["f", "1"]]]


async def test_what_it_does_not_cover_goes_through_redis_py(
    redis: aioredis.Redis,
) -> None:
    tx = redis.pipeline(transaction=True)
    tx.set("k:t", "1")
    tx.incr("k:t")
    assert not fastpipe.raw_ok(tx)
    assert await fastpipe.execute(tx) == [True, 2]
    tx = redis.pipeline(transaction=True)
    tx.get("k:t")
    with pytest.raises(ValueError):
        await fastpipe.execute(tx, raw=True)
    empty = redis.pipeline(transaction=False)
    assert await fastpipe.execute(empty) == []


async def test_a_timeout_drops_the_connection_not_the_reply_stream(
    redis_url: str,
) -> None:
    """A reply that does not come in time: TimeoutError, and the half-read connection is
    not reused (the next command on the client gets its own reply)."""
    slow = aioredis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    try:
        p = slow.pipeline(transaction=False)
        p.set("k:before", "1")
        p.execute_command("EVAL", "local t = redis.call('TIME') local e = t[1] + 1 "
                          "while true do local n = redis.call('TIME') "
                          "if n[1] + 0 > e then break end end return 'late'", 0)
        with pytest.raises(RedisTimeoutError):
            await fastpipe.execute(p)
        await asyncio.sleep(2.2)  # the busy script ends (it spins 1-2 s)
        assert await slow.get("k:before") == "1"
        p = slow.pipeline(transaction=False)
        p.get("k:before")
        p.set("k:after", "2")
        assert await fastpipe.execute(p) == ["1", True]
    finally:
        await slow.aclose()
