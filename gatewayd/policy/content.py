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


def parts_of(text: str, ref_bits: int = 8) -> int:
    """gatewayd.smstext.segments(text, ref_bits).parts: remembered per text, and intake
    has already counted an unchanged text, so this is usually one look-up."""
    return segments(text, ref_bits).parts

_SIG_MAX: Final = 20  # characters inside 【】


def _sig_start(t: str) -> str:
    """The signature opening t (already stripped), or ""."""
    if not t.startswith("【"):
        return ""
    j = t.find("】", 1)
    sig = t[1:j] if 1 < j <= _SIG_MAX + 1 else ""
    return sig if "【" not in sig else ""


def _sig_end(t: str) -> str:
    """The signature closing t (already stripped), or ""."""
    if not t.endswith("】"):
        return ""
    i = t.rfind("【", max(0, len(t) - _SIG_MAX - 2), len(t) - 1)
    sig = t[i + 1 : -1] if i >= 0 else ""
    return sig if "】" not in sig else ""


def signature_of(text: str) -> str:
    """The 【…】 signature (1-20 characters) at the start (preferred) or end, or ""."""
    t = text.strip()
    return _sig_start(t) or _sig_end(t)


class ContentRules:
    """The content check of one category, precompiled."""

    __slots__ = ("append_hint", "forbidden", "hint_mode", "hints", "max_segments",
                 "ref_bits", "signature")

    def __init__(self, cat: CategorySettings, content: ContentSettings) -> None:
        chars = cat.forbidden_chars if cat.forbidden_chars is not None else content.forbidden_chars
        symbols = sorted(set(chars) - set(" \t\r\n"))
        # A character class scans in C; a set test hashes every character of the text.
        self.forbidden = re.compile("[" + "".join(re.escape(c) for c in symbols) + "]") \
            if symbols else None
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
        if self.forbidden is not None:
            m = self.forbidden.search(text)
            if m is not None:
                return reject("content", f"content:forbidden_char:{m.group()}"), None
        sig = self.signature
        if sig != "off":
            at_start = bool(_sig_start(stripped))
            at_end = bool(_sig_end(stripped))
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
        parts = parts_of(final, self.ref_bits)
        if parts > self.max_segments:
            return reject("content", f"content:segments:{parts}>{self.max_segments}"), None
        return None, rewritten

    def _append(self, text: str) -> str:
        sig = _sig_end(text)
        if sig and not _sig_start(text):
            cut = len(text) - len(sig) - 2
            return text[:cut].rstrip() + self.append_hint + text[cut:]
        return text + self.append_hint
