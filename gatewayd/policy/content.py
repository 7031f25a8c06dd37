"""Check 1, content (pure): signature, forbidden characters, opt-out hint, segment count.

Rules, per category (policies/policy.toml ``[category.<name>]``):

- ``signature``: the text (trimmed) must start or end with a 【signature】 of 1-20
  characters (``either``), or specifically ``start`` / ``end``; ``off`` skips the test.
- forbidden characters (``[content].forbidden_chars``, or the category's own): any one
  rejects (``content:forbidden_char:★``). Compared as written: the listed symbols have no
  compatibility forms, and the keyword check covers evasion of words.
- ``optout_hint``: the text must carry one of ``[content].optout_hints`` (compared after
  keyword normalisation, so ``回 ＴＤ 退订`` counts). ``append`` adds
  ``[content].append_hint`` when none is there (before a signature that ends the text,
  so the signature stays last); ``reject`` refuses the message instead.
- ``max_segments``: counted on the final text with gatewayd.smstext.segments, exactly as
  the carrier will split it (GSM-7 160/153 with extension characters as two septets,
  UCS-2 70/67, by ``[content].udh_ref_bits``).
"""

from __future__ import annotations

import re
from typing import Final

from gatewayd.policy.normalize import for_matching
from gatewayd.policy.settings import CategorySettings, ContentSettings
from gatewayd.policy.verdict import Verdict, reject
from gatewayd.smstext import segments

_SIG_START: Final = re.compile(r"^【([^【】]{1,20})】")
_SIG_END: Final = re.compile(r"【([^【】]{1,20})】$")


def signature_of(text: str) -> str:
    """The 【…】 signature at the start (preferred) or end of the text, or ""."""
    t = text.strip()
    m = _SIG_START.match(t) or _SIG_END.search(t)
    return m.group(1) if m else ""


class ContentRules:
    """The content check of one category, precompiled."""

    __slots__ = ("append_hint", "forbidden", "hint_mode", "hints", "max_segments",
                 "ref_bits", "signature")

    def __init__(self, cat: CategorySettings, content: ContentSettings) -> None:
        chars = cat.forbidden_chars if cat.forbidden_chars is not None else content.forbidden_chars
        self.forbidden = frozenset(chars) - frozenset(" \t\r\n")
        self.signature = cat.signature
        self.hint_mode = cat.optout_hint
        self.hints = tuple(for_matching(h) for h in content.optout_hints)
        self.append_hint = content.append_hint
        self.max_segments = cat.max_segments
        self.ref_bits = content.udh_ref_bits

    def check(self, text: str, normalised: str) -> tuple[Verdict | None, str | None]:
        """(reject verdict or None, rewritten text or None). ``normalised`` = for_matching(text)."""
        stripped = text.strip()
        if not stripped:
            return reject("content", "content:empty"), None
        if self.forbidden and not self.forbidden.isdisjoint(text):
            bad = next(ch for ch in text if ch in self.forbidden)
            return reject("content", f"content:forbidden_char:{bad}"), None
        sig = self.signature
        if sig != "off":
            at_start = stripped[0] == "【" and _SIG_START.match(stripped) is not None
            at_end = stripped[-1] == "】" and _SIG_END.search(stripped) is not None
            if sig == "start" and not at_start:
                return reject("content", "content:signature:start"), None
            if sig == "end" and not at_end:
                return reject("content", "content:signature:end"), None
            if sig == "either" and not (at_start or at_end):
                return reject("content", "content:signature:missing"), None
        rewritten: str | None = None
        if self.hint_mode != "off" and not any(h in normalised for h in self.hints):
            if self.hint_mode == "reject":
                return reject("content", "content:optout_hint:missing"), None
            rewritten = self._append(stripped)
        final = rewritten if rewritten is not None else text
        parts = segments(final, self.ref_bits).parts
        if parts > self.max_segments:
            return reject("content", f"content:segments:{parts}>{self.max_segments}"), None
        return None, rewritten

    def _append(self, text: str) -> str:
        m = _SIG_END.search(text)
        if m and not _SIG_START.match(text):
            return text[: m.start()].rstrip() + self.append_hint + text[m.start():]
        return text + self.append_hint
