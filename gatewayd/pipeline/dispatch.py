"""The outbound pump: queue -> validation -> policies -> carrier -> recorded outcome.

One batch at a time per worker, every Redis step batched: a read, one pipeline for
the reclaim/idempotency look-ups, the policy engine's batched calls, one submit, one
pipeline that records every outcome and acknowledges every entry. An entry is
acknowledged only in that last pipeline (on a cluster, three confirmed round trips:
the correlation keys, then the records, then the acknowledgements), so a crash anywhere
before it leaves the entry pending and it is reclaimed (at-least-once; see README
"Guarantees").

Stragglers: the pool answers a batch a grace after its last write; messages whose
outcome is not known by then (no submit_sm_resp yet, parts to resend) are recorded and
acknowledged by a task of their own when it is (``_record_later``), so one unanswered
submit holds up its own message, not its batch. Their entries stay pending, and held
from reclaim (``held_ids``), until then.

Retries: a throttled or never-written message is retried without using an attempt; one
lost in flight with its bind uses none either but counts a loss (``queue.max_bind_losses``
ends a message that kills every bind it is written on); the rest use an attempt. A long
message some of whose parts were accepted keeps them: its accepted parts are correlated
at once, its status lists them (``sent_parts``: their receipts are recorded before the
rest is sent) and its retry (``resume``) sends only the others, to the same carrier
with the same reference, without the policies again (they passed it once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from gatewayd.campaigns.model import StatusCache
from gatewayd.carrier.api import SubmitOutcome, SubmitRequest, Submitted
from gatewayd.carrier.ids import normalise_id
from gatewayd.config import Config, account_names
from gatewayd.errors import MessageError
from gatewayd.model import FINAL_STATES, OutboundMessage
from gatewayd.ops import metrics
from gatewayd.pipeline.events import Book, Ledger
from gatewayd.pipeline.intake import _ID_RE, Resume, parse_message
from gatewayd.pipeline.queue import COUNTED_AT_INTAKE, AckBatch, Entry, QueueStore, is_raw
from gatewayd.policy.engine import PolicyEngine, Verdict
from gatewayd.store import fastpipe
from gatewayd.store.connection import Redis, denied, load_script, pipe_script
from gatewayd.store.keys import Keys
from gatewayd.store.seal import FIELD as SEAL_FIELD
from gatewayd.store.seal import Seal

log = logging.getLogger("gatewayd.dispatch")

# Carrier back-pressure or our own shutdown, not a failure of the message: retried
# without using an attempt. The carrier layer says so in SubmitOutcome.backpressure,
# whatever the protocol; these names cover outcomes built without it (tests, tools).
_BACKPRESSURE = frozenset(
    {"ESME_RTHROTTLED", "ESME_RMSGQFUL", "NO_BOUND_CARRIER", "NOT_SENT", "STOPPING"}
)
# Written, then the connection went: the SMSC never refused it (a loss, not an attempt).
_LOST = "BIND_LOST"
# How long a straggler task keeps trying to record its outcomes while Redis is away
# (after that the entries are left pending: reclaim takes them, at least once).
_LATER_RECORD_S = 60.0


# A message read again whose record says this is only acknowledged.
_DONE = FINAL_STATES | {"submitted"}

# A paused campaign's queued messages are looked at again this often.
_PAUSED_RETRY_S = 30.0

# Prometheus children by label values: labels() costs a lock and a dict build per call,
# and these are hit once a message.
_queue_wait: dict[str, Any] = {}
_verdicts: dict[tuple[str, str], Any] = {}
_enqueued: dict[tuple[str, str], Any] = {}
# Intake markers a label may carry (anything else an upstream writes counts as "stream").
_INTAKES: Final = frozenset(metrics.ENQUEUE_SOURCES) | {"demo"}


def _intake_label(intake: str, fields: dict[str, str]) -> str:
    """The source a first read counts in gatewayd_messages_enqueued_total: an intake
    not counted where it happened (the client's, the CLI's: other processes), or
    "stream" for an upstream XADD; "" for HTTP (counted at intake) and for gatewayd's
    own re-queued entries."""
    if intake:
        if intake in COUNTED_AT_INTAKE:
            return ""
        return intake if intake in _INTAKES else "stream"
    return "stream" if is_raw(fields) else ""


def _entry_ms(entry_id: str) -> int:
    """The Redis time (ms) a stream entry was added, from its id ("<ms>-<seq>")."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) if ms.isdigit() else 0


def _child(cache: dict[Any, Any], metric: Any, *values: str) -> Any:
    key = values[0] if len(values) == 1 else values
    c = cache.get(key)
    if c is None:
        c = cache[key] = metric.labels(*values)
    return c


class Submitter(Protocol):
    """What the dispatcher needs of the carrier pool (CarrierPool satisfies it)."""

    async def submit(self, reqs: list[SubmitRequest], *, detach: bool = False,
                     urgent: bool = False) -> Submitted: ...

    def ready(self) -> bool: ...


class _Held(Container[str]):
    __slots__ = ("a", "b")

    def __init__(self, a: set[str], b: set[str]) -> None:
        self.a, self.b = a, b

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.a or entry_id in self.b


@dataclass(slots=True)
class _Item:
    entry: Entry
    msg: OutboundMessage
    # Written by gatewayd (intake, retries, the fan-out: gatewayd.store.seal), so its
    # id was checked when it was first queued; otherwise a raw entry (lua/claim.lua).
    sealed: bool = False
    expires: float = 0.0  # Unix time; 0 = never (the validity period sent to the SMSC)
    resume: Resume | None = None


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        cfg: Config,
        queue: QueueStore,
        pool: Submitter,
        policy: Callable[[], PolicyEngine | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.queue = queue
        self.pool = pool
        self.policy = policy
        self.clock = clock
        self.ledger: Ledger = queue.ledger
        self.receipts_by_carrier = {c.name: c.registered_delivery for c in cfg.carrier}
        # Receipts are correlated per SMSC account (config.account_names).
        self.account = account_names(cfg)
        self.receipt_ttl = int(cfg.queue.receipt_timeout_s)
        self._unsealed_before_ms = int(cfg.queue.unsealed_before * 1000)
        self.campaigns = StatusCache(redis, keys)
        self._claim = load_script(redis, "claim")
        self.processed = 0
        self.idle = asyncio.Event()
        # Entry ids held by a batch of ours right now: never reclaimed from under it.
        self.in_flight: set[str] = set()
        # Entry ids of stragglers (outcome still coming): held too, until recorded.
        self.detached: set[str] = set()
        self._later: set[asyncio.Task[None]] = set()

    def learn_carriers(self, cfg: Config) -> None:
        """The carriers of a reloaded config (removed ones stay known: their stragglers
        are still recorded)."""
        self.receipts_by_carrier.update({c.name: c.registered_delivery for c in cfg.carrier})
        self.account.update(account_names(cfg))

    def held_ids(self) -> _Held:
        """Entries of ours that reclaim must leave alone: in a batch, or stragglers. A
        live view, not a copy: reclaim checks it after its round trips, when batches
        read meanwhile are held too."""
        return _Held(self.in_flight, self.detached)

    # The loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        workers = [
            asyncio.create_task(self._worker(stop, i), name=f"dispatch-{i}")
            for i in range(self.cfg.queue.dispatch_workers)
        ]
        if self.cfg.queue.express_batch and len(self.cfg.queue.classes) > 1:
            workers.append(asyncio.create_task(
                self._worker(stop, -1, express=self.cfg.queue.classes[0]),
                name="dispatch-express",
            ))
        try:
            await asyncio.gather(*workers)
            # Stragglers finish within a response timeout (and their resends): wait, so a
            # drain records them (the daemon bounds the whole drain).
            while self._later:
                await asyncio.wait(set(self._later))
        finally:
            for w in workers:
                w.cancel()

    async def _worker(self, stop: asyncio.Event, index: int, express: str = "") -> None:
        q = self.cfg.queue
        backoff = 0.1
        # Read in the previous batch's last pipeline; always processed (when the carrier
        # is gone meanwhile, they are deferred like the rest of a batch in flight, so
        # another daemon can take them), never held.
        ahead: list[Entry] = []
        while not stop.is_set() or ahead:
            if not ahead and not self.pool.ready():
                # No bound carrier: leave messages queued instead of reading and
                # requeueing them (the "requeue storm" of other gateways).
                self.idle.set()
                await _sleep_or_stop(stop, 0.2)
                continue
            try:
                entries, ahead = ahead, []
                if not entries and express:
                    entries = await self.queue.read_class(express, q.express_batch, q.block_ms)
                elif not entries:
                    entries = await self.queue.read(q.read_batch, block_ms=q.block_ms)
                if not entries:
                    self.idle.set()
                    continue
                self.idle.clear()
                ahead = await self.process(
                    entries, read_ahead=not stop.is_set() and self.pool.ready(),
                    express=express)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except RedisError as e:  # Redis down: back off; entries stay pending
                metrics.REDIS_ERRORS.labels("dispatch").inc()
                if denied(e):
                    metrics.REDIS_DENIED.labels("dispatch").inc()
                    log.error("dispatch worker %d: Redis ACL refused a command: %s; give "
                              "the gatewayd user the commands in README \"Redis AUTH / "
                              "ACL\"", index, e)
                else:
                    log.error("dispatch worker %d: %s: %s", index, type(e).__name__, e)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # a bug: the batch stays pending, is reclaimed, and after
                # max_deliveries reads goes to the dead-letter stream instead of looping.
                log.exception("dispatch worker %d: batch failed", index)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    # One batch ----------------------------------------------------------------------
    async def process(self, entries: list[Entry], *, read_ahead: bool = False,
                      express: str = "") -> list[Entry]:
        """Process one batch; with ``read_ahead`` the pipeline that records its outcome
        also reads the worker's next batch (one round trip less a batch: the workers
        wait on round trips more than on the CPU), which is returned."""
        ids = [e.entry_id for e in entries]
        self.in_flight.update(ids)
        try:
            ahead = await self._process(entries, read_ahead, express)
            self.in_flight.update(e.entry_id for e in ahead)
            return ahead
        finally:
            self.in_flight.difference_update(ids)

    async def _process(self, entries: list[Entry], read_ahead: bool = False,
                       express: str = "") -> list[Entry]:
        now = self.clock()
        q = self.cfg.queue
        seal = self.queue.seal or await self.queue.sealer()
        items: list[_Item] = []
        pipe = self.redis.pipeline(transaction=False)
        book = self.ledger.book()
        acks = AckBatch()
        bad: list[tuple[Entry, str]] = []  # dead letters, recorded after the look-ups
        counted: dict[tuple[str, str], int] = {}  # (class, intake) -> first reads
        for e in entries:
            if e.fields is None:
                self.queue.ack(pipe, e, acks)
                continue
            if e.raw is not None:
                bad.append((e, "invalid:encoding: a field name or value is not UTF-8"))
                continue
            if e.deliveries > q.max_deliveries:
                bad.append((e, f"too_many_deliveries: read {e.deliveries} times"))
                continue
            # Each entry on its own: whatever its parsing raises dead-letters that entry,
            # never its batch (issue 14: one deep `json` failed 40 neighbours).
            try:
                try:
                    msg = self._parse(e, now, seal)
                except MessageError as err:
                    if err.code != "seal" or seal is (seal := await self.queue.sealer(
                            reload=True)):
                        raise
                    # Redis lost the seal's key (restarted empty, flushed) and another
                    # process made a new one: read it again.
                    msg = self._parse(e, now, seal)
            except MessageError as err:
                bad.append((e, err.dead_reason))
                continue
            except Exception as err:  # any bug in parsing: this entry only
                log.warning("entry %s %s: parsing raised %s", e.klass, e.entry_id,
                            type(err).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
                bad.append((e, f"invalid:unparsable: {type(err).__name__}: {err}"[:300]))
                continue
            if e.deliveries <= 1:
                label = _intake_label(msg.intake, e.fields)
                if label:
                    counted[(e.klass, label)] = counted.get((e.klass, label), 0) + 1
            msg.intake = ""  # counted: its retries and deferrals are not new intakes
            items.append(_Item(e, msg, sealed=SEAL_FIELD in e.fields))
        for key, n in counted.items():
            _child(_enqueued, metrics.MESSAGES_ENQUEUED, *key).inc(n)
        if items or bad:
            items = await self._lookups(pipe, book, acks, items, bad, now)
        if any(it.msg.campaign for it in items):
            items = await self._campaign_gate(pipe, book, acks, items, now)
        sendable: list[_Item] = []
        for it in items:
            m = it.msg
            ttl = q.default_ttl_s.get(m.category, 0.0)
            expires = m.expires_at or (m.enqueued_at + ttl if ttl else 0.0)
            it.expires = expires
            if expires and now >= expires:
                self.ledger.record(book, m, "expired", now, reason="ttl")
                self.queue.ack(pipe, it.entry, acks)
            elif m.not_before > now:
                self.queue.delay(pipe, m, m.not_before)
                self.ledger.record(book, m, "deferred", now, reason="scheduled", until=m.not_before)
                self.queue.ack(pipe, it.entry, acks)
            else:
                sendable.append(it)
        reqs, to_submit = await self._apply_policies(pipe, book, acks, sendable, now)
        if reqs:
            # Codes (the highest of several classes) go before bulk for window slots
            # and tokens.
            top = q.classes[0]
            urgent = len(q.classes) > 1 and all(it.entry.klass == top for it in to_submit)
            sub = await self.pool.submit(reqs, detach=True, urgent=urgent)
            self._record_outcomes(pipe, book, acks, to_submit, reqs, sub.outcomes)
            if sub.later is not None:
                self._detach(sub.later, to_submit, reqs, sub.outcomes, book.streaks)
        if self.queue.cluster:
            await book.confirm_correlations(self.redis)
        # The acknowledgements after every outcome record: on a single Redis inside the
        # record script, after its writes (a refused or failed write acknowledges
        # nothing); on a cluster in the next round trip (at-least-once).
        book.flush(pipe, None if self.queue.cluster else acks)
        pipe = await self._confirm_records(pipe, acks)
        acks.flush(pipe)
        read_ahead = read_ahead and self.queue.can_read_ahead(express)
        if read_ahead:
            self.queue.queue_read(pipe, q.express_batch if express else q.read_batch, express)
        try:
            replies = await fastpipe.execute(pipe, raw=read_ahead)
        except ResponseError as e:
            # Only the read can fail with NOGROUP; everything before it was applied.
            if not read_ahead or "NOGROUP" not in str(e):
                raise
            self.processed += len(entries)
            await self.queue.on_read_error(e)
            return []
        self.processed += len(entries)
        return self.queue.parse_read(replies[-1], express) if read_ahead else []

    def _record_outcomes(
        self, pipe: Pipeline, book: Book, acks: AckBatch, items: list[_Item],
        reqs: list[SubmitRequest], outcomes: list[SubmitOutcome | None],
    ) -> None:
        """Record the known outcomes into ``pipe`` (None: a straggler, recorded later)."""
        done = self.clock()
        awaiting: list[str] = []
        waits: dict[str, list[float]] = {}
        for it, req, out in zip(items, reqs, outcomes, strict=True):
            if out is not None:
                self._record_outcome(pipe, book, acks, awaiting, waits, it, req, out, done)
        if awaiting:  # one ZADD for the batch; the score's text made once
            book.await_receipts(awaiting, repr(done + self.receipt_ttl))
        for klass, values in waits.items():
            metrics.observe_many(_child(_queue_wait, metrics.QUEUE_WAIT, klass), values)

    def _detach(self, later: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None],
                items: list[_Item], reqs: list[SubmitRequest],
                known: list[SubmitOutcome | None], streaks: bool) -> None:
        """Stragglers: their entries stay pending, held from reclaim, until recorded.
        ``streaks``: their batch's (Book.streaks), so a link message submitted late
        counts in its recipient's cooling-off streak as the batch's others do."""
        ids = [it.entry.entry_id for it, out in zip(items, known, strict=True) if out is None]
        self.detached.update(ids)
        task = asyncio.create_task(self._record_later(later, items, reqs, ids, streaks),
                                   name="dispatch-stragglers")
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _record_later(
        self, later: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None],
        items: list[_Item], reqs: list[SubmitRequest], ids: list[str], streaks: bool,
    ) -> None:
        """Record each straggler's outcome as it comes (one pipeline a chunk)."""
        try:
            while True:
                chunk = await later.get()
                if chunk is None:
                    return
                outcomes: list[SubmitOutcome | None] = [None] * len(items)
                for index, out in chunk:
                    outcomes[index] = out
                if await self._record_chunk(items, reqs, outcomes, streaks):
                    self.detached.difference_update(items[i].entry.entry_id for i, _ in chunk)
        finally:
            self.detached.difference_update(ids)

    async def _record_chunk(self, items: list[_Item], reqs: list[SubmitRequest],
                            outcomes: list[SubmitOutcome | None], streaks: bool) -> bool:
        """Record and acknowledge, retrying while Redis is away (bounded): False when
        given up (the entries stay pending: reclaim takes them, at least once)."""
        n = sum(1 for o in outcomes if o is not None)
        backoff = 0.2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LATER_RECORD_S
        while True:
            # Rebuilt each try: recording is idempotent (retries copy their message).
            pipe = self.redis.pipeline(transaction=False)
            book = self.ledger.book()
            book.streaks = streaks
            acks = AckBatch()
            self._record_outcomes(pipe, book, acks, items, reqs, outcomes)
            try:
                if self.queue.cluster:
                    await book.confirm_correlations(self.redis)
                book.flush(pipe, None if self.queue.cluster else acks)
                pipe = await self._confirm_records(pipe, acks)
                acks.flush(pipe)
                await fastpipe.execute(pipe)
                self.processed += n
                return True
            except RedisError as e:
                metrics.REDIS_ERRORS.labels("dispatch").inc()
                if loop.time() + backoff > deadline:
                    log.error("stragglers: recording %d outcomes failed (%s); their entries "
                              "stay pending for reclaim", n, e)
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _confirm_records(self, pipe: Pipeline, acks: AckBatch) -> Pipeline:
        """On a cluster, send the batch's records now and return a fresh pipeline for
        its acknowledgements: a cluster pipeline writes each node's commands side by
        side, so an XACK queued after a record on another node could commit without it
        (issue 15: entries acknowledged whose outcome was never recorded). Any failed
        record raises (RedisError) and leaves the entries pending. On a single Redis
        the record script acknowledges after its own writes (Book.flush), in the same
        round trip (``pipe`` returned as it is); what ``acks`` still holds there (a
        batch with nothing to record) follows in the same pipeline."""
        if not self.queue.cluster or not len(acks) or not len(pipe):
            return pipe
        await fastpipe.execute(pipe)
        return self.redis.pipeline(transaction=False)

    def _parse(self, e: Entry, now: float, seal: Seal) -> OutboundMessage:
        q = self.cfg.queue
        fields = e.fields or {}
        if "id" not in fields or "category" not in fields:  # (parse_message copies)
            fields = dict(fields)
            # Deterministic id for entries pushed without one, so a redelivered entry
            # is recognised as the same message.
            fields.setdefault("id", f"{e.klass}-{e.entry_id}")
            fields.setdefault("category", e.klass)
        msg = parse_message(fields, classes=q.classes, max_segments=q.max_segments, now=now,
                            seal=seal, horizon_s=q.horizon_s,
                            legacy=_entry_ms(e.entry_id) < self._unsealed_before_ms)
        if msg.category != e.klass:
            raise MessageError(
                "category", f"{msg.category!r} does not match stream class {e.klass!r}")
        return msg

    def _invalid(
        self, pipe: Pipeline, book: Book, acks: AckBatch, e: Entry, reason: str, now: float,
        *, record: bool = True,
    ) -> None:
        self.queue.dead_letter(pipe, e, reason, acks)
        msg_id = (e.fields or {}).get("id", "")
        if record and msg_id and _ID_RE.fullmatch(msg_id):
            # Upstream named the message: tell it why it will never be sent.
            stub = OutboundMessage(id=msg_id, to=(e.fields or {}).get("to", "")[:32], text="",
                                   category=e.klass)
            self.ledger.record(book, stub, "rejected", now, reason=reason)

    async def _lookups(self, pipe: Pipeline, book: Book, acks: AckBatch,
                       items: list[_Item], bad: list[tuple[Entry, str]], now: float
                       ) -> list[_Item]:
        """The batch's look-ups in ONE round trip, only when it has something to look up:
        each raw entry's claim on its id (lua/claim.lua: an id already another message's
        is refused, never overwritten), raw entries' idempotency keys (the first one
        wins), and the state of sealed entries read again (already submitted or final:
        only acknowledged). Dead letters (``bad``) are recorded here too: a raw one's
        named id gets its rejected record only when the entry holds that id."""
        raw = [it for it in items if not it.sealed]
        keyed = [it for it in raw if it.msg.idempotency_key]
        again = [it for it in items if it.sealed and it.entry.deliveries > 1]
        named: list[tuple[Entry, str, str]] = []  # raw dead letters naming a valid id
        for e, reason in bad:
            msg_id = (e.fields or {}).get("id", "")
            if not msg_id or not _ID_RE.fullmatch(msg_id):
                self.queue.dead_letter(pipe, e, reason, acks)
            elif SEAL_FIELD in (e.fields or {}) and e.raw is None:
                self._invalid(pipe, book, acks, e, reason, now)  # gatewayd's own entry
            else:
                named.append((e, reason, msg_id))
        if not (raw or again or named):
            return items
        ttl = self.ledger.status_ttl
        async with self.redis.pipeline(transaction=False) as p:
            for it in raw:
                pipe_script(p, self._claim, [self.keys.status(it.msg.id)],
                            [f"{it.entry.klass} {it.entry.entry_id}", ttl, now])
            for e, _, msg_id in named:
                pipe_script(p, self._claim, [self.keys.status(msg_id)],
                            [f"{e.klass} {e.entry_id}", ttl, now])
            for it in keyed:
                k = self.keys.idempotency(it.msg.category, it.msg.idempotency_key)
                p.set(k, it.msg.id, nx=True, ex=24 * 3600)
                p.get(k)
            for it in again:
                p.hget(self.keys.status(it.msg.id), "state")
            replies = iter(await p.execute())
        claims = {id(it): next(replies) for it in raw}
        for e, reason, _ in named:
            held = int(next(replies)[0]) == 1
            self._invalid(pipe, book, acks, e, reason, now, record=held)
        owners = {id(it): (bool(next(replies)), next(replies)) for it in keyed}
        states = {id(it): next(replies) for it in again}
        out: list[_Item] = []
        for it in items:
            m = it.msg
            if it.sealed:
                if states.get(id(it)) in _DONE:
                    self.queue.ack(pipe, it.entry, acks)  # read again, already done
                else:
                    out.append(it)
                continue
            held, state = int(claims[id(it)][0]) == 1, claims[id(it)][1]
            took, owner = owners.get(id(it), (False, None))
            if not held:
                if owner == m.id and not took:  # the same keyed message pushed again
                    self.queue.ack(pipe, it.entry, acks)
                    continue
                if took:  # the key was set for an id this entry does not hold
                    pipe.delete(self.keys.idempotency(m.category, m.idempotency_key))
                self.queue.dead_letter(pipe, it.entry, f"duplicate_id: {m.id} is already "
                                       "used by another message", acks)
            elif state in _DONE:
                self.queue.ack(pipe, it.entry, acks)  # our own, read again, already done
            elif owner is not None and owner != m.id:
                self.ledger.record(book, m, "rejected", now,
                                   reason=f"duplicate:idempotency_key of {owner}")
                self.queue.ack(pipe, it.entry, acks)
            else:
                out.append(it)
        return out

    async def _campaign_gate(
        self, pipe: Pipeline, book: Book, acks: AckBatch, items: list[_Item], now: float
    ) -> list[_Item]:
        """Messages of a cancelled campaign are rejected, of a paused one deferred; but
        not a long message some of whose parts went out (``resume``): the rest follows
        them, as it does past the policies (a handset must not keep half a message)."""
        states = await self.campaigns.statuses(it.msg.campaign for it in items
                                               if it.msg.campaign)
        out: list[_Item] = []
        for it in items:
            status = "" if it.msg.resume else states.get(it.msg.campaign, "")
            if status == "cancelled":
                self.ledger.record(book, it.msg, "rejected", now, reason="campaign_cancelled")
                self.queue.ack(pipe, it.entry, acks)
            elif status == "paused":
                until = now + _PAUSED_RETRY_S
                self.queue.delay(pipe, it.msg, until)
                self.ledger.record(book, it.msg, "deferred", now, reason="campaign_paused",
                                   until=until)
                self.queue.ack(pipe, it.entry, acks)
            else:
                out.append(it)
        return out

    async def _apply_policies(
        self, pipe: Pipeline, book: Book, acks: AckBatch, items: list[_Item], now: float
    ) -> tuple[list[SubmitRequest], list[_Item]]:
        reqs: list[SubmitRequest] = []
        chosen: list[_Item] = []
        if not items:
            return reqs, chosen
        # A resumed long message passed the policies before some of its parts went out:
        # the rest follows them (a quiet hour must not cut a message in two).
        for it in items:
            if it.msg.resume:
                it.resume = Resume.decode(it.msg.resume)
        checked = [it for it in items if it.resume is None]
        engine = self.policy()
        book.streaks = engine is not None and engine.cooling_enabled
        verdicts: dict[int, Verdict] = {}
        if engine is not None and checked:
            found = await engine.evaluate(self.redis, self.keys, [it.msg for it in checked], now)
            verdicts = {id(it): v for it, v in zip(checked, found, strict=True)}
        tally: dict[tuple[str, str], int] = {}  # verdict counts: one update a batch
        for it in items:
            m = it.msg
            v = verdicts.get(id(it))
            if v is not None:
                k = (v.check or "all", v.action)
                tally[k] = tally.get(k, 0) + 1
                if v.action == "reject":
                    self.ledger.record(book, m, "rejected", now, reason=v.reason)
                    self.queue.ack(pipe, it.entry, acks)
                    continue
                if v.action == "defer":
                    self.queue.delay(pipe, m, v.until)
                    self.ledger.record(book, m, "deferred", now,
                                       reason=v.reason, until=v.until)
                    self.queue.ack(pipe, it.entry, acks)
                    continue
                if v.text is not None:
                    m.text = v.text
            r = it.resume
            if r is None:
                reqs.append(SubmitRequest(msg_id=m.id, destination=m.to, text=m.text,
                                          source=m.sender, carrier=m.carrier,
                                          expires_at=it.expires))
            else:
                reqs.append(SubmitRequest(msg_id=m.id, destination=m.to, text=m.text,
                                          source=m.sender, carrier=r.c, expires_at=it.expires,
                                          ref=r.r, done_parts=r.p))
            chosen.append(it)
        for (check, action), n in tally.items():
            _child(_verdicts, metrics.POLICY_VERDICTS, check, action).inc(n)
        return reqs, chosen

    def _correlate(self, book: Book, m: OutboundMessage, carrier: str, ids: list[str],
                   skip: dict[int, str] | None) -> None:
        """One correlation key per accepted part, under the SMSC account; the receipt
        side tries the other bases, or the one form the carrier's ``receipt_ids``
        declares (carrier.ids.receipt_keys). Parts correlated by an earlier attempt
        (``skip``) are not written again."""
        account = self.account.get(carrier, carrier)
        for part, smsc_id in enumerate(ids):
            if smsc_id and (skip is None or part not in skip):
                book.correlate(self.keys.correlation(account, normalise_id(smsc_id)),
                               f"{m.id} {part}")

    def _record_outcome(
        self, pipe: Pipeline, book: Book, acks: AckBatch, awaiting: list[str],
        waits: dict[str, list[float]], it: _Item, req: SubmitRequest, out: SubmitOutcome,
        now: float,
    ) -> None:
        m = it.msg
        receipts = self.receipts_by_carrier.get(out.carrier, False)
        if out.ok:
            segments = out.segments or len(out.smsc_ids)
            # One receipt a PDU: with message_payload fewer PDUs than segments.
            parts = len(out.smsc_ids)
            self.ledger.record(
                book, m, "submitted", now,
                carrier=out.carrier,
                carrier_id=out.smsc_ids[0] if out.smsc_ids else "",
                segments=segments,
                extra={"receipts": parts} if parts != segments and parts else None,
            )
            if receipts:
                self._correlate(book, m, out.carrier, out.smsc_ids, req.done_parts)
                awaiting.append(m.id)
            if m.enqueued_at:
                w = waits.get(m.category)
                if w is None:
                    w = waits[m.category] = []
                w.append(max(0.0, now - m.enqueued_at))
        elif out.kind == "retry":
            # A copy: the straggler path may record the same outcome again after a
            # failed write, and must not count its attempt twice.
            m = msgspec.structs.replace(m)
            q = self.cfg.queue
            backpressure = out.backpressure or out.status_name in _BACKPRESSURE
            lost = out.status_name == _LOST
            if lost:
                m.losses += 1
            elif not backpressure:
                m.attempts += 1
            extra: dict[str, Any] | None = None
            if out.partial and out.ref >= 0:
                accepted = {k: sid for k, sid in enumerate(out.smsc_ids) if sid}
                m.resume = Resume(out.carrier, out.ref, accepted).encode()
                if receipts:
                    self._correlate(book, m, out.carrier, out.smsc_ids, req.done_parts)
                extra = {"sent_parts": " ".join(map(str, accepted)), "segments": out.segments}
            if m.attempts >= q.max_attempts or m.losses >= q.max_bind_losses:
                why = "attempts exhausted" if m.attempts >= q.max_attempts else "binds lost"
                self.ledger.record(book, m, "failed", now,
                                   reason=f"{out.status_name or 'retry'}: {why}",
                                   carrier=out.carrier, extra=extra)
            else:
                steps = q.retry_backoff_s
                delay = (1.0 if backpressure or lost
                         else steps[min(m.attempts - 1, len(steps) - 1)])
                self.queue.delay(pipe, m, now + delay)
                self.ledger.record(book, m, "deferred", now,
                                   reason=f"retry:{out.status_name or out.reason}",
                                   until=now + delay, carrier=out.carrier, extra=extra)
        else:
            self.ledger.record(book, m, "failed", now,
                               reason=out.status_name or out.reason, carrier=out.carrier,
                               err=f"0x{out.status:08x}" if out.status else "")
        self.queue.ack(pipe, it.entry, acks)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
