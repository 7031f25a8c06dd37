"""CMPP's clock fields: the CONNECT timestamp, ValId_Time, and the dates in reports.

All of them are the ISMG's local time (Beijing, UTC+8, for China Mobile): the offset is a
setting (CmppSettings.utc_offset_h), never the host's time zone, so a gateway running in
UTC signs its CONNECT with the time the ISMG expects.
"""

from __future__ import annotations

import calendar
import time


def _local(unix: float, utc_offset_h: float) -> time.struct_time:
    return time.gmtime(unix + utc_offset_h * 3600)


def connect_timestamp(unix: float, utc_offset_h: float) -> str:
    """MMDDHHMMSS: the AuthenticatorSource's plaintext (its integer value goes on the wire)."""
    return time.strftime("%m%d%H%M%S", _local(unix, utc_offset_h))


def validity(seconds: float, unix: float, mode: str, utc_offset_h: float) -> str:
    """ValId_Time for a message that must not be delivered after ``seconds`` from now.

    SMPP 3.3 time format, as the CMPP specification says: YYMMDDhhmmsstnnp, where t is
    tenths of a second, nn the offset from UTC in quarter hours and p '+' / '-'
    (absolute) or 'R' (relative: the fields are a span). 0 or less: "" (ISMG default).
    """
    if seconds <= 0:
        return ""
    if mode == "relative":
        s = int(seconds)
        days, s = divmod(s, 86400)
        hours, s = divmod(s, 3600)
        minutes, s = divmod(s, 60)
        # A span of more than 99 days is capped: the field has two digits for days.
        days = min(days, 99)
        return f"0000{days:02d}{hours:02d}{minutes:02d}{s:02d}000R"
    quarters = round(abs(utc_offset_h) * 4)
    sign = "-" if utc_offset_h < 0 else "+"
    stamp = time.strftime("%y%m%d%H%M%S", _local(unix + seconds, utc_offset_h))
    return f"{stamp}0{quarters:02d}{sign}"


# Reports of one minute share their times: each distinct stamp is parsed once.
_REPORT_TIMES: dict[tuple[str, float], float] = {}
_REPORT_TIMES_MAX = 4096


def report_time(value: str, utc_offset_h: float) -> float:
    """YYMMDDHHMM (a report's Submit_time / Done_time, ISMG local) -> Unix time; 0.0 if
    missing or invalid. 12 digits (with seconds) are accepted too."""
    key = (value, utc_offset_h)
    t = _REPORT_TIMES.get(key)
    if t is None:
        t = _report_time(value, utc_offset_h)
        if len(_REPORT_TIMES) >= _REPORT_TIMES_MAX:
            _REPORT_TIMES.clear()
        _REPORT_TIMES[key] = t
    return t


def _report_time(value: str, utc_offset_h: float) -> float:
    digits = value.strip()
    if len(digits) not in (10, 12) or not digits.isdigit():
        return 0.0
    year, month, day = 2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    hour, minute = int(digits[6:8]), int(digits[8:10])
    second = int(digits[10:12]) if len(digits) == 12 else 0
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return 0.0
    local = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return float(local - utc_offset_h * 3600)
