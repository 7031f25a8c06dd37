"""The daemon's own security: SMPP over TLS end to end, no secrets or full numbers in
its logs (even at DEBUG), and the world-readable-config warning of check-config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.carrier import CarrierPool
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.pipeline.inbound import InboundHandler
from gatewayd.policy.ratelimit import CarrierRateGate
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis, free_port
from gatewayd.store.keys import Keys
from tests.e2e_helpers import running_daemon, wait_final
from tests.scale_helpers import daemon_config, spawn
from tests.security_helpers import make_pki


async def test_daemon_submits_and_gets_receipts_over_smpp_tls(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    pki = make_pki(tmp_path / "pki")
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02,
                                    tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)))
    port = await sim.start()
    try:
        cfg = load_config(daemon_config(
            tmp_path, "gw-smpp-tls", redis_url=redis_url, sim_port=port, tps=1000,
            extra_carrier=f'tls = true\ntls_ca = "{pki.ca}"\n'))
        async with Client.from_config(cfg) as client:
            ids = [i for i, _ in await client.send(
                [{"to": f"+86135{n:08d}", "text": f"secure {n}"} for n in range(30)]
                + [{"to": "+8613500009999", "text": "long " * 60}])]
        async with running_daemon(cfg):
            await sim.inject_mo("+8613900000007", "10690001", "hello over tls", wait=True)
            records = await wait_final(redis, keys, ids, timeout_s=30)
        assert {r["state"] for r in records.values()} == {"delivered"}
        assert len(sim.messages()) == len(ids)
        [(_sid, mo)] = await redis.xrange(keys.inbound)
        assert mo["text"] == "hello over tls"
    finally:
        await sim.stop()


async def test_daemon_refuses_an_smsc_certificate_it_cannot_verify(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    """tls_verify stays on by default: a server certificate from an unknown CA binds not."""
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other-pki")
    sim = SmscSimulator(SimSettings(port=0, tls_cert=str(pki.server_cert),
                                    tls_key=str(pki.server_key)))
    port = await sim.start()
    try:
        cfg = load_config(daemon_config(
            tmp_path, "gw-smpp-tls", redis_url=redis_url, sim_port=port, tps=1000,
            extra_carrier=f'tls = true\ntls_ca = "{other.ca}"\n'))
        pool = CarrierPool(cfg, InboundHandler(redis, Keys(), cfg, lambda: None),
                           rate_gate=CarrierRateGate(redis, Keys(), cfg))
        await pool.start()
        try:
            assert not await pool.wait_bound(1.5)
        finally:
            await pool.stop(2.0)
        assert sim.stats.binds == 0
    finally:
        await sim.stop()


async def test_no_secret_and_no_full_number_in_debug_logs(tmp_path: Path) -> None:
    """A DEBUG run with a carrier password, a Redis password in the URL, messages,
    receipts and an MO: the captured JSON log lines hold neither secret nor any
    full phone number."""
    redis_pw, smpp_pw = "rEd1s-Pw-93kq", "Sm9pW7x"
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(),
                           extra_args=["--user", "gw", "on", f">{redis_pw}", "~*", "+@all"])
    server.start()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.02, password=smpp_pw))
    port = await sim.start()
    try:
        url = f"redis://gw:{redis_pw}@127.0.0.1:{server.port}/0"
        path = daemon_config(tmp_path, "gw-logs", redis_url=url, sim_port=port, tps=1000,
                             log_level="debug")
        path.write_text(path.read_text().replace('password = "demo"',
                                                 f'password = "{smpp_pw}"'))
        numbers = [f"+86135{n:08d}" for n in range(5)]
        async with Client(url) as client:
            await client.send([{"to": n, "text": f"code {i}"} for i, n in enumerate(numbers)])
        proc = await spawn(path, "gw-logs", tmp_path, burst=True, burst_timeout_s=30)
        await sim.inject_mo("+8613900000077", "10690001", "TD", wait=True, timeout_s=20)
        assert await proc.wait(60) == 0
        text = proc.log_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert len(lines) > 5 and any(rec.get("level") == "debug" for rec in lines), text[:2000]
        assert redis_pw not in text and smpp_pw not in text
        for n in [*numbers, "+8613900000077"]:
            assert n.lstrip("+") not in text, n
        assert "+86139****0077" in text  # the opt-out was logged, masked
    finally:
        await sim.stop()
        server.stop()


def test_check_config_warns_about_a_world_readable_config_with_secrets(
    tmp_path: Path,
) -> None:
    path = daemon_config(tmp_path, "gw-perm", redis_url="redis://127.0.0.1:1/0",
                         sim_port=2775, tps=10)
    env = dict(os.environ)
    env.pop("REDIS_URL", None)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gatewayd", "check-config", "-c",
                               str(path)], capture_output=True, text=True, env=env,
                              timeout=60)

    path.chmod(0o644)
    loose = check()
    assert loose.returncode == 0, loose.stderr
    assert "readable by all users" in loose.stderr and f"chmod o-r {path}" in loose.stderr
    path.chmod(0o600)
    tight = check()
    assert tight.returncode == 0 and "readable" not in tight.stderr
