"""One SMPP connection: framing, sequence numbers, the window of outstanding submit_sm.

An ``asyncio.Protocol`` (no stream reader, no task per message): ``data_received`` parses
the complete PDUs in the buffer in one loop, resolves submit_sm_resp by sequence number
from a dict, and hands the turn's deliver_sm PDUs to the bind in one call. Outgoing
PDUs go straight to ``transport.write``; the window bounds what can be buffered.
A new Session is made for every connection, so callbacks of a dead connection cannot
touch the next one.

One turn of the event loop handles at most MAX_PDUS_PER_TURN PDUs: one read can hold
thousands of receipts (uvloop reads a backlog in one go), and parsing them all at once
kept every other task (the OTP dispatcher) waiting for hundreds of milliseconds. The
rest waits in the buffer for the next turn (``call_soon``), in order, with reading
paused meanwhile, so the backlog stays in the kernel and in the SMSC, not in memory.
A connection lost with a backlog still parses it first, as a single read used to.

An unbind from the SMSC is answered last (SMPP 3.4: outstanding operations complete
before the unbind_resp). From the moment it is read no submit_sm or enquire_link goes
out (``bound`` is False); what was read with it or arrives after it is still handled as
usual (responses resolve our submit_sm, deliver_sm are stored and answered, though an
SMSC should send no request after its unbind); the unbind_resp and the close wait until
the backlog is parsed and every handler task of the session has written its
deliver_sm_resp. The wait is bounded (UNBIND_WAIT_MAX_S, at most the carrier's response
timeout): a stalled receipt store must not hold the unbind; what is unanswered when it
is answered anyway, the SMSC delivers again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol, cast

from gatewayd.carrier.flow import set_reading
from gatewayd.carrier.protocols import Waiter
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import status as S

if TYPE_CHECKING:
    from gatewayd.config import CarrierConfig

__all__ = ["Pending", "Session", "SessionOwner", "Waiter"]

log = logging.getLogger("gatewayd.carrier")

_unpack_header = P.HEADER.unpack_from
MAX_PDUS_PER_TURN: Final = 256
# Handler tasks (one a parsed chunk of receipts/MO, awaiting Redis) a session lets run
# before it stops reading: the carrier's window bounds them in practice, but one that
# ignores it while Redis is slow would pile up tasks and memory. Paused, TCP pushes
# back on the sender; reading resumes at half.
MAX_ANSWERING: Final = 32
# At most this long (and no longer than the carrier's response timeout, which the SMSC's
# own timer for our unbind_resp is likely to resemble) between reading an unbind and
# answering it.
UNBIND_WAIT_MAX_S: Final = 5.0
_SUBMIT_SM_RESP: Final = P.SUBMIT_SM_RESP
_DELIVER_SM: Final = P.DELIVER_SM
_THROTTLE: Final = frozenset(
    code for code, (_, kind) in S.STATUS.items() if kind == "throttle"
)


# seq -> (waiter, slot, deadline, sent_at): a tuple, the cheapest record to build.
Pending = tuple[Waiter, int, float, float]


class SessionOwner(Protocol):
    """What a session reports to (bind.Bind): defined here so the session never imports
    its bind; the bind passes itself in."""

    cfg: CarrierConfig
    carrier: str
    index: int

    def on_submit_resps(
        self, ok: int, statuses: dict[int, int] | None, throttled: int,
        latency: float | None, in_flight: int,
    ) -> None: ...

    def on_deliver(self, session: Session, items: list[tuple[int, bytes]]) -> None: ...

    def on_session_closed(self, session: Session, lost: int) -> None: ...

    def on_unbind_requested(self) -> None: ...

    def on_late_response(self) -> None: ...

    def on_pdu_error(self, kind: str, detail: str) -> None: ...


class Session(asyncio.Protocol):
    def __init__(self, bind: SessionOwner) -> None:
        self.bind = bind
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, Pending] = {}
        self.control: dict[int, asyncio.Future[tuple[int, int, bytes]]] = {}
        self.seq = 0
        self.bound = False
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.close_reason = ""
        self.enquire_seq = 0  # outstanding enquire_link, 0 = none
        self.enquire_deadline = 0.0
        self._more: asyncio.Handle | None = None  # the next turn's parse, while a backlog
        self._paused = False  # reading paused by us (the backlog), not by anyone else
        self._held = False  # reading paused by us: MAX_ANSWERING handler tasks run
        self.answering = 0  # handler tasks that will write deliver_sm_resp on this session
        self._unbinds: list[int] | None = None  # the SMSC's unbind seqs, not answered yet
        self._unbind_timer: asyncio.TimerHandle | None = None

    # -- connection -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._more is not None:
            self._more.cancel()
            self._more = None
        if len(self.buf) >= 16:
            self._parse(1 << 62)
        self._unbinds = None  # nobody left to answer
        if self._unbind_timer is not None:
            self._unbind_timer.cancel()
            self._unbind_timer = None
        self.bound = False
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        self.close_reason = reason
        pending, self.pending = self.pending, {}
        for waiter, slot, _, _ in pending.values():
            waiter.resolve(slot, S.BIND_LOST, "")
        for fut in self.control.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        self.control.clear()
        if not self.closed.done():
            self.closed.set_result(reason)
        self.bind.on_session_closed(self, len(pending))

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self.bound = False
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """Drop at once, without flushing (protocol violation, dead link)."""
        if not self.close_reason:
            self.close_reason = reason
        self.bound = False
        if self.transport is not None:
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def next_seq(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def request(self, data_for_seq: bytes, seq: int) -> asyncio.Future[tuple[int, int, bytes]]:
        """Send a control request (bind, unbind) and get a future for its response."""
        fut: asyncio.Future[tuple[int, int, bytes]] = self.loop.create_future()
        self.control[seq] = fut
        self.write(data_for_seq)
        return fut

    def track_answers(self, task: asyncio.Task[None]) -> None:
        """``task`` writes deliver_sm_resp on this session: an unbind is answered after it."""
        self.answering += 1
        task.add_done_callback(self._answered)
        if self.answering >= MAX_ANSWERING and not self._held:
            self._held = True
            self._reading()

    def _answered(self, _: asyncio.Task[None]) -> None:
        self.answering -= 1
        if self._held and self.answering <= MAX_ANSWERING // 2:
            self._held = False
            self._reading()
        if self._unbinds is not None:
            self._answer_unbind()

    # -- unbind from the SMSC -----------------------------------------------------------
    def _on_unbind(self, seq: int) -> None:
        self.bound = False  # Bind.send and reserve check it: no submit_sm from now on
        self.close_reason = "unbound by the SMSC"
        if self._unbinds is not None:
            self._unbinds.append(seq)  # a repeated unbind gets its answer with the first
            return
        self._unbinds = [seq]
        self.bind.on_unbind_requested()
        wait = min(UNBIND_WAIT_MAX_S, self.bind.cfg.response_timeout_s)
        self._unbind_timer = self.loop.call_later(wait, self._unbind_overdue, wait)

    def _answer_unbind(self, overdue: bool = False) -> None:
        """Answer the unbind and close, once no deliver_sm read is left unanswered."""
        if not overdue and (self.answering or self._more is not None):
            return
        seqs, self._unbinds = self._unbinds, None
        if self._unbind_timer is not None:
            self._unbind_timer.cancel()
            self._unbind_timer = None
        if seqs:
            self.write(b"".join(P.resp_pdu(P.UNBIND, seq) for seq in seqs))
        self.close("unbound by the SMSC")

    def _unbind_overdue(self, wait: float) -> None:
        self._unbind_timer = None
        if self._unbinds is None:
            return
        log.warning("%s[%d]: deliver_sm still unanswered %.1f s after the SMSC's unbind "
                    "(%d handler tasks%s); unbinding anyway, the SMSC will deliver them again",
                    self.bind.carrier, self.bind.index, wait, self.answering,
                    ", a backlog unparsed" if self._more is not None else "")
        self._answer_unbind(overdue=True)

    # -- outstanding submit_sm ------------------------------------------------------
    def expire(self, now: float) -> int:
        """Resolve submit_sm whose response is overdue; pending is in send order."""
        expired: list[int] = []
        for seq, entry in self.pending.items():
            if entry[2] > now:
                break
            expired.append(seq)
        for seq in expired:
            waiter, slot, _, _ = self.pending.pop(seq)
            waiter.resolve(slot, S.TIMEOUT, "")
        return len(expired)

    # -- input ------------------------------------------------------------------------
    def _reading(self) -> None:
        """Paused while a backlog is parsed turn by turn or while MAX_ANSWERING handler
        tasks run, reading otherwise."""
        set_reading(self.transport, self._paused or self._held)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self._more is None:  # else a backlog is queued before this data: it goes first
            self._parse(MAX_PDUS_PER_TURN)

    def _continue(self) -> None:
        self._more = None
        try:
            self._parse(MAX_PDUS_PER_TURN)
        except Exception:
            # Raised in data_received, this would make the transport drop the connection;
            # in a callback of ours it would leave reading paused for good. Drop it too.
            log.exception("%s[%d]: error handling PDUs; reconnecting", self.bind.carrier,
                          self.bind.index)
            self.abort("error handling PDUs")

    def _parse(self, limit: int) -> None:
        """Handle up to ``limit`` complete PDUs; leave the rest to the next turn."""
        buf = self.buf
        n = len(buf)
        pos = 0
        pending = self.pending
        bind = self.bind
        out: list[bytes] = []
        delivers: list[tuple[int, bytes]] | None = None
        statuses: dict[int, int] | None = None
        latency: float | None = None  # one sample a chunk: cheap, still representative
        ok = 0
        throttled = 0
        now = self.loop.time()
        while n - pos >= 16:
            length, cmd, status, seq = _unpack_header(buf, pos)
            if length < 16 or length > P.MAX_PDU_LEN:
                bind.on_pdu_error("command_length", f"command_length {length} (cmd 0x{cmd:08x})")
                self.buf = bytearray()
                self.abort(f"bad command_length {length}")
                return
            end = pos + length
            if end > n:
                break
            if cmd == _SUBMIT_SM_RESP:
                entry = pending.pop(seq, None)
                if status == 0:
                    ok += 1
                    if entry is not None:
                        nul = buf.find(0, pos + 16, end)
                        mid = buf[pos + 16 : end if nul < 0 else nul].decode("latin-1")
                        entry[0].resolve(entry[1], 0, mid)
                else:
                    if statuses is None:
                        statuses = {}
                    statuses[status] = statuses.get(status, 0) + 1
                    if status in _THROTTLE:
                        throttled += 1
                    if entry is not None:
                        entry[0].resolve(entry[1], status, "")
                if entry is None:
                    bind.on_late_response()
                elif latency is None:
                    latency = now - entry[3]
            elif cmd == _DELIVER_SM:
                if delivers is None:
                    delivers = []
                delivers.append((seq, bytes(buf[pos + 16 : end])))
            elif cmd == P.ENQUIRE_LINK:
                out.append(P.resp_pdu(P.ENQUIRE_LINK, seq))
            elif cmd == P.ENQUIRE_LINK_RESP:
                if seq == self.enquire_seq:
                    self.enquire_seq = 0
            elif cmd == P.GENERIC_NACK:
                self._on_nack(seq, status)
            elif cmd in P.BIND_RESPS or cmd == P.UNBIND_RESP:
                fut = self.control.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result((cmd, status, bytes(buf[pos + 16 : end])))
            elif cmd == P.UNBIND:
                self._on_unbind(seq)
            elif cmd == P.ALERT_NOTIFICATION:
                pass  # no response defined; nothing for us to do with it
            elif cmd & P.RESPONSE_BIT:
                bind.on_pdu_error("unexpected_response", f"unexpected response 0x{cmd:08x}")
            else:
                bind.on_pdu_error("unknown_command", f"unknown command_id 0x{cmd:08x}")
                out.append(P.generic_nack_pdu(seq, P.ESME_RINVCMDID))
            pos = end
            limit -= 1
            if not limit:
                break
        if pos:
            del buf[:pos]
        if not limit and n - pos >= 16:
            self._more = self.loop.call_soon(self._continue)
            if not self._paused:
                self._paused = True
                self._reading()
        elif self._paused:
            self._paused = False
            self._reading()
        if out:
            self.write(b"".join(out))
        if ok or statuses:
            bind.on_submit_resps(ok, statuses, throttled, latency, len(pending))
        if delivers:
            bind.on_deliver(self, delivers)
        if self._unbinds is not None:
            self._answer_unbind()

    def _on_nack(self, seq: int, status: int) -> None:
        self.bind.on_pdu_error("generic_nack", f"generic_nack 0x{status:08x} for seq {seq}")
        entry = self.pending.pop(seq, None)
        if entry is not None:
            # A nack with ESME_ROK makes no sense: report it as an unknown error.
            code = status or 0xFF
            entry[0].resolve(entry[1], code, "")
            self.bind.on_submit_resps(0, {code: 1}, 1 if code in _THROTTLE else 0, None,
                                      len(self.pending))
            return
        fut = self.control.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result((P.GENERIC_NACK, status or 0xFF, b""))
