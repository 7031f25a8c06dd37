"""Funnel counters per campaign (and variant), per template and tenant for direct sends.

One HASH per campaign (``Keys.funnel(<id>)``) or per direct template sender
(``Keys.funnel("~<template>|<tenant>")``), fields ``<stage>`` and ``<stage>|<variant>``.
Stages: queued, submitted (sent), delivered, undeliverable, expired, failed, rejected
(and ``rejected:<reason family>``), deferred (transitions), clicked (unique: first
clicks), clicks (every click), previews (link previews), converted (unique), opted_out
(within ``campaigns.optout_window_days`` of a send of the campaign, once per number).

Counted where the state is recorded, and only for messages that carry a campaign or a
template, so other messages pay nothing: the dispatcher's batch (``Tally``, one HINCRBY
per distinct stage a batch, in the batch's pipeline), the receipt script on a single
Redis (lua/receipts.lua, in the same call that applies the receipt), the click and
conversion paths. Template and tenant totals are sums over campaigns (``totals``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist
from typing import Any, Final, cast

from redis.asyncio.client import Pipeline

from gatewayd.store.connection import Redis, is_cluster, load_script, pipe_script
from gatewayd.store.keys import Keys

STAGES: Final = ("queued", "submitted", "delivered", "undeliverable", "expired", "failed",
                 "rejected", "deferred", "clicked", "clicks", "previews", "converted",
                 "opted_out")


def funnel_name(campaign: str, template: str, tenant: str) -> str:
    """Whose funnel a message counts in: its campaign's, else its template's (per
    tenant); "" for a message of neither."""
    if campaign:
        return campaign
    if template:
        return f"~{template}|{tenant}"
    return ""


class Tally:
    """A batch's funnel increments: (key, field) -> n, written by ``flush``."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, key: str, variant: str, stage: str, n: int = 1) -> None:
        c = self.counts
        k = (key, stage)
        c[k] = c.get(k, 0) + n
        if variant:
            k = (key, f"{stage}|{variant}")
            c[k] = c.get(k, 0) + n

    def flush(self, pipe: Pipeline) -> None:
        for (key, field), n in self.counts.items():
            pipe.execute_command("HINCRBY", key, field, n)
        self.counts.clear()


class Sends:
    """A batch's submitted campaign messages, remembered per recipient (cooling-off
    streak, opt-out attribution): one script call a batch (lua/marketing_sent.lua)."""

    __slots__ = ("args",)

    def __init__(self) -> None:
        self.args: list[str] = []

    def add(self, key: str, campaign: str, variant: str, link: bool) -> None:
        self.args += (key, campaign, variant, "1" if link else "0")

    def flush(self, pipe: Pipeline, script: Any, now_text: str, ttl_ms: int) -> None:
        if not self.args:
            return
        a = self.args
        if script is not None and not is_cluster(pipe):
            pipe_script(pipe, script, [], [now_text, ttl_ms, len(a) // 4, *a])
        else:
            for i in range(0, len(a), 4):
                key, campaign, variant, link = a[i:i + 4]
                if campaign:
                    pipe.set(f"{key}:{campaign}", f"{now_text} {variant}", px=ttl_ms)
                if link == "1":
                    pipe.hincrby(key, "n", 1)
                    pipe.hset(key, "last", now_text)
                    pipe.pexpire(key, ttl_ms)
        self.args = []


def reason_family(reason: str) -> str:
    """"keyword:gambling:x" -> "keyword" (bounded field names)."""
    return reason.split(":", 1)[0][:40] or "other"


async def read(redis: Redis, keys: Keys, name: str) -> dict[str, int]:
    raw = cast(dict[str, str], await redis.hgetall(keys.funnel(name)))
    return {k: int(v) for k, v in raw.items()}


async def attribute_optout(redis: Redis, keys: Keys, digits: str, now: float,
                           window_s: float, lookback_s: float = 30 * 86400, *,
                           category: str = "") -> list[str]:
    """An opt-out of ``digits``: count it in every campaign that sent to the number
    within ``window_s`` (once per number and campaign). The campaigns looked at are
    those created in the last ``lookback_s`` (a send record is kept no longer; opt-outs
    are rare, so a look-up per recent campaign, in one round trip, is cheap). An opt-out
    of one ``category`` only (a preference, ``*|marketing``) counts in the campaigns of
    that category. Returns the campaigns it was counted in."""
    recent = cast(list[str], await redis.zrangebyscore(keys.campaigns, now - lookback_s,
                                                         "+inf"))
    if not recent:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for campaign in recent:
            pipe.get(keys.campaign_send(digits, campaign))
            if category:
                pipe.hget(keys.campaign(campaign), "category")
        replies = await pipe.execute()
    if category:
        sends = [v for v, cat in zip(replies[::2], replies[1::2], strict=True)
                 if cat == category]
        recent = [c for c, cat in zip(recent, replies[1::2], strict=True) if cat == category]
    else:
        sends = replies
    hits: list[tuple[str, str]] = []
    for campaign, value in zip(recent, sends, strict=True):
        if not value:
            continue
        at, _, variant = str(value).partition(" ")
        try:
            if now - float(at) <= window_s:
                hits.append((campaign, variant))
        except ValueError:
            continue
    if not hits:
        return []
    key = keys.marketing(digits)
    async with redis.pipeline(transaction=False) as pipe:
        for campaign, _variant in hits:
            pipe.hsetnx(key, f"o:{campaign}", repr(now))
        pipe.pexpire(key, int(lookback_s * 1000))
        fresh = (await pipe.execute())[:-1]
    tally = Tally()
    out: list[str] = []
    for (campaign, variant), new in zip(hits, fresh, strict=True):
        if new:
            tally.add(keys.funnel(campaign), variant, "opted_out")
            out.append(campaign)
    if tally.counts:
        async with redis.pipeline(transaction=False) as pipe:
            tally.flush(pipe)
            await pipe.execute()
    return out


async def convert(redis: Redis, keys: Keys, msg_ids: Iterable[str], now: float
                  ) -> list[str]:
    """Conversions reported by the app: "converted" (first report), "duplicate" or
    "unknown" per message id."""
    ids = list(msg_ids)
    script = load_script(redis, "convert")
    async with redis.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe_script(pipe, script, [keys.status(i)], [repr(now)])
        replies = await pipe.execute()
    out: list[str] = []
    tally = Tally()
    for reply in replies:
        if not reply:
            out.append("unknown")
        elif int(reply[0]) == 0:
            out.append("duplicate")
        else:
            out.append("converted")
            if reply[1]:
                tally.add(str(reply[1]), str(reply[2]), "converted")
    if tally.counts:
        async with redis.pipeline(transaction=False) as pipe:
            tally.flush(pipe)
            await pipe.execute()
    return out


# Rates and the A/B comparison ----------------------------------------------------------

def rate(num: int, den: int) -> dict[str, Any]:
    return {"value": num / den if den else None, "num": num, "den": den}


def summarise(counts: dict[str, int], variant: str = "") -> dict[str, Any]:
    """Stages (of one variant, or the total) and rates with their denominators."""
    sfx = f"|{variant}" if variant else ""

    def g(stage: str) -> int:
        return counts.get(stage + sfx, 0)

    stages = {s: g(s) for s in STAGES}
    rejected_by = {k.split(":", 1)[1].removesuffix(sfx): v for k, v in counts.items()
                   if k.startswith("rejected:") and (k.endswith(sfx) if sfx else "|" not in k)}
    finals = stages["delivered"] + stages["undeliverable"] + stages["expired"]
    return {
        "stages": stages,
        "rejected_by": rejected_by,
        "rates": {
            "delivery": rate(stages["delivered"], finals),
            "click": rate(stages["clicked"], stages["delivered"]),
            "conversion": rate(stages["converted"], stages["delivered"]),
            "optout": rate(stages["opted_out"], stages["delivered"]),
            "reject": rate(stages["rejected"], stages["queued"]),
        },
    }


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes of n (sane at small n and near 0 or 1)."""
    if n <= 0:
        return (0.0, 0.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """Two-sided z-test of p1 = p2 (pooled). p_value None when it cannot be computed."""
    if n1 <= 0 or n2 <= 0:
        return {"z": None, "p_value": None, "significant": False}
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return {"z": None, "p_value": None, "significant": False}
    z = (k1 / n1 - k2 / n2) / se
    pv = 2 * (1 - NormalDist().cdf(abs(z)))
    return {"z": z, "p_value": pv, "significant": pv < 0.05}


def ab(counts: dict[str, int], variants: list[str]) -> dict[str, Any]:
    """Click rate per variant (of delivered) with a 95 % interval, and the test of the
    first variant against each other one."""
    rows: list[dict[str, Any]] = []
    for v in variants:
        k, n = counts.get(f"clicked|{v}", 0), counts.get(f"delivered|{v}", 0)
        lo, hi = proportion_ci(k, n)
        rows.append({"variant": v, "clicked": k, "delivered": n,
                     "click_rate": k / n if n else None, "ci95": [lo, hi]})
    tests = []
    if rows:
        base = rows[0]
        for r in rows[1:]:
            t = two_proportion_test(r["clicked"], r["delivered"], base["clicked"],
                                    base["delivered"])
            tests.append({"variant": r["variant"], "against": base["variant"], **t})
    return {"variants": rows, "tests": tests}
