"""Config reload (issue 21 item 6): SIGHUP and POST /admin/reload apply [[carrier]],
[routing] and [http] changes live, lose no message in flight, keep the running
configuration when the file is broken, and name the keys that need a restart.

Real Redis, real SMSC simulators over TCP, a real daemon with its HTTP API."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.daemon import Daemon
from gatewayd.http.server import hash_key
from gatewayd.model import FINAL_STATES
from gatewayd.ops.metrics import REGISTRY
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, events_by_id, load, running_daemon, wait_final, write_config


def carrier(name: str, port: int) -> str:
    return f"""
[[carrier]]
name = "{name}"
host = "127.0.0.1"
port = {port}
system_id = "demo"
password = "demo"
enquire_link_s = 5.0
response_timeout_s = 5.0
reconnect_min_s = 0.1
reconnect_max_s = 1.0
auth_retry_s = 1.0
source_addr = "10690002"
mo_country_code = "86"
"""


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("gatewayd_config_reloads_total", {"result": result}) or 0.0


async def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Wait for a condition (bounded); the caller asserts it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return cond()


async def post_reload(daemon: Daemon, key: str = "") -> tuple[int, dict[str, Any]]:
    assert daemon.http is not None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{daemon.http.port}/admin/reload", headers=headers) as r:
        return r.status, await r.json()


async def send(redis: aioredis.Redis, keys: Keys, msgs: dict[str, str]) -> None:
    for msg_id, to in msgs.items():
        await redis.xadd(keys.queue("transactional"), {"to": to, "text": msg_id, "id": msg_id})


async def test_sighup_adds_a_carrier_and_its_route_takes_traffic(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port)
    async with running_daemon(load(path)) as daemon:
        before = reloads("ok")
        write_config(tmp_path, redis_url=redis_url, sim_port=a.port,
                     extra_carrier=carrier("b", b.port),
                     extra='[routing]\nprefixes = { "86139" = ["b", "sim"] }\n')
        os.kill(os.getpid(), signal.SIGHUP)  # the daemon's own handler, on this loop
        assert await until(lambda: reloads("ok") == before + 1)
        assert b.bound_count() == 1
        assert [c.name for c in daemon.cfg.carrier] == ["sim", "b"]
        await send(redis, keys, {"to-b": "+8613900000001", "to-a": "+8613800000001"})
        rec = await wait_final(redis, keys, ["to-b", "to-a"], timeout_s=20)
    assert {i: r["state"] for i, r in rec.items()} == {"to-b": "delivered", "to-a": "delivered"}
    assert rec["to-b"]["carrier"] == "b"
    assert b.texts_to("8613900000001") == ["to-b"]
    assert a.texts_to("8613800000001") == ["to-a"] and not a.texts_to("8613900000001")


async def test_a_carrier_moved_under_load_loses_no_message(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """The carrier's host/port changes while messages flow: the new binds come up, then
    the old ones stop taking submits, get their answers and receipts, and unbind. Every
    message ends in exactly one final state, each one submitted once."""
    # Slow answers: submits are outstanding on the old binds when they are replaced.
    old = await smsc(receipt_delay_s=0.05, response_delay_s=0.05)
    new = await smsc(receipt_delay_s=0.05)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=old.port, http=True,
                        tps=400.0)
    n = 1500
    ids = {f"m-{i}": f"+86138{i:08d}" for i in range(n)}
    async with running_daemon(load(path)) as daemon:
        await send(redis, keys, ids)
        assert await until(lambda: len(old.submissions) >= 200)
        # Another SMSC account name too: receipts of messages recorded under the old
        # one are still correlated (the carrier block ends where extra_carrier starts).
        write_config(tmp_path, redis_url=redis_url, sim_port=new.port, http=True, tps=400.0,
                     extra_carrier='account = "moved"\n')
        status, body = await post_reload(daemon)
        assert status == 200, body
        assert body["carriers"]["changed"] == ["sim"]
        # The old binds have drained and unbound by the time the reload answers.
        assert await until(lambda: old.bound_count() == 0)
        assert new.bound_count() == 1
        rec = await wait_final(redis, keys, list(ids), timeout_s=60)
        events = await events_by_id(redis, keys)
    on_old = {s.destination for s in old.submissions if s.status == 0}
    on_new = {s.destination for s in new.submissions if s.status == 0}
    assert on_old and on_new
    assert len(old.submissions) + len(new.submissions) == n  # none sent twice
    assert on_old | on_new == {to.lstrip("+") for to in ids.values()}
    states = {i: r.get("state") for i, r in rec.items()}
    assert set(states.values()) == {"delivered"}  # old binds' receipts applied too
    for i in ids:
        finals = [e for e in events[i] if e.get("state") in FINAL_STATES]
        assert len(finals) == 1, (i, events[i])


async def test_a_removed_carrier_drains_and_unbinds(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True,
                        extra_carrier=carrier("b", b.port),
                        extra='[routing]\ndefault = ["b", "sim"]\n')
    async with running_daemon(load(path)) as daemon:
        await send(redis, keys, {"first": "+8613800000001"})
        await wait_final(redis, keys, ["first"], timeout_s=20)
        assert b.texts_to("8613800000001") == ["first"]
        write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True)
        status, body = await post_reload(daemon)
        assert status == 200, body
        assert body["carriers"]["removed"] == ["b"] and body["routing"] is True
        assert await until(lambda: b.bound_count() == 0)
        assert daemon.pool is not None
        assert {s.carrier for s in daemon.pool.snapshot()} == {"sim"}
        await send(redis, keys, {"second": "+8613800000002"})
        rec = await wait_final(redis, keys, ["first", "second"], timeout_s=20)
    assert rec["first"]["state"] == rec["second"]["state"] == "delivered"
    assert a.texts_to("8613800000002") == ["second"]


async def test_a_broken_file_keeps_the_running_config_and_says_why(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True)
    good = path.read_text(encoding="utf-8")
    async with running_daemon(load(path)) as daemon:
        running = daemon.cfg
        errors = reloads("error")
        # A key check-config refuses (a route to a carrier that does not exist).
        path.write_text(good + '\n[routing]\ndefault = ["nowhere"]\n', encoding="utf-8")
        status, body = await post_reload(daemon)
        assert status == 422
        assert body["ok"] is False and "routing.default" in body["message"]
        assert "nowhere" in body["error"]["message"]
        # Not TOML at all, by SIGHUP: the log says why.
        path.write_text(good + "\n[[carrier]\n", encoding="utf-8")
        with caplog.at_level(logging.ERROR, logger="gatewayd.daemon"):
            os.kill(os.getpid(), signal.SIGHUP)
            assert await until(lambda: reloads("error") == errors + 2)
        assert any("running configuration stays" in r.getMessage() and str(path)
                   in r.getMessage() for r in caplog.records)
        assert daemon.cfg is running
        await send(redis, keys, {"still": "+8613800000001"})
        rec = await wait_final(redis, keys, ["still"], timeout_s=20)
    assert rec["still"]["state"] == "delivered"


async def test_a_routing_change_takes_effect(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    both = carrier("b", b.port)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True,
                        extra_carrier=both, extra='[routing]\ndefault = ["sim", "b"]\n')
    async with running_daemon(load(path)) as daemon:
        await send(redis, keys, {"r-1": "+8613800000001"})
        await wait_final(redis, keys, ["r-1"], timeout_s=20)
        write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True,
                     extra_carrier=both, extra='[routing]\ndefault = ["b", "sim"]\n')
        status, body = await post_reload(daemon)
        assert status == 200 and body["routing"] is True, body
        assert body["carriers"] == {"added": [], "removed": [], "changed": [], "retuned": []}
        await send(redis, keys, {"r-2": "+8613800000002"})
        rec = await wait_final(redis, keys, ["r-1", "r-2"], timeout_s=20)
    assert (rec["r-1"]["carrier"], rec["r-2"]["carrier"]) == ("sim", "b")
    assert b.texts_to("8613800000002") == ["r-2"] and not a.texts_to("8613800000002")


async def test_http_keys_apply_live_and_the_listen_address_needs_a_restart(
    tmp_path: Path, redis_url: str, smsc: Smsc
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True)
    base = path.read_text(encoding="utf-8")
    key = "reload-test-admin-key"
    async with running_daemon(load(path)) as daemon:
        assert daemon.http is not None
        port = daemon.http.port
        url = f"http://127.0.0.1:{port}"
        path.write_text(base.replace(
            'listen = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\nmax_body_bytes = 300\napi_keys = ["{hash_key(key)}"]'),
            encoding="utf-8")
        status, body = await post_reload(daemon)  # still open: no keys until now
        assert status == 200, body
        assert body["http"] == ["api_keys", "max_body_bytes"]
        assert body["restart_needed"] == []
        msg = {"to": "+8613800000001", "text": "x" * 400}
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/messages", json=msg) as r:
                assert r.status == 401  # keys now configured: none presented
            async with http.post(f"{url}/v1/messages", json=msg, headers=auth) as r:
                assert r.status == 413  # the new body limit
            async with http.post(f"{url}/v1/messages", headers=auth,
                                 json={"to": "+8613800000001", "text": "ok"}) as r:
                assert r.status == 202
        # A new listen address and Redis prefix: reported, not applied.
        path.write_text(path.read_text(encoding="utf-8").replace(
            'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"').replace(
            "[redis]\n", '[redis]\nprefix = "other:"\n'), encoding="utf-8")
        status, body = await post_reload(daemon, key)
        assert status == 200, body
        assert body["restart_needed"] == ["redis.prefix", "http.listen"]
        assert "needs a restart: redis.prefix, http.listen" in body["message"]
        assert daemon.cfg.http.listen == "127.0.0.1:0"
        assert daemon.cfg.redis.prefix == "gw:"
        assert daemon.http.port == port


async def test_operator_overrides_survive_a_reload_and_tps_changes_in_place(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    moved = await smsc(receipt_delay_s=0.01)
    c = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True,
                        tps=500.0, extra_carrier=carrier("b", b.port))
    async with running_daemon(load(path)) as daemon, aiohttp.ClientSession() as http:
        pool = daemon.pool
        assert pool is not None and daemon.http is not None
        api = f"http://127.0.0.1:{daemon.http.port}/admin/carriers"
        # The operator's overrides (gatewayd carrier tune/suspend), applied by the watcher.
        async with http.patch(f"{api}/sim", json={"tps": 50}) as r:
            assert r.status == 200
        async with http.post(f"{api}/b/suspend") as r:
            assert r.status == 200
        assert await until(lambda: pool.effective("sim") == (50.0, 100) and pool.suspended("b"))
        links = pool.links("sim")
        # "sim": only its tps changes (re-tuned in place); "b": a new port (re-bound);
        # "c": new.
        write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True, tps=800.0,
                     extra_carrier=carrier("b", moved.port) + carrier("c", c.port))
        status, body = await post_reload(daemon)
        assert status == 200, body
        assert body["carriers"] == {"added": ["c"], "removed": [], "changed": ["b"],
                                    "retuned": ["sim"]}
        assert pool.links("sim") == links  # the same binds, never dropped
        assert pool.effective("sim") == (50.0, 100)  # the override wins over the file
        assert pool.suspended("b")  # on the new engine too
        assert await until(lambda: b.bound_count() == 0)
        assert moved.bound_count() == 1 and c.bound_count() == 1
        async with http.get(f"{api}/c") as r:  # the admin API knows the added carrier
            assert r.status == 200
        async with http.patch(f"{api}/sim", json={"tps": None}) as r:
            assert r.status == 200  # back to the (reloaded) config's tps
        assert await until(lambda: pool.effective("sim") == (800.0, 100))
        await send(redis, keys, {"o-1": "+8613800000001"})
        rec = await wait_final(redis, keys, ["o-1"], timeout_s=20)
    assert rec["o-1"]["carrier"] == "sim"
    assert not moved.submissions


def test_the_plan_names_each_change_and_adopts_only_live_keys(tmp_path: Path) -> None:
    """control.reload.diff/adopt on two real files: which carriers are re-tuned in place
    or rebuilt, which keys apply live, which need a restart (in file order)."""
    from gatewayd.control.reload import adopt, diff

    url = "redis://127.0.0.1:6390/0"
    old = load(write_config(tmp_path, redis_url=url, sim_port=2775, http=True,
                            extra_carrier=carrier("b", 2776) + carrier("gone", 2777)))
    changed_b = carrier("b", 2776).replace('password = "demo"', 'password = "other"')
    new_text = write_config(tmp_path, redis_url=url, sim_port=2775, http=True, tps=5.0,
                            extra_carrier=changed_b + carrier("c", 2778),
                            extra='[routing]\ndefault = ["c"]\n[queue]\nread_batch = 32\n',
                            name="new.toml").read_text(encoding="utf-8")
    new_text = new_text.replace('listen = "127.0.0.1:0"',
                                'listen = "127.0.0.1:9"\nbody_timeout_s = 3.0')
    (tmp_path / "new.toml").write_text(new_text.replace(
        'log_level = "warning"', 'log_level = "debug"'), encoding="utf-8")
    new = load(tmp_path / "new.toml")
    plan = diff(old, new)
    assert (plan.added, plan.removed, plan.changed, plan.retuned) == (
        ("c",), ("gone",), ("b",), ("sim",))
    assert plan.routing and plan.http == ("body_timeout_s",)
    assert plan.restart == ("daemon.log_level", "queue.read_batch", "http.listen")
    running = adopt(old, new)
    assert [c.name for c in running.carrier] == ["sim", "b", "c"]
    assert running.routing.default == ["c"] and running.http.body_timeout_s == 3.0
    assert running.http.listen == old.http.listen
    assert running.queue.read_batch == old.queue.read_batch
    assert running.daemon.log_level == "warning"
    assert diff(old, old) == type(plan)()


def bind_info(carrier_name: str) -> set[tuple[str, str, str]]:
    """The (bind, protocol, version) info series exported for a carrier."""
    return {(s.labels["bind"], s.labels["protocol"], s.labels["version"])
            for m in REGISTRY.collect() if m.name == "gatewayd_bind_info"
            for s in m.samples if s.labels["carrier"] == carrier_name}


async def test_a_carrier_switched_from_smpp_to_cmpp_exports_only_its_new_protocol(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    """A reload moves a carrier from an SMSC (SMPP) to an ISMG (CMPP 3.0) under one
    name: its gatewayd_bind_info series says cmpp only (the smpp one stayed exported
    before, so a join on (carrier, bind) matched two protocols), and it delivers. (A
    name of its own: the registry is the process's, other tests' binds are in it.)"""
    from tests.cmpp_helpers import ismg, write_cmpp_config

    sim = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port)
    path.write_text(path.read_text().replace('name = "sim"', 'name = "switched"'))
    async with ismg(receipt_delay_s=0.01) as gw, running_daemon(load(path)):
        assert await until(lambda: sim.bound_count() == 1)
        assert bind_info("switched") == {("0", "smpp", "3.4")}
        before = reloads("ok")
        cmpp = write_cmpp_config(tmp_path, redis_url=redis_url, port=gw.port)
        cmpp.write_text(cmpp.read_text().replace('name = "cmcc"', 'name = "switched"'))
        os.kill(os.getpid(), signal.SIGHUP)
        assert await until(lambda: reloads("ok") == before + 1)
        assert await until(lambda: sim.bound_count() == 0)
        assert bind_info("switched") == {("0", "cmpp", "3.0")}
        await send(redis, keys, {"over-cmpp": "+8613800000009"})
        rec = await wait_final(redis, keys, ["over-cmpp"], timeout_s=20)
    assert rec["over-cmpp"]["state"] == "delivered"


async def test_a_reload_that_cannot_be_applied_keeps_the_running_config_and_says_why(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A file that passes the checks but whose carriers cannot be set up (an engine
    that fails to build: injected, as a valid file cannot provoke one): 409 with the
    reason, never 500; the metric and the log say so; the running configuration
    (carriers, routing, policy, [http] keys) stays in force and keeps sending."""
    import gatewayd.carrier.pool as pool_module

    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True)
    async with running_daemon(load(path)) as daemon:
        assert daemon.http is not None and daemon.pool is not None
        running, engine, hashes = daemon.cfg, daemon.policy(), list(daemon.http._hashes)
        errors = reloads("error")
        real = pool_module.engine_for

        def broken(c: Any, *args: Any) -> Any:
            if c.name == "b":
                raise OSError(24, "Too many open files")
            return real(c, *args)

        monkeypatch.setattr(pool_module, "engine_for", broken)
        admin = "reload-apply-admin-key"
        write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True,
                     extra_carrier=carrier("b", b.port),
                     extra='[routing]\ndefault = ["b", "sim"]\n')
        text = path.read_text(encoding="utf-8").replace(
            "[http]", f'[http]\napi_keys = ["{hash_key(admin)}"]', 1)
        path.write_text(text, encoding="utf-8")
        with caplog.at_level(logging.ERROR, logger="gatewayd.daemon"):
            status, body = await post_reload(daemon)
        assert status == 409, body
        assert body["ok"] is False and body["error"]["code"] == "reload_not_applied"
        assert "Too many open files" in body["message"] and "b" in body["message"]
        assert "running configuration stays" in body["message"]
        assert reloads("error") == errors + 1
        assert any("reload not applied" in r.getMessage() for r in caplog.records)
        # Nothing of the new file is in force: no key (the listener stays open), the
        # old routes, carriers and policy.
        assert daemon.cfg is running and daemon.policy() is engine
        assert daemon.http._hashes == hashes
        assert sorted(daemon.pool._engines) == ["sim"]
        await send(redis, keys, {"kept": "+8613800000001"})
        rec = await wait_final(redis, keys, ["kept"], timeout_s=20)
        # Once the fault is gone the same file applies.
        monkeypatch.setattr(pool_module, "engine_for", real)
        status, body = await post_reload(daemon, admin)
        assert status == 200 and body["carriers"]["added"] == ["b"], body
    assert rec["kept"]["state"] == "delivered" and rec["kept"]["carrier"] == "sim"
    assert not b.texts_to("8613800000001")


async def test_a_failure_after_the_carriers_switched_says_the_new_config_runs(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Draining the old binds fails (injected, after they are drained): the carriers
    already run the new config, so the daemon adopts it and answers 409
    reload_incomplete naming the failure and what was applied, never 500."""
    import gatewayd.carrier.pool as pool_module

    a = await smsc(receipt_delay_s=0.01)
    b = await smsc(receipt_delay_s=0.01)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=a.port, http=True)
    async with running_daemon(load(path)) as daemon:
        errors = reloads("error")
        real = pool_module.CarrierPool._retire

        async def retire(self: Any, engine: Any, links: Any) -> None:
            await real(self, engine, links)
            raise RuntimeError("unbind went wrong")

        monkeypatch.setattr(pool_module.CarrierPool, "_retire", retire)
        write_config(tmp_path, redis_url=redis_url, sim_port=b.port, http=True)
        status, body = await post_reload(daemon)
        assert status == 409, body
        assert body["error"]["code"] == "reload_incomplete"
        assert "unbind went wrong" in body["message"] and "carriers changed: sim" in body["message"]
        assert body["carriers"]["changed"] == ["sim"]
        assert reloads("error") == errors + 1
        assert daemon.cfg.carrier[0].port == b.port
        await send(redis, keys, {"moved": "+8613800000002"})
        rec = await wait_final(redis, keys, ["moved"], timeout_s=20)
    assert rec["moved"]["state"] == "delivered"
    assert b.texts_to("8613800000002") == ["moved"] and not a.texts_to("8613800000002")
