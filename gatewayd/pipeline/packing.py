"""lua/enqueue_many.lua's flat arguments for a batch, made by message shape.

``QueueStore.script_args`` lays each message out as ``(status key, id, idempotency key,
stream, nv, len(record), len(entry), *record, *entry)``: the record is
``Ledger.queued_row``, the entry ``to_flat`` with its seal. Built generically, that
was ~68k instructions a message (callgrind; issue 17 item 3): a loop over the set
fields, a sort of the entry's pairs for the MAC and a function call a step. Messages
of one batch mostly set the same fields (to, text, category, a tenant, a ref...): the
field names, their wire order and their name order are worked out once per *shape*
(which struct fields are set) and each message only has its values put in. A shape this
module does not cover (a float or int field set, a campaign's fields) takes the generic
builders, which stay the reference: tests/test_packing.py compares the two.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import compress
from typing import Any, Final

from msgspec.structs import astuple

from gatewayd.model import OutboundMessage, mask_number
from gatewayd.pipeline.events import Ledger
from gatewayd.pipeline.intake import INTERNAL, to_flat
from gatewayd.store.keys import Keys
from gatewayd.store.seal import FIELD as SEAL_FIELD
from gatewayd.store.seal import Seal

_NAMES: Final = OutboundMessage.__struct_fields__
_IDX: Final = tuple(range(len(_NAMES)))
_AT: Final = {name: i for i, name in enumerate(_NAMES)}
_WIRE: Final = {name: "from" if name == "sender" else name for name in _NAMES}
# Client fields a shape may set (all of type str): the record names three of them.
_STR_FIELDS: Final = frozenset({"id", "to", "text", "category", "sender", "tenant", "ref",
                                "callback_url", "idempotency_key", "carrier"})
# Internal fields a shape may set: sealed as JSON, whatever their type.
_SEALED: Final = frozenset({"enqueued_at", "intake"})
_RECORD: Final = (("ref", "ref"), ("tenant", "tenant"), ("callback_url", "callback"))
_SHAPES_MAX: Final = 256
_UNSEEN: Any = object()


def _getter(indexes: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """itemgetter that returns a tuple whatever the count (itemgetter(i) returns the
    item itself)."""
    if len(indexes) == 1:
        i = indexes[0]
        return lambda v: (v[i],)
    if not indexes:
        return lambda v: ()
    return operator.itemgetter(*indexes)


class Shape:
    """What one set of set fields lays out as (see the module docstring)."""

    __slots__ = ("entry", "internal", "internal_names", "nrecord", "record", "record_vals",
                 "sorted_names", "sorted_vals", "wire_vals")

    def __init__(self, present: tuple[int, ...]) -> None:
        names = [_NAMES[i] for i in present]
        client = [n for n in names if n not in INTERNAL]
        internal = [n for n in names if n in INTERNAL]
        # entry: [wire name, value, ...] in struct order, then "_gw" and its seal
        self.entry: list[Any] = [x for n in client for x in (_WIRE[n], None)]
        self.wire_vals = _getter([_AT[n] for n in client])
        # the MAC's pairs: by wire name (Seal._mac sorts them)
        by_wire = sorted(client, key=lambda n: _WIRE[n])
        self.sorted_names = tuple(_WIRE[n] for n in by_wire)
        self.sorted_vals = _getter([_AT[n] for n in by_wire])
        self.internal_names = tuple(internal)
        self.internal = _getter([_AT[n] for n in internal])
        # record: as Ledger.queued_row lays it out for a message without campaign or
        # template (category and masked number, then ref, tenant, callback when set)
        opt = [(n, w) for n, w in _RECORD if n in names]
        self.record: list[Any] = ["state", "queued", "category", None, "to", None,
                                  *(x for _, w in opt for x in (w, None))]
        self.nrecord = len(self.record)
        self.record += ("updated_at", None, "attempts", "0", "enqueued_at", None)
        self.record_vals = _getter([_AT[n] for n, _ in opt])


def covers(present: tuple[int, ...]) -> bool:
    """Whether a shape is laid out here: str client fields, the intake's internal ones."""
    names = {_NAMES[i] for i in present}
    return ({"to", "text", "category"} <= names
            and names <= _STR_FIELDS | _SEALED)


class Packer:
    """``QueueStore.script_args``'s per-message part, by shape (one per QueueStore)."""

    def __init__(self, keys: Keys, ledger: Ledger, streams: dict[str, str]) -> None:
        self.keys = keys
        self.ledger = ledger
        self.streams = streams
        self._shapes: dict[tuple[int, ...], Shape | None] = {}

    def _shape(self, present: tuple[int, ...]) -> Shape | None:
        if len(self._shapes) >= _SHAPES_MAX:
            self._shapes.clear()
        sh = self._shapes[present] = Shape(present) if covers(present) else None
        return sh

    def rows(self, msgs: list[OutboundMessage], seal: Seal, source: str,
             now: float) -> list[Any]:
        """The flat list lua/enqueue_many.lua takes for ``msgs`` (each one's ``intake``
        set to ``source``, as the entry seals who queued it)."""
        keys, streams, shapes, led = self.keys, self.streams, self._shapes, self.ledger
        status_key, idem_key = keys.status, keys.idempotency
        seal_sorted = seal.seal_sorted
        at = repr(now)  # Ledger.queued_row's "updated_at" (its text of ``now``)
        enq_i, cat_i, to_i, id_i, ik_i = (_AT["enqueued_at"], _AT["category"], _AT["to"],
                                          _AT["id"], _AT["idempotency_key"])
        last_enq: Any = None
        enq_text = at
        last_internal: tuple[Any, ...] = ()
        last_names: tuple[str, ...] = ()
        payload = ""
        flat: list[Any] = []
        for m in msgs:
            m.intake = source  # sealed: who queued it (gatewayd_messages_enqueued_total)
            v = astuple(m)
            present = tuple(compress(_IDX, v))
            sh: Shape | None = shapes.get(present, _UNSEEN)
            if sh is _UNSEEN:
                sh = self._shape(present)
            cat, msg_id, ikey = v[cat_i], v[id_i], v[ik_i]
            if sh is None:  # the generic builders
                record, nv = led.queued_row(m, now)
                entry = to_flat(m, seal)
            else:
                record = sh.record.copy()
                to = v[to_i]
                record[3] = cat
                record[5] = to[:-8] + "****" + to[-4:] if len(to) > 8 else mask_number(to)
                nv = sh.nrecord
                if nv > 6:
                    record[7:nv:2] = sh.record_vals(v)
                record[nv + 1] = at
                enq = v[enq_i]
                if enq is not last_enq:  # a batch's messages share one enqueued_at
                    last_enq = enq
                    enq_text = ((repr(enq) if isinstance(enq, float) else str(enq))
                                if enq else at)
                record[-1] = enq_text
                entry = sh.entry.copy()
                entry[1::2] = sh.wire_vals(v)
                internal = sh.internal(v)
                if internal:
                    # The same objects as the last message's (a batch's enqueued_at
                    # and source): the same JSON, made once.
                    if (sh.internal_names is not last_names
                            or not all(map(operator.is_, internal, last_internal))):
                        last_internal, last_names = internal, sh.internal_names
                        payload = seal.payload(dict(zip(sh.internal_names, internal,
                                                        strict=True)))
                    entry += (SEAL_FIELD, seal_sorted(
                        payload, list(zip(sh.sorted_names, sh.sorted_vals(v), strict=True))))
            flat += (status_key(msg_id), msg_id,
                     idem_key(cat, ikey) if ikey else "", streams[cat], nv, len(record),
                     len(entry))
            flat += record
            flat += entry
        return flat
