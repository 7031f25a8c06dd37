"""`gatewayd policy explain` and `gatewayd optout add|remove|check` against a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gatewayd.cli import main
from gatewayd.store.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
AT_NIGHT = "2024-06-10T23:30:00+08:00"
AT_NOON = "2024-06-10T12:00:00+08:00"


def config(tmp_path: Path, redis_url: str = "") -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                 f'[redis]\nurl = "{redis_url}"\n'
                 f'[policy]\nfile = "{ROOT / "policies" / "policy.toml"}"\n'
                 '[[carrier]]\n'
                 'mo_country_code = "86"\nname = "sim"\nhost = "127.0.0.1"\nsystem_id = "a"\n'
                 'password = "b"\n', encoding="utf-8")
    return p


def explain(cfg: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main(["policy", "explain", "-c", str(cfg), "--to", "+8613800138000", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The CLI runs its own event loop, so these tests are synchronous."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


def test_explain_json_reports_every_check(tmp_path: Path, redis_url: str,
                                          sync_redis: redis.Redis,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = config(tmp_path, redis_url)
    rc, out, _ = explain(cfg, capsys, "--text", "【京东】夏季大促", "--category", "marketing",
                      "--at", AT_NIGHT, "--json")
    assert rc == 0
    report = json.loads(out)
    assert (report["verdict"], report["check"], report["reason"]) == (
        "defer", "quiet_hours", "quiet_hours")
    assert report["until"] > 0
    assert report["text"] == "【京东】夏季大促 回TD退订"
    assert [c["check"] for c in report["checks"]] == [
        "content", "keywords", "optout", "quiet_hours", "duplicate", "freq_cap", "tenant_rate",
        "cooling"]
    assert sync_redis.dbsize() == 0  # nothing consumed


def test_explain_after_optout_via_cli(tmp_path: Path, redis_url: str,
                                      sync_redis: redis.Redis,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    cfg = config(tmp_path)
    assert main(["optout", "add", "+8613800138000", "-c", str(cfg)]) == 0
    assert "opted out of everything" in capsys.readouterr().out
    rc, out, _ = explain(cfg, capsys, "--text", "【京东】夏季大促 回TD退订", "--category",
                      "marketing", "--at", AT_NOON)
    assert rc == 0
    assert "final    reject  by optout: optout" in out
    # A national number with its country is the same number.
    assert main(["optout", "check", "13800138000", "--country", "86", "--json",
                 "-c", str(cfg)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert list(status["opted_out"]) == ["*"]
    assert main(["optout", "remove", "+8613800138000", "-c", str(cfg)]) == 0
    assert "not opted out" in capsys.readouterr().out
    audit = sync_redis.xrange(Keys("gw:").optout_audit)
    assert [f[b"action"] for _, f in audit] == [b"out", b"in"]
    assert {f[b"source"] for _, f in audit} == {b"cli"}


def test_explain_without_redis_reports_local_checks_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = config(tmp_path)
    rc, out, err = explain(cfg, capsys, "--text", "【京东】代 开 发 票", "--at", AT_NOON)
    assert rc == 2
    assert "keywords     reject   keyword:invoices:代开发票" in out
    assert "optout       skipped" in out
    assert "Redis checks skipped" in err


def test_optout_rejects_a_bad_number(tmp_path: Path, redis_url: str, sync_redis: redis.Redis,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["optout", "add", "+123", "-c", str(config(tmp_path))]) == 2
    assert "not a valid phone number" in capsys.readouterr().err
    assert main(["optout", "add", "123", "-c", str(config(tmp_path))]) == 2
    assert "--country" in capsys.readouterr().err


def test_optout_never_reads_a_national_number_as_plus_one(
        tmp_path: Path, redis_url: str, sync_redis: redis.Redis,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 9: `optout add 13900000000` once opted out +1 390-000-0000."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    cfg = str(config(tmp_path))
    assert main(["optout", "add", "13900000000", "-c", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "+ and its country code" in err and "--country" in err
    assert sync_redis.keys("gw:optout:*") == []
    assert main(["optout", "add", "13900000000", "--country", "86", "-c", cfg]) == 0
    assert "+8613900000000: opted out of everything" in capsys.readouterr().out
    assert sync_redis.keys("gw:optout:{*") == [b"gw:optout:{8613900000000}"]
    assert main(["optout", "add", "13900000000", "--country", "999", "-c", cfg]) == 2
    assert "--country" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "field"), [
    (["--to", "12345"], "to"),  # no valid number: intake refuses it, so explain does
    (["--to", "+86 138 0013 8000"], "to"),
    (["--category", "promo"], "category"),
    (["--id", "bad id!"], "id"),
    (["--from", "x" * 21], "from"),
    (["--text", "长" * 800], "text"),  # more SMS parts than queue.max_segments
])
def test_explain_validates_exactly_as_intake(tmp_path: Path, args: list[str], field: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewayd.errors import MessageError
    from gatewayd.pipeline.intake import parse_message

    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = config(tmp_path)
    base = {"--to": "+8613800138000", "--text": "【京东】验证码 123456", "--category": "otp"}
    argv = dict(base)
    argv.update(dict(zip(args[::2], args[1::2], strict=True)))
    # The daemon's own validation says the same thing.
    raw = {"to": argv["--to"], "text": argv["--text"], "category": argv["--category"],
           "id": argv.get("--id", "explain"), "from": argv.get("--from", "")}
    with pytest.raises(MessageError) as intake:
        parse_message(raw, classes=["otp", "transactional", "marketing"], max_segments=10)
    assert intake.value.field == field
    flat = [x for kv in argv.items() for x in kv]
    rc = main(["policy", "explain", "-c", str(cfg), *flat, "--json"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert json.loads(out) == {"verdict": "invalid", "field": field,
                               "reason": intake.value.reason}
    assert f"the daemon would refuse this message: {field}:" in err
