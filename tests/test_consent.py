"""Preferences, re-subscription and consent records (issue 19 items 7-8): per-category
opt-outs, opt-in by MO or API, consent records with their source kept and trimmed to the
retention, exported by number or time (CLI and API, JSONL and CSV), lists imported."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import redis.asyncio as aioredis

from gatewayd.cli import main
from gatewayd.client import Client
from gatewayd.consent import bulk, records
from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.optout import (
    opt_in,
    opt_out,
    optout_history,
    optout_status,
    preferences,
    resubscribe,
)
from gatewayd.store.keys import Keys
from tests.e2e_helpers import ROOT, Smsc, load, running_daemon, wait_final, write_config

CLASSES = ["otp", "transactional", "marketing"]
T0 = datetime(2024, 6, 10, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
CN = "+8613800138000"
DEFAULT = PolicyEngine.load(None, classes=CLASSES)
DEMO_POLICY = ROOT / "policies" / "demo.toml"


def msgs(*categories: str, text: str = "【京东】618大促 回TD退订") -> list[OutboundMessage]:
    return [OutboundMessage(id=f"{c}-{i}", to=CN, text=text if c != "otp" else "【京东】验证码 1",
                            category=c) for i, c in enumerate(categories)]


async def verdicts(e: PolicyEngine, redis: aioredis.Redis, keys: Keys,
                   *categories: str) -> list[tuple[str, str]]:
    out = await e.evaluate(redis, keys, msgs(*categories), T0)
    return [(v.action, v.reason) for v in out]


# 7. Preferences ----------------------------------------------------------------------
async def test_opt_out_of_one_category(redis: aioredis.Redis, keys: Keys) -> None:
    await opt_out(redis, keys, CN, category="transactional", source="api", at=T0)
    # Transactional does not suppress plain opt-outs, but a preference for it counts.
    assert await verdicts(DEFAULT, redis, keys, "otp", "transactional", "marketing") == [
        ("send", ""), ("reject", "optout:*|transactional"), ("send", "")]


async def test_everything_but_codes(redis: aioredis.Redis, keys: Keys) -> None:
    for c in ("marketing", "transactional"):
        await opt_out(redis, keys, CN, category=c, source="api", at=T0)
    assert await verdicts(DEFAULT, redis, keys, "otp", "transactional", "marketing") == [
        ("send", ""), ("reject", "optout:*|transactional"), ("reject", "optout:*|marketing")]
    assert preferences(await optout_status(redis, keys, CN)) == [
        {"scope": "*", "category": "marketing", "since": T0},
        {"scope": "*", "category": "transactional", "since": T0}]
    await opt_in(redis, keys, CN, category="transactional", source="api", at=T0 + 1)
    assert [v[0] for v in await verdicts(DEFAULT, redis, keys, "transactional")] == ["send"]


async def test_category_preference_with_signature_scope(tmp_path: Path, redis: aioredis.Redis,
                                                        keys: Keys) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[optout]\nscope = "signature"\ncategories = ["marketing"]\n',
                 encoding="utf-8")
    e = PolicyEngine.load(p, classes=CLASSES)
    await opt_out(redis, keys, CN, scope="京东", category="marketing", source="api", at=T0)
    out = await e.evaluate(redis, keys, [
        OutboundMessage(id="a", to=CN, text="【京东】大促 回TD退订", category="marketing"),
        OutboundMessage(id="b", to=CN, text="【淘宝】大促 回TD退订", category="marketing"),
    ], T0)
    assert [(v.action, v.reason) for v in out] == [("reject", "optout:京东|marketing"),
                                                   ("send", "")]


async def test_otp_is_not_a_preference_category_by_default(redis: aioredis.Redis,
                                                           keys: Keys) -> None:
    assert DEFAULT.policy.optout_categories == frozenset({"transactional", "marketing"})
    # A stray record cannot stop codes: otp messages never test preference fields.
    await redis.hset(keys.optout(CN.lstrip("+")), "*|otp", T0)
    assert await verdicts(DEFAULT, redis, keys, "otp") == [("send", "")]


async def test_resubscribe_clears_plain_and_category_opt_outs(redis: aioredis.Redis,
                                                              keys: Keys) -> None:
    await opt_out(redis, keys, CN, source="mo:sim", at=T0)
    await opt_out(redis, keys, CN, category="marketing", source="api", at=T0)
    await opt_out(redis, keys, CN, scope="京东", source="api", at=T0)
    cleared = await resubscribe(redis, keys, CN, source="mo:sim", at=T0 + 5, text="订阅")
    assert cleared == ["*", "*|marketing"]
    assert set(await optout_status(redis, keys, CN)) == {"京东"}  # signature opt-out stays
    history = await optout_history(redis, keys, CN)
    assert [(h["action"], h["scope"], h["category"], h["source"], h["text"])
            for h in history][-2:] == [("in", "*", "", "mo:sim", "订阅"),
                                       ("in", "*", "marketing", "mo:sim", "订阅")]


async def test_unknown_preference_category_is_refused(tmp_path: Path) -> None:
    from gatewayd.errors import ConfigError

    p = tmp_path / "policy.toml"
    p.write_text('[optout]\ncategories = ["promo"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="'promo' is not a queue class"):
        PolicyEngine.load(p, classes=CLASSES)


# 8. Consent records --------------------------------------------------------------------
async def test_records_are_trimmed_to_the_retention(redis: aioredis.Redis, keys: Keys) -> None:
    now_ms = int(time.time() * 1000)
    old = now_ms - 3 * 86400 * 1000
    for i in range(5):  # recorded three days ago
        await redis.xadd(keys.optout_audit, {"action": "out", "number": "861", "at": "0"},
                         id=f"{old + i}-0")
    await opt_out(redis, keys, CN, source="api", at=time.time(), retention_s=2 * 86400)
    rows = await redis.xrange(keys.optout_audit)
    assert [f["number"] for _, f in rows] == ["8613800138000"]  # older than 2 days: gone
    await opt_out(redis, keys, "+8613800138001", source="api", at=time.time())
    assert await redis.xlen(keys.optout_audit) == 2  # the default keeps 2 years


async def test_export_by_number_and_time(redis: aioredis.Redis, keys: Keys) -> None:
    await opt_out(redis, keys, CN, source="mo:cmcc", at=T0, text="我要退订")
    await opt_out(redis, keys, "+447700900123", category="marketing", source="api", at=T0)
    await asyncio.sleep(0.01)  # ids are milliseconds: keep t_mid apart from both sides
    t_mid = time.time()
    await asyncio.sleep(0.01)
    await opt_in(redis, keys, CN, source="cli", at=T0 + 9)
    mine = [r async for r in records.read(redis, keys, number="8613800138000")]
    assert [(r["action"], r["source"], r["text"], r["number"]) for r in mine] == [
        ("out", "mo:cmcc", "我要退订", CN), ("in", "cli", "", CN)]
    early = [r async for r in records.read(redis, keys, until=t_mid)]
    assert [r["number"] for r in early] == [CN, "+447700900123"]
    late = [r async for r in records.read(redis, keys, since=t_mid)]
    assert [r["action"] for r in late] == ["in"]
    text = records.encode(mine, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["text"] == "我要退订" and list(rows[0]) == list(records.EXPORT_FIELDS)
    assert [json.loads(x)["action"] for x in records.encode(mine, "jsonl").splitlines()] == [
        "out", "in"]


async def test_import_in_chunks_and_find_by_number(redis: aioredis.Redis, keys: Keys) -> None:
    lines = [f"+86138{i:08d}\n" for i in range(3500)] + [CN + "\n"]
    result = await bulk.import_optouts(redis, keys, lines, note="list.csv", chunk=700)
    assert (result.read, result.new) == (3501, 3501)  # six chunks, every one counted
    await opt_in(redis, keys, CN, source="api", at=T0)
    found = [r async for r in records.read(redis, keys, number=CN.lstrip("+"))]
    assert [(r["action"], r["source"], r["note"]) for r in found] == [
        ("out", "import", "list.csv"), ("in", "api", "")]
    # Found through the index: one bucket HASH holds the number's record ids.
    bucket = keys.consent_index(records.bucket_of("8613800138000"))
    assert len((await redis.hget(bucket, "8613800138000") or "").split()) == 2


async def test_records_without_an_index_are_found_by_scanning(redis: aioredis.Redis,
                                                              keys: Keys) -> None:
    # Records written before the index existed (plain XADDs), a few thousand of them.
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2500):
            pipe.xadd(keys.optout_audit, {"action": "out", "number": f"86139{i:08d}",
                                          "scope": "*", "source": "mo", "at": "1"})
        await pipe.execute()
    found = [r async for r in records.read(redis, keys, number="8613900002222")]
    assert [(r["number"], r["source"]) for r in found] == [("+8613900002222", "mo")]


async def test_index_entries_keep_the_newest_ids(redis: aioredis.Redis, keys: Keys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "INDEX_MAX", 60)  # about three ids
    for i in range(6):
        await opt_out(redis, keys, CN, scope=f"s{i}", source="api", at=T0 + i)
    found = [r["scope"] async for r in records.read(redis, keys, number=CN.lstrip("+"))]
    assert found == ["s3", "s4", "s5"]
    assert await redis.xlen(keys.optout_audit) == 6  # the log itself keeps them all


async def test_import_parses_lists_and_reports_bad_lines(redis: aioredis.Redis,
                                                         keys: Keys) -> None:
    await opt_out(redis, keys, "+8613800000002", source="mo:cmcc", at=T0)  # earlier
    lines = ["number,name\n", "+8613800000001,Li\n", "# comment\n", "\n", "8613800000002\n",
             "0086 138-0000-0003\n", "not a number\n", "+86 12\n", "13800000004\n"]
    result = await bulk.import_optouts(redis, keys, lines, note="old.csv", at=T0 + 100)
    assert (result.read, result.new, result.invalid) == (4, 3, 2)
    assert result.invalid_lines == [(7, "not a number"), (8, "+86 12")]
    # An earlier opt-out keeps its own time; the import still records its consent entry.
    assert await optout_status(redis, keys, "8613800000002") == {"*": T0}
    assert await optout_status(redis, keys, "8613800000001") == {"*": T0 + 100}
    assert await redis.exists(keys.optout("13800000004"))  # digits taken as E.164
    national = await bulk.import_optouts(redis, keys, ["13800000005\n", "+447700900123\n"],
                                         country_code="86", category="marketing")
    assert national.read == 2
    assert await optout_status(redis, keys, "8613800000005") != {}
    assert "*|marketing" in await optout_status(redis, keys, "447700900123")
    assert await redis.xlen(keys.optout_audit) == 1 + 4 + 2


def test_cli_import_and_export(tmp_path: Path, redis_url: str,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import redis as syncredis

    monkeypatch.setenv("REDIS_URL", redis_url)
    with syncredis.Redis.from_url(redis_url) as r:
        r.flushdb()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[policy]\nfile = "{ROOT / "policies" / "policy.toml"}"\n'
                   '[[carrier]]\n'
                   'mo_country_code = "86"\nname = "sim"\nhost = "127.0.0.1"\nsystem_id = "a"\n'
                   'password = "b"\n', encoding="utf-8")
    lst = tmp_path / "optouts.txt"
    lst.write_text("+8613800000001\n+8613800000002\nbogus\n", encoding="utf-8")
    assert main(["consent", "import", "-c", str(cfg), str(lst)]) == 1  # a bad line
    out, err = capsys.readouterr()
    assert "imported 2 numbers" in out and "line 3: 'bogus'" in err
    assert main(["consent", "import", "-c", str(cfg), str(lst), "--category", "otp"]) == 2
    assert "not one recipients may opt out of alone" in capsys.readouterr().err
    assert main(["optout", "add", "+8613800000003", "--category", "marketing",
                 "-c", str(cfg)]) == 0
    assert "opted out of marketing messages" in capsys.readouterr().out
    assert main(["consent", "export", "-c", str(cfg), "--number", "+8613800000001"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["number"], r["source"], r["note"]) for r in rows] == [
        ("+8613800000001", "import", "optouts.txt")]
    dest = tmp_path / "all.csv"
    assert main(["consent", "export", "-c", str(cfg), "--format", "csv", "-o", str(dest),
                 "--since", str(time.time() - 60)]) == 0
    assert "exported 3 consent records" in capsys.readouterr().err
    got = list(csv.DictReader(io.StringIO(dest.read_text(encoding="utf-8"))))
    assert [(g["number"], g["category"], g["source"]) for g in got] == [
        ("+8613800000001", "", "import"), ("+8613800000002", "", "import"),
        ("+8613800000003", "marketing", "cli")]
    assert main(["consent", "export", "-c", str(cfg), "--since", "yesterday"]) == 2


# MO and API end to end -----------------------------------------------------------------
async def test_mo_sentence_opt_out_then_resubscribe_and_api(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys, smsc: Smsc
) -> None:
    sim = await smsc(receipt_delay_s=0.01)
    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True,
                            policy=DEMO_POLICY))
    digits = "8613800138000"

    async def until(pred: object) -> None:
        for _ in range(200):
            if await pred():  # type: ignore[operator]
                return
            await asyncio.sleep(0.05)
        raise AssertionError("condition not met")

    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        await sim.inject_mo("13800138000", "10690001", "我要退订，谢谢", wait=True)

        async def opted_out() -> bool:
            return bool(await redis.exists(keys.optout(digits)))
        await until(opted_out)
        async with Client(redis_url, queue=cfg.queue) as client:
            [(promo, _)] = await client.send([{"to": CN, "category": "marketing",
                                               "text": "【京东】双11全场满300减50 回TD退订"}])
        assert (await wait_final(redis, keys, [promo], 20))[promo]["state"] == "rejected"

        await sim.inject_mo("13800138000", "10690001", "重新订阅", wait=True)

        async def opted_in() -> bool:
            return not await redis.exists(keys.optout(digits))
        await until(opted_in)
        async with Client(redis_url, queue=cfg.queue) as client:
            [(again, _)] = await client.send([{"to": CN, "category": "marketing",
                                               "text": "【京东】欢迎回来 回TD退订"}])
        assert (await wait_final(redis, keys, [again], 20))[again]["state"] == "delivered"

        # API: a category preference, a refused category, and the consent export.
        async with http.post(f"{base}/v1/optouts/{CN}",
                             params={"category": "transactional"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["preferences"] == [{"scope": "*", "category": "transactional",
                                        "since": pytest.approx(time.time(), abs=30)}]
        async with http.post(f"{base}/v1/optouts/{CN}", params={"category": "otp"}) as r:
            assert r.status == 422
            assert (await r.json())["errors"][0]["field"] == "category"
        async with http.get(f"{base}/v1/consent", params={"number": CN}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/x-ndjson")
            rows = [json.loads(x) for x in (await r.text()).splitlines()]
        async with http.get(f"{base}/v1/consent",
                            params={"format": "csv", "since": "2000-01-01T00:00:00Z"}) as r:
            table = list(csv.DictReader(io.StringIO(await r.text())))
        async with http.get(f"{base}/v1/consent", params={"since": "soon"}) as r:
            assert r.status == 422
    assert [(x["action"], x["category"], x["source"], x["text"]) for x in rows] == [
        ("out", "", "mo:sim", "我要退订，谢谢"), ("in", "", "mo:sim", "重新订阅"),
        ("out", "transactional", "api", "")]
    assert len(table) == 3 and table[0]["number"] == CN
    kinds = [f["state"] for _, f in await redis.xrange(keys.events)
             if f["state"] in ("optout", "optin")]
    assert kinds == ["optout", "optin"]


async def test_an_mo_opt_out_from_an_odd_sender_fails_alone(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, keys: Keys
) -> None:
    from gatewayd.model import InboundMessage
    from gatewayd.pipeline.inbound import InboundHandler

    cfg = load(write_config(tmp_path, redis_url=redis_url, sim_port=9, policy=DEMO_POLICY))
    handler = InboundHandler(redis, keys, cfg, lambda: DEFAULT, clock=lambda: T0)
    await handler.on_inbound([
        InboundMessage(carrier="sim", source="JD-SHOP", destination="106", text="TD",
                       received_at=T0),
        InboundMessage(carrier="sim", source="+8613800138000", destination="106",
                       text="退订谢谢", received_at=T0),
    ])
    assert await optout_status(redis, keys, CN) == {"*": T0}
    assert await redis.xlen(keys.inbound) == 2  # both replies kept in the MO stream


async def test_an_opt_out_never_changes_without_its_record(
        redis: aioredis.Redis, keys: Keys) -> None:
    """The record goes first and the opt-out HASH last, in one script: when the record
    cannot be written (here the consent stream's key holds a string), the opt-out is
    left as it was, for a single change and for a bulk import alike."""
    from redis.exceptions import ResponseError

    await opt_out(redis, keys, "+8613800138000", scope="*", source="api", at=1.0)
    await redis.delete(keys.optout_audit)
    await redis.set(keys.optout_audit, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await opt_in(redis, keys, "+8613800138000", scope="*", source="api", at=2.0)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await opt_out(redis, keys, "+8613900139000", scope="*", source="api", at=2.0)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bulk.import_optouts(redis, keys, ["+8613700137000"])
    assert await optout_status(redis, keys, "8613800138000") == {"*": 1.0}  # still out
    assert not await redis.exists(keys.optout("8613900139000"))
    assert not await redis.exists(keys.optout("8613700137000"))
