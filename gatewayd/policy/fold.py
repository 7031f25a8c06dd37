"""Character folding for matching: traditional -> simplified Chinese, look-alike letters -> ASCII.

Two evasions that NFKC and casefold do not undo:

- **Traditional characters** (``賭博`` for ``赌博``, ``代開發票`` for ``代开发票``). The map is
  OpenCC's own data (the ``opencc`` package, the C++ library's wheel: ``t2s`` plus the
  Taiwan and Hong Kong variant tables), taken character by character: a character
  OpenCC turns into a different single character maps to it. Character-level (not
  OpenCC's phrase conversion) because terms and texts are folded by the same table, so
  a term matches whatever a phrase table would have chosen, and a ``str.translate`` is
  the only per-message cost.
- **Look-alike letters** (``wеіxin`` with Cyrillic ``е`` and ``і``). Unicode's confusables
  data (UTS #39, as shipped by ``confusable-homoglyphs``): a non-ASCII letter or digit
  that Unicode lists as confusable with an ASCII letter or digit maps to it (letters
  preferred). Only letters and digits are mapped (symbols are dropped by the matching
  normaliser anyway, and ``博|彩`` must not become ``博l彩``), and never a CJK, kana,
  hangul or bopomofo character, so Chinese text is untouched by this half. Look-alikes
  outside the Basic Multilingual Plane are left out: the mathematical letters among
  them NFKC already folds, the rest are historic scripts (Old Italic, Deseret, Lycian)
  that phone fonts do not draw, and a single one in the class made the scan below ~40x
  slower for every text.

ASCII is never changed (both maps hold non-ASCII characters only), so ASCII texts keep
their fast path. Texts without any foldable character (most simplified-Chinese texts)
cost one regular-expression scan (``needs_fold``): the translate runs only when one is
there. The tables are built once per process (~100 ms), on first use.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import ClassVar, Final

import opencc
from confusable_homoglyphs import categories, confusables

# CJK Unified Ideographs, Extension A, compatibility ideographs (NFKC folds most of the
# latter first; the rest OpenCC knows).
_CJK_RANGES: Final = ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00))
_OPENCC_CONFIGS: Final = ("t2s", "tw2s", "hk2s")  # first wins
_NOT_LATIN_LOOKALIKE: Final = frozenset(
    {"CJK", "HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"})


def _traditional() -> dict[str, str]:
    chars = [chr(c) for lo, hi in _CJK_RANGES for c in range(lo, hi)]
    # One call a table: a newline separates the characters, so no phrase spans two.
    text = "\n".join(chars)
    out: dict[str, str] = {}
    for config in _OPENCC_CONFIGS:
        converted = opencc.OpenCC(config).convert(text)
        if converted == text:  # pragma: no cover - an empty table
            continue
        lines = converted.split("\n")
        if len(lines) != len(chars):  # pragma: no cover - a data change we must see
            raise RuntimeError(f"opencc {config}: unexpected output length")
        out.update((src, dst) for src, dst in zip(chars, lines, strict=True)
                   if dst != src and len(dst) == 1 and src not in out)
    return out


def _confusable() -> dict[str, str]:
    out: dict[str, str] = {}
    for ch, glyphs in confusables.confusables_data.items():
        if len(ch) != 1 or ch.isascii() or ord(ch) > 0xFFFF:
            continue  # astral: see the module docstring
        # Cheapest tests first (this runs at start-up): categories.alias scans a table.
        ascii_ = [g["c"] for g in glyphs
                  if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()]
        if not ascii_ or unicodedata.category(ch)[0] not in "LN":
            continue
        if unicodedata.normalize("NFKC", ch).isascii():
            continue  # NFKC already folds it (full-width and mathematical letters)
        if categories.alias(ch) in _NOT_LATIN_LOOKALIKE:
            continue
        letters = [c for c in ascii_ if c.isalpha()] or ascii_
        out[ch] = letters[0].lower()
    # The normaliser casefolds first: Cyrillic "Т" (confusable with "T") arrives as "т",
    # which Unicode does not list; its folded form must map as its capital does.
    for ch, to in list(out.items()):
        low = ch.casefold()
        if len(low) == 1 and not low.isascii() and low not in out:
            out[low] = to
    return out


def _build() -> tuple[dict[int, str], re.Pattern[str], int, int]:
    trad = _traditional()
    look = _confusable()
    merged = {**look, **trad}
    # The keys as the normaliser sees them: after NFKC and casefold.
    table = {ord(k): v for k, v in merged.items()}
    pattern = re.compile("[" + "".join(re.escape(k) for k in sorted(merged)) + "]")
    return table, pattern, len(trad), len(look)


class _Tables:
    """Built on first use (not at import: every CLI command imports the policy room)."""

    table: ClassVar[dict[int, str]] = {}
    search: ClassVar[Callable[[str], re.Match[str] | None] | None] = None
    traditional: ClassVar[int] = 0
    confusable: ClassVar[int] = 0


def load() -> type[_Tables]:
    """The folding tables (built once)."""
    if _Tables.search is None:
        table, pattern, _Tables.traditional, _Tables.confusable = _build()
        _Tables.table = table
        _Tables.search = pattern.search
    return _Tables


def fold(text: str) -> str:
    """Traditional -> simplified and look-alike letters -> ASCII (text already NFKC'd
    and casefolded); the text itself when nothing folds."""
    search = _Tables.search
    if search is None:
        search = load().search
        assert search is not None
    if search(text) is None:
        return text
    return text.translate(_Tables.table)
