"""Lua scripts shipped in gatewayd/store/lua/, called by EVALSHA on whichever client is given.

The store's ``load_script`` binds a script to one client; policies receive the client
per call (the daemon's, a CLI's, a test's), so they keep the source and its SHA and
load it on NOSCRIPT (after a Redis restart or on a fresh server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gatewayd.store import fastpipe
from gatewayd.store.connection import is_cluster, script_source


class LuaScript:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        # Includes filled in, comments left out (what load_script sends too).
        self.source = script_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        r = cast(Any, client)
        pipe = None if is_cluster(r) else r.pipeline(transaction=False)
        if pipe is not None and fastpipe.raw_ok(pipe):
            # One hiredis-packed write and one read (the dispatcher calls this once a
            # batch; redis-py's command path showed in the bench profile).
            pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            try:
                [reply] = await fastpipe.execute(pipe)
            except NoScriptError:
                await r.script_load(self.source)
                return await r.evalsha(self.sha, len(keys), *keys, *args)
            return reply
        try:
            return await r.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await r.script_load(self.source)
            return await r.evalsha(self.sha, len(keys), *keys, *args)


def text(value: bytes | str) -> str:
    """A reply element as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
