"""Check 1 (content): signature, forbidden characters, opt-out hint, segment limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.model import OutboundMessage
from gatewayd.policy.content import parts_of, signature_of
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.verdict import Verdict
from gatewayd.smstext import segments

CLASSES = ["otp", "transactional", "marketing"]
NOON_SHANGHAI = 1_718_000_000.0  # 2024-06-10 14:13 in Shanghai


def engine(tmp_path: Path | None = None, toml: str = "") -> PolicyEngine:
    if tmp_path is None:
        return PolicyEngine.load(None, classes=CLASSES)
    p = tmp_path / "policy.toml"
    p.write_text(toml, encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


def content(e: PolicyEngine, text: str, category: str = "transactional") -> Verdict:
    msg = OutboundMessage(id="m1", to="+8613800138000", text=text, category=category)
    return dict(e.evaluate_local(msg, NOON_SHANGHAI))["content"]


def test_signature_at_start_or_end() -> None:
    e = engine()
    assert content(e, "【京东】您的订单已发货").action == "send"
    assert content(e, "您的订单已发货【京东】").action == "send"
    assert content(e, "  【京东】您的订单已发货  ").action == "send"
    v = content(e, "您的订单【京东】已发货")
    assert (v.action, v.reason) == ("reject", "content:signature:missing")
    assert content(e, "【】空签名").reason == "content:signature:missing"
    assert signature_of("您好【顺丰速运】") == "顺丰速运"
    assert signature_of("【京东】x【淘宝】") == "京东"


def test_signature_position_configurable(tmp_path: Path) -> None:
    e = engine(tmp_path, '[category.otp]\nsignature = "start"\n'
                         '[category.transactional]\nsignature = "off"\n'
                         '[category.marketing]\nsignature = "end"\noptout_hint = "off"\n')
    assert content(e, "验证码1234【京东】", "otp").reason == "content:signature:start"
    assert content(e, "【京东】验证码1234", "otp").action == "send"
    assert content(e, "no signature at all", "transactional").action == "send"
    assert content(e, "【京东】大促", "marketing").reason == "content:signature:end"
    assert content(e, "大促【京东】", "marketing").action == "send"


def test_forbidden_characters_and_empty(tmp_path: Path) -> None:
    e = engine()
    v = content(e, "【京东】★限时特惠★")
    assert (v.action, v.reason) == ("reject", "content:forbidden_char:★")
    assert content(e, "【京东】▲注意").reason == "content:forbidden_char:▲"
    assert content(e, "   ").reason == "content:empty"
    e2 = engine(tmp_path, '[content]\nforbidden_chars = "#"\n'
                          '[category.otp]\nforbidden_chars = ""\n')
    assert content(e2, "【京东】★ ok").action == "send"
    assert content(e2, "【京东】#1").reason == "content:forbidden_char:#"
    assert content(e2, "【京东】#1", "otp").action == "send"


@pytest.mark.parametrize("hint", ["回TD退订", "拒收请回复R", "回T退订", "回 ＴＤ 退订", "回td退订"])
def test_marketing_with_a_hint_is_unchanged(hint: str) -> None:
    v = content(engine(), f"【京东】双11大促，全场5折 {hint}", "marketing")
    assert v.action == "send"
    assert v.text is None


def test_marketing_hint_appended_before_a_trailing_signature() -> None:
    e = engine()
    assert content(e, "【京东】双11大促", "marketing").text == "【京东】双11大促 回TD退订"
    assert content(e, "双11大促【京东】", "marketing").text == "双11大促 回TD退订【京东】"
    # Not for other categories.
    assert content(e, "【京东】订单已发货").text is None


def test_marketing_hint_reject_mode(tmp_path: Path) -> None:
    e = engine(tmp_path, '[category.marketing]\noptout_hint = "reject"\n')
    v = content(e, "【京东】双11大促", "marketing")
    assert (v.action, v.reason) == ("reject", "content:optout_hint:missing")
    assert content(e, "【京东】双11大促 拒收请回复R", "marketing").action == "send"


def test_segment_limit_gsm7_with_extension_characters(tmp_path: Path) -> None:
    e = engine(tmp_path, '[category.transactional]\nsignature = "off"\nmax_segments = 1\n')
    assert content(e, "a" * 160).action == "send"
    assert content(e, "a" * 161).reason == "content:segments:2>1"
    # Each of ^ { } [ ] ~ | \ € costs two septets: 80 of them fill one SMS exactly.
    assert content(e, "€" * 80).action == "send"
    assert content(e, "€" * 79 + "a" * 2).action == "send"  # 158 + 2 = 160
    assert content(e, "€" * 79 + "a" * 3).reason == "content:segments:2>1"
    e3 = engine(tmp_path, '[category.transactional]\nsignature = "off"\nmax_segments = 2\n')
    assert content(e3, "a" * 306).action == "send"  # 2 x 153
    assert content(e3, "a" * 307).reason == "content:segments:3>2"
    # 153 septets a part and an escape pair never split: 152 a's + € -> 3 parts.
    assert content(e3, "a" * 152 + "€" + "a" * 152).reason == "content:segments:3>2"


def test_segment_limit_chinese_ucs2(tmp_path: Path) -> None:
    e = engine(tmp_path, '[category.transactional]\nmax_segments = 2\n')
    sig = "【京东】"  # 4 UCS-2 units
    assert content(e, sig + "字" * 66).action == "send"  # 70 units: one SMS
    assert content(e, sig + "字" * 130).action == "send"  # 134 = 2 x 67
    assert content(e, sig + "字" * 131).reason == "content:segments:3>2"
    # An emoji takes two UCS-2 units.
    assert content(e, sig + "字" * 128 + "😀").action == "send"
    assert content(e, sig + "字" * 129 + "😀").reason == "content:segments:3>2"


def test_appended_hint_counts_toward_segments(tmp_path: Path) -> None:
    e = engine(tmp_path, '[category.marketing]\nmax_segments = 1\n')
    body = "【京东】" + "促" * 60  # 64 units; + " 回TD退订" (6) = 70: still one SMS
    assert content(e, body, "marketing").action == "send"
    assert content(e, body + "促", "marketing").reason == "content:segments:2>1"


@given(st.text(alphabet="【】京东的订单已发货ab1 ", max_size=30))
def test_content_is_total_and_pure(text: str) -> None:
    e = engine()
    first = content(e, text, "marketing")
    assert first == content(e, text, "marketing")
    assert first.action in ("send", "reject")
    if first.action == "send":
        final = first.text if first.text is not None else text
        assert "回TD退订" in final or "回T退订" in final


_ALPHABETS = ["abc 1", "abc€[]^", "京东的订单", "京😀东", "aΔΦ{}é", "a\x1b€"]


@given(st.sampled_from(_ALPHABETS).flatmap(
    lambda a: st.text(alphabet=a, max_size=400)), st.sampled_from([8, 16]))
def test_property_fast_part_count_matches_the_splitter(text: str, ref_bits: int) -> None:
    assert parts_of(text, ref_bits) == segments(text, ref_bits).parts


_REF_START = re.compile(r"^【([^【】]{1,20})】")
_REF_END = re.compile(r"【([^【】]{1,20})】$")


@given(st.text(alphabet="【】京东ab ", max_size=50))
def test_property_signature_matches_the_regex_definition(text: str) -> None:
    t = text.strip()
    m = _REF_START.match(t) or _REF_END.search(t)
    assert signature_of(text) == (m.group(1) if m else "")
