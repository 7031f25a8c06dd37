"""Concurrent intake requests share Redis round trips (issue 17 item 4).

Every request handled in one turn of the event loop hands its validated messages to
``Coalescer.enqueue_each``; at the end of the turn (``loop.call_soon``) they go to Redis
in ONE ``QueueStore.enqueue_each`` call (one script call: lua/enqueue_many.lua), in the
order the requests arrived, and each request gets back exactly its own outcomes. Under
load 200 connections' requests cost a few calls a turn instead of one each (the
metrics ``gatewayd_intake_batches_total`` / ``gatewayd_intake_batched_requests_total``).

Idempotency holds across the requests of a call: the script takes the messages in
order, so of two requests repeating one key the earlier one queues it and the later
one is answered ``duplicate`` with its id, as if they had come one after the other.
A failed call (Redis away, busy) fails each request that shared it with the same
error (503 + Retry-After); nothing else is shared.

At most ``max_in_flight`` calls (2) are out at once: while they are, the requests that
arrive wait for the first of them to come back and then go together. Unbounded, a
process whose loop turns are short (the fast lane's) sent a call every turn with a few
requests each (3.4 requests a call in bench intake http-1, against 11.7 through
aiohttp), and Redis's CPU a message grew with the calls; bounded, a flood's requests
share a call per round trip, and a lone request still goes at the end of its turn.
Two, not one: Redis runs one call while this process builds the next.

``eager``: a request goes to Redis at once, in its own task, while fewer than
``max_in_flight`` calls are out (nothing waits for the end of the turn); only the
requests that arrive while they are out wait, and then go together. For codes
(DaemonBackend's express class): a lone code is sent as soon as it is parsed, as when
each made its own call, but a flood of them no longer makes a call each (~77 us of
redis-py and a socket write and read on both sides a call, on the machine of issue 17).
"""

from __future__ import annotations

import asyncio
import time

from gatewayd.model import OutboundMessage
from gatewayd.ops import metrics
from gatewayd.pipeline.queue import QueueStore

# A call's messages at most (the rest wait for the next call, started at once): one
# script call holds Redis's only thread for ~10 us a message.
MAX_BATCH = 2000
MAX_IN_FLIGHT = 2


class _Waiting:
    __slots__ = ("fut", "msgs", "source")

    def __init__(self, msgs: list[OutboundMessage], source: str,
                 fut: asyncio.Future[list[tuple[str, str]]]) -> None:
        self.msgs, self.source, self.fut = msgs, source, fut


class Coalescer:
    """Shares ``queue.enqueue_each`` calls between the requests of one loop turn."""

    def __init__(self, queue: QueueStore, max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT, *, eager: bool = False,
                 counted: bool = True) -> None:
        self.queue = queue
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.eager = eager
        self.counted = counted  # in gatewayd_intake_batches_total and its requests
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._inline = 0  # eager calls out, each in its request's own task
        # The loop, once known: asyncio.get_running_loop() is a getpid() system call
        # on Python 3.11 (its fork check), dear on the VMs of issue 17.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def enqueue_each(self, msgs: list[OutboundMessage], *,
                           source: str) -> list[tuple[str, str]]:
        """As QueueStore.enqueue_each for plain messages (no links, campaign or
        template: the caller sends those itself), shared with this turn's others."""
        if (self.eager and not self._waiting and len(msgs) <= self.max_batch
                and len(self._tasks) + self._inline < self.max_in_flight):
            # Nothing to share with yet: go now, in this request's task.
            self._inline += 1
            try:
                if self.counted:
                    metrics.INTAKE_BATCHES.inc()
                    metrics.INTAKE_REQUESTS.inc()
                return await self.queue.enqueue_each(msgs, source=source, now=time.time())
            finally:
                self._inline -= 1
                if self._waiting and not self._scheduled:
                    self._flush()  # they have waited a round trip already
        loop = self._running()
        fut: asyncio.Future[list[tuple[str, str]]] = loop.create_future()
        self._waiting.append(_Waiting(msgs, source, fut))
        if not self._scheduled and not self.eager:
            self._scheduled = True
            loop.call_soon(self._flush)
        elif not self._scheduled and len(self._tasks) + self._inline < self.max_in_flight:
            # eager, a slot free, others waiting already (they go at the turn's end)
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        batch: list[_Waiting] = []
        size = 0
        for i, w in enumerate(waiting):
            if batch and (size + len(w.msgs) > self.max_batch or w.source != batch[0].source):
                self._start(batch)
                batch, size = [], 0
            if len(self._tasks) + self._inline >= self.max_in_flight:
                # The rest wait, in their order, for a call to come back (_done).
                self._waiting = waiting[i:] + self._waiting
                return
            batch.append(w)
            size += len(w.msgs)
        if batch:
            self._start(batch)

    def _start(self, batch: list[_Waiting]) -> None:
        task = self._running().create_task(self._run(batch))
        self._tasks.add(task)  # held until done (the loop keeps weak references only)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._waiting and not self._scheduled:
            self._scheduled = True
            self._running().call_soon(self._flush)

    async def _run(self, batch: list[_Waiting]) -> None:
        msgs = [m for w in batch for m in w.msgs]
        if self.counted:
            metrics.INTAKE_BATCHES.inc()
            metrics.INTAKE_REQUESTS.inc(len(batch))
        try:
            out = await self.queue.enqueue_each(msgs, source=batch[0].source,
                                                now=time.time())
        except Exception as e:
            for w in batch:
                if not w.fut.done():
                    w.fut.set_exception(e)
            return
        except BaseException:  # cancelled (shutdown): so are the requests waiting
            for w in batch:
                w.fut.cancel()
            raise
        at = 0
        for w in batch:
            n = len(w.msgs)
            if not w.fut.done():  # a request cancelled meanwhile: its messages are queued
                w.fut.set_result(out[at:at + n])
            at += n
