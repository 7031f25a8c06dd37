"""Daemon control: CLI enqueue/events, SIGTERM drain, policy reload (HUP and HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.cli import main as cli_main
from gatewayd.ops.metrics import REGISTRY
from gatewayd.store.keys import GROUP, Keys
from tests.e2e_helpers import ROOT, Smsc, load, running_daemon, wait_final, write_config


async def test_cli_enqueue_flags_and_jsonl_then_events(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    capsys: pytest.CaptureFixture[str], smsc: Smsc,
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    path = write_config(tmp_path, redis_url=redis_url, sim_port=port)
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text(
        '{"to": "+8613800000001", "text": "one", "id": "f-1"}\n\n'
        '{"to": "+8613800000002", "text": "两", "id": "f-2", "category": "otp"}\n',
        encoding="utf-8",
    )

    def cli(*args: str) -> int:
        return cli_main(list(args))

    assert await asyncio.to_thread(cli, "enqueue", "-c", str(path), "--to",
                                   "+8613800000003", "--text", "flag", "--id", "f-3") == 0
    assert await asyncio.to_thread(cli, "enqueue", "-c", str(path), "--file", str(jsonl)) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["id"] for o in out] == ["f-3", "f-1", "f-2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"to": "+8613800000001", "text": "ok"}\n{nope\n', encoding="utf-8")
    assert await asyncio.to_thread(cli, "enqueue", "-c", str(path), "--file", str(bad)) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "enqueue", "-c", str(path), "--to", "12",
                                   "--text", "x") == 2
    assert "to:" in capsys.readouterr().err
    missing = tmp_path / "absent.jsonl"
    assert await asyncio.to_thread(cli, "enqueue", "-c", str(path), "--file",
                                   str(missing)) == 2
    assert capsys.readouterr().err.strip() == (
        f"gatewayd: {missing}: cannot read messages: No such file or directory")
    async with running_daemon(load(path)):
        await wait_final(redis, keys, ["f-1", "f-2", "f-3"], timeout_s=20)
    # Commands that only talk to Redis work without the carriers' SMPP secrets (an
    # operator's shell lacks the unit's EnvironmentFile).
    secret_cfg = tmp_path / "secret_env.toml"
    secret_cfg.write_text(path.read_text(encoding="utf-8").replace(
        'password = "demo"', 'password_env = "GW_TEST_UNSET_SMPP_SECRET"'), encoding="utf-8")
    assert "GW_TEST_UNSET_SMPP_SECRET" in secret_cfg.read_text(encoding="utf-8")
    assert await asyncio.to_thread(cli, "status", "-c", str(secret_cfg), "f-1") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "delivered"
    assert await asyncio.to_thread(cli, "events", "-c", str(path), "--count", "100") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(e["id"], e["state"]) for e in events} >= {
        ("f-1", "delivered"), ("f-2", "delivered"), ("f-3", "delivered")}
    assert sim.texts_to("8613800000002") == ["两"]


async def test_sigterm_drains_and_leaves_unread_messages_queued(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipts=False, response_delay_s=0.2)
    port = sim.port
    path = write_config(tmp_path, redis_url=redis_url, sim_port=port, window=20,
                        extra="[queue]\nread_batch = 50\ndispatch_workers = 1\n")
    cfg = load(path)
    q = keys.queue("transactional")
    for n in range(2000):
        await redis.xadd(q, {"to": f"+86138{n:08d}", "text": f"n{n}", "id": f"t-{n}"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, env=dict(os.environ))
    while len(sim.submissions) < 60:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    submitted = {s.destination.lstrip("+") for s in sim.submissions}
    left = await redis.xlen(q)
    pending = (await redis.xpending(q, GROUP))["pending"]
    assert pending == 0  # every batch read was finished and recorded
    assert left == 2000 - len(submitted)  # the rest is still queued, untouched
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(2000):
            pipe.hget(keys.status(f"t-{n}"), "state")
        states = await pipe.execute()
    assert sum(1 for s in states if s == "submitted") == len(submitted)
    assert cfg.daemon.shutdown_timeout_s == 5.0


def _gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return -1.0 if value is None else value


async def test_policy_reload_keeps_the_old_policy_when_the_file_breaks(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    port = sim.port
    policy = tmp_path / "policy.toml"
    policy.write_text((ROOT / "tests" / "data" / "no_policy.toml").read_text())
    path = write_config(tmp_path, redis_url=redis_url, sim_port=port, policy=policy,
                        http=True)
    async with running_daemon(load(path)) as daemon, aiohttp.ClientSession() as http:
        first = daemon.policy()
        policy.write_text("[category.otp]\ncaps = [{ limit = 0 }\n")  # broken TOML
        ok, message, _ = await daemon.reload()
        assert not ok and "policy.toml" in message
        assert daemon.policy() is first
        assert _gauge("gatewayd_policy_reload_failed") == 1.0
        assert daemon.http is not None
        url = f"http://127.0.0.1:{daemon.http.port}/admin/reload"
        async with http.post(url) as r:
            assert r.status == 422
            assert "policy.toml" in (await r.json())["message"]
        policy.write_text((ROOT / "tests" / "data" / "no_policy.toml").read_text()
                          + '\n[[keywords]]\nname = "x"\nfile = "words.txt"\n')
        (tmp_path / "words.txt").write_text("博彩\n", encoding="utf-8")
        async with http.post(url) as r:
            assert r.status == 200
        assert daemon.policy() is not first
        assert _gauge("gatewayd_policy_reload_failed") == 0.0
        await redis.xadd(keys.queue("otp"), {"to": "+8613800000001", "id": "kw-1",
                                              "text": "线上博 彩，稳赚"})
        rec = await wait_final(redis, keys, ["kw-1"], timeout_s=20)
    assert rec["kw-1"]["state"] == "rejected"
    assert rec["kw-1"]["reason"].startswith("keyword:x:")
