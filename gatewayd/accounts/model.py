"""An account as stored (JSON in the accounts hash) and the checks of one message."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from gatewayd.model import OutboundMessage
from gatewayd.policy.content import signature_of

TENANT_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiKey(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One key of an account: only its SHA-256 digest is kept."""

    id: str
    digest: str
    created_at: float
    expires_at: float = 0.0  # 0: never
    label: str = ""


class Limits(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What an account may send. Empty lists and zero numbers mean "no limit"."""

    rate_per_s: float = 0.0  # token bucket shared by every daemon; 0: none
    burst: int = 0  # bucket size; 0: max(1, rate_per_s)
    # category -> messages a UTC day / month; "*" counts every category together.
    daily: dict[str, int] = {}
    monthly: dict[str, int] = {}
    categories: list[str] = []  # allowed categories; empty: any but the ceiling's
    # The highest-priority class the account may use: classes before it in
    # queue.classes (e.g. "otp") are refused. "" = any class.
    priority_ceiling: str = ""
    signatures: list[str] = []  # allowed 【signatures】 (without brackets)
    senders: list[str] = []  # allowed sender ids ("from")
    prefixes: list[str] = []  # allowed destination prefixes, e.g. "+86"


class Account(msgspec.Struct, kw_only=True, omit_defaults=True):
    tenant: str
    created_at: float
    suspended: bool = False
    keys: list[ApiKey] = []
    limits: Limits = msgspec.field(default_factory=Limits)

    def key(self, key_id: str) -> ApiKey | None:
        for k in self.keys:
            if k.id == key_id:
                return k
        return None


def check_limits(limits: Limits, classes: list[str]) -> None:
    """ValueError naming the field for limits that cannot be right."""
    if limits.rate_per_s < 0 or limits.burst < 0:
        raise ValueError("rate_per_s/burst: must not be negative")
    for name, quotas in (("daily", limits.daily), ("monthly", limits.monthly)):
        for cat, n in quotas.items():
            if n < 0:
                raise ValueError(f"{name}.{cat}: must not be negative")
            if cat != "*" and classes and cat not in classes:
                raise ValueError(f"{name}.{cat}: not a class in queue.classes {classes}")
    for cat in limits.categories:
        if classes and cat not in classes:
            raise ValueError(f"categories: {cat!r} is not a class in queue.classes {classes}")
    if limits.priority_ceiling and classes and limits.priority_ceiling not in classes:
        raise ValueError(f"priority_ceiling: {limits.priority_ceiling!r} is not a class in "
                         f"queue.classes {classes}")
    for p in limits.prefixes:
        if not re.fullmatch(r"\+?[0-9]{1,15}", p):
            raise ValueError(f"prefixes: {p!r} is not a number prefix like +86")


def allowed_categories(limits: Limits, classes: list[str]) -> frozenset[str] | None:
    """The categories an account may use, or None for any."""
    if not limits.categories and not limits.priority_ceiling:
        return None
    allowed = set(limits.categories or classes)
    if limits.priority_ceiling and limits.priority_ceiling in classes:
        allowed &= set(classes[classes.index(limits.priority_ceiling):])
    return frozenset(allowed)


def refusal(msg: OutboundMessage, limits: Limits,
            categories: frozenset[str] | None) -> tuple[str, str] | None:
    """(field, reason) when the account may not send this message, else None."""
    if categories is not None and msg.category not in categories:
        return "category", (f"this account may not send category {msg.category!r} "
                            f"(allowed: {sorted(categories)})")
    if limits.prefixes:
        to = msg.to if msg.to.startswith("+") else "+" + msg.to
        if not any(to.startswith(p if p.startswith("+") else "+" + p)
                   for p in limits.prefixes):
            return "to", f"destination not under this account's prefixes {limits.prefixes}"
    if limits.senders and msg.sender not in limits.senders:
        return "from", f"sender id {msg.sender!r} is not one of this account's senders"
    if limits.signatures:
        sig = signature_of(msg.text)
        if sig not in limits.signatures:
            return "text", (f"signature 【{sig}】 is not one of this account's signatures"
                            if sig else "the text carries no 【signature】 of this account")
    return None
