"""The daemon's HTTP side, end to end: intake, status, metrics, readiness across a Redis outage."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.cli import main as cli_main
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, events_by_id, load, running_daemon, wait_final, write_config

KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
API_KEYS = f'api_keys = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]'


def http_config(tmp_path: Path, redis_url: str, port: int) -> Path:
    p = write_config(tmp_path, redis_url=redis_url, sim_port=port, http=True)
    text = p.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:0"\n{API_KEYS}')
    p.write_text(text)
    return p


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_http_intake_status_and_metrics_add_up(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    capsys: pytest.CaptureFixture[str], smsc: Smsc,
) -> None:
    sim = await smsc(receipt_delay_s=0.02)
    port = sim.port
    path = http_config(tmp_path, redis_url, port)
    cfg = load(path)
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        items = [{"to": f"+86138{n:08d}", "text": f"【京东】订单 {n} 已发货",
                  "category": "transactional", "ref": f"o{n}"} for n in range(40)]
        items.append({"to": "not-a-number", "text": "x"})
        async with http.post(f"{base}/v1/messages", json=items, headers=AUTH) as r:
            assert r.status == 422
            body = await r.json()
        results = body["results"]
        bad = [x for x in results if x.get("errors")]
        assert len(bad) == 1 and bad[0]["index"] == 40
        assert bad[0]["errors"][0]["field"] == "to"
        ids = [x["id"] for x in results if x.get("id")]
        assert len(ids) == 40
        async with http.post(f"{base}/v1/messages", json=items[0]) as r:
            assert r.status == 401
        records = await wait_final(redis, keys, ids, timeout_s=30)
        assert {r["state"] for r in records.values()} == {"delivered"}
        async with http.get(f"{base}/v1/messages/{ids[0]}", headers=AUTH) as r:
            assert r.status == 200
            status = await r.json()
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz/carriers") as r:
            assert r.status == 200
            ready = await r.json()
    events = await events_by_id(redis, keys)
    last = events[ids[0]][-1]
    assert status["state"] == last["state"] == "delivered"
    assert status["carrier_id"] == last["carrier_id"]
    assert await asyncio.to_thread(cli_main, ["status", "-c", str(path), ids[0]]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["state"] == "delivered" and cli["carrier_id"] == status["carrier_id"]
    # The counters add up to what was sent.
    assert metric(text, "gatewayd_messages_state_total", state="submitted") >= 40
    assert metric(text, "gatewayd_submits_total", carrier="sim", protocol="smpp") >= 40
    # The deprecated name (one release) counts the same submits, summed over protocols
    # (the registry is the process's: other tests may have had a CMPP carrier "sim").
    assert metric(text, "gatewayd_submit_sm_total", carrier="sim") == metric(
        text, "gatewayd_submits_total", carrier="sim")
    assert metric(text, "gatewayd_command_status_total", carrier="sim", protocol="smpp",
                  command="submit_sm", status="ESME_ROK") >= 40
    assert metric(text, "gatewayd_bind_info", carrier="sim", bind="0", protocol="smpp",
                  version="3.4") == 1  # one series a bind (other tests' binds stay too)
    assert {(b["carrier"], b["protocol"], b["version"]) for b in ready["binds"]} == {
        ("sim", "smpp", "3.4")}
    assert "last_error" not in ready["binds"][0]  # a public probe shows no error text
    assert metric(text, "gatewayd_receipts_total", result="final") >= 40
    assert re.search(r'gatewayd_bind_up\{.*carrier="sim".*\} 1\.0', text)


async def test_readyz_follows_redis_down_and_back(tmp_path: Path) -> None:
    rport = free_port()
    server = EmbeddedRedis(tmp_path / "r", port=rport)
    url = server.start()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02))
    port = await sim.start()
    try:
        cfg = load(http_config(tmp_path, url, port))
        async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
            assert daemon.http is not None
            ready = f"http://127.0.0.1:{daemon.http.port}/readyz"

            async def status() -> tuple[int, dict[str, object]]:
                async with http.get(ready) as r:
                    return r.status, await r.json()

            assert (await status())[0] == 200
            server.kill()
            for _ in range(100):
                code, body = await status()
                if code == 503:
                    break
                await asyncio.sleep(0.1)
            assert code == 503 and body["redis"] != "ok"
            server.port = rport
            server.start()
            for _ in range(150):
                code, body = await status()
                if code == 200:
                    break
                await asyncio.sleep(0.1)
            assert code == 200, body
            # And it still works after the outage.
            r = aioredis.from_url(url, decode_responses=True)
            await r.xadd(Keys().queue("otp"), {"to": "+8613800138000", "text": "after",
                                               "id": "after-1"})
            rec = await wait_final(r, Keys(), ["after-1"], timeout_s=30)
            await r.aclose()
            assert rec["after-1"]["state"] == "delivered"
    finally:
        await sim.stop()
        server.stop()
