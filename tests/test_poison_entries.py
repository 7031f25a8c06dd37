"""Poison queue entries through the running daemon (issue 14, items 1 and 2).

Entries are pushed as raw bytes with XADD (a client that does not decode), mixed with
good ones, and read by the real daemon against the SMPP simulator: every good one is
delivered, every bad one ends in ``gw:dead`` with its reason (and, when its bytes are
not UTF-8, those bytes in ``raw_b64``), and nothing is left pending or queued; also
when the bad entries sit in a dead consumer's pending list and are reclaimed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.keys import GROUP, Keys
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config

Fields = dict[bytes, bytes]


def good(n: int) -> Fields:
    return {b"to": f"+86138{n:08d}".encode(), b"text": f"code {n}".encode(),
            b"id": f"good-{n}".encode()}


async def push(url: str, stream: str, entries: list[Fields]) -> None:
    raw = aioredis.from_url(url)  # no decode_responses: the bytes go in as they are
    try:
        for fields in entries:
            await raw.xadd(stream, fields)  # type: ignore[arg-type]
    finally:
        await raw.aclose()


async def dead_letters(redis: aioredis.Redis, keys: Keys, n: int,
                       timeout_s: float = 30.0) -> list[dict[str, str]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await redis.xlen(keys.dead) < n and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return [f for _, f in await redis.xrange(keys.dead)]


async def settled(redis: aioredis.Redis, keys: Keys, stream: str) -> None:
    """Nothing pending, nothing queued (each entry acknowledged and deleted)."""
    for _ in range(200):
        if (await redis.xpending(stream, GROUP))["pending"] == 0 and not await redis.xlen(stream):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{stream}: entries left pending or queued")


BAD_BYTES: list[Fields] = [
    {b"to": b"\xff\xfe", b"text": b"bad to", b"id": b"enc-1"},
    {b"to": b"+8613800138000", b"text": b"caf\xe9 latin-1", b"id": b"enc-2"},
    {b"\xff\xfeto": b"+8613800138000", b"text": b"bad field name"},
]


async def test_non_utf8_entries_are_dead_lettered_and_their_neighbours_delivered(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port))
    stream = keys.queue("otp")
    entries = [good(n) for n in range(30)]
    for i, bad in enumerate(BAD_BYTES):  # spread through the batches
        entries.insert(7 + 9 * i, bad)
    await push(redis_url, stream, entries)
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, [f"good-{n}" for n in range(30)], 30)
        dead = await dead_letters(redis, keys, len(BAD_BYTES))
        await settled(redis, keys, stream)
    assert {r.get("state") for r in records.values()} == {"delivered"}
    assert len(dead) == len(BAD_BYTES)
    assert {d["reason"].split(":")[:2] == ["invalid", "encoding"] for d in dead} == {True}
    kept = sorted(tuple(base64.b64decode(b) for b in json.loads(d["raw_b64"])) for d in dead)
    assert kept == sorted(tuple(x for kv in bad.items() for x in kv) for bad in BAD_BYTES)
    # An entry that names its id in valid UTF-8: that id is told why.
    assert (await redis.hget(keys.status("enc-1"), "reason") or "").startswith(
        "invalid:encoding")


async def test_non_utf8_entries_pending_on_a_dead_consumer_are_reclaimed(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The bad entries sit in the pending list of a consumer that died (no heartbeat):
    the takeover reads them with XCLAIM, which failed the same way before."""
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra="[queue]\nreclaim_idle_s = 0.5\n"))
    stream = keys.queue("otp")
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entries = [good(n) for n in range(10)] + BAD_BYTES + [good(n) for n in range(10, 20)]
    await push(redis_url, stream, entries)
    raw = aioredis.from_url(redis_url)
    try:  # a consumer that reads everything and dies
        got = await raw.xreadgroup(GROUP, "ghost", {stream: ">"}, count=100)
        assert len(got[0][1]) == len(entries)
    finally:
        await raw.aclose()
    await asyncio.sleep(0.6)
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, [f"good-{n}" for n in range(20)], 30)
        dead = await dead_letters(redis, keys, len(BAD_BYTES))
        await settled(redis, keys, stream)
    assert {r.get("state") for r in records.values()} == {"delivered"}
    assert sorted(d["reason"].split(":")[1] for d in dead) == ["encoding"] * 3


# The fuzz test: hostile entries of every kind, mixed with good ones --------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
_VALID_TO = b"+8613900000001"


def _no_message(d: object) -> bool:
    return not (isinstance(d, dict) and "to" in d and "text" in d)


def _deep(depth: int, inside_object: bool) -> Fields:
    nested = "[" * depth + "]" * depth
    if inside_object:
        doc = '{"to": "+8613900000001", "text": "x", "ref": ' + nested + "}"
    else:
        doc = nested
    return {b"json": doc.encode()}


HOSTILE: st.SearchStrategy[Fields] = st.one_of(
    # random bytes, names and values (never both "to" and "text": never a message)
    st.dictionaries(st.binary(min_size=1, max_size=6).filter(lambda k: k not in (b"to", b"text")),
                    st.binary(max_size=24), min_size=1, max_size=4),
    # random JSON in the json field
    _JSON.filter(_no_message).map(lambda d: {b"json": json.dumps(d).encode()}),
    st.binary(max_size=40).map(lambda b: {b"json": b}),
    # huge numbers
    st.sampled_from([b"not_before", b"expires_at"]).flatmap(lambda f: st.sampled_from([
        {b"to": _VALID_TO, b"text": b"x", f: b"9" * 401},
        {b"json": b'{"to": "+8613900000001", "text": "x", "' + f + b'": ' + b"9" * 401 + b"}"},
        {b"json": b'{"to": "+8613900000001", "text": "x", "' + f + b'": 1e999}'},
    ])),
    # deep nesting
    st.tuples(st.integers(500, 20000), st.booleans()).map(lambda t: _deep(*t)),
    # lone surrogates through JSON escapes, bytes that are not UTF-8
    st.just({b"json": b'{"to": "+8613900000001", "text": "\\ud800"}'}),
    st.binary(min_size=1, max_size=8).map(lambda b: {b"to": _VALID_TO, b"text": b + b"\xff"}),
)


async def _fuzz_round(redis_url: str, batch: list[tuple[bool, Fields]]) -> None:
    redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = Keys("gw:")
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.01))
    await sim.start()
    try:
        await redis.flushdb()
        with tempfile.TemporaryDirectory() as d:
            cfg = load(write_config(Path(d), redis_url=redis_url, sim_port=sim.port))
            stream = keys.queue("transactional")
            entries, goods, bad = [], [], 0
            for n, (is_good, fields) in enumerate(batch):
                if is_good:
                    entries.append(good(n))
                    goods.append(f"good-{n}")
                else:
                    entries.append(fields)
                    bad += 1
            await push(redis_url, stream, entries)
            async with running_daemon(cfg):
                records = await wait_final(redis, keys, goods, 30)
                dead = await dead_letters(redis, keys, bad)
                await settled(redis, keys, stream)
        assert {r.get("state") for r in records.values()} <= {"delivered"}
        assert len(dead) == bad
        for d in dead:
            assert d["reason"].startswith("invalid:"), d["reason"]
    finally:
        await sim.stop()
        await redis.aclose()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.booleans(), HOSTILE), min_size=4, max_size=40))
def test_fuzz_hostile_entries_dead_letter_alone(
    redis_url: str, batch: list[tuple[bool, Fields]]
) -> None:
    asyncio.run(_fuzz_round(redis_url, batch))
