"""The carrier pool: every bind of every carrier, routing, and batched submission.

``submit`` routes each request (forced carrier, longest prefix, routing.default, every
carrier in file order), takes the first carrier of the chain with a bound transmitting
bind, puts the whole message on that carrier's least-loaded bind, encodes it with
gatewayd.smstext (UDH parts with a reference per destination, or one submit_sm with
message_payload where the carrier wants that; the validity period from the request's
``expires_at`` in the carrier's format), writes the PDUs in runs as window and rate
allow (the bind's own bucket, then the account's learned rate: carrier/throttle.py), and
collects the answers (carrier/batch.py says what they make of each message).

Stragglers. ``submit(..., detach=True)`` does not wait for the slowest answer of the
batch: once every PDU is written it waits a grace of a few typical answer times (the
binds' latency average, at least 10 ms), returns the outcomes known by then, and hands
the rest over as a task that finishes them (answers, a response timeout, resends of
refused parts). One unanswered submit then costs its own message the response timeout,
not its batch (the dispatcher records the others and reads on). ``submit_batch`` waits
for everything (tests, benchmarks, tools).

Outcomes, in request order: ok with one normalised smsc_id per PDU; or a failure whose
kind is that of the worst part (carrier/batch.py). A multipart message whose accepted
parts are joined by parts refused for a reason that may pass gets those parts sent
again, the same bytes, for up to the carrier's response timeout; still failing, its
outcome carries the accepted parts' ids (``partial``) and its reference, and the
retry resends only the rest. With message_payload a long message is one submit_sm:
``segments`` is the billing count from smstext.segments and ``smsc_ids`` has one id (one
receipt expected). A bind lost after a submit_sm was written gives BIND_LOST although
the SMSC may have accepted it: at-least-once, duplicates counted upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from gatewayd import smstext
from gatewayd.carrier import batch as B
from gatewayd.carrier.api import (
    BindStatus,
    DeliveryHandler,
    FailureKind,
    RateGate,
    SubmitOutcome,
    SubmitRequest,
    Submitted,
)
from gatewayd.carrier.batch import Planned, Waiter
from gatewayd.carrier.routing import Router
from gatewayd.carrier.smpp import pdu as P
from gatewayd.carrier.smpp import status as S
from gatewayd.carrier.smpp.bind import Bind
from gatewayd.carrier.smpp.delivery import Deliveries
from gatewayd.carrier.smpp.mo import Reassembler
from gatewayd.carrier.throttle import LocalRateGate, ThrottleMeter
from gatewayd.config import CarrierConfig, Config, account_names
from gatewayd.ops import metrics as M

log = logging.getLogger("gatewayd.carrier")

MO_REASSEMBLY_TIMEOUT_S = 60.0
# Destinations whose last concatenation reference we remember. A forgotten one restarts
# at a random reference, which only matters for two long messages to one number within
# moments; 20,000 bounds memory (bench/soak: 200,000 let RSS grow 11 % over 1M messages).
_MAX_REF_DESTINATIONS = 20_000
# Resend rounds for the refused parts of a partly accepted message, within the carrier's
# response timeout; what still fails goes back to the dispatcher with its accepted parts.
_MAX_RESEND_ROUNDS = 4
# A batch waits this many typical answer times after its last write before leaving the
# unanswered to a task; never less than the floor (loop jitter), never over half the
# response timeout.
_GRACE_LATENCIES = 4.0
_GRACE_FLOOR_S = 0.01


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
        self._gate: RateGate = rate_gate if rate_gate is not None else LocalRateGate(cfg)
        self._clock = clock
        self._carriers: dict[str, CarrierConfig] = {c.name: c for c in cfg.carrier}
        self._accounts = account_names(cfg)
        self._deliveries: dict[str, Deliveries] = {}
        self._binds: dict[str, list[Bind]] = {}
        # One throttle meter per SMSC account: every bind of every entry on it feeds it.
        self._meters: dict[str, ThrottleMeter] = {}
        for c in cfg.carrier:
            d = Deliveries(c, handler, clock, Reassembler(MO_REASSEMBLY_TIMEOUT_S))
            self._deliveries[c.name] = d
            password = cfg.carrier_password(c)
            binds = [Bind(c, i, password, d) for i in range(c.binds)]
            binds += [Bind(c, c.binds + i, password, d, mode="receiver")
                      for i in range(c.receiver_binds)]
            account = self._accounts[c.name]
            meter = self._meters.get(account)
            if meter is None:
                meter = self._meters[account] = ThrottleMeter(self._reporter(c.name))
            for b in binds:
                b.meter = meter
            self._binds[c.name] = binds
        self._all = [b for binds in self._binds.values() for b in binds]
        self._tx = {name: [b for b in binds if b.transmits] for name, binds in self._binds.items()}
        self._learned = {name: M.CARRIER_RATE.labels(name) for name in self._binds}
        self._m_stragglers = M.STRAGGLERS
        self._m_resends = {name: M.PART_RESENDS.labels(name) for name in self._binds}
        self._refs: dict[str, int] = {}
        self._accepting = False
        self._housekeeper: asyncio.Task[None] | None = None
        self._later: set[asyncio.Task[None]] = set()

    def _reporter(self, carrier: str) -> Callable[[int, int], Awaitable[None]]:
        gate = self._gate

        async def report(accepted: int, throttled: int) -> None:
            await gate.throttled(carrier, accepted, throttled)
        return report

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
        for m in self._meters.values():
            m.close()
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
            self._show_rates()
            for d in self._deliveries.values():
                try:
                    await d.flush_expired()
                except Exception:  # never let housekeeping die
                    log.exception("%s: flushing incomplete MO failed", d.carrier)

    def _show_rates(self) -> None:
        """The learned account rates on the gauges (and each bind's share of it)."""
        for name in self._binds:
            try:
                rate = self._gate.rate(name)
            except Exception:  # a gate that cannot tell: leave the gauges be
                continue
            self._learned[name].set(rate)
            tx = self._tx[name]
            for b in tx:
                b.show_limit(rate / len(tx))

    # -- submitting ------------------------------------------------------------------------------
    async def submit_batch(self, reqs: list[SubmitRequest]) -> list[SubmitOutcome]:
        """Submit and wait for every outcome (stragglers and resends included)."""
        sub = await self.submit(reqs)
        return [o for o in sub.outcomes if o is not None]

    async def submit(self, reqs: list[SubmitRequest], *, detach: bool = False) -> Submitted:
        """Submit a batch. With ``detach``, outcomes not known a grace after the last
        write (no answer yet, or refused parts to resend) come later from ``later``."""
        loop = asyncio.get_running_loop()
        outcomes: list[SubmitOutcome | None] = [None] * len(reqs)
        planned: list[Planned] = []
        groups: dict[Bind, list[tuple[int, bytes]]] = {}
        load: dict[Bind, int] = {}
        slot = 0
        now = self._clock()
        for i, req in enumerate(reqs):
            try:
                carrier, bind = self._choose(req, load)
                bodies, segments, ref = self._encode(self._carriers[carrier], req, now)
            except _NoRoute as e:
                outcomes[i] = SubmitOutcome(
                    msg_id=req.msg_id, carrier="", ok=False, status_name=e.status_name,
                    kind=e.kind, reason=e.reason,
                )
                continue
            group = groups.get(bind)
            if group is None:
                group = groups[bind] = []
            done = req.done_parts
            if done is None and len(bodies) == 1:  # the common case, written out
                group.append((slot, bodies[0]))
                slots = [slot]
                slot += 1
            else:
                slots = []
                for k, body in enumerate(bodies):
                    if done is not None and k in done:
                        slots.append(-1)
                        continue
                    group.append((slot, body))
                    slots.append(slot)
                    slot += 1
            load[bind] = load.get(bind, 0) + len(bodies)
            planned.append(Planned(i, carrier, bind, slots, bodies, segments, ref))
        waiter = Waiter(loop, slot)
        if len(groups) == 1:
            ((bind, items),) = groups.items()
            await self._send_group(bind, items, waiter)
        elif groups:
            await asyncio.gather(
                *(self._send_group(b, items, waiter) for b, items in groups.items())
            )
        if not detach:
            await waiter.future
        elif not waiter.future.done():
            await asyncio.wait((waiter.future,), timeout=self._grace(groups))
        results = waiter.results
        later: list[Planned] = []
        for p in planned:
            if not B.resolved(p, results) or B.needs_resend(p, results):
                later.append(p)
            else:
                outcomes[p.index] = B.outcome(reqs[p.index], p, results)
        if not later:
            return Submitted(outcomes)
        if not detach:
            collected: list[tuple[int, SubmitOutcome]] = []
            await self._finish(later, waiter, reqs, collected.extend)
            for index, out in collected:
                outcomes[index] = out
            return Submitted(outcomes)
        self._m_stragglers.inc(len(later))
        queue: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None] = asyncio.Queue()
        task = asyncio.create_task(self._finish_into(later, waiter, reqs, queue),
                                   name="carrier-stragglers")
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return Submitted(outcomes, queue)

    def _grace(self, groups: dict[Bind, list[tuple[int, bytes]]]) -> float:
        latency = max((b.latency for b in groups), default=0.0)
        timeout = min(b.cfg.response_timeout_s for b in groups) if groups else 1.0
        return min(timeout / 2, max(_GRACE_FLOOR_S, _GRACE_LATENCIES * latency))

    async def _finish_into(self, later: list[Planned], waiter: Waiter,
                           reqs: list[SubmitRequest],
                           queue: asyncio.Queue[list[tuple[int, SubmitOutcome]] | None]
                           ) -> None:
        try:
            await self._finish(later, waiter, reqs, queue.put_nowait)
        finally:
            queue.put_nowait(None)  # the end, even when cancelled or failed

    async def _finish(self, later: list[Planned], waiter: Waiter, reqs: list[SubmitRequest],
                      emit: Callable[[list[tuple[int, SubmitOutcome]]], None]) -> None:
        """Each message's outcome as soon as its own parts are answered (a straggler
        holds up nobody else); partly accepted ones get their refused parts resent first."""
        results = waiter.results
        pending = later
        resending: set[asyncio.Task[None]] = set()
        while pending:
            waiter.changed.clear()
            ready: list[Planned] = []
            still: list[Planned] = []
            for p in pending:
                (ready if B.resolved(p, results) else still).append(p)
            pending = still
            done = [p for p in ready if not B.needs_resend(p, results)]
            if done:
                emit([(p.index, B.outcome(reqs[p.index], p, results)) for p in done])
            again = [p for p in ready if B.needs_resend(p, results)]
            if again:
                resending.add(asyncio.create_task(self._resend_rounds(again, results, reqs,
                                                                      emit)))
            if pending:
                await waiter.changed.wait()
        if resending:
            await asyncio.gather(*resending)

    async def _resend_rounds(self, again: list[Planned], results: list[tuple[int, str] | None],
                             reqs: list[SubmitRequest],
                             emit: Callable[[list[tuple[int, SubmitOutcome]]], None]) -> None:
        """Resend the refused parts (same bytes), with back-off, for up to the carrier's
        response timeout; then the messages' outcomes, whatever they are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._carriers[p.carrier].response_timeout_s
                                     for p in again)
        rounds = 0
        try:
            while rounds < _MAX_RESEND_ROUNDS and loop.time() < deadline:
                todo = [p for p in again if B.needs_resend(p, results)]
                if not todo:
                    break
                rounds += 1
                await asyncio.sleep(min(1.0, 0.1 * rounds))
                await self._resend(todo, results)
        finally:
            emit([(p.index, B.outcome(reqs[p.index], p, results)) for p in again])

    async def _resend(self, again: list[Planned], results: list[tuple[int, str] | None]
                      ) -> None:
        """Send the refused parts again on the message's bind, or another bind of its
        carrier when that one is down; their new answers replace the old in ``results``."""
        loop = asyncio.get_running_loop()
        groups: dict[Bind, list[tuple[int, bytes]]] = {}
        originals: list[int] = []
        load: dict[Bind, int] = {}
        for p in again:
            bind = p.bind
            assert isinstance(bind, Bind)
            if not bind.can_submit:
                alt = self._least_loaded(p.carrier, load)
                bind = alt if alt is not None else bind
            parts = B.failed_slots(p, results)
            group = groups.setdefault(bind, [])
            for k in parts:
                group.append((len(originals), p.bodies[k]))
                originals.append(p.slots[k])
            load[bind] = load.get(bind, 0) + len(parts)
            self._m_resends[p.carrier].inc(len(parts))
        waiter = Waiter(loop, len(originals))
        await asyncio.gather(*(self._send_group(b, items, waiter) for b, items in groups.items()))
        await waiter.future
        for local, slot in enumerate(originals):
            results[slot] = waiter.results[local]

    def _least_loaded(self, name: str, load: dict[Bind, int]) -> Bind | None:
        best: Bind | None = None
        best_load = 0
        for b in self._tx.get(name, ()):
            if b.can_submit:
                n = b.in_flight + load.get(b, 0)
                if best is None or n < best_load:
                    best, best_load = b, n
        return best

    def _choose(self, req: SubmitRequest, load: dict[Bind, int]) -> tuple[str, Bind]:
        if not self._accepting:
            raise _NoRoute("retry", "STOPPING", "the carrier pool is stopping")
        chain = self._router.carriers_for(req.destination, req.carrier)
        if not chain:
            raise _NoRoute("permanent", "UNKNOWN_CARRIER", f"no carrier named {req.carrier!r}")
        for name in chain:
            best = self._least_loaded(name, load)
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

    @staticmethod
    def _validity(c: CarrierConfig, expires_at: float, now: float) -> bytes:
        """validity_period as the carrier wants it (b"\0": none, the SMSC's default)."""
        if not expires_at or c.validity == "none":
            return b"\x00"
        if c.validity == "absolute":
            return P.c_str(P.absolute_validity(expires_at))
        # Whole seconds, rounded up: a code valid 299.4 s more must not be cut to 299.
        return P.c_str(P.relative_validity(max(1.0, expires_at - now + 0.999)))

    def _encode(self, c: CarrierConfig, req: SubmitRequest, now: float
                ) -> tuple[list[bytes], int, int]:
        """submit_sm bodies for the request, its billing segment count and reference."""
        head = self._head(c, req)
        validity = self._validity(c, req.expires_at, now)
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
            return [body], seg.parts, -1
        ref = -1
        if seg.parts == 1:
            # The common case; encode_parts would count the segments a second time.
            enc = smstext.Encoded(seg.encoding, 8 if seg.encoding == "ucs2" else 0,
                                  [smstext.encode(req.text, seg.encoding)], False)
        else:
            ref = req.ref if req.ref >= 0 else self._next_ref(req.destination, c.udh_ref_bits)
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
        return bodies, len(bodies), ref

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

    async def _send_group(self, bind: Bind, items: list[tuple[int, bytes]], waiter: Waiter) -> None:
        gate = self._gate
        i = 0
        total = len(items)
        try:
            while i < total:
                n = await bind.reserve(total - i)
                if n == 0:
                    break
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

