"""Check 4, quiet hours (pure): send only inside the category's window, recipient-local.

The recipient's zones come from the longest matching number prefix in
``[timezones.prefixes]`` (country code, or a longer prefix such as a NANP area code),
else ``[timezones].default``. A prefix may list several zones (a country spanning
several): the window is open only while it is open in every one of them, so nobody is
woken up. Local time is computed with zoneinfo, so DST shifts are followed.

Outside the window the message is DEFERRED to the next opening plus a deterministic
spread: crc32 of the message id mapped onto ``spread_s`` (at most half the window), so
a night's backlog does not all fall due at 08:00:00 and every daemon computes the same
time for the same message.
"""

from __future__ import annotations

import zlib
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gatewayd.policy.settings import SendWindow
from gatewayd.policy.verdict import Verdict, defer

Zones = tuple[ZoneInfo, ...]


class ZoneTable:
    """Number prefix -> zones, longest prefix first."""

    __slots__ = ("default", "longest", "zones")

    def __init__(self, zones: dict[str, Zones], default: Zones) -> None:
        self.zones = zones
        self.default = default
        self.longest = max((len(p) for p in zones), default=0)

    def lookup(self, digits: str) -> Zones:
        for k in range(min(self.longest, len(digits)), 0, -1):
            z = self.zones.get(digits[:k])
            if z is not None:
                return z
        return self.default


def is_open(window: SendWindow, zone: ZoneInfo, t: float) -> bool:
    local = datetime.fromtimestamp(t, zone)
    m = local.hour * 60 + local.minute
    if window.start_min < window.end_min:
        return window.start_min <= m < window.end_min
    return m >= window.start_min or m < window.end_min


def _wall_start(day: date, start: time, zone: ZoneInfo) -> float:
    """The instant the local clock reaches ``start`` on ``day``.

    In a DST gap (02:30 on a spring-forward night does not exist) that is the moment
    of the jump, found by bisection between the two readings of the wall time.
    """
    naive = datetime.combine(day, start)
    a = naive.replace(tzinfo=zone).timestamp()
    b = naive.replace(tzinfo=zone, fold=1).timestamp()
    if a == b or datetime.fromtimestamp(a, zone).replace(tzinfo=None) == naive:
        return min(a, b)
    lo, hi = min(a, b), max(a, b)
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return float(round(hi))


def _next_start(window: SendWindow, zone: ZoneInfo, t: float) -> float:
    """First local window start strictly after t in one zone."""
    day = datetime.fromtimestamp(t, zone).date()
    start = time(window.start_min // 60, window.start_min % 60)
    for add in range(3):
        cand = _wall_start(day + timedelta(days=add), start, zone)
        if cand > t:
            return cand
    raise AssertionError("a window start is always within two days")  # pragma: no cover


def next_opening(window: SendWindow, zones: Zones, t: float) -> float | None:
    """None when the window is open at t in every zone, else the first instant it is."""
    if all(is_open(window, z, t) for z in zones):
        return None
    cur = t
    for _ in range(16):
        closed = [z for z in zones if not is_open(window, z, cur)]
        if not closed:
            return cur
        cur = max(_next_start(window, z, cur) for z in closed)
    # The zones' windows never overlap: fall back to the first zone alone.
    return _next_start(window, zones[0], t)


def spread_offset(msg_id: str, spread_s: float) -> float:
    """Deterministic offset in [0, spread_s) from the message id."""
    if spread_s <= 0:
        return 0.0
    return (zlib.crc32(msg_id.encode()) % 1_000_000) / 1_000_000 * spread_s


class QuietHours:
    """The check for one batch (``now`` fixed): openings cached per (window, zones)."""

    __slots__ = ("_cache", "now", "table")

    def __init__(self, table: ZoneTable, now: float) -> None:
        self.table = table
        self.now = now
        self._cache: dict[tuple[SendWindow, Zones, float], tuple[float, float] | None] = {}

    def check(self, window: SendWindow, spread_s: float, digits: str,
              msg_id: str) -> Verdict | None:
        zones = self.table.lookup(digits)
        key = (window, zones, spread_s)
        try:
            found = self._cache[key]
        except KeyError:
            found = self._cache[key] = self._opening(window, zones, spread_s)
        if found is None:
            return None
        opening, spread = found
        return defer("quiet_hours", "quiet_hours", opening + spread_offset(msg_id, spread))

    def _opening(self, window: SendWindow, zones: Zones,
                 spread_s: float) -> tuple[float, float] | None:
        opening = next_opening(window, zones, self.now)
        if opening is None:
            return None
        length_s = ((window.end_min - window.start_min) % 1440) * 60
        spread = min(spread_s, length_s / 2)
        # Several zones: the shared window may be shorter than the configured one.
        if spread and not all(is_open(window, z, opening + spread) for z in zones):
            spread = 0.0
        return opening, spread
