"""`gatewayd template ...` and `gatewayd campaign ...` against a real Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from gatewayd.store.keys import Keys
from tests.e2e_helpers import ROOT, write_config


def gw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatewayd", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_templates_and_a_campaign_from_the_command_line(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, redis_url=redis_url, sim_port=1,
                           policy=ROOT / "policies" / "policy.toml", extra="""
[links]
enabled = true
base_url = "https://s.example.cn/"
"""))
    r = gw("template", "load", "-c", cfg, str(ROOT / "policies" / "templates.toml"))
    assert r.returncode == 0, r.stderr
    assert "SMS_PROMO_A\tapproved" in r.stdout
    r = gw("template", "add", "-c", cfg, "BAD", "--signature", "京东", "--category",
           "marketing", "--body", "代开发票 {link:url} 回TD退订")
    assert r.returncode == 0 and '"status":"pending"' in r.stdout.replace(" ", "")
    r = gw("template", "approve", "-c", cfg, "BAD")
    assert r.returncode == 1 and "check:keyword:invoices" in r.stdout
    r = gw("template", "add", "-c", cfg, "X", "--signature", "京东", "--category", "otp",
           "--body", "{code}")
    assert r.returncode == 2 and "needs a type" in r.stderr
    assert "SMS_CART\tapproved\tmarketing" in gw("template", "list", "-c", cfg).stdout
    r = gw("campaign", "create", "-c", cfg, "spring", "--template", "A=SMS_PROMO_A:3",
           "--template", "B=SMS_PROMO_B:1", "--tenant", "shop")
    assert r.returncode == 0, r.stderr
    csv = tmp_path / "r.csv"
    csv.write_text("to,name,link\n" + "".join(
        f"+86135{i:08d},会员,https://m.example.com/{i}\n" for i in range(50))
        + "+86135,x,https://a.cn\n", encoding="utf-8")
    r = gw("campaign", "upload", "-c", cfg, "spring", str(csv))
    assert r.returncode == 0 and '"accepted": 50, "rejected": 1' in r.stdout
    assert "r.csv:52: to: not an E.164 number" in r.stderr
    assert gw("campaign", "resume", "-c", cfg, "spring").returncode == 1
    assert gw("campaign", "start", "-c", cfg, "spring").returncode == 0
    assert await redis.hget(keys.campaign("spring"), "status") == "scheduled"
    r = gw("campaign", "show", "-c", cfg, "spring")
    assert r.returncode == 0 and "campaign spring (scheduled): 50 recipients uploaded" in r.stdout
    out = tmp_path / "report.html"
    assert gw("campaign", "report", "-c", cfg, "spring", "-o", str(out)).returncode == 0
    assert 'data-figure="campaign">spring<' in out.read_text(encoding="utf-8")
    assert gw("campaign", "show", "-c", cfg, "nope").returncode == 1
    assert "spring\tscheduled" in gw("campaign", "list", "-c", cfg).stdout
