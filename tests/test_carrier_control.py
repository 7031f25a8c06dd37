"""Live control of carriers (issue 21 item 5): two `gatewayd run` daemons on one Redis,
two SMSC simulators over TCP, the admin API over HTTP and `gatewayd carrier ...`.

- Suspending a carrier stops both daemons submitting to it: traffic fails over to the
  next carrier of the routing chain, receipts of what it already took and MO still come
  in on its binds; /readyz/carriers and the metrics say "suspended"; resuming brings the
  traffic back to it.
- A tps change reaches the carrier account's bucket shared in Redis (its cap), a window
  change every daemon's binds; back to the config's values with null.
- Restarting a carrier's binds while messages flow: every daemon's binds come back, and
  every message ends in exactly one final state, delivered.
- The override lives in Redis: a daemon started after the suspension never submits to
  the suspended carrier.

Every wait is for a condition, with a generous deadline: nothing is timed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.client import Client
from gatewayd.config import Config, QueueConfig, load_config
from gatewayd.control import admin
from gatewayd.http.server import hash_key
from gatewayd.model import FINAL_STATES
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.keys import Keys
from tests.e2e_helpers import NO_POLICY, events_by_id
from tests.scale_helpers import DaemonProc, spawn, stop_all

KEY = "admin-key-for-carrier-control"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, name: str, *, redis_url: str, ports: tuple[int, int],
            http_port: int, tps_a: float = 1000.0) -> Path:
    digit = name[-1]
    carriers = ""
    for carrier, port, tps in (("a", ports[0], tps_a), ("b", ports[1], 1000.0)):
        carriers += f"""
[[carrier]]
name = "{carrier}"
host = "127.0.0.1"
port = {port}
system_id = "demo"
password = "demo"
window = 100
tps = {tps}
enquire_link_s = 5.0
response_timeout_s = 5.0
reconnect_min_s = 0.1
reconnect_max_s = 1.0
auth_retry_s = 1.0
source_addr = "1069{digit}"
mo_country_code = "86"
"""
    text = f"""
[daemon]
state_dir = "{tmp_path / ('state-' + name)}"
log_level = "warning"
consumer = "{name}"
shutdown_timeout_s = 5.0
housekeeping_interval_s = 0.2

[redis]
url = "{redis_url}"

[http]
enabled = true
listen = "127.0.0.1:{http_port}"
api_keys = ["{hash_key(KEY)}"]

[policy]
file = "{NO_POLICY}"

[queue]
read_batch = 2
dispatch_workers = 1
reclaim_idle_s = 1.0

[routing]
default = ["a", "b"]
prefixes = {{ "861399" = ["a"] }}
{carriers}"""
    p = tmp_path / f"{name}.toml"
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
    return p


async def wait_until(cond: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


@dataclass
class Rig:
    redis: aioredis.Redis
    keys: Keys
    cfg: Config  # daemon d1's (both name the same carriers)
    config_path: Path
    sims: dict[str, SmscSimulator]
    daemons: list[DaemonProc]
    http: dict[str, str]  # daemon -> base URL
    session: aiohttp.ClientSession
    redis_url: str

    async def carrier(self, name: str) -> dict[str, Any]:
        return await admin.show(self.cfg, self.redis, self.keys, name)

    async def applied_everywhere(self, name: str, **want: Any) -> bool:
        """Every daemon published that it applied these settings to ``name``."""
        view = await self.carrier(name)
        daemons = view["daemons"]
        return set(daemons) == set(self.http) and all(
            all(d.get(k) == v for k, v in want.items()) for d in daemons.values())

    async def api(self, method: str, path: str, body: Any = None, *, daemon: str = "d1",
                  key: str = KEY) -> tuple[int, Any]:
        async with self.session.request(
                method, self.http[daemon] + path, json=body,
                headers={"Authorization": f"Bearer {key}"}) as r:
            return r.status, await r.json(content_type=None)

    async def send(self, n: int, tag: str) -> list[str]:
        async with Client(self.redis_url, queue=QueueConfig()) as client:
            return [i for i, _ in await client.send(
                [{"to": f"+86139{tag}{k:05d}", "text": f"{tag} {k}",
                  "category": "transactional"} for k in range(n)])]

    async def finals(self, ids: list[str]) -> dict[str, list[str]]:
        events = await events_by_id(self.redis, self.keys)
        return {i: [e["state"] for e in events.get(i, []) if e["state"] in FINAL_STATES]
                for i in ids}

    async def all_final(self, ids: list[str]) -> bool:
        return all(f for f in (await self.finals(ids)).values())

    async def expect_delivered_once(self, ids: list[str]) -> None:
        await wait_until(lambda: self.all_final(ids), f"{len(ids)} messages final", 90)
        finals = await self.finals(ids)
        assert all(f == ["delivered"] for f in finals.values()), \
            [(i, f) for i, f in finals.items() if f != ["delivered"]][:5]


def submitted_to(sim: SmscSimulator, tag: str) -> collections.Counter[str]:
    """Submissions of a phase's messages by the sending daemon (its source address)."""
    return collections.Counter(s.source for s in sim.submissions
                               if s.destination.lstrip("+").startswith(f"86139{tag}"))


@pytest.fixture
async def rig(tmp_path: Path, redis_url: str, redis: aioredis.Redis,
              keys: Keys) -> AsyncIterator[Rig]:
    sims = {"a": SmscSimulator(SimSettings(port=0, receipt_delay_s=2.0, keep_submissions=-1)),
            "b": SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, keep_submissions=-1))}
    ports = (await sims["a"].start(), await sims["b"].start())
    procs: list[DaemonProc] = []
    http: dict[str, str] = {}
    paths = {}
    try:
        for name in ("d1", "d2"):
            port = _free_port()
            paths[name] = _config(tmp_path, name, redis_url=redis_url, ports=ports,
                                  http_port=port)
            procs.append(await spawn(paths[name], name, tmp_path, burst=False))
            http[name] = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            r = Rig(redis, keys, load_config(paths["d1"]), paths["d1"], sims, procs, http,
                    session, redis_url)

            async def all_bound() -> bool:
                for c in ("a", "b"):
                    view = await r.carrier(c)
                    if {b["daemon"] for b in view["binds"] if b["state"] == "bound"} != set(http):
                        return False
                return True
            try:
                await wait_until(all_bound, "both daemons bound to both carriers")
            except AssertionError:
                raise AssertionError("\n".join(p.log_text()[-2000:] for p in procs)) from None
            yield r
    finally:
        await stop_all(procs)
        for sim in sims.values():
            await sim.stop()


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "carrier", args[0], "-c", str(config), *args[1:],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_suspend_fails_over_on_every_daemon_receipts_and_mo_flow_resume_restores(
        rig: Rig) -> None:
    sim_a, sim_b = rig.sims["a"], rig.sims["b"]
    # Before: the chain's first carrier takes everything; its receipts come in 2 s later.
    before = await rig.send(20, "0")
    await wait_until(lambda: _async(sum(submitted_to(sim_a, "0").values()) == 20),
                     "the first messages submitted to a")

    rc, out, err = await cli(rig.config_path, "suspend", "a")
    assert rc == 0, err
    assert json.loads(out)["suspended"] is True
    await wait_until(lambda: rig.applied_everywhere("a", suspended=True),
                     "both daemons applied the suspension")
    taken_by_a = len(sim_a.submissions)
    rc, out, err = await cli(rig.config_path, "list")
    assert rc == 0, err
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert rows["a"]["suspended"] is True and rows["b"]["suspended"] is False
    assert {b["daemon"] for b in rows["a"]["binds"] if b["state"] == "bound"} == {"d1", "d2"}

    status, ready = await rig.api("GET", "/readyz/carriers")
    assert status == 200 and ready["carriers"] == {"a": "suspended", "b": "bound"}
    async with rig.session.get(rig.http["d2"] + "/metrics") as resp:
        text = await resp.text()
    assert 'gatewayd_carrier_suspended{carrier="a"} 1.0' in text
    assert 'gatewayd_carrier_suspended{carrier="b"} 0.0' in text

    # MO still comes in on the suspended carrier's binds.
    await sim_a.inject_mo("8613700000001", "10691", "still listening", wait=True)
    rows = await rig.redis.xrange(rig.keys.inbound)
    assert any(f.get("text") == "still listening" for _, f in rows)

    # New traffic fails over to b, from both daemons; a gets none.
    during = await rig.send(200, "1")
    await rig.expect_delivered_once(during)
    assert len(sim_a.submissions) == taken_by_a
    shares = submitted_to(sim_b, "1")
    assert sum(shares.values()) == 200 and set(shares) == {"10691", "10692"}, shares
    # The receipts for what a took before the suspension came in on its binds.
    await rig.expect_delivered_once(before)

    # Resume through the admin API: a takes the chain's traffic again.
    status, body = await rig.api("POST", "/admin/carriers/a/resume")
    assert status == 200 and body["suspended"] is False
    await wait_until(lambda: rig.applied_everywhere("a", suspended=False),
                     "both daemons resumed a")
    after = await rig.send(60, "2")
    await rig.expect_delivered_once(after)
    assert sum(submitted_to(sim_a, "2").values()) == 60
    assert not submitted_to(sim_b, "2")
    status, ready = await rig.api("GET", "/readyz/carriers")
    assert ready["carriers"] == {"a": "bound", "b": "bound"}


async def test_a_suspended_chain_waits_then_goes_on_resume(rig: Rig) -> None:
    """Numbers routed to a alone (routing.prefixes) wait while a is suspended: deferred
    as back-pressure (no attempt used), never sent elsewhere; resumed, they go out."""
    status, _ = await rig.api("POST", "/admin/carriers/a/suspend", daemon="d2")
    assert status == 200
    await wait_until(lambda: rig.applied_everywhere("a", suspended=True),
                     "a suspended everywhere")
    ids = await rig.send(10, "9")  # +861399...: routing.prefixes "861399" = ["a"]

    async def deferred() -> bool:
        events = await events_by_id(rig.redis, rig.keys)
        return all(any(e["state"] == "deferred" and "CARRIER_SUSPENDED" in e.get("reason", "")
                       for e in events.get(i, [])) for i in ids)
    await wait_until(deferred, "every message deferred while its chain is suspended")
    assert not submitted_to(rig.sims["a"], "9") and not submitted_to(rig.sims["b"], "9")
    assert not any((await rig.finals(ids)).values())
    records = [await rig.redis.hgetall(rig.keys.status(i)) for i in ids]
    assert all(r.get("attempts", "0") == "0" for r in records), records[:2]
    status, _ = await rig.api("POST", "/admin/carriers/a/resume")
    assert status == 200
    await rig.expect_delivered_once(ids)
    assert sum(submitted_to(rig.sims["a"], "9").values()) == 10


async def test_tps_and_window_reach_every_daemon_and_the_shared_bucket(rig: Rig) -> None:
    bucket = rig.keys.token_bucket("carrier:a")
    status, body = await rig.api("PATCH", "/admin/carriers/a", {"tps": 40, "window": 3})
    assert status == 200, body
    assert (body["tps"], body["window"]) == (40.0, 3)
    assert body["override"] == {"suspended": False, "tps": 40.0, "window": 3, "restart": 0}
    await wait_until(lambda: rig.applied_everywhere("a", tps=40.0, window=3),
                     "both daemons applied tps 40, window 3")

    async def binds_windowed(window: int) -> bool:
        binds = (await rig.carrier("a"))["binds"]
        return len(binds) == 2 and all(b["window"] == window for b in binds)
    await wait_until(lambda: binds_windowed(3), "every bind of a at window 3")

    ids = await rig.send(30, "4")
    await rig.expect_delivered_once(ids)
    cap, rate = await rig.redis.hmget(bucket, "c", "r")
    assert float(cap) == 40.0 and float(rate) <= 40.0

    # null: the config's values again; the shared rate, at the old cap, takes the new one.
    status, body = await rig.api("PATCH", "/admin/carriers/a", {"tps": None, "window": None})
    assert status == 200 and (body["tps"], body["window"]) == (1000.0, 100)
    await wait_until(lambda: rig.applied_everywhere("a", tps=1000.0, window=100),
                     "both daemons back to the config's tps and window")
    await wait_until(lambda: binds_windowed(100), "every bind of a at window 100")
    ids = await rig.send(30, "5")
    await rig.expect_delivered_once(ids)
    cap, rate = await rig.redis.hmget(bucket, "c", "r")
    assert float(cap) == 1000.0 == float(rate)

    # Refusals: each its own 4xx, nothing written.
    for bad in ({"tps": 0}, {"tps": "fast"}, {"window": 0}, {"window": 1.5}, {"speed": 1},
                {}, [1]):
        status, body = await rig.api("PATCH", "/admin/carriers/a", bad)
        assert status == 422, (bad, body)
    status, _ = await rig.api("POST", "/admin/carriers/nosuch/suspend")
    assert status == 404
    status, _ = await rig.api("POST", "/admin/carriers/a/suspend", key="wrong")
    assert status == 401
    assert (await rig.carrier("a"))["override"] == {
        "suspended": False, "tps": None, "window": None, "restart": 0}
    rc, _, err = await cli(rig.config_path, "tune", "a", "--window", "0")
    assert rc == 2 and "window" in err
    rc, _, err = await cli(rig.config_path, "suspend", "nosuch")
    assert rc == 1 and "nosuch" in err
    # The admin role only: an account's key (the sending role) is refused.
    status, made = await rig.api("POST", "/admin/accounts", {"tenant": "acme"})
    assert status == 201, made
    status, _ = await rig.api("POST", "/admin/carriers/a/suspend", key=made["key"]["key"])
    assert status == 403
    # A value written into Redis by hand that no override can take is ignored (the
    # config's), and does not stop the others applying.
    await rig.redis.hset(rig.keys.carrier_control, mapping={"a:tps": "fast", "a:window": "-1"})
    assert (await rig.carrier("a"))["override"]["tps"] is None
    status, _ = await rig.api("PATCH", "/admin/carriers/b", {"window": 9})
    assert status == 200
    await wait_until(lambda: rig.applied_everywhere("b", window=9), "b at window 9")
    assert (await rig.carrier("a"))["daemons"]["d2"]["tps"] == 1000.0


async def test_restart_brings_binds_back_and_loses_nothing(rig: Rig) -> None:
    rc, _, err = await cli(rig.config_path, "tune", "a", "--tps", "150")
    assert rc == 0, err
    await wait_until(lambda: rig.applied_everywhere("a", tps=150.0), "tps 150 everywhere")
    ids = await rig.send(400, "6")
    await wait_until(lambda: _async(sum(submitted_to(rig.sims["a"], "6").values()) >= 40),
                     "traffic flowing to a")
    before = {(b["daemon"], b["index"]): b["reconnects"]
              for b in (await rig.carrier("a"))["binds"]}
    rc, out, err = await cli(rig.config_path, "restart", "a")
    assert rc == 0, err
    assert json.loads(out)["override"]["restart"] == 1

    async def reconnected() -> bool:
        binds = (await rig.carrier("a"))["binds"]
        return len(binds) == 2 and all(
            b["reconnects"] > before[(b["daemon"], b["index"])] and b["state"] == "bound"
            for b in binds)
    await wait_until(reconnected, "every daemon's bind of a restarted and bound again")
    assert (await rig.carrier("a"))["daemons"]["d1"]["restart"] == 1
    await rig.expect_delivered_once(ids)


async def test_the_override_survives_a_daemon_restart(
        tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys) -> None:
    """Suspended while no daemon runs: a daemon started afterwards never submits to it."""
    sims = [SmscSimulator(SimSettings(port=0, receipt_delay_s=0.05, keep_submissions=-1))
            for _ in range(2)]
    ports = (await sims[0].start(), await sims[1].start())
    path = _config(tmp_path, "d1", redis_url=redis_url, ports=ports, http_port=_free_port())
    procs: list[DaemonProc] = []
    try:
        rc, out, err = await cli(path, "suspend", "a")
        assert rc == 0, err
        assert json.loads(out)["daemons"] == {}
        procs.append(await spawn(path, "d1", tmp_path, burst=False))
        cfg = load_config(path)
        async with Client(redis_url, queue=QueueConfig()) as client:
            ids = [i for i, _ in await client.send(
                [{"to": f"+8613912{k:05d}", "text": f"late {k}", "category": "transactional"}
                 for k in range(30)])]

        async def final() -> bool:
            events = await events_by_id(redis, keys)
            return all(any(e["state"] in FINAL_STATES for e in events.get(i, [])) for i in ids)
        await wait_until(final, "every message final")
        assert not sims[0].submissions
        assert len(sims[1].submissions) == 30
        view = await admin.show(cfg, redis, keys, "a")
        assert view["daemons"]["d1"]["suspended"] is True
        assert view["suspended"] is True
    finally:
        await stop_all(procs)
        for sim in sims:
            await sim.stop()


async def _async(value: bool) -> bool:
    return value
