"""The webhook sender's JSON made from an entry's bytes by its shape's template
(body.shape_of / body.ready) against body.py's event_of: for every kind of entry it is
byte for byte what event_of and the encoder make (the sender's only way before), and
one malformed entry among good ones is skipped with its reason while the others go."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from gatewayd.store.connection import connect
from gatewayd.store.keys import Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks.runner import WebhookRunner
from tests.e2e_helpers import load, write_config
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml

Fields = dict[str, Any]

# What the daemon writes (pipeline/events.py: repr() of the time), and what it may not.
STATES: list[Fields] = [
    {"id": "m1", "state": "queued", "at": repr(time.time()), "category": "transactional",
     "to": "+86138****8000", "ref": "order-1", "tenant": "acme"},
    {"id": "m1", "state": "submitted", "at": "1765143600.1234567", "carrier": "sim",
     "carrier_id": "5f3a", "segments": "2", "tenant": "acme", "callback": "https://x/cb"},
    {"id": "m1", "state": "delivered", "at": "1765143600.5", "carrier_id": "5f3a",
     "segments": "1", "reason": "DELIVRD"},
    {"id": "m2", "state": "deferred", "at": "1765143600.0", "until": "1765143660.25",
     "reason": "throttled", "err": "0x58"},
    {"id": "m3", "state": "rejected", "at": "1765143600", "reason": "blocked: \"quoted\" \\"},
    {"id": "m4", "state": "failed", "at": "0.0001", "err": "line\nbreak\ttab\r\x00\x01\x1f\x7f"},
    {"id": "m5", "state": "undeliverable", "at": "1765143600.1000", "segments": "007"},
    {"id": "m6", "state": "expired", "at": "1e9", "segments": "x", "until": ""},
    {"id": "m7", "state": "queued", "at": "", "ref": "订单-7 ✓ \U0001f600", "tenant": "t\u00e9"},
    {"id": "", "state": "submitted", "at": "nan", "segments": "12345678901234567890123"},
    {"state": "delivered", "at": " 1765143600.5", "campaign": "c1", "variant": "b"},
    {"id": "m8", "state": "delivered", "at": "1765143600.12345678901", "until": "abc"},
    {"id": "m9", "message_id": "mine", "state": "delivered", "at": "1.5"},
    {"id": "m10", "kind": "theirs", "state": "delivered", "at": "1.5"},
    {"id": "m11", "state": "delivered", "at": "99999999999999999.5", "segments": "\u0661\u0662"},
    {"id": "m12", "state": "delivered", "at": "0.00001", "segments": ""},
    {"id": "m13", "state": "delivered", "at": "1765143600.25", "to": "+86\u200b138"},
    {"id": "m14", "state": "optout", "at": "1765143600.25", "to": "+86138****8000"},
    {"id": "m16", "state": "delivered", "at": "0.0", "until": "-1.5", "%s": "%d%%"},
    {"id": "m17", "state": "delivered", "at": "1765143600.25", "segments": "3",
     "carrier": "a\u00e9", "ref": "r"},
    {"id": "m15", "state": "clicked", "at": "1765143600.25", "template": "t-1",
     "from_enc": "kept for events", "parts": "3"},
]
MO: list[Fields] = [
    {"from": "+86138****8000", "to": "10690", "text": "TD", "carrier": "sim",
     "at": repr(time.time()), "parts": "1", "from_enc": "secret", "tenant": "acme"},
    {"from": "+86138****8001", "to": "10690", "text": "你好, \"world\"\n", "at": "1765143600.5",
     "parts": "02", "id": "mo-1", "callback": "stays in an MO"},
    {"from": "x", "text": "", "at": "abc", "parts": "", "until": "1.5"},
    {"from": "x", "text": "y", "at": "1765143600.5", "parts": "\u00b2"},  # int() refuses
    {"from": "%s%d", "text": "100%", "at": "-0.0", "parts": "0"},
    {"from_enc": "only"},
]


def reference(stream: str, entry_id: str, flat: list[bytes]) -> tuple[bytes | None, str]:
    """What body.py makes of an entry (the sender's way before the script): its JSON,
    or None with the error that would skip it."""
    try:
        pairs = [f.decode() for f in flat]
        it = iter(pairs)
        event = bodies.new_event(stream, entry_id, zip(it, it, strict=True))
        return bodies.encode(bodies.finish_event(stream, event)), ""
    except Exception as e:
        return None, type(e).__name__


async def add(redis_url: str, stream: str, entries: list[Fields]) -> None:
    raw = aioredis.from_url(redis_url)
    try:
        for f in entries:
            await raw.xadd(stream, f)
    finally:
        await raw.aclose()


async def test_the_templates_json_is_event_ofs_byte_for_byte(
        redis_url: str, redis: aioredis.Redis, keys: Keys) -> None:
    rnd = random.Random(18)
    extra: list[Fields] = []
    for i in range(3000):  # times as repr() writes them, over many magnitudes
        x = rnd.choice([rnd.uniform(1.6e9, 1.9e9), rnd.uniform(0, 1), 10 ** rnd.uniform(-6, 17),
                        float(rnd.randrange(10 ** rnd.randrange(1, 17))), round(rnd.random(), 3)])
        extra.append({"id": f"r{i}", "state": "submitted", "at": repr(x),
                      "until": repr(x / 3), "segments": str(rnd.randrange(5))})
    for i in range(2000):  # what the daemon writes: every one of these goes ready
        x = rnd.uniform(1.6e9, 1.9e9)
        extra.append({"id": f"d{i}", "state": "delivered", "at": repr(x),
                      "segments": str(rnd.randrange(1, 5)), "until": repr(round(x, 3))})
    await add(redis_url, keys.events, [*STATES, *extra])
    await add(redis_url, keys.inbound, MO)
    ready = fallback = seen = daemon_like = 0
    raw = aioredis.from_url(redis_url)  # bytes, as the sender's reader has them
    shapes: dict[tuple[str, tuple[bytes, ...]], bodies.Shape | None] = {}
    for stream, key in (("e", keys.events), ("m", keys.inbound)):
        for rid, f in await raw.xrange(key):
            seen += 1
            entry_id = rid.decode()
            fields = [x for kv in f.items() for x in kv]
            want, _err = reference(stream, entry_id, fields)
            names = tuple(fields[0::2])
            if (stream, names) not in shapes:
                shapes[(stream, names)] = bodies.shape_of(stream, names)
            shape = shapes[(stream, names)]
            flat = [*fields, rid, b"", b"mo"]
            data = None if shape is None else bodies.ready(shape, flat)
            if data is None:  # left to event_of: what it makes of the list as left
                fallback += 1
                assert reference(stream, entry_id, flat[:len(fields)]) == (want, _err)
                continue
            assert shape is not None
            ready += 1
            daemon_like += entry_id != "" and f.get(b"id", b"").startswith(b"d")
            assert data == want, (stream, fields)
            event = msgspec.json.decode(want)
            tenant, kind, msg, cb = shape.route(flat)
            assert kind.decode() == ("mo" if stream == "m" else f.get(b"state", b"").decode())
            assert kind.decode() == event["kind"]
            assert tenant == f.get(b"tenant", b"")
            if stream == "e":
                assert msg == f.get(b"id", b"") and cb == f.get(b"callback", b"")
            else:
                assert msg == b"" and cb == b""
    await raw.aclose()
    assert seen == len(STATES) + len(extra) + len(MO)
    assert daemon_like == 2000  # what the daemon writes: every one made by its template
    assert ready > 4000 and fallback >= 10  # the unusual ones above


async def test_the_runner_sends_what_body_py_made_and_skips_a_malformed_entry(
        tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
        caplog: pytest.LogCaptureFixture) -> None:
    """Through a real runner and receiver: every entry the script made and every entry
    made in Python arrives as body.py makes it; an entry that cannot be made (a field
    that is not UTF-8, a segments value int() refuses) is skipped with its reason, and
    the entries around it in the same read are delivered and the cursor passes it."""
    recv = Receiver()
    await recv.start()
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=webhooks_toml(
        recv, endpoints=endpoint_toml(recv, "all", "/all", tenant="*", events=["*"])
    ).replace("enabled = true", "enabled = false")))
    client = connect(redis_url)
    runner = WebhookRunner(client, keys, cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(runner.ready.wait(), 10)
        bad = [{"id": "bad1", "state": "delivered", "text": b"\xff\xfe not UTF-8"},
               {"id": "bad2", "state": "delivered", "segments": "\u00b2"},
               # Values the route reads (not the JSON): a callback, a tenant not UTF-8.
               {"id": "bad3", "state": "delivered", "callback": b"http://\xff/x"},
               {"id": "bad4", "state": "delivered", "tenant": b"t\xfe"}]
        await add(redis_url, keys.events, [STATES[0], bad[0], *STATES[1:9], bad[1],
                                           bad[2], bad[3], *STATES[9:]])
        # Names holding a NUL (no shape of their own) next to the names they join like.
        await add(redis_url, keys.events, [
            {"id": "n1", "state": "delivered", "te": "1", "nant": "2"},
            {"id": "n2", "state": "delivered", "te\0nant": "3"},
            {"id": "n3", "state": "delivered", "te\0nant": "4", "x": "5"}])
        await add(redis_url, keys.inbound, MO[:3])
        raw = aioredis.from_url(redis_url)
        want: dict[str, Any] = {}
        skipped = set()
        for stream, key in (("e", keys.events), ("m", keys.inbound)):
            for rid, f in await raw.xrange(key):
                entry_id = rid.decode()
                flat = [x for kv in f.items() for x in kv]
                body, _err = reference(stream, entry_id, flat)
                if body is None:
                    skipped.add(entry_id)
                else:
                    want[stream + entry_id] = msgspec.json.decode(body)
        await raw.aclose()
        assert len(skipped) == 4
        with caplog.at_level(logging.ERROR, logger="gatewayd.webhooks"):
            assert await wait_for(lambda: len(recv.events["/all"]) >= len(want), 30)
            assert await wait_for(lambda: all(
                not o for o in runner.order.values()), 10)
        got = {e["event_id"]: e for e in recv.events["/all"]}
        assert got == want
        assert recv.bad_signatures == 0
        for entry_id in skipped:
            assert any(entry_id in r.getMessage() and "skipped" in r.getMessage()
                       for r in caplog.records)
        last = (await redis.xrevrange(keys.events, count=1))[0][0]
        await runner.save_cursor()
        assert runner.cursor["e"] == last
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        await recv.stop()


def test_only_the_values_sent_are_checked() -> None:
    """ready() checks the values that go into the JSON, not those it leaves out (an
    event's ``callback``, an MO's ``from_enc``): such an entry is made by its template,
    byte for byte what event_of makes; a value sent that needs escaping still goes to
    event_of."""
    cases = [
        ("e", {"id": "m1", "state": "submitted", "at": "1765143600.5",
               "callback": "https://x/cb?a=\"b\"\t", "tenant": "acme"}),
        ("m", {"from": "+86138****8000", "to": "10690", "text": "TD", "at": "1765143600.5",
               "parts": "1", "from_enc": "\u4f60\u597d\n", "tenant": "acme"}),
    ]
    for stream, fields in cases:
        flat = [x.encode() for kv in fields.items() for x in kv]
        entry_id = "1765143600500-3"
        want, err = reference(stream, entry_id, flat)
        assert want is not None, err
        shape = bodies.shape_of(stream, tuple(flat[0::2]))
        assert shape is not None
        assert bodies.ready(shape, [*flat, entry_id.encode(), b"", b"mo"]) == want
        # The same entry with a value that is sent holding a quote: event_of's way.
        flat[flat.index(b"acme")] = b'ac"me'
        assert bodies.ready(shape, [*flat, entry_id.encode(), b"", b"mo"]) is None
