"""The Redis connection: a configured URL, or a private embedded server for demos.

Also loads the Lua scripts shipped in gatewayd/store/lua/ (EVALSHA, loaded once; redis-py's
Script objects reload them transparently after a Redis restart).

URLs: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS; ``redis.tls_ca``,
``tls_cert``, ``tls_key`` name the CA and the client certificate), ``unix://path``.
Redis Cluster: ``redis+cluster://`` / ``rediss+cluster://`` (any one node, or several
comma-separated seeds; the client discovers the rest) or ``[redis] cluster = true``; the
client is then redis-py's ``RedisCluster``, which speaks the same command API. Two things
differ on a cluster and every caller goes through the helpers here for them: redis-py refuses Script
objects inside a cluster pipeline (``pipe_script`` queues a plain EVAL, routed by its
first key, instead), and commands over several keys must keep them in one slot
(``is_cluster`` lets callers split such calls; see keys.py for the hash tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewayd.config import Config, cluster_seed_urls
from gatewayd.errors import ConfigError, StoreError
from gatewayd.store.embedded import EmbeddedRedis

log = logging.getLogger("gatewayd.store")

Redis = aioredis.Redis
T = TypeVar("T")

_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


# Errors that mean "Redis cannot be reached or cannot answer now" (down, restarting,
# loading its data, a cluster failing over, every pooled connection busy past the
# wait): the caller retries later. Anything else (a WRONGTYPE key, a script error,
# a reply we fail to decode) is a fault of one key or one step, not an outage.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
    ConnectionError, TimeoutError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says Redis is unreachable or saturated (see UNAVAILABLE)."""
    return isinstance(exc, UNAVAILABLE)


def script_source(name: str) -> str:
    """A script's source, with ``--#include NAME`` lines replaced by lua/NAME.lua (Redis
    has no includes; two scripts share the receipt logic this way) and comment lines
    left out: pipelines send scripts as EVAL with their source, which Redis hashes at
    every call (the per-message status.lua cost ~2x the Redis CPU with its comments)."""
    source = resources.files("gatewayd.store").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return "".join(
        script_source(line.split()[1]) if line.startswith("--#include ") else line
        for line in source.splitlines(keepends=True)
        if line.startswith("--#include ") or not line.lstrip().startswith("--")
    )


def load_script(client: Redis, name: str) -> AsyncScript:
    return client.register_script(script_source(name))


_DENIED = ("NOPERM", "no permissions to run", "can't run this command")


def denied(e: BaseException) -> bool:
    """A command refused by the Redis ACL: NOPERM, or the same refusal raised inside a
    Lua script (whose error wraps it)."""
    text = str(e)
    return any(d in text for d in _DENIED)


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (or one of its pipelines)."""
    return isinstance(client, (RedisCluster, ClusterPipeline))


def pipe_script(
    pipe: Any, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | float]
) -> None:
    """Queue a Lua script call on a pipeline, on a single Redis or a cluster.

    EVAL with the source, not EVALSHA: Redis caches the compiled script after its
    first run (and hashes the few KB of source again each call, a few microseconds),
    and EVAL cannot fail with NOSCRIPT after a Redis restart. A pipelined EVALSHA
    could, after the pipeline's other commands (its XACKs) had run; redis-py avoids
    that with a SCRIPT EXISTS round trip before every such pipeline, which cost the
    dispatcher 4 ms a batch under load. (A cluster pipeline takes no Script objects
    at all.)
    """
    pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)


class WaitingPool(aioredis.ConnectionPool):
    """redis-py's ConnectionPool, except that a checkout finding every connection in use
    waits (up to ``timeout`` seconds, then ConnectionError "No connection available.")
    for one to come back instead of raising MaxConnectionsError at once.

    redis-py's BlockingConnectionPool does the same but takes a Condition, its lock and
    a timeout scope on every checkout, free connection or not: 22 us of CPU a checkout
    and release against 10.5 us (bench/redis_pool.py), and a message through the HTTP
    API, the dispatcher and its receipt takes several checkouts: ~15 % more CPU a
    message through the daemon at ~600 requests/s (wrk against POST /v1/messages).
    Here a free connection costs what the plain pool's does; only a caller that finds
    none waits, in line (FIFO: while anyone waits, newcomers queue behind them), woken
    one at a time by ``release``.
    """

    def __init__(self, *, timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> AbstractConnection:
        if not self._waiters:  # nobody in line: the plain pool's path
            try:
                return await _plain_checkout(self)
            except MaxConnectionsError:
                pass
        return await self._wait_for_connection()

    async def _wait_for_connection(self) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        front = False
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            if front:  # woken, but a newcomer took the connection: first in line again
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except BaseException as e:
                if fut.done() and not fut.cancelled():
                    self._wake()  # woken as time ran out: the wake-up goes to the next
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                if isinstance(e, TimeoutError):
                    raise RedisConnectionError("No connection available.") from None
                raise
            try:
                return await _plain_checkout(self)
            except MaxConnectionsError:
                front = True

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


async def _plain_checkout(pool: aioredis.ConnectionPool) -> AbstractConnection:
    """The plain pool's checkout (raises MaxConnectionsError when all are in use);
    redis-py leaves it untyped."""
    checkout: Any = aioredis.ConnectionPool.get_connection
    return cast(AbstractConnection, await checkout(pool))


def split_cluster_url(url: str) -> tuple[str, bool]:
    """("redis://host:port/0", True) for "redis+cluster://host:port/0"."""
    for scheme in _CLUSTER_SCHEMES:
        if url.startswith(scheme):
            return scheme.replace("+cluster", "") + url[len(scheme):], True
    return url, False


def connect(
    url: str,
    *,
    cluster: bool = False,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    max_connections: int = 100,
    pool_wait_s: float = 10.0,
    **options: Any,
) -> Redis:
    """A str-decoding client for a URL: single Redis, or RedisCluster (typed as Redis:
    it implements every command gatewayd sends).

    At most ``max_connections`` connections; a command that finds them all busy WAITS
    up to ``pool_wait_s`` for one (``WaitingPool``) and only then fails with a
    ConnectionError ("No connection available.", see ``is_unavailable``).
    redis-py's default pool raises MaxConnectionsError at once instead: under an HTTP
    flood that failed dispatch batches and receipts (issue 14). The cluster client has
    no waiting pool: it keeps ``max_connections`` per node and raises past them.
    """
    # Several seeds (comma-separated): the client starts while any one answers; one
    # seed, down at start, would keep the daemon from starting at all.
    url, *others = cluster_seed_urls(url)
    url, from_scheme = split_cluster_url(url)
    cluster = cluster or from_scheme
    if any((tls_ca, tls_cert, tls_key)):
        if not url.startswith("rediss://"):
            raise ConfigError("redis.tls_ca/tls_cert/tls_key are set but the Redis URL is "
                              "not rediss:// (TLS); use rediss://host:port")
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError("redis.tls_cert and redis.tls_key go together (mutual TLS)")
        if tls_ca:
            options["ssl_ca_certs"] = tls_ca
        if tls_cert:
            options["ssl_certfile"] = tls_cert
            options["ssl_keyfile"] = tls_key
    if cluster:
        options.pop("retry_on_timeout", None)  # the cluster client retries on its own
        if others:
            options["startup_nodes"] = [ClusterNode(p.hostname or "", p.port or 6379)
                                        for p in map(urlsplit, others)]
        return cast(Redis, RedisCluster.from_url(url, decode_responses=True,
                                                 max_connections=max_connections, **options))
    pool = WaitingPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=pool_wait_s,
        **options)
    return aioredis.Redis.from_pool(pool)


def connect_config(cfg: Config, url: str | None = None, **options: Any) -> Redis:
    """``connect`` with the [redis] section's cluster and TLS settings."""
    r = cfg.redis

    def path(p: str) -> str:
        return str(cfg.resolve(p)) if p else ""

    return connect(url if url is not None else cfg.redis_url(), cluster=r.cluster,
                   tls_ca=path(r.tls_ca), tls_cert=path(r.tls_cert),
                   tls_key=path(r.tls_key), **options)


# How long an HTTP request waits for a free intake connection before it is answered
# 503 + Retry-After (the core's paths wait as long as a command may take: they have
# nothing better to do, and their work is still pending in Redis if they give up).
INTAKE_POOL_WAIT_S = 2.0
CORE_POOL_WAIT_S = 10.0


class Store:
    """Owns the Redis clients (and the embedded server, when there is one).

    Two pools of connections, so the edge can never starve the core: ``client`` (the
    core: dispatch workers, receipts and MO, housekeeping, campaigns; ``[redis]
    connections``) and ``intake`` (the HTTP API and the short-link redirector; ``[redis]
    intake_connections``). However many requests arrive, they share the intake pool;
    past its wait they are answered 503, and the core's connections stay theirs.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.embedded: EmbeddedRedis | None = None
        self.url = cfg.redis_url()
        self._client: Redis | None = None
        self._intake: Redis | None = None

    async def open(self) -> Redis:
        if not self.url:
            state = Path(self.cfg.state_path())
            self.embedded = EmbeddedRedis(state / "redis", persist=True)
            self.url = self.embedded.start()
            log.warning(
                "no Redis URL configured: started an embedded redis-server (demo/dev only)",
                extra={"url": self.url},
            )
        options: dict[str, Any] = {}
        if not self.url.startswith("unix:"):
            options["socket_keepalive"] = True  # TCP only: unix sockets refuse the option
        options.update(
            health_check_interval=15,
            # A hung Redis must not stall the housekeeping tick (and so the watchdog)
            # for ever; every command we send is short (blocking reads are 50 ms).
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
        )
        r = self.cfg.redis
        core = r.connections
        if r.cluster or split_cluster_url(self.url)[1]:
            # The cluster client cannot wait for a connection, only fail: the core's cap
            # per node stays at least redis-py's own default there (receipt chunks are
            # applied concurrently, each holding a connection for its script call).
            core = max(core, 100)
        self._client = connect_config(self.cfg, self.url, max_connections=core,
                                      pool_wait_s=CORE_POOL_WAIT_S, **options)
        # Connections are opened on first use: an idle intake pool costs nothing.
        self._intake = connect_config(self.cfg, self.url, max_connections=r.intake_connections,
                                      pool_wait_s=INTAKE_POOL_WAIT_S, **options)
        return self._client

    @property
    def client(self) -> Redis:
        """The core's client (``[redis] connections``)."""
        if self._client is None:
            raise RuntimeError("Store.open() first")
        return self._client

    @property
    def intake(self) -> Redis:
        """The edge's client: HTTP API and redirector (``[redis] intake_connections``)."""
        if self._intake is None:
            raise RuntimeError("Store.open() first")
        return self._intake

    async def close(self) -> None:
        for client in (self._intake, self._client):
            if client is not None:
                await client.aclose()
        self._client = self._intake = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


async def while_unavailable(step: Callable[[], Awaitable[T]], *, what: str, url: str,
                            deadline: float, said: list[str]) -> T:
    """Run a start-up step on Redis, again while Redis cannot answer (``is_unavailable``:
    not up yet, a cluster master failing over, loading its data) until the monotonic
    ``deadline``; then StoreError (one line, exit 3). A daemon started during a master's
    failover used to exit at its first refused connection. ``said`` keeps the waiting
    said once per start, not once per step."""
    delay = 0.1
    while True:
        try:
            return await step()
        except Exception as e:
            if not (is_unavailable(e) or isinstance(e, (OSError, RedisClusterException))):
                raise
            if time.monotonic() + delay > deadline:
                raise StoreError(f"cannot reach Redis at {redacted(url)}: {e}") from e
            if not said:
                said.append(what)
                log.warning("start-up: Redis cannot answer (%s: %s); trying again until "
                            "redis.startup_wait_s has passed", what, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def redis_answers(client: Redis, cfg: Config, url: str, *, what: str,
                        stop: asyncio.Event | None = None) -> bool:
    """True once ``client`` answers a PING; False if ``stop`` is set first (a TERM while
    waiting: the process stops at once rather than after the wait); StoreError once
    redis.startup_wait_s has passed (0: at the first failure). ``what``: the process,
    named in the one waiting line ("http worker 1", "fan-out process").

    The daemon's wait, for the processes it starts (the http.workers intake processes,
    the webhook sender, the fan-out child) and ``gatewayd webhooks run`` by hand: one
    started again during a Redis restart used to exit at the first refused connection
    and be started again and again (backing off to 10 s) until Redis was back."""
    said: list[str] = []
    step = asyncio.ensure_future(while_unavailable(
        client.ping, what=what, url=url,
        deadline=time.monotonic() + cfg.redis.startup_wait_s, said=said))
    if stop is not None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((step, stopped), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task cancelled: neither wait is left behind
            step.cancel()
            raise
        finally:
            stopped.cancel()
        if not step.done():  # stopped first
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await step
            return False
    await step
    if said:
        log.info("start-up: Redis answers (%s)", what, extra={"url": redacted(url)})
    return True


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def client_url(cfg: Config) -> str:
    """Redis URL for CLI commands: configured, or the running demo daemon's socket."""
    url = cfg.redis_url()
    if url:
        return url
    sock = cfg.state_path() / "redis" / "redis.sock"
    if sock.exists():
        return f"unix://{sock}?db=0"
    raise ConfigError(
        f"{cfg.source}: redis.url: empty (embedded Redis) and no running daemon at {sock}; "
        "start `gatewayd run` first or set REDIS_URL"
    )
