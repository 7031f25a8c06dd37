"""Pinyin spellings of Chinese keyword terms (per-list opt-in: ``pinyin = true``).

``赌博`` is also matched as ``dubo`` (so ``DU BO`` and ``du-bo`` in a text, which the
matching normaliser reads as ``dubo``). The reading is pypinyin's phrase-aware one
(``银行`` -> ``yinhang``, not ``yinxing``): evaders write the word as it is said, and
every extra reading would add collisions. A ``ü`` is spelled both ways people type it
(``lv`` and ``lu``). Non-Chinese parts of a term are kept as written (``加V`` ->
``jiav``). Computed once when the lists load; texts pay nothing extra.
"""

from __future__ import annotations

import re
from typing import Final

from gatewayd.policy.normalize import for_matching

_HAN: Final = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff]+)")


def variants(term: str, min_letters: int) -> tuple[str, ...]:
    """Normalised pinyin spellings of ``term`` (empty: no Chinese in it, or too short)."""
    parts = _HAN.split(term)
    if len(parts) == 1:
        return ()
    # Imported here: pypinyin loads its dictionaries at import (~0.3 s), and only a
    # policy with a pinyin list needs them.
    from pypinyin import Style, lazy_pinyin

    plain: list[str] = []  # "lv" spelling
    alt: list[str] = []  # "lu" spelling
    for i, part in enumerate(parts):
        if i % 2:  # a run of Chinese characters (split's captured groups)
            syllables = lazy_pinyin(part, style=Style.NORMAL)
            plain += syllables
            alt += [s.replace("v", "u") for s in syllables]
        else:
            plain.append(part)
            alt.append(part)
    out: list[str] = []
    for spelled in ("".join(plain), "".join(alt)):
        n = for_matching(spelled)
        if sum(c.isalpha() for c in n) >= min_letters and n not in out:
            out.append(n)
    return tuple(out)
