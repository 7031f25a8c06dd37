"""Rate and quotas of an account: one Lua call per request (not per message), shared by
every daemon, all or nothing; usage counters are the quotas' own."""

from __future__ import annotations

import calendar
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, cast

from gatewayd.accounts.model import Account
from gatewayd.store.connection import Redis, load_script
from gatewayd.store.keys import Keys

DAY_TTL_S: Final = 40 * 86400
MONTH_TTL_S: Final = 400 * 86400


def day_of(t: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(t))


def month_of(t: float) -> str:
    return time.strftime("%Y%m", time.gmtime(t))


def next_day(t: float) -> float:
    g = time.gmtime(t)
    return calendar.timegm((g.tm_year, g.tm_mon, g.tm_mday, 0, 0, 0)) + 86400.0


def next_month(t: float) -> float:
    g = time.gmtime(t)
    y, m = (g.tm_year + 1, 1) if g.tm_mon == 12 else (g.tm_year, g.tm_mon + 1)
    return float(calendar.timegm((y, m, 1, 0, 0, 0)))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused a request, and when it lets the account send again."""

    limit: str  # "daily", "monthly", "rate" or "burst" (a request larger than the bucket)
    category: str  # "*" for all categories together; "" for the rate
    allowed: float  # the quota, or the rate (messages/s)
    used: int
    resets_at: float  # Unix s

    def message(self) -> str:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.resets_at))
        if self.limit == "burst":
            return (f"a request of {self.used} messages is more than this account's burst "
                    f"of {int(self.allowed)}: send at most {int(self.allowed)} a request")
        if self.limit == "rate":
            return (f"rate limit of {self.allowed:g} messages/s exceeded; "
                    f"retry after {reset}")
        what = "all categories" if self.category == "*" else f"category {self.category!r}"
        return (f"{self.limit} quota of {int(self.allowed)} messages for {what} would be "
                f"exceeded ({self.used} used); it resets at {reset}")

    def body(self) -> dict[str, Any]:
        return {"limit": self.limit, "category": self.category, "allowed": self.allowed,
                "used": self.used, "resets_at": self.resets_at}


class QuotaExceeded(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message())
        self.refusal = refusal


class Charger:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = load_script(redis, "account_charge")

    async def charge(self, account: Account, categories: list[str], now: float) -> None:
        """Count the messages (one category each) against the account's rate and quotas;
        QuotaExceeded (nothing counted) when one of them would be exceeded."""
        if not categories:
            return
        lim = account.limits
        burst = max(lim.burst, int(lim.rate_per_s), 1)
        if lim.rate_per_s > 0 and len(categories) > burst:  # the bucket never holds enough
            raise QuotaExceeded(Refusal("burst", "", float(burst), len(categories), now))
        counts = Counter(categories)
        counts["*"] = len(categories)
        args: list[str | int | float] = [
            repr(now), repr(lim.rate_per_s), burst,
            len(categories), DAY_TTL_S, MONTH_TTL_S]
        for cat, n in counts.items():
            args += [cat, n, lim.daily.get(cat, -1), lim.monthly.get(cat, -1)]
        t = account.tenant
        keys = self.keys
        res = cast(list[Any], await self._script(
            keys=[keys.account_bucket(t), keys.account_day(t, day_of(now)),
                  keys.account_month(t, month_of(now))], args=args))
        kind = _s(res[0])
        if kind == "ok":
            return
        if kind == "rate":
            raise QuotaExceeded(Refusal("rate", "", float(_s(res[2])), 0,
                                        now + float(_s(res[3]))))
        raise QuotaExceeded(Refusal(
            kind, _s(res[1]), float(_s(res[2])), int(_s(res[3])),
            next_day(now) if kind == "daily" else next_month(now)))

    async def refund(self, tenant: str, categories: list[str], now: float) -> None:
        """Uncount messages charged but not queued (repeats of an idempotency key, ids
        already taken): quotas count what was queued."""
        if not categories:
            return
        counts = Counter(categories)
        counts["*"] = len(categories)
        day, month = self.keys.account_day(tenant, day_of(now)), \
            self.keys.account_month(tenant, month_of(now))
        async with self.redis.pipeline(transaction=False) as pipe:
            for cat, n in counts.items():
                pipe.hincrby(day, f"sent:{cat}", -n)
                pipe.hincrby(month, f"sent:{cat}", -n)
            await pipe.execute()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
