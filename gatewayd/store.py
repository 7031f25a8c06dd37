"""The Redis connection: a configured URL, or a private embedded server for demos.

Also loads the Lua scripts shipped in gatewayd/lua/ (EVALSHA, loaded once; redis-py's
Script objects reload them transparently after a Redis restart).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gatewayd.config import Config
from gatewayd.embedded import EmbeddedRedis

log = logging.getLogger("gatewayd.store")

Redis = aioredis.Redis


def load_script(client: Redis, name: str) -> AsyncScript:
    source = resources.files("gatewayd").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return client.register_script(source)


class Store:
    """Owns the Redis client (and the embedded server, when there is one)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.embedded: EmbeddedRedis | None = None
        self.url = cfg.redis_url()
        self._client: Redis | None = None

    async def open(self) -> Redis:
        if not self.url:
            state = Path(self.cfg.resolve(self.cfg.daemon.state_dir))
            self.embedded = EmbeddedRedis(state / "redis", persist=True)
            self.url = self.embedded.start()
            log.warning(
                "no Redis URL configured: started an embedded redis-server (demo/dev only)",
                extra={"url": self.url},
            )
        options: dict[str, object] = {}
        if not self.url.startswith("unix:"):
            options["socket_keepalive"] = True  # TCP only: unix sockets refuse the option
        self._client = aioredis.from_url(
            self.url,
            decode_responses=True,
            health_check_interval=15,
            # A hung Redis must not stall the housekeeping tick (and so the watchdog)
            # for ever; every command we send is short (blocking reads are 50 ms).
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
            **options,
        )
        return self._client

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError("Store.open() first")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
