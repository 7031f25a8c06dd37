"""One CMPP connection: framing, Sequence_Id, the window of unanswered SUBMITs.

Shaped like carrier/smpp/session.py (read it first): an ``asyncio.Protocol`` that parses
every complete PDU of a read in one loop (at most MAX_PDUS_PER_TURN a turn, reading
paused while a backlog waits), resolves SUBMIT_RESP by Sequence_Id from a dict into the
pool's Waiter (the same type the SMPP binds use, so a batch can span both protocols),
answers the ISMG's ACTIVE_TEST at once and hands the turn's DELIVERs to the bind in one
call. A new Session per connection: callbacks of a dead connection cannot touch the next.

CMPP has no generic_nack: a PDU we cannot use is counted (gatewayd_pdu_errors_total) and
dropped; a Total_Length below 12 or above MAX_PDU_LEN loses the framing, so only then is
the connection dropped (the bind reconnects).

TERMINATE from the ISMG is answered last, as SMPP's unbind: from the moment it is read
no SUBMIT or ACTIVE_TEST goes out; the TERMINATE_RESP and the close wait (bounded by
TERMINATE_WAIT_MAX_S and the response timeout) until every DELIVER read before it has
its DELIVER_RESP, so no report the handler is storing gets lost or answered twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol, cast

from gatewayd.carrier.cmpp import msgid
from gatewayd.carrier.cmpp import pdu as P
from gatewayd.carrier.cmpp import status as S
from gatewayd.carrier.flow import set_reading
from gatewayd.carrier.protocols import Waiter

if TYPE_CHECKING:
    from gatewayd.config import CarrierConfig

log = logging.getLogger("gatewayd.carrier")

_unpack_header = P.HEADER.unpack_from
MAX_PDUS_PER_TURN: Final = 256
# Handler tasks (one a parsed chunk of receipts/MO, awaiting Redis) a session lets run
# before it stops reading: the carrier's window bounds them in practice, but one that
# ignores it while Redis is slow would pile up tasks and memory. Paused, TCP pushes
# back on the sender; reading resumes at half.
MAX_ANSWERING: Final = 32
TERMINATE_WAIT_MAX_S: Final = 5.0
_THROTTLE: Final = frozenset(c for c, (_, kind) in S.RESULTS.items() if kind == "throttle")

# seq -> (waiter, slot, deadline, sent_at)
Pending = tuple[Waiter, int, float, float]


class SessionOwner(Protocol):
    """What a session reports to (bind.CmppBind), passed in so it never imports its bind."""

    cfg: CarrierConfig
    carrier: str
    index: int

    def on_submit_resps(
        self, ok: int, results: dict[int, int] | None, throttled: int,
        latency: float | None, in_flight: int,
    ) -> None: ...

    def on_deliver(self, session: Session, items: list[tuple[int, bytes]]) -> None: ...

    def on_session_closed(self, session: Session, lost: int) -> None: ...

    def on_terminate_requested(self) -> None: ...

    def on_late_response(self) -> None: ...

    def on_pdu_error(self, kind: str, detail: str) -> None: ...


class Session(asyncio.Protocol):
    def __init__(self, bind: SessionOwner, v3: bool) -> None:
        self.bind = bind
        self.v3 = v3  # the version we speak; parsers also accept the other one's layout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, Pending] = {}
        self.control: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.seq = 0
        self.bound = False
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.close_reason = ""
        self.active_seq = 0  # our outstanding ACTIVE_TEST, 0 = none
        self.active_deadline = 0.0
        self.active_tries = 0
        self.last_read = self.loop.time()
        self._more: asyncio.Handle | None = None
        self._paused = False
        self._held = False  # reading paused by us: MAX_ANSWERING handler tasks run
        self.answering = 0  # handler tasks that will write DELIVER_RESP on this session
        self._terminates: list[int] | None = None
        self._terminate_timer: asyncio.TimerHandle | None = None

    # -- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._more is not None:
            self._more.cancel()
            self._more = None
        if len(self.buf) >= P.HEADER_LEN:
            self._parse(1 << 62)
        self._terminates = None
        if self._terminate_timer is not None:
            self._terminate_timer.cancel()
            self._terminate_timer = None
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

    def request(self, data: bytes, seq: int) -> asyncio.Future[tuple[int, bytes]]:
        """Send a control request (CONNECT, TERMINATE); the future gets (command, body)."""
        fut: asyncio.Future[tuple[int, bytes]] = self.loop.create_future()
        self.control[seq] = fut
        self.write(data)
        return fut

    def track_answers(self, task: asyncio.Task[None]) -> None:
        """``task`` writes DELIVER_RESP on this session: a TERMINATE is answered after it."""
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
        if self._terminates is not None:
            self._answer_terminate()

    # -- TERMINATE from the ISMG ------------------------------------------------------------
    def _on_terminate(self, seq: int) -> None:
        self.bound = False
        self.close_reason = "terminated by the ISMG"
        if self._terminates is not None:
            self._terminates.append(seq)
            return
        self._terminates = [seq]
        self.bind.on_terminate_requested()
        wait = min(TERMINATE_WAIT_MAX_S, self.bind.cfg.response_timeout_s)
        self._terminate_timer = self.loop.call_later(wait, self._terminate_overdue, wait)

    def _answer_terminate(self, overdue: bool = False) -> None:
        if not overdue and (self.answering or self._more is not None):
            return
        seqs, self._terminates = self._terminates, None
        if self._terminate_timer is not None:
            self._terminate_timer.cancel()
            self._terminate_timer = None
        if seqs:
            self.write(b"".join(P.pdu(P.TERMINATE_RESP, seq) for seq in seqs))
        self.close("terminated by the ISMG")

    def _terminate_overdue(self, wait: float) -> None:
        self._terminate_timer = None
        if self._terminates is None:
            return
        log.warning("%s[%d]: DELIVER still unanswered %.1f s after the ISMG's TERMINATE "
                    "(%d handler tasks); answering it anyway, the ISMG will deliver them "
                    "again", self.bind.carrier, self.bind.index, wait, self.answering)
        self._answer_terminate(overdue=True)

    # -- outstanding SUBMITs --------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Resolve SUBMITs whose response is overdue; pending is in send order."""
        expired: list[int] = []
        for seq, entry in self.pending.items():
            if entry[2] > now:
                break
            expired.append(seq)
        for seq in expired:
            waiter, slot, _, _ = self.pending.pop(seq)
            waiter.resolve(slot, S.TIMEOUT, "")
        return len(expired)

    # -- input ------------------------------------------------------------------------------
    def _reading(self) -> None:
        """Paused while a backlog is parsed turn by turn or while MAX_ANSWERING handler
        tasks run, reading otherwise."""
        set_reading(self.transport, self._paused or self._held)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_read = self.loop.time()
        if self._more is None:
            self._parse(MAX_PDUS_PER_TURN)

    def _continue(self) -> None:
        self._more = None
        try:
            self._parse(MAX_PDUS_PER_TURN)
        except Exception:
            log.exception("%s[%d]: error handling PDUs; reconnecting", self.bind.carrier,
                          self.bind.index)
            self.abort("error handling PDUs")

    def _parse(self, limit: int) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        pending = self.pending
        bind = self.bind
        out: list[bytes] = []
        delivers: list[tuple[int, bytes]] | None = None
        results: dict[int, int] | None = None
        latency: float | None = None
        ok = 0
        throttled = 0
        now = self.loop.time()
        while n - pos >= P.HEADER_LEN:
            length, cmd, seq = _unpack_header(buf, pos)
            if length < P.HEADER_LEN or length > P.MAX_PDU_LEN:
                bind.on_pdu_error("total_length", f"Total_Length {length} (cmd 0x{cmd:08x})")
                self.buf = bytearray()
                self.abort(f"bad Total_Length {length}")
                return
            end = pos + length
            if end > n:
                break
            body = bytes(buf[pos + P.HEADER_LEN : end])
            if cmd == P.SUBMIT_RESP:
                entry = pending.pop(seq, None)
                try:
                    mid, result = P.parse_submit_resp(body)
                except P.PduError as e:
                    bind.on_pdu_error("body", f"SUBMIT_RESP seq {seq}: {e}")
                    mid, result = 0, S.BAD_RESPONSE
                if result == 0:
                    ok += 1
                else:
                    if results is None:
                        results = {}
                    results[result] = results.get(result, 0) + 1
                    if result in _THROTTLE:
                        throttled += 1
                if entry is None:
                    bind.on_late_response()
                else:
                    entry[0].resolve(entry[1], result, msgid.canonical(mid) if result == 0 else "")
                    if latency is None:
                        latency = now - entry[3]
            elif cmd == P.DELIVER:
                if delivers is None:
                    delivers = []
                delivers.append((seq, body))
            elif cmd == P.ACTIVE_TEST:
                out.append(P.active_test_resp_pdu(seq))
            elif cmd == P.ACTIVE_TEST_RESP:
                if seq == self.active_seq:
                    self.active_seq = 0
                    self.active_tries = 0
            elif cmd in (P.CONNECT_RESP, P.TERMINATE_RESP):
                fut = self.control.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result((cmd, body))
            elif cmd == P.TERMINATE:
                self._on_terminate(seq)
            elif cmd & P.RESP:
                bind.on_pdu_error("unexpected_response", f"unexpected response 0x{cmd:08x}")
            else:
                bind.on_pdu_error("unknown_command", f"unknown Command_Id 0x{cmd:08x}")
            pos = end
            limit -= 1
            if not limit:
                break
        if pos:
            del buf[:pos]
        if not limit and n - pos >= P.HEADER_LEN:
            self._more = self.loop.call_soon(self._continue)
            if not self._paused:
                self._paused = True
                self._reading()
        elif self._paused:
            self._paused = False
            self._reading()
        if out:
            self.write(b"".join(out))
        if ok or results:
            bind.on_submit_resps(ok, results, throttled, latency, len(pending))
        if delivers:
            bind.on_deliver(self, delivers)
        if self._terminates is not None:
            self._answer_terminate()
