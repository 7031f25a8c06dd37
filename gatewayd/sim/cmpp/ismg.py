"""A CMPP 2.0/3.0 ISMG simulator for the demo, the tests and the benchmarks.

The CMPP sibling of sim/smpp/smsc.py: each read is framed and answered in one write
(session.py), reports wait in the shared timer wheel and go out in batches, faults are
knobs of IsmgSettings (``set`` changes them while running). It checks the SP's
AuthenticatorSource against the shared secret, signs its answer with AuthenticatorISMG,
answers SUBMITs with real 64-bit Msg_Ids (month/day/hour/minute/second in UTC+8, the
gateway code, a sequence), sends one status report per part (DELIVER with
Registered_Delivery 1) to the connection that submitted it (else any other, else held),
and injects MO (DELIVER, concatenated with UDH when asked, in any order).

Decisions the issue left open:
- every client of one simulator is the one SP (sp_id/secret); a second version is
  accepted on another connection when ``version`` is "any";
- a report's Dest_Id is the SUBMIT's Src_Id and its Src_terminal_Id the handset, as the
  specification describes; its Submit_time/Done_time are UTC+8 (utc_offset_h);
- an SP that never answers a DELIVER gets it again every receipt_resend_s, at most
  receipt_max_attempts times, and on another connection when its own drops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgspec

from gatewayd import smstext
from gatewayd.sim.cmpp import pdu
from gatewayd.sim.cmpp.messages import Message, Submission, reassemble
from gatewayd.sim.cmpp.session import KIND_MO, KIND_REPORT, Outgoing, Session
from gatewayd.sim.cmpp.settings import IsmgSettings, IsmgStats
from gatewayd.sim.wheel import TimerWheel

__all__ = ["IsmgSettings", "IsmgSimulator", "IsmgStats", "Message", "Submission"]

log = logging.getLogger("gatewayd.sim")

_RESP: Final = 0
_REPORT: Final = 1
_REDELIVER: Final = 2
_HOUSEKEEPING_S: Final = 0.1


class IsmgSimulator:
    def __init__(self, settings: IsmgSettings | None = None) -> None:
        self.settings = settings if settings is not None else IsmgSettings()
        self.port = self.settings.port
        self.stats = IsmgStats()
        self.submissions: list[Submission] = []
        self.rng = random.Random(self.settings.seed)
        self.wall: Callable[[], float] = time.time
        self.wheel = TimerWheel(self._on_timers)
        self._sessions: set[Session] = set()
        self._held: deque[Outgoing] = deque()
        self._seq = self.rng.randrange(0x10000)
        self._id_key: tuple[int, float, int] = (-1, 0.0, 0)
        self._id_high = 0
        self._stamps: dict[int, str] = {}
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._server: asyncio.Server | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "IsmgSimulator.start() first"
        return self._loop

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        st = self.settings
        self._tokens = max(1.0, st.max_tps)
        self._tokens_at = self._loop.time()
        self._server = await self._loop.create_server(lambda: Session(self), st.host, st.port,
                                                      reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.wheel.start()
        self._housekeeping = self._loop.create_task(self._housekeep(), name="ismg-housekeeping")
        log.info("CMPP ISMG simulator listening on %s:%d (sp_id=%s, version %s)", st.host,
                 self.port, st.sp_id, st.version)
        return self.port

    async def stop(self, timeout_s: float = 1.0) -> None:
        """TERMINATE every connection (waiting up to timeout_s for the answer), then close."""
        if self._server is None:
            return
        self._server.close()
        for s in list(self._sessions):
            if s.connected and s.open:
                s.write([pdu.pack(pdu.TERMINATE, s.next_seq())])
            elif s.transport is not None:
                s.transport.close()
        deadline = self.loop.time() + timeout_s
        while True:
            if not any(s.open for s in self._sessions) or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        for s in list(self._sessions):
            if s.open and s.transport is not None:
                s.transport.abort()
        await asyncio.sleep(0)
        await self._server.wait_closed()
        self._server = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            try:
                await self._housekeeping
            except asyncio.CancelledError:
                pass
            self._housekeeping = None
        await self.wheel.stop()
        self.wheel.clear()
        log.info("CMPP ISMG simulator stopped: %s", self.stats.summary())

    async def __aenter__(self) -> IsmgSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- public helpers ---------------------------------------------------------------------
    def set(self, **changes: Any) -> None:
        """Change knobs while running, e.g. ``ismg.set(flow_control_fraction=0.5)``."""
        new = msgspec.structs.replace(self.settings, **changes)
        new.__post_init__()
        if new.max_tps != self.settings.max_tps and self._loop is not None:
            self._tokens = max(1.0, new.max_tps)
            self._tokens_at = self._loop.time()
        self.settings = new

    def connected_count(self) -> int:
        return sum(1 for s in self._sessions if s.connected and s.open)

    def messages(self) -> list[Message]:
        return reassemble(self.submissions)

    def texts_to(self, destination: str) -> list[str]:
        return [m.text for m in self.messages() if m.destination == destination]

    async def send_raw(self, data: bytes) -> None:
        """Write raw bytes to every connected client (malformed-PDU tests)."""
        for s in list(self._sessions):
            if s.connected:
                s.write([data])
        await asyncio.sleep(0)

    async def terminate_all(self) -> None:
        """Send TERMINATE to every client, as an ISMG going down for maintenance does."""
        for s in list(self._sessions):
            if s.connected and s.open:
                s.write([pdu.pack(pdu.TERMINATE, s.next_seq())])
        await asyncio.sleep(0)

    async def inject_mo(
        self, source: str, dest_id: str, text: str, *, parts: int = 1, shuffle: bool = False,
        gbk: bool = False, wait: bool = False, timeout_s: float = 10.0, copies: int = 1,
    ) -> None:
        """An MO from handset ``source`` to access number ``dest_id``.

        ``copies`` > 1 delivers each DELIVER that many times with the same Msg_Id, as an
        ISMG redelivers one whose DELIVER_RESP it did not see.

        ASCII text goes as Msg_Fmt 0, other text as UCS-2 (8) or, with gbk, GBK (15).
        parts > 1 cuts the text into that many concatenated parts (UDH 05 00 03), in a
        shuffled order when asked. wait=True returns once every part was answered with
        Result 0 (TimeoutError after timeout_s).
        """
        if not 1 <= parts <= 255:
            raise ValueError("parts must be between 1 and 255")
        fmt, codec = (0, "ascii") if text.isascii() else ((15, "gbk") if gbk else
                                                         (8, "utf-16-be"))
        size = -(-len(text) // parts)
        chunks = [text[i * size : (i + 1) * size] for i in range(parts)]
        if not all(chunks):
            raise ValueError(f"cannot cut {len(text)} characters into {parts} parts")
        ref = self.rng.randrange(256)
        datas = [c.encode(codec) if parts == 1 else smstext.udh(ref, parts, i, 8) + c.encode(codec)
                 for i, c in enumerate(chunks, 1)]
        if any(len(d) > 140 for d in datas):
            raise ValueError("a part does not fit one SMS (140 octets); use more parts")
        if shuffle and parts > 1:
            in_order = list(datas)
            self.rng.shuffle(datas)
            if datas == in_order:
                datas.reverse()
        futures: list[asyncio.Future[None]] = []
        items: list[Outgoing] = []
        for d in datas:
            mo = self._mo(source, dest_id, fmt, d, parts > 1)
            for _ in range(copies):
                fut: asyncio.Future[None] | None = self.loop.create_future() if wait else None
                if fut is not None:
                    futures.append(fut)
                items.append(Outgoing(mo, KIND_MO, future=fut))
        self._deliver(items, self.loop.time())
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        else:
            await asyncio.sleep(0)

    def _mo(self, source: str, dest_id: str, fmt: int, data: bytes,
            udhi: bool) -> Callable[[bool], bytes]:
        mid = self._next_msg_id(self.wall())
        return lambda v3: pdu.deliver(
            0, msg_id=mid, dest_id=dest_id, service_id="", msg_fmt=fmt, src_terminal=source,
            registered_delivery=0, content=data, udhi=udhi, v3=v3)

    # -- called by sessions ----------------------------------------------------------------
    def _connected(self, s: Session) -> None:
        self._sessions.add(s)
        self.stats.connections += 1

    def _disconnected(self, s: Session) -> None:
        self._sessions.discard(s)
        if s.pending:
            items = list(s.pending.values())
            s.pending.clear()
            for o in items:
                o.prefer = None
            self._deliver(items, self.loop.time())

    def _connect(self, s: Session, seq: int, body: bytes, out: list[bytes], now: float) -> bool:
        st = self.settings
        try:
            c = pdu.parse_connect(body)
        except pdu.Malformed as e:
            self.stats.malformed += 1
            log.warning("%s: %s", s.name, e)
            out.append(pdu.connect_resp(seq, 1, b"", st.secret, 0x30, wide=False))
            return True
        wants3 = c.version >= 0x30
        status = 0
        if s.connected:
            status = 5
        elif c.source_addr != st.sp_id:
            status = 2
        elif c.authenticator != pdu.expected_authenticator(c.source_addr, st.secret,
                                                           c.timestamp):
            status = 3
        elif (st.version == "2.0" and wants3) or (st.version == "3.0" and not wants3):
            status = 4
        elif st.max_binds and self.connected_count() >= st.max_binds:
            status = 5
        version = 0x30 if wants3 else 0x20
        secret = st.secret + "x" if st.bad_ismg_auth else st.secret
        out.append(pdu.connect_resp(seq, status, c.authenticator, secret, version, wide=wants3))
        if status:
            self.stats.connect_refused += 1
            log.info("%s: CONNECT %r refused with Status %d", s.name, c.source_addr, status)
            return True
        self.stats.connects += 1
        s.connected, s.v3 = True, wants3
        if self._held:
            items = list(self._held)
            self._held.clear()
            self.stats.held = 0
            s.emit(items, out, now)
        return False

    def _next_msg_id(self, wall: float) -> int:
        self._seq = seq = (self._seq + 1) & 0xFFFF
        st = self.settings
        # Every id of one second shares its upper 48 bits: time.gmtime once a second
        # (it was a tenth of the simulator's CPU a message, twice a message).
        key = (int(wall), st.utc_offset_h, st.gateway_id)
        if key != self._id_key:
            t = time.gmtime(key[0] + st.utc_offset_h * 3600)
            self._id_key = key
            self._id_high = pdu.msg_id(t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                                       st.gateway_id, 0)
        return self._id_high | seq

    def _stamp(self, wall: float) -> str:
        """YYMMDDHHMM in the ISMG's time (a report's Submit_time/Done_time), made once
        a minute."""
        minute = int(wall + self.settings.utc_offset_h * 3600) // 60
        text = self._stamps.get(minute)
        if text is None:
            if len(self._stamps) > 64:
                self._stamps.clear()
            text = self._stamps[minute] = time.strftime("%y%m%d%H%M", time.gmtime(minute * 60))
        return text

    def _admit(self, now: float) -> int:
        st = self.settings
        if st.max_tps > 0:
            tokens = min(max(1.0, st.max_tps), self._tokens + (now - self._tokens_at) * st.max_tps)
            self._tokens_at = now
            if tokens < 1.0:
                self._tokens = tokens
                return 8
            self._tokens = tokens - 1.0
        if st.flow_control_fraction and self.rng.random() < st.flow_control_fraction:
            return 8
        if st.error_fraction and self.rng.random() < st.error_fraction:
            return st.error_result
        return 0

    def _submit(self, s: Session, seq: int, body: bytes, out: list[bytes], now: float) -> bool:
        st = self.settings
        stats = self.stats
        stats.submits += 1
        s.submits += 1
        try:
            sub = pdu.parse_submit(body)
        except pdu.Malformed as e:
            stats.malformed += 1
            log.warning("%s: malformed SUBMIT seq=%d: %s", s.name, seq, e)
            out.append(pdu.submit_resp(seq, 0, 1, s.v3))
            return False
        wall = self.wall()
        result = self._admit(now)
        mid = self._next_msg_id(wall) if result == 0 else 0
        stats.results[result] = stats.results.get(result, 0) + 1
        rec = Submission(
            sp_id=st.sp_id, sequence=seq, msg_id=mid, result=result,
            destination=sub.destinations[0], src_id=sub.src_id, service_id=sub.service_id,
            msg_fmt=sub.msg_fmt, pk_total=sub.pk_total, pk_number=sub.pk_number,
            udhi=bool(sub.tp_udhi & 1), content=sub.content, valid_time=sub.valid_time,
            registered_delivery=sub.registered_delivery, received_at=wall, v3=sub.v3,
        )
        subs = self.submissions
        subs.append(rec)
        keep = st.keep_submissions
        if keep >= 0 and len(subs) > keep:
            # Trim in chunks, as the SMSC simulator does: deleting from the head of a
            # list is O(n), once a SUBMIT past the bound it was most of the simulator's CPU.
            del subs[: len(subs) - keep + keep // 10]
        if result == 0 and st.receipts and sub.registered_delivery == 1:
            self.wheel.add(now + st.receipt_delay_s, (_REPORT, s, rec))
        if st.unanswered_fraction and self.rng.random() < st.unanswered_fraction:
            stats.unanswered += 1
        else:
            resp = pdu.submit_resp(seq, mid, result, s.v3)
            if st.response_delay_s > 0:
                s.outstanding += 1
                stats.max_outstanding = max(stats.max_outstanding, s.outstanding)
                self.wheel.add(now + st.response_delay_s, (_RESP, s, resp))
            else:
                out.append(resp)
        if st.drop_after and s.submits >= st.drop_after:
            stats.drops += 1
            log.info("%s: dropping the connection after %d SUBMITs", s.name, s.submits)
            return True
        return False

    def _answered(self, s: Session, seq: int, body: bytes, now: float) -> None:
        o = s.pending.pop(seq, None)
        if o is None:
            return
        try:
            _, result = pdu.parse_deliver_resp(body)
        except pdu.Malformed:
            self.stats.malformed += 1
            result = 1
        if result == 0:
            if o.kind == KIND_REPORT:
                self.stats.receipts_acked += 1
            else:
                self.stats.mo_acked += 1
            if o.future is not None and not o.future.done():
                o.future.set_result(None)
            return
        if o.kind == KIND_REPORT:
            self.stats.receipts_refused += 1
        if o.attempts >= self.settings.receipt_max_attempts:
            self._abandon(o)
        else:
            self.wheel.add(now + min(self.settings.receipt_resend_s, 0.2), (_REDELIVER, o))

    def _abandon(self, o: Outgoing) -> None:
        self.stats.receipts_abandoned += 1
        if o.future is not None and not o.future.done():
            o.future.set_exception(RuntimeError(f"DELIVER given up after {o.attempts} attempts"))

    # -- delivering --------------------------------------------------------------------------
    def _report(self, s: Session, sub: Submission, wall: float) -> Outgoing:
        st = self.settings
        stat = st.receipt_stat
        if st.undeliverable_fraction and self.rng.random() < st.undeliverable_fraction:
            stat = st.failure_stat
        stamp = self._stamp(sub.received_at)
        done = self._stamp(wall)
        mid = self._next_msg_id(wall)
        smsc_seq = self._seq

        def build(v3: bool) -> bytes:
            content = pdu.report(sub.msg_id, stat, stamp, done, sub.destination, smsc_seq, v3)
            return pdu.deliver(0, msg_id=mid, dest_id=sub.src_id, service_id=sub.service_id,
                               msg_fmt=0, src_terminal=sub.destination, registered_delivery=1,
                               content=content, udhi=False, v3=v3)

        return Outgoing(build, KIND_REPORT, prefer=s)

    def _pick(self, prefer: Session | None) -> Session | None:
        if prefer is not None and prefer.connected and prefer.open and not prefer.closing:
            return prefer
        live = [s for s in self._sessions if s.connected and s.open and not s.closing]
        return self.rng.choice(live) if live else None

    def _deliver(self, items: list[Outgoing], now: float) -> None:
        groups: dict[Session, list[Outgoing]] = {}
        for o in items:
            target = self._pick(o.prefer)
            if target is None:
                self._held.append(o)
                if len(self._held) > self.settings.held_limit:
                    self._abandon(self._held.popleft())
                self.stats.held = len(self._held)
            else:
                groups.setdefault(target, []).append(o)
        for target, group in groups.items():
            out: list[bytes] = []
            target.emit(group, out, now)
            target.write(out)

    def _on_timers(self, items: list[Any]) -> None:
        now = self.loop.time()
        wall = self.wall()
        responses: dict[Session, list[bytes]] = {}
        deliveries: list[Outgoing] = []
        for item in items:
            kind = item[0]
            if kind == _RESP:
                s = item[1]
                s.outstanding -= 1
                if s.open:
                    responses.setdefault(s, []).append(item[2])
            elif kind == _REPORT:
                deliveries.append(self._report(item[1], item[2], wall))
            else:
                deliveries.append(item[1])
        for s, out in responses.items():  # answers first: a report never overtakes its resp
            s.write(out)
        self._deliver(deliveries, now)

    async def _housekeep(self) -> None:
        last_probe = self.loop.time()
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            try:
                now = self.loop.time()
                self._resend_overdue(now)
                every = self.settings.active_test_s
                if every and now - last_probe >= every:
                    last_probe = now
                    for s in list(self._sessions):
                        if s.connected and s.open and not s.closing:
                            s.write([pdu.pack(pdu.ACTIVE_TEST, s.next_seq())])
                            self.stats.active_tests_sent += 1
            except Exception:
                log.exception("housekeeping failed")

    def _resend_overdue(self, now: float) -> None:
        limit = now - self.settings.receipt_resend_s
        again: list[Outgoing] = []
        for s in list(self._sessions):
            overdue = [seq for seq, o in s.pending.items() if o.sent_at <= limit]
            for seq in overdue:
                o = s.pending.pop(seq)
                if o.attempts >= self.settings.receipt_max_attempts:
                    self._abandon(o)
                else:
                    again.append(o)
        if again:
            self._deliver(again, now)

