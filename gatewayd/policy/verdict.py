"""The outcome of one policy check (or of the whole engine) for one message."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Action = Literal["send", "defer", "reject"]

# Check names, in the order the engine runs them (see gatewayd.policy.engine).
CHECK_ORDER: Final = (
    "content", "keywords", "optout", "quiet_hours", "duplicate", "freq_cap", "tenant_rate",
    "cooling",
)


class Verdict(msgspec.Struct, kw_only=True):
    action: Action
    check: str = ""  # which check decided ("" for a plain send)
    reason: str = ""  # short and machine-friendly: "keyword:gambling:博彩", "freq_cap:otp:1/60s"
    until: float = 0.0  # for defer: Unix seconds when the message may be tried again
    text: str | None = None  # rewritten text (opt-out hint appended); None = unchanged
    flags: list[str] = msgspec.field(default_factory=list)  # review-list hits (still sent)


def send(text: str | None = None, flags: list[str] | None = None) -> Verdict:
    return Verdict(action="send", text=text, flags=flags or [])


def reject(check: str, reason: str) -> Verdict:
    return Verdict(action="reject", check=check, reason=reason)


def defer(check: str, reason: str, until: float) -> Verdict:
    return Verdict(action="defer", check=check, reason=reason, until=until)


SEND: Final = Verdict(action="send")  # shared read-only instance for per-check reports
