"""What an MO reply means: opt-out, opt-in (re-subscription) or neither.

People write ``退订``, but also ``我要退订``, ``退订谢谢``, ``请退订``, ``TD退订`` and
``Please STOP``; and they write ``不要退订``, ``取消订单`` and ``TD is great``, which are
not opt-outs. The reply is normalised (gatewayd.policy.normalize.reply_word: NFKC,
casefold, traditional -> simplified, look-alikes -> ASCII) and cut into tokens: a Latin
word or number is one token, every other letter (a Chinese character) is one. Then, in
this order:

1. **whole word**: the reply is an opt-out word (``words``: ``TD``, ``T``, ``退订``,
   ``STOP`` ...) -> opt-out; an opt-in word (``optin_words``: ``订阅``, ``START`` ...)
   -> opt-in.
2. **word with fillers**: without its polite fillers (``fillers``: ``请``, ``谢谢``,
   ``回复``, ``please``, ``thanks`` ...) the reply is such a word: ``退订谢谢``, ``请T``,
   ``Please STOP``, ``YES please`` -> as in 1.
3. **phrase inside a short reply**: a reply of at most ``max_reply_chars`` letters and
   digits that contains an opt-out phrase (``phrases``: ``退订``, ``拒收``,
   ``unsubscribe``, ``stop texting`` ...) as whole tokens -> opt-out, unless the
   occurrence lies inside an exception (``phrase_exceptions``: ``退订单`` = "return an
   order", ``退订酒店``) or a negation (``negations``: ``不``, ``不要``, ``别``,
   ``don't``, ``not`` ...) ends at most ``negation_gap`` tokens before it (``不要帮我退订``).
   A negation inside one of ``negation_exceptions`` (``不能``, ``没法``: "cannot") does
   not count: ``为什么不能退订`` is a complaint from someone who wants out.
   Opt-ins are never recognised inside sentences: a stray ``订阅`` must not undo an
   opt-out.

All lists are normalised once when the policy loads; tests/data/optout_replies.tsv is the
labelled corpus the defaults are measured on (tests/test_policy_replies.py prints the
precision and recall; policies/README.md quotes them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from gatewayd.policy.normalize import reply_word

Kind = Literal["optout", "optin", ""]

# A Latin word or number (ASCII after folding), any other single letter or digit, or a
# run of clause punctuation (one BREAK token: a negation does not reach across it).
_TOKEN: Final = re.compile(r"[a-z0-9]+|[^\W_]|[,.!?;:，。！？；：、…]+")
_APOSTROPHES: Final = str.maketrans("", "", "'’`")
BREAK: Final = ","


def tokens(text: str) -> tuple[str, ...]:
    """The reply's tokens after normalisation (``don't`` is one token, ``dont``); clause
    punctuation inside the reply is one ``BREAK`` token."""
    out = _TOKEN.findall(reply_word(text).translate(_APOSTROPHES))
    return tuple(BREAK if not (t[0].isalnum()) else t for t in out)


@dataclass(frozen=True, slots=True)
class Reply:
    kind: Kind
    rule: str = ""  # "word", "fillers", "phrase"
    word: str = ""  # the word or phrase that decided, normalised
    why_not: str = ""  # for a phrase that did not count: "negation:不要", "exception:退订单"


NOTHING: Final = Reply("")


@dataclass(frozen=True, slots=True)
class ReplyRules:
    """The [optout] lists, as written (loaded by gatewayd.policy.settings)."""

    words: tuple[str, ...]
    optin_words: tuple[str, ...]
    fillers: tuple[str, ...]
    phrases: tuple[str, ...]
    phrase_exceptions: tuple[str, ...]
    negations: tuple[str, ...]
    negation_exceptions: tuple[str, ...]
    max_reply_chars: int
    negation_gap: int


# Built-in lists (policies/README.md explains each; [optout] keys replace them).
# Opt-in words: unambiguous only. "Y"/"YES" are not among them: Chinese shops ask
# "回复Y确认收货" (reply Y to confirm delivery), and a confirmation must not undo an
# opt-out. Add them with [optout] optin_words where Y means re-subscribe.
DEFAULT_OPTIN_WORDS: Final = ("订阅", "重新订阅", "恢复订阅", "恢复接收", "START", "UNSTOP")
DEFAULT_FILLERS: Final = (
    "请", "麻烦", "麻烦你", "谢谢", "谢谢你", "谢了", "多谢", "感谢", "您好", "你好", "我要",
    "我想", "帮我", "给我", "回复", "回", "立即", "马上", "直接", "了", "吧", "啊", "呀", "哦",
    "呢", "嗯", "好的", "please", "pls", "plz", "thanks", "thank you", "thx", "hi", "hello",
    "now", "me", "ok", "okay",
)
DEFAULT_PHRASES: Final = (
    "退订", "拒收", "取消订阅", "退出订阅", "不要再发", "别再发", "不要发了", "别发了",
    "不再接收", "停止发送", "unsubscribe", "opt out", "optout", "stop texting",
    "stop sending", "stop messaging", "stop contacting", "remove me", "remove my number",
)
# 退订 and 拒收 also mean "cancel a booking" and "refuse a parcel" in shop chatter.
DEFAULT_PHRASE_EXCEPTIONS: Final = (
    "退订单", "退订金", "退订房", "退订酒店", "退订机票", "退订车票", "退订门票",
    "机票退订", "车票退订", "门票退订", "酒店退订", "房间退订", "订单退订",
    "拒收快递", "拒收包裹", "拒收货", "拒收商品", "拒收订单",
)
DEFAULT_NEGATIONS: Final = (
    "不", "不要", "别", "勿", "没", "没有", "无需", "不用", "不想", "不会", "don't", "do not",
    "not", "never", "no need to", "didn't", "did not", "won't", "will not",
)
DEFAULT_NEGATION_EXCEPTIONS: Final = ("不能", "没法", "不可以")


def show(seq: tuple[str, ...]) -> str:
    """A token sequence as text: Latin words spaced, Chinese characters joined."""
    out = ""
    for t in seq:
        if out and t.isascii() and out[-1].isascii():
            out += " "
        out += t
    return out


def _seqs(items: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Token sequences, longest first (so 不要 is tried before 不), empties dropped."""
    out = {tuple(t for t in tokens(i) if t != BREAK) for i in items} - {()}
    return tuple(sorted(out, key=lambda s: (-len(s), s)))


def _find(seq: tuple[str, ...], toks: tuple[str, ...]) -> list[int]:
    n = len(seq)
    return [i for i in range(len(toks) - n + 1) if toks[i : i + n] == seq]


class ReplyMatcher:
    """``classify(text)``: see the module docstring."""

    __slots__ = ("_fillers", "_gap", "_max", "_negation_exceptions", "_negations", "_optin",
                 "_optout", "_phrase_exceptions", "_phrases")

    def __init__(self, rules: ReplyRules) -> None:
        self._optout = frozenset("".join(w) for w in _seqs(rules.words))
        self._optin = frozenset("".join(w) for w in _seqs(rules.optin_words))
        self._fillers = _seqs(rules.fillers)
        self._phrases = _seqs(rules.phrases)
        self._phrase_exceptions = _seqs(rules.phrase_exceptions)
        self._negations = _seqs(rules.negations)
        self._negation_exceptions = _seqs(rules.negation_exceptions)
        self._max = rules.max_reply_chars
        self._gap = rules.negation_gap

    def classify(self, text: str) -> Reply:
        toks = tokens(text)
        words = tuple(t for t in toks if t != BREAK)
        if not words:
            return NOTHING
        # Words compare as their letters run together: "STOP ALL" is STOPALL, "T D" TD.
        joined = "".join(words)
        if joined in self._optout:
            return Reply("optout", "word", show(words))
        if joined in self._optin:
            return Reply("optin", "word", show(words))
        bare = self._without_fillers(words)
        if bare and bare != words:
            joined = "".join(bare)
            if joined in self._optout:
                return Reply("optout", "fillers", show(bare))
            if joined in self._optin:
                return Reply("optin", "fillers", show(bare))
        if sum(len(t) for t in words) > self._max:
            return NOTHING
        why_not = ""
        for phrase in self._phrases:
            for start in _find(phrase, toks):
                end = start + len(phrase)
                exc = _around(self._phrase_exceptions, toks, start, end)
                if exc:
                    why_not = why_not or f"exception:{exc}"
                    continue
                neg = self._negated(toks, start)
                if neg:
                    why_not = why_not or f"negation:{neg}"
                    continue
                return Reply("optout", "phrase", show(phrase))
        return Reply("", why_not=why_not) if why_not else NOTHING

    def _without_fillers(self, toks: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        i = 0
        while i < len(toks):
            for f in self._fillers:
                if toks[i : i + len(f)] == f:
                    i += len(f)
                    break
            else:
                out.append(toks[i])
                i += 1
        return tuple(out)

    def _negated(self, toks: tuple[str, ...], start: int) -> str:
        for neg in self._negations:
            n = len(neg)
            # The negation must end at most `gap` tokens before the phrase starts.
            for e in range(max(n, start - self._gap), start + 1):
                if BREAK in toks[e:start]:
                    continue  # a clause boundary between them: 烦不烦，退订
                if toks[e - n : e] == neg and not _around(self._negation_exceptions,
                                                          toks, e - n, e):
                    return show(neg)
        return ""


def _around(seqs: tuple[tuple[str, ...], ...], toks: tuple[str, ...], start: int,
            end: int) -> str:
    """The first of ``seqs`` with an occurrence covering toks[start:end], or ""."""
    for seq in seqs:
        n = len(seq)
        for s in range(max(0, end - n), min(start, len(toks) - n) + 1):
            if toks[s : s + n] == seq:
                return show(seq)
    return ""
