"""The policy engine: every outbound message's checks, in a fixed order, a batch at a time.

Order (the first check that does not SEND decides; later checks do not run):

1. ``content`` (pure): 【signature】, forbidden characters, opt-out hint (appended or
   required), segment count.                                     gatewayd.policy.content
2. ``keywords`` (pure): one Aho-Corasick automaton over all lists, on normalised text;
   ``block`` lists reject, ``review`` lists add flags.            gatewayd.policy.keywords
3. ``optout`` (Redis): marketing (or any category with ``suppress_optout``) to an
   opted-out number is rejected.                                  gatewayd.policy.optout
4. ``quiet_hours`` (pure): outside the category's recipient-local window, defer to the
   next opening plus a deterministic spread.                      gatewayd.policy.quiet
5. ``duplicate`` (Redis): same text, same number, within the window: reject.
6. ``freq_cap`` (Redis): per-recipient sliding windows; reject or defer.
7. ``tenant_rate`` (Redis): per-tenant token bucket; an empty bucket defers.
                                                                  gatewayd.policy.redischecks
8. ``cooling`` (Redis, read before 5-7 like quiet hours, off by default): marketing with
   links to a number that ignored the last K of them rests D days. gatewayd.policy.cooling

The pure checks run in-process; the Redis checks of a whole batch are ONE Lua call
(none at all when no message of the batch needs one). Counters are consumed only by
messages that pass every check. Time is the ``now`` passed in.

An engine is immutable once loaded: a reload builds a new one with ``PolicyEngine.load``
(which raises ConfigError and builds nothing when any file is wrong) and the daemon
swaps the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import redis.asyncio as aioredis

from gatewayd.model import OutboundMessage
from gatewayd.policy.content import ContentRules, signature_of
from gatewayd.policy.cooling import Cooling
from gatewayd.policy.keywords import KeywordMatcher
from gatewayd.policy.normalize import for_matching, number_key
from gatewayd.policy.quiet import QuietHours, ZoneTable
from gatewayd.policy.redischecks import REDIS_CHECKS, Outcome, RedisBatch, caps_spec
from gatewayd.policy.replies import Reply, ReplyMatcher
from gatewayd.policy.settings import CategorySettings, Policy, SendWindow, load_policy
from gatewayd.policy.verdict import CHECK_ORDER, Verdict, defer, reject
from gatewayd.store.keys import Keys

_TEXT_CACHE = 4096  # distinct (category, text) pairs remembered by an engine

__all__ = ["CHECK_ORDER", "PolicyEngine", "Verdict"]


@dataclass(frozen=True, slots=True)
class _Category:
    name: str
    settings: CategorySettings
    content: ContentRules
    window: SendWindow | None
    caps: str  # Lua caps spec, "" = none
    duplicate_ms: int
    optout_blanket: bool  # plain opt-outs ("*", or the scope) suppress this category
    optout_prefs: bool  # recipients may opt out of this category alone ("*|<name>")
    optout_fields: str | None  # the fields to test in "global" scope mode (None: none)


@dataclass(slots=True)
class _Local:
    """A message that passed content and keywords, waiting for the Redis checks."""

    index: int
    cat: _Category
    text: str | None
    flags: list[str]
    quiet: Verdict | None
    tenant: str


_SEPARATORS = str.maketrans({"\x1d": "?", "\x1e": "?", "\x1f": "?"})


def optout_fields(scopes: tuple[str, ...], category: str, blanket: bool,
                  prefs: bool) -> str | None:
    """The opt-out HASH fields that suppress a message (policy_batch.lua's format), or
    None when nothing can: the scopes themselves when plain opt-outs apply to the
    category, and ``<scope>|<category>`` when recipients may opt out of it alone."""
    if not (blanket or prefs):
        return None
    clean = [s.translate(_SEPARATORS) for s in scopes]
    fields = list(clean) if blanket else []
    if prefs:
        fields += [f"{s}|{category}" for s in clean]
    return "\x1d".join(fields)


class PolicyEngine:
    """Load with ``PolicyEngine.load(path, classes=...)``; see the module docstring."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.source = policy.source
        self.optout_words: frozenset[str] = policy.optout_words
        self.optout_scope = policy.optout_scope
        self._replies = ReplyMatcher(policy.replies)
        self._keywords = KeywordMatcher(policy.keyword_lists)
        self._cooling = Cooling(policy.cooling)
        self._zones = ZoneTable(policy.zones, policy.default_zones)
        self._tenants = {name: f"{rate:.9f}:{burst:.9f}"
                         for name, (rate, burst) in policy.tenants.items()}
        self._cats: dict[str, _Category] = {}
        for name, cs in policy.categories.items():
            prefs = name in policy.optout_categories
            self._cats[name] = _Category(
                name=name,
                settings=cs,
                content=ContentRules(cs, policy.content),
                window=policy.windows[name],
                caps=caps_spec([(c.limit, c.window_s) for c in cs.caps]),
                duplicate_ms=round(cs.duplicate_window_s * 1000),
                optout_blanket=cs.suppress_optout,
                optout_prefs=prefs,
                optout_fields=optout_fields(("*",), name, cs.suppress_optout, prefs),
            )
        # (category, text) -> what content and keywords say of it: both depend on
        # nothing else, and a campaign sends one text to many recipients. Bounded;
        # a reloaded policy is a new engine with an empty cache.
        self._by_text: dict[tuple[str, str], tuple[Verdict | None, str | None,
                                                    tuple[str, ...]]] = {}

    @classmethod
    def load(cls, path: str | Path | None, *, classes: list[str]) -> PolicyEngine:
        """Build an engine from a policy file (None/"" = built-in defaults).

        Raises gatewayd.errors.ConfigError naming the file, line/key and the fix.
        """
        return cls(load_policy(path, classes))

    @property
    def cooling_enabled(self) -> bool:
        """Whether the cooling-off check runs (then submitted link messages count)."""
        return self._cooling.s.enabled

    @property
    def keyword_terms(self) -> int:
        return self._keywords.terms

    def recipient_zones(self, number: str) -> tuple[ZoneInfo, ...]:
        """The time zones quiet hours use for this number (first = the main one)."""
        return self._zones.lookup(number_key(number))

    # MO replies -------------------------------------------------------------------------
    def classify_reply(self, text: str) -> Reply:
        """Opt-out, opt-in or neither (gatewayd.policy.replies): "TD", "我要退订",
        "Please STOP" opt out; "不要退订", "取消订单", "TD is great" do not; "订阅"
        opts back in."""
        return self._replies.classify(text)

    def is_optout_reply(self, text: str) -> bool:
        return self._replies.classify(text).kind == "optout"

    # Checks -----------------------------------------------------------------------------
    def _scope_value(self, msg: OutboundMessage, scope: str, sig: str | None) -> str:
        if scope == "signature":
            return sig if sig is not None else signature_of(msg.text)
        if scope == "sender":
            return msg.sender
        return ""

    def _pure(
        self, msg: OutboundMessage, cat: _Category, quiet: QuietHours, digits: str
    ) -> tuple[Verdict | None, _Local | None]:
        """Content and keywords decide, or the message goes on (with its quiet verdict)."""
        key = (cat.name, msg.text)
        known = self._by_text.get(key)
        if known is None:
            normalised = for_matching(msg.text)
            v, rewritten = cat.content.check(msg.text, normalised)
            flags: list[str] = []
            if v is None:
                v, flags = self._keywords.check(normalised, cat.name)
            if len(self._by_text) >= _TEXT_CACHE:
                self._by_text.clear()
            known = self._by_text[key] = (v, rewritten, tuple(flags))
        v, rewritten, cached_flags = known
        if v is not None:
            return msgspec.structs.replace(v), None  # each message its own verdict
        qv = None
        if cat.window is not None:
            qv = quiet.check(cat.window, cat.settings.spread_s, digits, msg.id or msg.to)
        return None, _Local(0, cat, rewritten, list(cached_flags), qv, msg.tenant)

    def _tenant_spec(self, tenant: str) -> str:
        if not tenant or not self._tenants:
            return ""
        return self._tenants.get(tenant) or self._tenants.get("*", "")

    def _add_redis(self, batch: RedisBatch, msg: OutboundMessage, loc: _Local, digits: str,
                   *, optout_only: bool) -> bool:
        """Queue the message's Redis checks; False when it needs none."""
        cat = loc.cat
        cs = cat.settings
        tenant_spec = self._tenant_spec(loc.tenant)
        fields = cat.optout_fields
        if not (fields is not None or (not optout_only and (
                cat.caps or cat.duplicate_ms or tenant_spec))):
            return False
        sig: str | None = None
        if fields is not None and self.optout_scope != "global":
            sig = signature_of(msg.text) if self.optout_scope == "signature" else None
            value = self._scope_value(msg, self.optout_scope, sig)
            if value:
                fields = optout_fields(("*", value), cat.name, cat.optout_blanket,
                                       cat.optout_prefs)
        caps_key = ""
        if loc.cat.caps:
            caps_key = "cap:" + loc.cat.name
            if cs.cap_scope != "recipient":
                caps_key += ":" + self._scope_value(msg, cs.cap_scope, sig)
        batch.add(
            digits=digits, optout_only=optout_only, optout_fields=fields,
            duplicate_ms=loc.cat.duplicate_ms, text_body=msg.text, member=msg.id,
            caps_key=caps_key, caps=loc.cat.caps, tenant=loc.tenant, tenant_spec=tenant_spec,
        )
        return True

    def _redis_verdict(self, o: Outcome, loc: _Local) -> Verdict | None:
        c = o.check
        if c == "send":
            return None
        if c == "optout":
            # The field that suppressed it: "*", a signature/sender, "*|marketing" ...
            return reject("optout", "optout" if o.detail == "*" else f"optout:{o.detail}")
        if c == "duplicate":
            return reject("duplicate", "duplicate")
        if c == "freq_cap":
            reason = f"freq_cap:{loc.cat.name}:{o.detail}"
            if loc.cat.settings.on_cap == "defer":
                return defer("freq_cap", reason, o.until)
            return reject("freq_cap", reason)
        if c == "tenant_rate":
            return defer("tenant_rate", f"tenant_rate:{loc.tenant}", o.until)
        raise RuntimeError(f"policy_batch.lua: unknown check {c!r}")

    @staticmethod
    def _unknown(msg: OutboundMessage) -> Verdict:
        return reject("content", f"content:unknown_category:{msg.category}")

    async def evaluate(self, redis: aioredis.Redis, keys: Keys, msgs: list[OutboundMessage],
                       now: float) -> list[Verdict]:
        """One verdict per message, same order. One Redis call at most."""
        out: list[Verdict | None] = [None] * len(msgs)
        quiet = QuietHours(self._zones, now)
        batch = RedisBatch(keys, now)
        waiting: list[_Local] = []
        passed: list[tuple[OutboundMessage, _Local, str]] = []
        for i, msg in enumerate(msgs):
            cat = self._cats.get(msg.category)
            if cat is None:
                out[i] = self._unknown(msg)
                continue
            digits = number_key(msg.to)
            v, loc = self._pure(msg, cat, quiet, digits)
            if loc is None:
                out[i] = v
                continue
            loc.index = i
            passed.append((msg, loc, digits))
        cool = [(m, loc) for m, loc, _d in passed if loc.quiet is None and
                self._cooling.applies(m)]
        if cool:
            # Held back like quiet hours: only the opt-out check still runs for them.
            for (_m, loc), v in zip(cool, await self._cooling.check(
                    redis, keys, [m for m, _loc in cool], now), strict=True):
                loc.quiet = v
        for msg, loc, digits in passed:
            if self._add_redis(batch, msg, loc, digits, optout_only=loc.quiet is not None):
                waiting.append(loc)
            else:
                out[loc.index] = loc.quiet or Verdict(action="send", text=loc.text,
                                                      flags=loc.flags)
        if waiting:
            results = await batch.run(redis)
            for loc, outcomes in zip(waiting, results, strict=True):
                v = self._redis_verdict(outcomes[0], loc) or loc.quiet
                if v is None:
                    v = Verdict(action="send", text=loc.text, flags=loc.flags)
                else:
                    v.flags = loc.flags
                out[loc.index] = v
        return [v if v is not None else Verdict(action="send") for v in out]

    def evaluate_local(self, msg: OutboundMessage, now: float) -> list[tuple[str, Verdict]]:
        """Each pure check's own verdict (all of them, not stopping at the first)."""
        cat = self._cats.get(msg.category)
        if cat is None:
            return [("content", self._unknown(msg))]
        normalised = for_matching(msg.text)
        v, rewritten = cat.content.check(msg.text, normalised)
        content = v or Verdict(action="send", check="content", text=rewritten)
        kv, flags = self._keywords.check(normalised, cat.name)
        keywords = kv or Verdict(action="send", check="keywords", flags=flags)
        qv = None
        if cat.window is not None:
            qv = QuietHours(self._zones, now).check(
                cat.window, cat.settings.spread_s, number_key(msg.to), msg.id or msg.to)
        quiet = qv or Verdict(action="send", check="quiet_hours")
        return [("content", content), ("keywords", keywords), ("quiet_hours", quiet)]

    async def explain(self, redis: aioredis.Redis | None, keys: Keys, msg: OutboundMessage,
                      now: float) -> dict[str, Any]:
        """Every check's verdict and the final one, without consuming any counter.

        ``redis`` None: the Redis checks are reported as ``skipped``.
        """
        checks: dict[str, Verdict | None] = dict(self.evaluate_local(msg, now))
        cat = self._cats.get(msg.category)
        if cat is not None and redis is not None:
            loc = _Local(0, cat, None, [], None, msg.tenant)
            batch = RedisBatch(keys, now)
            if self._add_redis(batch, msg, loc, number_key(msg.to), optout_only=False):
                outcomes = (await batch.run(redis, dry=True))[0]
                for name, o in zip(REDIS_CHECKS, outcomes, strict=True):
                    checks[name] = self._redis_verdict(o, loc) or Verdict(
                        action="send", check=name)
            else:
                for name in REDIS_CHECKS:
                    checks[name] = Verdict(action="send", check=name, reason="not configured")
            if self._cooling.applies(msg):
                cv = (await self._cooling.check(redis, keys, [msg], now))[0]
                checks["cooling"] = cv or Verdict(action="send", check="cooling")
            else:
                checks["cooling"] = Verdict(action="send", check="cooling",
                                            reason="not configured or not applicable")
        final: Verdict | None = None
        rows: list[dict[str, Any]] = []
        for name in CHECK_ORDER:
            if name not in checks:
                if cat is None:
                    continue
                rows.append({"check": name, "verdict": "skipped",
                             "reason": "needs Redis"})
                continue
            v = checks[name]
            assert v is not None
            row: dict[str, Any] = {"check": name, "verdict": v.action, "reason": v.reason}
            if v.action == "defer":
                row["until"] = v.until
            if v.flags:
                row["flags"] = v.flags
            if v.text is not None:
                row["text"] = v.text
            if name == "keywords" and cat is not None:
                # Every hit, and the exception that released it (policy explain).
                hits = self._keywords.explain(for_matching(msg.text), cat.name)
                if hits:
                    row["hits"] = hits
            rows.append(row)
            if final is None and v.action != "send":
                final = v
        content, kw = checks.get("content"), checks.get("keywords")
        result: dict[str, Any] = {
            "verdict": final.action if final else "send",
            "check": final.check if final else "",
            "reason": final.reason if final else "",
            "until": final.until if final else 0.0,
            "text": content.text if content is not None and content.text is not None
            else msg.text,
            "flags": kw.flags if kw is not None else [],
            "checks": rows,
        }
        if any(r["verdict"] == "skipped" for r in rows):
            result["note"] = "Redis checks (optout, duplicate, freq_cap, tenant_rate) were " \
                             "not evaluated: no Redis"
        return result
