"""Templates: the body syntax, typed variables, the registry, approval, and sending by
template through the client and the HTTP API (real Redis, real SMPP for the funnel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatewayd.campaigns import funnel, links, registry
from gatewayd.campaigns.templates import (
    Template,
    compile_template,
    parse_body,
    render_checked_before,
)
from gatewayd.client import Client
from gatewayd.config import load_config
from gatewayd.errors import ConfigError, MessageError
from gatewayd.policy.engine import PolicyEngine
from gatewayd.store.keys import Keys
from gatewayd.store.seal import load_seal
from tests.e2e_helpers import Smsc, running_daemon, wait_final, write_config

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["otp", "transactional", "marketing"]


def tpl(body: str, **kw: str) -> Template:
    return Template(code=kw.get("code", "SMS_1"), signature=kw.get("signature", "京东"),
                    category=kw.get("category", "marketing"), body=body)


def test_body_syntax_and_types() -> None:
    c = compile_template(tpl("验证码{code:digits4-8}，{name:text<=4}您好，金额{amt:decimal}元"
                             " {{不是变量}} {link:url} 回TD退订"))
    assert [v.spec for v in c.variables] == ["digits4-8", "text<=4", "decimal", "url"]
    text, targets = c.render({"code": "4821", "name": "小明", "amt": "12.50",
                              "link": "https://shop.example.com/p/1"},
                             link=lambda u: "https://s.cn/abc")
    assert text == "【京东】验证码4821，小明您好，金额12.50元 {不是变量} https://s.cn/abc 回TD退订"
    assert targets == ["https://shop.example.com/p/1"]
    for params, field, why in [
        ({"code": "48a1"}, "params.code", "digits"),
        ({"code": "123"}, "params.code", "4-8 digits"),
        ({"code": "1234", "name": "张三丰大侠", "amt": "1", "link": "https://x.cn"},
         "params.name", "at most 4"),
        ({"code": "1234", "name": "t.cn/x", "amt": "1", "link": "https://x.cn"},
         "params.name", "no URL"),
        ({"code": "1234", "name": "a\nb", "amt": "1", "link": "https://x.cn"},
         "params.name", "line breaks"),
        ({"code": "1234", "name": "ab", "amt": "1.2.3", "link": "https://x.cn"},
         "params.amt", "decimal"),
        ({"code": "1234", "name": "ab", "amt": "1", "link": "javascript:alert(1)"},
         "params.link", "http(s) URL"),
        ({"code": "1234", "name": "ab", "amt": "1", "link": "https://x.cn", "x": "1"},
         "params.x", "not a variable"),
        ({"code": "1234", "name": "ab", "amt": "1"}, "params.link", "missing"),
    ]:
        with pytest.raises(MessageError) as e:
            c.render(params, link=lambda u: "https://s.cn/abc")
        assert e.value.field == field and why in e.value.reason, (params, e.value)


def test_the_fan_outs_renderer_makes_the_checked_renderers_text() -> None:
    # The fan-out renders uploaded rows (checked at upload) from a plan of the fixed
    # parts: variables first, last, side by side, after literal braces, numbers.
    for body, params in [
        ("{a:digits}{b:text} {{x}} 满{n:decimal}元 {u:url} 回TD退订",
         {"a": 42, "b": "小明", "n": 9.5, "u": "https://x.cn/1"}),
        ("{u:url}", {"u": "https://x.cn/2"}),
        ("您好 {b:text}", {"b": "王"}),
        ("no variables", {}),
    ]:
        c = compile_template(tpl(body))
        shorten = lambda u: "https://s.cn/" + u[-1]  # noqa: E731
        assert render_checked_before(c, params, shorten) == c.render(params, shorten)[0]
        assert render_checked_before(c, params, None) == c.render(params)[0]


@pytest.mark.parametrize(("body", "why"), [
    ("{code}", "needs a type"), ("{Code:digits}", "name must be"), ("{a:digits}{a:text}", "twice"),
    ("{a:number}", "unknown type"), ("a } b", "unbalanced"), ("see www.jd.com", "URL"),
    ("【淘宝】hi", "no 【】"), ("{a:url}{b:url}{c:url}{d:url}", "at most 3 url"),
])
def test_bad_bodies_are_refused_with_the_reason(body: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        compile_template(tpl(body))


def test_literal_braces_and_text_urls() -> None:
    assert parse_body("{{x}}") == ["{x}"]
    c = compile_template(tpl("Hi {n:text}", category="transactional"))
    assert c.render({"n": "J.Smith"})[0] == "【京东】Hi J.Smith"  # not a URL
    assert c.render({"n": 3.5})[0] == "【京东】Hi 3.5"


async def test_registry_approval_judges_the_fixed_text(redis: aioredis.Redis, keys: Keys) -> None:
    engine = PolicyEngine.load(ROOT / "policies" / "policy.toml", classes=CLASSES)
    t = await registry.save(redis, keys, tpl("双11满300减50 {link:url} 回TD退订"), classes=CLASSES,
                            now=100.0)
    assert t.status == "pending" and t.created_at == 100.0
    t = await registry.set_status(redis, keys, "SMS_1", "approved", engine=engine,
                                  link_sample="https://s.cn/0000000abcdefg", now=101.0)
    assert (t.status, t.approved_at) == ("approved", 101.0)
    # Same text again: still approved. A changed text: pending again.
    assert (await registry.save(redis, keys, tpl("双11满300减50 {link:url} 回TD退订"),
                                classes=CLASSES)).status == "approved"
    t = await registry.save(redis, keys, tpl("澳门博彩 {link:url} 回TD退订"), classes=CLASSES)
    assert t.status == "pending"
    t = await registry.set_status(redis, keys, "SMS_1", "approved", engine=engine)
    assert t.status == "rejected" and t.reason.startswith("check:keyword:gambling")
    with pytest.raises(ValueError, match="category"):
        await registry.save(redis, keys, tpl("x", category="nope"), classes=CLASSES)
    with pytest.raises(KeyError):
        await registry.set_status(redis, keys, "SMS_404", "approved")
    assert [x.code for x in await registry.list_all(redis, keys)] == ["SMS_1"]


async def test_templates_file_loads_and_reports_bad_entries(
        redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    engine = PolicyEngine.load(ROOT / "policies" / "policy.toml", classes=CLASSES)
    loaded = await registry.load_file(redis, keys, ROOT / "policies" / "templates.toml",
                                      classes=CLASSES, engine=engine,
                                      link_sample="https://s.cn/0000000abcdefg")
    assert len(loaded) >= 5 and all(t.status == "approved" for t in loaded), loaded
    bad = tmp_path / "t.toml"
    bad.write_text('[[template]]\ncode = "X"\nsignature = "京东"\ncategory = "otp"\n'
                   'body = "{code}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"t.toml: template\[0\]: body: .*needs a type"):
        registry.read_file(bad)


async def test_send_by_template_through_the_client_counts_the_funnel(
        redis: aioredis.Redis, redis_url: str, keys: Keys, tmp_path: Path, smsc: Smsc) -> None:
    sim = await smsc(receipt_delay_s=0.05)
    path = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, extra="""
[links]
enabled = true
base_url = "https://s.example.cn/"
listen = "127.0.0.1:0"
""")
    cfg = load_config(path)
    await registry.save(redis, keys, tpl("{name:text<=8}，您的订单{n:digits6}已发货 {link:url}",
                                         code="SHIP", category="transactional"),
                        classes=CLASSES)
    await registry.set_status(redis, keys, "SHIP", "approved")
    await registry.save(redis, keys, tpl("pending one {n:digits}", code="NEW",
                                         category="transactional"), classes=CLASSES)
    async with Client.from_config(cfg, redis_url) as c:
        with pytest.raises(MessageError, match="is pending, not approved"):
            await c.send([{"to": "+8613800138000", "template": "NEW", "params": {"n": "1"}}])
        with pytest.raises(MessageError, match="either text, or template"):
            await c.send([{"to": "+8613800138000", "template": "SHIP", "text": "x",
                           "params": {}}])
        ids = [i for i, _ in await c.send([
            {"to": f"+86138001380{k:02d}", "template": "SHIP", "tenant": "shop-a",
             "params": {"name": "小明", "n": f"{100000 + k}",
                        "link": f"https://shop.example.com/o/{k}"}} for k in range(20)])]
    status = await redis.hgetall(keys.status(ids[0]))
    assert status["template"] == "SHIP" and status["state"] == "queued"
    entry = (await redis.xrange(keys.queue("transactional"), count=1))[0][1]
    # links is internal: sealed (gatewayd.store.seal)
    assert entry["template"] == "SHIP" and "links" not in entry
    assert (await load_seal(redis, keys)).open(entry)["links"] == 1
    assert entry["text"].startswith("【京东】小明，您的订单100000已发货 https://s.example.cn/")
    code = entry["text"].rsplit("/", 1)[1]
    link = await links.read(redis, keys, code) or {}
    assert link["u"] == "https://shop.example.com/o/0" and link["m"] == ids[0]
    assert link["d"] == "8613800138000" and link["f"] == keys.funnel("~SHIP|shop-a")
    assert 0 < await redis.ttl(keys.link(code)) <= 30 * 86400
    async with running_daemon(cfg):
        records = await wait_final(redis, keys, ids)
    assert {r["state"] for r in records.values()} == {"delivered"}
    counts = await funnel.read(redis, keys, "~SHIP|shop-a")
    assert counts == {"queued": 20, "submitted": 20, "delivered": 20}
    # The events carry the template; the internal funnel key is in no event.
    ev = [e for _sid, e in await redis.xrange(keys.events) if e["id"] == ids[0]]
    assert [e["state"] for e in ev] == ["queued", "submitted", "delivered"]
    assert ev[0]["template"] == "SHIP" and all("fk" not in e for e in ev)
