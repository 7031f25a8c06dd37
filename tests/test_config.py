"""Config validation: every refusal is one line naming the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.cli import main
from gatewayd.config import load_config
from gatewayd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[[carrier]]
mo_country_code = "86"
name = "a"
host = "127.0.0.1"
system_id = "acme"
password = "secret"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)
    return p


def refuse(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: ")
    return msg


def test_shipped_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCC_SMPP_PASSWORD", "pw1")
    monkeypatch.setenv("UNICOM_SMPP_PASSWORD", "pw2")
    monkeypatch.setenv("CMCC_CMPP_SECRET", "pw3")
    monkeypatch.setenv("CMCC_CMPP_SECRET", "a long shared secret")
    for name in ("demo.toml", "gatewayd.example.toml"):
        cfg = load_config(ROOT / "config" / name)
        assert cfg.carrier


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.queue.classes == ["otp", "transactional", "marketing"]
    assert cfg.carrier[0].window == 100 and cfg.http.listen.startswith("127.0.0.1:")


def test_typo_key_is_refused(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + "windwo = 10\n")
    assert "carrier[0].windwo: unknown key" in msg


def test_typo_section_is_refused(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + "[queeu]\nread_batch = 1\n")
    assert "queeu: unknown key" in msg


def test_wrong_type_is_refused(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + 'window = "lots"\n')
    assert "carrier[0].window" in msg and "int" in msg


def test_missing_password_is_refused(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD.replace('password = "secret"\n', ""))
    assert "carrier[0].password: missing" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD.replace('system_id = "acme"\n', ""))
    assert "carrier[0].system_id: required key is missing" in msg


def test_zero_tps_is_refused(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + "tps = 0\n")
    assert "carrier[0].tps: must be greater than 0" in msg


def test_routing_to_unknown_carrier(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + '[routing.prefixes]\n"86138" = ["b"]\n')
    assert "routing.prefixes.86138: unknown carrier 'b'" in msg


def test_bad_toml(tmp_path: Path) -> None:
    msg = refuse(tmp_path, GOOD + "[[carrier\n")
    assert "not valid TOML" in msg


def test_check_config_command_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, GOOD + "windwo = 1\n")
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "carrier[0].windwo" in err
    good = write(tmp_path, GOOD)
    assert main(["check-config", "-c", str(good)]) == 0


def test_a_redis_password_in_a_world_readable_file_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace('password = "secret"', 'password_env = "HOME"')
    p = write(tmp_path, '[redis]\nurl = "redis://gw:s3cret@127.0.0.1:6379/0"\n' + text)
    p.chmod(0o644)
    assert main(["check-config", "-c", str(p)]) == 0
    assert "readable by all users" in capsys.readouterr().err
    p.write_text(text)
    assert main(["check-config", "-c", str(p)]) == 0
    assert "readable by all users" not in capsys.readouterr().err


def test_only_run_needs_the_smpp_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under systemd the secret comes from EnvironmentFile, which an operator's shell
    lacks: check-config notes it, commands that only talk to Redis do not need it."""
    monkeypatch.delenv("GW_TEST_SMPP_SECRET", raising=False)
    p = write(tmp_path, GOOD.replace('password = "secret"',
                                     'password_env = "GW_TEST_SMPP_SECRET"'))
    with pytest.raises(ConfigError, match=r"carrier\[0\]\.password_env: environment "
                                          r"variable GW_TEST_SMPP_SECRET is not set"):
        load_config(p)
    assert load_config(p, need_secrets=False).carrier[0].password_env == "GW_TEST_SMPP_SECRET"
    assert main(["check-config", "-c", str(p)]) == 0
    err = capsys.readouterr().err
    assert "carrier[0].password_env: GW_TEST_SMPP_SECRET is not set" in err
    assert "gatewayd run` needs it" in err
    monkeypatch.setenv("GW_TEST_SMPP_SECRET", "pw")
    assert main(["check-config", "-c", str(p)]) == 0
    assert "not set" not in capsys.readouterr().err


CMPP = """
[[carrier]]
name = "cmcc"
protocol = "cmpp"
host = "127.0.0.1"
port = 7890
system_id = "901234"
password = "a shared secret longer than eight"
source_addr = "106900001234"
window = 16
mo_country_code = "86"

[carrier.cmpp]
version = "3.0"
service_id = "MJS0019905"
"""


def test_cmpp_carrier_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CMPP))
    c = cfg.carrier[0]
    assert (c.protocol, c.cmpp.version, c.cmpp.service_id) == ("cmpp", "3.0", "MJS0019905")
    assert (c.cmpp.fee_user_type, c.cmpp.fee_type, c.cmpp.fee_code) == (2, "01", "000000")
    assert load_config(write(tmp_path, GOOD)).carrier[0].protocol == "smpp"


@pytest.mark.parametrize(("change", "key", "words"), [
    (('system_id = "901234"', 'system_id = "acme01"'), "carrier[0].system_id", "SP id"),
    (('source_addr = "106900001234"', 'source_addr = "ACME"'), "carrier[0].source_addr",
     "access number"),
    (('window = 16', 'window = 16\nreceiver_binds = 1'), "carrier[0].receiver_binds",
     "no receiver-only"),
    (('window = 16', 'window = 16\nlong_messages = "payload"'), "carrier[0].long_messages",
     "UDH"),
    (('service_id = "MJS0019905"', 'service_id = "MJS0019905XX"'),
     "carrier[0].cmpp.service_id", "service code"),
    (('service_id = "MJS0019905"', 'service_id = "x"\nfee_type = "09"'),
     "carrier[0].cmpp.fee_type", "free"),
    (('service_id = "MJS0019905"', 'service_id = "x"\nfee_user_type = 3'),
     "carrier[0].cmpp.fee_terminal_id", "required"),
    (('version = "3.0"', 'version = "3"'), "carrier[0].cmpp.version", "enum"),
    (('service_id = "MJS0019905"', 'servce_id = "x"'), "carrier[0].cmpp.servce_id",
     "unknown key"),
])
def test_cmpp_carrier_refusals(tmp_path: Path, change: tuple[str, str], key: str,
                               words: str) -> None:
    msg = refuse(tmp_path, CMPP.replace(*change))
    assert f": {key}: " in msg and words in msg, msg


def test_check_config_names_a_bad_cmpp_key(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, CMPP.replace('system_id = "901234"', 'system_id = "90123"'))
    assert main(["check-config", "-c", str(p)]) == 2
    assert "carrier[0].system_id" in capsys.readouterr().err
    assert main(["check-config", "-c", str(write(tmp_path, CMPP))]) == 0


def test_a_carrier_must_say_how_it_writes_mo_senders(tmp_path: Path) -> None:
    without = GOOD.replace('mo_country_code = "86"\n', "")
    msg = refuse(tmp_path, without)
    assert "carrier[0].mo_country_code: required" in msg and '"international"' in msg
    assert "not a country calling code" in refuse(
        tmp_path, without + 'mo_country_code = "999"\n')
    assert "not a country calling code" in refuse(
        tmp_path, without + 'mo_country_code = "+86"\n')
    cfg = load_config(write(tmp_path, without + 'mo_country_code = "international"\n'))
    assert cfg.carrier[0].mo_country_code == "international"
    # check-config says the same, in one line, exit 2.
    rc = main(["check-config", "-c", str(write(tmp_path, without))])
    assert rc == 2


def test_the_example_config_ships_no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCC_SMPP_PASSWORD", "pw1")
    monkeypatch.setenv("UNICOM_SMPP_PASSWORD", "pw2")
    monkeypatch.setenv("CMCC_CMPP_SECRET", "pw3")
    cfg = load_config(ROOT / "config" / "gatewayd.example.toml")
    assert cfg.http.api_keys == []
    assert all(c.mo_country_code for c in cfg.carrier)


def test_receipt_ids_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config(write(tmp_path, GOOD)).carrier[0].receipt_ids == "auto"
    cfg = load_config(write(tmp_path, GOOD + 'receipt_ids = "hex-to-decimal"\n'))
    assert cfg.carrier[0].receipt_ids == "hex-to-decimal"
    msg = refuse(tmp_path, GOOD + 'receipt_ids = "hex"\n')
    assert ": carrier[0].receipt_ids: " in msg, msg
    # CMPP reports carry the SUBMIT_RESP's own Msg_Id: no base to convert.
    msg = refuse(tmp_path, CMPP.replace("window = 16",
                                        'window = 16\nreceipt_ids = "decimal-to-hex"'))
    assert ": carrier[0].receipt_ids: " in msg and "CMPP" in msg, msg
    assert load_config(write(tmp_path, CMPP.replace(
        "window = 16", 'window = 16\nreceipt_ids = "same"'))).carrier[0].receipt_ids == "same"
    # Entries on one SMSC account (same host, port, system_id) share receipts: one value.
    second = GOOD.replace('name = "a"', 'name = "b"')
    msg = refuse(tmp_path, GOOD + 'receipt_ids = "same"\n' + second)
    assert ": carrier[1].receipt_ids: " in msg and "same SMSC account" in msg, msg
    p = write(tmp_path, GOOD + 'receipt_ids = "same"\n' + second + 'receipt_ids = "same"\n')
    assert main(["check-config", "-c", str(p)]) == 0
    p = write(tmp_path, GOOD + 'receipt_ids = "decimal"\n')
    assert main(["check-config", "-c", str(p)]) == 2
    assert "carrier[0].receipt_ids" in capsys.readouterr().err
