"""What an endpoint receives: one event as JSON (encoded once, whatever the number of
endpoints), a batch body made by joining them, or a Kannel ``dlr-url``-style URL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any, Final
from urllib.parse import quote, urlsplit

import msgspec

from gatewayd.model import FINAL_STATES

# An event's JSON: the encoder's own method (no Python call around it: once an event).
encode: Final = msgspec.json.Encoder().encode


def event_of(stream: str, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The JSON object of one stream entry. ``event_id`` ("e<entry id>" for state
    changes, "m<entry id>" for MO) is the same every time the event is sent: dedupe on it.
    The fields as they are, "id" renamed "message_id", times and counts made numbers."""
    return finish_event(stream, new_event(stream, entry_id, fields.items()))


def new_event(stream: str, entry_id: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """An entry's event with its fields as read (``finish_event`` makes it what is sent):
    made straight from the entry's (field, value) pairs, one dict an event. The reader
    inlines this (it runs for every event); this is its reference."""
    out: dict[str, Any] = dict(pairs)
    out["event_id"] = ("m" if stream == "m" else "e") + entry_id
    out["kind"] = "mo" if stream == "m" else out.get("state", "")
    return out


def finish_event(stream: str, out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (from new_event) made what an endpoint receives, in place. Written for
    speed (it runs for every event sent)."""
    if stream == "m":
        out.pop("from_enc", None)
        parts = out.get("parts")
        if parts and parts.isdigit():
            out["parts"] = int(parts)
    else:
        mid = out.pop("id", "")
        if mid:
            out["message_id"] = mid
        out.pop("callback", None)  # where it goes, not what it says
        seg = out.get("segments")
        if seg and seg.isdigit():
            out["segments"] = int(seg)
        if "until" in out:
            until = out["until"]
            if until:
                out["until"] = _number(until)
    at = out.get("at")
    if at:
        # Inline, not _number(): one call fewer on every event.
        try:
            out["at"] = float(at)
        except ValueError:
            pass
    return out


class Shape:
    """How an entry of one shape (its stream and field names, in order) becomes its JSON
    without a dict: the JSON's literal pieces with a gap for each value, made once a
    shape (entries of a kind share a few). ``args`` takes the gaps' values from the
    entry's field list, ``route`` (tenant, kind, message id, callback URL); ``floats``
    / ``ints``: the values made numbers first, as finish_event does. ``buf`` is the
    pieces with the gaps between them, filled and joined for each entry (one slice
    assignment and one join: a %-template took 3x as long)."""

    __slots__ = ("args", "buf", "floats", "ints", "need_id", "route")

    def __init__(self, pieces: list[bytes], args: Callable[[list[Any]], Any],
                 route: Callable[[list[Any]], Any], floats: tuple[int, ...],
                 ints: tuple[int, ...], need_id: int) -> None:
        self.buf: list[bytes] = [b""] * (2 * len(pieces) - 1)
        self.buf[0::2] = pieces
        self.args, self.route = args, route
        self.floats, self.ints, self.need_id = floats, ints, need_id


_OURS: Final = frozenset({"event_id", "kind"})


def shape_of(stream: str, names: tuple[bytes, ...]) -> Shape | None:
    """The Shape of entries with these field names (events: ``stream`` "e", MO: "m"), or
    None when they go through event_of (a name twice, or one of ours, or not UTF-8, or
    holding a NUL byte).
    Indices are into the entry's field list with its entry id, b"" and b"mo" appended."""
    if any(b"\0" in n for n in names):
        return None  # event_of's way, as always (no JSON name made of a NUL here)
    try:
        keys = [n.decode() for n in names]
    except UnicodeDecodeError:
        return None
    if len(set(keys)) != len(keys) or _OURS & set(keys) or (
            stream != "m" and "message_id" in keys):
        return None
    n = 2 * len(keys)
    rid, empty, mo_kind = n, n + 1, n + 2
    mo = stream == "m"
    pieces: list[bytes] = []
    lit = b"{"  # the literal JSON up to the next gap
    args: list[int] = []
    floats: list[int] = []
    ints: list[int] = []
    where = {k: 2 * i + 1 for i, k in enumerate(keys)}
    for k, i in where.items():
        if (mo and k == "from_enc") or (not mo and k in ("id", "callback")):
            continue  # left out of what is sent (id: message_id, last)
        quote = b'"'
        if k == "at" or (not mo and k == "until"):
            quote = b""
            floats.append(i)
        elif k == ("parts" if mo else "segments"):
            quote = b""
            ints.append(i)
        pieces.append(lit + (b"," if len(lit) > 1 or pieces else b"") + encode(k) + b":"
                      + quote)
        args.append(i)
        lit = quote
    pieces.append(lit + (b"," if pieces else b"") + b'"event_id":"' + (b"m" if mo else b"e"))
    args.append(rid)
    if mo:
        lit = b'","kind":"mo"'
    else:
        pieces.append(b'","kind":"')
        args.append(where.get("state", empty))
        lit = b'"'
        if "id" in where:
            pieces.append(b'","message_id":"')
            args.append(where["id"])
    pieces.append(lit + b"}")
    get = itemgetter(*args)
    route = itemgetter(where.get("tenant", empty),
                       mo_kind if mo else where.get("state", empty),
                       empty if mo else where.get("id", empty),
                       empty if mo else where.get("callback", empty))
    return Shape(pieces, get if len(args) > 1 else lambda f: (get(f),), route,
                 tuple(floats), tuple(ints), -1 if mo else where.get("id", -1))


# The bytes a value may hold to go into the JSON as it is: printable ASCII but the two
# that JSON escapes. Anything else (to escape, or not ASCII: valid UTF-8 would go as it
# is, but only event_of's decoding checks that) sends the entry to event_of.
_PLAIN: Final = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
# Each byte that is not plain made a '"' (itself one): ready() looks for one.
_TO_QUOTE: Final = bytes(c if c in _PLAIN else 0x22 for c in range(256))
# A number as event_of sends it: float() then msgspec's encoding. msgspec's own parse
# reads the same float where both accept the text (a JSON number with a fraction, or a
# short integer: "-0" would not be -0.0); anything else goes to event_of.
_as_float: Final = msgspec.json.Decoder(float).decode


def ready(shape: Shape, flat: list[Any]) -> bytes | None:
    """The JSON of an entry by its Shape (``flat``: its field list as read, bytes, with
    its entry id, b"" and b"mo" appended: what the shape's getters take besides the
    values), byte for byte what event_of and ``encode`` make of it; None where that is
    not certain (a value to escape or not ASCII, a time or count not in the form the
    daemon writes): then event_of makes it (of ``flat`` without the three). Its numbers
    are put in ``flat`` as they are sent (event_of reads them back the same:
    float(encode(x)) is x). Only the values that go into the JSON are checked (joined
    once, the names were checked by shape_of): a field it leaves out (``callback``, an
    MO's ``from_enc``) is not what is sent. Written for speed: it runs for every event."""
    if shape.need_id >= 0 and not flat[shape.need_id]:
        return None  # an empty "id": no message_id (event_of's way)
    for i in shape.ints:
        v = flat[i]
        if not v.isdigit():  # b"", not digits: a string there (event_of's way)
            return None
        if v[0] == 48 and len(v) > 1:  # leading zeros: int() drops them
            flat[i] = b"%d" % int(v)
    for i in shape.floats:
        v = flat[i]
        # find(), not `in`: bytes' `in` tries the operand as an int first and raises
        # and clears a TypeError inside (~1,600 instructions an event).
        if v.find(b".") < 0 and not (v.isdigit() and len(v) <= 15):
            return None
        try:
            flat[i] = encode(_as_float(v))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
    values = shape.args(flat)
    # Any byte that is not plain made a '"' and looked for (a table, no deletions: no
    # 256-entry table built a call, and the values returned as they are when plain).
    if b"".join(values).translate(_TO_QUOTE).find(b'"') >= 0:
        return None
    buf = shape.buf
    buf[1::2] = values
    return b"".join(buf)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def batch_body(events: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(events) + b"]}"


# Kannel's DLR values (%d): what a Kannel user's dlr-url handler already understands.
KANNEL_DLR: Final = {"delivered": 1, "undeliverable": 2, "expired": 2, "queued": 4,
                     "deferred": 4, "submitted": 8, "rejected": 16, "failed": 16}


def kannel_value(event: dict[str, Any], letter: str) -> str:
    """The text of one Kannel escape (%<letter>) for ``event``, "" when it has none."""
    kind = event.get("kind", "")
    at = event.get("at", 0.0)
    if letter == "d":
        return str(KANNEL_DLR.get(kind, 0)) if kind in KANNEL_DLR else ""
    if letter == "i":  # Kannel: the smsc-id the message went through
        return str(event.get("carrier", ""))
    if letter == "I":
        return str(event.get("message_id", ""))
    if letter == "F":  # the carrier's (SMSC's) message id
        return str(event.get("carrier_id", ""))
    if letter in "pq":  # DLR: the handset's number (Kannel swaps sender and receiver)
        return str(event.get("from", "") if kind == "mo" else event.get("to", ""))
    if letter in "PQ":
        return str(event.get("to", "") if kind == "mo" else event.get("from", ""))
    if letter == "A":  # the DLR text: our state, and the reason or error when there is one
        extra = event.get("err") or event.get("reason") or ""
        return f"{kind}:{extra}" if extra else str(kind)
    if letter == "T":
        return str(int(float(at))) if at else ""
    if letter == "t":
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(at))) if at else ""
    if letter in "ab":
        return str(event.get("text", ""))
    if letter == "k":  # the first word (Kannel's keyword)
        words = str(event.get("text", "")).split()
        return words[0] if words else ""
    if letter == "n":
        return str(event.get("tenant", ""))
    if letter == "%":
        return "%"
    return "%" + letter  # not an escape Kannel knows here: left as written


def kannel_url(template: str, event: dict[str, Any]) -> str:
    """``template`` with each %<letter> replaced by its URL-encoded value."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "%" and i + 1 < n:
            v = kannel_value(event, template[i + 1])
            out.append(v if template[i + 1] == "%" or v.startswith("%")
                       else quote(v, safe=""))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def kannel_request(template: str, event: dict[str, Any]) -> tuple[str, bytes]:
    """The URL of a Kannel-style request and what its signature covers: the request
    target as sent (path and query, e.g. ``/dlr?d=1&id=...``)."""
    url = kannel_url(template, event)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return url, target.encode()


def is_final(kind: str) -> bool:
    return kind in FINAL_STATES
