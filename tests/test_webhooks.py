"""Webhooks (issue 18) through the real daemon, a real SMSC simulator and a real HTTP
receiver: every state change and MO pushed, signed, in order per message, never lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gatewayd.client import Client, verify_webhook
from gatewayd.model import FINAL_STATES
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import subscriptions as subs
from gatewayd.webhooks.signing import sign
from tests.e2e_helpers import Smsc, load, running_daemon, wait_final, write_config
from tests.webhook_helpers import Receiver, endpoint_toml, wait_for, webhooks_toml


async def send(redis_url: str, cfg: object, n: int, prefix: str = "86137",
               **fields: str) -> list[str]:
    async with Client(redis_url, queue=cfg.queue) as client:  # type: ignore[attr-defined]
        return [i for i, _ in await client.send(
            [{"to": f"+{prefix}{k:08d}", "text": f"parcel {k} is on its way",
              "category": "transactional", **fields} for k in range(n)])]


def in_order(by_msg: dict[str, list[str]]) -> bool:
    """Per message: submitted arrived, and before its final event."""
    for kinds in by_msg.values():
        finals = [i for i, k in enumerate(kinds) if k in FINAL_STATES]
        if "submitted" not in kinds or not finals or kinds.index("submitted") > finals[0]:
            return False
    return True


async def test_states_and_mo_pushed_signed_in_order(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        eps = (endpoint_toml(recv, "all", "/all", tenant="*", events=["*"], batch=20)
               + endpoint_toml(recv, "dlr", "/dlr", tenant="*", events=["final"],
                               format="kannel",
                               url="?d=%d&id=%I&to=%p&smsc=%i&t=%T&a=%A&pct=%%"))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps)))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ids = await send(redis_url, cfg, 60, ref="order-7")
            await wait_final(redis, keys, ids, timeout_s=30)
            await sim.inject_mo("13800138000", "10690001", "hello back", wait=True)
            assert await wait_for(lambda: len(recv.by_message("/all")) == 60
                                  and in_order(recv.by_message("/all"))
                                  and any(e["kind"] == "mo" for e in recv.events["/all"])
                                  and len(recv.events["/dlr"]) >= 60)
        assert recv.bad_signatures == 0
        by_msg = recv.by_message("/all")
        assert set(by_msg) == set(ids)
        assert all(k[:3] == ["queued", "submitted", "delivered"] for k in by_msg.values())
        sample = next(e for e in recv.events["/all"] if e["kind"] == "delivered")
        assert sample["message_id"] in ids and sample["ref"] == "order-7"
        assert sample["carrier"] == "sim" and sample["carrier_id"]
        assert isinstance(sample["at"], float) and sample["event_id"].startswith("e")
        mo = next(e for e in recv.events["/all"] if e["kind"] == "mo")
        assert mo["from"] == "+8613800138000" and mo["text"] == "hello back"
        dlr = {q["id"]: q for q in recv.events["/dlr"]}
        assert set(dlr) == set(ids)
        q = dlr[ids[0]]
        assert q["d"] == "1" and q["smsc"] == "sim" and q["a"] == "delivered"
        assert q["to"].endswith("0000") and q["pct"] == "%" and int(q["t"]) > 0
        # Everything was done: the sender's saved cursor is at the stream's last entry.
        last = await redis.xrevrange(keys.events, count=1)
        assert await redis.hget(keys.webhook_cursor, "events") == last[0][0]
    finally:
        await recv.stop()


def test_signature_recipe() -> None:
    body = b'{"events":[]}'
    header = sign(b"k", body, 1_700_000_000)
    assert verify_webhook("k", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body + b" ", header, now=1_700_000_100)
    assert not verify_webhook("other", body, header, now=1_700_000_100)
    assert not verify_webhook("k", body, header, now=1_700_000_000 + 301)  # a replay
    # The recipe of the README, by hand: HMAC-SHA256 over "<t>." + body, hex.
    import hashlib
    import hmac

    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify_webhook("k", body, f"t={int(time.time())},v1=x,v1="
                          + hmac.new(b"k", f"{int(time.time())}.".encode() + body,
                                     hashlib.sha256).hexdigest())


def complete(recv: Receiver, path: str, ids: list[str]) -> bool:
    """Every message's submitted and final event arrived at ``path``, in that order."""
    by_msg = recv.by_message(path)
    return set(by_msg) >= set(ids) and in_order({m: by_msg[m] for m in ids})


async def test_failing_slow_and_dead_endpoints_lose_nothing_and_hold_up_nobody(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """One endpoint answers 500s, times out and drops connections; another is down (no
    listener) until the messages are all final; a third is healthy. Dispatch finishes
    every message while one endpoint is down, the healthy one gets everything
    meanwhile, and once the others recover they get every event too, submitted before
    final for each message."""
    recv = Receiver(slow_s=2.0)
    late = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        recv.script["/flaky"] = ["500", "500", "close", "slow", "500", "close", "500"]
        eps = (endpoint_toml(recv, "ok", "/ok", batch=25)
               + endpoint_toml(recv, "flaky", "/flaky", batch=10, timeout_s=0.5,
                               concurrency=2)
               + endpoint_toml(late, "down", "/down", batch=50))
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints=eps)))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ids = await send(redis_url, cfg, 300)
            records = await wait_final(redis, keys, ids, timeout_s=60)
            assert all(r["state"] == "delivered" for r in records.values())
            assert await wait_for(lambda: complete(recv, "/ok", ids), 30)
            assert late.requests.total() == 0  # still down: nothing could arrive
            assert await redis.zcard(keys.webhook_queue("down")) > 0  # waiting in Redis
            await late.start()
            assert await wait_for(lambda: complete(late, "/down", ids)
                                  and complete(recv, "/flaky", ids), 60)
            await wait_for(lambda: daemon.webhooks is not None
                           and not daemon.webhooks.senders["down"].queued, 10)
        assert recv.bad_signatures == 0 and late.bad_signatures == 0
        assert recv.requests["/flaky"] > len(recv.script["/flaky"])  # retried past faults
        assert recv.script["/flaky"] == []  # every fault was served
        for r, path in ((recv, "/ok"), (recv, "/flaky"), (late, "/down")):
            kinds = r.by_message(path)
            assert all(kinds[m][:2] == ["submitted", "delivered"] for m in ids), path
        assert await redis.zcard(keys.webhook_queue("down")) == 0
        assert await redis.xlen(keys.webhook_dead("flaky")) == 0
    finally:
        await recv.stop()
        await late.stop()


async def test_kill_9_and_a_redis_restart_lose_no_event(tmp_path: Path, smsc: Smsc) -> None:
    """The daemon sending webhooks is killed with SIGKILL mid-delivery; a daemon and a
    separate `gatewayd webhooks run` take over; Redis restarts under them. Every
    message's submitted and delivered events reach the endpoint (at least once)."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=True)
    url = server.start()
    recv = Receiver()
    recv.delay_s = 0.03
    await recv.start()
    procs: list[asyncio.subprocess.Process] = []
    log = (tmp_path / "procs.log").open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        sim = await smsc(receipt_delay_s=0.02)
        eps = endpoint_toml(recv, "hook", "/hook", batch=20, concurrency=1)
        in_daemon = write_config(tmp_path, redis_url=url, sim_port=sim.port,
                                 extra=webhooks_toml(recv, endpoints=eps))
        apart = write_config(tmp_path, redis_url=url, sim_port=sim.port, name="apart.toml",
                             extra=webhooks_toml(recv, endpoints=eps).replace(
                                 "enabled = true", "enabled = false"))
        cfg = load(in_daemon)
        ids = await send(url, cfg, 1000)

        async def start(*args: str) -> asyncio.subprocess.Process:
            p = await asyncio.create_subprocess_exec(sys.executable, "-m", "gatewayd", *args,
                                                     env=env, stdout=log, stderr=log)
            procs.append(p)
            return p

        first = await start("run", "-c", str(in_daemon))
        assert await wait_for(lambda: len(recv.events["/hook"]) >= 300, 60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        got_at_kill = len(recv.ids("/hook"))
        assert got_at_kill < 2000  # killed mid-delivery
        await start("run", "-c", str(apart))
        await start("webhooks", "run", "-c", str(apart))
        assert await wait_for(lambda: len(recv.ids("/hook")) >= got_at_kill + 300, 60)
        server.stop()  # SIGTERM: Redis writes its append-only file and exits
        await asyncio.sleep(1.0)
        server.start()
        assert await wait_for(lambda: complete(recv, "/hook", ids), 120), (
            len(recv.ids("/hook")))
        assert recv.bad_signatures == 0
        dupes = len(recv.events["/hook"]) - len(recv.ids("/hook"))
        print(f"kill -9 + redis restart: {dupes} events delivered twice")
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except TimeoutError:
                    p.kill()
        log.close()
        await recv.stop()
        server.stop()


async def gw(*args: str) -> tuple[int, str]:
    """``gatewayd ARGS`` (its own event loop, in a thread), with its output."""
    import contextlib
    import io

    from gatewayd.cli import main

    def run() -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(list(args))
        return code, buf.getvalue()

    return await asyncio.to_thread(run)


async def test_cli_endpoints_pause_resume_dead_letters_replay_and_test_fire(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """An endpoint added at run time (kept in Redis) gets events within a second; paused,
    its events wait in Redis and go out on resume; a 4xx dead-letters an event, replay
    delivers it; test-fire sends one signed event; list shows it all."""
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra=webhooks_toml(recv, endpoints=""))
        cfg = load(path)
        c = ["-c", str(path)]
        async with running_daemon(cfg) as daemon:
            runner = daemon.webhooks
            assert runner is not None
            code, out = await gw("webhooks", "add", *c, "rt", recv.url("/rt"), "--tenant",
                                 "*", "--events", "final", "--secret", recv.secret)
            assert code == 0, out
            assert await wait_for(lambda: "rt" in runner.senders, 10)
            first = await send(redis_url, cfg, 20, prefix="86131")
            assert await wait_for(lambda: len(recv.by_message("/rt")) == 20, 30)

            assert (await gw("webhooks", "pause", *c, "rt"))[0] == 0
            assert await wait_for(lambda: runner.senders["rt"].paused, 10)
            held = await send(redis_url, cfg, 10, prefix="86132")
            await wait_final(redis, keys, held, timeout_s=30)
            assert await wait_for(
                lambda: runner.senders["rt"].stored + len(runner.senders["rt"].spill) >= 10)
            assert not set(held) & set(recv.by_message("/rt"))  # none while paused
            code, out = await gw("webhooks", "list", *c)
            listed = json.loads(out.splitlines()[0])
            assert listed["name"] == "rt" and listed["paused"] and listed["queued"] == 10
            assert listed["source"] == "redis" and listed["signed"]
            assert (await gw("webhooks", "resume", *c, "rt"))[0] == 0
            assert await wait_for(lambda: set(held) <= set(recv.by_message("/rt")), 30)

            recv.script["/rt"] = ["400"]
            [bad] = await send(redis_url, cfg, 1, prefix="86133")
            assert await wait_for(lambda: not recv.script["/rt"])  # the 400 was served
            assert await wait_for_async(lambda: redis.xlen(keys.webhook_dead("rt")), 1)
            code, out = await gw("webhooks", "dead", *c, "rt")
            dead = [json.loads(line) for line in out.splitlines()]
            assert [d["event"]["message_id"] for d in dead] == [bad]
            assert dead[0]["error"] == "HTTP 400"
            assert bad not in recv.by_message("/rt")
            code, out = await gw("webhooks", "replay", *c, "rt")
            assert code == 0, out
            assert await wait_for(lambda: bad in recv.by_message("/rt"), 30)
            assert await redis.xlen(keys.webhook_dead("rt")) == 0

            code, out = await gw("webhooks", "test", *c, "rt")
            assert code == 0 and "HTTP 200" in out, out
            assert recv.events["/rt"][-1]["kind"] == "test"
            assert (await gw("webhooks", "remove", *c, "rt"))[0] == 0
            assert await wait_for(lambda: "rt" not in runner.senders, 10)
        assert recv.bad_signatures == 0
        assert set(first) <= set(recv.by_message("/rt"))
    finally:
        await recv.stop()


async def test_private_targets_are_refused_unless_allowed(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/", "http://[::1]/",
                "http://169.254.169.254/latest/meta-data", "http://localhost:80/"):
        try:
            await subs.check_target(url, allow_private=False)
        except subs.TargetRefused:
            pass
        else:
            raise AssertionError(f"{url} was not refused")
        await subs.check_target(url, allow_private=True)
    # The daemon dead-letters events for an endpoint on a private address (no request).
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.02)
        path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                            extra=webhooks_toml(recv, endpoints=endpoint_toml(
                                recv, "inside", "/x")).replace("allow_private = true",
                                                               "allow_private = false"))
        cfg = load(path)
        code, out = await gw("webhooks", "add", "-c", str(path), "more", recv.url("/y"))
        assert code == 2 and "private address" in out, out
        async with running_daemon(cfg):
            ids = await send(redis_url, cfg, 3)
            await wait_final(redis, keys, ids)
            assert await wait_for_async(
                lambda: redis.xlen(keys.webhook_dead("inside")), 6)
        rows = await redis.xrange(keys.webhook_dead("inside"))
        assert all(f["error"].startswith("refused: 127.0.0.1 resolves to 127.0.0.1")
                   for _i, f in rows)
        assert recv.requests.total() == 0
    finally:
        await recv.stop()


async def wait_for_async(count: Any, want: int, timeout_s: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await count() < want:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_routing_by_tenant_and_kind() -> None:
    eps = [subs.Endpoint(name="default", url="http://a/"),
           subs.Endpoint(name="all", url="http://b/", tenant="*",
                         kinds=subs.expand(["*"])),
           subs.Endpoint(name="acme", url="http://c/", tenant="acme",
                         kinds=subs.expand(["final", "mo"]))]
    r = subs.Router(eps)
    names = lambda t, k: sorted(e.name for e in r.route(t, k))  # noqa: E731
    assert names("", "submitted") == ["all", "default"]
    assert names("other", "delivered") == ["all", "default"]  # no endpoint of its own
    assert names("acme", "delivered") == ["acme", "all"]  # its own, not the default
    assert names("acme", "submitted") == ["all"]
    assert names("", "mo") == ["all"]
    assert names("", "queued") == ["all"]
    cfg = load_config_text("""
[webhooks]
callback_prefixes = { acme = ["https://hooks.acme.example/"] }
""")
    assert subs.callback_allowed("https://hooks.acme.example/sms?x=1", "acme", cfg)
    assert not subs.callback_allowed("https://hooks.acme.example.evil/", "acme", cfg)
    assert not subs.callback_allowed("https://hooks.acme.example/", "other", cfg)


def load_config_text(text: str) -> Any:
    import msgspec

    from gatewayd.config import Config

    return msgspec.toml.decode(text.encode(), type=Config)


def test_kannel_template() -> None:
    event = {"event_id": "e1-0", "kind": "delivered", "message_id": "m 1", "to": "+86138****8000",
             "carrier": "cmcc", "carrier_id": "ab12", "at": 1_700_000_000.5, "err": "000"}
    url = bodies.kannel_url("http://x/dlr?s=%d&id=%I&to=%p&c=%i&f=%F&t=%T&a=%A&q=%%&z=%z",
                            event)
    assert url == ("http://x/dlr?s=1&id=m%201&to=%2B86138%2A%2A%2A%2A8000&c=cmcc&f=ab12"
                   "&t=1700000000&a=delivered%3A000&q=%&z=%z")
    assert bodies.kannel_value({"kind": "submitted"}, "d") == "8"
    assert bodies.kannel_value({"kind": "rejected"}, "d") == "16"
    mo = {"kind": "mo", "from": "+8613800138000", "to": "10690001", "text": "TD now"}
    assert bodies.kannel_value(mo, "p") == "+8613800138000"
    assert bodies.kannel_value(mo, "P") == "10690001"
    assert bodies.kannel_value(mo, "k") == "TD"


async def test_callback_url_within_the_tenants_prefixes(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """A message's own callback_url gets its events (submitted, then the final one from
    the receipt) when its tenant may name it; another tenant's is refused."""
    recv = Receiver()
    await recv.start()
    try:
        sim = await smsc(receipt_delay_s=0.05)
        extra = (f'callback_prefixes = {{ acme = ["{recv.url("/cb/")}"] }}\n'
                 f'callback_secret_env = "GW_TEST_CB_SECRET"\n')
        os.environ["GW_TEST_CB_SECRET"] = recv.secret
        cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port,
                                extra=webhooks_toml(recv, endpoints="", extra=extra)))
        async with running_daemon(cfg) as daemon:
            assert daemon.webhooks is not None
            await asyncio.wait_for(daemon.webhooks.ready.wait(), 10)
            ok = await send(redis_url, cfg, 5, prefix="86134", tenant="acme",
                            callback_url=recv.url("/cb/acme?app=1"))
            no = await send(redis_url, cfg, 3, prefix="86135", tenant="other",
                            callback_url=recv.url("/cb/other"))
            await wait_final(redis, keys, ok + no)
            assert await wait_for(lambda: complete(recv, "/cb/acme", ok), 30)
            assert await wait_for(lambda: not daemon.webhooks or not daemon.webhooks.callbacks)
        assert recv.requests["/cb/other"] == 0
        assert recv.bad_signatures == 0
        assert not any("callback" in e for e in recv.events["/cb/acme"])
        assert await redis.hlen(keys.webhook_callbacks) == 0  # forgotten at the final event
    finally:
        os.environ.pop("GW_TEST_CB_SECRET", None)
        await recv.stop()


async def test_a_sender_stopping_cleanly_gives_its_lease_back(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    """A sender that stops cleanly (a `--burst` daemon, a restart) deletes its lease
    rather than leaving it to expire, so the next sender starts reading at once; a lease
    another process holds is never deleted by a sender that lost it."""
    from gatewayd.store.connection import connect, load_script
    from gatewayd.webhooks.runner import WebhookRunner

    recv = Receiver()
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=1, extra=webhooks_toml(
        recv, endpoints=endpoint_toml(recv, "a", "/a")).replace(
            "enabled = true", "enabled = false")))
    lease = keys.lease("webhooks")
    client = connect(redis_url)
    try:
        for _ in range(2):  # the second sender finds the lease free, as the first left it
            runner = WebhookRunner(client, keys, cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            await asyncio.wait_for(runner.ready.wait(), 10)
            assert await redis.get(lease) == runner._token
            stop.set()
            await asyncio.wait_for(task, 10)
            assert not await redis.exists(lease)
        release = load_script(client, "lease_release")
        await redis.set(lease, "another-sender", px=5000)
        assert await release(keys=[lease], args=["not-the-holder"]) == 0
        assert await redis.get(lease) == "another-sender"
    finally:
        await client.aclose()
