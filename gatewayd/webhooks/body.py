"""What an endpoint receives: one event as JSON (encoded once, whatever the number of
endpoints), a batch body made by joining them, or a Kannel ``dlr-url``-style URL."""

from __future__ import annotations

import time
from collections.abc import Iterable
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
