"""Text and number normalisation shared by the checks.

``for_matching`` is what the keyword automaton and the opt-out-hint test see, so that
the usual evasions do not pass: NFKC folds full-width and other compatibility forms
(``ＱＱ`` -> ``qq``, ``①`` -> ``1``), casefold removes case, and every character that is
not a letter or a digit (spaces, dots, dashes, underscores, zero-width characters
U+200B-U+200D and U+FEFF, emoji, other symbols and punctuation) is dropped, so that
``博 彩``, ``博.彩``, ``博\u200b彩`` and ``博🎲彩`` all read ``博彩``. Traditional
characters fold to simplified ones and look-alike letters to ASCII (gatewayd.policy.fold:
``賭博`` -> ``赌博``, Cyrillic ``wеіxin`` -> ``weixin``). Keyword terms are normalised the
same way when the lists are loaded.

Phone numbers are keyed in Redis by their digits only (E.164 without ``+``), so
``+8613800138000``, ``8613800138000`` and ``+86 138-0013-8000`` are one recipient.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from gatewayd.policy.fold import fold

# \W is "not a Unicode letter/digit/underscore"; the underscore is dropped explicitly.
_NOT_WORD: Final = re.compile(r"[\W_]+")
_SPACES: Final = re.compile(r"\s+")
# Trimmed from both ends of an MO reply: whitespace, punctuation, symbols, zero-width.
_EDGE: Final = re.compile(r"^[\W_]+|[\W_]+$")
_NON_DIGIT: Final = re.compile(r"\D+")


# ASCII that is not a letter or a digit: what _NOT_WORD removes from ASCII text.
_ASCII_DROP: Final = bytes(c for c in range(128) if not chr(c).isalnum())


def for_matching(text: str) -> str:
    """NFKC, casefold, then keep letters and digits only (see module docstring)."""
    if text.isascii():
        # NFKC is the identity on ASCII and casefold is lower(): bytes do the same in
        # C, ~8x faster than the regex (every verification code is a new text).
        return text.encode("ascii").lower().translate(None, _ASCII_DROP).decode("ascii")
    return _NOT_WORD.sub("", fold(unicodedata.normalize("NFKC", text).casefold()))


def reply_word(text: str) -> str:
    """Normalise a whole MO reply for the opt-out word test.

    NFKC (full-width ``ＴＤ`` -> ``TD``), casefold, fold (``退訂`` -> ``退订``), strip
    whitespace, punctuation and symbols from both ends (``td。`` -> ``td``, ``"STOP!"`` ->
    ``stop``) and collapse inner whitespace to one space. Inner words are kept, so
    ``TD is great`` stays a sentence (gatewayd.policy.replies decides what it means).
    """
    t = fold(unicodedata.normalize("NFKC", text).casefold())
    t = _EDGE.sub("", t)
    return _SPACES.sub(" ", t)


def number_key(number: str) -> str:
    """Digits of an E.164 number (no ``+``, no spaces); ``00`` international prefix dropped."""
    if number[1:].isdigit() and number.startswith("+"):
        return number[1:]  # the form intake leaves
    digits = _NON_DIGIT.sub("", number)
    if number.lstrip().startswith("00"):
        digits = digits[2:]
    return digits
