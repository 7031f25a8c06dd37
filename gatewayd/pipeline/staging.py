"""Intake on Redis Cluster: record first, entry second, across nodes (issue 15).

On a single Redis one pipeline writes a message's "queued" record and then its stream
entry, in that order. A cluster pipeline sends each node's commands side by side, so
the entry could be read, submitted and recorded by a daemon before its "queued" record
landed on another node. So on a cluster intake takes three round trips, each retried
across a failover (bounded by ``RETRY_S``) for the messages it failed for:

1. **stage**: the message (its stream fields, JSON) goes into its class's delayed set,
   due ``GRACE_S`` from now (lua/stage.lua when it has an idempotency key: the dedup
   verdict is taken here), with its short links;
2. **record**: its "queued" status record, created only where none exists
   (lua/queued.lua: an id already used by another message is refused, ``ID_TAKEN``,
   and its staged copy removed in step 3), then its event;
3. **promote**: lua/promote.lua moves it from the delayed set onto the stream.

A message is reported queued once staged: whatever happens to this process after that,
the daemons' delayed-set mover queues it when its grace is over (its record is then
written by the dispatcher). So a record never exists without its message, and an entry
is never readable before its record was confirmed. A message whose staging failed past
the retries is reported not queued (``IntakeError``; after a timeout it may still have
been staged, and then goes out: resending with an idempotency key is safe).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)

from gatewayd.campaigns import links as shortlinks
from gatewayd.campaigns.funnel import funnel_name
from gatewayd.errors import IntakeError
from gatewayd.model import OutboundMessage, mask_number
from gatewayd.ops import metrics
from gatewayd.pipeline.events import Ledger, count_state, event_of
from gatewayd.pipeline.intake import to_fields
from gatewayd.store.connection import Redis, denied, script_source
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Seal

log = logging.getLogger("gatewayd.intake")

# A staged message is queued by the mover this long after staging if its intake never
# promoted it (the intake process died, or its record could not be written): longer
# than a step's retries, so a live intake promotes its own messages.
GRACE_S: Final = 60.0
# Each step is retried for its failed messages this long (a failover takes a few
# seconds: cluster-node-timeout plus the election).
RETRY_S: Final = 30.0

# Outcomes, as QueueStore.enqueue_each names them.
QUEUED: Final = "queued"
DUPLICATE: Final = "duplicate"
ID_TAKEN: Final = "id_taken"

_STAGE: Final = script_source("stage")
_QUEUED: Final = script_source("queued")
_PROMOTE: Final = script_source("promote")


def transient(e: BaseException) -> bool:
    """A failure a retry may get past (a node down or failing over, a timeout), not
    one it never will (a permission, a script error)."""
    if isinstance(e, (NoPermissionError, AuthenticationError)) or denied(e):
        return False
    if isinstance(e, ResponseError):
        text = str(e)
        return text.startswith(("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "LOADING",
                                "MASTERDOWN", "READONLY"))
    return isinstance(e, RedisError)


async def _step(redis: Redis, indices: list[int],
                queue: Callable[[Any, int], None], name: str,
                deadline: float) -> tuple[dict[int, list[Any]], dict[int, str]]:
    """Run ``queue(pipe, i)`` for every index, retrying the ones that failed until the
    deadline: (replies of each that succeeded, reason of each that did not)."""
    done: dict[int, list[Any]] = {}
    failed: dict[int, str] = {}
    todo = list(indices)
    backoff = 0.1
    loop = asyncio.get_running_loop()
    while todo:
        pipe = redis.pipeline(transaction=False)
        spans: list[tuple[int, int, int]] = []
        for i in todo:
            start = len(pipe)
            queue(pipe, i)
            spans.append((i, start, len(pipe)))
        sent = len(pipe)  # before execute: a failed cluster pipeline empties itself
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except RedisError as e:
            replies = [e] * sent
        if len(replies) != sent:  # never seen; but never take "no reply" for success
            replies += [RedisError("no reply")] * (sent - len(replies))
        failed = {}
        for i, a, b in spans:
            errs = [r for r in replies[a:b] if isinstance(r, BaseException)]
            if errs:
                failed[i] = f"{type(errs[0]).__name__}: {errs[0]}"
                if not transient(errs[0]):
                    if denied(errs[0]):
                        metrics.REDIS_DENIED.labels("intake").inc()
                        log.error("intake %s: Redis ACL refused a command: %s", name,
                                  errs[0])
                    raise errs[0]
            else:
                done[i] = replies[a:b]
        todo = list(failed)
        if not todo:
            break
        metrics.REDIS_ERRORS.labels("intake").inc()
        if loop.time() + backoff > deadline:
            log.error("intake %s: %d of %d messages failed past the retries: %s", name,
                      len(todo), len(indices), next(iter(failed.values())))
            break
        log.warning("intake %s: %d messages failed (%s); retrying", name, len(todo),
                    next(iter(failed.values())))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)
    return done, failed


async def enqueue(
    redis: Redis, keys: Keys, ledger: Ledger, streams: dict[str, str],
    msgs: list[OutboundMessage], *, source: str, now: float,
    links: dict[int, list[shortlinks.NewLink]], link_ttl_s: int, idempotency_ttl_s: int,
    seal: Seal,
) -> list[tuple[str, str]]:
    """The cluster's ``QueueStore.enqueue_each``: (id, outcome) for each message, in
    order; raises IntakeError (with the outcome of every message) if some could not be
    staged."""
    loop = asyncio.get_running_loop()
    fields = [to_fields(m, seal) for m in msgs]
    members = [json.dumps(f, ensure_ascii=False, sort_keys=True) for f in fields]
    due = repr(time.time() + GRACE_S)

    def stage(pipe: Any, i: int) -> None:
        m = msgs[i]
        for ln in links.get(i, ()):
            fk = keys.funnel(funnel_name(m.campaign, m.template, m.tenant))
            shortlinks.write(pipe, keys, ln.code, shortlinks.link_fields(
                ln.target, m.id, fk, m.variant, m.campaign, m.template,
                keys.recipient(m.to.lstrip("+")), repr(now),
                masked=mask_number(m.to) if keys.privacy else ""), link_ttl_s)
        delayed = keys.delayed(m.category)
        if m.idempotency_key:
            pipe.execute_command("EVAL", _STAGE, 2, delayed,
                                 keys.idempotency(m.category, m.idempotency_key),
                                 members[i], due, m.id, idempotency_ttl_s)
        else:
            pipe.zadd(delayed, {members[i]: due})

    staged, unstaged = await _step(redis, list(range(len(msgs))), stage, "stage",
                                   loop.time() + RETRY_S)
    results: list[tuple[str, str] | None] = [None] * len(msgs)
    fresh: list[int] = []
    for i, replies in staged.items():
        reply = replies[-1]
        if msgs[i].idempotency_key and int(reply[0]) == 0:
            results[i] = (str(reply[1]), DUPLICATE)
        else:
            results[i] = (msgs[i].id, QUEUED)
            fresh.append(i)
    fresh.sort()
    statuses = {i: ledger.build(msgs[i], "queued", now) for i in fresh}

    def record(pipe: Any, i: int) -> None:
        key, status = statuses[i]
        pipe.execute_command("EVAL", _QUEUED, 1, key, ledger.status_ttl,
                             *(x for kv in status.items() for x in kv))

    recorded, _ = await _step(redis, fresh, record, "record", loop.time() + RETRY_S)
    # A retried create may find its own first write: a record made in this call is
    # "queued" with this call's enqueued_at; another message's is not.
    created = {i for i, r in recorded.items() if int(r[-1]) == 1}
    retried = [i for i in recorded if i not in created]
    if retried:
        async with redis.pipeline(transaction=False) as pipe:
            for i in retried:
                pipe.hmget(statuses[i][0], "state", "enqueued_at")
            found = await pipe.execute()
        for i, (state, at) in zip(retried, found, strict=True):
            if state == "queued" and at == str(statuses[i][1].get("enqueued_at")):
                created.add(i)
    taken = sorted(i for i in recorded if i not in created)
    for i in taken:
        results[i] = (msgs[i].id, ID_TAKEN)

    def announce(pipe: Any, i: int) -> None:
        if i in created:
            ledger.event_only(pipe, event_of(msgs[i].id, statuses[i][1]))
            ledger.count_only(pipe, msgs[i], "queued", now)
        else:  # refused: its staged copy goes, and the idempotency key staging took
            m = msgs[i]
            pipe.zrem(keys.delayed(m.category), members[i])
            if m.idempotency_key:
                pipe.delete(keys.idempotency(m.category, m.idempotency_key))

    await _step(redis, sorted(created) + taken, announce, "announce", loop.time() + RETRY_S)
    for i in created:
        count_state("queued", "")
        metrics.MESSAGES_ENQUEUED.labels(msgs[i].category, source).inc()

    def promote(pipe: Any, i: int) -> None:
        m = msgs[i]
        pipe.execute_command("EVAL", _PROMOTE, 2, keys.delayed(m.category),
                             streams[m.category], members[i],
                             *(x for kv in fields[i].items() for x in kv))

    promoted, _ = await _step(redis, sorted(created), promote, "promote",
                              loop.time() + RETRY_S)
    late = len(created) - len(promoted)
    if late:
        log.warning("intake: %d staged messages were not moved onto their streams now; "
                    "the delayed-set mover queues them within %.0fs", late, GRACE_S)
    if unstaged:
        raise IntakeError(results, unstaged)
    return [r for r in results if r is not None]
