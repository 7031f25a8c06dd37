"""A small Python client for upstream apps: enqueue messages, read status and events.

Any language can do the same with plain Redis commands (see README "Wire format");
this client adds validation, ids, idempotency and the initial `queued` record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gatewayd.campaigns.links import NewLink
from gatewayd.config import Config, QueueConfig
from gatewayd.errors import IntakeError, MessageError
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.intake import TemplateIntake, parse_message, parse_plain
from gatewayd.pipeline.queue import DUPLICATE, ID_TAKEN, QueueStore
from gatewayd.pipeline.status import read_status
from gatewayd.store.connection import connect, connect_config
from gatewayd.store.keys import Keys, keys_for


async def _chunk(out: list[tuple[str, bool] | None], total: int,
                 call: Awaitable[list[tuple[str, bool]]], n: int) -> None:
    """Append one chunk's results to ``out``; when Redis failed, raise IntakeError over
    every item (the ones before queued, this chunk's as far as known, the rest None)."""
    try:
        out += await call
        return
    except IntakeError as e:
        out += e.results
        reasons = {len(out) - n + i: r for i, r in e.reasons.items()}
    except RedisError as e:  # a single Redis: the chunk's one pipeline failed
        reasons = {len(out) + i: f"{type(e).__name__}: {e}" for i in range(n)}
        out += [None] * n
    start = len(out)
    reasons.update({i: "not tried (an earlier chunk failed)" for i in range(start, total)})
    raise IntakeError(out + [None] * (total - start), reasons)


class Client:
    """``async with Client(url) as c: ids = await c.send([{"to": ..., "text": ...}])``"""

    def __init__(self, url: str, *, prefix: str = "gw:", queue: QueueConfig | None = None,
                 consumer: str = "client", config: Config | None = None) -> None:
        """``url`` may be redis+cluster:// (Redis Cluster); ``config`` supplies the
        [redis] section's cluster and TLS settings (see from_config) and its privacy
        mode (ConfigError without the secret: short links made here name the number by
        its token, as the daemon does)."""
        self.url = url
        self._config = config
        self.keys = Keys(prefix, keys_for(config).privacy if config is not None else None)
        self.qcfg = queue or QueueConfig()
        self._redis: aioredis.Redis | None = None
        self._queue: QueueStore | None = None
        self._consumer = consumer
        self._intake: TemplateIntake | None = None

    @classmethod
    def from_config(cls, cfg: Config, url: str | None = None) -> Client:
        return cls(url or cfg.redis_url(), prefix=cfg.redis.prefix, queue=cfg.queue,
                   config=cfg)

    async def __aenter__(self) -> Client:
        self._redis = (connect_config(self._config, self.url) if self._config is not None
                       else connect(self.url))
        cfg = Config(queue=self.qcfg)
        self._queue = QueueStore(self._redis, self.keys, cfg, self._consumer)
        await self._queue.ensure_groups()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "use `async with Client(...)`"
        return self._redis

    async def send(self, items: Iterable[Mapping[str, Any]], *, source: str = "client",
                   chunk: int = 1000) -> list[tuple[str, bool]]:
        """Validate and enqueue; returns (id, duplicate) per item. Raises MessageError
        (nothing queued); QueueFull (gatewayd.errors; retryable) when a class's
        queue.max_queued is reached (the chunk's others were queued); or IntakeError
        when Redis failed past the retries (a cluster failover): its ``results`` say per
        item what was queued (None: not queued; later chunks are not tried)."""
        assert self._queue is not None, "use `async with Client(...)`"
        now = time.time()
        raw = [dict(i) for i in items]
        if any("params" in i for i in raw):
            return await self._send_templated(raw, source, chunk, now)
        q = self.qcfg
        classes = frozenset(q.classes)
        msgs = [parse_plain(i, classes, q.max_segments, now)
                or parse_message(i, classes=q.classes, max_segments=q.max_segments, now=now,
                                 horizon_s=q.horizon_s) for i in raw]
        out: list[tuple[str, bool] | None] = []
        for start in range(0, len(msgs), chunk):
            part = msgs[start:start + chunk]
            await _chunk(out, len(msgs), self._queue.enqueue(part, source=source, now=now),
                         len(part))
        return cast(list[tuple[str, bool]], out)

    async def send_many(self, items: Iterable[Mapping[str, Any]], *, source: str = "client",
                        chunk: int = 2000) -> list[tuple[str, bool]]:
        """``send`` for big lists (issue 17: >= 100,000 messages/s from one process):
        every item is validated first (MessageError, nothing queued, at the first invalid
        one), then each chunk of plain messages is ONE Redis call (lua/enqueue_many.lua:
        status record, idempotency key, entry and event of each); while it runs, the
        next chunk is packed. Returns (id, duplicate) per item, in order; MessageError
        ``duplicate_id`` and QueueFull (queue.max_queued: retry later) as ``send``.
        Items with ``params`` (templates) go as ``send``.
        """
        assert self._queue is not None, "use `async with Client(...)`"
        now = time.time()
        raw = items if isinstance(items, list) else list(items)
        if any("params" in i for i in raw):
            return await self._send_templated([dict(i) for i in raw], source, chunk, now)
        q = self.qcfg
        classes = frozenset(q.classes)
        msgs: list[OutboundMessage] = []
        for i in raw:
            # Plain items the short way; the others, and any it refuses, the general way
            # (which gives the exact error).
            m = parse_plain(i, classes, q.max_segments, now)
            if m is None:
                m = parse_message(i, classes=q.classes, max_segments=q.max_segments,
                                  now=now, horizon_s=q.horizon_s)
            msgs.append(m)
        chunks = [msgs[s:s + chunk] for s in range(0, len(msgs), chunk)]
        return await self._enqueue_chunks(chunks, source, now)

    async def _enqueue_chunks(self, chunks: list[list[OutboundMessage]], source: str,
                              now: float) -> list[tuple[str, bool]]:
        """The seam where chunks meet Redis (one round trip each; a retrying caller
        wraps ``_enqueue_chunk``). Two chunks are in flight at once (one packed in
        Python while Redis runs the other) unless an id or idempotency key repeats
        across the list: then they go one by one, so the first copy is the one queued.
        Every chunk is queued; messages past their class's queue.max_queued are refused
        (QueueFull, retryable, naming them), ids already another message's too
        (MessageError ``duplicate_id``), at the end (as QueueStore.enqueue does)."""
        keys: set[tuple[str, str]] = set()
        total = 0
        for part in chunks:
            for m in part:
                keys.add(("", m.id))
                total += 1
                if m.idempotency_key:
                    keys.add((m.category, m.idempotency_key))
                    total += 1
        results: list[list[tuple[str, str]]] = []
        if len(keys) < total or len(chunks) < 2:
            for part in chunks:
                results.append(await self._enqueue_chunk(part, source, now))
        else:
            # Tasks start in creation order: chunk k is sent before k+1 is packed.
            pending: asyncio.Task[list[tuple[str, str]]] | None = None
            try:
                for part in chunks:
                    task = asyncio.ensure_future(self._enqueue_chunk(part, source, now))
                    if pending is not None:
                        results.append(await pending)
                    pending = task
                assert pending is not None
                results.append(await pending)
                pending = None
            finally:
                if pending is not None:  # a failed chunk: the other one still ends
                    await asyncio.gather(pending, return_exceptions=True)
        out = [r for part in results for r in part]
        assert self._queue is not None
        self._queue.raise_full([m for part in chunks for m in part], out)
        taken = [i for i, outcome in out if outcome == ID_TAKEN]
        if taken:
            raise MessageError("id", f"{', '.join(taken)}: already used by another message "
                                     "(the others were queued)", code="duplicate_id")
        return [(i, outcome == DUPLICATE) for i, outcome in out]

    async def _enqueue_chunk(self, msgs: list[OutboundMessage], source: str,
                             now: float) -> list[tuple[str, str]]:
        """One chunk, one Redis call: (id, QUEUED | DUPLICATE | ID_TAKEN) per message."""
        assert self._queue is not None, "use `async with Client(...)`"
        return await self._queue.enqueue_each(msgs, source=source, now=now)

    async def _send_templated(self, raw: list[dict[str, Any]], source: str, chunk: int,
                              now: float) -> list[tuple[str, bool]]:
        """Items with ``template`` + ``params``: rendered against the registry (only
        approved templates), with short links when the config has ``[links]``."""
        assert self._queue is not None
        if self._intake is None:
            cfg = self._config or Config(queue=self.qcfg)
            self._intake = TemplateIntake(self.redis, self.keys, cfg)
        out: list[tuple[str, bool] | None] = []
        for start in range(0, len(raw), chunk):
            part = raw[start:start + chunk]
            await self._intake.prepare(part)
            msgs: list[OutboundMessage] = []
            links: dict[int, list[NewLink]] = {}
            for item in part:
                msg, new = self._intake.parse(item, now)
                if new:
                    links[len(msgs)] = new
                msgs.append(msg)
            await _chunk(out, len(raw), self._queue.enqueue(
                msgs, source=source, now=now, links=links,
                link_ttl_s=self._intake.link_ttl_s), len(msgs))
        return cast(list[tuple[str, bool]], out)

    async def status(self, msg_id: str) -> dict[str, Any] | None:
        return await read_status(self.redis, self.keys, msg_id)

    async def events(self, start: str = "-", count: int = 1000) -> list[dict[str, str]]:
        rows: list[tuple[str, dict[str, str]]] = cast(
            Any, await self.redis.xrange(self.keys.events, min=start, count=count))
        return [dict(fields, stream_id=sid) for sid, fields in rows]


def verify_webhook(secret: str | bytes, body: bytes, signature: str, *,
                   tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Check a webhook request gatewayd sent: ``body`` as received (raw bytes) and its
    ``X-Gatewayd-Signature`` header; False when forged, altered or older than
    ``tolerance_s`` (README "Webhooks")."""
    from gatewayd.webhooks.signing import verify

    return verify(secret, body, signature, tolerance_s=tolerance_s, now=now)
