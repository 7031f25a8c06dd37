"""The daemon's side of the HTTP API (gatewayd.http.backend.Backend)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from gatewayd.accounts.cache import Principal
from gatewayd.accounts.model import refusal
from gatewayd.accounts.quota import Charger
from gatewayd.campaigns.funnel import attribute_optout
from gatewayd.campaigns.links import NewLink
from gatewayd.config import Config
from gatewayd.consent import records
from gatewayd.errors import IntakeError, MessageError
from gatewayd.http.backend import DUPLICATE_ID, EnqueueResult, FieldError
from gatewayd.http.backend import QUEUE_FULL as QUEUE_FULL_CODE
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.coalesce import Coalescer
from gatewayd.pipeline.intake import TemplateIntake
from gatewayd.pipeline.queue import DUPLICATE, ID_TAKEN, QUEUE_FULL, QueueStore
from gatewayd.pipeline.status import read_status
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.optout import check_number, opt_in, opt_out, optout_status, preferences
from gatewayd.store.connection import Redis
from gatewayd.store.keys import Keys

log = logging.getLogger("gatewayd.http")


class Host(Protocol):
    """What the service needs of the process it runs in (gatewayd.daemon.Daemon): passed
    in rather than imported, so http/ never imports the daemon that starts it."""

    cfg: Config
    keys: Keys
    started_at: float
    consumer: str

    async def reload(self) -> tuple[bool, str, dict[str, Any]]: ...

    def policy(self) -> PolicyEngine | None: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class DaemonBackend:
    """``redis`` and ``queue`` are the edge's (Store.intake): every request's Redis work
    goes through the intake pool, never the core's connections."""

    def __init__(self, daemon: Host, redis: Redis, queue: QueueStore) -> None:
        self.d = daemon
        self.redis = redis
        self.queue = queue
        self.coalescer = Coalescer(queue)
        # A request of codes only (queue.classes[0], read by the express worker) skips
        # the turn's shared call: under a flood that call waits a loop turn and carries
        # ~200 messages; alone it goes to Redis now (bench/http_priority: OTP p99
        # 181 -> 141 ms, medians of 5 interleaved pairs; README Performance). Codes
        # share calls with each other only, eagerly: a code goes at once while fewer
        # than two calls of codes are out, and those arriving meanwhile go together
        # when one comes back (not counted in the turn coalescer's metrics).
        self.codes = Coalescer(queue, eager=True, counted=False)
        q = daemon.cfg.queue
        self.express = q.classes[0] if q.express_batch and len(q.classes) > 1 else ""
        self._intake: TemplateIntake | None = None
        self._charger: Charger | None = None

    async def enqueue(self, items: list[Any], *, source: str,
                      account: Principal | None = None) -> list[EnqueueResult]:
        now = time.time()
        results: list[EnqueueResult] = []
        valid: list[tuple[int, OutboundMessage]] = []
        refused: dict[int, FieldError] = {}
        if account is not None:  # the tenant comes from the key, never from the body
            items, refused = _as_tenant(items, account.tenant)
        if self._intake is None:
            self._intake = TemplateIntake(self.redis, self.d.keys, self.d.cfg)
        intake = self._intake
        if intake.needs_prepare(items):
            await intake.prepare(items)
        links: dict[int, list[NewLink]] = {}
        for i, item in enumerate(items):
            if i in refused:
                results.append(EnqueueResult(index=i, errors=[refused[i]]))
                continue
            try:
                msg, new = intake.parse(item, now)
            except MessageError as e:
                results.append(EnqueueResult(index=i, errors=[FieldError(e.field, e.reason)]))
                continue
            except Exception as e:  # whatever one item's parsing raises is that item's
                results.append(EnqueueResult(index=i, errors=[FieldError(
                    "$", f"unparsable: {type(e).__name__}: {e}"[:300])]))
                continue
            if account is not None:
                why = refusal(msg, account.account.limits, account.categories)
                if why is not None:
                    results.append(EnqueueResult(index=i, errors=[FieldError(*why)]))
                    continue
            if new:
                links[len(valid)] = new
            valid.append((i, msg))
        if account is not None and valid:
            if self._charger is None:
                self._charger = Charger(self.redis, self.d.keys)
            # One call for the request: rate and quotas, all or nothing (QuotaExceeded).
            await self._charger.charge(account.account, [m.category for _, m in valid], now)
        unqueued: list[str] = []
        if valid:
            msgs = [m for _, m in valid]
            failed: dict[int, str] = {}
            # Plain messages (no campaign, template or links) share calls: codes only
            # with codes (self.codes), the rest with the loop turn's others.
            plain = not links and not self.queue.cluster
            codes = bool(self.express)
            for m in msgs:  # (a loop, not two generators: most requests hold one)
                if m.campaign or m.template:
                    plain = False
                    break
                if codes and m.category != self.express:
                    codes = False
            try:
                if plain:
                    got = await (self.codes if codes else self.coalescer).enqueue_each(
                        msgs, source=source)
                else:
                    got = await self.queue.enqueue_each(msgs, source=source, now=now,
                                                        links=links,
                                                        link_ttl_s=intake.link_ttl_s)
                ids: list[tuple[str, Any] | None] = list(got)
            except IntakeError as e:  # a cluster failing over past the retries
                ids, failed = e.results, e.reasons
            except BaseException:
                # Redis away, the pool saturated, an ACL refusal, a cancelled request:
                # the caller gets a 503 (or nothing) and will send again, so the charge
                # goes back as a whole (a retry would otherwise be charged twice; one
                # that did reach the queue comes back as a refunded duplicate).
                if account is not None and self._charger is not None:
                    await self._refund_quietly(account.tenant, [m.category for m in msgs],
                                               now)
                raise
            for n, ((i, m), r) in enumerate(zip(valid, ids, strict=True)):
                if r is None:
                    results.append(EnqueueResult(index=i, errors=[FieldError(
                        "$", f"not_queued: {failed.get(n, 'Redis unavailable')}")]))
                    unqueued.append(m.category)
                    continue
                msg_id, outcome = r
                if outcome in (ID_TAKEN, DUPLICATE, QUEUE_FULL):
                    unqueued.append(m.category)
                if outcome == QUEUE_FULL:
                    depth = self.queue.full_depth.get(m.category, 0)
                    limit = self.d.cfg.queue.max_queued.get(m.category, 0)
                    results.append(EnqueueResult(index=i, depth=depth, errors=[FieldError(
                        "$", f"{QUEUE_FULL_CODE}: queue {m.category!r} holds {depth} "
                             f"messages (queue.max_queued {limit}); retry later")]))
                elif outcome == ID_TAKEN:
                    results.append(EnqueueResult(index=i, errors=[FieldError(
                        "id", f"{DUPLICATE_ID}: {msg_id} is already used by another "
                              "message (give each message its own id, or an "
                              "idempotency_key to make a resend safe)")]))
                else:
                    results.append(EnqueueResult(index=i, id=msg_id,
                                                 duplicate=outcome == DUPLICATE))
        if account is not None and unqueued and self._charger is not None:
            await self._charger.refund(account.tenant, unqueued, now)
        if len(results) > 1:
            results.sort(key=lambda r: r.index)
        return results

    async def _refund_quietly(self, tenant: str, categories: list[str], now: float) -> None:
        """Refund on the way out of a failed request: a refund that fails too (Redis
        still away) is logged, and the request's own error is the one the caller sees."""
        assert self._charger is not None
        try:
            await asyncio.shield(self._charger.refund(tenant, categories, now))
        except BaseException as e:  # the original error (or cancellation) wins
            log.warning("account %s: refunding %d unqueued messages failed (%s: %s); its "
                        "quota counts them until the period ends", tenant, len(categories),
                        type(e).__name__, e)

    async def status(self, msg_id: str) -> dict[str, Any] | None:
        return await read_status(self.redis, self.d.keys, msg_id)

    async def optout(
        self, action: Literal["add", "remove", "check"], number: str, scope: str,
        category: str = "",
    ) -> dict[str, Any]:
        redis, keys, now = self.redis, self.d.keys, time.time()
        engine = self.d.policy()
        allowed = engine.policy.optout_categories if engine is not None else frozenset()
        if category and category not in allowed:
            raise ValueError(f"category: {category!r} is not one recipients may opt out of "
                             f"alone; the policy's [optout] categories are {sorted(allowed)}")
        retention = (engine.policy.consent_retention_s if engine is not None
                     else records.DEFAULT_RETENTION_S)
        if action == "add":
            await opt_out(redis, keys, number, scope=scope, category=category, source="api",
                          at=now, retention_s=retention)
            if scope == "*":  # counted in the funnels of campaigns that sent to it lately
                c = self.d.cfg.campaigns
                await attribute_optout(redis, keys, check_number(number), now,
                                       c.optout_window_days * 86400,
                                       c.recipient_ttl_days * 86400, category=category)
        elif action == "remove":
            await opt_in(redis, keys, number, scope=scope, category=category, source="api",
                         at=now, retention_s=retention)
        status = await optout_status(redis, keys, number)
        return {"number": number, "opted_out": status, "preferences": preferences(status)}

    def consent(self, number: str, since: float, until: float) -> AsyncIterator[dict[str, str]]:
        digits = check_number(number) if number else ""
        return records.read(self.redis, self.d.keys, number=digits, since=since,
                            until=until)

    async def reload(self) -> tuple[bool, str, dict[str, Any]]:
        return await self.d.reload()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.d.readiness()

    def liveness(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.d.started_at, 1),
            "consumer": self.d.consumer,
        }


def _as_tenant(items: list[Any], tenant: str) -> tuple[list[Any], dict[int, FieldError]]:
    """Items with the account's tenant set; those naming another tenant refused."""
    out: list[Any] = []
    refused: dict[int, FieldError] = {}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            named = item.get("tenant")
            if named not in (None, "", tenant):
                refused[i] = FieldError("tenant", f"this key is account {tenant!r}'s; the "
                                        "tenant comes from the key (leave it out)")
            item = {**item, "tenant": tenant}
        out.append(item)
    return out, refused
