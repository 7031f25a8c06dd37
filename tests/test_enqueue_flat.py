"""lua/enqueue_many.lua's flat arguments (issue 17): the same record, entry, seal and event.

The client now hands the script each message as flat [field, value, ...] strings
(``to_flat``, ``Ledger.queued_row``, ``Seal.seal_flat``) instead of two maps the script
copied field by field. Differential checks against the builders the other paths use
(``to_fields``, ``Ledger.build``, ``Seal.seal``, ``events.event_of``) over random
messages, and the events stream's cap, now trimmed once a call.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.config import Config, QueueConfig
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.events import Ledger, event_of
from gatewayd.pipeline.intake import parse_message, to_fields, to_flat
from gatewayd.pipeline.queue import QueueStore
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Seal

CLASSES = ["otp", "transactional", "marketing"]
CHECKS = settings(max_examples=400, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
_TEXT = st.text(min_size=0, max_size=12)
_FLOAT = st.one_of(st.just(0.0), st.just(-0.0), st.floats(allow_nan=False, allow_infinity=False),
                   st.floats(min_value=1e9, max_value=2e9))


@st.composite
def messages(draw: st.DrawFn) -> OutboundMessage:
    """Any OutboundMessage a writer may hold: client fields and internal ones set or
    left at their defaults (-0.0 and 0 included), text of any script."""
    raw = {"to": "+86138" + draw(st.from_regex(r"[0-9]{8}", fullmatch=True)),
           "text": draw(st.text(min_size=1, max_size=30).filter(str.strip)),
           "category": draw(st.sampled_from(CLASSES))}
    for name in ("ref", "tenant", "from", "idempotency_key", "carrier", "callback_url"):
        if draw(st.booleans()):
            raw[name] = draw(_TEXT)
    m = msgspec.convert(raw, OutboundMessage, strict=False)
    for name in ("not_before", "expires_at", "enqueued_at"):
        if draw(st.booleans()):
            setattr(m, name, draw(_FLOAT))
    for name in ("campaign", "variant", "template", "resume", "intake", "id"):
        if draw(st.booleans()):
            setattr(m, name, draw(_TEXT))
    for name in ("attempts", "losses", "links"):
        if draw(st.booleans()):
            setattr(m, name, draw(st.integers(min_value=0, max_value=12)))
    return m


SEAL = Seal("test-secret")


@CHECKS
@given(messages())
def test_to_flat_is_to_fields_flattened(m: OutboundMessage) -> None:
    for seal in (None, SEAL):
        want = [x for kv in to_fields(m, seal).items() for x in kv]
        assert to_flat(m, seal) == want


@CHECKS
@given(st.lists(st.tuples(st.dictionaries(_TEXT, _TEXT, max_size=6),
                          st.dictionaries(st.sampled_from(["enqueued_at", "intake",
                                                           "attempts", "campaign"]),
                                          st.one_of(_TEXT, _FLOAT, st.integers()),
                                          max_size=4)),
                min_size=1, max_size=4))
def test_seal_flat_is_seal(cases: list[tuple[dict[str, str], dict[str, object]]]) -> None:
    """The same MAC and payload, also as the internal fields change between calls (the
    cached head is for the last ones only)."""
    for fields, internal in cases:
        fields.pop("_gw", None)
        flat = [x for kv in fields.items() for x in kv]
        assert SEAL.seal_flat(flat, internal) == SEAL.seal(fields, internal)
        assert SEAL.open({**fields, "_gw": SEAL.seal_flat(flat, internal)}) == dict(
            msgspec.json.decode(msgspec.json.encode(internal)))


@CHECKS
@given(messages(), st.floats(min_value=1e9, max_value=2e9))
def test_queued_row_is_the_queued_record_with_its_event_first(
    m: OutboundMessage, now: float
) -> None:
    led = Ledger(Keys("gw:"), Config())
    m.id = m.id or "m-1"
    _key, status = led.build(m, "queued", now, text=True)
    row, nv = led.queued_row(m, now)
    it = iter(row)
    assert dict(zip(it, it, strict=False)) == status and len(row) == 2 * len(status)
    # enqueue_many.lua's event: "id", "at" (updated_at, right after the event's fields)
    # and the first nv strings.
    assert row[nv] == "updated_at"
    head = iter(row[:nv])
    assert {"id": m.id, "at": row[nv + 1], **dict(zip(head, head, strict=False))} == \
        event_of(m.id, status)


async def test_the_events_stream_stays_capped(redis: aioredis.Redis, keys: Keys) -> None:
    """The script trims the events stream once a call (XTRIM MAXLEN ~), not by each
    XADD: after calls of many messages it is as long as the per-XADD trim left it (at
    least MAXLEN, at most MAXLEN and one node of 100 entries)."""
    q = QueueStore(redis, keys, Config(queue=QueueConfig(events_maxlen=150)), "t")
    await q.ensure_groups()
    for call in range(3):
        msgs = [parse_message({"to": f"+86138{call}{i:07d}", "text": f"hi {i}"},
                              classes=CLASSES, max_segments=10, now=1000.0)
                for i in range(400)]
        assert {o for _, o in await q.enqueue_each(msgs, source="t", now=1000.0)} == \
            {"queued"}
        assert 150 <= await redis.xlen(keys.events) <= 250
