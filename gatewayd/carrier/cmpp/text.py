"""CMPP message text: Msg_Fmt, splitting into UDH parts, decoding MO; numbers.

Outbound (``encode``):
* ASCII text that GSM-7 can carry -> Msg_Fmt 0 (ASCII octets; the ISMG packs them into
  septets for the air): one part up to 160 septets, else parts of 153 septets behind a
  6-octet UDH ``05 00 03 ref total seq`` (6 + 153 < 160, the specification's Msg_Length
  limit for Msg_Fmt 0). Extension characters ({ } [ ] ~ | ^ \\) count two septets, as the
  handset sees them, so the part count is exactly smstext.segments' (what policies count).
* anything else -> UCS-2 (Msg_Fmt 8): 70 UTF-16 units in one part, 67 a part behind the
  UDH; surrogate pairs are never split. Same counts as smstext for non-GSM text (all
  Chinese text). GSM-7 text with non-ASCII letters (é, £) goes as UCS-2 too: Msg_Fmt 0
  is ASCII, so such a text may need more parts over CMPP than smstext counts for SMPP.
* with ``encoding = "gbk"`` the UCS-2 parts are written in GBK (Msg_Fmt 15), cut at the
  same characters, so part counts do not change; a text GBK cannot hold goes as UCS-2.
Every part of a long message carries Pk_total / Pk_number and TP_udhi = 1.

Inbound (``decode``): by Msg_Fmt, leniently (undecodable octets become U+FFFD): 0 ASCII
(falling back to GB18030, a superset of GBK, for ISMGs that mislabel Chinese MO), 8
UCS-2, 15 GB18030, anything else Latin-1 (binary kept octet for octet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from gatewayd import smstext

FMT_ASCII: Final = 0
FMT_BINARY: Final = 4
FMT_UCS2: Final = 8
FMT_GBK: Final = 15

_GSM_EXT: Final = frozenset(smstext.GSM7_EXT)


class Encoded(NamedTuple):
    msg_fmt: int
    parts: list[bytes]  # Msg_Content of each SUBMIT, each with its UDH when udhi
    udhi: bool


def _chunks(text: str, per_part: int, wide: frozenset[str] | None) -> list[str]:
    """Cut text into chunks of at most per_part units; a character in ``wide`` (or, with
    wide None, outside the BMP) is two units and never split."""
    if (wide.isdisjoint(text) if wide is not None
            else len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text)):
        # Every character one unit (nearly all text): plain slices, no loop in Python.
        return [text[i : i + per_part] for i in range(0, len(text), per_part)] or [""]
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for ch in text:
        w = (2 if ch in wide else 1) if wide is not None else (2 if ord(ch) > 0xFFFF else 1)
        if size + w > per_part:
            chunks.append("".join(cur))
            cur, size = [], 0
        cur.append(ch)
        size += w
    if cur or not chunks:
        chunks.append("".join(cur))
    return chunks


def encode(text: str, ref: int | Callable[[], int], encoding: str = "ucs2") -> Encoded:
    """The Msg_Content of each part; ``ref`` is the 8-bit concatenation reference, or a
    function giving it (called only when the text needs more than one part)."""
    septets = smstext.gsm7_septets(text) if text.isascii() else None
    if septets is not None:
        if septets <= 160:
            return Encoded(FMT_ASCII, [text.encode("ascii")], False)
        fmt, codec, chunks = FMT_ASCII, "ascii", _chunks(text, 153, _GSM_EXT)
    else:
        fmt, codec = FMT_UCS2, "utf-16-be"
        if encoding == "gbk" and _gbk_can_hold(text):
            fmt, codec = FMT_GBK, "gbk"
        if smstext.ucs2_units(text) <= 70:
            return Encoded(fmt, [text.encode(codec, "surrogatepass")], False)
        chunks = _chunks(text, 67, None)
    total = len(chunks)
    if total > smstext.MAX_PARTS:
        raise ValueError(f"text needs {total} parts; at most {smstext.MAX_PARTS}")
    if not isinstance(ref, int):
        ref = ref()
    parts = [smstext.udh(ref, total, i, 8) + chunk.encode(codec, "surrogatepass")
             for i, chunk in enumerate(chunks, 1)]
    return Encoded(fmt, parts, True)


def _gbk_can_hold(text: str) -> bool:
    try:
        text.encode("gbk")
    except UnicodeEncodeError:
        return False
    return True


def decode(data: bytes, msg_fmt: int) -> str:
    if msg_fmt == FMT_ASCII:
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            return data.decode("gb18030", "replace")
    if msg_fmt == FMT_UCS2:
        return data.decode("utf-16-be", "replace")
    if msg_fmt == FMT_GBK:
        return data.decode("gb18030", "replace")
    return data.decode("latin-1")


def destination(number: str, national: bool) -> str:
    """Dest_terminal_Id for an E.164 number: digits only; +86 1xx... -> 1xx... if national."""
    digits = number.lstrip("+")
    if national and len(digits) == 13 and digits.startswith("861"):
        return digits[2:]
    return digits


def src_id(access_number: str, source: str) -> str:
    """Src_Id: the access number the carrier assigned, extended per message.

    ``source`` (SubmitRequest.source) empty: the access number; starting with the access
    number: taken whole (a full extended number); other digits: an extension appended
    to the access number (the ISMG shows 106900001234 + 88 as the sender). At most 21
    digits. Anything else raises ValueError (the message fails, not the bind).
    """
    if not source:
        return access_number
    if not source.isascii() or not source.isdigit():
        raise ValueError(f"Src_Id extension {source!r} is not digits")
    full = source if access_number and source.startswith(access_number) else access_number + source
    if len(full) > 21:
        raise ValueError(f"Src_Id {full} is longer than 21 digits")
    return full
