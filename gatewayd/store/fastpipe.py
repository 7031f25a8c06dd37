"""A cheaper ``Pipeline.execute()`` for the hot path's big non-transactional pipelines.

redis-py's asyncio pipeline packs every command in Python and reads every reply under
its own ``asyncio.timeout``: measured here at 15-50 us a command, which made the client
side of Redis the largest cost of a message (bench/e2e profile). ``execute`` below
sends the same command stack packed by hiredis in one write and reads the replies
under ONE timeout (the connection's socket_timeout), then applies redis-py's own
response callbacks, so callers see exactly what ``pipe.execute()`` returns (~4 us a
command). Scripts queued with ``Script(client=pipe)`` are loaded first, as redis-py does;
a command queued with the ``NEVER_DECODE`` option gets its reply as bytes, as there.

Anything unusual (a cluster pipeline, MULTI/WATCH, no hiredis) goes through redis-py's
own ``execute``. Any failure or cancellation after the write disconnects the
connection, so a half-read reply stream never reaches the pool (the caller sees the
redis ConnectionError/TimeoutError, or the first ResponseError after every reply was
read, like ``raise_on_error=True``).

This leans on redis-py's pipeline internals: tests/test_fastpipe.py compares it with
redis-py's own ``execute`` on a real Redis, and pyproject.toml caps redis-py's major.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio.client import Pipeline
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack = None
else:
    _pack = cast(Callable[[tuple[Any, ...]], bytes], _hiredis_pack)


def _packed(stack: Any) -> bytes:
    pack = _pack
    assert pack is not None
    out: list[bytes] = []
    for args, _ in stack:
        if " " in args[0]:  # "SCRIPT LOAD"-style names go as separate words
            args = (*args[0].split(), *args[1:])
        # hiredis writes floats with repr(), as redis-py's encoder does (checked)
        out.append(pack(args))
    return b"".join(out)


def _brief(args: tuple[Any, ...]) -> list[Any]:
    """A command's words for its error message, each cut to 100 characters: redis-py's
    annotate_exception formats every argument whole before it truncates the text, and
    one enqueue_many.lua call's argument (2,000 messages packed) took ~0.1 s to format
    for a NOSCRIPT that is then simply retried."""
    return [a[:100] if isinstance(a, (bytes, str)) and len(a) > 100 else a for a in args]


def raw_ok(pipe: Any) -> bool:
    """True when ``execute`` takes the fast path for this pipeline (raw replies work)."""
    return (type(pipe) is Pipeline and _pack is not None and not pipe.is_transaction
            and not pipe.explicit_transaction and not pipe.watching)


async def execute(pipe_: Any, *, raw: bool = False) -> list[Any]:
    """``await pipe.execute()``, cheaper for a plain redis.asyncio Pipeline.

    ``raw``: skip redis-py's response callbacks (the caller parses the RESP2 replies
    itself; e.g. XREADGROUP's nested lists, which redis-py turns into dicts slowly).
    Only where the fast path applies (``raw_ok``); elsewhere it raises ValueError.
    """
    if not raw_ok(pipe_):
        if raw:
            raise ValueError("raw replies need a plain non-transactional Pipeline")
        return list(await pipe_.execute())
    pipe: Any = pipe_  # redis-py's pipeline internals are untyped
    stack = pipe.command_stack
    if not stack:
        return []
    if any(EMPTY_RESPONSE in o for _, o in stack):
        if raw:
            raise ValueError("raw replies and EMPTY_RESPONSE do not mix")
        return list(await pipe.execute())
    try:
        if pipe.scripts:
            await pipe.load_scripts()
        data = _packed(stack)
        conn = pipe.connection
        if conn is None:
            conn = pipe.connection = await pipe.connection_pool.get_connection()
        replies: list[Any] = []
        try:
            async with asyncio.timeout(conn.socket_timeout):
                await conn.send_packed_command(data)
                for _, opts in stack:
                    try:
                        # NEVER_DECODE: bytes, as redis-py's own execute gives them
                        replies.append(await conn.read_response(
                            timeout=math.inf, disable_decoding=NEVER_DECODE in opts))
                    except ResponseError as e:
                        replies.append(e)
        except TimeoutError:
            await conn.disconnect()
            raise RedisTimeoutError("Timeout reading from Redis (pipeline)") from None
        except BaseException:
            await conn.disconnect()
            raise
        callbacks = pipe.response_callbacks
        out: list[Any] = []
        for i, ((args, options), r) in enumerate(zip(stack, replies, strict=True)):
            if isinstance(r, ResponseError):
                pipe.annotate_exception(r, i + 1, _brief(args))
                raise r
            cb = None if raw else callbacks.get(args[0])
            if cb is not None:
                if "keys" in options or NEVER_DECODE in options:
                    options = {k: v for k, v in options.items()
                               if k != "keys" and k != NEVER_DECODE}
                r = cb(r, **options)
                if inspect.isawaitable(r):
                    r = await r
            out.append(r)
        return out
    finally:
        await pipe.reset()
