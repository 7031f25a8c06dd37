"""Checks 3, 5, 6, 7 (optout, duplicate, freq_cap, tenant_rate): one Lua call a batch.

All four run in gatewayd/store/lua/policy_batch.lua, message by message, atomically, and
write their counters only for a message that passes them all (see the script). That
keeps the rule "a message rejected or deferred by an earlier check consumes nothing"
inside one round trip, and makes caps hold across concurrent batches of several
gatewayd processes.

Keys (gatewayd.store.keys.Keys), all tagged with the recipient's digits so one recipient's
keys share a hash slot:

- opt-out: ``optout:{digits}`` HASH field -> since (gatewayd.policy.optout); a message
  names the fields that suppress it (``*``, its signature/sender, ``*|<category>`` ...)
  and the first one present decides.
- duplicate: ``fc:{digits}:dup:<crc32+length of the text>`` STRING = "<time> <message
  id>", PX = the category's duplicate window. Same text to the same number, whatever
  the category, within the window as measured by the ``now`` passed in (the TTL only
  collects the key). A re-read of the same message id (redelivery) is not a duplicate.
- frequency caps: ``fc:{digits}:cap:<category>[:<scope>]`` ZSET member = message id,
  score = time. Sliding windows (exact, unlike fixed buckets that let 2x the cap
  through across a bucket edge); one ZSET serves all of a category's windows,
  trimmed to the largest window and expiring with it. A message already in the set
  (a redelivery that passed before) is not counted twice. On a hit the verdict's
  ``until`` is when the binding window frees a slot.
- tenant buckets: ``tb:{tenant:<name>}`` HASH (tokens, ts), shared with
  gatewayd.policy.ratelimit's format, plus ``x`` (when the TTL its last PEXPIRE set
  runs out) and ``xs`` (the ts written with it): the PEXPIRE only when that no longer
  covers the refill to full plus a second (see the script).

Redis Cluster: a batch touches many recipients' slots, so on a cluster (``run`` sees
a RedisCluster client) it runs as one script call per slot, concurrently, each routed
by one key of its slot (a script may touch only its node's keys). Tenant buckets live
in their own slots: a second phase checks them, per tenant slot and in batch order,
for the messages that passed the recipient checks. So on a cluster a message deferred
by tenant_rate has already written its duplicate marker and frequency-cap entry; both
are keyed by its id, so when it comes back it is neither a duplicate of itself nor
counted twice (its cap slot stays reserved meanwhile). Redis >= 6.2 commands only.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.crc import key_slot

from gatewayd.policy.lua import LuaScript, text
from gatewayd.store.connection import is_cluster
from gatewayd.store.keys import Keys

SCRIPT: Final = LuaScript("policy_batch")
REDIS_CHECKS: Final = ("optout", "duplicate", "freq_cap", "tenant_rate")
_CLUSTER_CONCURRENCY: Final = 32


def window_text(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0")


def caps_spec(caps: list[tuple[int, float]]) -> str:
    return " ".join(f"{limit}:{window_text(w)}" for limit, w in caps)


def text_digest(body: str) -> str:
    """CRC-32 and length of the text: stable across processes (unlike hash()) and cheap.

    Only texts to the same number within the duplicate window are compared, so a 32-bit
    collision (a false duplicate) is a one in four billion event for such a pair.
    """
    b = body.encode()
    return f"{zlib.crc32(b):08x}{len(b):x}"


@dataclass(frozen=True, slots=True)
class Outcome:
    check: str  # "send" or the failing check
    detail: str
    until: float


SENT: Final = Outcome("send", "", 0.0)


_SEPARATORS: Final = str.maketrans({"\x1e": "?", "\x1f": "?"})


def _clean(value: str) -> str:
    """Free text (ids, signatures, senders) must not contain the blob's separators."""
    if "\x1e" in value or "\x1f" in value:
        return value.translate(_SEPARATORS)
    return value


class RedisBatch:
    """Collects the per-message records, then runs the script once.

    The batch is one argument (records joined by \\x1e, fields by \\x1f): redis-py
    packs each argument in Python, and ten arguments a message cost more than the checks.
    """

    __slots__ = ("n", "now", "ns", "records")

    def __init__(self, ns: Keys, now: float) -> None:
        self.ns = ns
        self.now = now
        self.records: list[str] = []
        self.n = 0

    def add(
        self,
        *,
        digits: str,
        optout_only: bool,
        optout_fields: str | None,  # None: no opt-out check; fields joined by \x1d
        duplicate_ms: int,
        text_body: str,
        member: str,
        caps_key: str,
        caps: str,
        tenant: str,
        tenant_spec: str,
    ) -> None:
        ns = self.ns
        full = not optout_only
        self.records.append("\x1f".join((
            "o" if optout_only else "f",
            ns.optout(digits) if optout_fields is not None else "",
            _clean(optout_fields or ""),
            ns.freq(digits, "dup:" + text_digest(text_body)) if duplicate_ms > 0 and full
            else "",
            str(duplicate_ms),
            _clean(member) if member else "~" + uuid.uuid4().hex,
            _clean(ns.freq(digits, caps_key)) if caps and full else "",
            caps,
            _clean(ns.token_bucket("tenant:" + tenant)) if tenant_spec and full else "",
            tenant_spec,
        )))
        self.n += 1

    async def run(self, redis: aioredis.Redis, *, dry: bool = False) -> list[list[Outcome]]:
        """One list of outcomes per message: one (the decision) or, dry, one per check."""
        if not self.n:
            return []
        if is_cluster(redis):
            return await self._run_cluster(redis, dry)
        reply = await SCRIPT(redis, [], [repr(self.now), "1" if dry else "0",
                                         "\x1e".join(self.records)])
        return _parse(reply, self.n, dry)

    async def _run_cluster(self, redis: aioredis.Redis, dry: bool) -> list[list[Outcome]]:
        """Recipient checks per slot, then tenant buckets per slot (see the docstring)."""
        fields = [r.split("\x1f") for r in self.records]
        # Phase 1: every record without its tenant part, grouped by its recipient's slot
        # (a record with no key at all goes anywhere: the script touches nothing for it).
        groups: dict[str, list[int]] = defaultdict(list)
        for i, f in enumerate(fields):
            route = f[1] or f[3] or f[6] or self.ns.lease("policy")
            groups[route].append(i)
        slots: dict[int, tuple[str, list[int]]] = {}
        for route, idx in groups.items():
            slot = key_slot(route.encode())
            if slot in slots:
                slots[slot][1].extend(idx)
            else:
                slots[slot] = (route, idx)
        out: list[list[Outcome]] = [[] for _ in fields]
        calls = [(route, sorted(idx), [
            "\x1f".join((*fields[i][:8], "", "")) for i in sorted(idx)
        ]) for route, idx in slots.values()]
        for (_route, idx, _recs), res in zip(calls, await self._gather(redis, calls, dry),
                                             strict=True):
            for i, o in zip(idx, res, strict=True):
                out[i] = o
        # Phase 2: tenant buckets, one call per tenant slot, in batch order.
        tenant: dict[int, tuple[str, list[int]]] = {}
        for i, f in enumerate(fields):
            if f[8] and (dry or out[i][0] is SENT):
                slot = key_slot(f[8].encode())
                tenant.setdefault(slot, (f[8], []))[1].append(i)
        calls = [(route, idx, [
            "\x1f".join(("f", "", "", "", "0", fields[i][5], "", "", fields[i][8],
                          fields[i][9])) for i in idx
        ]) for route, idx in tenant.values()]
        for (_route, idx, _recs), res in zip(calls, await self._gather(redis, calls, dry),
                                             strict=True):
            for i, o in zip(idx, res, strict=True):
                if dry:
                    out[i] = [*out[i][:3], o[3]]
                else:
                    out[i] = o
        return out

    async def _gather(self, redis: aioredis.Redis, calls: list[tuple[str, list[int], list[str]]],
                      dry: bool) -> list[list[list[Outcome]]]:
        replies: list[Any] = []
        # Bounded concurrency: each call in flight holds a connection to its node.
        for start in range(0, len(calls), _CLUSTER_CONCURRENCY):
            replies += await asyncio.gather(*(
                SCRIPT(redis, [route], [repr(self.now), "1" if dry else "0",
                                        "\x1e".join(recs)])
                for route, _idx, recs in calls[start : start + _CLUSTER_CONCURRENCY]
            ))
        return [_parse(reply, len(recs), dry)
                for reply, (_r, _i, recs) in zip(replies, calls, strict=True)]


def _parse(reply: Any, n: int, dry: bool) -> list[list[Outcome]]:
    outcomes: list[Outcome] = []
    for entry in text(reply).split("\x1e"):
        if entry == "s":
            outcomes.append(SENT)
        else:
            check, detail, until = entry.split("\x1f")
            outcomes.append(Outcome(check, detail, float(until)))
    per = len(REDIS_CHECKS) if dry else 1
    if len(outcomes) != n * per:
        raise RuntimeError(f"policy_batch.lua returned {len(outcomes)} outcomes "
                           f"for {n} messages")
    if per == 1:
        return [[o] for o in outcomes]
    return [outcomes[i : i + per] for i in range(0, len(outcomes), per)]
