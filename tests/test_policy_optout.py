"""Check 3 (optout): records, audit, suppression, scopes, and MO reply recognition."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.optout import opt_in, opt_out, optout_history, optout_status
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]
T0 = datetime(2024, 6, 10, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
CN = "+8613800138000"
DEFAULT = PolicyEngine.load(None, classes=CLASSES)


def msg(category: str, text: str = "【京东】618大促 回TD退订", to: str = CN, msg_id: str = "",
        sender: str = "") -> OutboundMessage:
    return OutboundMessage(id=msg_id or f"{category}-{text}-{to}", to=to, text=text,
                           category=category, sender=sender)


async def test_opt_out_blocks_the_next_marketing_message(redis: aioredis.Redis,
                                                         keys: Keys) -> None:
    e = DEFAULT
    first = await e.evaluate(redis, keys, [msg("marketing", msg_id="m1")], T0)
    assert first[0].action == "send"
    await opt_out(redis, keys, CN, source="mo", at=T0 + 10)
    v = (await e.evaluate(redis, keys, [msg("marketing", "【京东】新品 回TD退订")], T0 + 20))[0]
    assert (v.action, v.check, v.reason) == ("reject", "optout", "optout")
    # Codes and transactional messages still go (not suppressed by default).
    verdicts = await e.evaluate(redis, keys, [msg("otp", "【京东】验证码 123456"),
                                              msg("transactional", "【京东】订单已发货")],
                                T0 + 20)
    assert [v.action for v in verdicts] == ["send", "send"]
    # The number written differently is the same recipient.
    v = (await e.evaluate(redis, keys, [msg("marketing", "【京东】再来 回TD退订",
                                            to="0086 138-0013-8000")], T0 + 30))[0]
    assert v.reason == "optout"
    await opt_in(redis, keys, CN, source="api", at=T0 + 40)
    v = (await e.evaluate(redis, keys, [msg("marketing", "【京东】欢迎回来 回TD退订")], T0 + 50))[0]
    # Past the opt-out now; the daily marketing cap (m1 went out today) decides.
    assert (v.action, v.check) == ("defer", "freq_cap")


async def test_status_and_audit_trail(redis: aioredis.Redis, keys: Keys) -> None:
    await opt_out(redis, keys, CN, source="mo", at=T0)
    await opt_out(redis, keys, "8613800138000", scope="京东", source="api", at=T0 + 1)
    assert await optout_status(redis, keys, CN) == {"*": T0, "京东": T0 + 1}
    await opt_in(redis, keys, CN, source="cli", at=T0 + 2)
    assert await optout_status(redis, keys, CN) == {"京东": T0 + 1}
    history = await optout_history(redis, keys, CN)
    assert [(h["action"], h["scope"], h["source"], float(h["at"])) for h in history] == [
        ("out", "*", "mo", T0), ("out", "京东", "api", T0 + 1), ("in", "*", "cli", T0 + 2)]
    assert {h["number"] for h in history} == {"+8613800138000"}


async def test_invalid_numbers_and_scopes_refused(redis: aioredis.Redis, keys: Keys) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        await opt_out(redis, keys, "12345", source="api", at=T0)
    with pytest.raises(ValueError, match="scope"):
        await opt_out(redis, keys, CN, scope=" ", source="api", at=T0)
    assert await redis.dbsize() == 0


async def test_signature_scope(tmp_path: Path, redis: aioredis.Redis, keys: Keys) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[optout]\nscope = "signature"\n', encoding="utf-8")
    e = PolicyEngine.load(p, classes=CLASSES)
    await opt_out(redis, keys, CN, scope="京东", source="mo", at=T0)
    verdicts = await e.evaluate(redis, keys, [msg("marketing", "【京东】大促 回TD退订"),
                                              msg("marketing", "【淘宝】大促 回TD退订"),
                                              msg("marketing", "大促 回TD退订【京东】")], T0)
    assert [(v.action, v.reason) for v in verdicts] == [
        ("reject", "optout:京东"), ("send", ""), ("reject", "optout:京东")]
    # A global opt-out covers every signature.
    await opt_out(redis, keys, CN, source="mo", at=T0)
    v = (await e.evaluate(redis, keys, [msg("marketing", "【苏宁】大促 回TD退订")], T0 + 1))[0]
    assert v.reason == "optout"


async def test_global_scope_ignores_per_signature_records(redis: aioredis.Redis,
                                                         keys: Keys) -> None:
    await opt_out(redis, keys, CN, scope="京东", source="mo", at=T0)
    v = (await DEFAULT.evaluate(redis, keys, [msg("marketing")], T0))[0]
    assert v.action == "send"


async def test_sender_scope_and_suppressing_transactional(tmp_path: Path, redis: aioredis.Redis,
                                                          keys: Keys) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[optout]\nscope = "sender"\n[category.transactional]\nsuppress_optout = true\n',
                 encoding="utf-8")
    e = PolicyEngine.load(p, classes=CLASSES)
    await opt_out(redis, keys, CN, scope="10690001", source="mo", at=T0)
    verdicts = await e.evaluate(redis, keys, [
        msg("transactional", "【京东】订单1", sender="10690001"),
        msg("transactional", "【京东】订单2", sender="10690002"),
        msg("otp", "【京东】验证码 1", sender="10690001"),
    ], T0)
    assert [v.action for v in verdicts] == ["reject", "send", "send"]


async def test_optout_decides_before_quiet_hours(redis: aioredis.Redis, keys: Keys) -> None:
    night = T0 + 13 * 3600  # 23:00 in Shanghai
    await opt_out(redis, keys, CN, source="mo", at=T0)
    verdicts = await DEFAULT.evaluate(redis, keys, [msg("marketing"),
                                                    msg("marketing", to="+8613900000000")],
                                      night)
    assert [(v.action, v.check) for v in verdicts] == [("reject", "optout"),
                                                       ("defer", "quiet_hours")]


@pytest.mark.parametrize("reply", [
    "TD", " td ", "ＴＤ", "Td", "退订", " 退订。", "STOP", "stop!", "Unsubscribe", "UNSUBSCRIBE",
    "t", "N", "r", "取消", "\u3000ＴＤ\u3000", "「退订」", "OptOut", "stopall", "退订TD",
    # Since issue 19: opt-out words inside short replies (tests/test_policy_replies.py).
    "我要退订", "退订了吗", "T D", "STOP ALL",
])
def test_optout_replies(reply: str) -> None:
    assert DEFAULT.is_optout_reply(reply)


@pytest.mark.parametrize("reply", [
    "TD is great", "不要退订", "TDD", "STOP IT", "好的", "", "   ", "收到", "1234", "取消订单",
])
def test_not_optout_replies(reply: str) -> None:
    assert not DEFAULT.is_optout_reply(reply)


def test_custom_optout_words(tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("# ours\n退订\n0000\n", encoding="utf-8")
    p = tmp_path / "policy.toml"
    p.write_text('[optout]\nwords_file = "words.txt"\nwords = ["BAIBAI"]\n', encoding="utf-8")
    e = PolicyEngine.load(p, classes=CLASSES)
    assert e.optout_words == frozenset({"退订", "0000", "baibai"})
    assert e.is_optout_reply("０００0") and e.is_optout_reply("baibai")
    assert not e.is_optout_reply("TD")  # a words file replaces the built-in list


@given(word=st.sampled_from(["TD", "退订", "STOP", "unsubscribe", "取消"]),
       left=st.text(alphabet=" \t\u3000.。!！,，~「」", max_size=4),
       right=st.text(alphabet=" \t\u3000.。!！,，~「」", max_size=4),
       full_width=st.booleans(), upper=st.booleans())
def test_property_padding_width_and_case(word: str, left: str, right: str, full_width: bool,
                                         upper: bool) -> None:
    w = word.upper() if upper else word.lower()
    if full_width:
        w = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in w)
    assert DEFAULT.is_optout_reply(left + w + right)
    assert not DEFAULT.is_optout_reply(left + "不要" + w + right)  # negated
