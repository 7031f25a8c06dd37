"""The webhook sender's reader: a consumer group on the events and MO streams.

One runner at a time holds the lease (``Keys.lease("webhooks")``) and reads as the
group's one consumer, so a runner that takes over (in another daemon, or a restarted
``gatewayd webhooks run``) first re-reads what its predecessor left unacknowledged.
Each entry is turned into its JSON once, routed in memory to the endpoints that want
it, and acknowledged when every one of them is done with it: answered 2xx, or the event
is in that endpoint's retry queue or dead-letter stream. Delivering costs Redis one
XREADGROUP and one XACK a batch; only failures write more.

Retention: the events stream is capped (queue.events_maxlen, trimmed by the scripts that
append to it). Entries the group has not read when the cap passes them are lost to the
webhooks; gatewayd_webhook_stream_lag_seconds and the GatewaydWebhookLagging alert say
when the sender falls behind long before that (a million entries at the default).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, cast

import aiohttp
import msgspec
from redis.exceptions import ResponseError

from gatewayd.config import Config
from gatewayd.ops import metrics
from gatewayd.store.connection import Redis, is_cluster, load_script
from gatewayd.store.keys import WEBHOOK_GROUP, Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import subscriptions as subs
from gatewayd.webhooks.sender import EndpointSender, Entry, Item, score_of

log = logging.getLogger("gatewayd.webhooks")
CONSUMER = "webhooks"  # the group's one consumer (whoever holds the lease)
_STREAM_TAG = {"e": "events", "m": "mo"}


class WebhookRunner:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config, *, read_count: int = 1000,
                 block_ms: int = 50) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.read_count = read_count
        self.block_ms = block_ms
        self.streams = {"e": keys.events, "m": keys.inbound}
        self.senders: dict[str, EndpointSender] = {}
        self.router = subs.Router([])
        self.acks: dict[str, list[str]] = {"e": [], "m": []}
        # The last entry routed from each stream: after a Redis error the runner re-reads
        # only pending entries past it (those before are in memory still).
        self.seen: dict[str, str] = {"e": "0", "m": "0"}
        self.session: aiohttp.ClientSession
        self._lease = load_script(redis, "lease")
        self._token = uuid.uuid4().hex
        self.holding = False
        self.in_memory = 0
        self.max_in_memory = max(1000, 4 * cfg.webhooks.max_in_memory)
        self.ready = asyncio.Event()  # set once the runner holds the lease and reads

    # Acknowledging -------------------------------------------------------------------
    def _done(self, stream: str, entry_id: str) -> None:
        self.acks[stream].append(entry_id)
        self.in_memory -= 1

    async def flush_acks(self) -> None:
        for s, ids in self.acks.items():
            if ids:
                self.acks[s] = []
                try:
                    await self.redis.xack(self.streams[s], WEBHOOK_GROUP, *ids)
                except BaseException:
                    self.acks[s][:0] = ids
                    raise

    # Subscriptions -------------------------------------------------------------------
    async def reload(self) -> None:
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.webhook_endpoints))
        paused = set(await self.redis.smembers(self.keys.webhook_paused))
        endpoints = subs.from_config(self.cfg) + [
            e for e in subs.from_redis(raw, self.cfg)
            if e.name not in {c.name for c in self.cfg.webhooks.endpoints}]
        wanted = {e.name: e for e in endpoints}
        for name in list(self.senders):
            s = self.senders[name]
            if name not in wanted or wanted[name] != s.ep:
                if name not in wanted and (s.live or s.in_flight):
                    continue  # removed: let what it holds go first
                if name in wanted and (s.live or s.in_flight or s.spill):
                    continue  # changed: applied once it is idle
                del self.senders[name]
                await s.close()
        for name, e in wanted.items():
            if name not in self.senders:
                s = self.senders[name] = EndpointSender(e, self)
                s.stored = int(await self.redis.zcard(s.qkey))
                if s.stored:
                    s.queued = True  # what waits from before goes first
                    s.wake.set()
            self.senders[name].set_paused(name in paused)
        self.router = subs.Router([s.ep for s in self.senders.values()
                                   if s.ep.name in wanted])

    # Reading -------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        for stream in self.streams.values():
            try:
                await self.redis.xgroup_create(stream, WEBHOOK_GROUP, id="$", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def route(self, s: str, rows: list[tuple[str, dict[str, str] | None]]) -> None:
        senders = self.senders
        route = self.router.route
        acks = self.acks[s]
        for entry_id, fields in rows:
            if not fields:  # trimmed while pending: nothing left to send
                acks.append(entry_id)
                continue
            kind = bodies.kind_of(s, fields)
            eps = route(fields.get("tenant", ""), kind)
            if not eps:
                acks.append(entry_id)
                continue
            event = bodies.event_of(s, entry_id, fields)
            data = bodies.encode(event)
            entry = Entry(s, entry_id, len(eps), self._done)
            self.in_memory += 1
            score = score_of(entry_id)
            msg = fields.get("id", "") if s == "e" else ""
            for ep in eps:
                senders[ep.name].offer(Item(entry, data, msg, score, event))
        if rows:
            self.seen[s] = rows[-1][0]

    async def _read(self, ids: dict[str, str], block: int | None) -> int:
        streams: Any = {self.streams[s]: i for s, i in ids.items()}
        if is_cluster(self.redis) and len(streams) > 1:  # one slot a call on a cluster
            n = 0
            for s, i in ids.items():
                n += await self._read({s: i}, None)
            return n
        reply: Any = await self.redis.xreadgroup(
            WEBHOOK_GROUP, CONSUMER, streams, count=self.read_count, block=block)
        n = 0
        tag = {v: k for k, v in self.streams.items()}
        now_ms = time.time() * 1000
        for stream, rows in reply or []:
            name = stream if isinstance(stream, str) else stream.decode()
            s = tag[name]
            self.route(s, rows)
            n += len(rows)
            if ids[s] == ">" and rows:
                lag = (now_ms - int(rows[0][0].split("-")[0])) / 1000 \
                    if len(rows) >= self.read_count else 0.0
                metrics.WEBHOOK_LAG.labels(_STREAM_TAG[s]).set(max(0.0, lag))
            if ids[s] != ">" and rows:
                ids[s] = rows[-1][0]
        return n

    async def _pending(self) -> None:
        """What this group's consumer read before and never acknowledged, in order."""
        for s in self.streams:
            ids = {s: self.seen[s]}
            while await self._read(ids, None):
                await self._flush()

    async def _flush(self) -> None:
        senders = [s for s in self.senders.values() if s.spill]
        if senders:
            await asyncio.gather(*(s.store_spill() for s in senders))
        await self.flush_acks()

    async def _hold_lease(self) -> bool:
        ttl = int(max(3.0, 5 * self.cfg.daemon.housekeeping_interval_s) * 1000)
        held = bool(await self._lease(keys=[self.keys.lease("webhooks")],
                                      args=[self._token, ttl]))
        if held != self.holding:
            log.info("webhooks: %s the sender's lease", "holding" if held else "lost")
        self.holding = held
        return held

    async def _tick(self) -> None:
        """Once a second: lease, subscriptions, per-endpoint gauges."""
        await self._hold_lease()
        await self.reload()
        now = time.time()
        for s in self.senders.values():
            if s.queued:
                s.stored = int(await self.redis.zcard(s.qkey))
            oldest = 0.0
            if s.stored:
                first = cast(list[tuple[str, float]],
                             await self.redis.zrange(s.qkey, 0, 0, withscores=True))
                if first:
                    oldest = now - first[0][1] / 4096 / 1000
            elif s.live:
                oldest = now - s.live[0].score / 4096 / 1000
            metrics.WEBHOOK_BACKLOG.labels(s.label).set(s.backlog())
            metrics.WEBHOOK_OLDEST.labels(s.label).set(max(0.0, oldest))

    async def run(self, stop: asyncio.Event) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            json_serialize=lambda o: msgspec.json.encode(o).decode())
        try:
            await self._run(stop)
        finally:
            for s in list(self.senders.values()):
                await s.close()
            try:
                await self.flush_acks()
            except Exception:
                pass
            await self.session.close()

    async def _run(self, stop: asyncio.Event) -> None:
        last_tick = 0.0
        started = False
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    last_tick = now
                    await self._tick()
                if not self.holding:
                    started = False
                    await _wait(stop, 1.0)
                    continue
                if not started:
                    await self.ensure_groups()
                    await self._pending()
                    started = True
                    self.ready.set()
                if self.in_memory >= self.max_in_memory:
                    await self._flush()
                    await _wait(stop, 0.01)
                    continue
                await self._read({"e": ">", "m": ">"}, self.block_ms)
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("webhooks: %s: %s", type(e).__name__, e)
                started = False  # re-read what is pending once Redis is back
                await _wait(stop, 1.0)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
