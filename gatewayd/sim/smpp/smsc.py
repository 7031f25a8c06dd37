"""An SMPP 3.4 SMSC simulator for the demo, the tests and the benchmarks.

Built to stay out of the way of a client pushing tens of thousands of submit_sm a second:
each read is framed and answered in one pass with one write (session.py), receipts wait
in a coarse timer wheel and go out in batches (wheel.py), and nothing spawns a task per
PDU. Faults (throttling, errors, slow answers, drops, early receipts, hex/decimal ids)
are knobs of SimSettings and can be changed while running with ``set``.

Decisions the brief left open:
- only the configured system_id/password can bind, so every receipt and MO goes to a
  receiver/transceiver of that account: the connection that submitted when it can
  receive, else the bound receivers in turn; with none bound it is held (see SimSettings);
- a receipt is scheduled receipt_delay_s after the submit_sm arrived, so with
  response_delay_s > receipt_delay_s the receipt overtakes its submit_sm_resp;
- dates in receipts are UTC; the receipt's "text:" field keeps only characters that
  read the same in ASCII and GSM-7 ("?" for the others).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgspec

from gatewayd import smstext
from gatewayd.sim.smpp import pdu
from gatewayd.sim.smpp.messages import Message, Submission, reassemble
from gatewayd.sim.smpp.receipts import (
    DateCache,
    IdFormat,
    IdGenerator,
    message_state,
    receipt_id,
    receipt_text,
)
from gatewayd.sim.smpp.session import (
    KIND_MO,
    KIND_RECEIPT,
    RECEIPT,
    REDELIVER,
    RESP,
    Outgoing,
    Session,
)
from gatewayd.sim.smpp.settings import SimSettings, SimStats
from gatewayd.sim.wheel import TimerWheel

__all__ = ["Message", "SimSettings", "SimStats", "SmscSimulator", "Submission"]

log = logging.getLogger("gatewayd.sim")

_HOUSEKEEPING_S: Final = 0.25
# Statuses that say "never send this again" (the rest are retried after receipt_resend_s).
_PERMANENT: Final = frozenset({0x65})  # ESME_RX_P_APPN


class SmscSimulator:
    """The simulator. ``start()`` binds the port; ``stop()`` unbinds everyone and closes.

    ``submissions`` lists every submit_sm received (refused ones too, with their status)
    in arrival order; ``messages()`` puts multipart messages together and ``texts()``
    maps the first part's message_id to the full text.
    """

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings if settings is not None else SimSettings()
        self.port = self.settings.port
        self.submissions: list[Submission] = []
        self.stats = SimStats()
        self.rng = random.Random(self.settings.seed)
        self._ids = IdGenerator(self.settings.id_format, self.rng, self.settings.first_id)
        self.ids_format: IdFormat = self.settings.id_format
        self.wall: Callable[[], float] = time.time
        self._dates = DateCache()
        self.wheel = TimerWheel(self._on_timers)
        self._sessions: set[Session] = set()
        self._receivers: dict[str, list[Session]] = {}
        self._held: dict[str, deque[Outgoing]] = {}
        self._rr = 0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._server: asyncio.Server | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone = asyncio.Event()  # set whenever a connection goes away

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "SmscSimulator.start() first"
        return self._loop

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> int:
        """Listen and return the port (the chosen one when settings.port is 0)."""
        self._loop = asyncio.get_running_loop()
        st = self.settings
        self._tokens = max(1.0, st.max_tps)
        self._tokens_at = self._loop.time()
        ctx: ssl.SSLContext | None = None
        if st.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(st.tls_cert, st.tls_key)
        self._server = await self._loop.create_server(
            lambda: Session(self), st.host, st.port, ssl=ctx, reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.wheel.start()
        self._housekeeping = self._loop.create_task(self._housekeep(), name="sim-housekeeping")
        log.info(
            "SMSC simulator listening on %s:%d%s (system_id=%s)",
            st.host, self.port, " (TLS)" if ctx else "", st.system_id,
        )
        return self.port

    async def stop(self, timeout_s: float = 1.0) -> None:
        """Unbind every connection (waiting up to timeout_s for unbind_resp), then close."""
        if self._server is None:
            return
        self._server.close()
        sessions = [s for s in self._sessions if s.open]
        for s in sessions:
            if s.mode and s.transport is not None and not s.transport.is_closing():
                s.seq = s.seq % 0x7FFFFFFF + 1
                s.transport.write(pdu.pack(pdu.UNBIND, 0, s.seq))
            elif s.transport is not None:
                s.transport.close()
        try:
            async with asyncio.timeout(timeout_s):
                while any(s.open for s in sessions):
                    self._gone.clear()
                    await self._gone.wait()
        except TimeoutError:
            pass
        for s in sessions:
            if s.open and s.transport is not None:
                s.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run
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
        for q in self._held.values():
            for o in q:
                if o.future is not None and not o.future.done():
                    o.future.cancel()
        log.info("SMSC simulator stopped: %s", self.stats.summary())

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- public helpers ---------------------------------------------------------------

    def set(self, **changes: Any) -> None:
        """Change knobs while running, e.g. ``sim.set(throttle_fraction=0.5)``.

        Validated like the constructor (unknown names raise TypeError, bad values
        ValueError). host/port/tls only take effect on the next start().
        """
        new = msgspec.structs.replace(self.settings, **changes)
        new.__post_init__()
        old = self.settings
        self.settings = new
        if new.id_format != old.id_format:
            self._ids.fmt = new.id_format
            self.ids_format = new.id_format
        if new.max_tps != old.max_tps and self._loop is not None:
            self._tokens = max(1.0, new.max_tps)
            self._tokens_at = self._loop.time()
        if new.seed != old.seed and new.seed is not None:
            self.rng.seed(new.seed)
        log.info("settings changed: %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))

    def messages(self) -> list[Message]:
        """Complete messages (multipart put together) in the order they completed."""
        return reassemble(self.submissions)

    def texts(self) -> dict[str, str]:
        """Full text of every complete message, keyed by its first part's message_id.

        That is the id submit_sm_resp gave the first (or only) part, i.e. what a gateway
        stores as its carrier id; a duplicate submit is a separate entry under its own id.
        """
        return {m.message_ids[0]: m.text for m in self.messages()}

    def texts_to(self, destination: str) -> list[str]:
        """Full texts of the complete messages sent to destination, in order."""
        return [m.text for m in self.messages() if m.destination == destination]

    def bound_count(self) -> int:
        return sum(1 for s in self._sessions if s.mode and s.open)

    async def send_raw(self, data: bytes) -> None:
        """Write raw bytes to every bound connection (malformed-PDU tests)."""
        for s in list(self._sessions):
            if s.mode:
                s.write([data])
        await asyncio.sleep(0)

    async def inject_mo(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        parts: int = 1,
        udh_bits: int = 8,
        use_sar: bool = False,
        shuffle: bool = False,
        wait: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        """Send a mobile-originated message to a bound receiver/transceiver.

        With parts > 1 the text is cut into that many pieces (by characters) and sent as
        concatenated parts: UDH with an 8- or 16-bit reference, or the SAR TLVs when
        use_sar; shuffle sends the parts out of order (never in order when parts > 1).
        A single part longer than one SMS goes in message_payload. GSM-7 when the text
        allows it, else UCS-2. With no receiver bound the parts are held until one binds.
        wait=True returns only when every part was answered with deliver_sm_resp ESME_ROK
        (TimeoutError after timeout_s).
        """
        pdus = self._mo_pdus(source, destination, text, parts=parts, udh_bits=udh_bits,
                             use_sar=use_sar, shuffle=shuffle)
        await self._send_mo(pdus, wait=wait, timeout_s=timeout_s)

    async def inject_mo_chunk(
        self, messages: list[tuple[str, str, str]], *, copies: int = 1, wait: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        """Single-part MO (source, destination, text), written in one go so that they
        reach the ESME in one read; each ``copies`` times, the same deliver_sm again, as
        an SMSC resends one whose deliver_sm_resp it did not see. The source goes out
        exactly as given (any bytes a cstring may hold: empty, 41 digits, letters)."""
        pdus: list[bytes] = []
        for source, destination, text in messages:
            pdus += self._mo_pdus(source, destination, text, raw_source=True) * copies
        await self._send_mo(pdus, wait=wait, timeout_s=timeout_s)

    def _mo_pdus(
        self, source: str, destination: str, text: str, *, parts: int = 1,
        udh_bits: int = 8, use_sar: bool = False, shuffle: bool = False,
        raw_source: bool = False,
    ) -> list[bytes]:
        if udh_bits not in (8, 16):
            raise ValueError("udh_bits must be 8 or 16")
        if parts < 1 or parts > 255:
            raise ValueError("parts must be between 1 and 255")
        encoding: smstext.Encoding = "gsm7" if smstext.gsm7_septets(text) is not None else "ucs2"
        dc = 8 if encoding == "ucs2" else 0
        src = source if raw_source else source.lstrip("+")
        dst = destination.lstrip("+")
        pdus: list[bytes] = []
        if parts == 1:
            data = smstext.encode(text, encoding)
            if _units(text, encoding) <= smstext.SINGLE[encoding]:
                pdus.append(_mo(src, dst, 0, dc, data))
            else:
                pdus.append(_mo(src, dst, 0, dc, b"", pdu.tlv(pdu.TLV_MESSAGE_PAYLOAD, data)))
        else:
            if len(text) < parts:
                raise ValueError(f"cannot cut {len(text)} characters into {parts} parts")
            size = -(-len(text) // parts)
            chunks = [text[i * size : (i + 1) * size] for i in range(parts)]
            if not chunks[-1]:
                raise ValueError(f"{parts} parts of {size} characters leave an empty part")
            ref = self.rng.randrange(1, 256 if (udh_bits == 8 and not use_sar) else 65536)
            # A part must fit one SMS: beside a UDH, 153/152 septets or 67/66 UCS-2 units.
            room = smstext.SINGLE[encoding] if use_sar else smstext.PER_PART[(encoding, udh_bits)]
            for i, chunk in enumerate(chunks, start=1):
                if _units(chunk, encoding) > room:
                    raise ValueError(f"part {i} does not fit one SMS ({room} max); use more parts")
                data = smstext.encode(chunk, encoding)
                if use_sar:
                    tlvs = (
                        pdu.tlv(pdu.TLV_SAR_MSG_REF_NUM, ref.to_bytes(2, "big"))
                        + pdu.tlv(pdu.TLV_SAR_TOTAL_SEGMENTS, bytes((parts,)))
                        + pdu.tlv(pdu.TLV_SAR_SEGMENT_SEQNUM, bytes((i,)))
                    )
                    esm = 0
                else:
                    data = smstext.udh(ref, parts, i, udh_bits) + data
                    tlvs = b""
                    esm = pdu.ESM_UDHI
                pdus.append(_mo(src, dst, esm, dc, data, tlvs))
            if shuffle:
                in_order = list(pdus)
                self.rng.shuffle(pdus)
                if pdus == in_order:
                    pdus.reverse()
        return pdus

    async def _send_mo(self, pdus: list[bytes], *, wait: bool, timeout_s: float) -> None:
        system_id = self.settings.system_id
        futures: list[asyncio.Future[None]] = []
        items: list[Outgoing] = []
        for p in pdus:
            fut: asyncio.Future[None] | None = None
            if wait:
                fut = self.loop.create_future()
                futures.append(fut)
            items.append(Outgoing(p, KIND_MO, system_id, None, fut))
        self._deliver(items, self.loop.time())
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        else:
            await asyncio.sleep(0)

    # -- called by sessions -----------------------------------------------------------

    def _connected(self, s: Session) -> None:
        self._sessions.add(s)
        self.stats.connections += 1
        log.debug("connection from %s", s.peer)

    def _disconnected(self, s: Session) -> None:
        self._sessions.discard(s)
        self._gone.set()
        receivers = self._receivers.get(s.system_id)
        if receivers and s in receivers:
            receivers.remove(s)
        if s.pending:
            # Unanswered deliver_sm survive the connection, as on a real SMSC.
            items = list(s.pending.values())
            s.pending.clear()
            self.stats.unacked -= len(items)
            for o in items:
                o.prefer = None
            self._deliver(items, self.loop.time())
        log.info("%s disconnected", s.name or s.peer)

    def _bound(self, s: Session, out: list[bytes], now: float) -> None:
        self.stats.binds += 1
        s.name = f"{s.system_id}#{self.stats.binds}"
        log.info("%s bound as %s from %s", s.name, s.mode, s.peer)
        if not s.can_receive:
            return
        self._receivers.setdefault(s.system_id, []).append(s)
        held = self._held.get(s.system_id)
        if held:
            items = list(held)
            held.clear()
            self.stats.held -= len(items)
            log.info("%s: delivering %d held deliver_sm", s.name, len(items))
            s.emit(items, out, now)

    def _admit(self, now: float) -> int:
        """command_status for the next submit_sm: rate limit, then injected faults."""
        st = self.settings
        if st.max_tps > 0:
            tokens = min(max(1.0, st.max_tps), self._tokens + (now - self._tokens_at) * st.max_tps)
            self._tokens_at = now
            if tokens < 1.0:
                self._tokens = tokens
                return pdu.ESME_RTHROTTLED
            self._tokens = tokens - 1.0
        if st.throttle_fraction and self.rng.random() < st.throttle_fraction:
            return pdu.ESME_RTHROTTLED
        if st.error_fraction and self.rng.random() < st.error_fraction:
            return st.error_status
        if st.unanswered_fraction and self.rng.random() < st.unanswered_fraction:
            return pdu.UNANSWERED
        return 0

    def _count_response(self, status: int) -> None:
        r = self.stats.responses
        name = pdu.status_name(status)
        r[name] = r.get(name, 0) + 1

    def _record(self, sub: Submission) -> None:
        subs = self.submissions
        subs.append(sub)
        keep = self.settings.keep_submissions
        if keep >= 0 and len(subs) > keep:
            # Trim in chunks: deleting from the head of a list is O(n).
            del subs[: len(subs) - keep + keep // 10]

    def _receipt_stat(self, registered_delivery: int) -> str:
        """The receipt's stat, or "" when registered_delivery 2 (failures only) and the
        message was delivered."""
        st = self.settings
        if st.undeliverable_fraction and self.rng.random() < st.undeliverable_fraction:
            return "UNDELIV"
        if registered_delivery == 2 and st.receipt_stat == "DELIVRD":
            return ""
        return st.receipt_stat

    def _build_receipt(
        self, s: Session, sub: Submission, sm: pdu.ShortMessage, fmt: IdFormat, stat: str,
        wall: float,
    ) -> Outgoing:
        st = self.settings
        rid = receipt_id(sub.message_id, fmt, st.receipt_id_format)
        secs = st.receipt_dates_with_seconds
        dates = self._dates
        body = receipt_text(
            rid, stat, dates.stamp(sub.received_at, secs), dates.stamp(wall, secs), sub.text
        )
        tlvs = pdu.receipt_tlvs(rid.encode(), message_state(stat))
        data = pdu.deliver_sm(
            0, source=sm.destination.encode("latin-1"), source_ton=sm.dest_ton,
            source_npi=sm.dest_npi, destination=sm.source.encode("latin-1"),
            dest_ton=sm.source_ton, dest_npi=sm.source_npi, esm_class=pdu.ESM_RECEIPT,
            data_coding=0, short_message=body, tlvs=tlvs,
        )
        return Outgoing(data, KIND_RECEIPT, s.system_id,
                        s if st.receipts_to == "submitter" else None)

    def _pick(self, system_id: str, prefer: Session | None) -> Session | None:
        if prefer is not None and prefer.can_receive and prefer.open and not prefer.closing:
            return prefer
        receivers = self._receivers.get(system_id)
        if not receivers:
            return None
        self._rr = (self._rr + 1) % len(receivers)
        return receivers[self._rr]

    def _deliver(self, items: list[Outgoing], now: float) -> None:
        """Write deliver_sm to their receivers (one write per connection) or hold them."""
        if not items:
            return
        groups: dict[Session, list[Outgoing]] = {}
        for o in items:
            target = self._pick(o.system_id, o.prefer)
            if target is None:
                self._hold(o)
            else:
                g = groups.get(target)
                if g is None:
                    groups[target] = [o]
                else:
                    g.append(o)
        for target, group in groups.items():
            out: list[bytes] = []
            target.emit(group, out, now)
            target.write(out)

    def _hold(self, o: Outgoing) -> None:
        q = self._held.get(o.system_id)
        if q is None:
            q = self._held[o.system_id] = deque()
        q.append(o)
        self.stats.held += 1
        limit = self.settings.held_limit
        while len(q) > limit:
            dropped = q.popleft()
            self.stats.held -= 1
            self.stats.held_dropped += 1
            if dropped.future is not None and not dropped.future.done():
                dropped.future.set_exception(RuntimeError("held deliver_sm dropped"))

    def _answered(self, s: Session, seq: int, status: int, now: float) -> None:
        o = s.pending.pop(seq, None)
        if o is None:
            log.debug("%s: response to unknown sequence %d", s.name, seq)
            return
        stats = self.stats
        stats.unacked -= 1
        if status == 0:
            if o.kind == KIND_RECEIPT:
                stats.receipts_acked += 1
            else:
                stats.mo_acked += 1
            if o.future is not None and not o.future.done():
                o.future.set_result(None)
            return
        if o.kind == KIND_RECEIPT:
            stats.receipts_nacked += 1
        else:
            stats.mo_nacked += 1
        if status in _PERMANENT or o.attempts >= self.settings.receipt_max_attempts:
            self._abandon(o, f"refused with {pdu.status_name(status)}")
        else:
            self.wheel.add(now + self.settings.receipt_resend_s, (REDELIVER, o))

    def _abandon(self, o: Outgoing, why: str) -> None:
        self.stats.receipts_abandoned += 1
        log.warning("giving up on a deliver_sm after %d attempts: %s", o.attempts, why)
        if o.future is not None and not o.future.done():
            o.future.set_exception(RuntimeError(f"deliver_sm {why}"))

    # -- timers -----------------------------------------------------------------------

    def _on_timers(self, items: list[Any]) -> None:
        now = self.loop.time()
        wall = self.wall()
        responses: dict[Session, list[bytes]] = {}
        deliveries: list[Outgoing] = []
        build = self._build_receipt
        for item in items:
            kind = item[0]
            if kind == RECEIPT:
                _, s, sub, sm, fmt, stat = item
                deliveries.append(build(s, sub, sm, fmt, stat, wall))
            elif kind == RESP:
                s = item[1]
                s.outstanding -= 1
                if s.open:
                    r = responses.get(s)
                    if r is None:
                        responses[s] = [item[2]]
                    else:
                        r.append(item[2])
            elif kind == REDELIVER:
                deliveries.append(item[1])
        # Answers first: a receipt due in the same tick must not overtake its resp.
        for s, out in responses.items():
            s.write(out)
        self._deliver(deliveries, now)

    async def _housekeep(self) -> None:
        """Re-send deliver_sm unanswered for receipt_resend_s; probe ESMEs with
        enquire_link every enquire_link_s."""
        last_probe = self.loop.time()
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            try:
                self._resend_overdue()
                every = self.settings.enquire_link_s
                if every and self.loop.time() - last_probe >= every:
                    last_probe = self.loop.time()
                    self._probe()
            except Exception:
                log.exception("housekeeping failed")

    def _probe(self) -> None:
        for s in list(self._sessions):
            if s.mode and s.open and not s.closing:
                s.seq = s.seq % 0x7FFFFFFF + 1
                s.write([pdu.pack(pdu.ENQUIRE_LINK, 0, s.seq)])
                self.stats.enquire_links_sent += 1

    def _resend_overdue(self) -> None:
        now = self.loop.time()
        limit = now - self.settings.receipt_resend_s
        max_attempts = self.settings.receipt_max_attempts
        again: list[Outgoing] = []
        for s in list(self._sessions):
            overdue: list[int] = []
            for seq, o in s.pending.items():
                if o.sent_at > limit:
                    break  # sent in order: the rest are younger
                overdue.append(seq)
            for seq in overdue:
                o = s.pending.pop(seq)
                self.stats.unacked -= 1
                if o.attempts >= max_attempts:
                    self._abandon(o, f"unanswered after {o.attempts} attempts")
                else:
                    again.append(o)
        if again:
            log.info("re-sending %d unanswered deliver_sm", len(again))
            self._deliver(again, now)


def _units(text: str, encoding: smstext.Encoding) -> int:
    if encoding == "ucs2":
        return smstext.ucs2_units(text)
    return smstext.gsm7_septets(text) or 0


def _mo(
    source: str, destination: str, esm_class: int, data_coding: int, data: bytes,
    tlvs: bytes = b"",
) -> bytes:
    return pdu.deliver_sm(
        0, source=source.encode("latin-1"), source_ton=1, source_npi=1,
        destination=destination.encode("latin-1"), dest_ton=0, dest_npi=1,
        esm_class=esm_class, data_coding=data_coding, short_message=data, tlvs=tlvs,
    )
