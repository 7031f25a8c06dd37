"""lua/record.lua sends a transition's event as one range of the record's arguments: the
status fields must come as Ledger.build orders them ("state", "updated_at", the event's
fields, then the NOT_IN_EVENT ones), also with the extras the dispatcher adds. Each
event written by the script must be exactly events.event_of's, field order included."""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from gatewayd.config import Config
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.events import NOT_IN_EVENT, Book, Ledger, event_of
from gatewayd.pipeline.intake import parse_message
from gatewayd.store import fastpipe
from gatewayd.store.keys import Keys

CLASSES = ["otp", "transactional", "marketing"]


def _msg(i: str, **kw: Any) -> OutboundMessage:
    m = parse_message({"id": i, "to": "+8613800138000", "text": "t", "category": "marketing",
                       "ref": "r-" + i, "tenant": "shop"}, classes=CLASSES, max_segments=10,
                      now=1000.0)
    return msgspec.structs.replace(m, **kw)


def _transitions(ledger: Ledger, book: Book) -> None:
    camp = _msg("c1", campaign="spring", variant="b", callback_url="https://x.test/h")
    ledger.record(book, camp, "submitted", 1001.0, carrier="cmcc", carrier_id="9f",
                  segments=3, extra={"receipts": 1})
    part = _msg("p1", template="welcome", attempts=1)
    ledger.record(book, part, "deferred", 1002.0, reason="retry:throttled", until=1003.0,
                  carrier="cmcc", extra={"sent_parts": "0 1", "segments": 3})
    ledger.record(book, _msg("f1"), "failed", 1004.0, reason="0x00000045",
                  carrier="cmcc", err="0x00000045")
    ledger.record(book, _msg("q1"), "queued", 1005.0)


async def test_every_record_lists_event_fields_before_the_others(
    redis: aioredis.Redis, keys: Keys
) -> None:
    ledger = Ledger(keys, Config(), redis)
    book = ledger.book()
    _transitions(ledger, book)
    assert len(book.records) == 4
    for _id, _key, status in book.records:
        names = list(status)
        assert names[:2] == ["state", "updated_at"]
        out = [n in NOT_IN_EVENT for n in names]
        assert out == sorted(out), names  # no event field after a NOT_IN_EVENT one


async def test_script_events_are_event_of_field_for_field(
    redis: aioredis.Redis, keys: Keys
) -> None:
    ledger = Ledger(keys, Config(), redis)
    book = ledger.book()
    _transitions(ledger, book)
    expected = [event_of(i, s) for i, _k, s in book.records]
    written = [(i, dict(s)) for i, _k, s in book.records]
    pipe = redis.pipeline(transaction=False)
    book.flush(pipe)
    await fastpipe.execute(pipe)
    events = [f for _, f in await redis.xrange(keys.events)]
    want = [{k: str(v) for k, v in e.items()} for e in expected]
    assert [list(e.items()) for e in events] == [list(e.items()) for e in want]
    assert "fk" not in events[0] and "receipts" not in events[0]
    assert events[1]["segments"] == "3" and "sent_parts" not in events[1]
    # The records hold every field, those the events leave out too.
    for i, st in written:
        got = await redis.hgetall(keys.status(i))
        assert got == {k: str(v) for k, v in st.items()}
