"""SMS text arithmetic: which alphabet a text needs, how many parts it takes, the parts.

Shared by the policy layer (segment limits) and the carrier layer (encoding and
splitting), so that what a policy counted is exactly what the carrier sends.

GSM 03.38: 160 septets in one SMS, 153 a part behind an 8-bit-reference UDH (6 octets),
152 behind a 16-bit one (7 octets); extension-table characters take two septets and are
never split from their escape. UCS-2 (UTF-16BE): 70 units in one SMS, 67 / 66 a part;
characters outside the BMP take two units and are never split between parts.
SMPP carries GSM-7 unpacked (one septet an octet) with data_coding 0.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

Encoding = Literal["gsm7", "ucs2"]

GSM7_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXT: Final = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
    "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}
_BASIC_CODE: Final = {ch: i for i, ch in enumerate(GSM7_BASIC) if ch != "\x1b"}
_DECODE_BASIC: Final = dict(enumerate(GSM7_BASIC))
_DECODE_EXT: Final = {v: k for k, v in GSM7_EXT.items()}

SINGLE: Final = {"gsm7": 160, "ucs2": 70}
PER_PART: Final = {("gsm7", 8): 153, ("gsm7", 16): 152, ("ucs2", 8): 67, ("ucs2", 16): 66}
MAX_PARTS: Final = 255


class Segmentation(NamedTuple):
    encoding: Encoding
    units: int  # septets (gsm7) or UTF-16 code units (ucs2)
    parts: int


# Per-character loops were the top cost of a message (bench/e2e profile): the set test,
# the extension count and encode below run in C.
_GSM7_ALL: Final = frozenset(_BASIC_CODE) | frozenset(GSM7_EXT)
_EXT_CHARS: Final = tuple(GSM7_EXT)
_EXT_SET: Final = frozenset(GSM7_EXT)
# One table for str.translate: a character -> its octet(s) as a 1-2 character str.
_ENCODE_TABLE: Final = {
    **{ord(ch): chr(code) for ch, code in _BASIC_CODE.items()},
    **{ord(ch): "\x1b" + chr(code) for ch, code in GSM7_EXT.items()},
}


# One regex scan a text instead of a set test a character (issuperset hashed each of
# them: ~0.9 us for a 75-character OTP text, the regex ~0.4): a character not in GSM-7,
# and the extension characters (two septets each).
# The first scan stops at a character outside the basic table, where the others start.
_NOT_BASIC: Final = re.compile("[^" + re.escape("".join(sorted(_BASIC_CODE))) + "]")
_NOT_GSM7: Final = re.compile("[^" + re.escape("".join(sorted(_GSM7_ALL))) + "]")
_EXT_RE: Final = re.compile("[" + re.escape("".join(_EXT_CHARS)) + "]")
# Characters outside the BMP: two UTF-16 units (a surrogate pair) each.
_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")


def gsm7_septets(text: str) -> int | None:
    """Septets needed for text in GSM-7, or None when a character is not in GSM-7."""
    first = _NOT_BASIC.search(text)
    if first is None:
        return len(text)
    start = first.start()
    if _NOT_GSM7.search(text, start) is not None:
        return None
    return len(text) + len(_EXT_RE.findall(text, start))


def ucs2_units(text: str) -> int:
    # (a regex scan, not an encode to UTF-16 and its error handler's look-up)
    if _ASTRAL.search(text) is None:
        return len(text)
    return len(text) + len(_ASTRAL.findall(text))


# A message's text is segmented at intake, by content rules and again when encoded:
# remembered per text (a str caches its hash, so a hit costs one dict look-up).
_SEGMENTS: dict[tuple[str, int], Segmentation] = {}
_SEGMENTS_MAX: Final = 4096


def segments(text: str, ref_bits: int = 8) -> Segmentation:
    """How text would be sent: alphabet, size in units, number of parts."""
    key = (text, ref_bits)
    seg = _SEGMENTS.get(key)
    if seg is None:
        if len(_SEGMENTS) >= _SEGMENTS_MAX:
            _SEGMENTS.clear()
        seg = _SEGMENTS[key] = _segments(text, ref_bits)
    return seg


def _segments(text: str, ref_bits: int) -> Segmentation:
    septets = gsm7_septets(text)
    if septets is not None:
        enc: Encoding = "gsm7"
        units = septets
    else:
        enc = "ucs2"
        units = ucs2_units(text)
    if units <= SINGLE[enc]:
        return Segmentation(enc, units, 1)
    per = PER_PART[(enc, ref_bits)]
    # Count by actual split so that an escape pair or surrogate pair pushed to the
    # next part is accounted for exactly as the carrier will send it.
    return Segmentation(enc, units, len(_chunks(text, enc, per)))


def encode(text: str, encoding: Encoding) -> bytes:
    """Encode for short_message: GSM-7 unpacked (one octet a septet) or UTF-16BE."""
    if encoding == "ucs2":
        return text.encode("utf-16-be")
    if not _GSM7_ALL.issuperset(text):
        ch = next(c for c in text if c not in _GSM7_ALL)
        raise KeyError(ch)  # caller chose gsm7 for a non-GSM text
    return text.translate(_ENCODE_TABLE).encode("latin-1")


def decode(data: bytes, encoding: Encoding) -> str:
    """Inverse of encode (lenient: unknown GSM codes become '?')."""
    if encoding == "ucs2":
        return data.decode("utf-16-be", errors="replace")
    out: list[str] = []
    escaped = False
    for b in data:
        if escaped:
            out.append(_DECODE_EXT.get(b, "?"))
            escaped = False
        elif b == 0x1B:
            escaped = True
        else:
            out.append(_DECODE_BASIC.get(b & 0x7F, "?"))
    return "".join(out)


def _chunks(text: str, encoding: Encoding, per_part: int) -> list[str]:
    if (_EXT_SET.isdisjoint(text) if encoding == "gsm7"
            else _ASTRAL.search(text) is None):
        # Every character one unit: plain slices (the loop below was ~7 % of the
        # daemon's CPU with 5 % long messages in bench/e2e).
        return [text[i : i + per_part] for i in range(0, len(text), per_part)] or [""]
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for ch in text:
        if encoding == "gsm7":
            w = 2 if ch in GSM7_EXT else 1
        else:
            w = 2 if ord(ch) > 0xFFFF else 1
        if size + w > per_part:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += w
    if cur or not chunks:
        chunks.append("".join(cur))
    return chunks


def udh(ref: int, total: int, seq: int, ref_bits: int = 8) -> bytes:
    """Concatenation user-data header (IEI 00 for 8-bit, 08 for 16-bit references)."""
    if ref_bits == 16:
        return bytes((6, 0x08, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))
    return bytes((5, 0x00, 3, ref & 0xFF, total, seq))


class Encoded(NamedTuple):
    encoding: Encoding
    data_coding: int  # 0 (SMSC default, GSM-7) or 8 (UCS-2)
    parts: list[bytes]  # short_message octets, each with its UDH when len(parts) > 1
    udhi: bool  # esm_class 0x40 must be set


def encode_parts(text: str, *, ref: int, ref_bits: int = 8) -> Encoded:
    """Encode text and split it into UDH-concatenated parts when it does not fit one SMS.

    Raises ValueError beyond 255 parts (the UDH's limit).
    """
    seg = segments(text, ref_bits)
    dc = 8 if seg.encoding == "ucs2" else 0
    if seg.parts == 1:
        return Encoded(seg.encoding, dc, [encode(text, seg.encoding)], False)
    chunks = _chunks(text, seg.encoding, PER_PART[(seg.encoding, ref_bits)])
    total = len(chunks)
    if total > MAX_PARTS:
        raise ValueError(f"text needs {total} parts; at most {MAX_PARTS} can be concatenated")
    parts = [
        udh(ref, total, i + 1, ref_bits) + encode(chunk, seg.encoding)
        for i, chunk in enumerate(chunks)
    ]
    return Encoded(seg.encoding, dc, parts, True)


def parse_udh(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(reference, total, seq, payload) of a concatenated part, or None if no such IE.

    Accepts 8-bit (IEI 00) and 16-bit (IEI 08) references anywhere in the UDH.
    """
    if not data:
        return None
    udhl = data[0]
    if udhl + 1 > len(data):
        return None
    i = 1
    end = 1 + udhl
    while i + 1 < end:
        iei, ielen = data[i], data[i + 1]
        body = data[i + 2 : i + 2 + ielen]
        if iei == 0x00 and ielen == 3 and len(body) == 3:
            return body[0], body[1], body[2], data[end:]
        if iei == 0x08 and ielen == 4 and len(body) == 4:
            return (body[0] << 8) | body[1], body[2], body[3], data[end:]
        i += 2 + ielen
    return None
