"""Opt-out records (check 3's data), per-category preferences and their consent records.

A number's opt-outs live in one HASH, ``Keys.optout(digits)``: field -> opted-out-at
(Unix s). A field is a scope, optionally narrowed to one category:

- ``*`` (everything) or a signature (the text of the 【…】 without brackets, e.g.
  ``京东``) or a sender address: a **plain** opt-out; it suppresses every category with
  ``suppress_optout = true`` (marketing by default), as ``[optout].scope`` in the
  policy file says the check matches:

  - ``global``: only ``*`` suppresses (per-signature records are kept but ignored);
  - ``signature``: ``*`` or the message's signature suppresses;
  - ``sender``: ``*`` or the message's ``from`` suppresses;

- ``<scope>|<category>`` (``*|marketing``, ``京东|transactional``): a **preference**: that
  category only, whatever its ``suppress_optout``, for the categories recipients may
  choose (``[optout] categories``; default every class but ``otp``). "Everything but
  codes" is ``*|marketing`` plus ``*|transactional``.

Numbers are keyed by their digits (``+86 138-0013-8000`` = ``8613800138000``). Every
change is also a consent record (gatewayd.consent.records: action, number, scope,
category, source, MO text, time) appended in the same MULTI, so the record and its
consent entry never diverge; consent records are kept ``[optout]
consent_retention_days`` (2 years by default), outside the hot-path keys.
"""

from __future__ import annotations

from typing import Any, Final, Literal, cast

import redis.asyncio as aioredis

from gatewayd.consent import records
from gatewayd.ops import metrics
from gatewayd.policy.lua import text as as_text
from gatewayd.policy.normalize import number_key
from gatewayd.store.keys import Keys

# Metric label vocabulary (labels stay bounded whatever callers pass as source).
_SOURCES: Final = frozenset(metrics.OPTOUT_SOURCES) - {"other"}


def check_number(number: str) -> str:
    """The number's digits; ValueError unless E.164 (6-15 digits)."""
    digits = number_key(number)
    if not 6 <= len(digits) <= 15:
        raise ValueError(f"{number!r}: not an E.164 number (6-15 digits, e.g. +8613800138000)")
    return digits


def check_scope(scope: str) -> str:
    s = scope.strip()
    if not s or len(s) > 64 or "|" in s:
        raise ValueError("scope: use \"*\" (global) or a signature/sender of 1-64 characters "
                         "without '|'")
    return s


def field(scope: str, category: str) -> str:
    """The HASH field of a plain opt-out (category "") or a category preference."""
    return f"{scope}|{category}" if category else scope


def parse_field(name: str) -> tuple[str, str]:
    scope, _, category = name.partition("|")
    return scope, category


async def record(redis: aioredis.Redis, keys: Keys, number: str, *,
                 action: Literal["out", "in"], scope: str = "*", category: str = "",
                 source: str, at: float, text: str = "", note: str = "",
                 retention_s: float = records.DEFAULT_RETENTION_S,
                 also_remove: tuple[str, ...] = ()) -> None:
    """Set or clear one field and append its consent record, together.

    ``also_remove``: further fields an opt-in clears (an MO re-subscription clears the
    plain ``*`` opt-out and every ``*|<category>`` one); each gets its own record.
    """
    digits = check_number(number)
    scope = check_scope(scope)
    name = field(scope, category)

    fields = [name] if action == "out" else [name, *also_remove]
    changes = []
    for f in fields:
        s, c = parse_field(f)
        changes.append(records.Change(action=action, digits=digits, scope=s, category=c,
                                      source=source, at=at, text=text, note=note))
    # One script writes the records, then the opt-out (a failure leaves the opt-out as it
    # was, never changed without its record); on Redis Cluster they live in different
    # slots and are pipelined (records.write_change).
    await records.write_change(redis, keys, changes, retention_s, fields=fields, at=at)
    kind = source.split(":", 1)[0]  # "mo:cmcc" counts as "mo"
    label = kind if kind in _SOURCES else "other"
    metrics.OPTOUTS.labels("opt_out" if action == "out" else "opt_in", label).inc(
        1 + len(also_remove))


async def opt_out(redis: aioredis.Redis, keys: Keys, number: str, *, scope: str = "*",
                  category: str = "", source: str, at: float, text: str = "",
                  note: str = "", retention_s: float = records.DEFAULT_RETENTION_S) -> None:
    """Record that ``number`` opted out of ``scope`` ("*" = everything) at ``at``; with a
    ``category``, of that category only.

    ``source`` says how (``mo:<carrier>`` reply, ``api``, ``cli``, ``import``); raises
    ValueError for a number that is not E.164 or a bad scope.
    """
    await record(redis, keys, number, action="out", scope=scope, category=category,
                 source=source, at=at, text=text, note=note, retention_s=retention_s)


async def opt_in(redis: aioredis.Redis, keys: Keys, number: str, *, scope: str = "*",
                 category: str = "", source: str, at: float, text: str = "",
                 note: str = "", retention_s: float = records.DEFAULT_RETENTION_S) -> None:
    """Remove the opt-out of ``scope`` (and ``category``); other fields stay."""
    await record(redis, keys, number, action="in", scope=scope, category=category,
                 source=source, at=at, text=text, note=note, retention_s=retention_s)


async def resubscribe(redis: aioredis.Redis, keys: Keys, number: str, *, source: str,
                      at: float, text: str = "",
                      retention_s: float = records.DEFAULT_RETENTION_S) -> list[str]:
    """An opt-in reply (``订阅``): clears the plain ``*`` opt-out and every ``*|<category>``
    one, each with its consent record; signature/sender opt-outs stay. Returns the
    fields cleared (a record is written even when there was nothing to clear: the
    reply is consent)."""
    digits = check_number(number)
    names = [as_text(k) for k in await cast(Any, redis).hgetall(keys.optout(digits))]
    present = tuple(n for n in names if n.startswith("*|"))
    await record(redis, keys, digits, action="in", scope="*", source=source, at=at,
                 text=text, retention_s=retention_s, also_remove=present)
    return ["*", *present]


async def optout_status(redis: aioredis.Redis, keys: Keys, number: str) -> dict[str, float]:
    """field -> opted-out-at for every opt-out of the number ({} = none)."""
    digits = check_number(number)
    raw = await cast(Any, redis).hgetall(keys.optout(digits))
    return {as_text(k): float(as_text(v)) for k, v in raw.items()}


def preferences(status: dict[str, float]) -> list[dict[str, Any]]:
    """The status as rows: scope, category ("" = plain), since."""
    return [{"scope": s, "category": c, "since": since}
            for s, c, since in sorted((*parse_field(f), t) for f, t in status.items())]


async def optout_history(redis: aioredis.Redis, keys: Keys, number: str) -> list[dict[str, str]]:
    """The consent records of one number, oldest first (gatewayd.consent.records.read)."""
    digits = check_number(number)
    return [r async for r in records.read(redis, keys, number=digits)]
