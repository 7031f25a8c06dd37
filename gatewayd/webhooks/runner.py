"""The webhook sender's reader: the events and MO streams, read from a saved cursor.

The outbox is the streams themselves: the scripts that record a state change append its
event in the same call, so sending webhooks adds no write to the hot path. One runner at
a time holds the lease (``Keys.lease("webhooks")``: in a daemon with webhooks.enabled,
or ``gatewayd webhooks run``) and reads each stream from its cursor
(``Keys.webhook_cursor``). Each entry becomes its JSON once, is routed in memory to the
endpoints that want it, and is done when every one of them is done with it: answered
2xx, or the event is in that endpoint's retry queue or dead-letter stream. The cursor
moves past an entry only when it and every entry before it are done, so a runner that
dies (kill -9) or loses Redis sends again, from the cursor, what was not done: at least
once, never lost. Delivering costs Redis one XREAD a batch and one HSET a flush; only
failures write more.

Retention: the events stream is capped (queue.events_maxlen, trimmed by the scripts that
append to it). Entries the runner has not read when the cap passes them are lost to the
webhooks: gatewayd_webhook_stream_lag_seconds and the GatewaydWebhookSenderLagging alert
say when it falls behind long before that (a million entries at the default), and
gatewayd_webhook_stream_gaps_total counts a cap that passed it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Any, cast

from aiohttp.abc import AbstractResolver
from redis.asyncio import ConnectionPool

from gatewayd.config import Config
from gatewayd.model import FINAL_STATES
from gatewayd.ops import metrics
from gatewayd.store.connection import Redis, is_cluster, load_script
from gatewayd.store.keys import Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import subscriptions as subs
from gatewayd.webhooks import targets
from gatewayd.webhooks.sender import EndpointSender, Entry, Item

log = logging.getLogger("gatewayd.webhooks")
_NAMES = {"e": "events", "m": "mo"}
# An endpoint whose in-memory queue stays above its high-water mark this long is slow:
# its later events wait in its retry queue instead of holding the reader back.
SLOW_AFTER_S = 5.0
# After a read that was not full, the next comes this much later at the soonest. The
# sender working from a trickle (reads of ~100-150 events at e2e rates) cost about twice
# the CPU an event it does on a backlog: per read an XREAD, a cursor HSET, every
# endpoint's hand-over and a wake-up, and part-full requests. At 20,000 events/s a read
# now brings ~400 (sender CPU an event 17.5 -> 10.2 us in paired runs; 10 ms: 11.2 us,
# 50 ms: 11.8 us). An idle stream is unaffected (the read blocks and returns on the
# first new entry); a busy one adds at most this to an event's way out.
READ_INTERVAL_S = 0.02


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class WebhookRunner:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config, *, read_count: int = 1000,
                 block_ms: int = 50, resolver: AbstractResolver | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.read_count = read_count
        self.block_ms = block_ms
        self.streams = {"e": keys.events, "m": keys.inbound}
        self.senders: dict[str, EndpointSender] = {}
        self.router = subs.Router([])
        # Per router: (tenant, kind) -> the ``incoming`` lists of the senders it goes to.
        self._targets: dict[tuple[str, str], tuple[list[Item], ...]] = {}
        self._targets_of: subs.Router | None = None
        # Names to addresses (None: the system's resolver); every connection's addresses
        # are checked on the way (``guard``) and used as they were checked.
        self.resolver = resolver
        self.guard: AbstractResolver = targets.GuardedResolver(
            resolver, allow_private=cfg.webhooks.allow_private)
        self._lease = load_script(redis, "lease")
        self._release = load_script(redis, "lease_release")
        self._reader = _raw_reader(redis)
        # Per stream, per length of an entry's field list: (field names as read, how
        # such entries become JSON (None: by body.py's event_of)); a handful of shapes.
        self._shapes: dict[str, dict[int, list[tuple[list[bytes], bodies.Shape | None]]]] = {
            "e": {}, "m": {}}
        self._token = uuid.uuid4().hex
        self.holding = False
        self.backlog_reading = False
        # Entries read and not yet passed by the cursor, in stream order, per stream.
        self.order: dict[str, deque[Entry]] = {"e": deque(), "m": deque()}
        self.read_pos: dict[str, str] = {}  # the last entry read (where XREAD goes on)
        self.cursor: dict[str, str] = {}  # the last entry done with everything before it
        self._saved: dict[str, str] = {}
        self.max_in_memory = max(1000, 4 * cfg.webhooks.max_in_memory)
        self.ready = asyncio.Event()  # set once the runner holds the lease and reads
        self._gap_seen: dict[str, bool] = {"e": False, "m": False}
        # Messages with a callback_url (message id -> URL) until their final event, and
        # one sender per callback URL (dropped once idle).
        self.callbacks: dict[str, str] = {}
        self.callback_senders: dict[str, EndpointSender] = {}
        self._callback_writes: list[tuple[str, str]] = []  # (id, url or "" to forget)

    def in_memory(self) -> int:
        return len(self.order["e"]) + len(self.order["m"])

    # The cursor ----------------------------------------------------------------------
    async def prepare(self) -> None:
        """Make the cursor if there is none yet: at the streams' ends (what they hold is
        history). The daemon calls this before it dispatches, so that its first events
        are sent even when the reader starts a moment later."""
        for s, stream in self.streams.items():
            last = cast(list[Any], await self.redis.xrevrange(stream, count=1))
            await self.redis.hsetnx(self.keys.webhook_cursor, _NAMES[s],
                                    last[0][0] if last else "0-0")

    async def _load_cursor(self) -> None:
        await self.prepare()
        saved = cast(dict[str, str], await self.redis.hgetall(self.keys.webhook_cursor))
        for s in self.streams:
            pos = saved[_NAMES[s]]
            self.cursor[s] = self.read_pos[s] = self._saved[s] = pos
            self.order[s].clear()
        self.callbacks = cast(dict[str, str],
                              await self.redis.hgetall(self.keys.webhook_callbacks))
        urls = cast(dict[str, str], await self.redis.hgetall(self.keys.webhook_callback_urls))
        for name, url in urls.items():
            if await self.redis.zcard(self.keys.webhook_queue(name)):
                self._callback_sender(url)
            else:
                await self.redis.hdel(self.keys.webhook_callback_urls, name)

    async def save_cursor(self) -> None:
        changed: dict[Any, Any] = {}
        for s, order in self.order.items():
            last = None
            while order and order[0].left <= 0:
                last = order.popleft().id
            if last is not None:
                self.cursor[s] = last.decode()
            if self.cursor.get(s) and self.cursor[s] != self._saved.get(s):
                changed[_NAMES[s]] = self.cursor[s]
        if changed:
            await self.redis.hset(self.keys.webhook_cursor, mapping=changed)
            for s, name in _NAMES.items():
                if name in changed:
                    self._saved[s] = changed[name]

    # Subscriptions -------------------------------------------------------------------
    async def reload(self) -> None:
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.webhook_endpoints))
        paused = set(await self.redis.smembers(self.keys.webhook_paused))
        configured = {c.name for c in self.cfg.webhooks.endpoints}
        endpoints = subs.from_config(self.cfg) + [
            e for e in subs.from_redis(raw, self.cfg) if e.name not in configured]
        wanted = {e.name: e for e in endpoints}
        for name in list(self.senders):
            s = self.senders[name]
            if name not in wanted or wanted[name] != s.ep:
                if s.live or s.in_flight or s.spill:
                    continue  # removed or changed: applied once what it holds went
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
        now = time.monotonic()
        for name, s in list(self.callback_senders.items()):
            if s.live or s.in_flight or s.spill or s.queued:
                s.idle_since = 0.0
            elif not s.idle_since:
                s.idle_since = now
            elif now - s.idle_since > 60.0:
                del self.callback_senders[name]
                await s.close()
                await self.redis.hdel(self.keys.webhook_callback_urls, name)

    # Reading -------------------------------------------------------------------------
    def route(self, s: str, rows: list[Any]) -> None:
        """Route XREAD's entries as Redis sent them: [entry id, [field, value, ...]],
        bytes (the reader's connection does not decode)."""
        # Runs for every event: locals; the endpoints of a (tenant, kind) cached as their
        # senders' inboxes (each sender takes its inbox once a read, not an event a call),
        # keyed by the bytes as read (decoded only to fill the cache). Each entry routed
        # from its values as read (its shape's getters), then, only if it goes anywhere,
        # its JSON joined from its shape's pieces and those values (bodies.ready: no
        # dict, no str of each field, no encoder); the unusual ones by body.py
        # (``_made``). Entry and Item are Structs made in C. Entry ids and message ids
        # stay bytes (the cursor's id is decoded once a read, when it moves).
        if self._targets_of is not self.router:  # (tenant, kind) -> its senders' inboxes
            self._targets_of = self.router
            self._targets.clear()
        targets = self._targets
        shapes = self._shapes[s]
        order = self.order[s]
        callbacks = self.callbacks
        ready = bodies.ready
        rid = b""
        shape: Any  # a Shape where ready() is called (None: made by _made)
        for rid, flat in rows:
            if flat is None:  # no fields: an event of ours alone, as event_of makes it
                flat = []
            # The shape: the entries of a length's shapes (a handful), their names
            # compared as a list (one slice and an element-wise compare: no join, no
            # hash of the names an entry).
            names = flat[0::2]
            for known, shape in shapes.get(len(flat), ()):  # noqa: B007 (used after break)
                if known == names:
                    break
            else:
                shape = bodies.shape_of(s, tuple(names))
                shapes.setdefault(len(flat), []).append((names, shape))
            data: bytes | None = None
            if shape is not None:  # routed from the bytes; JSON only if it goes anywhere
                flat += (rid, b"", b"mo")
                tenant, kind, msg, cb = shape.route(flat)
            else:
                made = self._made(s, rid.decode(), flat)
                if made is None:  # malformed: skipped (logged), done with
                    self._done(s, order, rid)
                    continue
                kind, tenant, msg, cb, data = made
            try:  # (zero cost unless raised: one bad value skips its entry, not the read)
                inboxes = targets.get((tenant, kind))
                if inboxes is None:
                    t = tenant if type(tenant) is str else tenant.decode()
                    k = kind if type(kind) is str else kind.decode()
                    inboxes = targets[(tenant, kind)] = tuple(
                        self.senders[ep.name].incoming for ep in self.router.route(t, k))
                if cb or (callbacks and msg):
                    url = cb if type(cb) is str else cb.decode()
                    t = tenant if type(tenant) is str else tenant.decode()
                    k = kind if type(kind) is str else kind.decode()
                    snd = self._callback(s, msg.decode(), url, t, k)
                    if snd is not None:
                        inboxes = (*inboxes, snd.incoming)
            except UnicodeDecodeError as e:  # a tenant, kind, id or callback not UTF-8
                log.error("webhooks: %s entry %s skipped, it cannot be sent: %s: %s",
                          _NAMES[s], rid.decode(), type(e).__name__, e)
                self._done(s, order, rid)
                continue
            if not inboxes:
                self._done(s, order, rid)
                continue
            if data is None:
                data = ready(shape, flat)
                if data is None:  # an unusual value: event_of's way
                    made = self._made(s, rid.decode(), flat[:-3])
                    if made is None:
                        self._done(s, order, rid)
                        continue
                    data = made[4]
            entry = Entry(rid, len(inboxes))
            order.append(entry)
            for inbox in inboxes:
                inbox.append(Item(entry, data, msg, rid, None))
        for snd in (*self.senders.values(), *self.callback_senders.values()):
            snd.take()
        if rid:
            self.read_pos[s] = rid.decode()

    def _done(self, s: str, order: deque[Entry], entry_id: bytes) -> None:
        """An entry that goes nowhere (or is skipped): done as soon as it is read."""
        if order:
            order.append(Entry(entry_id, 0))
        else:
            self.cursor[s] = entry_id.decode()  # nothing before it is waiting

    def _made(self, s: str, entry_id: str, fields: list[Any]
              ) -> tuple[str, str, bytes, str, bytes] | None:
        """(kind, tenant, message id (bytes, as the shapes' entries have it: the sender's
        ordering compares them), callback URL, JSON) of an entry its shape's
        template does not make, made by body.py's event_of (every event's way before
        the templates); None for one that cannot be made (logged with the reason and
        skipped: one entry never fails its read)."""
        try:
            pairs = [f if type(f) is str else f.decode() for f in fields]
            it = iter(pairs)
            event = bodies.new_event(s, entry_id, zip(it, it, strict=True))
            kind = event["kind"]
            tenant = event.get("tenant", "")
            msg = "" if s == "m" else event.get("id", "")
            cb = "" if s == "m" else event.get("callback", "")
            return (kind, tenant, msg.encode(), cb,
                    bodies.encode(bodies.finish_event(s, event)))
        except Exception as e:
            log.error("webhooks: %s entry %s skipped, it cannot be sent: %s: %s",
                      _NAMES[s], entry_id, type(e).__name__, e)
            return None

    def _callback(self, s: str, msg: str, url: str, tenant: str, kind: str
                  ) -> EndpointSender | None:
        """The sender of the message's own callback_url (``url``: the event's, "" when it
        carries none), if it has one its tenant may name (webhooks.callback_prefixes);
        remembers it until the final event."""
        if s != "e":
            return None
        if url:
            if msg and self.callbacks.get(msg) != url and kind not in FINAL_STATES:
                self.callbacks[msg] = url
                self._callback_writes.append((msg, url))
        elif msg:
            url = self.callbacks.get(msg, "")
        if not url:
            return None
        if kind in FINAL_STATES and msg in self.callbacks:
            del self.callbacks[msg]
            self._callback_writes.append((msg, ""))
        if not subs.callback_allowed(url, tenant, self.cfg):
            metrics.WEBHOOK_FAILED.labels("callback", "refused").inc()
            return None
        return self._callback_sender(url)

    def _callback_sender(self, url: str) -> EndpointSender:
        ep = subs.callback_endpoint(url, self.cfg)
        sender = self.callback_senders.get(ep.name)
        if sender is None:
            sender = self.callback_senders[ep.name] = EndpointSender(ep, self)
            sender.stored = 1  # the next tick counts its retry queue
            self._callback_writes.append((ep.name, "url:" + url))
        sender.idle_since = 0.0
        return sender

    async def _read(self, block: int | None) -> int:
        replies: list[Any]
        if self._reader is None:  # a cluster: one slot a call; entries made flat as sent
            replies = []
            for s in self.streams:
                r = cast(list[Any], await self.redis.xread(
                    {self.streams[s]: self.read_pos[s]}, count=self.read_count, block=None))
                for stream, rows in r or []:
                    # As the reader's connection has them: bytes (made JSON as there).
                    replies.append((stream, [
                        (i.encode(), [x.encode() for kv in (f or {}).items() for x in kv])
                        for i, f in rows]))
            if not replies and block:
                await asyncio.sleep(block / 1000)
        else:
            streams: Any = {self.streams[s]: self.read_pos[s] for s in self.streams}
            reply: Any = await self._reader.xread(streams, count=self.read_count, block=block)
            # RESP3 answers a map, RESP2 (Redis 6 without HELLO 3) a list of pairs.
            replies = list(reply.items()) if isinstance(reply, dict) else list(reply or [])
        tag = {v: k for k, v in self.streams.items()}
        now_ms = time.time() * 1000
        n = 0
        if replies:
            for snd in (*self.senders.values(), *self.callback_senders.values()):
                snd.fed = False
        for stream, rows in replies:
            s = tag[stream if isinstance(stream, str) else stream.decode()]
            if rows:
                full = len(rows) >= self.read_count
                lag = (now_ms - _id(rows[0][0].decode())[0]) / 1000 if full else 0.0
                metrics.WEBHOOK_LAG.labels(_NAMES[s]).set(max(0.0, lag))
            self.route(s, rows)
            n += len(rows)
        self.backlog_reading = n >= self.read_count
        if not replies:
            for name in _NAMES.values():
                metrics.WEBHOOK_LAG.labels(name).set(0.0)
        return n

    async def _flush(self) -> None:
        if self._callback_writes:
            writes, self._callback_writes = self._callback_writes, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for msg, url in writes:
                        if url.startswith("url:"):
                            pipe.hset(self.keys.webhook_callback_urls, msg, url[4:])
                        elif url:
                            pipe.hset(self.keys.webhook_callbacks, msg, url)
                        else:
                            pipe.hdel(self.keys.webhook_callbacks, msg)
                    await pipe.execute()
            except BaseException:
                self._callback_writes[:0] = writes
                raise
        senders = [s for s in (*self.senders.values(), *self.callback_senders.values())
                   if s.spill]
        if senders:
            await asyncio.gather(*(s.store_spill() for s in senders))
        await self.save_cursor()

    def _congested(self) -> bool:
        """Wait before reading more while an endpoint is briefly behind (its events stay
        in memory, no Redis write), but only while no other endpoint of the traffic has
        run out of events: the wait never delays another endpoint (nor a callback URL's),
        it only spares the one behind its retry queue. One behind for SLOW_AFTER_S is slow
        and takes its later events through its retry queue."""
        now = time.monotonic()
        wait = False
        for s in self.senders.values():
            if not s.queued and len(s.live) >= s.high_water:
                if not s.congested_since:
                    s.congested_since = now
                if now - s.congested_since < SLOW_AFTER_S:
                    wait = True
                else:
                    s.slow = True
            else:
                s.congested_since = 0.0
        if wait:
            for s in (*self.senders.values(), *self.callback_senders.values()):
                if s.fed and not s.live and not s.queued and not s.paused:
                    return False  # it waits for what the next read brings
        return wait

    async def _unpin(self) -> None:
        """The entries in memory reached their bound: the endpoints holding the oldest
        not-done ones (a hung request, a queue behind) put what they hold in their retry
        queues, so that the cursor moves on and the reader reads for the others."""
        await self.save_cursor()
        if self.in_memory() < self.max_in_memory:
            return
        heads = [order[0] for order in self.order.values() if order]
        for s in (*self.senders.values(), *self.callback_senders.values()):
            if any(s.holds(h) for h in heads):
                await s.secure()
        await self.save_cursor()

    async def _hold_lease(self) -> bool:
        ttl = int(max(3.0, 5 * self.cfg.daemon.housekeeping_interval_s) * 1000)
        held = bool(await self._lease(keys=[self.keys.lease("webhooks")],
                                      args=[self._token, ttl]))
        if held != self.holding:
            log.info("webhooks: %s the sender's lease", "holding" if held else "lost")
        self.holding = held
        return held

    async def _tick(self) -> None:
        """Once a second: lease, subscriptions, per-endpoint gauges, a passed cap."""
        await self._hold_lease()
        await self.reload()
        now = time.time()
        for s in (*self.senders.values(), *self.callback_senders.values()):
            s.stored = int(await self.redis.zcard(s.qkey))
            if s.stored and not s.queued:  # put there by `gatewayd webhooks replay`
                s.queued = True
                s.wake.set()
            oldest = 0.0
            if s.stored:
                first = cast(list[tuple[str, float]],
                             await self.redis.zrange(s.qkey, 0, 0, withscores=True))
                if first:
                    oldest = now - first[0][1] / 4096 / 1000
            elif s.live:
                oldest = now - s.live[0].position() / 4096 / 1000
            metrics.WEBHOOK_BACKLOG.labels(s.label).set(s.backlog())
            metrics.WEBHOOK_OLDEST.labels(s.label).set(max(0.0, oldest))
        for tag, stream in self.streams.items():
            if tag not in self.read_pos:
                continue
            head = cast(list[Any], await self.redis.xrange(stream, count=1))
            gap = bool(head) and _id(head[0][0]) > _id(self.read_pos[tag]) and \
                await self.redis.xlen(stream) >= 0.9 * self.cfg.queue.events_maxlen
            if gap and not self._gap_seen[tag]:
                metrics.WEBHOOK_GAPS.labels(_NAMES[tag]).inc()
                log.error("webhooks: the %s stream's cap passed events not yet sent "
                          "(queue.events_maxlen); some are lost to the webhooks",
                          _NAMES[tag])
            self._gap_seen[tag] = gap

    async def run(self, stop: asyncio.Event) -> None:
        # Each endpoint's sender has its own connections (gatewayd.webhooks.transport:
        # no cookies, no proxy, redirects not followed), made through ``guard``.
        try:
            await self._run(stop)
        finally:
            for s in (*self.senders.values(), *self.callback_senders.values()):
                await s.close()
            try:
                await self.save_cursor()
                if self.holding:
                    # Given back, not left to expire: a sender taking over (after a
                    # daemon's --burst run, a restart) starts at once, from the cursor.
                    await self._release(keys=[self.keys.lease("webhooks")],
                                        args=[self._token])
                    self.holding = False
            except Exception:  # Redis away: the lease expires on its own
                pass
            if self.resolver is None:  # ours (a given one is its owner's to close)
                await self.guard.close()
            if self._reader is not None:
                await self._reader.connection_pool.disconnect()

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
                    if started:  # another runner took over: it resends what we held
                        for s in (*self.senders.values(), *self.callback_senders.values()):
                            await s.close()
                        self.senders.clear()
                        self.callback_senders.clear()
                    started = False
                    await _wait(stop, 1.0)
                    continue
                if not started:
                    await self._load_cursor()
                    started = True
                    self.ready.set()
                if self.in_memory() >= self.max_in_memory:
                    await self._unpin()
                if self.in_memory() >= self.max_in_memory or self._congested():
                    await self._flush()
                    await _wait(stop, 0.005)
                    continue
                began = time.monotonic()
                n = await self._read(self.block_ms)
                await self._flush()
                if 0 < n < self.read_count:
                    rest = READ_INTERVAL_S - (time.monotonic() - began)
                    if rest > 0:
                        await _wait(stop, rest)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: what is in memory waits, nothing is lost
                log.warning("webhooks: %s: %s", type(e).__name__, e)
                await _wait(stop, 1.0)


def _raw_reader(redis: Redis) -> Redis | None:
    """A client of its own (one connection: the reader is one task) whose XREAD answers
    the reply as hiredis made it, bytes: no str made of each field (route() makes the
    JSON from the bytes; entry and message ids are decoded, tenants and kinds only to
    fill the routing cache), nor redis-py's per-entry tuples and dicts. None on a
    cluster (its clients are per node; _read converts its answers instead)."""
    if is_cluster(redis):
        return None
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    raw = Redis(connection_pool=ConnectionPool(
        connection_class=pool.connection_class, max_connections=2, **kwargs))
    raw.set_response_callback("XREAD", _as_sent)
    return raw


def _as_sent(response: Any, **_options: Any) -> Any:
    return response


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
