"""A campaign from upload to funnel over the HTTP API, on real Redis and real SMPP: the
templates' approval, an A/B campaign uploaded as JSON lines, its fan-out and delivery,
clicks through the real redirector, conversions and opt-outs (plain, and per category:
only the campaign's own counts), the funnel as JSON, and
the HTML report loaded by a real headless browser (Chromium) that finds the figures."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.config import load_config
from gatewayd.store.keys import Keys
from tests.e2e_helpers import Smsc, running_daemon, wait_final, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile"


def dump_dom(url: str) -> str:
    """The page as a real browser built it (Debian's chromium, headless)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="gw-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def figures(dom: str) -> dict[str, str]:
    return {m.group(1): re.sub(r"<[^>]+>", "", m.group(2)).strip()
            for m in re.finditer(r'data-figure="([^"]+)"[^>]*>(.*?)</', dom)}


async def test_campaign_from_upload_to_funnel(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    sim = await smsc(receipt_delay_s=0.02)
    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                                   extra="""
[links]
enabled = true
base_url = "https://s.example.cn/"
listen = "127.0.0.1:0"
"""))
    async with running_daemon(cfg) as d, aiohttp.ClientSession() as s:
        assert d.http is not None and d.links is not None
        api = f"http://127.0.0.1:{d.http.port}"

        async def call(method: str, path: str, body: Any = None, status: int = 200,
                       **kw: Any) -> Any:
            async with s.request(method, api + path, json=body, **kw) as r:
                data = await r.json() if r.content_type == "application/json" else await r.text()
                assert r.status == status, (path, r.status, data)
                return data

        for code, copy in (("PROMO_A", "今晨采摘"), ("PROMO_B", "新鲜到货")):
            t = await call("PUT", f"/v1/templates/{code}", {
                "signature": "果园", "category": "marketing",
                "body": f"{{name:text<=6}}，{copy}，满99减20 {{link:url}} 回TD退订"})
            assert t["status"] == "pending"
            t = await call("POST", f"/admin/templates/{code}/approve")
            assert t["status"] == "approved"
        await call("PUT", "/v1/templates/BAD", {"signature": "果园", "category": "marketing",
                                                 "body": "限时★特价 {link:url} 回TD退订"})
        bad = await call("POST", "/admin/templates/BAD/approve")
        assert bad["status"] == "rejected" and bad["reason"] == "check:content:forbidden_char:★"
        await call("PUT", "/v1/templates/X", {"signature": "果园", "category": "marketing",
                                               "body": "{a}"}, status=422)
        tpl = await call("GET", "/v1/templates/PROMO_A")
        assert tpl["variables"] == [{"name": "name", "type": "text<=6"},
                                    {"name": "link", "type": "url"}]

        await call("POST", "/v1/campaigns", {"id": "bad", "template": "BAD"}, status=422)
        c = await call("POST", "/v1/campaigns", {
            "id": "fruit-11", "name": "双11水果", "tenant": "shop-a",
            "variants": [{"name": "A", "template": "PROMO_A"},
                         {"name": "B", "template": "PROMO_B"}]}, status=201)
        assert c["status"] == "draft" and c["category"] == "marketing"
        await call("POST", "/v1/campaigns", {"id": "fruit-11", "template": "PROMO_A"},
                   status=409)
        n = 600
        lines = [json.dumps({"to": f"+86137{i:08d}", "ref": f"u{i}",
                             "params": {"name": "会员", "link": f"https://fruit.example.com/?u={i}"}},
                            ensure_ascii=False) for i in range(n)]
        lines += ['{"to": "12345"}', "{oops"]
        up = await call("POST", "/v1/campaigns/fruit-11/recipients",
                        data="\n".join(lines).encode(),
                        headers={"Content-Type": "application/x-ndjson"})
        assert (up["accepted"], up["rejected"]) == (n, 2)
        assert [e["line"] for e in up["errors"]] == [n + 1, n + 2]
        await call("POST", "/v1/campaigns/fruit-11/recipients", data=b"x",
                   headers={"Content-Type": "text/plain"}, status=415)
        await call("POST", "/v1/campaigns/fruit-11/resume", status=409)
        await call("POST", "/v1/campaigns/fruit-11/start", {})
        for _ in range(400):
            got = await call("GET", "/v1/campaigns/fruit-11")
            if got["campaign"]["status"] == "done":
                break
            await asyncio.sleep(0.05)
        ids = [f"fruit-11.{i}" for i in range(1, n + 1)]
        records = await wait_final(redis, keys, ids, timeout_s=60)
        assert {r["state"] for r in records.values()} == {"delivered"}

        # People click: 30 % of A's recipients, 10 % of B's (a few twice, some previews).
        by_variant: dict[str, list[tuple[str, str]]] = {"A": [], "B": []}
        for sub in sim.submissions:
            code = sub.text.split("s.example.cn/")[1].split()[0]
            variant = "A" if "今晨采摘" in sub.text else "B"
            by_variant[variant].append((sub.destination, code))
        clicks: list[tuple[str, str]] = []
        for variant, share in (("A", 0.3), ("B", 0.1)):
            chosen = by_variant[variant][: int(len(by_variant[variant]) * share)]
            clicks += [(code, IPHONE) for _to, code in chosen]
            clicks += [(code, IPHONE) for _to, code in chosen[:5]]  # clicked again
            clicks += [(code, "facebookexternalhit/1.1") for _to, code in chosen[:3]]
        for code, ua in clicks:
            async with s.get(f"http://127.0.0.1:{d.links.port}/{code}",
                             headers={"User-Agent": ua}, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"].startswith(
                    "https://fruit.example.com/?u=")
        # Conversions (reported twice: counted once) and two opt-outs.
        converted = [f"fruit-11.{i}" for i in range(1, 21)]
        res = await call("POST", "/v1/conversions", {"ids": [*converted, converted[0], "nope"]})
        assert [r["result"] for r in res["results"]].count("converted") == 20
        assert res["results"][-1]["result"] == "unknown"
        for number in ("+8613700000001", "+8613700000002"):
            await call("POST", f"/v1/optouts/{number}")
        # Preferences (issue 19): an opt-out of transactional messages only is none of
        # this marketing campaign's; one of marketing only is.
        await call("POST", "/v1/optouts/+8613700000003?category=transactional")
        await call("POST", "/v1/optouts/+8613700000004?category=marketing")
        a_clicked = int(len(by_variant["A"]) * 0.3)
        b_clicked = int(len(by_variant["B"]) * 0.1)
        for _ in range(400):
            got = await call("GET", "/v1/campaigns/fruit-11")
            if got["funnel"]["stages"]["clicked"] == a_clicked + b_clicked:
                break
            await asyncio.sleep(0.05)
        f = got["funnel"]
        assert f["stages"]["queued"] == f["stages"]["submitted"] == f["stages"]["delivered"] == n
        assert f["stages"]["clicked"] == a_clicked + b_clicked
        assert f["stages"]["clicks"] == a_clicked + b_clicked + 10
        assert f["stages"]["previews"] == 6
        assert f["stages"]["converted"] == 20 and f["stages"]["opted_out"] == 3
        assert f["rates"]["delivery"] == {"value": 1.0, "num": n, "den": n}
        assert f["rates"]["click"]["den"] == n
        ab = got["ab"]
        assert [v["variant"] for v in ab["variants"]] == ["A", "B"]
        assert ab["variants"][0]["clicked"] == a_clicked
        assert ab["tests"][0]["significant"] is True and ab["tests"][0]["p_value"] < 0.05

        report_url = f"{api}/v1/campaigns/fruit-11/report"
        async with s.get(report_url) as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
        assert "<script" not in html and "http://" not in html.split("</style>")[1].replace(
            'xmlns="http://www.w3.org/2000/svg"', "")

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the report page "
                    "was checked over HTTP only")
    # The daemon is stopped: serve the same page from a fresh one for the browser.
    async with running_daemon(cfg) as d:
        assert d.http is not None
        url = f"http://127.0.0.1:{d.http.port}/v1/campaigns/fruit-11/report"
        dom = await asyncio.to_thread(dump_dom, url)
    fig = figures(dom)
    assert fig["campaign"] == "fruit-11" and fig["status"] == "done"
    assert fig["queued"] == f"{n:,}" and fig["delivered"] == f"{n:,}"
    assert fig["clicked"] == str(a_clicked + b_clicked) and fig["converted"] == "20"
    assert fig["rate-delivery"] == "100.0%"
    assert fig["opted"] == "3"
    assert fig["clicked-A"] == str(a_clicked) and fig["clicked-B"] == str(b_clicked)
    assert fig["click-rate-A"] == f"{100 * a_clicked / len(by_variant['A']):.1f}%"
    assert fig["significant-B"] == "significant"
    assert float(fig["p-B"]) < 0.05
    assert "<svg" in dom and 'data-stage="clicked"' in dom
