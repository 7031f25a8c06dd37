"""Check 4 (quiet hours): recipient-local windows, DST and DST-free zones, spread."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.model import OutboundMessage
from gatewayd.policy.engine import PolicyEngine
from gatewayd.policy.quiet import is_open, next_opening, spread_offset
from gatewayd.policy.settings import parse_window
from gatewayd.policy.verdict import Verdict

CLASSES = ["otp", "transactional", "marketing"]
SH, NY, LDN = ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York"), ZoneInfo("Europe/London")


def at(zone: ZoneInfo, *args: int) -> float:
    return datetime(*args, tzinfo=zone).timestamp()  # type: ignore[misc]


def engine(tmp_path: Path, spread: float = 0.0, extra: str = "") -> PolicyEngine:
    p = tmp_path / "policy.toml"
    p.write_text(f'[timezones.prefixes]\n"1212" = "America/New_York"\n'
                 f"[category.marketing]\nspread_s = {spread}\n{extra}", encoding="utf-8")
    return PolicyEngine.load(p, classes=CLASSES)


def quiet(e: PolicyEngine, to: str, now: float, category: str = "marketing",
          msg_id: str = "m1") -> Verdict:
    msg = OutboundMessage(id=msg_id, to=to, text="【京东】大促 回TD退订", category=category)
    return dict(e.evaluate_local(msg, now))["quiet_hours"]


def test_window_boundaries_shanghai(tmp_path: Path) -> None:
    e = engine(tmp_path)
    cn = "+8613800138000"
    v = quiet(e, cn, at(SH, 2024, 6, 10, 7, 59, 59))
    assert (v.action, v.reason, v.until) == ("defer", "quiet_hours", at(SH, 2024, 6, 10, 8, 0))
    assert quiet(e, cn, at(SH, 2024, 6, 10, 8, 0)).action == "send"
    assert quiet(e, cn, at(SH, 2024, 6, 10, 20, 59, 59)).action == "send"
    v = quiet(e, cn, at(SH, 2024, 6, 10, 21, 0))
    assert (v.action, v.until) == ("defer", at(SH, 2024, 6, 11, 8, 0))
    # Just after midnight: today's opening, not tomorrow's.
    assert quiet(e, cn, at(SH, 2024, 6, 11, 0, 5)).until == at(SH, 2024, 6, 11, 8, 0)


def test_otp_and_transactional_exempt_by_default(tmp_path: Path) -> None:
    e = engine(tmp_path)
    night = at(SH, 2024, 6, 10, 3, 0)
    assert quiet(e, "+8613800138000", night, "otp").action == "send"
    assert quiet(e, "+8613800138000", night, "transactional").action == "send"


def test_recipient_zone_from_country_code(tmp_path: Path) -> None:
    e = engine(tmp_path)
    now = at(LDN, 2024, 6, 10, 12, 0)  # noon in London = 19:00 Shanghai
    assert quiet(e, "+447700900123", now).action == "send"
    assert quiet(e, "+8613800138000", now).action == "send"
    now = at(LDN, 2024, 6, 10, 7, 0)  # 07:00 London = 14:00 Shanghai
    assert quiet(e, "+447700900123", now).until == at(LDN, 2024, 6, 10, 8, 0)
    assert quiet(e, "+8613800138000", now).action == "send"
    # Unknown prefix: the default zone (Asia/Shanghai).
    assert quiet(e, "+999123456789", at(SH, 2024, 6, 10, 22, 0)).until == \
        at(SH, 2024, 6, 11, 8, 0)


def test_dst_spring_forward_and_fall_back_new_york(tmp_path: Path) -> None:
    e = engine(tmp_path)
    ny = "+12125550100"  # area code 212: America/New_York alone
    v = quiet(e, ny, at(NY, 2024, 3, 9, 22, 0))  # Saturday night, EST
    assert v.until == at(NY, 2024, 3, 10, 8, 0)
    assert datetime.fromtimestamp(v.until, UTC).hour == 12  # 08:00 EDT = 12:00 UTC
    v = quiet(e, ny, at(NY, 2024, 11, 2, 22, 0))
    assert datetime.fromtimestamp(v.until, UTC).hour == 13  # 08:00 EST = 13:00 UTC


def test_dst_london_and_dst_free_shanghai_same_utc_instant(tmp_path: Path) -> None:
    e = engine(tmp_path)
    # 2024-03-31 07:30 UTC: London just went to BST (08:30 local: open).
    now = datetime(2024, 3, 31, 7, 30, tzinfo=UTC).timestamp()
    assert quiet(e, "+447700900123", now).action == "send"
    # A week earlier, same UTC time, London was on GMT (07:30: closed until 08:00 GMT).
    now = datetime(2024, 3, 24, 7, 30, tzinfo=UTC).timestamp()
    assert quiet(e, "+447700900123", now).until == datetime(2024, 3, 24, 8, 0,
                                                            tzinfo=UTC).timestamp()
    # Shanghai has no DST: 21:00 local = 13:00 UTC on both dates.
    for day in (24, 31):
        t = datetime(2024, 3, day, 13, 0, tzinfo=UTC).timestamp()
        assert quiet(e, "+8613800138000", t).until == t + 11 * 3600


def test_window_start_inside_a_dst_gap_opens_at_the_jump() -> None:
    w = parse_window("02:30-05:00")
    assert w is not None
    opening = next_opening(w, (NY,), at(NY, 2024, 3, 10, 1, 0))
    assert opening == datetime(2024, 3, 10, 7, 0, tzinfo=UTC).timestamp()  # 03:00 EDT


def test_several_zones_must_all_be_open(tmp_path: Path) -> None:
    e = engine(tmp_path)
    us = "+13125550100"  # +1 without a listed area code: four continental zones
    # 09:00 in New York = 06:00 in Los Angeles: closed until 08:00 Pacific = 11:00 Eastern.
    v = quiet(e, us, at(NY, 2024, 6, 10, 9, 0))
    assert v.until == at(NY, 2024, 6, 10, 11, 0)
    assert quiet(e, us, at(NY, 2024, 6, 10, 11, 0)).action == "send"
    assert quiet(e, us, at(NY, 2024, 6, 10, 20, 59)).action == "send"


def test_window_across_midnight(tmp_path: Path) -> None:
    e = engine(tmp_path, extra='send_window = "22:00-06:00"\n')
    cn = "+8613800138000"
    assert quiet(e, cn, at(SH, 2024, 6, 10, 23, 0)).action == "send"
    assert quiet(e, cn, at(SH, 2024, 6, 11, 5, 59)).action == "send"
    assert quiet(e, cn, at(SH, 2024, 6, 11, 6, 0)).until == at(SH, 2024, 6, 11, 22, 0)


def test_spread_is_deterministic_and_bounded(tmp_path: Path) -> None:
    e = engine(tmp_path, spread=1800)
    night = at(SH, 2024, 6, 10, 23, 0)
    opening = at(SH, 2024, 6, 11, 8, 0)
    untils = [quiet(e, "+8613800138000", night, msg_id=f"id-{i}").until for i in range(200)]
    assert all(opening <= u < opening + 1800 for u in untils)
    assert len(set(untils)) > 150  # spread, not a herd
    assert untils == [quiet(e, "+8613800138000", night, msg_id=f"id-{i}").until
                      for i in range(200)]


def test_spread_clamped_to_half_a_short_window(tmp_path: Path) -> None:
    e = engine(tmp_path, spread=7200, extra='send_window = "08:00-09:00"\n')
    for i in range(50):
        u = quiet(e, "+8613800138000", at(SH, 2024, 6, 10, 23, 0), msg_id=str(i)).until
        assert at(SH, 2024, 6, 11, 8, 0) <= u < at(SH, 2024, 6, 11, 8, 30)


@pytest.mark.parametrize("bad", ["8-21", "08:00", "25:00-26:00", "08:00-08:00", "08:60-09:00"])
def test_bad_windows_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


ZONES = [SH, NY, LDN, ZoneInfo("Australia/Sydney"), ZoneInfo("Asia/Kolkata")]
WINDOWS = ["08:00-21:00", "09:30-20:00", "22:00-06:00", "02:30-05:00", "00:00-01:00"]


@given(now=st.floats(min_value=1.7e9, max_value=1.77e9),
       zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=2, unique_by=lambda z: z.key),
       window=st.sampled_from(WINDOWS))
def test_property_opening_is_the_first_open_instant(
    now: float, zones: list[ZoneInfo], window: str
) -> None:
    w = parse_window(window)
    assert w is not None
    zs = tuple(zones)
    opening = next_opening(w, zs, now)
    if opening is None:
        assert all(is_open(w, z, now) for z in zs)
        return
    assert opening > now
    if not all(is_open(w, z, opening) for z in zs):
        # The zones' windows never overlap: the first zone's opening is the fallback.
        assert all(not all(is_open(w, z, now + k * 600) for z in zs) for k in range(300))
        assert is_open(w, zs[0], opening)
        return
    # No open instant before it (sampled every minute; windows start on whole minutes).
    t = now
    while t < opening - 60 and t < now + 3 * 86400:
        assert not all(is_open(w, z, t) for z in zs)
        t += 60


@given(msg_id=st.text(max_size=40), spread=st.floats(min_value=0, max_value=7200))
def test_property_spread_offset_in_range(msg_id: str, spread: float) -> None:
    off = spread_offset(msg_id, spread)
    assert 0 <= off <= spread
    assert off == spread_offset(msg_id, spread)
