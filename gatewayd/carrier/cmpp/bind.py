"""One configured CMPP connection: connect + authenticate, keep alive, reconnect; rate, window.

A carrier.protocols.Link, as carrier/smpp/bind.py is (``reserve`` window space and
tokens, ``send`` a run of SUBMIT bodies in one write, ``release``; ``start``,
``shutdown``, ``status``, ``show_limit``, ``meter``, ``latency``), so the pool drives
either protocol's links alike.

CONNECT: Source_Addr = the carrier's system_id (SP_Id), AuthenticatorSource = MD5(SP_Id
+ 9 NULs + secret + MMDDHHMMSS in the ISMG's time zone). An answer with Status 0 must
carry AuthenticatorISMG = MD5(Status + AuthenticatorSource + secret): a wrong one means
the ISMG does not know our secret (or is not the ISMG), and we refuse it like a refused
login (auth_retry_s), since submitting to it would hand messages to an impostor.

Keep-alive: after enquire_link_s without anything read, CMPP_ACTIVE_TEST; unanswered
within response_timeout_s it is sent again, and after ``active_test_retries`` unanswered
ones the link counts as dead (the specification's C / T / N timers). The ISMG's own
ACTIVE_TEST is answered by the session at once.

Rate: a token bucket of tps / binds a second, burst 50 ms worth, under the account's
learned rate (the pool's rate gate). Result 8 (flow control) is counted into the
account's throttle meter, which lowers that shared rate exactly as ESME_RTHROTTLED does
(carrier/throttle.py); the connection shows "throttled" for two seconds. Reconnects
back off exponentially with jitter; a refused CONNECT waits auth_retry_s. ``shutdown``
sends CMPP_TERMINATE and waits (bounded) for its answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gatewayd.carrier.api import BindStatus
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.cmpp import times
from gatewayd.carrier.cmpp.session import Session
from gatewayd.carrier.cmpp.settings import CmppSettings
from gatewayd.carrier.linkops import OperatorOps
from gatewayd.carrier.protocols import Meter, Waiter
from gatewayd.config import CarrierConfig
from gatewayd.errors import BindRefused, SmppError
from gatewayd.ops import metrics as M

if TYPE_CHECKING:
    from gatewayd.carrier.cmpp.delivery import Deliveries

log = logging.getLogger("gatewayd.carrier")

_pack_header = P.HEADER.pack
# A flow-controlled connection shows "throttled" this long after the ISMG's last result 8.
_THROTTLED_SHOWN_S = 2.0


class CmppBind(OperatorOps):
    def __init__(
        self, carrier: CarrierConfig, settings: CmppSettings, index: int, secret: str,
        deliveries: Deliveries, *, clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = carrier
        self.settings = settings
        self.carrier = carrier.name
        self.index = index
        self.mode = "transceiver" if carrier.bind_mode != "receiver" else "receiver"
        self.transmits = carrier.bind_mode != "receiver"
        self.window = carrier.window
        self.version = P.VERSIONS[settings.version]
        self._secret = secret
        self._deliveries = deliveries
        self._clock = clock
        self.state = "connecting"
        self.last_error = ""
        self.reconnects = 0
        self.submitted = 0
        self.ismg_version = 0
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
        # Submit latency, a moving average of one sample a parsed chunk (stragglers' grace).
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
        self._m_submits = M.SUBMITS.labels(carrier.name, "cmpp")
        M.set_bind_info(*label, "cmpp", settings.version)
        self._m_latency = M.SUBMIT_LATENCY.labels(carrier.name)
        self._m_status: dict[tuple[str, str], Any] = {}
        self._m_pdu_errors: dict[str, Any] = {}
        self._m_up.set(0)
        self._m_tps.set(self.rate)

    # -- state -------------------------------------------------------------------------------
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
            carrier=self.carrier, index=self.index, protocol="cmpp",
            version=self.settings.version,
            state=self.state, mode=self.mode,
            window=self.window, in_flight=self.in_flight, tps_limit=round(self.limit, 3),
            submitted=self.submitted, reconnects=self.reconnects, last_error=self.last_error,
        )

    def _set_state(self, state: str) -> None:
        self.state = state
        self._m_up.set(1 if state in ("bound", "throttled") else 0)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cmpp-{self.carrier}-{self.index}")

    async def shutdown(self, terminate_timeout_s: float = 1.0) -> None:
        """CMPP_TERMINATE (answer awaited, bounded), close, end the connection loop."""
        self._stopping = True
        self._stop_event.set()
        self.space.set()
        s = self.session
        if s is not None and s.bound and s.is_open:
            s.bound = False  # nothing more goes out after the TERMINATE
            seq = s.next_seq()
            fut = s.request(P.pdu(P.TERMINATE, seq), seq)
            try:
                await asyncio.wait_for(fut, terminate_timeout_s)
            except (TimeoutError, ConnectionError):
                pass
        if s is not None:
            s.close("shutdown")
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, terminate_timeout_s + 1.0)
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
            except (OSError, TimeoutError, SmppError, ConnectionError, P.PduError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("%s[%d]: connect failed (%s); retrying in %.1f s", self.carrier,
                            self.index, self.last_error, delay)
                await self._sleep(delay)
                continue
            attempt = 0
            self.last_error = ""
            self._set_state("bound")
            log.info("%s[%d]: CMPP %s connected to %s:%d", self.carrier, self.index,
                     self.settings.version, self.cfg.host, self.cfg.port)
            await self._serve(session)
            self._set_state("closed" if self._stopping else "connecting")
            if not self._stopping:
                self.last_error = session.close_reason
                log.warning("%s[%d]: connection lost (%s)", self.carrier, self.index,
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
        v3 = self.version == P.V30
        _, session = await asyncio.wait_for(
            loop.create_connection(
                lambda: Session(self, v3), self.cfg.host, self.cfg.port, ssl=ctx,
                server_hostname=self.cfg.host if ctx is not None else None,
            ),
            timeout,
        )
        self.session = session
        seq = session.next_seq()
        stamp = times.connect_timestamp(self._clock(), self.settings.utc_offset_h)
        data, auth = P.connect_pdu(seq, self.cfg.system_id, self._secret, self.version, stamp)
        try:
            _, body = await asyncio.wait_for(session.request(data, seq), timeout)
            resp = P.parse_connect_resp(body)
        except BaseException:
            session.abort("connect failed")
            self.session = None
            raise
        self._count("cmpp_connect", S.connect_status_name(resp.status))
        refusal = ""
        if resp.status != 0:
            refusal = f"CONNECT refused: {S.connect_status_name(resp.status)}"
        elif resp.authenticator != P.authenticator_ismg(resp.status_octets, auth, self._secret):
            refusal = ("AuthenticatorISMG does not match our shared secret: the ISMG does "
                       "not know it (or is not the ISMG)")
        if refusal:
            session.close("connect refused")
            self.session = None
            if resp.status == 0 or resp.status in S.CONNECT_REFUSED:
                raise BindRefused(resp.status, refusal)
            raise SmppError(refusal)
        self.ismg_version = resp.version
        session.bound = True
        self.tokens = min(self.tokens, self.burst)
        self._t_tokens = loop.time()
        return session

    async def _serve(self, session: Session) -> None:
        """While connected: response timeouts, ACTIVE_TEST, rate recovery, gauges."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        tick = max(0.01, min(0.25, cfg.response_timeout_s / 4, cfg.enquire_link_s / 2))
        idle_after = cfg.enquire_link_s
        while not session.closed.done():
            await asyncio.wait((session.closed,), timeout=tick)
            if session.closed.done():
                break
            now = loop.time()
            if session.expire(now):
                self.space.set()
            if session.active_seq and now > session.active_deadline:
                if session.active_tries >= self.settings.active_test_retries:
                    log.warning("%s[%d]: %d ACTIVE_TEST unanswered; reconnecting",
                                self.carrier, self.index, session.active_tries)
                    session.abort("ACTIVE_TEST_RESP missing")
                    break
                self._active_test(session, now)
            elif (not session.active_seq and session.bound
                  and now - session.last_read >= idle_after):
                self._active_test(session, now)
            self._recover(now)
            self._m_window.set(len(session.pending))
        await session.closed
        self._m_window.set(0)

    def _active_test(self, session: Session, now: float) -> None:
        seq = session.next_seq()
        session.active_seq = seq
        session.active_tries += 1
        session.active_deadline = now + self.cfg.response_timeout_s
        session.write(P.pdu(P.ACTIVE_TEST, seq))

    # -- sending -------------------------------------------------------------------------------
    def send(self, items: list[tuple[int, bytes]], waiter: Waiter) -> None:
        """Write reserved SUBMIT bodies in one go; each (slot, body) resolves ``waiter``."""
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
            chunks.append(_pack_header(P.HEADER_LEN + len(body), P.SUBMIT, seq))
            chunks.append(body)
            pending[seq] = (waiter, slot, deadline, loop_time)
        s.seq = seq
        s.write(b"".join(chunks))
        self.submitted += len(items)
        self._m_submits.inc(len(items))

    # -- callbacks from the session ------------------------------------------------------------
    def on_submit_resps(
        self, ok: int, results: dict[int, int] | None, throttled: int,
        latency: float | None, in_flight: int,
    ) -> None:
        if ok:
            self._count("cmpp_submit", "CMPP_OK", ok)
        if results:
            for code, count in results.items():
                self._count("cmpp_submit", S.result_name(code), count)
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
            log.warning("%s[%d]: %d SUBMIT outstanding when the connection closed (%s)",
                        self.carrier, self.index, lost, session.close_reason)

    def on_terminate_requested(self) -> None:
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

    def _count(self, command: str, name: str, n: int = 1) -> None:
        key = (command, name)
        child = self._m_status.get(key)
        if child is None:
            child = self._m_status[key] = M.COMMAND_STATUS.labels(
                self.carrier, "cmpp", command, name)
        child.inc(n)

    # -- flow control ----------------------------------------------------------------------------
    def _throttle(self) -> None:
        """The ISMG flow-controlled a SUBMIT: shown; the meter lowers the account rate."""
        self._last_throttle = asyncio.get_running_loop().time()
        if self.state == "bound":  # not over "unbinding" while a TERMINATE waits
            self._set_state("throttled")

    def _recover(self, now: float) -> None:
        if self.state == "throttled" and now - self._last_throttle >= _THROTTLED_SHOWN_S:
            self._set_state("bound")

    def show_limit(self, share: float) -> None:
        """The connection's share of its account's learned rate, on the gauge and in status."""
        self.limit = min(self.base_rate, share)
        self._m_tps.set(self.limit)
