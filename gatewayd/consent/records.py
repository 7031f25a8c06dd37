"""The consent log: one stream entry per opt-out or opt-in, outside the hot-path keys.

Stream ``Keys.optout_audit`` (``<prefix>optout:audit``), one entry per change:

| field | value |
| --- | --- |
| ``action`` | ``out`` (opted out) or ``in`` (opted back in) |
| ``number`` | the number's digits (privacy mode: its keyed token, gatewayd.store.privacy) |
| ``number_enc`` | privacy mode only: the number, encrypted |
| ``scope`` | ``*`` or the signature/sender the change is about |
| ``category`` | ``""`` (every category plain opt-outs cover) or the one category |
| ``source`` | ``mo:<carrier>``, ``api``, ``cli``, ``import`` |
| ``at`` | when it happened (Unix s) |
| ``text`` | the MO reply that did it (MO only) |
| ``note`` | free text: the import's file name, an API caller's note |

The entry id is Redis's clock when it was recorded; exports select time ranges by it.
Each number's record ids are also listed in an index, ``Keys.consent_index(bucket)``
(65,536 HASHes: number -> its ids, space-separated, the newest ~1,000; a bucket expires
when idle for the retention), so one number's records are found without scanning the
log. Entries are kept ``retention_s`` (policy ``[optout]
consent_retention_days``, default 730 days = 2 years): every append trims entries older
than that (``XADD MINID``), so nothing grows for ever and nothing younger is lost. The
opt-out check never reads this stream: it reads the small per-number HASH
(gatewayd.policy.optout).
"""

from __future__ import annotations

import csv
import io
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from gatewayd.store.connection import is_cluster, load_script, script_source
from gatewayd.store.keys import Keys

DEFAULT_RETENTION_S: Final = 730 * 86400.0
EXPORT_FIELDS: Final = ("id", "at", "action", "number", "scope", "category", "source",
                        "text", "note")
_CHUNK: Final = 5000  # entries an XRANGE call while exporting
# A number's index keeps its newest ~1,000 record ids (an id is at most ~25 bytes).
INDEX_MAX: Final = 24_000
_APPEND: Final = script_source("consent_append")
_INDEX: Final = script_source("consent_index")
_CHANGE: Final = script_source("consent_change")
# Entries one consent_find.lua call scans: ~7 us each inside Redis, so a call holds
# Redis ~7 ms (a code's queue read waits at most that long behind it).
_FIND_CHUNK: Final = 1000


@dataclass(frozen=True, slots=True)
class Change:
    action: Literal["out", "in"]
    digits: str  # E.164 digits, no "+"
    scope: str = "*"
    category: str = ""
    source: str = "api"
    at: float = 0.0
    text: str = ""
    note: str = ""


def entry(keys: Keys, change: Change) -> dict[str, str]:
    """The stream fields of one change (the number protected in privacy mode)."""
    fields = {"action": change.action, **keys.number_fields(change.digits),
              "scope": change.scope, "category": change.category, "source": change.source,
              "at": repr(change.at)}
    if change.text:
        fields["text"] = change.text
    if change.note:
        fields["note"] = change.note
    return fields


def min_id(retention_s: float, now: float | None = None) -> str:
    """The oldest stream id kept: ``now - retention`` in Redis's millisecond ids."""
    return str(int(((time.time() if now is None else now) - retention_s) * 1000))


def bucket_of(stored_number: str) -> str:
    """The index bucket of a number as records store it (digits, or its token)."""
    return f"{zlib.crc32(stored_number.encode()) & 0xFFFF:04x}"


def _args(keys: Keys, change: Change, retention_s: float) -> tuple[str, list[str]]:
    fields = entry(keys, change)
    args = [min_id(retention_s), str(int(retention_s) + 1), str(INDEX_MAX), fields["number"]]
    for k, v in fields.items():
        args += (k, v)
    return keys.consent_index(bucket_of(fields["number"])), args


async def write(redis: Any, keys: Keys, changes: list[Change], retention_s: float,
                before: Callable[[Any], None] | None = None,
                replies: list[Any] | None = None) -> None:
    """Append ``changes`` (each with its index entry) after the commands ``before``
    queues (the opt-out HASH's change), all in ONE transaction on a single Redis.

    On Redis Cluster the keys span slots and no transaction can: the commands go as one
    pipeline (the HASH change, then the records), and the index entries, which need
    the records' ids, as a second one.
    """
    r = cast(Any, redis)
    if not is_cluster(r):
        async with r.pipeline(transaction=True) as pipe:
            if before is not None:
                before(pipe)
            for c in changes:
                bucket, args = _args(keys, c, retention_s)
                pipe.execute_command("EVAL", _APPEND, 2, keys.optout_audit, bucket, *args)
            got = await pipe.execute()
        if replies is not None:
            replies.extend(got)
        return
    async with r.pipeline(transaction=False) as pipe:
        if before is not None:
            before(pipe)
        for c in changes:
            # Exact MINID: entries past the retention go at once (opt-outs are rare: the
            # trim costs nothing worth an approximation).
            pipe.xadd(keys.optout_audit, entry(keys, c), minid=min_id(retention_s),
                      approximate=False)
        got = await pipe.execute()
    if replies is not None:
        replies.extend(got)
    ids = got[len(got) - len(changes):]
    async with r.pipeline(transaction=False) as pipe:
        for c, sid in zip(changes, ids, strict=True):
            index_entry(pipe, keys, c.digits, _text(sid), retention_s)
        await pipe.execute()


async def write_change(redis: Any, keys: Keys, changes: list[Change], retention_s: float,
                       *, fields: list[str], at: float) -> None:
    """One number's opt-out HASH change with its records (``changes``, all of that
    number): set ``fields`` to ``at`` when the changes are opt-outs, delete them when
    opt-ins. On a single Redis one script writes the records first and the HASH last
    (lua/consent_change.lua), so the HASH never changes without its records; on a
    cluster (different slots) the HASH change is pipelined before the records
    (``write``)."""
    digits, action = changes[0].digits, changes[0].action
    hash_key = keys.optout(digits)
    r = cast(Any, redis)
    if is_cluster(r):
        def change_hash(pipe: Any) -> None:
            if action == "out":
                for f in fields:
                    pipe.hset(hash_key, f, repr(at))
            else:
                pipe.hdel(hash_key, *fields)
        await write(r, keys, changes, retention_s, before=change_hash)
        return
    if any(c.digits != digits or c.action != action for c in changes):
        raise ValueError("write_change: one number and one action a call")
    bucket, first = _args(keys, changes[0], retention_s)
    # minid, TTL, max, number; the HASH change; then each record's field/value pairs.
    args = [*first[:4], action, repr(at), str(len(fields)), *fields]
    for c in changes:
        pairs = _args(keys, c, retention_s)[1][4:]
        args += [str(len(pairs)), *pairs]
    await r.eval(_CHANGE, 3, keys.optout_audit, bucket, hash_key, *args)


def index_entry(pipe: Any, keys: Keys, digits: str, sid: str, retention_s: float) -> None:
    """Queue the index entry of one record (cluster: lua/consent_index.lua; a single
    Redis does the same inside consent_append.lua)."""
    stored = keys.number_fields(digits)["number"]
    key = keys.consent_index(bucket_of(stored))
    pipe.execute_command("EVAL", _INDEX, 1, key, stored, sid, str(int(retention_s) + 1),
                         str(INDEX_MAX))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _stream_id(t: float, end: bool) -> str:
    ms = int(t * 1000)
    return f"{ms}-{18446744073709551615 if end else 0}"


async def read(redis: Any, keys: Keys, *, number: str = "", since: float = 0.0,
               until: float = 0.0) -> AsyncIterator[dict[str, str]]:
    """The consent records, oldest first, as export rows (``EXPORT_FIELDS``).

    ``number``: digits, only that number's records (through its index: one LRANGE and
    a pipeline of XRANGEs, whatever the log's size); ``since``/``until``: Unix seconds,
    the time recorded (0 = open).
    """
    want = keys.number_fields(number)["number"] if number else ""
    start = _stream_id(since, False) if since else "-"
    stop = _stream_id(until, True) if until else "+"
    r = cast(Any, redis)
    if number:
        index = await r.hget(keys.consent_index(bucket_of(want)), want)
        ids = _text(index).split() if index else []
        if ids:
            lo = start if start != "-" else "0-0"
            hi = stop if stop != "+" else "18446744073709551615-18446744073709551615"
            ids = [x for x in ids if _id_key(lo) <= _id_key(x) <= _id_key(hi)]
            async with r.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.xrange(keys.optout_audit, min=sid, max=sid)
                found = await pipe.execute()
            for rows in found:
                for got, raw in rows:  # none: trimmed (older than the retention)
                    yield row(keys, _text(got), {_text(k): _text(v) for k, v in raw.items()})
            return
    if want and not is_cluster(r):
        # No index (records written before there was one): scanned inside Redis,
        # _FIND_CHUNK entries a call.
        find = load_script(r, "consent_find")
        while True:
            reply = await find(keys=[keys.optout_audit], args=[start, stop, _FIND_CHUNK, want])
            for i in range(1, len(reply), 2):
                flat = [_text(x) for x in reply[i + 1]]
                yield row(keys, _text(reply[i]), dict(zip(flat[::2], flat[1::2], strict=True)))
            last = _text(reply[0])
            if not last:
                return
            start = _after(last)
    while True:
        rows = await r.xrange(keys.optout_audit, min=start, max=stop, count=_CHUNK)
        if not rows:
            return
        for sid, raw in rows:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            if want and fields.get("number") != want:
                continue
            yield row(keys, _text(sid), fields)
        if len(rows) < _CHUNK:
            return
        start = _after(_text(rows[-1][0]))


def _id_key(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _after(sid: str) -> str:
    ms, seq = sid.split("-")
    return f"{ms}-{int(seq) + 1}"


def row(keys: Keys, sid: str, fields: dict[str, str]) -> dict[str, str]:
    out = {"id": sid, "at": fields.get("at", ""), "action": fields.get("action", ""),
           "number": keys.open_number(fields), "scope": fields.get("scope", "*"),
           "category": fields.get("category", ""), "source": fields.get("source", ""),
           "text": fields.get("text", ""), "note": fields.get("note", "")}
    if out["number"] and not out["number"].startswith(("+", "~")):
        out["number"] = "+" + out["number"]
    return out


def encode(rows: Iterable[dict[str, str]], fmt: Literal["jsonl", "csv"],
           header: bool = True) -> str:
    """Rows as JSON lines or CSV (with a header line when ``header``)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
