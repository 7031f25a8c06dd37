"""One endpoint's deliveries: its in-memory queue, requests, retries and dead letters.

An endpoint is either live (events go from memory to it, up to ``concurrency`` requests
at once, at most ``rate_per_s`` a second) or queued: failing, paused or too slow, its
events wait in its Redis retry queue (a sorted set scored by stream position) and go
out from there one request at a time, after an exponential back-off with jitter (the
circuit breaker: one probe request per back-off while it fails). Nothing of one
endpoint waits for another's: each has its own task and queue.

Order: a later event of a message is held while an earlier one of the same message is
in flight, and the retry queue is read in stream order, so a final event never reaches
an endpoint before that message's ``submitted``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any, Protocol, cast

import msgspec
from aiohttp.abc import AbstractResolver

from gatewayd.config import Config
from gatewayd.ops import metrics
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import targets, transport
from gatewayd.webhooks.signing import EVENT_ID_HEADER, HEADER, sign
from gatewayd.webhooks.subscriptions import Endpoint, TargetRefused, check_target


class Host(Protocol):
    """What a sender needs of the runner that owns it (gatewayd.webhooks.runner)."""

    redis: Redis
    keys: Keys
    cfg: Config
    # Names to addresses for connections, every answer checked (targets.GuardedResolver).
    guard: AbstractResolver
    resolver: AbstractResolver | None  # names to addresses (None: the system's)
    backlog_reading: bool  # the last read was a full one: more events are coming

log = logging.getLogger("gatewayd.webhooks")
# Every request's Content-Type (a Kannel GET's too, as before).
_JSON = {"Content-Type": "application/json"}
_decode = msgspec.json.decode
# How long a partial batch waits for more while the reader has a backlog.
LINGER_S = 0.02
# Scores: stream time (ms) * 4096 + sequence, exact in a double until the year 2500.
SEQ = 4096


def score_of(entry_id: str | bytes) -> float:
    ms, _, seq = (entry_id if isinstance(entry_id, str) else entry_id.decode()).partition("-")
    return float(int(ms) * SEQ + min(int(seq or 0), SEQ - 1))


class Entry(msgspec.Struct, gc=False):
    """One stream entry; done once every endpoint it went to is done with it (``left``
    0: the runner's cursor passes it then). A msgspec Struct, not a class with an
    ``__init__``: one is made for every event read, and a Struct is made in C (~5x
    less CPU) and, with gc=False, never walked by the collector (it holds no cycle).
    ``id``: the entry id as read (bytes; decoded only for the cursor)."""

    id: bytes
    left: int


class Item(msgspec.Struct, gc=False):
    """One event on its way to one endpoint (``entry`` None: read from its retry queue,
    or done with; ``score`` 0 until it is needed, computed from ``sid``, its stream entry
    id; ``msg`` its message id, b"" for none, and ``sid`` as read: bytes). A Struct for
    the reason Entry is one: one is made an event an endpoint."""

    entry: Entry | None
    body: bytes
    msg: bytes
    sid: bytes
    event: dict[str, Any] | None
    score: float = 0.0

    def position(self) -> float:
        if not self.score:
            self.score = score_of(self.sid)
        return self.score

    def decoded(self) -> dict[str, Any]:
        if self.event is None:
            self.event = _decode(self.body)
        return self.event


def finish_all(items: list[Item]) -> None:
    """Each item done with: its entry's count down once (a loop, not a method call an
    event: it runs for every event sent)."""
    for i in items:
        e = i.entry
        if e is not None:
            e.left -= 1
            i.entry = None


class Flight:
    """One request's events; ``secured`` once copies of them sit in the retry queue (the
    request is stuck: its entries were let go so that the cursor does not wait for it)."""

    __slots__ = ("items", "landed", "secured")

    def __init__(self, items: list[Item]) -> None:
        self.items, self.secured, self.landed = items, False, False


class Outcome:
    OK, RETRY, DEAD = "ok", "retry", "dead"


class EndpointSender:
    def __init__(self, ep: Endpoint, runner: Host) -> None:
        self.ep = ep
        self.runner = runner
        self.label = "callback" if ep.source == "callback" else ep.name
        cfg = runner.cfg.webhooks
        self.max_in_memory = cfg.max_in_memory
        # Above this many events in memory the reader waits for it (SLOW_AFTER_S at
        # most; then it is ``slow`` and its later events wait in its retry queue).
        self.high_water = min(self.max_in_memory, max(200, 2 * ep.batch * ep.concurrency))
        self.congested_since = 0.0
        self.idle_since = 0.0  # a callback_url's sender: dropped after a minute idle
        self.slow = False
        self.live: deque[Item] = deque()
        self.incoming: list[Item] = []  # put here by the reader, taken once a read
        # Messages with events in flight. A message is in one request at a time (its later
        # events wait while it is in flight), so a set, added to and taken from a whole
        # request at once (C loops, not one of ours an event).
        self.busy: set[bytes] = set()
        self.flights: dict[asyncio.Task[None], Flight] = {}
        self.secure_lock = asyncio.Lock()  # copies written before a finished flight drops them
        self.fed = False  # the reader's last read brought it events
        self.in_flight = 0
        self.queued = False  # its events go to its Redis retry queue until that drains
        self.failing = False
        self.paused = False
        self.spill: list[Item] = []
        self.spilling = 0
        self.stored = 0  # events in its retry queue when last counted
        self.attempts = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.next_send = 0.0
        self.target_ok = False
        self.wake = asyncio.Event()
        self.sem = asyncio.Semaphore(ep.concurrency)
        self.qkey = runner.keys.webhook_queue(ep.name)
        self.dkey = runner.keys.webhook_dead(ep.name)
        # Made once, not per request: the connections, the request's head up to what
        # changes (signature, length) and the labelled metrics.
        self.http = transport.Client(size=ep.concurrency, resolver=runner.guard,
                                     ca_file=ep.ca_file)
        self.origin: transport.Origin | None = None
        self.head = b""
        self.m_delivered = metrics.WEBHOOK_DELIVERED.labels(self.label)
        self.m_latency = metrics.WEBHOOK_LATENCY.labels(self.label)
        self.closed = False
        self.task = asyncio.create_task(self.run(), name=f"webhook:{ep.name}")

    # Taking events -------------------------------------------------------------------
    def offer(self, item: Item) -> None:
        self.incoming.append(item)
        self.take()

    def take(self) -> None:
        """Take the events the reader put in ``incoming`` (one call a read, not one an
        event): to memory, or to its retry queue while it is queued, paused or full."""
        items = self.incoming
        if not items:
            return
        self.fed = True
        if self.queued or self.paused:
            self.spill.extend(items)
        elif self.slow or len(self.live) >= self.max_in_memory:
            # Too slow for the traffic: later events wait in Redis, sent once it catches up.
            self.queued = True
            self.spill.extend(items)
        else:
            room = self.max_in_memory - len(self.live)
            if len(items) > room:
                self.live.extend(items[:room])
                self.queued = True
                self.spill.extend(items[room:])
            else:
                self.live.extend(items)
            self.wake.set()
        items.clear()

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self.queued = True
            self.spill.extend(self.live)
            self.live.clear()
        self.wake.set()

    async def store_spill(self) -> None:
        """Write the events waiting to go to the retry queue, then let their entries go."""
        if not self.spill:
            return
        items, self.spill = self.spill, []
        self.spilling += 1
        try:
            await self.runner.redis.zadd(self.qkey, {i.body: i.position() for i in items})
        except BaseException:
            self.spill[:0] = items
            raise
        finally:
            self.spilling -= 1
        self.stored += len(items)
        finish_all(items)

    def holds(self, entry: Entry) -> bool:
        return any(i.entry is entry for i in self.live) or any(
            i.entry is entry for f in self.flights.values() for i in f.items)

    async def secure(self) -> None:
        """Put every event it holds in memory, waiting or in flight, in its retry queue and
        let their entries go: the reader's cursor never waits for a stuck endpoint. A
        request still open goes on; if it is answered 2xx its copies are removed, else they
        are sent again from the retry queue (at least once)."""
        if self.live:
            self.queued = True
            self.spill.extend(self.live)
            self.live.clear()
        async with self.secure_lock:
            flights = [f for f in self.flights.values() if not f.secured and not f.landed
                       and any(i.entry is not None for i in f.items)]
            items = [i for f in flights for i in f.items]
            if items:
                await self.runner.redis.zadd(self.qkey, {i.body: i.position() for i in items})
                self.stored += len(items)
                for f in flights:
                    f.secured = True
                finish_all(items)
        await self.store_spill()

    def backlog(self) -> int:
        return len(self.live) + self.in_flight + len(self.spill) + self.stored

    # The loop ------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.closed:
            try:
                if self.live and not self.failing:
                    await self._send_live()
                elif self.queued and not self.live and not self.paused:
                    if self.flights:  # failures of earlier requests go first
                        await asyncio.wait(set(self.flights))
                        continue
                    await self._drain()
                else:
                    await self.wake.wait()
                    self.wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: try again shortly
                log.warning("webhook %s: %s: %s", self.ep.name, type(e).__name__, e)
                await asyncio.sleep(1.0)

    async def _send_live(self) -> None:
        if len(self.live) < self.ep.batch and self.runner.backlog_reading:
            # The reader has more to read: a fuller batch soon costs fewer requests (with
            # 100 endpoints a read brings each only a few events).
            loop = asyncio.get_running_loop()
            until = loop.time() + LINGER_S
            while len(self.live) < self.ep.batch and self.runner.backlog_reading:
                left = until - loop.time()
                if left <= 0:
                    break
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except TimeoutError:
                    break
        # A free request slot first, then the batch: events wait for a slot in ``live``,
        # where secure() finds them, never in a batch of no request.
        await self.sem.acquire()
        try:
            if self.ep.rate_per_s > 0:
                now = time.monotonic()
                if self.next_send > now:
                    await asyncio.sleep(self.next_send - now)
                self.next_send = max(now, self.next_send) + 1.0 / self.ep.rate_per_s
        except BaseException:
            self.sem.release()
            raise
        limit = self.ep.batch
        busy = self.busy
        live = self.live
        # The common case in two comprehensions and one set operation (C loops, not a
        # loop of ours an event): the next ``limit`` events, none of whose messages is
        # in flight. Else they are gone through one by one: an event whose message is
        # in flight is held (with every later one of that message), the batch filled
        # from further on.
        pop = live.popleft
        batch = [pop() for _ in range(min(limit, len(live)))]
        seen = {i.msg for i in batch}
        seen.discard(b"")
        held: list[Item] = []
        if not busy.isdisjoint(seen):
            chunk, batch, seen = batch, [], set()
            for item in chunk:
                m = item.msg
                if m and m in busy:
                    held.append(item)  # an earlier event of its message is in flight
                    continue
                if m:
                    seen.add(m)
                batch.append(item)
            while live and len(batch) < limit and len(held) <= 4 * limit:
                item = pop()
                m = item.msg
                if m and m in busy:
                    held.append(item)
                    continue
                if m:
                    seen.add(m)
                batch.append(item)
        if held:
            self.live.extendleft(reversed(held))
            # Items behind a held one of the same message must stay behind it.
        if not batch:  # secure() took them meanwhile, or each waits for its message
            self.sem.release()
            if not self.live:
                return
            self.wake.clear()
            await self.wake.wait()
            return
        busy.update(seen)
        self.in_flight += len(batch)
        flight = Flight(batch)
        t = asyncio.create_task(self._fly(flight, seen))
        self.flights[t] = flight
        t.add_done_callback(self._landed)

    def _landed(self, t: asyncio.Task[None]) -> None:
        self.flights.pop(t, None)

    async def _fly(self, flight: Flight, msgs: set[bytes]) -> None:
        batch = flight.items
        try:
            outcome, error = await self._post(batch)
            async with self.secure_lock:  # copies being written land before they are dropped
                flight.landed = True
                copies = [i.body for i in batch] if flight.secured else None
            if outcome == Outcome.OK:
                finish_all(batch)
                if copies:
                    await self._drop_copies(copies)
            elif outcome == Outcome.DEAD:
                await self._dead(batch, error, copies)
            else:
                self._fail(error)
                if not copies:  # else they wait in the retry queue already
                    self.spill.extend(batch)
                self.spill.extend(self.live)
                self.live.clear()
                await self._store_until_done()
        finally:
            self.in_flight -= len(batch)
            self.busy.difference_update(msgs)
            self.sem.release()
            self.wake.set()

    async def _drop_copies(self, members: list[bytes]) -> None:
        try:
            await self.runner.redis.zrem(self.qkey, *members)
            self.stored = max(0, self.stored - len(members))
        except Exception as e:  # they stay queued: sent again, at least once
            log.warning("webhook %s: retry queue: %s", self.ep.name, e)

    async def _store_until_done(self) -> None:
        while self.spill:
            try:
                await self.store_spill()
            except Exception as e:
                log.warning("webhook %s: retry queue: %s", self.ep.name, e)
                await asyncio.sleep(1.0)

    def _fail(self, error: str) -> None:
        self.queued = True
        if not self.failing:
            log.warning("webhook %s failing: %s", self.ep.name, error)
        self.failing = True
        self.last_error = error
        self.attempts += 1
        base = self.runner.cfg.webhooks.backoff_min_s * (2 ** min(self.attempts - 1, 30))
        delay = min(self.runner.cfg.webhooks.backoff_max_s, base)
        self.retry_at = time.time() + delay * random.uniform(0.5, 1.0)
        metrics.WEBHOOK_OPEN.labels(self.label).set(1)

    async def _drain(self) -> None:
        """Send the retry queue in stream order, one request at a time."""
        now = time.time()
        if self.retry_at > now:
            try:
                await asyncio.wait_for(self.wake.wait(), self.retry_at - now)
            except TimeoutError:
                pass
            self.wake.clear()
            return
        await self._store_until_done()
        redis = self.runner.redis
        rows = cast(list[tuple[str, float]],
                    await redis.zrange(self.qkey, 0, self.ep.batch - 1, withscores=True))
        if not rows:
            if not self.spill and not self.spilling:
                self.queued = self.failing = self.slow = False
                self.attempts = 0
                self.stored = 0
                metrics.WEBHOOK_OPEN.labels(self.label).set(0)
            return
        batch = [Item(None, b.encode() if isinstance(b, str) else b, b"", b"", None, s)
                 for b, s in rows]
        self.in_flight += len(batch)
        try:
            outcome, error = await self._post(batch)
        finally:
            self.in_flight -= len(batch)
        members = [b for b, _s in rows]
        if outcome == Outcome.OK:
            await redis.zrem(self.qkey, *members)
            self.stored = max(0, self.stored - len(members))
            if self.failing:
                log.info("webhook %s delivering again", self.ep.name)
            self.failing = False
            self.attempts = 0
            metrics.WEBHOOK_OPEN.labels(self.label).set(0)
            return
        if outcome == Outcome.DEAD:
            await self._dead(batch, error, members)
            return
        self._fail(error)
        # Events retried past retry_for_s go to the dead-letter stream.
        horizon = (time.time() - self.runner.cfg.webhooks.retry_for_s) * 1000 * SEQ
        old = [(i, m) for i, m in zip(batch, members, strict=True) if i.score < horizon]
        if old:
            await self._dead([i for i, _m in old], error, [m for _i, m in old])

    async def _dead(self, batch: list[Item], error: str,
                    members: list[str] | list[bytes] | None = None) -> None:
        now = time.time()
        while True:
            try:
                async with self.runner.redis.pipeline(transaction=True) as pipe:
                    for i in batch:
                        pipe.xadd(self.dkey, {"event": i.body, "error": error[:500], "at": now,
                                              "attempts": self.attempts})
                    if members:
                        pipe.zrem(self.qkey, *members)
                    await pipe.execute()
                break
            except Exception as e:
                log.warning("webhook %s: dead-letter stream: %s", self.ep.name, e)
                await asyncio.sleep(1.0)
        if members:
            self.stored = max(0, self.stored - len(members))
        metrics.WEBHOOK_DEAD.labels(self.label).inc(len(batch))
        log.warning("webhook %s: %d event(s) to its dead-letter stream: %s",
                    self.ep.name, len(batch), error)
        finish_all(batch)

    # The request ---------------------------------------------------------------------
    async def _post(self, batch: list[Item]) -> tuple[str, str]:
        ep = self.ep
        if not self.target_ok:
            try:
                await check_target(ep.url, self.runner.cfg.webhooks.allow_private,
                                   self.runner.resolver)
            except TargetRefused as e:
                metrics.WEBHOOK_FAILED.labels(self.label, "refused").inc()
                return Outcome.DEAD, f"refused: {e}"
            self.target_ok = True
        at = int(time.time())
        http = self.http
        if ep.format == "kannel":
            text, signed = bodies.kannel_request(ep.url, batch[0].decoded())
            origin = transport.Origin(text)
            head = http.head("GET", origin, signed.decode(), _JSON).encode()
            data = b""
        else:
            if self.origin is None:
                self.origin = transport.Origin(ep.url)
                self.head = http.head("POST", self.origin, transport.target_of(ep.url),
                                      _JSON).encode()
            origin, head = self.origin, self.head
            data = signed = bodies.batch_body([i.body for i in batch])
        extra = f"Content-Length: {len(data)}\r\n" if data else ""
        if ep.secret:
            extra += f"{HEADER}: {sign(ep.secret, signed, at)}\r\n"
        if len(batch) == 1:
            extra += f"{EVENT_ID_HEADER}: {batch[0].decoded().get('event_id', '')}\r\n"
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(ep.timeout_s):
                status = await http.pool(origin).request(
                    b"".join((head, extra.encode(), b"\r\n", data)))
        except TimeoutError:
            metrics.WEBHOOK_FAILED.labels(self.label, "timeout").inc()
            return Outcome.RETRY, f"timeout after {ep.timeout_s:g} s"
        except (transport.ClientError, OSError) as e:
            if isinstance(e, targets.PrivateTarget):  # resolves to a private address now
                metrics.WEBHOOK_FAILED.labels(self.label, "refused").inc()
                return Outcome.DEAD, f"refused: {e}"
            metrics.WEBHOOK_FAILED.labels(self.label, "connection").inc()
            return Outcome.RETRY, f"{type(e).__name__}: {e}"
        self.m_latency.observe(time.perf_counter() - t0)
        if 200 <= status < 300:
            self.m_delivered.inc(len(batch))
            return Outcome.OK, ""
        cls = f"{status // 100}xx"
        metrics.WEBHOOK_FAILED.labels(self.label, cls).inc()
        if status in (408, 425, 429) or status >= 500:
            return Outcome.RETRY, f"HTTP {status}"
        return Outcome.DEAD, f"HTTP {status}"

    async def close(self) -> None:
        self.closed = True
        self.task.cancel()
        for t in list(self.flights):
            t.cancel()
        await asyncio.gather(self.task, *self.flights, return_exceptions=True)
        self.http.close()
