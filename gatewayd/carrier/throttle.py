"""The send rate an SMSC allows, learned from its throttling, per account (any protocol).

An SMSC caps an account's rate and answers the excess with "throttled" (SMPP
ESME_RTHROTTLED / ESME_RMSGQFUL, CMPP result 8). Halving the rate on every throttle and
growing it back by a fixed step saw-tooths around the cap (measured against an SMSC
capped at 300/s with tps 1,000: 200-320/s, 19 % of submits throttled). Instead the
account's rate is *learned*:

* ``ThrottleMeter`` (one per account, fed by every bind): from the first throttled
  answer it counts accepted and throttled answers for ``window_s``, then reports both.
* The rate gate cuts the shared rate to what the SMSC accepted of it,
  ``rate x (1 - throttled share) x margin`` (at most halving, never below ``floor`` of
  the configured tps), at most once per ``cooldown_s`` whoever reports (binds, daemons):
  with every sender at the shared rate, the throttled share is the same for all of them.
* ``hold_s`` after a cut the rate grows by ``probe`` of itself a second, up to the
  configured tps, so a raised cap is found again and a lowered one costs one cut.

Against a cap the rate settles a few per cent below it: after a cut at ~0.95 x cap it
takes the probe several seconds past the cap before the SMSC's own bucket (commonly a
second of traffic) runs dry and throttles a few per cent of a half-second window again
(``bench/throttle.py``). The gate holds the state: ``LocalRateGate`` in-process (a pool
without Redis: tests, benchmarks); in the daemon ``policy.ratelimit.CarrierRateGate``
keeps it in the account's Redis bucket, shared by every process (lua/carrier_bucket.lua
is this module's ``cut`` and ``probed`` in Lua, with these parameters passed in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gatewayd.config import Config, account_names, accounts

log = logging.getLogger("gatewayd.carrier")


@dataclass(frozen=True, slots=True)
class Learning:
    margin: float = 0.95  # settle this far below the rate the SMSC accepted
    max_cut: float = 0.5  # one cut at most halves the rate
    floor: float = 0.02  # never below this share of the configured tps
    cooldown_s: float = 1.0  # at most one cut this often, across binds and daemons
    hold_s: float = 3.0  # no probing this long after a cut
    probe: float = 0.02  # then grow by this share of the rate a second
    window_s: float = 0.5  # throttle statistics gathered this long before a report


LEARNING = Learning()


def cut(rate: float, accepted: int, throttled: int, cap: float, k: Learning = LEARNING) -> float:
    """The rate after a window with ``throttled`` of ``accepted + throttled`` answers."""
    total = accepted + throttled
    if total <= 0 or throttled <= 0:
        return rate
    kept = (1.0 - throttled / total) * k.margin
    return max(cap * k.floor, rate * max(k.max_cut, kept))


def probed(rate: float, since_cut_s: float, dt_s: float, cap: float,
           k: Learning = LEARNING) -> float:
    """The rate ``dt_s`` later, ``since_cut_s`` after the last cut."""
    if since_cut_s < k.hold_s or rate >= cap or dt_s <= 0:
        return min(rate, cap)
    return min(cap, rate * (1.0 + k.probe * dt_s))


class ThrottleMeter:
    """Counts one account's answers from its first throttle for a window, then reports.

    ``count`` runs for every chunk of answers a bind parses: outside a window it only
    looks at ``throttled``."""

    __slots__ = ("_report", "_tasks", "_timer", "accepted", "k", "throttled")

    def __init__(self, report: Callable[[int, int], Awaitable[None]],
                 k: Learning = LEARNING) -> None:
        self._report = report
        self.k = k
        self.accepted = 0
        self.throttled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> bool:
        return self._timer is not None

    def count(self, accepted: int, throttled: int) -> None:
        if self._timer is None:
            if not throttled:
                return
            self.accepted = self.throttled = 0
            self._timer = asyncio.get_running_loop().call_later(self.k.window_s, self._fire)
        self.accepted += accepted
        self.throttled += throttled

    def _fire(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._send(self.accepted, self.throttled))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, accepted: int, throttled: int) -> None:
        try:
            await self._report(accepted, throttled)
        except Exception as e:  # Redis away: the next window reports again
            log.warning("reporting throttling failed: %s: %s", type(e).__name__, e)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Learned:
    """One account's learned rate and token bucket, in-process."""

    __slots__ = ("cap", "cut_at", "k", "probed_at", "rate", "tokens", "tokens_at", "urgent")

    def __init__(self, cap: float, now: float, k: Learning) -> None:
        self.cap = cap
        self.k = k
        self.rate = cap
        self.cut_at = -1e18
        self.probed_at = now
        self.tokens = max(1.0, cap / 10)
        self.tokens_at = now
        self.urgent = 0  # urgent acquires waiting: bulk takes no token meanwhile

    def advance(self, now: float) -> None:
        if now > self.probed_at:
            self.rate = probed(self.rate, now - self.cut_at, now - self.probed_at, self.cap,
                               self.k)
            self.probed_at = now
        if now > self.tokens_at:
            burst = max(1.0, self.rate / 10)
            self.tokens = min(burst, self.tokens + (now - self.tokens_at) * self.rate)
            self.tokens_at = now


class LocalRateGate:
    """carrier.api.RateGate in one process: the learned rate of each account, no Redis.

    The pool uses it when given no gate (tests, benchmarks without Redis); the daemon
    gives the pool the Redis one, shared by every process."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic,
                 k: Learning = LEARNING) -> None:
        self._account = account_names(cfg)
        now = clock()
        self._state = {name: _Learned(a.tps, now, k) for name, a in accounts(cfg).items()}
        self._clock = clock
        self._k = k

    def learn_carriers(self, cfg: Config) -> None:
        self._account.update(account_names(cfg))
        now = self._clock()
        for name, a in accounts(cfg).items():
            if name not in self._state:
                self._state[name] = _Learned(a.tps, now, self._k)

    def _of(self, carrier: str) -> _Learned:
        try:
            return self._state[self._account[carrier]]
        except KeyError:
            raise KeyError(f"no rate limit for carrier {carrier!r}: not in the config") from None

    async def acquire(self, carrier: str, n: int, urgent: bool = False) -> None:
        st = self._of(carrier)
        if urgent:
            st.urgent += 1
        try:
            while n > 0:
                st.advance(self._clock())
                # While a code waits for tokens, bulk leaves them to it.
                got = min(n, int(st.tokens + 1e-9)) if urgent or not st.urgent else 0
                if got:
                    st.tokens -= got
                    n -= got
                    continue
                await asyncio.sleep(max(0.001, (1.0 - st.tokens) / st.rate))
        finally:
            if urgent:
                st.urgent -= 1

    async def throttled(self, carrier: str, accepted: int, throttled: int) -> None:
        st = self._of(carrier)
        now = self._clock()
        st.advance(now)
        if now - st.cut_at < st.k.cooldown_s:
            return
        st.rate = cut(st.rate, accepted, throttled, st.cap, st.k)
        st.cut_at = st.probed_at = now
        st.tokens = min(st.tokens, max(1.0, st.rate / 10))
        log.info("%s: throttled (%d of %d answers in %.1f s); learned rate now %.1f/s",
                 carrier, throttled, accepted + throttled, st.k.window_s, st.rate)

    def set_cap(self, carrier: str, tps: float) -> None:
        st = self._of(carrier)
        st.advance(self._clock())
        at_cap = st.rate >= st.cap
        st.cap = tps
        st.rate = tps if at_cap else min(st.rate, tps)
        st.tokens = min(st.tokens, max(1.0, st.rate / 10))

    def rate(self, carrier: str) -> float:
        st = self._of(carrier)
        st.advance(self._clock())
        return st.rate
