"""Checks 5-7 against a real Redis: duplicate, frequency caps, tenant rate (explicit clock)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 6, 10, 9, 0, tzinfo=SH).timestamp()  # a Monday morning in Shanghai
CN = "+8613800138000"


def load(tmp_path: Path | None = None, toml: str = "") -> PolicyEngine:
    if tmp_path is None:
        return PolicyEngine.load(None, classes=CLASSES)
    p = tmp_path / "policy.toml"
    p.write_text(toml, encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


_seq = iter(range(10**9))


def otp(to: str = CN, code: int | None = None, msg_id: str = "") -> OutboundMessage:
    n = next(_seq)
    return OutboundMessage(id=msg_id or f"otp-{n}", to=to, category="otp",
                           text=f"【京东】验证码 {code if code is not None else n:06d}")


def mkt(to: str = CN, msg_id: str = "", tenant: str = "") -> OutboundMessage:
    n = next(_seq)
    return OutboundMessage(id=msg_id or f"mkt-{n}", to=to, category="marketing",
                           text=f"【京东】第{n}期大促 回TD退订", tenant=tenant)


def txn(to: str = CN, text: str = "", msg_id: str = "", tenant: str = "") -> OutboundMessage:
    n = next(_seq)
    return OutboundMessage(id=msg_id or f"txn-{n}", to=to, category="transactional",
                           text=text or f"【京东】订单{n}已发货", tenant=tenant)


async def one(e: PolicyEngine, redis: aioredis.Redis, keys: Keys, msg: OutboundMessage,
              now: float) -> tuple[str, str, float]:
    v = (await e.evaluate(redis, keys, [msg], now))[0]
    return v.action, v.reason, v.until


async def test_otp_windows_roll_over(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    assert (await one(e, redis, keys, otp(), T0))[0] == "send"
    assert await one(e, redis, keys, otp(), T0 + 30) == ("reject", "freq_cap:otp:1/60s", 0.0)
    assert (await one(e, redis, keys, otp(), T0 + 59.999))[0] == "reject"
    # The 60 s window is (now-60, now]: the first code leaves it at exactly T0+60.
    assert (await one(e, redis, keys, otp(), T0 + 60))[0] == "send"
    for k in (2, 3, 4):
        assert (await one(e, redis, keys, otp(), T0 + 60 * k))[0] == "send"
    # Five in the hour: the sixth is refused by the hourly window, not the minute one.
    assert await one(e, redis, keys, otp(), T0 + 300) == ("reject", "freq_cap:otp:5/3600s", 0)
    assert (await one(e, redis, keys, otp(), T0 + 3600))[0] == "send"  # T0 left the hour
    # Another recipient is not affected.
    assert (await one(e, redis, keys, otp(to="+8613800138999"), T0 + 300))[0] == "send"


async def test_daily_otp_cap(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    sent = 0
    for k in range(30):  # one code every 13 minutes for 6.5 hours
        action, reason, _ = await one(e, redis, keys, otp(), T0 + 780 * k)
        if action == "send":
            sent += 1
        else:
            assert reason in ("freq_cap:otp:5/3600s", "freq_cap:otp:10/86400s")
    assert sent == 10


async def test_marketing_cap_defers_until_the_window_frees(redis: aioredis.Redis,
                                                          keys: Keys) -> None:
    e = load()
    assert (await one(e, redis, keys, mkt(), T0))[0] == "send"
    action, reason, until = await one(e, redis, keys, mkt(), T0 + 3600)
    assert (action, reason, until) == ("defer", "freq_cap:marketing:1/86400s", T0 + 86400)
    assert (await one(e, redis, keys, mkt(), T0 + 86400))[0] == "send"
    assert (await one(e, redis, keys, mkt(), T0 + 2 * 86400))[0] == "send"
    # Three in the week: the fourth waits for the first to leave the 7-day window.
    action, reason, until = await one(e, redis, keys, mkt(), T0 + 3 * 86400)
    assert (action, reason, until) == ("defer", "freq_cap:marketing:3/604800s", T0 + 604800)


async def test_in_batch_messages_see_each_other(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    verdicts = await e.evaluate(redis, keys, [otp(), otp(), otp(to="+8613900000000")], T0)
    assert [v.action for v in verdicts] == ["send", "reject", "send"]


async def test_duplicate_window(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    text = "【京东】您的订单已发货"
    assert (await one(e, redis, keys, txn(text=text), T0))[0] == "send"
    assert await one(e, redis, keys, txn(text=text), T0 + 29) == ("reject", "duplicate", 0.0)
    # Same text, other number; other text, same number: fine.
    assert (await one(e, redis, keys, txn(text=text, to="+8613900000001"), T0 + 29))[0] == "send"
    assert (await one(e, redis, keys, txn(text=text + "。"), T0 + 29))[0] == "send"
    assert (await one(e, redis, keys, txn(text=text), T0 + 30))[0] == "send"


async def test_redelivered_message_is_neither_duplicate_nor_counted_twice(
    redis: aioredis.Redis, keys: Keys
) -> None:
    e = load()
    m = otp(msg_id="same-id")
    assert (await one(e, redis, keys, m, T0))[0] == "send"
    # The daemon crashed before ACK: the same message is read and evaluated again.
    assert (await one(e, redis, keys, m, T0 + 5))[0] == "send"
    assert await redis.zcard(keys.freq("8613800138000", "cap:otp")) == 1


async def test_rejected_or_deferred_messages_consume_nothing(
    tmp_path: Path, redis: aioredis.Redis, keys: Keys
) -> None:
    e = load(tmp_path, "[category.transactional]\ncaps = [{ limit = 2, window_s = 3600 }]\n"
                       '[tenants.slow]\nrate = 0.01\nburst = 1\n')
    a = "【京东】订单A已发货"
    assert (await one(e, redis, keys, txn(text=a), T0))[0] == "send"
    assert (await one(e, redis, keys, txn(text=a), T0 + 1))[1] == "duplicate"
    assert (await one(e, redis, keys, txn(text="无签名"), T0 + 1))[0] == "reject"
    # Neither the duplicate nor the content reject used the second slot:
    assert (await one(e, redis, keys, txn(), T0 + 2))[0] == "send"
    assert (await one(e, redis, keys, txn(), T0 + 3))[1] == "freq_cap:transactional:2/3600s"

    # A tenant-rate deferral consumes no cap slot and sets no duplicate marker.
    other = "+8613900000002"
    b = "【京东】订单B已发货"
    verdicts = await e.evaluate(redis, keys, [txn(to=other, tenant="slow"),
                                              txn(to=other, text=b, tenant="slow")], T0)
    assert [(v.action, v.check) for v in verdicts] == [("send", ""),
                                                       ("defer", "tenant_rate")]
    # When the bucket has a token again, the deferred message passes (not a duplicate,
    # and the cap still has its slot).
    assert (await one(e, redis, keys, txn(to=other, text=b, tenant="slow"), T0 + 100))[0] == \
        "send"


async def test_a_message_stopped_after_the_duplicate_check_leaves_its_marker_as_it_was(
    tmp_path: Path, redis: aioredis.Redis, keys: Keys
) -> None:
    """policy_batch.lua writes the duplicate marker at the duplicate check (SET ... GET)
    and puts it back when a later check stops the message: a capped message neither
    sets a marker nor replaces an older one, and a duplicate keeps the first's time."""
    e = load(tmp_path, "[category.transactional]\ncaps = [{ limit = 1, window_s = 3600 }]\n")
    a, b = "【京东】订单A已发货", "【京东】订单B已发货"
    assert (await one(e, redis, keys, txn(text=a, msg_id="first"), T0))[0] == "send"
    [marker] = [k async for k in redis.scan_iter(match="*:dup:*")]
    first = await redis.get(marker)
    assert first is not None and first.endswith(" first")
    # Outside the 30 s window, so not a duplicate, but capped: the old marker stays.
    assert (await one(e, redis, keys, txn(text=a), T0 + 31))[1] == \
        "freq_cap:transactional:1/3600s"
    assert await redis.get(marker) == first
    # Another text, capped: no marker of its own.
    assert (await one(e, redis, keys, txn(text=b), T0 + 32))[1] == \
        "freq_cap:transactional:1/3600s"
    assert [k async for k in redis.scan_iter(match="*:dup:*")] == [marker]
    # A duplicate leaves the first marker's time: the window still ends at T0 + 30.
    other = "+8613900000003"
    assert (await one(e, redis, keys, txn(to=other, text=a), T0))[0] == "send"
    assert (await one(e, redis, keys, txn(to=other, text=a), T0 + 20))[1] == "duplicate"
    assert (await one(e, redis, keys, txn(to=other, text=a), T0 + 30))[1] != "duplicate"


async def test_quiet_hours_deferral_consumes_no_cap(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    night = datetime(2024, 6, 10, 23, 0, tzinfo=SH).timestamp()
    action, reason, until = await one(e, redis, keys, mkt(msg_id="n1"), night)
    assert (action, reason) == ("defer", "quiet_hours")
    assert await redis.exists(keys.freq("8613800138000", "cap:marketing")) == 0
    assert (await one(e, redis, keys, mkt(msg_id="n1"), until))[0] == "send"


async def test_explain_is_read_only(redis: aioredis.Redis, keys: Keys) -> None:
    e = load()
    for _ in range(5):
        report = await e.explain(redis, keys, otp(), T0)
        assert report["verdict"] == "send"
        assert [c["check"] for c in report["checks"]] == [
            "content", "keywords", "optout", "quiet_hours", "duplicate", "freq_cap",
            "tenant_rate", "cooling"]
    assert await redis.dbsize() == 0
    assert (await one(e, redis, keys, otp(), T0))[0] == "send"
    before = await redis.zrange(keys.freq("8613800138000", "cap:otp"), 0, -1)
    report = await e.explain(redis, keys, otp(), T0 + 10)
    assert (report["verdict"], report["check"], report["reason"]) == (
        "reject", "freq_cap", "freq_cap:otp:1/60s")
    assert await redis.zrange(keys.freq("8613800138000", "cap:otp"), 0, -1) == before


async def test_caps_per_signature(tmp_path: Path, redis: aioredis.Redis, keys: Keys) -> None:
    e = load(tmp_path, '[category.otp]\ncap_scope = "signature"\n')
    jd = OutboundMessage(id="a", to=CN, category="otp", text="【京东】验证码 111111")
    tb = OutboundMessage(id="b", to=CN, category="otp", text="【淘宝】验证码 222222")
    jd2 = OutboundMessage(id="c", to=CN, category="otp", text="【京东】验证码 333333")
    verdicts = await e.evaluate(redis, keys, [jd, tb, jd2], T0)
    assert [v.action for v in verdicts] == ["send", "send", "reject"]


@pytest.mark.parametrize("round_", range(3))
async def test_caps_hold_under_concurrent_batches_from_two_engines(
    redis_url: str, redis: aioredis.Redis, keys: Keys, round_: int
) -> None:
    """Two daemons (own engine, own connection) racing on the same recipients."""
    e1, e2 = load(), load()
    c1 = aioredis.from_url(redis_url)
    c2 = aioredis.from_url(redis_url)
    recipients = [f"+86139{round_:02d}{i:06d}" for i in range(40)]
    passes: dict[str, list[float]] = {r: [] for r in recipients}
    try:
        for step in range(12):  # two minutes of simulated time, a batch every 10 s each
            now = T0 + 10 * step
            b1 = [otp(to=r) for r in recipients for _ in range(2)]
            b2 = [otp(to=r) for r in reversed(recipients) for _ in range(2)]
            v1, v2 = await asyncio.gather(e1.evaluate(c1, keys, b1, now),
                                          e2.evaluate(c2, keys, b2, now))
            for msgs, verdicts in ((b1, v1), (b2, v2)):
                for m, v in zip(msgs, verdicts, strict=True):
                    if v.action == "send":
                        passes[m.to].append(now)
                    else:
                        assert v.reason == "freq_cap:otp:1/60s"
    finally:
        await c1.aclose()
        await c2.aclose()
    for times in passes.values():
        # 1 a minute: at T0, T0+60 and T0+120 would be allowed; we stop at T0+110.
        assert times == [T0, T0 + 60]


async def test_a_big_batch_decides_as_one_message_at_a_time(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """A recipient's messages spread over a big batch see each other's counts, in order."""
    e = load()
    n = 192
    people = [f"+86139{i:08d}" for i in range(32)]

    def batch() -> list[OutboundMessage]:
        # Six codes a person, spread over the batch: the 1-a-minute OTP cap must let
        # exactly the first through.
        return [otp(to=people[i % len(people)], msg_id=f"big-{i}") for i in range(n)]

    together = await e.evaluate(redis, keys, batch(), T0)
    one_by_one = [(await e.evaluate(redis, Keys("solo:"), [m], T0))[0] for m in batch()]
    assert [v.action for v in together] == [v.action for v in one_by_one]
    assert [v.action for v in together].count("send") == len(people)
    assert [v.reason for v in together] == [v.reason for v in one_by_one]


async def test_checks_survive_a_script_cache_flush(redis: aioredis.Redis, keys: Keys) -> None:
    """After a Redis restart (or SCRIPT FLUSH) the batch script is loaded again."""
    e = load()
    assert (await one(e, redis, keys, otp(), T0))[0] == "send"
    await redis.script_flush()
    assert (await one(e, redis, keys, otp(to="+8613900000001"), T0))[0] == "send"
    # ...and the flushed-then-reloaded script still counts what came before.
    assert (await one(e, redis, keys, otp(), T0 + 1))[:2] == ("reject", "freq_cap:otp:1/60s")
