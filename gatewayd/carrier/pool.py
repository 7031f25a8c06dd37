"""The carrier pool: every bind of every carrier, routing, and batched submission.

``submit_batch`` routes each request (forced carrier, longest prefix, routing.default,
every carrier in file order), takes the first carrier of the chain with a bound
transmitting bind, puts the whole message on that carrier's least-loaded bind, encodes it
with gatewayd.smstext (UDH parts with a reference per destination, or one submit_sm with
message_payload where the carrier wants that), writes the PDUs in runs as window and rate
allow, and awaits every response of the batch on one future.

Outcomes, in request order: ok with one normalised smsc_id per submit_sm; or a failure
whose kind is that of the worst part (permanent > retry > throttle, and throttle is
reported as retry). A multipart message with some parts accepted and others failed is
reported failed AND carries the smsc_ids of the accepted parts (in part order, gaps
closed), so the caller can still correlate their receipts; retrying it sends every part
again (the handset may then show the accepted parts twice). With message_payload a long
message is one submit_sm: ``segments`` is the billing count from smstext.segments and
``smsc_ids`` has one id. A bind lost after a submit_sm was written gives kind "retry"
although the SMSC may have accepted it: at-least-once, duplicates counted upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd import smstext
from gatewayd.carrier.api import (
    BindStatus,
    DeliveryHandler,
    FailureKind,
    RateGate,
    SubmitOutcome,
    SubmitRequest,
)
from gatewayd.carrier.ids import normalise_id
from gatewayd.carrier.routing import Router
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import status as S
from gatewayd.carrier.smpp.bind import Bind
from gatewayd.carrier.smpp.delivery import Deliveries
from gatewayd.carrier.smpp.mo import Reassembler
from gatewayd.carrier.smpp.session import Waiter
from gatewayd.config import CarrierConfig, Config

log = logging.getLogger("gatewayd.carrier")

MO_REASSEMBLY_TIMEOUT_S = 60.0
# Destinations whose last concatenation reference we remember. A forgotten one restarts
# at a random reference, which only matters for two long messages to one number within
# moments; 20,000 bounds memory (bench/soak: 200,000 let RSS grow 11 % over 1M messages).
_MAX_REF_DESTINATIONS = 20_000


@dataclass(slots=True)
class _Planned:
    index: int
    carrier: str
    first_slot: int
    parts: int
    segments: int


class _NoRoute(Exception):
    """A request that cannot be submitted as it is."""

    def __init__(self, kind: FailureKind, status_name: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.status_name = status_name
        self.reason = reason


class CarrierPool:
    def __init__(
        self, cfg: Config, handler: DeliveryHandler, *, rate_gate: RateGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._router = Router(cfg)
        self._rate_gate = rate_gate
        self._clock = clock
        self._carriers: dict[str, CarrierConfig] = {c.name: c for c in cfg.carrier}
        self._deliveries: dict[str, Deliveries] = {}
        self._binds: dict[str, list[Bind]] = {}
        for c in cfg.carrier:
            d = Deliveries(c, handler, clock, Reassembler(MO_REASSEMBLY_TIMEOUT_S))
            self._deliveries[c.name] = d
            password = cfg.carrier_password(c)
            self._binds[c.name] = [Bind(c, i, password, d) for i in range(c.binds)]
        self._all = [b for binds in self._binds.values() for b in binds]
        self._tx = {name: [b for b in binds if b.transmits] for name, binds in self._binds.items()}
        self._refs: dict[str, int] = {}
        self._accepting = False
        self._housekeeper: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        for b in self._all:
            b.start()
        self._accepting = True
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeeping(), name="carrier-pool")

    async def wait_bound(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._all_bound():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    def _all_bound(self) -> bool:
        for name, binds in self._binds.items():
            tx = self._tx[name]
            # A receiver-only carrier cannot transmit: any bound bind is what it can offer.
            if not any(b.bound for b in (tx or binds)):
                return False
        return True

    def ready(self) -> bool:
        """Submits can go somewhere: at least one carrier has a bound transmitting bind."""
        return self._accepting and any(b.can_submit for b in self._all)

    def snapshot(self) -> list[BindStatus]:
        return [b.status() for b in self._all]

    def carriers_for(self, destination: str, forced: str = "") -> list[str]:
        return self._router.carriers_for(destination, forced)

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new submits, wait (bounded) for outstanding responses, unbind, close."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while True:
            if not any(b.in_flight for b in self._all) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        tasks = [t for d in self._deliveries.values() for t in d.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
        await asyncio.gather(*(b.shutdown() for b in self._all))
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            try:
                await self._housekeeper
            except asyncio.CancelledError:
                pass
            self._housekeeper = None

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for d in self._deliveries.values():
                try:
                    await d.flush_expired()
                except Exception:  # never let housekeeping die
                    log.exception("%s: flushing incomplete MO failed", d.carrier)

    # -- submitting ------------------------------------------------------------------------------
    async def submit_batch(self, reqs: list[SubmitRequest]) -> list[SubmitOutcome]:
        loop = asyncio.get_running_loop()
        outcomes: list[SubmitOutcome | None] = [None] * len(reqs)
        planned: list[_Planned] = []
        groups: dict[Bind, list[tuple[int, bytes]]] = {}
        load: dict[Bind, int] = {}
        slot = 0
        for i, req in enumerate(reqs):
            try:
                carrier, bind = self._choose(req, load)
                bodies, segments = self._encode(self._carriers[carrier], req)
            except _NoRoute as e:
                outcomes[i] = SubmitOutcome(
                    msg_id=req.msg_id, carrier="", ok=False, status_name=e.status_name,
                    kind=e.kind, reason=e.reason,
                )
                continue
            group = groups.setdefault(bind, [])
            for body in bodies:
                group.append((slot, body))
                slot += 1
            load[bind] = load.get(bind, 0) + len(bodies)
            planned.append(_Planned(i, carrier, slot - len(bodies), len(bodies), segments))
        waiter = Waiter(loop, slot)
        if len(groups) == 1:
            ((bind, items),) = groups.items()
            await self._send_group(bind, items, waiter)
        elif groups:
            await asyncio.gather(
                *(self._send_group(b, items, waiter) for b, items in groups.items())
            )
        await waiter.future
        results = waiter.results
        if any(p.parts > 1 for p in planned):
            await self._resend_throttled_parts(planned, groups, results)
        for p in planned:
            outcomes[p.index] = self._outcome(reqs[p.index], p, results)
        return [o for o in outcomes if o is not None]

    def _choose(self, req: SubmitRequest, load: dict[Bind, int]) -> tuple[str, Bind]:
        if not self._accepting:
            raise _NoRoute("retry", "STOPPING", "the carrier pool is stopping")
        chain = self._router.carriers_for(req.destination, req.carrier)
        if not chain:
            raise _NoRoute("permanent", "UNKNOWN_CARRIER", f"no carrier named {req.carrier!r}")
        for name in chain:
            best: Bind | None = None
            best_load = 0
            for b in self._tx.get(name, ()):
                if b.can_submit:
                    n = b.in_flight + load.get(b, 0)
                    if best is None or n < best_load:
                        best, best_load = b, n
            if best is not None:
                return name, best
        raise _NoRoute("retry", "NO_BOUND_CARRIER",
                       f"no bound transmitting bind on {', '.join(chain)}")

    def _next_ref(self, destination: str, bits: int) -> int:
        refs = self._refs
        ref = refs.get(destination)
        if ref is None:
            # A random start: a restarted gateway should not reuse the last references.
            ref = random.randrange(0x10000)
            if len(refs) >= _MAX_REF_DESTINATIONS:
                for key in list(refs)[: _MAX_REF_DESTINATIONS // 4]:
                    del refs[key]
        refs[destination] = (ref + 1) & 0xFFFF
        return ref & (0xFFFF if bits == 16 else 0xFF)

    def _head(self, c: CarrierConfig, req: SubmitRequest) -> bytes:
        source = req.source or c.source_addr
        source_ton, source_npi = c.source_ton, c.source_npi
        if req.source.startswith("+") and req.source[1:].isdigit():
            source, source_ton, source_npi = req.source[1:], 1, 1
        return P.submit_sm_head(
            service_type="", source=source, source_ton=source_ton, source_npi=source_npi,
            destination=req.destination.lstrip("+"), dest_ton=c.dest_ton, dest_npi=c.dest_npi,
        )

    def _encode(self, c: CarrierConfig, req: SubmitRequest) -> tuple[list[bytes], int]:
        """submit_sm bodies for the request and its billing segment count."""
        head = self._head(c, req)
        validity = (P.c_str(P.relative_validity(req.validity_s)) if req.validity_s > 0
                    else b"\x00")
        regdel = 1 if c.registered_delivery else 0
        seg = smstext.segments(req.text, c.udh_ref_bits)
        if seg.parts > smstext.MAX_PARTS:
            raise _NoRoute("permanent", "ESME_RINVMSGLEN",
                           f"text needs {seg.parts} parts; at most {smstext.MAX_PARTS}")
        if seg.parts > 1 and c.long_messages == "payload":
            data = smstext.encode(req.text, seg.encoding)
            if len(data) > 0xFFFF:
                raise _NoRoute("permanent", "ESME_RINVMSGLEN", "text exceeds message_payload")
            body = P.submit_sm_body(
                head, esm_class=0, validity=validity, registered_delivery=regdel,
                data_coding=8 if seg.encoding == "ucs2" else 0, short_message=b"",
                tlvs=P.tlv(P.TAG_MESSAGE_PAYLOAD, self._transcode(c, data, seg.encoding)),
            )
            return [body], seg.parts
        if seg.parts == 1:
            # The common case; encode_parts would count the segments a second time.
            enc = smstext.Encoded(seg.encoding, 8 if seg.encoding == "ucs2" else 0,
                                  [smstext.encode(req.text, seg.encoding)], False)
        else:
            ref = self._next_ref(req.destination, c.udh_ref_bits)
            enc = smstext.encode_parts(req.text, ref=ref, ref_bits=c.udh_ref_bits)
        esm = 0x40 if enc.udhi else 0
        bodies = []
        for part in enc.parts:
            if enc.encoding == "gsm7" and c.data_coding_default != "gsm7":
                part = self._transcode_part(c, part, enc.udhi)
            bodies.append(P.submit_sm_body(
                head, esm_class=esm, validity=validity, registered_delivery=regdel,
                data_coding=enc.data_coding, short_message=part,
            ))
        return bodies, len(bodies)

    @staticmethod
    def _transcode(c: CarrierConfig, data: bytes, encoding: str) -> bytes:
        """GSM-7 octets -> the carrier's default alphabet when data_coding 0 means latin-1."""
        if encoding != "gsm7" or c.data_coding_default == "gsm7":
            return data
        charset = "latin-1" if c.data_coding_default == "latin1" else "ascii"
        return smstext.decode(data, "gsm7").encode(charset, "replace")

    @classmethod
    def _transcode_part(cls, c: CarrierConfig, part: bytes, udhi: bool) -> bytes:
        if not udhi:
            return cls._transcode(c, part, "gsm7")
        n = part[0] + 1
        return part[:n] + cls._transcode(c, part[n:], "gsm7")

    async def _resend_throttled_parts(
        self,
        planned: list[_Planned],
        groups: dict[Bind, list[tuple[int, bytes]]],
        results: list[tuple[int, str] | None],
    ) -> None:
        """Some parts of a long message accepted, others throttled: send only the
        throttled parts again (same bodies, so the same UDH reference), with back-off,
        for up to the carrier's response timeout, so the handset never gets the accepted
        parts twice. A message throttled as a whole is left to the dispatcher's retry."""
        where = {slot: (bind, body) for bind, items in groups.items() for slot, body in items}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._carriers[p.carrier].response_timeout_s
                                     for p in planned)
        attempt = 0
        while loop.time() < deadline:
            attempt += 1
            again: dict[Bind, list[tuple[int, bytes]]] = {}
            originals: list[int] = []
            for p in planned:
                rs = results[p.first_slot : p.first_slot + p.parts]
                if p.parts < 2 or not any(r is not None and r[0] == 0 for r in rs):
                    continue
                for k, r in enumerate(rs):
                    if r is not None and S.status_kind(r[0]) == "throttle":
                        bind, body = where[p.first_slot + k]
                        again.setdefault(bind, []).append((len(originals), body))
                        originals.append(p.first_slot + k)
            if not again:
                return
            await asyncio.sleep(min(1.0, 0.1 * attempt))  # the bind has lowered its rate too
            waiter = Waiter(loop, len(originals))
            await asyncio.gather(*(self._send_group(b, items, waiter)
                                   for b, items in again.items()))
            await waiter.future
            for local, slot in enumerate(originals):
                results[slot] = waiter.results[local]

    async def _send_group(self, bind: Bind, items: list[tuple[int, bytes]], waiter: Waiter) -> None:
        gate = self._rate_gate
        i = 0
        total = len(items)
        try:
            while i < total:
                n = await bind.reserve(total - i)
                if n == 0:
                    break
                if gate is not None:
                    try:
                        await gate.acquire(bind.carrier, n)
                    except BaseException:
                        bind.release(n)
                        raise
                bind.send(items[i : i + n], waiter)
                i += n
        except Exception:
            log.exception("%s[%d]: sending failed; %d parts not sent", bind.carrier, bind.index,
                          total - i)
        finally:
            for slot, _ in items[i:]:
                waiter.resolve(slot, S.NOT_SENT, "")

    @staticmethod
    def _outcome(
        req: SubmitRequest, p: _Planned, results: list[tuple[int, str] | None]
    ) -> SubmitOutcome:
        ids: list[str] = []
        worst: int | None = None
        for r in results[p.first_slot : p.first_slot + p.parts]:
            status, mid = r if r is not None else (S.NOT_SENT, "")
            if status == 0:
                ids.append(normalise_id(mid))
            elif worst is None or S.severity(status) > S.severity(worst):
                worst = status
        if worst is None:
            return SubmitOutcome(msg_id=req.msg_id, carrier=p.carrier, ok=True, smsc_ids=ids,
                                 segments=p.segments)
        kind = S.status_kind(worst)
        name = S.status_name(worst)
        failed = p.parts - len(ids)
        return SubmitOutcome(
            msg_id=req.msg_id, carrier=p.carrier, ok=False, smsc_ids=ids, segments=p.segments,
            status=max(worst, 0), status_name=name,
            kind="permanent" if kind == "permanent" else "retry",
            reason=f"{name} ({failed} of {p.parts} parts failed)" if p.parts > 1 else name,
        )
