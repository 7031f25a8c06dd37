"""Inbound traffic from carriers: delivery-receipt correlation and MO replies.

Receipts are correlated through ``<prefix>smsc:<account>:<id>`` keys written when the
submit_sm_resp was recorded, one per part under the normalised SMSC id, keyed by SMSC
account (config.account_names): a receipt arriving on any bind of any carrier entry on
the account (split transmitter/receiver binds, two entries sharing an account) finds its
message. A receipt is looked up under every form its id may have had at submit
(hex/decimal, leading zeros, case: carrier.ids.receipt_candidates), so it matches
whichever form the SMSC uses, unless its carrier entry declares how its ids relate
(``receipt_ids``: then under that one form, carrier.ids.receipt_keys); one whose carrier
renders ids identically on both sides (Receipt.exact_id: CMPP's binary Msg_Id) only
under its own. Keys an older gatewayd wrote under every candidate form, or under the
carrier entry's name where that is not the account's (before accounts existed), are
still found: they are looked up last, so a matching receipt pays nothing for them. A
receipt that arrives before its submit_sm_resp was recorded is parked in a sorted set
and retried by the housekeeping tick for ``queue.early_receipt_hold_s``.

On a single Redis a chunk of receipts is correlated, applied and its final events
published by ONE script call (lua/receipts.lua); on a cluster, whose keys live in
different slots, the same work takes several pipelined steps (``_apply_in_steps``). Both
paths are tested to leave the same states and events (tests/test_inbound_receipts.py).

Several daemons: the parked receipts and the awaiting-receipt set are shared, so the
two housekeeping jobs that work through them (``retry_early``, ``expire_awaiting``) run
in one daemon at a time, the holder of a short Redis lease (``Keys.lease("receipts")``,
renewed every tick, taken over by another daemon when its holder stops renewing).

While Redis does not answer, receipts and MO are written to a durable local spool
(pipeline/spool.py, under ``daemon.state_dir``) instead, and acknowledged to the SMSC
once fsynced; ``replay_spool`` applies them in order when Redis is back (and after a
restart). Chunks that arrive while the spool holds anything queue behind it.

A final event is published once. On a single Redis the script decides and publishes it
in one step. On a cluster that takes separate round trips, through which daemons, resent
copies of a receipt and the expiry sweep race; so publishing is claimed in the status
hash (``event_claim``, lua/receipt.lua), atomically with applying the receipt: only the
claim holder publishes, then removes the message from `awaiting`. A holder that dies
before publishing leaves the message awaiting under a claim that goes stale after
``claim_lease_s``; a resent receipt or the receipt housekeeping then claims it and
publishes: every message a chunk's receipts reach is registered in ``Keys.event_claims``
(due when its claim would go stale) in a round trip before the claims are taken, and
``take_over_claims`` goes through the registrations that came due, so a dead holder's
event goes out about a lease later, not at the message's receipt deadline (hours).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatewayd.accounts.quota import DAY_TTL_S, day_of
from gatewayd.campaigns.funnel import Tally, attribute_optout
from gatewayd.carrier.ids import receipt_keys
from gatewayd.config import Config, ReceiptIds, account_names, accounts
from gatewayd.model import FINAL_STATES, InboundMessage, Receipt, mask_number
from gatewayd.ops import metrics
from gatewayd.pipeline.events import count_state
from gatewayd.pipeline.spool import Kind, Spool
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.numbers import INTERNATIONAL, to_e164
from gatewayd.policy.optout import opt_out, resubscribe
from gatewayd.policy.replies import Reply
from gatewayd.store import fastpipe
from gatewayd.store.connection import Redis, denied, is_cluster, load_script, pipe_script
from gatewayd.store.keys import Keys

log = logging.getLogger("gatewayd.inbound")

# Prometheus children by label values (labels() per receipt showed in the profile).
_receipts_by: dict[tuple[str, str], Any] = {}
_latency_by: dict[str, Any] = {}
_mo_by: dict[str, Any] = {}


def is_outage(e: BaseException) -> bool:
    """Redis unreachable (not a bug or a bad reply): what the spool is for."""
    return isinstance(e, (RedisConnectionError, RedisTimeoutError, ConnectionError,
                          TimeoutError, OSError))


def _count_mo(result: str) -> None:
    c = _mo_by.get(result)
    if c is None:
        c = _mo_by[result] = metrics.MO_RESULTS.labels(result)
    c.inc()


def _count_receipt(carrier: str, kind: str, n: int = 1) -> None:
    c = _receipts_by.get((carrier, kind))
    if c is None:
        c = _receipts_by[(carrier, kind)] = metrics.RECEIPTS.labels(carrier, kind)
    c.inc(n)


def _latency(carrier: str) -> Any:
    h = _latency_by.get(carrier)
    if h is None:
        h = _latency_by[carrier] = metrics.RECEIPT_LATENCY.labels(carrier)
    return h


# Receipts per script call: bounds how long one call holds Redis (~10 commands each).
_SCRIPT_CHUNK = 256
# How long a claim on publishing a final event (cluster path) keeps others off: far
# longer than its holder's event write takes, even retried through a failover; a dead
# holder's event waits this long for a resent receipt or the sweep to publish it.
_CLAIM_LEASE_S = 30.0

# A final event to publish: message id, receipt.lua's reply, the receipt's carrier.
_FinalEvent = tuple[str, list[str], str]

_receipt_enc = msgspec.json.Encoder()
_receipt_dec = msgspec.json.Decoder(Receipt)


class InboundHandler:
    """Implements carrier.api.DeliveryHandler; returns only once Redis has the data."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        cfg: Config,
        policy: Callable[[], PolicyEngine | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.policy = policy
        self.clock = clock
        self._receipt = load_script(redis, "receipt")
        # One call for a chunk of receipts, on a single Redis (see lua/receipts.lua).
        self._receipts = None if is_cluster(redis) else load_script(redis, "receipts")
        self._status_affix = tuple(keys.status("\x00").split("\x00"))
        self._expire = load_script(redis, "expire_submitted")
        # The sweep's final events in one step, on a single Redis (see expire_awaiting).
        self._publish_awaiting = (None if is_cluster(redis)
                                  else load_script(redis, "publish_awaiting"))
        self._mark_published = load_script(redis, "mark_published")
        self._claims_settle = load_script(redis, "claims_settle")
        self._lease = load_script(redis, "lease")
        self._lease_token = uuid.uuid4().hex
        self._lease_ms = int(max(2.0, 3 * cfg.daemon.housekeeping_interval_s) * 1000)
        self.claim_lease_s = _CLAIM_LEASE_S
        self.events_maxlen = cfg.queue.events_maxlen
        # "" (a CarrierConfig made in code; a config file must say): international.
        self.mo_cc = {c.name: c.mo_country_code or INTERNATIONAL for c in cfg.carrier}
        self._receipt_ids: dict[str, ReceiptIds] = {c.name: c.receipt_ids for c in cfg.carrier}
        self.mo_dedup_s = cfg.queue.mo_dedup_s
        self._mo_store = load_script(redis, "mo_store")
        self.early_hold_s = cfg.queue.early_receipt_hold_s
        self.optout_window_s = cfg.campaigns.optout_window_days * 86400
        # carrier entry -> the names its receipts' keys may carry: the account's first,
        # then (keys of an older gatewayd) entry names that are not the account's.
        names = account_names(cfg)
        by_account = accounts(cfg)
        self._key_names: dict[str, tuple[str, ...]] = {
            c: (a, *by_account[a].legacy_names) for c, a in names.items()
        }
        self.spool: Spool | None = None

    def learn_carriers(self, cfg: Config) -> None:
        """The carriers of a reloaded config. A carrier whose account changed keeps its
        old account's key names after the new ones: receipts of messages sent before the
        reload were recorded under those. Removed carriers stay known (their binds drain,
        and their receipts may come later on another entry of the account)."""
        self.mo_cc.update({c.name: c.mo_country_code or INTERNATIONAL for c in cfg.carrier})
        self._receipt_ids.update({c.name: c.receipt_ids for c in cfg.carrier})
        names = account_names(cfg)
        by_account = accounts(cfg)
        for c, a in names.items():
            fresh = (a, *by_account[a].legacy_names)
            before = self._key_names.get(c, ())
            self._key_names[c] = (*fresh, *(n for n in before if n not in fresh))

    # The spool ------------------------------------------------------------------------
    async def _spooled(self, kind: Kind, items: list[Any],
                       now: Callable[[list[Any]], Any]) -> None:
        """Apply now, or (Redis away, or the spool not yet replayed) spool durably."""
        spool = self.spool
        if spool is None:
            try:
                await now(items)
            except Exception as e:
                _note_denied("receipts" if kind == "r" else "mo", e)
                raise
            return
        if not spool.active:
            try:
                await now(items)
                return
            except Exception as e:
                if not is_outage(e):
                    _note_denied("receipts" if kind == "r" else "mo", e)
                    raise
                log.warning("Redis unreachable (%s): spooling %d %s locally", e, len(items),
                            "receipts" if kind == "r" else "MO")
        await spool.append(kind, items)

    async def replay_spool(self) -> int:
        """Apply what the spool holds, in order (housekeeping, once Redis answers)."""
        if self.spool is None or not self.spool.active:
            return 0

        async def apply(kind: Kind, items: list[Any]) -> None:
            if kind == "r":
                await self._receipts_now(items)
            else:
                await self._inbound_now(items)

        n = await self.spool.replay(apply, is_outage)
        if n:
            log.info("replayed %d spooled chunks of receipts/MO into Redis", n)
        return n

    def correlation_keys(self, r: Receipt) -> list[str]:
        """Every key the receipt's message may be correlated under, in look-up order."""
        if r.exact_id and r.smsc_id:
            cs = [r.smsc_id]
        else:
            cs = receipt_keys(r.smsc_id, self._receipt_ids.get(r.carrier, "auto"))
        names = self._key_names.get(r.carrier, (r.carrier,))
        correlation = self.keys.correlation
        if len(names) == 1:
            name = names[0]
            return [correlation(name, c) for c in cs]
        return [correlation(name, c) for name in names for c in cs]

    # Receipts -----------------------------------------------------------------------
    async def on_receipts(self, receipts: list[Receipt]) -> None:
        await self._spooled("r", receipts, self._receipts_now)

    async def _receipts_now(self, receipts: list[Receipt]) -> None:
        now = self.clock()
        unmatched = await self._apply(receipts, now)
        if unmatched:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in unmatched:
                    if not r.received_at:
                        r.received_at = now
                    pipe.zadd(self.keys.early_receipts, {_receipt_enc.encode(r): now})
                await pipe.execute()

    async def _apply(self, receipts: list[Receipt], now: float) -> list[Receipt]:
        """Apply what can be correlated; return the receipts that could not (yet)."""
        interim = [r for r in receipts if not r.state]
        for r in interim:
            _count_receipt(r.carrier, "interim")
        final = [r for r in receipts if r.state]
        if not final:
            return []
        if self._receipts is not None:
            unmatched: list[Receipt] = []
            for i in range(0, len(final), _SCRIPT_CHUNK):
                unmatched += await self._apply_in_script(final[i:i + _SCRIPT_CHUNK], now)
            return unmatched
        return await self._apply_in_steps(final, now)

    async def _apply_in_script(self, final: list[Receipt], now: float) -> list[Receipt]:
        assert self._receipts is not None
        keys: list[str] = [self.keys.events, self.keys.awaiting_receipt]
        args: list[Any] = [now, self.events_maxlen, *self._status_affix, len(final)]
        for r in final:
            cs = self.correlation_keys(r)
            keys += cs
            args += [r.state, r.err, len(cs)]
        args += [*self.keys.account_day("\x00", day_of(now)).split("\x00"), DAY_TTL_S]
        # Through a pipeline so hiredis packs the few thousand arguments (redis-py's
        # own packer showed in the profile).
        pipe = self.redis.pipeline(transaction=False)
        pipe_script(pipe, self._receipts, keys, args)
        [res] = await fastpipe.execute(pipe)
        unmatched: list[Receipt] = []
        kinds: dict[tuple[str, str], int] = {}  # counter updates once a chunk
        states: dict[str, int] = {}
        latencies: dict[str, list[float]] = {}
        for i, r in enumerate(final):
            kind, _id, state, carrier, submitted_at, published = res[6 * i : 6 * i + 6]
            if kind in ("unmatched", "early"):
                unmatched.append(r)
                continue
            kinds[(r.carrier, kind)] = kinds.get((r.carrier, kind), 0) + 1
            if published:
                states[state] = states.get(state, 0) + 1
                if submitted_at:
                    c = carrier or r.carrier
                    lat = latencies.get(c)
                    if lat is None:
                        lat = latencies[c] = []
                    lat.append(max(0.0, now - float(submitted_at)))
        for c, values in latencies.items():
            metrics.observe_many(_latency(c), values)
        for (carrier, kind), n in kinds.items():
            _count_receipt(carrier, kind, n)
        for state, n in states.items():
            count_state(state, "receipt", n)
        return unmatched

    async def _apply_in_steps(self, final: list[Receipt], now: float) -> list[Receipt]:
        """The cluster path: correlation look-ups, receipt scripts, final events."""
        cands = [self.correlation_keys(r) for r in final]
        async with self.redis.pipeline(transaction=False) as pipe:
            for cs in cands:
                for c in cs:
                    pipe.get(c)
            found = await fastpipe.execute(pipe)
        matched: list[tuple[Receipt, str, str]] = []
        unmatched: list[Receipt] = []
        i = 0
        for r, cs in zip(final, cands, strict=True):
            hit = next((v for v in found[i : i + len(cs)] if v), None)
            i += len(cs)
            if hit is None:
                unmatched.append(r)
                continue
            msg_id, _, part = str(hit).partition(" ")
            matched.append((r, msg_id, part or "0"))
        if not matched:
            return unmatched
        lease = self.claim_lease_s
        # Registered before any claim is taken, in a round trip of its own: a daemon
        # killed between its claim and its event write leaves the message here, and
        # the receipt housekeeping publishes it once the claim is stale
        # (take_over_claims). GT: a later registration (another daemon's) is kept.
        await self.redis.zadd(self.keys.event_claims,
                              {msg_id: now + lease for _r, msg_id, _p in matched}, gt=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for r, msg_id, part in matched:
                pipe_script(pipe, self._receipt, [self.keys.status(msg_id)],
                                  [part, r.state, now, r.err, lease])
            results = await fastpipe.execute(pipe)
        finals: list[_FinalEvent] = []  # claimed by this call, which publishes them
        late: list[_FinalEvent] = []  # claimed, final before: published if still awaiting
        held: list[str] = []  # claimed by another call, less than a lease ago
        gone: list[str] = []  # published already: only out of `awaiting`, if still there
        funnel = Tally()  # campaign/template messages made final by this call
        for (r, msg_id, _part), res in zip(matched, results, strict=True):
            kind = res[0]
            if kind in ("early", "missing"):
                # On a cluster the correlation key and the "submitted" record are written
                # side by side on different nodes: a receipt between the two finds the
                # record not yet submitted (or not there yet). Parked and retried like a
                # receipt that beat its submit_sm_resp, not dropped (issue 15).
                unmatched.append(r)
                continue
            _count_receipt(r.carrier, kind)
            if kind not in ("final", "late"):
                continue
            if kind == "final" and res[11]:
                funnel.add(str(res[11]), str(res[12]), str(res[1]))
            if res[13] == 2:
                gone.append(msg_id)
            elif not res[13]:
                held.append(msg_id)
            elif kind == "final":
                finals.append((msg_id, res, r.carrier))
            else:
                late.append((msg_id, res, r.carrier))
        if funnel.counts:
            async with self.redis.pipeline(transaction=False) as pipe:
                funnel.flush(pipe)
                await pipe.execute()
        ours = {msg_id for msg_id, _, _ in (*finals, *late)}
        held = [msg_id for msg_id in dict.fromkeys(held) if msg_id not in ours]
        if late or held:
            async with self.redis.pipeline(transaction=False) as pipe:
                # Final already, but was its event published? Only if it left `awaiting`.
                for msg_id, _res, _c in late:
                    pipe.zscore(self.keys.awaiting_receipt, msg_id)
                # Claimed by another publisher, which may have died before publishing:
                # the sweep takes the message over when that claim goes stale, not at
                # its receipt deadline (hours away). XX: never puts back one that left.
                for msg_id in held:
                    pipe.zadd(self.keys.awaiting_receipt, {msg_id: now + lease},
                              xx=True, lt=True)
                scores = (await pipe.execute())[:len(late)]
            finals += [item for item, score in zip(late, scores, strict=True)
                       if score is not None]
        if finals or gone:
            await self._publish_finals(finals, now, gone)
        return unmatched

    async def _publish_finals(
        self, finals: list[_FinalEvent], now: float, done: Sequence[str] = ()
    ) -> None:
        """Publish claimed final events, then take their messages (and ``done``, with
        nothing to publish) out of `awaiting`.

        Two round trips, not one pipeline: on a cluster the stream and the set are on
        different nodes, which a pipeline writes side by side. A removal that landed
        beside a failed event write would lose the event (a message no longer awaiting
        is never published again); a failed write leaves it awaiting instead, under a
        claim that goes stale, for a resent receipt or the sweep to publish. With the
        removal each claim is marked 'published': the dispatcher's ZADD to `awaiting`,
        written beside the status on another node, can land after the receipt was
        handled, and the sweep must then only remove the message, not publish again."""
        remove = list(done)
        published: list[str] = []
        if finals:
            async with self.redis.pipeline(transaction=False) as pipe:
                for msg_id, res, _carrier in finals:
                    pipe.xadd(self.keys.events, cast(Any, self._event(msg_id, res, now)),
                              maxlen=self.events_maxlen, approximate=True)
                self._count_usage(pipe, finals, now)
                await fastpipe.execute(pipe)
            for msg_id, res, carrier in finals:
                self._count_final(res[1], res[3] or carrier, res[9], now)
                remove.append(msg_id)
                published.append(msg_id)
        if remove:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.awaiting_receipt, *remove)
                for msg_id in published:
                    pipe_script(pipe, self._mark_published, [self.keys.status(msg_id)], [])
                if self._receipts is None:  # a cluster: their claims need no take-over
                    pipe.zrem(self.keys.event_claims, *remove)
                await fastpipe.execute(pipe)

    def _count_usage(self, pipe: Any, finals: list[_FinalEvent], now: float) -> None:
        """Accounts' usage (gatewayd.accounts): final states by tenant and category,
        counted in the pipeline that publishes them (a few HINCRBY a batch, no round
        trip of their own)."""
        counts: dict[str, Counter[str]] = {}
        for _msg_id, res, _carrier in finals:
            state, category, tenant = res[1], res[2], res[7]
            if tenant:
                counts.setdefault(tenant, Counter())[f"{state}:{category or '?'}"] += 1
        day = day_of(now)
        for tenant, c in counts.items():
            key = self.keys.account_day(tenant, day)
            for field, n in c.items():
                pipe.hincrby(key, field, n)
            pipe.expire(key, DAY_TTL_S)

    @staticmethod
    def _event(msg_id: str, res: list[str], now: float) -> dict[str, Any]:
        """The final event of a receipt.lua reply."""
        (state, category, rcarrier, carrier_id, segments, ref, tenant, to,
         _submitted_at, err) = res[1:11]
        event: dict[str, Any] = {"id": msg_id, "state": state, "at": now}
        for k, v in (("category", category), ("carrier", rcarrier),
                     ("carrier_id", carrier_id), ("segments", segments),
                     ("ref", ref), ("tenant", tenant), ("to", to), ("err", err)):
            if v:
                event[k] = v
        return event

    @staticmethod
    def _count_final(state: str, carrier: str, submitted_at: str, now: float) -> None:
        count_state(state, "receipt")
        if submitted_at:
            _latency(carrier).observe(max(0.0, now - float(submitted_at)))

    async def _hold_lease(self) -> bool:
        """True while this handler is the one daemon running the receipt housekeeping."""
        return bool(await self._lease(keys=[self.keys.lease("receipts")],
                                      args=[self._lease_token, self._lease_ms]))

    async def retry_early(self, limit: int = 1000) -> int:
        """Housekeeping: match parked receipts again; give up on old ones (counted)."""
        if not await self._hold_lease():
            return 0
        now = self.clock()
        members: list[tuple[str, float]] = cast(Any, await self.redis.zrange(
            self.keys.early_receipts, 0, limit - 1, withscores=True))
        if not members:
            return 0
        parked: list[tuple[str, Receipt, float]] = []
        for raw, score in members:
            try:
                parked.append((raw, _receipt_dec.decode(raw), float(score)))
            except msgspec.DecodeError:
                parked.append((raw, Receipt(carrier="?", smsc_id="", stat="", state=""), 0.0))
        still = await self._apply([r for _, r, _ in parked if r.smsc_id], now)
        still_ids = {id(r) for r in still}
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw, r, since in parked:
                if id(r) in still_ids and now - since < self.early_hold_s:
                    continue
                if id(r) in still_ids or not r.smsc_id:
                    metrics.RECEIPTS.labels(r.carrier, "unmatched").inc()
                    log.warning("receipt matched no message; dropped after %.0fs",
                                now - since, extra={"carrier": r.carrier, "smsc_id": r.smsc_id})
                pipe.zrem(self.keys.early_receipts, raw)
            await pipe.execute()
        return len(parked)

    async def take_over_claims(self, now: float, limit: int = 1000) -> int:
        """Housekeeping on a cluster (run by expire_awaiting): the final events of
        messages whose receipt handler claimed them and died before publishing.

        Registrations due (their claim would be stale by now) are checked: a message not
        final, or whose claim is marked 'published', needs nothing (it only leaves
        `awaiting`, as a publisher that died before its removal would have had it);
        a final one whose claim is stale on Redis's clock is claimed here
        (lua/receipt.lua, as a resent receipt would) and published if still awaiting;
        one whose claim is live (its holder is publishing, or stalled) is left to it
        and checked again a lease later. Returns how many registrations were due."""
        due: list[tuple[str, float]] = cast(Any, await self.redis.zrangebyscore(
            self.keys.event_claims, "-inf", now, start=0, num=limit, withscores=True))
        if not due:
            return 0
        ids = [msg_id for msg_id, _score in due]
        async with self.redis.pipeline(transaction=False) as pipe:
            for msg_id in ids:
                pipe.hmget(self.keys.status(msg_id), "state", "event_claim")
            rows = await pipe.execute()
        check = [msg_id for msg_id, (state, claim) in zip(ids, rows, strict=True)
                 if state in FINAL_STATES and claim not in (None, "published")]
        gone = [msg_id for msg_id, (_state, claim) in zip(ids, rows, strict=True)
                if claim == "published"]
        checked = set(check)
        settled = [(msg_id, score) for msg_id, score in due if msg_id not in checked]
        claimed: list[_FinalEvent] = []
        held: list[str] = []
        if check:
            async with self.redis.pipeline(transaction=False) as pipe:
                for msg_id in check:
                    pipe_script(pipe, self._receipt, [self.keys.status(msg_id)],
                                ["-", "expired", now, "", self.claim_lease_s])
                replies = await pipe.execute()
            for msg_id, res in zip(check, replies, strict=True):
                if res[0] != "late" or res[13] == 2:
                    gone.append(msg_id)
                elif res[13] == 1:
                    claimed.append((msg_id, res, res[3]))
                else:
                    held.append(msg_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            # Final already, but was its event published? Only if it left `awaiting`.
            for msg_id, _res, _c in claimed:
                pipe.zscore(self.keys.awaiting_receipt, msg_id)
            if held:  # looked at again when the live claim would be stale
                pipe.zadd(self.keys.event_claims,
                          {msg_id: now + self.claim_lease_s for msg_id in held}, xx=True)
            if settled:  # kept where a new receipt registered it again meanwhile
                pipe_script(pipe, self._claims_settle, [self.keys.event_claims],
                            [x for msg_id, score in settled for x in (msg_id, repr(score))])
            scores = (await pipe.execute())[:len(claimed)]
        publish: list[_FinalEvent] = []
        for item, score in zip(claimed, scores, strict=True):
            if score is not None:
                publish.append(item)
            else:  # left `awaiting`: published by its holder, whose mark did not land
                gone.append(item[0])
        if publish or gone:
            await self._publish_finals(publish, now, gone)
        if publish:  # a daemon died (or failed) between applying receipts and publishing
            log.warning("published %d final events whose receipt handler claimed them and "
                        "did not publish within %.0f s", len(publish), self.claim_lease_s)
        return len(ids)

    async def expire_awaiting(self, limit: int = 1000) -> int:
        """Housekeeping: a message whose receipt never came ends as expired (and, on a
        cluster, a dead receipt handler's claimed final events are published first:
        take_over_claims)."""
        if not await self._hold_lease():
            return 0
        now = self.clock()
        if self._receipts is None:
            await self.take_over_claims(now, limit)
        ids: list[str] = cast(Any, await self.redis.zrangebyscore(
            self.keys.awaiting_receipt, "-inf", now, start=0, num=limit
        ))
        if not ids:
            return 0
        # Parts that never reported: the message as a whole ends as expired.
        async with self.redis.pipeline(transaction=False) as pipe:
            for msg_id in ids:
                pipe_script(pipe, self._expire, [self.keys.status(msg_id)],
                                  [now, "receipt_timeout"])
            expired = await pipe.execute()
        # Either it was still waiting (now expired), or it is already final and its
        # final event may never have been published (crash): publish it now, if this
        # call takes the claim. A claim held elsewhere is a receipt handler publishing
        # (or one that died: the claim goes stale): the message stays, already due.
        async with self.redis.pipeline(transaction=False) as pipe:
            for msg_id in ids:
                pipe_script(pipe, self._receipt, [self.keys.status(msg_id)],
                                  ["-", "expired", now, "", self.claim_lease_s])
            summaries = await pipe.execute()
        funnel = Tally()  # campaign/template messages expired by this sweep
        for flag, res in zip(expired, summaries, strict=True):
            if int(flag) == 1 and len(res) > 13 and res[11]:
                funnel.add(str(res[11]), str(res[12]), "expired")
        if funnel.counts:
            async with self.redis.pipeline(transaction=False) as pipe:
                funnel.flush(pipe)
                await pipe.execute()
        claimed = [(msg_id, res, res[3]) for msg_id, res in zip(ids, summaries, strict=True)
                   if res[0] == "late" and res[13] == 1]
        done = [msg_id for msg_id, res in zip(ids, summaries, strict=True)
                if res[0] != "late" or res[13] == 2]
        if self._publish_awaiting is None:
            # Every cluster publisher claims: one that removed a message since `ids` was
            # read holds a live claim, so what this call claimed is unpublished.
            await self._publish_finals(claimed, now, done)
            return len(ids)
        # A single Redis's receipts.lua publishes without a claim, while the message is
        # awaiting: the same check and the event, in one step here.
        args: list[Any] = [self.events_maxlen, len(claimed)]
        for msg_id, res, _carrier in claimed:
            event = self._event(msg_id, res, now)
            args += [msg_id, 2 * len(event), *itertools.chain.from_iterable(event.items())]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe_script(pipe, self._publish_awaiting,
                        [self.keys.events, self.keys.awaiting_receipt], args)
            if done:
                pipe.zrem(self.keys.awaiting_receipt, *done)
            published = (await pipe.execute())[0]
        for (_id, res, carrier), ok in zip(claimed, published, strict=True):
            if ok:
                self._count_final(res[1], carrier, res[9], now)
        return len(ids)

    # Mobile-originated --------------------------------------------------------------
    async def on_inbound(self, messages: list[InboundMessage]) -> None:
        await self._spooled("m", messages, self._inbound_now)

    async def _inbound_now(self, messages: list[InboundMessage]) -> None:
        """Store each MO once and act on opt-out/opt-in replies from valid numbers.

        Nothing one message holds makes its chunk fail: a sender that is no number
        (a short code, nothing, 41 digits) is stored as received and cannot opt out; a
        failing opt-out step is logged and left for a redelivery to retry. Only Redis
        being away raises (the spool takes the chunk)."""
        engine = self.policy()
        now = self.clock()
        replies: list[Reply | None] = []
        numbers: list[str | None] = []
        for m in messages:
            numbers.append(to_e164(m.source, self.mo_cc.get(m.carrier, INTERNATIONAL)))
            reply = engine.classify_reply(m.text) if engine is not None else None
            replies.append(reply if reply is not None and reply.kind else None)
        seen_keys = [self.keys.mo_seen(m.carrier, m.source, m.destination, m.text,
                                       m.smsc_id) for m in messages]
        args: list[Any] = [self.events_maxlen, max(1, round(self.mo_dedup_s)), len(messages)]
        for m, number, reply in zip(messages, numbers, replies, strict=True):
            # The sender as received, or its E.164 form when it is a valid number.
            fields: dict[str, Any] = self.keys.mo_sender(number or m.source)
            fields.update({"to": m.destination, "text": m.text, "carrier": m.carrier,
                           "at": m.received_at or now, "parts": m.parts})
            args += [0 if reply is not None and number else 1, 2 * len(fields),
                     *itertools.chain.from_iterable(fields.items())]
        pipe = self.redis.pipeline(transaction=False)
        pipe_script(pipe, self._mo_store, [self.keys.inbound, *seen_keys], args)
        [stored] = await pipe.execute()
        done: list[str] = []
        acted: set[str] = set()  # copies of one MO in this chunk act once
        for m, number, reply, seen, flag in zip(messages, numbers, replies, seen_keys,
                                                stored, strict=True):
            result = ("stored", "redelivered", "duplicate")[int(flag)]
            if seen in acted:
                result = "duplicate"
            acted.add(seen)
            if result == "duplicate" or reply is None:
                _count_mo(result)
                continue
            if number is None:
                # Stored, but no number to opt out: a short code, nothing, 41 digits.
                _count_mo("no_number")
                log.warning("MO %s from a sender that is not a valid number (%s): stored, "
                            "not applied", reply.kind, mask_number(m.source),
                            extra={"carrier": m.carrier})
                continue
            try:
                await self._apply_reply(engine, m, number, reply, now)
            except Exception as e:
                if is_outage(e):
                    raise
                # Its neighbours go on; the SMSC's redelivery (if any) tries it again.
                _count_mo("failed")
                log.exception("MO %s from %s could not be applied", reply.kind,
                              mask_number(number), extra={"carrier": m.carrier})
                continue
            _count_mo(result)
            done.append(seen)
        if done:
            async with self.redis.pipeline(transaction=False) as pipe:
                for seen in done:
                    pipe.set(seen, "done", keepttl=True, xx=True)
                await pipe.execute()

    async def _apply_reply(self, engine: PolicyEngine | None, m: InboundMessage,
                           number: str, reply: Reply, now: float) -> None:
        if engine is None:  # pragma: no cover - a reply is only classified by an engine
            return
        # The reply's text goes into the consent record: it is the evidence.
        retention = engine.policy.consent_retention_s
        source = f"mo:{m.carrier}"
        if reply.kind == "optout":
            await opt_out(self.redis, self.keys, number, scope="*", source=source,
                          at=now, text=m.text, retention_s=retention)
            # Counted in the funnels of campaigns that sent to it lately.
            await attribute_optout(self.redis, self.keys, number.lstrip("+"), now,
                                   self.optout_window_s,
                                   self.cfg.campaigns.recipient_ttl_days * 86400)
        else:
            await resubscribe(self.redis, self.keys, number, source=source,
                              at=now, text=m.text, retention_s=retention)
        await self.redis.xadd(self.keys.events, {
            "id": "", "state": reply.kind, "at": now, "to": mask_number(number),
            "carrier": m.carrier, "reason": "mo_keyword",
        }, maxlen=self.events_maxlen, approximate=True)
        log.info("%s by MO reply", "opt-out" if reply.kind == "optout" else "opt-in",
                 extra={"number": mask_number(number), "rule": reply.rule})


def _note_denied(op: str, e: BaseException) -> None:
    """An ACL refusal is no outage: say so plainly (the SMSC is answered with an error
    and redelivers, nothing is applied half: the scripts check every command they run
    before they write, lua/acl_lib.lua, on Redis >= 7)."""
    if denied(e):
        metrics.REDIS_DENIED.labels(op).inc()
        log.error("Redis ACL refused a command (%s): %s; give the gatewayd user the "
                  "commands in README \"Redis AUTH / ACL\"", op, e)
