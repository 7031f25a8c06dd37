"""MO replies as people write them (issue 19 item 5): opt-outs inside short replies, with
guards for negations and look-alike phrases, measured on a labelled corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.errors import ConfigError
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.replies import ReplyMatcher, ReplyRules, tokens
from gatewayd.policy.settings import DEFAULT_OPTOUT_WORDS

CLASSES = ["otp", "transactional", "marketing"]
CORPUS = Path(__file__).resolve().parent / "data" / "optout_replies.tsv"
DEFAULT = PolicyEngine.load(None, classes=CLASSES)


def corpus() -> list[tuple[str, str]]:
    rows = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            label, text = line.split("\t")
            rows.append((label, text))
    return rows


def scores(kind: str, labels: list[str], said: list[str]) -> tuple[float, float, int, int]:
    tp = sum(1 for g, p in zip(labels, said, strict=True) if g == kind and p == kind)
    fp = sum(1 for g, p in zip(labels, said, strict=True) if g != kind and p == kind)
    fn = sum(1 for g, p in zip(labels, said, strict=True) if g == kind and p != kind)
    return tp / (tp + fp), tp / (tp + fn), fp, fn


def test_corpus_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    rows = corpus()
    assert len(rows) >= 80
    kinds = {label for label, _ in rows}
    assert kinds == {"optout", "optin", "none"}
    labels = [label for label, _ in rows]
    said = [DEFAULT.classify_reply(text).kind or "none" for _, text in rows]
    # The matcher before issue 19: the whole reply had to equal an opt-out word.
    whole = {"".join(tokens(w)) for w in DEFAULT_OPTOUT_WORDS}
    before = ["optout" if "".join(tokens(t)) in whole else "none" for _, t in rows]
    p, r, fp, fn = scores("optout", labels, said)
    p0, r0, _, _ = scores("optout", labels, before)
    ip, ir, _, _ = scores("optin", labels, said)
    with capsys.disabled():
        print(f"\nopt-out replies corpus: {len(rows)} replies "
              f"({labels.count('optout')} opt-outs, {labels.count('optin')} opt-ins, "
              f"{labels.count('none')} neither)\n"
              f"  opt-out: precision {p:.3f}, recall {r:.3f} (false positives {fp}, "
              f"misses {fn}); whole-reply rule before: precision {p0:.3f}, recall {r0:.3f}\n"
              f"  opt-in:  precision {ip:.3f}, recall {ir:.3f}")
        for (label, text), got in zip(rows, said, strict=True):
            if got != label:
                print(f"  wrong: {text!r} labelled {label}, read as {got}")
    # Floors, not the figures: a change that loses an opt-out or invents one fails here.
    assert p == 1.0  # an ordinary reply must never opt a customer out
    assert r >= 0.95
    assert ip == 1.0


@pytest.mark.parametrize(("reply", "rule", "word"), [
    ("TD", "word", "td"),
    ("退訂", "word", "退订"),  # traditional
    ("ТD", "word", "td"),  # Cyrillic Т
    ("我要退订", "fillers", "退订"),
    ("退订谢谢", "fillers", "退订"),
    ("请退订", "fillers", "退订"),
    ("Please STOP", "fillers", "stop"),
    ("TD退订", "phrase", "退订"),
    ("麻烦退订一下", "phrase", "退订"),
    ("为什么不能退订", "phrase", "退订"),  # 不能 = cannot: a complaint, not a negation
    ("烦不烦，退订！", "phrase", "退订"),  # the comma ends the negation's reach
    ("Stop texting me", "phrase", "stop texting"),
])
def test_opt_outs(reply: str, rule: str, word: str) -> None:
    got = DEFAULT.classify_reply(reply)
    assert (got.kind, got.rule, got.word) == ("optout", rule, word)


@pytest.mark.parametrize(("reply", "why_not"), [
    ("不退订", "negation:不"),
    ("不要退订", "negation:不要"),
    ("不要帮我退订", "negation:不要"),  # two tokens between
    ("I will not unsubscribe", "negation:will not"),
    ("Don't unsubscribe me", "negation:dont"),
    ("我要退订单里的衣服", "exception:退订单"),
    ("拒收快递了", "exception:拒收快递"),
    ("取消订单", ""),
    ("TD is great", ""),
    ("回复Y确认收货", ""),
])
def test_not_opt_outs(reply: str, why_not: str) -> None:
    got = DEFAULT.classify_reply(reply)
    assert (got.kind, got.why_not) == ("", why_not)


def test_long_replies_are_not_read_for_phrases() -> None:
    short = "我想问一下这个活动，退订"
    assert DEFAULT.classify_reply(short).kind == "optout"
    long = ("你好，我上周在你们店买的那件外套尺码偏小，想换大一号，请问怎么操作，运费谁出，"
            "什么时候能寄到，另外退订")
    assert DEFAULT.classify_reply(long).kind == ""


def test_opt_ins() -> None:
    for reply in ("订阅", "重新订阅", "START", "请重新订阅", "恢复订阅，谢谢"):
        assert DEFAULT.classify_reply(reply).kind == "optin", reply
    # Never inside a sentence, and Y is not an opt-in word by default.
    for reply in ("我想订阅你们的新品通知", "Y", "取消订阅"):
        assert DEFAULT.classify_reply(reply).kind != "optin", reply


def test_configured_lists(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[optout]\nwords = ["TD"]\noptin_words = ["Y"]\nphrases = ["退订"]\n'
                 'negations = ["不"]\nfillers = ["谢谢"]\nphrase_exceptions = []\n'
                 'max_reply_chars = 6\nnegation_gap = 0\n', encoding="utf-8")
    e = PolicyEngine.load(p, classes=CLASSES)
    assert e.classify_reply("Y").kind == "optin"
    assert e.classify_reply("我要退订单").kind == "optout"  # no exceptions configured
    assert e.classify_reply("不帮退订").kind == "optout"  # gap 0
    assert e.classify_reply("我想问问怎么退订").kind == ""  # 8 characters > 6
    assert e.classify_reply("请退订").kind == "optout"  # 请 is no filler here: phrase


@pytest.mark.parametrize(("toml", "problem"), [
    ('optin_words = ["TD"]', "also an opt-out word"),
    ('phrases = ["。"]', "empty once normalised"),
    ("max_reply_chars = 0", "must be 1-500"),
    ("negation_gap = 11", "must be 0-10"),
])
def test_bad_reply_settings(tmp_path: Path, toml: str, problem: str) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(f"[optout]\n{toml}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        PolicyEngine.load(p, classes=CLASSES)


def test_matcher_is_usable_alone() -> None:
    m = ReplyMatcher(ReplyRules(words=("STOP",), optin_words=(), fillers=(), phrases=(),
                                phrase_exceptions=(), negations=(), negation_exceptions=(),
                                max_reply_chars=40, negation_gap=2))
    assert m.classify("stop").kind == "optout"
    assert m.classify("stop it").kind == ""
