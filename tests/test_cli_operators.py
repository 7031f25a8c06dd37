"""What operators touch (issue 14, items 9-11 and 13): the real CLI, often as a subprocess.

`enqueue --file` names every bad line; numbers without + need --country; `events
--follow` follows for ever; `--count 0` is a usage error.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.cli import main
from gatewayd.client import Client
from gatewayd.sim.smpp.smsc import SimSettings, SmscSimulator
from gatewayd.store.embedded import EmbeddedRedis
from gatewayd.store.keys import Keys
from tests.e2e_helpers import ROOT, wait_final, write_config


def _config(tmp_path: Path, redis_url: str) -> Path:
    # No simulator: these commands only talk to Redis.
    return write_config(tmp_path, redis_url=redis_url, sim_port=1)


def _gatewayd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatewayd", *args]


async def test_enqueue_file_names_every_bad_line_and_queues_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _config(tmp_path, redis_url)
    lines = [
        '{"to": "+8613800000001", "text": "good"}',
        '{nope',
        '{"to": "+8613800000002"}',
        '',
        '{"to": "13800000003", "text": "national, no --country"}',
        '{"to": "+8613800000004", "text": "x", "category": "nosuch"}',
        '[1, 2]',
        '{"to": "+8613800000005", "text": "good too"}',
        '[' * 5000 + ']' * 5000,
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = await asyncio.to_thread(main, ["enqueue", "-c", str(cfg), "--file", str(path)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    named = [line.split(":")[2] for line in err[:-1]]
    assert named == ["2", "3", "5", "6", "7", "9"]
    assert "3: text:" in err[1] and "5: to:" in err[2] and "--country" in err[2]
    assert "6: category:" in err[3]
    assert err[-1] == f"gatewayd: {path}: 6 bad line(s) of 8; nothing was queued"
    for klass in ("otp", "transactional", "marketing"):
        assert not await redis.exists(keys.queue(klass)) or \
            await redis.xlen(keys.queue(klass)) == 0


async def test_enqueue_needs_a_country_for_national_numbers(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = str(_config(tmp_path, redis_url))
    rc = await asyncio.to_thread(main, ["enqueue", "-c", cfg, "--to", "13900000000",
                                        "--text", "hi", "--id", "n-1"])
    assert rc == 2 and "--country" in capsys.readouterr().err
    assert await redis.xlen(keys.queue("transactional")) == 0
    rc = await asyncio.to_thread(main, ["enqueue", "-c", cfg, "--to", "13900000000",
                                        "--country", "86", "--text", "hi", "--id", "n-1"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["id"] == "n-1"
    [(_, fields)] = await redis.xrange(keys.queue("transactional"))
    assert fields["to"] == "+8613900000000"


def test_events_count_zero_is_a_usage_error(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path, redis_url)
    r = subprocess.run(_gatewayd("events", "-c", str(cfg), "--count", "0"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--count" in r.stderr and r.stdout == ""


async def test_events_follow_waits_longer_than_one_block(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    """The follower sees an event written after a quiet spell longer than its XREAD
    block (5 s) and redis-py's default read timeout (5 s): it died there before."""
    cfg = _config(tmp_path, redis_url)
    await redis.xadd(keys.events, {"id": "before", "state": "queued", "at": "1"})
    proc = await asyncio.create_subprocess_exec(
        *_gatewayd("events", "-c", str(cfg), "--follow", "--count", "1"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert first["id"] == "before"
        started = time.monotonic()
        await asyncio.sleep(7.5)  # more than one block and the default read timeout
        assert proc.returncode is None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        await redis.xadd(keys.events, {"id": "after", "state": "delivered", "at": "2"})
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert json.loads(line)["id"] == "after"
        assert time.monotonic() - started > 7
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _startup_wait(cfg: Path, seconds: float) -> Path:
    text = cfg.read_text()
    assert "\n[redis]\n" in text
    cfg.write_text(text.replace("\n[redis]\n", f"\n[redis]\nstartup_wait_s = {seconds}\n", 1))
    return cfg


def test_run_without_redis_is_one_line_and_exit_3(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    # No wait: the first refusal is final (by default it is tried again for 20 s).
    cfg = _startup_wait(write_config(tmp_path, redis_url=url, sim_port=1), 0)
    r = subprocess.run(_gatewayd("run", "-c", str(cfg)), capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k != "REDIS_URL"})
    assert r.returncode == 3
    # The daemon's log (JSON lines on stdout, as under systemd): the failure, only.
    line = json.loads(_one_line(r.stdout + r.stderr))
    assert line["level"] == "error"
    assert line["msg"].startswith("startup failed: cannot reach Redis at " + url)


async def test_run_waits_for_a_redis_that_comes_up_within_startup_wait(
    tmp_path: Path,
) -> None:
    """A daemon started before its Redis (or while a cluster master fails over: a CI
    run saw a daemon exit there) says once that it waits, comes up when Redis does,
    and delivers; it used to exit 3 at the first refused connection."""
    rport = _free_port()
    sim = SmscSimulator(SimSettings(port=0, receipt_delay_s=0.01))
    sim_port = await sim.start()
    server = EmbeddedRedis(tmp_path / "r", port=rport)
    cfg = _startup_wait(write_config(tmp_path, redis_url=server.url, sim_port=sim_port), 60)
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *_gatewayd("run", "-c", str(cfg)), stdout=out, stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
                 "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "Redis cannot answer" not in log.read_text():
            assert proc.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a few refusals more
        assert proc.returncode is None, log.read_text()
        await asyncio.to_thread(server.start)
        async with Client(server.url) as client:
            [(mid, _)] = await client.send([{"to": "+8613800000001", "text": "late redis"}])
            r = aioredis.Redis.from_url(server.url, decode_responses=True)
            try:
                records = await wait_final(r, Keys(), [mid], timeout_s=60)
            finally:
                await r.aclose()
        assert records[mid].get("state") == "delivered", (records, log.read_text()[-2000:])
        waits = [json.loads(x) for x in log.read_text().splitlines()
                 if "Redis cannot answer" in x]
        assert len(waits) == 1 and waits[0]["level"] == "warning", waits
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await sim.stop()
        server.stop()


def test_redis_password_is_not_printed(tmp_path: Path) -> None:
    url = f"redis://app:s3cret@127.0.0.1:{_free_port()}/0"
    # Waited for a second: the waiting line is checked too.
    cfg = _startup_wait(write_config(tmp_path, redis_url=url, sim_port=1), 1)
    r = subprocess.run(_gatewayd("run", "-c", str(cfg)), capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k != "REDIS_URL"})
    assert r.returncode == 3 and "s3cret" not in r.stdout + r.stderr
    assert "app:***@" in r.stdout


@pytest.mark.parametrize(("extra", "key"), [
    ('[http]\nenabled = true\nlisten = "127.0.0.1:99999"\n', "http.listen"),
    ('[links]\nenabled = true\nlisten = "0.0.0.0:70000"\nbase_url = "https://s.example.cn/"\n',
     "links.listen"),
])
def test_check_config_refuses_impossible_ports(tmp_path: Path, redis_url: str, extra: str,
                                               key: str) -> None:
    cfg = tmp_path / "gw.toml"
    text = write_config(tmp_path, redis_url=redis_url, sim_port=1).read_text(encoding="utf-8")
    cfg.write_text(text.replace("[http]\nenabled = false\nlisten = \"127.0.0.1:0\"\n", "")
                   + extra, encoding="utf-8")
    r = subprocess.run(_gatewayd("check-config", "-c", str(cfg)), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert f"{key}: " in _one_line(r.stderr) and "0-65535" in r.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379",
                                 "redis://:6379/0", "redis://127.0.0.1:99999/0",
                                 "redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:x/0",
                                 "redis+cluster://10.0.0.1:7000,/0"])
def test_check_config_refuses_a_redis_url_that_is_not_redis(tmp_path: Path, url: str) -> None:
    cfg = write_config(tmp_path, redis_url=url, sim_port=1)
    r = subprocess.run(_gatewayd("check-config", "-c", str(cfg)), capture_output=True,
                       text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "redis.url: " in line
    if "," in url:
        assert "seed 2 of 2: " in line


def test_check_config_takes_several_cluster_seeds(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, redis_url="redis+cluster://10.0.0.1:7000,[::1]:7001/0",
                       sim_port=1)
    r = subprocess.run(_gatewayd("check-config", "-c", str(cfg)), capture_output=True,
                       text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    assert r.returncode == 0, r.stderr


def test_demo_with_its_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    text = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (text.replace('"../.gatewayd"', f'"{tmp_path / "state"}"')
                .replace('"../policies/', f'"{ROOT / "policies"}/')
                .replace("27750", str(port))
                .replace("127.0.0.1:8780", "127.0.0.1:0")
                .replace('listen = "127.0.0.1:8781"', 'listen = "127.0.0.1:0"'))
        cfg = tmp_path / "demo.toml"
        cfg.write_text(text, encoding="utf-8")
        r = subprocess.run(_gatewayd("demo", "-c", str(cfg), "--timeout", "30"),
                           capture_output=True, text=True, timeout=180,
                           env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    assert r.returncode == 3
    line = _one_line(r.stderr)
    assert line.startswith("gatewayd demo: startup failed: ") and str(port) in line
    assert "address already in use" in line and "change the port" in line
