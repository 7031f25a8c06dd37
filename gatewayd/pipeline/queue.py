"""Priority streams, the consumer group, delayed set and dead letters.

Claim, then acknowledge: an entry stays in its consumer's pending list from XREADGROUP
until the dispatcher has recorded its disposition; only then is it XACKed and XDELed
(so XLEN is the backlog). Entries pending on a dead consumer are reclaimed with XCLAIM
after ``reclaim_idle_s``; one read too often goes to the dead-letter stream.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from redis.asyncio.client import Pipeline
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, ResponseError

from gatewayd.campaigns import links as shortlinks
from gatewayd.campaigns.funnel import funnel_name
from gatewayd.config import Config
from gatewayd.errors import IntakeError, MessageError, QueueFull
from gatewayd.model import OutboundMessage, mask_number
from gatewayd.ops import metrics
from gatewayd.pipeline import staging
from gatewayd.pipeline.events import Ledger, count_state, event_of
from gatewayd.pipeline.intake import to_fields
from gatewayd.pipeline.packing import Packer
from gatewayd.store import fastpipe
from gatewayd.store.connection import (
    Redis,
    is_cluster,
    is_unavailable,
    load_script,
    pipe_script,
)
from gatewayd.store.keys import GROUP, Keys
from gatewayd.store.seal import FIELD as SEAL_FIELD
from gatewayd.store.seal import Seal, load_seal

log = logging.getLogger("gatewayd.queue")

IDEMPOTENCY_TTL_S = 24 * 3600
# QueueStore.enqueue_each's outcomes
QUEUED: Final = "queued"
DUPLICATE: Final = "duplicate"
ID_TAKEN: Final = "id_taken"
# A campaign's fan-out names its messages "<campaign id>.<row>" (campaigns.model.ID_RE).
_CAMPAIGN_MSG_ID: Final = re.compile(r"([A-Za-z0-9_\-]{1,40})\.\d+")
QUEUE_FULL: Final = "queue_full"  # its class holds queue.max_queued (QueueStore.full_depth)


# Queue reads ask Redis for raw bytes (NEVER_DECODE) and decode entry by entry: with a
# decoding client one field that is not UTF-8 failed the whole read, so its batch (and
# every reclaim of it) stayed pending for ever (issue 14).
_RAW: Final = {NEVER_DECODE: True}


# Intakes counted where they happen, in the daemon (the reader skips them).
COUNTED_AT_INTAKE: Final = frozenset({"http"})


def is_raw(fields: dict[str, str]) -> bool:
    """An entry upstream pushed itself: gatewayd's writers (intake, the fan-out, its
    own retries and deferrals) always seal their entries (``_gw``)."""
    return SEAL_FIELD not in fields


@dataclass(slots=True)
class Entry:
    klass: str
    entry_id: str
    fields: dict[str, str] | None  # None: the entry was deleted while pending
    deliveries: int = 1
    # The entry's fields as read, when they are not valid UTF-8 (``fields`` then holds
    # them decoded with replacement characters, for the record only): dead-lettered.
    raw: list[bytes] | None = None


def _pairs(flat: list[str]) -> dict[str, str]:
    """[f1, v1, f2, v2, ...] -> {f1: v1, ...} (Redis replies pair their fields; one
    iterator zipped with itself is ~40 % cheaper than two slices)."""
    it = iter(flat)
    return dict(zip(it, it))  # noqa: B905 - one iterator: strict= would consume a pair


def _text(b: bytes | str) -> str:
    return b if isinstance(b, str) else b.decode()


def decode_entry(klass: str, entry_id: bytes | str,
                 kv: list[bytes] | dict[bytes, bytes] | None, deliveries: int = 1) -> Entry:
    """One raw stream entry -> Entry: its fields decoded as UTF-8, or, when they are
    not, kept raw (``Entry.raw``) for the dead-letter stream; never an exception.
    ``kv``: [name, value, ...] as Redis sends it, or {name: value} as redis-py's
    response callbacks make it (commands sent with execute_command)."""
    eid = _text(entry_id)
    if not kv:
        return Entry(klass, eid, None, deliveries)
    if isinstance(kv, dict):
        kv = [x for pair in kv.items() for x in pair]
    try:
        fields = _pairs([b.decode() for b in kv])
    except UnicodeDecodeError:
        shown = _pairs([b.decode(errors="replace") for b in kv])
        return Entry(klass, eid, shown, deliveries, raw=list(kv))
    return Entry(klass, eid, fields or None, deliveries)


def _stream_items(reply: Any) -> list[tuple[str, list[Any]]]:
    """An XREADGROUP reply -> [(stream, [(entry id, fields), ...])]: RESP2
    [[stream, entries]] or RESP3 {stream: entries}, raw or through redis-py's response
    callback (the cluster path), which wraps RESP3 entries in one more list."""
    if not reply:
        return []
    out: list[tuple[str, list[Any]]] = []
    for stream, items in (reply.items() if isinstance(reply, dict) else reply):
        if (len(items) == 1 and isinstance(items[0], list) and items[0]
                and isinstance(items[0][0], (list, tuple))):
            items = items[0]
        out.append((_text(stream), items))
    return out


def raw_fields_b64(raw: list[bytes]) -> str:
    """The exact bytes of an entry's fields, for its dead letter: a JSON list of base64
    strings, field name and value alternating (``raw_b64``)."""
    return json.dumps([base64.b64encode(b).decode() for b in raw])


class AckBatch:
    """Entries dispositioned in one batch, acknowledged with one XACK and one XDEL per
    stream instead of two commands per entry.

    ``flush`` must go into the same pipeline as the batch's outcome records (after
    them): an entry is acknowledged only together with its recorded disposition, so a
    crash before that pipeline leaves it pending and it is reclaimed (at-least-once).
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}

    def add(self, stream: str, entry_id: str) -> None:
        ids = self._ids.get(stream)
        if ids is None:
            self._ids[stream] = [entry_id]
        else:
            ids.append(entry_id)

    def __len__(self) -> int:
        return sum(len(v) for v in self._ids.values())

    def take(self) -> dict[str, list[str]]:
        """The ids by stream, handed to a script that acknowledges them after its own
        writes (lua/record.lua); the batch is empty afterwards."""
        ids, self._ids = self._ids, {}
        return ids

    def flush(self, pipe: Pipeline) -> None:
        for stream, ids in self._ids.items():
            # XDEL first: a process killed in the middle of writing a big pipeline
            # leaves at worst deleted-but-pending entries, which reclaim clears. The
            # other order left acked-but-undeleted entries that no read ever returns
            # and that look "ready" for ever (a kill -9 test saw 128 of them).
            pipe.xdel(stream, *ids)
            pipe.xack(stream, GROUP, *ids)
        self._ids.clear()


class QueueStore:
    def __init__(self, redis: Redis, keys: Keys, cfg: Config, consumer: str) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.q = cfg.queue
        self.consumer = consumer
        self.classes = list(cfg.queue.classes)
        self.streams = {k: keys.queue(k) for k in self.classes}
        self._by_stream = {v: k for k, v in self.streams.items()}
        self._enqueue = load_script(redis, "enqueue")
        self._queued = load_script(redis, "queued")
        self._enqueue_many = load_script(redis, "enqueue_many")
        self._read = load_script(redis, "read")
        self._move_due = load_script(redis, "move_due")
        self.cluster = is_cluster(redis)
        # Whether lua/enqueue_many.lua can run: it touches keys in many slots, so never
        # on a cluster client, whatever ``cluster`` (the ordering choice) is set to.
        self._one_node = not self.cluster
        self.ledger = Ledger(keys, cfg, redis)
        self.packer = Packer(keys, self.ledger, self.streams)
        # The deployment's seal for internal fields (``sealer()`` loads it once).
        self.seal: Seal | None = None
        self._seal_loaded = 0.0
        # stream -> queue.max_queued; class -> its depth when intake last refused one
        self.limits = {self.streams[k]: n for k, n in cfg.queue.max_queued.items()
                       if k in self.streams}
        self.full_depth: dict[str, int] = {}
        total = sum(cfg.queue.weights.values())
        self._weights = {k: w / total for k, w in cfg.queue.weights.items()} if total else {}

    async def ensure_groups(self) -> None:
        """The consumer groups (made when missing), and the seal (``sealer``)."""
        await self.sealer()
        for stream in self.streams.values():
            try:
                # "0": entries XADDed before the group existed are read too
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def sealer(self, *, reload: bool = False) -> Seal:
        """The seal (gatewayd.store.seal), loaded from Redis once; ``reload``: read it
        again (at most once a second), for entries sealed after Redis lost its key."""
        now = time.monotonic()
        if self.seal is None or (reload and now - self._seal_loaded >= 1.0):
            self.seal = await load_seal(self.redis, self.keys)
            self._seal_loaded = now
        return self.seal

    # Intake -------------------------------------------------------------------------
    async def enqueue(
        self, msgs: list[OutboundMessage], *, source: str, now: float | None = None,
        links: dict[int, list[shortlinks.NewLink]] | None = None, link_ttl_s: int = 0,
    ) -> list[tuple[str, bool]]:
        """Queue validated messages; returns (id, duplicate) for each, in order.

        A repeat of an idempotency_key within 24 h returns the first message's id and
        queues nothing. MessageError (code ``duplicate_id``) when an id is already
        another message's, after the others were queued (``enqueue_each`` says which).
        """
        try:
            out = await self.enqueue_each(msgs, source=source, now=now, links=links,
                                          link_ttl_s=link_ttl_s)
        except IntakeError as e:  # a cluster past its retries: say it in enqueue's terms
            e.results = [None if r is None else (r[0], r[1] == DUPLICATE) for r in e.results]
            raise
        self.raise_full(msgs, out)
        taken = [i for i, outcome in out if outcome == ID_TAKEN]
        if taken:
            raise MessageError("id", f"{', '.join(taken)}: already used by another message "
                                     "(the others were queued)", code="duplicate_id")
        return [(i, outcome == DUPLICATE) for i, outcome in out]

    def raise_full(self, msgs: list[OutboundMessage], out: list[tuple[str, str]]) -> None:
        """QueueFull when any message was refused for its class's max_queued."""
        full = [m for m, (_, o) in zip(msgs, out, strict=True) if o == QUEUE_FULL]
        if full:
            klass = full[0].category
            raise QueueFull(klass, self.full_depth.get(klass, 0),
                            self.q.max_queued.get(klass, 0), [m.id for m in full])

    async def enqueue_each(
        self, msgs: list[OutboundMessage], *, source: str, now: float | None = None,
        links: dict[int, list[shortlinks.NewLink]] | None = None, link_ttl_s: int = 0,
    ) -> list[tuple[str, str]]:
        """Queue validated messages; returns (id, outcome) for each, in order: QUEUED;
        DUPLICATE (an idempotency_key's repeat: the first message's id, nothing queued);
        ID_TAKEN (the id is another message's: refused, its record left alone);
        QUEUE_FULL (its class's stream holds queue.max_queued: refused; the depth is
        in ``full_depth``).

        ``links``: message index -> its short links, written before it. On a cluster:
        pipeline/staging.py (retried across a failover; errors.IntakeError names the
        messages not queued; queue.max_queued is not checked there).

        Plain messages (no campaign, template or links) on a single Redis take one
        script call for the whole list (``_enqueue_script``); others take three
        pipelined round trips (``_enqueue_pipelined``), with the same outcomes.
        """
        now = time.time() if now is None else now
        if not msgs:
            return []
        taken = await self._in_campaigns(msgs)
        if not taken:
            return await self._enqueue_each(msgs, source, now, links, link_ttl_s)
        # Ids in a campaign's namespace ("<campaign>.<n>", what its fan-out names its
        # messages) are refused like any taken id: the fan-out would meet them later.
        keep = [n for n in range(len(msgs)) if n not in taken]
        new_index = {old: new for new, old in enumerate(keep)}
        kept_links = {new_index[i]: v for i, v in (links or {}).items() if i in new_index}
        out: list[tuple[str, str] | None] = [(m.id, ID_TAKEN) for m in msgs]
        try:
            got = (await self._enqueue_each([msgs[n] for n in keep], source, now,
                                            kept_links, link_ttl_s) if keep else [])
        except IntakeError as e:
            for new, old in enumerate(keep):
                out[old] = e.results[new]
            raise IntakeError(out, {keep[k]: why for k, why in e.reasons.items()}) from e
        for new, old in enumerate(keep):
            out[old] = got[new]
        return [o for o in out if o is not None]

    async def _in_campaigns(self, msgs: list[OutboundMessage]) -> set[int]:
        """Indexes of client messages whose id is "<campaign>.<digits>" for a campaign
        that exists (one EXISTS a campaign; no round trip when no id has that shape)."""
        wanted: dict[str, list[int]] = {}
        for n, m in enumerate(msgs):
            if m.id and not m.campaign and "." in m.id:
                hit = _CAMPAIGN_MSG_ID.fullmatch(m.id)
                if hit is not None:
                    wanted.setdefault(hit[1], []).append(n)
        if not wanted:
            return set()
        names = list(wanted)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.campaign(name))
            found = await pipe.execute()
        return {n for name, hit in zip(names, found, strict=True) if int(hit)
                for n in wanted[name]}

    async def _enqueue_each(
        self, msgs: list[OutboundMessage], source: str, now: float,
        links: dict[int, list[shortlinks.NewLink]] | None, link_ttl_s: int,
    ) -> list[tuple[str, str]]:
        seal = await self.sealer()
        if self.cluster:  # the entry only after its record, across nodes: staging.py
            return await staging.enqueue(
                self.redis, self.keys, self.ledger, self.streams, msgs, source=source,
                now=now, links=links or {}, link_ttl_s=link_ttl_s,
                idempotency_ttl_s=IDEMPOTENCY_TTL_S, seal=seal)
        if self._one_node and not links and not any(m.campaign or m.template for m in msgs):
            return await self._enqueue_script(msgs, seal, source, now)
        if any(self.streams[m.category] in self.limits for m in msgs):
            return await self._enqueue_limited(msgs, seal, source, now, links, link_ttl_s)
        return await self._enqueue_pipelined(msgs, seal, source, now, links, link_ttl_s)

    async def _enqueue_limited(
        self, msgs: list[OutboundMessage], seal: Seal, source: str, now: float,
        links: dict[int, list[shortlinks.NewLink]] | None, link_ttl_s: int,
    ) -> list[tuple[str, str]]:
        """The pipelined path with max_queued: the depths read first (one XLEN each),
        the messages past a limit refused, the others queued. Checked a call at a time
        (not atomically, as the script path does): concurrent calls may together pass
        a limit by their sizes."""
        limited = sorted({self.streams[m.category] for m in msgs} & set(self.limits))
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in limited:
                pipe.xlen(stream)
            depth = dict(zip(limited, map(int, await pipe.execute()), strict=True))
        keep: list[int] = []
        for n, m in enumerate(msgs):
            stream = self.streams[m.category]
            if stream in depth:
                if depth[stream] >= self.limits[stream]:
                    self.full_depth[m.category] = depth[stream]
                    continue
                depth[stream] += 1
            keep.append(n)
        new_index = {old: new for new, old in enumerate(keep)}
        kept_links = {new_index[i]: v for i, v in (links or {}).items() if i in new_index}
        got = (await self._enqueue_pipelined([msgs[n] for n in keep], seal, source, now,
                                             kept_links, link_ttl_s) if keep else [])
        outcomes = [(m.id, QUEUE_FULL) for m in msgs]
        for n, o in zip(keep, got, strict=True):
            outcomes[n] = o
        return outcomes

    async def _enqueue_script(self, msgs: list[OutboundMessage], seal: Seal, source: str,
                              now: float) -> list[tuple[str, str]]:
        """One lua/enqueue_many.lua call for all of ``msgs`` (one round trip); the
        arguments go as one msgpack blob, packed by msgspec (cheaper than redis-py or
        hiredis packing ~30 arguments a message)."""
        replies = await self._call_enqueue_many(self.script_args(msgs, seal, source, now))
        outcomes: list[tuple[str, str]] = []
        queued: dict[str, int] = {}
        for m, r in zip(msgs, replies, strict=True):
            if r == 1:
                outcomes.append((m.id, QUEUED))
                queued[m.category] = queued.get(m.category, 0) + 1
            elif r == 0:
                outcomes.append((m.id, ID_TAKEN))
            elif isinstance(r, int):  # -1 - depth: past max_queued
                outcomes.append((m.id, QUEUE_FULL))
                self.full_depth[m.category] = -1 - r
            else:
                outcomes.append((_text(r), DUPLICATE))
        if queued:  # counted once a call, not a message
            count_state("queued", "", sum(queued.values()))
            if source in COUNTED_AT_INTAKE:  # the others when a daemon first reads them
                for klass, n in queued.items():
                    metrics.MESSAGES_ENQUEUED.labels(klass, source).inc(n)
        return outcomes

    def script_args(self, msgs: list[OutboundMessage], seal: Seal, source: str,
                    now: float) -> tuple[Any, ...]:
        """lua/enqueue_many.lua's numkeys, keys and arguments for ``msgs`` (also what
        bench/enqueue_script.py sends): each message's strings by its shape
        (gatewayd.pipeline.packing), packed as one msgpack array."""
        led = self.ledger
        flat = self.packer.rows(msgs, seal, source, now)
        return (1, self.keys.events, msgspec.msgpack.encode(flat), led.status_ttl,
                IDEMPOTENCY_TTL_S, led.events_maxlen, msgspec.msgpack.encode(self.limits))

    async def _call_enqueue_many(self, args: tuple[Any, ...]) -> list[Any]:
        """lua/enqueue_many.lua by EVALSHA, not EVAL with the source (as
        connection.pipe_script does): the call is alone in its pipeline, so a NOSCRIPT
        (Redis restarted or flushed) ran nothing and is sent again after a SCRIPT LOAD;
        meanwhile Redis does not hash ~3.5 KB of source a call, and under HTTP intake
        there is a call every few messages (codes: one a request)."""
        script = self._enqueue_many
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, *args)
        try:
            [replies] = await fastpipe.execute(pipe, raw=fastpipe.raw_ok(pipe))
        except NoScriptError:
            await self.redis.script_load(script.script)
            pipe = self.redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, *args)
            [replies] = await fastpipe.execute(pipe, raw=fastpipe.raw_ok(pipe))
        return cast(list[Any], replies)

    async def _enqueue_pipelined(
        self, msgs: list[OutboundMessage], seal: Seal, source: str, now: float,
        links: dict[int, list[shortlinks.NewLink]] | None, link_ttl_s: int,
    ) -> list[tuple[str, str]]:
        """enqueue_each in three pipelined round trips: a cluster, or messages with
        funnel counts or short links."""
        # 1. Each message's "queued" status record, created only where none exists
        #    (lua/queued.lua), and the idempotency keys' owners. Status before entry: a
        #    running daemon may read, submit and record the entry before a later
        #    "queued" write would land on top of it; and an id already used is refused,
        #    never overwritten (issue 14).
        statuses: list[tuple[str, dict[Any, Any]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in msgs:
                key, status = self.ledger.build(m, "queued", now)
                statuses.append((key, status))
                pipe_script(pipe, self._queued, [key],
                            [self.ledger.status_ttl, *(x for kv in status.items() for x in kv)])
                if m.idempotency_key:
                    pipe.get(self.keys.idempotency(m.category, m.idempotency_key))
            replies = iter(await pipe.execute())
        outcomes: list[tuple[str, str]] = []
        go: list[int] = []  # messages to queue
        at: dict[int, int] = {}  # keyed message -> index of its enqueue.lua reply
        async with self.redis.pipeline(transaction=False) as pipe:
            for n, (m, (key, _status)) in enumerate(zip(msgs, statuses, strict=True)):
                created = int(next(replies)) == 1
                owner = next(replies) if m.idempotency_key else None
                if owner is not None:  # a repeat: the first message's id
                    outcomes.append((str(owner), DUPLICATE))
                    if created:  # the repeat's own record: it was never queued
                        pipe.delete(key)
                    continue
                if not created:
                    outcomes.append((m.id, ID_TAKEN))
                    continue
                outcomes.append((m.id, QUEUED))
                go.append(n)
                # 2. The queued ones: links, entry (keyed: lua/enqueue.lua, which takes
                #    the idempotency key atomically) and, unkeyed, the queued event.
                for ln in (links or {}).get(n, ()):
                    fk = self.keys.funnel(funnel_name(m.campaign, m.template, m.tenant))
                    digits = m.to.lstrip("+")
                    shortlinks.write(pipe, self.keys, ln.code, shortlinks.link_fields(
                        ln.target, m.id, fk, m.variant, m.campaign, m.template,
                        self.keys.recipient(digits), repr(now),
                        masked=mask_number(m.to) if self.keys.privacy else ""), link_ttl_s)
                # Who queued it, for gatewayd_messages_enqueued_total: a daemon counts
                # its HTTP intake as it takes it, and every other intake (the client and
                # CLI run elsewhere: their counters are never scraped) when it first
                # reads the entry (dispatch; raw XADDs, without it, likewise). Sealed
                # with the other internal fields: a producer cannot set it.
                m.intake = source
                fields = to_fields(m, seal)
                stream = self.streams[m.category]
                if m.idempotency_key:
                    flat = [x for kv in fields.items() for x in kv]
                    pipe_script(
                        pipe, self._enqueue,
                        [stream, self.keys.idempotency(m.category, m.idempotency_key)],
                        [m.id, IDEMPOTENCY_TTL_S, *flat],
                    )
                    at[n] = len(pipe) - 1
                else:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                    self._announce(pipe, m, statuses[n][1], source, now)
            replies2 = await pipe.execute() if len(pipe) else []
        keyed = [n for n in go if msgs[n].idempotency_key]
        if not keyed:
            return outcomes
        # 3. A keyed message's event waits for enqueue.lua's verdict (a duplicate that
        #    raced the look-up above is never announced as queued).
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in keyed:
                m, reply = msgs[n], replies2[at[n]]
                if int(reply[0]) == 0:
                    outcomes[n] = (str(reply[1]), DUPLICATE)
                    pipe.delete(statuses[n][0])
                    continue
                self._announce(pipe, m, statuses[n][1], source, now)
            if len(pipe):
                await pipe.execute()
        return outcomes

    def _announce(self, pipe: Pipeline, m: OutboundMessage, status: dict[Any, Any],
                  source: str, now: float) -> None:
        """A queued message's event, counters and funnel count (its record is written)."""
        self.ledger.event_only(pipe, event_of(m.id, status))
        self.ledger.count_only(pipe, m, "queued", now)
        count_state("queued", "")
        if source in COUNTED_AT_INTAKE:
            metrics.MESSAGES_ENQUEUED.labels(m.category, source).inc()

    # Reading ------------------------------------------------------------------------
    async def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """Read up to count new entries, highest class first (strict priority).

        A lower class is read only when the higher ones had nothing at that moment,
        except for the share configured in queue.weights (anti-starvation). Without
        weights a batch holds one class only: codes found are processed on their own,
        not topped up with campaign messages whose policy checks and submits they would
        wait for (bench/priority: OTP p99 ~50 -> ~30 ms, marketing throughput unchanged).
        """
        if not self._weights and not self.cluster:
            first = await self._read_first(count)
            if first or block_ms is None:
                return first
            return await self._read_blocking(count, block_ms)
        out: list[Entry] = []
        remaining = count
        if self._weights:
            for klass in self.classes:
                share = int(count * self._weights.get(klass, 0))
                if share:
                    got = await self._read_one(klass, share)
                    out.extend(got)
                    remaining -= len(got)
        for klass in self.classes:
            if remaining <= 0:
                break
            got = await self._read_one(klass, remaining)
            out.extend(got)
            remaining -= len(got)
            if got and not self._weights:
                break
        if out or block_ms is None:
            return out
        return await self._read_blocking(count, block_ms)

    async def _read_blocking(self, count: int, block_ms: int) -> list[Entry]:
        """Nothing anywhere: block on every stream for new work. On a cluster the
        streams live in different slots and one XREADGROUP cannot span them: block on
        the highest class only; the others are polled again within block_ms."""
        blocking = [self.streams[self.classes[0]]] if self.cluster else self.streams.values()
        reply = await self._xreadgroup({s: ">" for s in blocking}, count, block_ms)
        return self._entries(reply)

    async def _read_first(self, count: int) -> list[Entry]:
        """The strict-priority read of ``read`` in one script call (lua/read.lua)."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_read(pipe, count)
        try:
            [reply] = await fastpipe.execute(pipe, raw=True)
        except ResponseError as e:
            await self.on_read_error(e)
            return []
        return self.parse_read(reply)

    def can_read_ahead(self, klass: str = "") -> bool:
        """Whether ``queue_read`` can ride in another pipeline: a single Redis, and (for
        the strict-priority read) no weights."""
        return not self.cluster and (bool(klass) or not self._weights)

    def queue_read(self, pipe: Pipeline, count: int, klass: str = "") -> None:
        """Queue a non-blocking read on ``pipe`` (raw replies, not decoded): the
        strict-priority one, or of one class; ``parse_read`` turns its reply into entries."""
        classes = [klass] if klass else self.classes
        keys = [self.streams[k] for k in classes]
        # pipe_script's EVAL, with the reply left undecoded (see _RAW)
        pipe.execute_command("EVAL", self._read.script, len(keys), *keys,
                             GROUP, self.consumer, count, **_RAW)

    def parse_read(self, reply: Any, klass: str = "") -> list[Entry]:
        if not reply:
            return []
        klass = klass or self.classes[int(reply[0]) - 1]
        return [decode_entry(klass, entry_id, kv) for entry_id, kv in reply[1]]

    async def on_read_error(self, e: ResponseError) -> None:
        """NOGROUP: Redis restarted empty (or was flushed): recreate the groups."""
        if "NOGROUP" not in str(e):
            raise e
        log.warning("consumer groups missing (Redis restarted empty?): recreating")
        await self.ensure_groups()

    async def read_class(self, klass: str, count: int, block_ms: int) -> list[Entry]:
        """Read only one class (the express lane for the highest class)."""
        got = await self._read_one(klass, count)
        if got:
            return got
        reply = await self._xreadgroup({self.streams[klass]: ">"}, count, block_ms)
        return self._entries(reply)

    async def _read_one(self, klass: str, count: int) -> list[Entry]:
        reply = await self._xreadgroup({self.streams[klass]: ">"}, count, None)
        return self._entries(reply)

    async def _xreadgroup(self, streams: dict[str, str], count: int, block: int | None) -> Any:
        try:
            # The raw reply, parsed below (and not decoded: see _RAW): redis-py's own
            # parsing of the nested lists was ~5 % of the daemon's CPU in bench/e2e.
            # RESP3 (redis-py's default when the server speaks it) gives
            # {stream: entries}, RESP2 [[stream, entries]].
            blocking = ("BLOCK", block) if block is not None else ()
            args = ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count,
                    *blocking, "STREAMS", *streams, *streams.values())
            pipe = self.redis.pipeline(transaction=False)
            if fastpipe.raw_ok(pipe):
                pipe.execute_command(*args, **_RAW)
                [reply] = await fastpipe.execute(pipe, raw=True)
            else:  # a cluster: one stream, routed by redis-py
                reply = await self.redis.execute_command(*args, **_RAW)  # type: ignore[no-untyped-call]
            return _stream_items(reply)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # Redis restarted empty (or was flushed): recreate the groups, read next time.
            log.warning("consumer groups missing (Redis restarted empty?): recreating")
            await self.ensure_groups()
            return []

    def _entries(self, reply: Any) -> list[Entry]:
        out: list[Entry] = []
        stream: str
        for stream, items in reply or []:
            klass = self._by_stream[stream]
            for entry_id, kv in items:
                out.append(decode_entry(klass, entry_id, kv))
        return out

    async def reclaim(self, count: int, in_flight: Container[str] | None = None, *,
                      own_idle_s: float | None = None) -> list[Entry]:
        """Take over up to ``count`` entries a stream: idle for reclaim_idle_s on a
        consumer that is gone, or our own (``own_idle_s``, default reclaim_idle_s).

        A consumer is alive while its heartbeat key exists (the daemon's housekeeping
        tick refreshes it); a live consumer's entries may just be waiting in a slow
        batch, and taking them would send them twice. Our own entries are taken back
        only when no batch of ours still holds them (``in_flight``): a batch that failed,
        or (``own_idle_s`` = time since start) the entries a previous run of this same
        consumer left. Each owner's entries are listed by owner (XPENDING with a
        consumer), so a live consumer's many entries never hide a dead one's; callers
        call again until it returns nothing (a takeover is one pass, whatever the count).
        """
        idle_ms = int(self.q.reclaim_idle_s * 1000)
        own_ms = idle_ms if own_idle_s is None else max(0, int(own_idle_s * 1000))
        out: list[Entry] = []
        held: Container[str] = in_flight if in_flight is not None else ()
        alive: dict[str, bool] = {}
        for klass, stream in self.streams.items():
            try:
                summary = await self.redis.xpending(stream, GROUP)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_groups()
                continue
            owners = [str(c["name"]) for c in summary.get("consumers") or []
                      if int(c.get("pending", 0))]
            unknown = sorted(o for o in owners if o != self.consumer and o not in alive)
            if unknown:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for owner in unknown:
                        pipe.exists(self.keys.heartbeat(owner))
                    for owner, n in zip(unknown, await pipe.execute(), strict=True):
                        alive[owner] = bool(n)
            taken = 0
            for owner in owners:
                if taken >= count:
                    break
                own = owner == self.consumer
                if not own and alive.get(owner):
                    continue
                min_idle = own_ms if own else idle_ms
                pending = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=count - taken,
                    consumername=owner, idle=min_idle,
                )
                counts = {str(p["message_id"]): int(p["times_delivered"]) for p in pending
                          if not own or str(p["message_id"]) not in held}
                if not counts:
                    continue
                taken += len(counts)
                # XCLAIM re-checks idleness, so two daemons never both take an entry.
                # Raw replies, decoded entry by entry (see _RAW).
                claimed: list[Any] = cast(Any, await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "XCLAIM", stream, GROUP, self.consumer, max(1, min_idle), *counts,
                    **_RAW))
                got: set[str] = set()
                for item in claimed or ():
                    if not item:  # Redis < 7: an entry deleted while pending is nil
                        continue
                    entry_id = _text(item[0])
                    got.add(entry_id)
                    deliveries = counts.get(entry_id, 1) + 1
                    out.append(decode_entry(klass, entry_id, item[1], deliveries))
                    metrics.DUPLICATES.labels(klass).inc()
                missing = set(counts) - got
                if missing:
                    # deleted while pending (already dispositioned): just clear them
                    await self.redis.xack(stream, GROUP, *missing)
        return out

    # Dispositions (into the caller's pipeline) --------------------------------------
    def ack(self, pipe: Pipeline, entry: Entry, acks: AckBatch | None = None) -> None:
        """XACK and XDEL the entry; with ``acks``, only collect it for ``acks.flush``."""
        stream = self.streams[entry.klass]
        if acks is not None:
            acks.add(stream, entry.entry_id)
            return
        pipe.xdel(stream, entry.entry_id)  # before XACK: see AckBatch.flush
        pipe.xack(stream, GROUP, entry.entry_id)

    def dead_letter(
        self, pipe: Pipeline, entry: Entry, reason: str, acks: AckBatch | None = None
    ) -> None:
        record: dict[str, str] = {
            "reason": reason,
            "class": entry.klass,
            "entry_id": entry.entry_id,
            "consumer": self.consumer,
            "at": repr(time.time()),
            "raw": json.dumps(entry.fields or {}, ensure_ascii=False),
        }
        if entry.raw is not None:
            record["raw_b64"] = raw_fields_b64(entry.raw)
        pipe.xadd(self.keys.dead, record, maxlen=self.q.dead_maxlen, approximate=True)  # type: ignore[arg-type]
        self.ack(pipe, entry, acks)
        metrics.DEAD_LETTERS.labels(reason.split(":", 1)[0][:40]).inc()

    def delay(self, pipe: Pipeline, msg: OutboundMessage, due: float) -> None:
        assert self.seal is not None, "sealer() first"  # the dispatcher loads it
        member = json.dumps(to_fields(msg, self.seal), ensure_ascii=False, sort_keys=True)
        pipe.zadd(self.keys.delayed(msg.category), {member: due})

    # Housekeeping -------------------------------------------------------------------
    async def move_due(self, now: float, limit: int = 1000) -> int:
        """Due delayed messages back to their streams, class by class: a class whose
        call fails (say its delayed set was overwritten with a string) does not hold
        the others' back; the first such error is raised once every class was tried.
        Redis away stops at once (every other class would fail the same way)."""
        moved = 0
        failed: Exception | None = None
        for klass, stream in self.streams.items():
            try:
                n = await self._move_due(keys=[self.keys.delayed(klass), stream],
                                         args=[now, limit])
            except Exception as e:
                if is_unavailable(e):
                    raise
                failed = failed or e
                continue
            moved += int(n)
        if failed is not None:
            raise failed
        return moved

    async def depths(self) -> dict[str, dict[str, int]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for klass, stream in self.streams.items():
                pipe.xlen(stream)
                pipe.xpending(stream, GROUP)
                pipe.zcard(self.keys.delayed(klass))
            replies = await pipe.execute(raise_on_error=False)
        out: dict[str, dict[str, int]] = {}
        for i, klass in enumerate(self.classes):
            xlen, pend, delayed = replies[3 * i : 3 * i + 3]
            pending = int(pend["pending"]) if isinstance(pend, dict) else 0
            xlen = int(xlen) if isinstance(xlen, int) else 0
            out[klass] = {
                "ready": max(0, xlen - pending),
                "pending": pending,
                "delayed": int(delayed) if isinstance(delayed, int) else 0,
            }
        return out
