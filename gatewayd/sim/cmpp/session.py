"""One SP connection to the simulated ISMG: frames PDUs and answers each read in one write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol, cast

from gatewayd.sim.cmpp import pdu
from gatewayd.sim.cmpp.settings import IsmgSettings, IsmgStats

log = logging.getLogger("gatewayd.sim")

KIND_REPORT: Final = 0
KIND_MO: Final = 1


class Outgoing:
    """A DELIVER (report or MO) until the SP answers it with DELIVER_RESP Result 0.

    ``build(v3)`` packs it for the version of the connection it goes out on (known only
    then: an MO may be held until a client connects); Sequence_Id is patched in later.
    """

    __slots__ = ("attempts", "build", "data", "future", "kind", "prefer", "sent_at")

    def __init__(self, build: Callable[[bool], bytes], kind: int,
                 prefer: Session | None = None,
                 future: asyncio.Future[None] | None = None) -> None:
        self.build = build
        self.data = b""
        self.kind = kind
        self.prefer = prefer
        self.future = future
        self.attempts = 0
        self.sent_at = 0.0


class IsmgCore(Protocol):
    """What a connection needs of its simulator (ismg.IsmgSimulator), passed in so this
    module never imports the simulator that creates its sessions."""

    settings: IsmgSettings
    stats: IsmgStats

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def _connected(self, s: Session) -> None: ...

    def _disconnected(self, s: Session) -> None: ...

    def _connect(self, s: Session, seq: int, body: bytes, out: list[bytes],
                 now: float) -> bool: ...

    def _submit(self, s: Session, seq: int, body: bytes, out: list[bytes],
                now: float) -> bool: ...

    def _answered(self, s: Session, seq: int, body: bytes, now: float) -> None: ...


class Session(asyncio.Protocol):
    def __init__(self, ismg: IsmgCore) -> None:
        self.ismg = ismg
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.closing = False
        self.connected = False  # after a successful CONNECT
        self.v3 = False
        self.name = ""
        self.seq = 0
        self.pending: dict[int, Outgoing] = {}
        self.submits = 0
        self.outstanding = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True
        peer = transport.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.ismg._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.closing = True
        self.ismg._disconnected(self)

    def next_seq(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq

    def write(self, out: list[bytes]) -> None:
        if out and self.open and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def emit(self, items: list[Outgoing], out: list[bytes], now: float) -> None:
        """Number and register DELIVERs on this connection; their bytes go into out."""
        stats = self.ismg.stats
        for o in items:
            seq = self.next_seq()
            self.pending[seq] = o
            if o.kind == KIND_REPORT:
                if o.attempts:
                    stats.receipts_resent += 1
                else:
                    stats.receipts_sent += 1
            elif not o.attempts:
                stats.mo_sent += 1
            o.attempts += 1
            o.sent_at = now
            data = o.build(self.v3)
            out.append(data[:8] + seq.to_bytes(4, "big") + data[12:])

    def close_after(self, out: list[bytes]) -> None:
        self.closing = True
        self.buf = b""
        if self.transport is not None:
            self.write(out)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        data = self.buf + data if self.buf else data
        ismg = self.ismg
        now = ismg.loop.time()
        out: list[bytes] = []
        n = len(data)
        pos = 0
        while n - pos >= 12:
            length, cmd, seq = pdu.HEADER.unpack_from(data, pos)
            if length < 12 or length > pdu.MAX_PDU_LEN:
                ismg.stats.garbage_closes += 1
                log.warning("%s: Total_Length %d is impossible; closing", self.name, length)
                self.close_after(out)
                return
            end = pos + length
            if end > n:
                break
            body = data[pos + 12 : end]
            pos = end
            try:
                if self._handle(cmd, seq, body, out, now):
                    self.close_after(out)
                    return
            except Exception:
                # A bug must cost one PDU, not the connection.
                ismg.stats.malformed += 1
                log.exception("%s: failed on 0x%08x seq=%d", self.name, cmd, seq)
        self.buf = data[pos:]
        self.write(out)

    def _handle(self, cmd: int, seq: int, body: bytes, out: list[bytes], now: float) -> bool:
        """Handle one PDU; True when the connection must close after this read's answers."""
        ismg = self.ismg
        if cmd == pdu.CONNECT:
            return ismg._connect(self, seq, body, out, now)
        if not self.connected:
            ismg.stats.malformed += 1
            log.info("%s: 0x%08x before CONNECT; closing", self.name, cmd)
            return True
        if cmd == pdu.SUBMIT:
            return ismg._submit(self, seq, body, out, now)
        if cmd == pdu.DELIVER | pdu.RESP:
            ismg._answered(self, seq, body, now)
        elif cmd == pdu.ACTIVE_TEST:
            ismg.stats.active_tests += 1
            if ismg.settings.answer_active_test:
                out.append(pdu.pack(pdu.ACTIVE_TEST | pdu.RESP, seq, b"\x00"))
        elif cmd == pdu.ACTIVE_TEST | pdu.RESP:
            ismg.stats.active_test_resps += 1
        elif cmd == pdu.TERMINATE:
            ismg.stats.terminates += 1
            out.append(pdu.pack(pdu.TERMINATE | pdu.RESP, seq))
            return True
        elif cmd == pdu.TERMINATE | pdu.RESP:
            return True
        else:
            ismg.stats.malformed += 1
            log.info("%s: unsupported Command_Id 0x%08x", self.name, cmd)
        return False
