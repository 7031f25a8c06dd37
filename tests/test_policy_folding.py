"""Keyword matching depth (issue 19 items 1-4): traditional characters, look-alike letters,
pinyin spellings (opt-in), and exception terms that release false positives."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from gatewayd.errors import ConfigError
from gatewayd.model import OutboundMessage
from gatewayd.policy import fold
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.normalize import for_matching
from gatewayd.policy.pinyin import variants
from gatewayd.policy.verdict import Verdict

CLASSES = ["otp", "transactional", "marketing"]
NOW = 1_718_000_000.0
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def shipped() -> PolicyEngine:
    return PolicyEngine.load(ROOT / "policies" / "policy.toml", classes=CLASSES)


def make(tmp_path: Path, terms: list[str], extra: str = "", action: str = "block") -> PolicyEngine:
    (tmp_path / "l.txt").write_text("\n".join(terms) + "\n", encoding="utf-8")
    p = tmp_path / "policy.toml"
    p.write_text(f'[[keywords]]\nname = "l"\nfile = "l.txt"\naction = "{action}"\n{extra}\n',
                 encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


def kw(e: PolicyEngine, text: str, category: str = "transactional") -> Verdict:
    msg = OutboundMessage(id="m", to="+8613800138000", text=text, category=category)
    return dict(e.evaluate_local(msg, NOW))["keywords"]


# 1. Traditional characters ---------------------------------------------------------------
@pytest.mark.parametrize(("text", "reason"), [
    ("【京东】線上賭場，真人荷官", "keyword:gambling:赌场"),
    ("【京东】代開發票，優惠", "keyword:invoices:代开发票"),
    ("【京东】代开發票", "keyword:invoices:代开发票"),  # mixed
    ("【京東】信用卡套現", "keyword:cashout:信用卡套现"),
    ("【京东】澳門賭場", "keyword:gambling:澳门赌场"),
])
def test_traditional_characters_are_caught(text: str, reason: str) -> None:
    v = kw(shipped(), text)
    assert (v.action, v.reason) == ("reject", reason)


def test_traditional_terms_match_simplified_texts(tmp_path: Path) -> None:
    # Terms are folded at load too: a list written in traditional characters works.
    e = make(tmp_path, ["賭博", "開發票"])
    assert kw(e, "【京东】网上赌博").reason == "keyword:l:賭博"
    assert kw(e, "【京东】代开发票").reason == "keyword:l:開發票"


def test_folding_tables_come_from_the_libraries() -> None:
    t = fold.load()
    assert t.traditional > 3000 and t.confusable > 100
    assert for_matching("賭博 開發票 臺灣 綫") == "赌博开发票台湾线"  # t2s, tw, hk variants
    # Simplified text and ASCII are untouched (ASCII keeps its bytes fast path).
    assert fold.fold("赌博开发票") == "赌博开发票"
    assert for_matching("Hello, World-42!") == "helloworld42"


# 2. Look-alike letters -----------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "加w\u0435\u0456xin领红包",  # Cyrillic е, і
    "加\u0461eixin",  # Cyrillic omega ѡ for w
    "加WEIX\u0399N",  # Greek capital iota
    "加we\u0131xin",  # dotless i
    "加ｗｅｉｘｉｎ",  # full-width (NFKC)
])
def test_look_alike_letters_are_caught(tmp_path: Path, text: str) -> None:
    e = make(tmp_path, ["weixin"])
    assert kw(e, "【京东】" + text).reason == "keyword:l:weixin"


def test_look_alikes_do_not_touch_chinese_or_symbols() -> None:
    # CJK characters that Unicode lists as confusable with Latin (一, 〇) stay Chinese;
    # symbols are dropped, not turned into letters (博|彩 must still read 博彩).
    assert for_matching("一〇口") == "一〇口"
    assert for_matching("博|彩") == "博彩"
    assert for_matching("ТD") == "td"  # Cyrillic Т


# 3. Pinyin (opt-in per list) -----------------------------------------------------------
def test_pinyin_is_off_by_default(tmp_path: Path) -> None:
    e = make(tmp_path, ["赌博"])
    assert kw(e, "【京东】DU BO 优惠").action == "send"


@pytest.mark.parametrize("text", ["【京东】DU BO 优惠", "【京东】du-bo", "【京东】DuBo 开户"])
def test_pinyin_spellings_when_opted_in(tmp_path: Path, text: str) -> None:
    e = make(tmp_path, ["赌博", "代开发票"], "pinyin = true")
    v = kw(e, text)
    assert (v.action, v.reason) == ("reject", "keyword:l:赌博")


def test_pinyin_min_letters_and_variants(tmp_path: Path) -> None:
    assert variants("赌博", 4) == ("dubo",)
    assert variants("赌博", 5) == ()
    assert variants("绿色", 4) == ("lvse", "luse")  # ü both ways
    assert variants("银行", 4) == ("yinhang",)  # phrase-aware reading
    assert variants("加V", 4) == ("jiav",)
    assert variants("QQ", 1) == ()  # no Chinese: nothing to spell
    e = make(tmp_path, ["网赌", "代开发票"], "pinyin = true\npinyin_min_letters = 7")
    assert kw(e, "【京东】wangdu").action == "send"  # 6 letters: not added
    assert kw(e, "【京东】daikaifapiao").reason == "keyword:l:代开发票"
    assert e.keyword_terms == 3


def test_pinyin_of_an_exception_releases_the_pinyin_hit(tmp_path: Path) -> None:
    e = make(tmp_path, ["套现 ! 配套现金"], "pinyin = true")
    assert kw(e, "【京东】peitaoxianjin券").action == "send"
    assert kw(e, "【京东】taoxian").reason == "keyword:l:套现"


# 4. Exceptions ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "【京东】购机配套现金券，限时领取",
    "【京东】一套现代简约沙发，今日特价",
    "【京东】购機配套現金券",  # traditional, still released
])
def test_shipped_exceptions_release_legitimate_copy(text: str) -> None:
    v = kw(shipped(), text)
    assert (v.action, v.flags) == ("send", [])


def test_a_hit_outside_the_exception_still_counts() -> None:
    v = kw(shipped(), "【京东】购机配套现金券，另有信用卡套现服务")
    assert v.reason == "keyword:cashout:信用卡套现"
    v = kw(shipped(), "【京东】配套现金券，套现秒到")  # a second, bare 套现
    assert v.reason == "keyword:cashout:套现"


def test_review_list_exceptions() -> None:
    assert kw(shipped(), "【京东】参加微信读书活动，领会员", "marketing").flags == []
    assert kw(shipped(), "【京东】加VIP会员享8折", "marketing").flags == []
    assert kw(shipped(), "【京东】添加微信领红包", "marketing").flags == ["review:lures:加微信"]
    assert kw(shipped(), "【京东】加v领红包", "marketing").flags == ["review:lures:加V"]


def test_list_wide_exceptions_and_file(tmp_path: Path) -> None:
    (tmp_path / "allowed.txt").write_text("# allowed\n微信读书\n", encoding="utf-8")
    e = make(tmp_path, ["加微信", "微信"],
             'exceptions = ["参加微信"]\nexceptions_file = "allowed.txt"')
    assert kw(e, "【京东】参加活动").action == "send"
    # 微信 inside 微信读书 (file) and 加微信 inside 参加微信 (list) are both released.
    assert kw(e, "【京东】参加微信读书").action == "send"
    assert kw(e, "【京东】加微信").reason == "keyword:l:加微信"
    assert kw(e, "【京东】微信读书，加微信").reason == "keyword:l:加微信"


def test_exception_of_one_term_does_not_release_another(tmp_path: Path) -> None:
    e = make(tmp_path, ["套现 ! 配套现金", "现金券"])
    assert kw(e, "【京东】配套现金券").reason == "keyword:l:现金券"


@pytest.mark.parametrize(("line", "extra", "problem"), [
    ("套现 ! 现金券", "", "does not contain '套现'"),
    ("套现", 'exceptions = ["现金券"]', "contains no term of list 'l'"),
    ("套现", "pinyin_min_letters = 0", "must be 1-32"),
])
def test_bad_exceptions_are_refused(tmp_path: Path, line: str, extra: str,
                                    problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make(tmp_path, [line], extra)


async def test_explain_shows_the_term_and_the_exception() -> None:
    from gatewayd.store.keys import Keys

    msg = OutboundMessage(id="m", to="+8613800138000", text="【京东】购机配套现金券，添加微信",
                          category="marketing")
    result = await shipped().explain(None, Keys(), msg, NOW)
    row = next(r for r in result["checks"] if r["check"] == "keywords")
    assert row["hits"] == [
        {"list": "cashout", "term": "套现", "matched": "套现", "action": "block",
         "released_by": "配套现金"},
        {"list": "lures", "term": "加微信", "matched": "加微信", "action": "review"},
    ]
    assert row["verdict"] == "send" and row["flags"] == ["review:lures:加微信"]
