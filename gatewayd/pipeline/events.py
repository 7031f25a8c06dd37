"""Recording state changes: the per-message status record and the events stream.

Every transition is written into the caller's pipeline (batched with the rest of the
batch's work), so recording costs no round trip of its own. The dispatcher's batches
go through a ``Book``: on a single Redis it writes the whole batch's status records,
events and correlation keys with ONE script call (lua/record.lua) instead of four
commands a message, which redis-py packs, and whose replies it reads and parses, one
by one (the largest client-side cost in the bench/e2e profile). On a cluster those
keys live in different slots, so the Book queues the same writes a message apiece.

States only move forward (queued < deferred < submitted < final, a final state never
replaced): every script that writes a state checks it (lua/rank_lib.lua), because on a
cluster a pipeline's commands reach their nodes side by side, so a late "queued" could
land on a record another daemon had already made "submitted" (issue 15).
"""

from __future__ import annotations

import itertools
from typing import Any, Final, Protocol, cast

from redis.asyncio.client import Pipeline

from gatewayd.campaigns.funnel import Sends, Tally, funnel_name, reason_family
from gatewayd.config import Config
from gatewayd.model import FINAL_STATES, OutboundMessage, mask_number
from gatewayd.ops import metrics
from gatewayd.store.connection import (
    Redis,
    is_cluster,
    load_script,
    pipe_script,
    script_source,
)
from gatewayd.store.keys import GROUP, Keys

_state_counters: dict[tuple[str, str], Any] = {}
_STATUS_SCRIPT: Final = script_source("status")
_flat = itertools.chain.from_iterable


def reason_label(reason: str) -> str:
    """Bounded metric label from a free reason: "keyword:gambling:x" -> "keyword"."""
    head = reason.split(":", 1)[0]
    return head[:40]


def count_state(state: str, reason: str, n: int = 1) -> None:
    key = (state, reason_label(reason))
    c = _state_counters.get(key)
    if c is None:
        c = _state_counters[key] = metrics.MESSAGES_STATE.labels(*key)
    c.inc(n)


# A transition's event is its status fields, renamed "updated_at" -> "at", without these
# (the same rule in lua/record.lua, which derives the event from the status it writes).
# "receipts" (expected, when not one a segment: message_payload) and "sent_parts"
# (parts accepted while the rest waits for a retry) are for receipts.lua, not upstream;
# "fk" (the funnel key of a campaign or template message) is for the funnel counters.
NOT_IN_EVENT: Final = frozenset({"attempts", "enqueued_at", "submitted_at", "done_at",
                                 "fk", "receipts", "sent_parts"})


def event_of(msg_id: str, status: dict[Any, Any]) -> dict[Any, Any]:
    event: dict[Any, Any] = {"id": msg_id}
    for name, value in status.items():
        if name == "updated_at":
            event["at"] = value
        elif name not in NOT_IN_EVENT:
            event[name] = value
    return event


def _digits(number: str) -> str:
    return number[1:] if number.startswith("+") else number


class Acks(Protocol):
    """A batch's acknowledgements (queue.AckBatch), handed over by stream."""

    def take(self) -> dict[str, list[str]]: ...


class Book:
    """One batch's state changes, written by ``flush`` into the batch's pipeline."""

    __slots__ = ("awaiting", "correlations", "counts", "funnel", "ledger", "records", "sends",
                 "streaks")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.records: list[tuple[str, str, dict[Any, Any]]] = []  # (id, key, status)
        self.correlations: list[tuple[str, str]] = []
        # Messages that now wait for their receipts -> the deadline's text (one ZADD).
        self.awaiting: dict[str, str] = {}
        # (state, reason) -> transitions: one counter update a batch, not a message
        self.counts: dict[tuple[str, str], int] = {}
        # Campaign and template messages only (None until the batch has one).
        self.funnel: Tally | None = None
        self.sends: Sends | None = None
        # Count submitted link messages in their recipients' cooling-off streaks (set by
        # the dispatcher while the policy's cooling-off is on; otherwise nothing reads it).
        self.streaks = False

    def correlate(self, key: str, value: str) -> None:
        """A correlation key (carrier message id -> our id), kept for the receipt TTL."""
        self.correlations.append((key, value))

    def await_receipts(self, msg_ids: list[str], deadline: str) -> None:
        """Put messages in the awaiting-receipt set until ``deadline`` (Unix s, text)."""
        self.awaiting.update(dict.fromkeys(msg_ids, deadline))

    async def confirm_correlations(self, redis: Redis) -> None:
        """On a cluster, write the batch's correlation keys and awaiting-receipt entries
        in a round trip of their own, before its records: a receipt can only be matched
        through its key, so a "submitted" record must never exist without it.

        A cluster pipeline writes each node's commands side by side. With the keys
        beside the records, a daemon killed mid-write, or a write to a node that was
        handing over and never completed, left records "submitted" whose keys were
        never written (issue 15: 41 of 5,500 in a CLUSTER FAILOVER test); the batch's
        reclaim then only acknowledged them (their record says submitted), and their
        receipts, matching nothing, were parked and dropped. Keys first: what dies
        between the two leaves the message "queued", so it is reclaimed and sent again
        (the duplicate window), and a receipt of its first copy, parked while the record
        is not yet "submitted", applies once it is. Raises (RedisError) when a write
        failed: nothing of the batch is recorded, its entries stay pending."""
        if not self.correlations and not self.awaiting:
            return
        led = self.ledger
        async with redis.pipeline(transaction=False) as pipe:
            for key, value in self.correlations:
                pipe.set(key, value, ex=led.receipt_ttl)
            if self.awaiting:
                pipe.zadd(led.keys.awaiting_receipt, cast(Any, self.awaiting))
            await pipe.execute()
        self.correlations.clear()
        self.awaiting.clear()

    def flush(self, pipe: Pipeline, acks: Acks | None = None) -> None:
        """Write the book into ``pipe``. With ``acks`` (a single Redis), the batch's
        acknowledgements go into the record script, after its writes (lua/record.lua):
        a refused or failed write leaves the entries pending. Without records to write
        they stay in ``acks`` for the caller's ``acks.flush``."""
        led = self.ledger
        if self.awaiting:
            # Before the records, as the cluster path confirms it (confirm_correlations).
            pipe.zadd(led.keys.awaiting_receipt, cast(Any, self.awaiting))
            self.awaiting = {}
        for (state, reason), n in self.counts.items():
            count_state(state, reason, n)
        self.counts.clear()
        if self.funnel is not None:
            self.funnel.flush(pipe)
            self.funnel = None
        if self.sends is not None:
            self.sends.flush(pipe, led.sent_script, led._now_text, led.recipient_ttl_ms)
            self.sends = None
        if not self.records and not self.correlations:
            return
        if led.script is None or is_cluster(pipe):
            for msg_id, key, status in self.records:
                led.write(pipe, key, status, event_of(msg_id, status))
            for key, value in self.correlations:
                pipe.set(key, value, ex=led.receipt_ttl)
        else:
            streams = acks.take() if acks is not None else {}
            keys: list[str] = [led.keys.events]
            args: list[Any] = [led.status_ttl, led.events_maxlen, led.receipt_ttl,
                               len(self.records), len(self.correlations), len(streams),
                               GROUP]
            for msg_id, key, status in self.records:
                keys.append(key)
                args.append(msg_id)
                args.append(2 * len(status))
                args.extend(_flat(status.items()))
            for key, value in self.correlations:
                keys.append(key)
                args.append(value)
            for stream, ids in streams.items():
                keys.append(stream)
                args.append(len(ids))
                args.extend(ids)
            pipe_script(pipe, led.script, keys, args)
        self.records.clear()
        self.correlations.clear()


def _str(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class Ledger:
    def __init__(self, keys: Keys, cfg: Config, redis: Redis | None = None) -> None:
        self.keys = keys
        self.status_ttl = int(cfg.queue.status_ttl_s)
        self.events_maxlen = cfg.queue.events_maxlen
        self.receipt_ttl = int(cfg.queue.receipt_timeout_s)
        self._now, self._now_text = 0.0, "0.0"
        # The batch script, on a single Redis only (see Book).
        self.script = (load_script(redis, "record")
                       if redis is not None and not is_cluster(redis) else None)
        self.sent_script = (load_script(redis, "marketing_sent")
                            if redis is not None and not is_cluster(redis) else None)
        self.recipient_ttl_ms = int(cfg.campaigns.recipient_ttl_days * 86400 * 1000)

    def book(self) -> Book:
        return Book(self)

    def write(self, pipe: Pipeline, key: str, status: dict[Any, Any],
              event: dict[Any, Any]) -> None:
        """One transition through lua/status.lua (never backwards). On a single Redis
        the script writes the event too, only with the record; on a cluster the events
        stream is in another slot and the event goes beside it."""
        args = [self.status_ttl, self.events_maxlen, event["id"],
                *_flat(status.items())]
        if is_cluster(pipe):
            pipe.execute_command("EVAL", _STATUS_SCRIPT, 1, key, *args)
            pipe.xadd(self.keys.events, event, maxlen=self.events_maxlen,
                      approximate=True)
        else:
            pipe.execute_command("EVAL", _STATUS_SCRIPT, 2, key, self.keys.events, *args)

    def record(
        self,
        target: Pipeline | Book,
        msg: OutboundMessage,
        state: str,
        now: float,
        *,
        reason: str = "",
        carrier: str = "",
        carrier_id: str = "",
        segments: int = 0,
        until: float = 0.0,
        err: str = "",
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write a transition: the status record (kept status_ttl) and its event."""
        key, status = self.build(msg, state, now, reason=reason, carrier=carrier,
                                 carrier_id=carrier_id, segments=segments, until=until,
                                 err=err)
        if extra:
            status.update(extra)
            # The NOT_IN_EVENT fields last again (see build): an extra may add an event
            # field after them ("segments" after "sent_parts").
            for f in [f for f in status if f in NOT_IN_EVENT]:
                status[f] = status.pop(f)
        if isinstance(target, Book):
            target.records.append((msg.id, key, status))
            k = (state, reason)
            target.counts[k] = target.counts.get(k, 0) + 1
            if msg.campaign or msg.template:
                self._count(target, msg, state, reason, status)
        else:
            count_state(state, reason)
            self.write(target, key, status, event_of(msg.id, status))
            if msg.campaign or msg.template:
                book = Book(self)
                self._count(book, msg, state, reason, status)
                book.flush(target)

    def count_only(self, pipe: Pipeline, msg: OutboundMessage, state: str, now: float,
                   reason: str = "") -> None:
        """The funnel side of a transition written without ``record`` (the keyed
        enqueue path writes its status and event itself)."""
        if msg.campaign or msg.template:
            book = Book(self)
            _key, status = self.build(msg, state, now, reason=reason)
            self._count(book, msg, state, reason, status)
            book.flush(pipe)

    def _count(self, book: Book, msg: OutboundMessage, state: str, reason: str,
               status: dict[Any, Any]) -> None:
        """A campaign or template message's transition in its funnel (and, once
        submitted, in its recipient's marketing record)."""
        if book.funnel is None:
            book.funnel = Tally()
        fk, variant = status["fk"], msg.variant
        book.funnel.add(fk, variant, state)
        if state == "rejected":
            book.funnel.add(fk, variant, "rejected:" + reason_family(reason))
        elif state == "submitted":
            streak = book.streaks and msg.links > 0
            if msg.campaign or streak:
                if book.sends is None:
                    book.sends = Sends()
                book.sends.add(self.keys.marketing(_digits(msg.to)), msg.campaign, variant,
                               streak)

    def build(
        self,
        msg: OutboundMessage,
        state: str,
        now: float,
        *,
        reason: str = "",
        carrier: str = "",
        carrier_id: str = "",
        segments: int = 0,
        until: float = 0.0,
        err: str = "",
        text: bool = False,
    ) -> tuple[str, dict[Any, Any]]:
        """The status key and fields of a transition (not yet counted; its event is
        ``event_of(msg.id, status)``). ``text``: every value a str (floats by repr),
        for a caller that packs the record itself (Lua would print a float short)."""
        # A batch's transitions share one `now`: its text is made once, not by hiredis
        # for every record (repr() of a float costs more than packing a str).
        if now != self._now:
            self._now, self._now_text = now, repr(now)
        at = self._now_text
        status: dict[Any, Any] = {
            "state": state,
            "updated_at": at,
            "category": msg.category,
            "to": mask_number(msg.to),
        }
        # Only the fields that have a value (written out: this runs for every transition).
        if reason:
            status["reason"] = reason
        if carrier:
            status["carrier"] = carrier
        if carrier_id:
            status["carrier_id"] = carrier_id
        if segments:
            status["segments"] = _str(segments) if text else segments
        if until:
            status["until"] = _str(until) if text else until
        if err:
            status["err"] = err
        if msg.ref:
            status["ref"] = msg.ref
        if msg.tenant:
            status["tenant"] = msg.tenant
        if msg.callback_url:  # its webhooks' own endpoint (gatewayd.webhooks)
            status["callback"] = msg.callback_url
        if msg.campaign or msg.template:
            if msg.campaign:
                status["campaign"] = msg.campaign
            if msg.variant:
                status["variant"] = msg.variant
            if msg.template:
                status["template"] = msg.template
        # The event's fields first, then those it leaves out (NOT_IN_EVENT): lua/record.lua
        # sends the event as one range of the record's arguments, no loop over its fields.
        status["attempts"] = str(msg.attempts) if text else msg.attempts
        if msg.campaign or msg.template:
            # The funnel's key, for the receipt and conversion scripts (not an event field).
            status["fk"] = self.keys.funnel(funnel_name(msg.campaign, msg.template,
                                                        msg.tenant))
        if state == "queued":
            status["enqueued_at"] = (msg.enqueued_at or at if not text
                                     else _str(msg.enqueued_at) if msg.enqueued_at else at)
        elif state == "submitted":
            status["submitted_at"] = at
        elif state in FINAL_STATES:
            status["done_at"] = at
        return self.keys.status(msg.id), status

    def queued_row(self, msg: OutboundMessage, now: float) -> tuple[list[str], int]:
        """``build(msg, "queued", now, text=True)``'s fields as lua/enqueue_many.lua takes
        them: flat [field, value, ...], the ``nv`` strings its event repeats first
        (``event_of``'s fields but "id" and "at"), then "updated_at" (the event's
        "at"), then the fields the event leaves out. Returns (row, nv)."""
        if now != self._now:
            self._now, self._now_text = now, repr(now)
        at = self._now_text
        row = ["state", "queued", "category", msg.category, "to", mask_number(msg.to)]
        if msg.ref:
            row += ("ref", msg.ref)
        if msg.tenant:
            row += ("tenant", msg.tenant)
        if msg.callback_url:
            row += ("callback", msg.callback_url)
        fk = ""
        if msg.campaign or msg.template:
            if msg.campaign:
                row += ("campaign", msg.campaign)
            if msg.variant:
                row += ("variant", msg.variant)
            if msg.template:
                row += ("template", msg.template)
            fk = self.keys.funnel(funnel_name(msg.campaign, msg.template, msg.tenant))
        nv = len(row)
        row += ("updated_at", at, "attempts", str(msg.attempts))
        if fk:
            row += ("fk", fk)
        row += ("enqueued_at", _str(msg.enqueued_at) if msg.enqueued_at else at)
        return row, nv

    def event_only(self, pipe: Pipeline, event: dict[Any, Any]) -> None:
        pipe.xadd(self.keys.events, event, maxlen=self.events_maxlen, approximate=True)
