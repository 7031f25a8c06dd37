"""lua/enqueue_many.lua's arguments made by shape (gatewayd.pipeline.packing) are the
generic builders' (``to_flat`` with its seal, ``Ledger.queued_row``, the keys): the
same strings in the same order, over random batches: shapes the packer lays out and
shapes it hands to the generic builders, mixed in one batch, messages that share their
``enqueued_at`` (a batch's) and ones that do not, -0.0 and ints among the floats."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.config import Config
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.intake import parse_message, to_flat
from gatewayd.pipeline.packing import Packer
from gatewayd.store.keys import Keys
from gatewayd.store.seal import Seal
from tests.test_enqueue_flat import CHECKS, CLASSES, messages

SEAL = Seal("test-secret")
KEYS = Keys("gw:")
STREAMS = {k: KEYS.queue(k) for k in CLASSES}


def reference(msgs: list[OutboundMessage], seal: Seal, source: str, now: float) -> list[Any]:
    """QueueStore.script_args's rows as they were built before the packer."""
    led = Ledger(KEYS, Config())
    flat: list[Any] = []
    for m in msgs:
        m.intake = source
        status, nv = led.queued_row(m, now)
        entry = to_flat(m, seal)
        ikey = KEYS.idempotency(m.category, m.idempotency_key) if m.idempotency_key else ""
        flat += (KEYS.status(m.id), m.id, ikey, STREAMS[m.category], nv, len(status),
                 len(entry))
        flat += status
        flat += entry
    return flat


def _both(msgs: list[OutboundMessage], source: str, now: float) -> Packer:
    packer = Packer(KEYS, Ledger(KEYS, Config()), STREAMS)
    a, b = copy.deepcopy(msgs), copy.deepcopy(msgs)
    got = packer.rows(a, SEAL, source, now)
    assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(reference(b, SEAL, source,
                                                                           now))
    assert a == b  # the same intake set on each
    return packer


_NOW = st.one_of(st.floats(min_value=1e9, max_value=2e9), st.just(1000.0))


@CHECKS
@given(st.lists(messages(), min_size=1, max_size=6), st.sampled_from(["client", "http", ""]),
       _NOW)
def test_packer_is_the_generic_builders(msgs: list[OutboundMessage], source: str,
                                        now: float) -> None:
    for m in msgs:
        m.id = m.id or "m-1"
        if m.category not in CLASSES:
            m.category = "otp"
    _both(msgs, source, now)


_ITEM = st.fixed_dictionaries(
    {"to": st.from_regex(r"\+86138[0-9]{8}", fullmatch=True),
     "text": st.text(min_size=1, max_size=20).filter(str.strip),
     "category": st.sampled_from(CLASSES)},
    optional={k: st.text(max_size=8) for k in ("ref", "tenant", "from", "idempotency_key",
                                               "carrier", "id")} | {
        "callback_url": st.just("https://app.example/cb")})


@CHECKS
@given(st.lists(_ITEM, min_size=1, max_size=8), _NOW, st.booleans())
def test_a_parsed_batch_packs_alike(items: list[dict[str, str]], now: float,
                                    shared: bool) -> None:
    """Messages as the client and HTTP parse them: one enqueued_at object for the
    batch (``shared``), or one each, the packer's cache of the sealed JSON either way."""
    msgs = []
    for n, item in enumerate(items):
        if "id" in item and not item["id"].isalnum():
            item["id"] = f"id{n}"
        try:
            msgs.append(parse_message(item, classes=CLASSES, max_segments=10,
                                      now=now if shared else now + n))
        except Exception:
            continue
    if msgs:  # (each parsed message is of a shape the packer lays out itself)
        assert None not in _both(msgs, "client", now)._shapes.values()
