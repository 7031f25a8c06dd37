"""One configured bind of a carrier: connect, bind, keep alive, reconnect; rate and window.

One background task per bind runs the connection loop and, while bound, a housekeeping
tick (response timeouts, enquire_link, gauges). Sending is done by the caller (the
pool) through ``reserve`` (window space + local token bucket) and ``send`` (one
``transport.write`` for a run of PDUs).

Rate: a token bucket of ``carrier.tps / carrier.binds`` a second, with a burst of 50 ms
worth of tokens (at least 1), under the account's learned rate (the pool's rate gate,
carrier/throttle.py). ESME_RTHROTTLED / ESME_RMSGQFUL are counted into the account's
throttle meter, which lowers that shared rate; the bind itself only shows "throttled"
for two seconds. Reconnects back off exponentially from reconnect_min_s to
reconnect_max_s with jitter (a random 50-100 % of the step); a refused bind waits
auth_retry_s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import TYPE_CHECKING, Any

from gatewayd.carrier.api import BindStatus
from gatewayd.carrier.linkops import OperatorOps
from gatewayd.carrier.protocols import Meter, Waiter
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import status as S
from gatewayd.carrier.smpp.session import Session
from gatewayd.config import BindMode, CarrierConfig
from gatewayd.errors import BindRefused, SmppError
from gatewayd.ops import metrics as M

if TYPE_CHECKING:
    from gatewayd.carrier.smpp.delivery import Deliveries

log = logging.getLogger("gatewayd.carrier")

_pack_header = P.HEADER.pack
# A throttled bind shows "throttled" this long after the SMSC's last throttle.
_THROTTLED_SHOWN_S = 2.0


class Bind(OperatorOps):
    def __init__(
        self, carrier: CarrierConfig, index: int, password: str, deliveries: Deliveries,
        *, mode: BindMode | None = None,
    ) -> None:
        self.cfg = carrier
        self.carrier = carrier.name
        self.index = index
        self.mode: BindMode = mode or carrier.bind_mode
        self.transmits = self.mode != "receiver"
        self.window = carrier.window
        self._password = password
        self._deliveries = deliveries
        self.state = "connecting"
        self.last_error = ""
        self.reconnects = 0
        self.submitted = 0
        self.session: Session | None = None
        self.reserved = 0
        self._urgent = 0
        self._urgent_at = -1e18
        self.base_rate = carrier.tps / carrier.binds
        self.rate = self.base_rate
        self.limit = self.base_rate  # shown: min(own rate, share of the learned rate)
        self.burst = max(1.0, self.base_rate / 20)
        self.tokens = self.burst
        self._t_tokens = 0.0
        self._last_throttle = -1e9
        # Submit latency, a moving average of one sample a parsed chunk: the pool's
        # grace for stragglers is a few of these.
        self.latency = 0.0
        self.meter: Meter | None = None
        self.space = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        label = (carrier.name, str(index))
        self._m_up = M.BIND_UP.labels(*label)
        self._m_reconnects = M.BIND_RECONNECTS.labels(*label)
        self._m_window = M.WINDOW_IN_USE.labels(*label)
        self._m_tps = M.BIND_TPS.labels(*label)
        self._m_submits = M.SUBMITS.labels(carrier.name, "smpp")
        M.set_bind_info(*label, "smpp", "3.4")
        self._m_latency = M.SUBMIT_LATENCY.labels(carrier.name)
        self._m_status: dict[tuple[str, int], Any] = {}
        self._m_pdu_errors: dict[str, Any] = {}
        self._m_up.set(0)
        self._m_tps.set(self.rate)

    # -- state ---------------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        s = self.session
        return s is not None and s.bound

    @property
    def can_submit(self) -> bool:
        s = self.session
        return self.transmits and not self._stopping and s is not None and s.bound

    @property
    def in_flight(self) -> int:
        s = self.session
        return (len(s.pending) if s is not None else 0) + self.reserved

    def status(self) -> BindStatus:
        return BindStatus(
            carrier=self.carrier, index=self.index, protocol="smpp", version="3.4",
            state=self.state, mode=self.mode,
            window=self.window, in_flight=self.in_flight, tps_limit=round(self.limit, 3),
            submitted=self.submitted, reconnects=self.reconnects, last_error=self.last_error,
        )

    def _set_state(self, state: str) -> None:
        self.state = state
        self._m_up.set(1 if state in ("bound", "throttled") else 0)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bind-{self.carrier}-{self.index}")

    async def shutdown(self, unbind_timeout_s: float = 1.0) -> None:
        """Unbind politely (bounded), close, end the connection loop."""
        self._stopping = True
        self._stop_event.set()
        self.space.set()
        s = self.session
        if s is not None and s.bound and s.is_open:
            seq = s.next_seq()
            fut = s.request(P.unbind_pdu(seq), seq)
            try:
                await asyncio.wait_for(fut, unbind_timeout_s)
            except (TimeoutError, ConnectionError):
                pass
        if s is not None:
            s.close("shutdown")
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, unbind_timeout_s + 1.0)
            except TimeoutError:
                self._task.cancel()
        self._set_state("closed")

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    def _backoff(self, attempt: int) -> float:
        step = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2.0 ** min(attempt, 30))
        return max(self.cfg.reconnect_min_s, step * random.uniform(0.5, 1.0))

    async def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stopping:
            if not first:
                self.reconnects += 1
                self._m_reconnects.inc()
            first = False
            self._set_state("connecting")
            try:
                session = await self._open()
            except BindRefused as e:
                self._set_state("refused")
                self.last_error = str(e)
                log.warning("%s[%d]: %s; retrying in %.0f s", self.carrier, self.index, e,
                            self.cfg.auth_retry_s)
                await self._sleep(self.cfg.auth_retry_s)
                continue
            except (OSError, TimeoutError, SmppError, ConnectionError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("%s[%d]: connect failed (%s); retrying in %.1f s", self.carrier,
                            self.index, self.last_error, delay)
                self._set_state("connecting")
                await self._sleep(delay)
                continue
            attempt = 0
            self.last_error = ""
            self._set_state("bound")
            log.info("%s[%d]: bound as %s to %s:%d", self.carrier, self.index, self.mode,
                     self.cfg.host, self.cfg.port)
            await self._serve(session)
            self._set_state("closed" if self._stopping else "connecting")
            if not self._stopping:
                self.last_error = session.close_reason
                log.warning("%s[%d]: bind lost (%s)", self.carrier, self.index,
                            session.close_reason)
                await self._sleep(self._backoff(0))
        self._set_state("closed")

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.cfg.tls_ca or None)
        if not self.cfg.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _open(self) -> Session:
        loop = asyncio.get_running_loop()
        timeout = self.cfg.response_timeout_s
        ctx = self._ssl_context()
        _, session = await asyncio.wait_for(
            loop.create_connection(
                lambda: Session(self), self.cfg.host, self.cfg.port, ssl=ctx,
                server_hostname=self.cfg.host if ctx is not None else None,
            ),
            timeout,
        )
        self.session = session
        seq = session.next_seq()
        bind_bytes = P.bind_pdu(
            self.mode, seq, system_id=self.cfg.system_id, password=self._password,
            system_type=self.cfg.system_type,
        )
        try:
            cmd, status, _ = await asyncio.wait_for(session.request(bind_bytes, seq), timeout)
        except BaseException:
            session.abort("bind failed")
            self.session = None
            raise
        self._count_status("bind", status)
        if status != 0 or cmd == P.GENERIC_NACK:
            session.close("bind refused")
            self.session = None
            if status in S.BIND_REFUSED:
                raise BindRefused(status, S.status_name(status))
            raise SmppError(f"bind failed: {S.status_name(status)}")
        session.bound = True
        self.tokens = min(self.tokens, self.burst)
        self._t_tokens = loop.time()
        return session

    async def _serve(self, session: Session) -> None:
        """While bound: response timeouts, enquire_link, rate recovery, gauges."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        tick = max(0.01, min(0.25, cfg.response_timeout_s / 4, cfg.enquire_link_s / 2))
        next_enquire = loop.time() + cfg.enquire_link_s
        while not session.closed.done():
            await asyncio.wait((session.closed,), timeout=tick)
            if session.closed.done():
                break
            now = loop.time()
            if session.expire(now):
                self.space.set()
            if session.enquire_seq and now > session.enquire_deadline:
                log.warning("%s[%d]: no enquire_link_resp within %.1f s; reconnecting",
                            self.carrier, self.index, cfg.response_timeout_s)
                session.abort("enquire_link_resp missing")
                break
            if now >= next_enquire and not session.enquire_seq and session.bound:
                seq = session.next_seq()
                session.enquire_seq = seq
                session.enquire_deadline = now + cfg.response_timeout_s
                session.write(P.enquire_link_pdu(seq))
                next_enquire = now + cfg.enquire_link_s
            self._recover(now)
            self._m_window.set(len(session.pending))
        await session.closed
        self._m_window.set(0)

    # -- sending ---------------------------------------------------------------------------
    def send(self, items: list[tuple[int, bytes]], waiter: Waiter) -> None:
        """Write reserved submit_sm bodies in one go; each (slot, body) resolves ``waiter``."""
        self.reserved -= len(items)
        s = self.session
        if s is None or not s.bound or not s.is_open:
            for slot, _ in items:
                waiter.resolve(slot, S.NOT_SENT, "")
            self.space.set()
            return
        loop_time = s.loop.time()
        deadline = loop_time + self.cfg.response_timeout_s
        pending = s.pending
        chunks: list[bytes] = []
        seq = s.seq
        for slot, body in items:
            seq = seq % 0x7FFFFFFF + 1
            chunks.append(_pack_header(16 + len(body), P.SUBMIT_SM, 0, seq))
            chunks.append(body)
            pending[seq] = (waiter, slot, deadline, loop_time)
        s.seq = seq
        s.write(b"".join(chunks))
        self.submitted += len(items)
        self._m_submits.inc(len(items))

    # -- callbacks from the session ----------------------------------------------------------
    def on_submit_resps(
        self, ok: int, statuses: dict[int, int] | None, throttled: int,
        latency: float | None, in_flight: int,
    ) -> None:
        if ok:
            self._count_status("submit_sm", 0, ok)
        if statuses:
            for code, count in statuses.items():
                self._count_status("submit_sm", code, count)
        if latency is not None:
            self._m_latency.observe(latency)
            self.latency += 0.1 * (latency - self.latency)
        meter = self.meter
        if meter is not None and (throttled or meter.open):
            meter.count(ok, throttled)
        if throttled:
            self._throttle()
        if in_flight < self.window:
            self.space.set()

    def on_deliver(self, session: Session, items: list[tuple[int, bytes]]) -> None:
        self._deliveries.process(session, items)

    def on_session_closed(self, session: Session, lost: int) -> None:
        if session is self.session:
            self.session = None
        self.space.set()
        if lost:
            log.warning("%s[%d]: %d submit_sm outstanding when the bind closed (%s)",
                        self.carrier, self.index, lost, session.close_reason)

    def on_unbind_requested(self) -> None:
        """The SMSC unbound this bind: it sends nothing more (the session answers what it
        already read, then closes, and the connection loop reconnects)."""
        self._set_state("unbinding")

    def on_late_response(self) -> None:
        self.on_pdu_error("late_response", "")

    def on_pdu_error(self, kind: str, detail: str) -> None:
        child = self._m_pdu_errors.get(kind)
        if child is None:
            child = self._m_pdu_errors[kind] = M.PDU_ERRORS.labels(self.carrier, kind)
        child.inc()
        if detail:
            log.warning("%s[%d]: %s", self.carrier, self.index, detail)

    def _count_status(self, command: str, status: int, n: int = 1) -> None:
        key = (command, status)
        child = self._m_status.get(key)
        if child is None:
            child = self._m_status[key] = M.COMMAND_STATUS.labels(
                self.carrier, "smpp", command, S.status_name(status)
            )
        child.inc(n)

    # -- throttling ----------------------------------------------------------------------------
    def _throttle(self) -> None:
        """The SMSC throttled a submit of ours: shown; the meter lowers the account rate."""
        now = asyncio.get_running_loop().time()
        self._last_throttle = now
        if self.state == "bound":  # not over "unbinding" while the SMSC's unbind waits
            self._set_state("throttled")

    def _recover(self, now: float) -> None:
        if self.state == "throttled" and now - self._last_throttle >= _THROTTLED_SHOWN_S:
            self._set_state("bound")

    def show_limit(self, share: float) -> None:
        """The bind's share of its account's learned rate, on the gauge and in status."""
        self.limit = min(self.base_rate, share)
        self._m_tps.set(self.limit)
