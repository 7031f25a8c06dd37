"""Delivery receipts: id normalisation and lenient parsing of the receipt text and TLVs.

Ids: see gatewayd.carrier.ids (normalise_id, id_candidates, receipt_candidates).

Receipt text. ``id:.. sub:.. dlvrd:.. submit date:.. done date:.. stat:.. err:.. text:..``
with any key case and order, dates YYMMDDhhmm or YYMMDDhhmmss (taken as UTC: SMPP gives
no zone), missing fields tolerated. The first occurrence of a key wins and a key seen
before is read as part of the previous value, so ``text:your id: 5`` cannot override
the id. TLVs receipted_message_id (0x001E) and message_state (0x0427) win over the text.

States. DELIVRD -> delivered; EXPIRED -> expired; UNDELIV, REJECTD, DELETED and UNKNOWN
-> undeliverable (UNKNOWN is a final state in SMPP 3.4: no other receipt will follow, and
``stat`` keeps the distinction for whoever needs it); ENROUTE, ACCEPTD and anything
unrecognised -> "" (not final: the message stays submitted until a final receipt or
queue.receipt_timeout_s).
"""

from __future__ import annotations

import calendar
import re
from typing import Final

from gatewayd.carrier.ids import normalise_id
from gatewayd.carrier.smpp import pdu as P
from gatewayd.model import Receipt

# message_state TLV values (SMPP 3.4 5.3.2.35) -> the receipt text's stat names.
MESSAGE_STATES: Final = {
    1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED",
    5: "UNDELIV", 6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD",
}
# Leniency: carriers spell stat differently (DELIVERED, UNDELIVERABLE, REJECTED...).
_STAT_PREFIXES: Final = (
    ("DELIV", "DELIVRD"), ("UNDEL", "UNDELIV"), ("EXPIR", "EXPIRED"), ("DELET", "DELETED"),
    ("REJEC", "REJECTD"), ("ACCEP", "ACCEPTD"), ("ENROU", "ENROUTE"), ("UNKNO", "UNKNOWN"),
    ("FAIL", "UNDELIV"),
)
STATE_OF_STAT: Final = {
    "DELIVRD": "delivered", "EXPIRED": "expired", "UNDELIV": "undeliverable",
    "REJECTD": "undeliverable", "DELETED": "undeliverable", "UNKNOWN": "undeliverable",
    "ACCEPTD": "", "ENROUTE": "",
}

_KEY_RE: Final = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:",
    re.IGNORECASE,
)


def canonical_stat(raw: str) -> str:
    s = raw.strip().upper()
    for prefix, name in _STAT_PREFIXES:
        if s.startswith(prefix):
            return name
    return s


# The receipt keys as they may be written (lower case) -> the field name parse_fields uses.
_KEY_OF_WORD: Final = {
    "id": "id", "sub": "sub", "dlvrd": "dlvrd", "stat": "stat", "err": "err", "text": "text",
    "submitdate": "submit_date", "submit_date": "submit_date",
    "donedate": "done_date", "done_date": "done_date",
}
_TWO_WORD_KEYS: Final = (("submit date", "submit_date"), ("done date", "done_date"))


def parse_fields(text: str) -> dict[str, str]:
    """Key -> value of a receipt text ("submit date" keys normalised to "submit_date").

    A key is one of the names above, at the start of the text or after whitespace, then
    optional whitespace and ":". ASCII texts (nearly all) are split at their colons,
    about three times faster than the regular expression, which reads the rest; both
    give the same fields for any ASCII text (tests/test_carrier_receipt_parse.py).
    """
    if not text.isascii():
        return _parse_fields_re(text)
    low = text.lower()  # ASCII: same length, so offsets in low are offsets in text
    pieces = low.split(":")
    out: dict[str, str] = {}
    last_key = ""
    last_start = 0
    base = 0  # offset of pieces[i] in text
    for i in range(len(pieces) - 1):  # every piece but the last ends at a colon
        piece = pieces[i]
        head = piece.rstrip()  # the key's end: \s* before the colon
        words = head.rsplit(None, 1)
        key = _KEY_OF_WORD.get(words[-1]) if words else None
        start = len(head) - len(words[-1]) if words else 0
        if key is None and words and words[-1] == "date":
            for spelled, name in _TWO_WORD_KEYS:
                if head.endswith(spelled):
                    start = len(head) - len(spelled)
                    if start == 0 or head[start - 1].isspace():
                        key = name
                    break
        # At a piece's start the key follows a colon, not whitespace (except at offset 0).
        if key is not None and (start or not i) and key not in out:
            if last_key:
                out[last_key] = text[last_start : base + start].strip()
            last_key, last_start = key, base + len(piece) + 1
            out[key] = ""
        base += len(piece) + 1
    if last_key:
        out[last_key] = text[last_start:].strip()
    return out


def _parse_fields_re(text: str) -> dict[str, str]:
    """parse_fields for any text: the regular expression (Unicode whitespace and case)."""
    out: dict[str, str] = {}
    last_key = ""
    last_start = 0
    for m in _KEY_RE.finditer(text):
        key = m.group(1).lower().replace(" ", "_")
        if key in ("submitdate", "donedate"):
            key = key[:-4] + "_date"
        if key in out or key == last_key:
            continue  # a key seen before belongs to the previous value (e.g. inside text)
        if last_key:
            out[last_key] = text[last_start : m.start()].strip()
        last_key, last_start = key, m.end()
        out[key] = ""
    if last_key:
        out[last_key] = text[last_start:].strip()
    return out


# Receipts of one minute share their dates: parse each distinct stamp once.
_DATE_CACHE: Final[dict[str, float]] = {}
_DATE_CACHE_MAX: Final = 4096


def parse_date(value: str) -> float:
    """YYMMDDhhmm or YYMMDDhhmmss (UTC) -> Unix time; 0.0 when missing or invalid."""
    t = _DATE_CACHE.get(value)
    if t is None:
        t = _parse_date(value)
        if len(value) <= 16:  # hostile values do not fill memory
            if len(_DATE_CACHE) >= _DATE_CACHE_MAX:
                _DATE_CACHE.clear()
            _DATE_CACHE[value] = t
    return t


def _parse_date(value: str) -> float:
    digits = value.strip()[:12]
    if len(digits) not in (10, 12) or not digits.isdigit():
        return 0.0
    try:
        year = 2000 + int(digits[0:2])
        month, day = int(digits[2:4]), int(digits[4:6])
        hour, minute = int(digits[6:8]), int(digits[8:10])
        second = int(digits[10:12]) if len(digits) == 12 else 0
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60
                and second < 61):
            return 0.0
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, OverflowError):
        return 0.0


# The standard layout (SMPP 3.4 Appendix B), single spaces, any key case: matched in one
# call. A text that matches gives the same fields as parse_fields (no key can start
# inside a \S* value, and every key is seen before text:, so what follows is text's);
# any other text goes through parse_fields.
_STANDARD: Final = re.compile(
    r"id:(\S*) sub:\S* dlvrd:\S* submit[ _]?date:(\S*) done[ _]?date:(\S*) stat:(\S*) "
    r"err:(\S*)(?: text:|\Z)",
    re.IGNORECASE,
)


def parse_receipt(
    carrier: str, text: str, tlvs: dict[int, bytes], received_at: float
) -> Receipt | None:
    """A Receipt from a deliver_sm's text and TLVs, or None when it carries no id."""
    m = _STANDARD.match(text)
    if m is not None:
        raw_id, submit_date, done_date, stat_text, err = m.groups()
    else:
        fields = parse_fields(text)
        raw_id = fields.get("id", "")
        submit_date = fields.get("submit_date", "")
        done_date = fields.get("done_date", "")
        stat_text = fields.get("stat", "").split(" ", 1)[0]
        err = fields.get("err", "").split(" ", 1)[0]
    if tlvs:
        raw_id = P.tlv_str(tlvs.get(P.TAG_RECEIPTED_MESSAGE_ID)) or raw_id
    words = raw_id.split(None, 1)
    smsc_id = normalise_id(words[0]) if words else ""
    if not smsc_id:
        return None
    stat = ""
    if tlvs:
        state_value = P.tlv_int(tlvs.get(P.TAG_MESSAGE_STATE))
        if state_value is not None:
            stat = MESSAGE_STATES.get(state_value, "")
        if not err:
            nec = tlvs.get(P.TAG_NETWORK_ERROR_CODE)
            if nec and len(nec) == 3:
                err = str(int.from_bytes(nec[1:], "big"))
    if not stat:
        stat = stat_text if stat_text in STATE_OF_STAT else canonical_stat(stat_text)
    return Receipt(
        carrier=carrier,
        smsc_id=smsc_id,
        stat=stat,
        state=STATE_OF_STAT.get(stat, ""),
        err=err,
        submit_date=parse_date(submit_date),
        done_date=parse_date(done_date),
        received_at=received_at,
    )
