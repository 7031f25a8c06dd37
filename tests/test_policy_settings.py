"""Loading the policy file: defaults, overrides, and errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.errors import ConfigError
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.settings import load_policy

CLASSES = ["otp", "transactional", "marketing"]
ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_built_in_defaults() -> None:
    pol = load_policy(None, CLASSES)
    otp, mkt = pol.categories["otp"], pol.categories["marketing"]
    assert [(c.limit, c.window_s) for c in otp.caps] == [(1, 60), (5, 3600), (10, 86400)]
    assert otp.on_cap == "reject" and not otp.suppress_optout
    assert [(c.limit, c.window_s) for c in mkt.caps] == [(1, 86400), (3, 604800)]
    assert mkt.on_cap == "defer" and mkt.suppress_optout and mkt.optout_hint == "append"
    assert str(pol.windows["marketing"]) == "08:00-21:00"
    assert pol.windows["otp"] is None and pol.windows["transactional"] is None
    assert "td" in pol.optout_words and "退订" in pol.optout_words


def test_shipped_policy_and_demo_policy_load() -> None:
    for name in ("policy.toml", "demo.toml"):
        e = PolicyEngine.load(ROOT / "policies" / name, classes=CLASSES)
        assert e.keyword_terms >= 30


def test_partial_override_keeps_other_defaults(tmp_path: Path) -> None:
    pol = load_policy(write(tmp_path, '[category.marketing]\nsend_window = "09:00-20:00"\n'),
                      CLASSES)
    mkt = pol.categories["marketing"]
    assert str(pol.windows["marketing"]) == "09:00-20:00"
    assert [(c.limit, c.window_s) for c in mkt.caps] == [(1, 86400), (3, 604800)]


def test_unknown_class_gets_transactional_defaults() -> None:
    pol = load_policy(None, ["otp", "bulk"])
    assert pol.categories["bulk"].on_cap == "defer"


@pytest.mark.parametrize(("text", "pattern"), [
    ("[content]\nforbidden_chars = \n", r"policy\.toml:2: not valid TOML"),
    ("\n\n[category.otp]\nmax_segments = 2\ncaps = [{ limit = 0, window_s = 60 }]\n",
     r"policy\.toml:5: category\.otp\.caps\[0\]: limit must be at least 1"),
    ("[category.marketing]\n\nsend_window = \"8-21\"\n",
     r"policy\.toml:3: category\.marketing\.send_window: '8-21': use \"HH:MM-HH:MM\""),
    ("[category.marketing]\nsend_windw = \"08:00-21:00\"\n",
     r"policy\.toml:2: category\.marketing\.send_windw: unknown key"),
    ("[category.promo]\ncaps = []\n",
     r"policy\.toml:1: category\.promo: not a queue class"),
    ("[category.otp]\non_cap = \"drop\"\n",
     r"policy\.toml:2: category\.otp\.on_cap: Invalid enum value 'drop'"),
    ("[timezones]\ndefault = \"Mars/Olympus\"\n",
     r"policy\.toml:2: timezones\.default: unknown time zone 'Mars/Olympus'"),
    ("[timezones.prefixes]\n\"+86\" = \"Asia/Shanghai\"\n",
     r"policy\.toml:2: timezones\.prefixes\.\+86: prefixes are 1-6 digits"),
    ("[[keywords]]\nname = \"a\"\nfile = \"a.txt\"\n\n[[keywords]]\nname = \"b\"\n"
     "file = \"missing.txt\"\n",
     r"policy\.toml:7: keywords\[1\]\.file: cannot read .*missing\.txt"),
    ("[[keywords]]\nname = \"a\"\nfile = \"a.txt\"\naction = \"ban\"\n",
     r"policy\.toml:4: keywords\[0\]\.action"),
    ("[[keywords]]\nname = \"a\"\nfile = \"a.txt\"\n[[keywords]]\nname = \"a\"\nfile = \"a.txt\"\n",
     r"policy\.toml:5: keywords\[1\]\.name: list 'a' is defined twice"),
    ("[content]\nappend_hint = \" 谢谢\"\n",
     r"policy\.toml:2: content\.append_hint: must contain one of content\.optout_hints"),
    ("[tenants.shop]\nburst = 3\n", r"policy\.toml:1: tenants\.shop\.rate: required key"),
    ("[tenants.shop]\nrate = 3\nburts = 3\n", r"policy\.toml:3: tenants\.shop\.burts: unknown"),
    ("[timezones.prefixes]\n\"86\" = 8\n", r"policy\.toml:2: timezones\.prefixes\.86: use a zone"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, pattern: str) -> None:
    (tmp_path / "a.txt").write_text("博彩\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=pattern):
        PolicyEngine.load(write(tmp_path, text), classes=CLASSES)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read policy file"):
        PolicyEngine.load(tmp_path / "nope.toml", classes=CLASSES)


def test_relative_paths_resolve_against_the_policy_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    d = tmp_path / "pol"
    (d / "lists").mkdir(parents=True)
    (d / "lists" / "x.txt").write_text("博彩\n", encoding="utf-8")
    (d / "p.toml").write_text('[[keywords]]\nname = "x"\nfile = "lists/x.txt"\n',
                              encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert PolicyEngine.load(d / "p.toml", classes=CLASSES).keyword_terms == 1
