"""Check 2 (keywords): one automaton, normalisation against evasion, block vs review."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.errors import ConfigError
from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.normalize import for_matching
from gatewayd.policy.verdict import Verdict

CLASSES = ["otp", "transactional", "marketing"]
NOW = 1_718_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path: Path, lists: dict[str, tuple[str, list[str], str]]) -> PolicyEngine:
    toml = []
    for name, (action, terms, extra) in lists.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(["# test list", *terms]) + "\n",
                                              encoding="utf-8")
        toml.append(f'[[keywords]]\nname = "{name}"\nfile = "{name}.txt"\n'
                    f'action = "{action}"\n{extra}\n')
    p = tmp_path / "policy.toml"
    p.write_text("\n".join(toml), encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


def kw(e: PolicyEngine, text: str, category: str = "transactional") -> Verdict:
    msg = OutboundMessage(id="m", to="+8613800138000", text=text, category=category)
    return dict(e.evaluate_local(msg, NOW))["keywords"]


@functools.cache
def _shipped() -> PolicyEngine:
    return PolicyEngine.load(ROOT / "policies" / "policy.toml", classes=CLASSES)


@pytest.fixture
def shipped() -> PolicyEngine:
    return _shipped()


@pytest.mark.parametrize("text", [
    "【京东】博彩优惠",
    "【京东】博 彩优惠",  # space
    "【京东】博.彩优惠",  # dot
    "【京东】博-彩_优惠",  # dash, underscore
    "【京东】博\u200b彩",  # zero-width space
    "【京东】博\u200d彩",  # zero-width joiner
    "【京东】博\ufeff彩",  # BOM / zero-width no-break space
    "【京东】博🎲彩",  # emoji
    "【京东】博・彩",  # katakana middle dot
])
def test_evasion_variants_of_a_chinese_term_are_blocked(shipped: PolicyEngine,
                                                        text: str) -> None:
    v = kw(shipped, text)
    assert (v.action, v.reason) == ("reject", "keyword:gambling:博彩")


@pytest.mark.parametrize("text", ["加微信", "加 微 信", "加·微·信", "加\u200c微信"])
def test_review_list_flags_and_sends(shipped: PolicyEngine, text: str) -> None:
    v = kw(shipped, f"【京东】新品上市{text}领券", "marketing")
    assert v.action == "send"
    assert v.flags == ["review:lures:加微信"]


def test_latin_terms_ignore_case_width_and_separators(tmp_path: Path) -> None:
    e = make(tmp_path, {"spam": ("block", ["Casino Royale", "ＱＱ群"], "")})
    for text in ("casino royale", "CASINO-ROYALE", "ｃａｓｉｎｏ ｒｏｙａｌｅ",
                 "C.a.s.i.n.o.R.o.y.a.l.e", "ca\u200bsino🎰royale"):
        assert kw(e, "【x】" + text).reason == "keyword:spam:Casino Royale", text
    assert kw(e, "【x】加qq 群").reason == "keyword:spam:ＱＱ群"
    assert kw(e, "【x】casino night").action == "send"


def test_block_wins_over_review_and_first_block_in_text_order(tmp_path: Path) -> None:
    e = make(tmp_path, {
        "watch": ("review", ["套现", "发票"], ""),
        "cash": ("block", ["套现"], ""),
        "inv": ("block", ["代开发票"], ""),
    })
    assert kw(e, "【x】信用卡套现").reason == "keyword:cash:套现"
    assert kw(e, "【x】代开发票 套现").reason == "keyword:inv:代开发票"
    v = kw(e, "【x】电子发票已开具")
    assert (v.action, v.flags) == ("send", ["review:watch:发票"])


def test_list_restricted_to_categories(tmp_path: Path) -> None:
    e = make(tmp_path, {"promo": ("block", ["免费领取"], 'categories = ["marketing"]')})
    assert kw(e, "【x】免费领取", "marketing").action == "reject"
    assert kw(e, "【x】免费领取", "transactional").action == "send"


def test_ten_thousand_terms_in_one_automaton(tmp_path: Path) -> None:
    terms = [f"词{i:05d}号" for i in range(10_000)]
    e = make(tmp_path, {"big": ("block", terms, "")})
    assert e.keyword_terms == 10_000
    assert kw(e, "【x】这是 词 0 4 2 4 2 号").reason == "keyword:big:词04242号"
    assert kw(e, "【x】这是词4242号").action == "send"


def test_empty_term_after_normalisation_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad\.txt:3: '★★' has no letters"):
        make(tmp_path, {"bad": ("block", ["正常", "★★"], "")})


_SEPARATORS = st.sampled_from([" ", ".", "-", "_", "\u200b", "\u200c", "\u200d", "\ufeff",
                               "🎲", "😀", "·", "/", "*", "~", "\u3000", "，", "、"])


@given(term=st.sampled_from(["博彩", "六合彩", "代开发票", "信用卡套现", "赌场"]),
       seps=st.lists(st.lists(_SEPARATORS, max_size=3), min_size=8, max_size=8),
       prefix=st.text(alphabet="您好欢迎光临 ", max_size=10),
       width=st.booleans())
def test_property_separators_between_characters_never_evade(
    term: str, seps: list[list[str]], prefix: str, width: bool
) -> None:
    spaced = "".join(ch + "".join(seps[i]) for i, ch in enumerate(term))
    if width:
        spaced = spaced.replace(" ", "\u3000")
    assert for_matching(spaced) == for_matching(term)
    assert kw(_shipped(), f"【京东】{prefix}{spaced}").action == "reject"


@given(st.text(max_size=60))
def test_property_normalisation_is_idempotent(text: str) -> None:
    once = for_matching(text)
    assert for_matching(once) == once
    assert all(ch.isalnum() for ch in once)


async def test_repeated_texts_get_the_same_verdicts_from_the_text_cache(
    redis: object, keys: object
) -> None:
    """Content and keyword verdicts are remembered per (category, text): a campaign's
    one text to many recipients. Every message still gets its own verdict object."""
    engine = PolicyEngine.load(ROOT / "policies" / "policy.toml", classes=CLASSES)
    texts = [("marketing", "【京东】新品上市加微信领券 回TD退订"),
             ("marketing", "【京东】博彩优惠 回TD退订"),
             ("marketing", "【京东】新品上市"),  # the hint gets appended
             ("transactional", "Your parcel is out for delivery")]
    rounds = []
    for r in range(3):
        msgs = [OutboundMessage(id=f"m{r}-{i}", to=f"+86138{r}{i:06d}", text=t, category=c)
                for i, (c, t) in enumerate(texts)]
        rounds.append(await engine.evaluate(redis, keys, msgs, NOW))  # type: ignore[arg-type]
    first = [(v.action, v.reason, v.flags, v.text) for v in rounds[0]]
    assert first[0][0] == "send" and first[0][2] == ["review:lures:加微信"]
    assert first[1][:2] == ("reject", "keyword:gambling:博彩")
    assert first[2][3] is not None and first[2][3].endswith("回TD退订")
    for later in rounds[1:]:
        assert [(v.action, v.reason, v.flags, v.text) for v in later] == first
    assert rounds[1][1] is not rounds[2][1] and rounds[1][0].flags is not rounds[2][0].flags


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_path_equals_the_unicode_rule(text: str) -> None:
    import re
    import unicodedata
    rule = re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).casefold())
    assert for_matching(text) == rule


@given(st.from_regex(r"\A(\+|00)?[0-9 \-]{0,18}\Z"))
def test_number_key_fast_path_equals_the_general_rule(number: str) -> None:
    import re

    from gatewayd.policy.normalize import number_key
    digits = re.sub(r"\D+", "", number)
    if number.lstrip().startswith("00"):
        digits = digits[2:]
    assert number_key(number) == digits
