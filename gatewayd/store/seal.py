"""Sealed internal fields: what only gatewayd may write into a queue entry.

A message's internal fields (its attempts and bind losses, when it was first queued,
a partial resend's state, the campaign, variant and link count the fan-out and
template rendering set) travel in ONE field, ``_gw``: their JSON behind a MAC
(keyed BLAKE2b, 128 bits) over that JSON and every other field of the entry. The key
is a random per-deployment secret kept in Redis (``Keys.seal``, made on first use with
SET NX). So a producer that may only XADD (the README's producer ACL) cannot forge
attempts or an old enqueue time, skip the policies with a made-up resume record, or
move a sealed entry's internal fields onto another message or another text.

Whoever can read the secret is trusted like gatewayd itself (the daemon, the CLI and
``gatewayd.client``, which queue validated messages).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from gatewayd.store.keys import Keys

FIELD: Final = "_gw"
_MAC_HEX: Final = 32  # 16 bytes
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dict[str, Any])


class SealError(ValueError):
    """A ``_gw`` field that gatewayd did not write (or wrote for other fields)."""


class Seal:
    __slots__ = ("_cache", "_mac0")

    def __init__(self, secret: str) -> None:
        # The keyed state made once; each MAC starts from a copy of it.
        self._mac0 = hashlib.blake2b(key=hashlib.sha256(secret.encode()).digest(),
                                     digest_size=_MAC_HEX // 2)
        # seal_flat's last internal fields' JSON and the keyed state over the MAC
        # input's head (one tuple, swapped whole: a Seal may be shared by threads)
        self._cache: tuple[str, Any] | None = None

    def _mac(self, payload: str, others: Mapping[str, str]) -> str:
        h = self._mac0.copy()
        h.update(_enc.encode([payload, sorted(others.items())]))
        return h.hexdigest()

    def seal(self, fields: Mapping[str, str], internal: Mapping[str, Any]) -> str:
        """The ``_gw`` value for an entry of ``fields`` carrying ``internal``."""
        payload = _enc.encode(internal).decode()
        if FIELD in fields or type(fields) is not dict:  # (to_fields: a dict without)
            others = dict(fields)
            others.pop(FIELD, None)
            fields = others
        return self._mac(payload, fields) + payload

    def seal_flat(self, flat: Sequence[str], internal: Mapping[str, Any]) -> str:
        """``seal`` for an entry given as [field, value, ...] without ``_gw`` (names
        unique): the same MAC over the same bytes. The MAC input's head (the internal
        fields' JSON) is hashed once for a run of entries with equal internal fields:
        a batch's messages share theirs (``enqueued_at``, ``intake``)."""
        # Keyed by the JSON itself: equal values may print apart (0.0 and -0.0, 1 and 1.0).
        payload = _enc.encode(internal).decode()
        cache = self._cache
        if cache is None or cache[0] != payload:
            h0 = self._mac0.copy()
            h0.update(_enc.encode([payload, []])[:-3])  # '["<payload>",' (less '[]]')
            cache = self._cache = (payload, h0)
        h = cache[1].copy()
        it = iter(flat)
        h.update(_enc.encode(sorted(zip(it, it))))  # noqa: B905 - one iterator: pairs
        h.update(b"]")
        return h.hexdigest() + payload

    @staticmethod
    def payload(internal: Mapping[str, Any]) -> str:
        """The JSON a ``_gw`` value carries after its MAC."""
        return _enc.encode(internal).decode()

    def seal_sorted(self, payload: str, pairs: list[tuple[str, str]]) -> str:
        """``seal_flat`` for an entry given as its (name, value) pairs already sorted by
        name (gatewayd.pipeline.packing lays them out so), with its ``payload``: no
        sort and no payload JSON a message. Shares seal_flat's cached head."""
        cache = self._cache
        if cache is None or cache[0] != payload:
            h0 = self._mac0.copy()
            h0.update(_enc.encode([payload, []])[:-3])  # '["<payload>",' (less '[]]')
            cache = self._cache = (payload, h0)
        h = cache[1].copy()
        h.update(_enc.encode(pairs))
        h.update(b"]")
        return h.hexdigest() + payload

    def prepared(self, internal: Mapping[str, Any], fixed: Mapping[str, str],
                 varying: Sequence[str]) -> Prepared:
        """A sealer for many entries that carry the same ``internal`` fields and the same
        ``fixed`` fields, and differ in the ``varying`` ones (the fan-out's slice): the
        payload's JSON and the MAC over the leading fixed fields are made once."""
        return Prepared(self._mac0, _enc.encode(internal).decode(), fixed, varying)

    def open(self, fields: Mapping[str, str]) -> dict[str, Any]:
        """The internal fields sealed in ``fields[_gw]``; SealError unless its MAC holds
        for these fields."""
        return self.open_fields(fields)[0]

    def open_fields(self, fields: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``open``, and the entry's other fields (a new dict, without ``_gw``): the
        dispatcher's parse of every sealed entry needs both (one copy, not two)."""
        others = dict(fields)
        value = others.pop(FIELD)
        return self._open(value, others), others

    def _open(self, value: str, others: dict[str, str]) -> dict[str, Any]:
        mac, payload = value[:_MAC_HEX], value[_MAC_HEX:]
        if not secrets.compare_digest(mac, self._mac(payload, others)):
            raise SealError("not sealed by this deployment's gatewayd, or altered")
        try:
            return _dec.decode(payload)
        except msgspec.DecodeError:  # pragma: no cover - a MAC that holds over junk
            raise SealError("unreadable") from None


class Prepared:
    """``Seal.seal`` for entries that share fields (see ``Seal.prepared``): the MAC input
    is the same bytes ``Seal._mac`` hashes (``[payload, sorted fields]`` in msgspec's
    JSON), its constant head hashed once and the keyed state copied per entry."""

    __slots__ = ("_fmt", "_h0", "_order", "_payload", "_sep", "_tail")

    def __init__(self, mac0: hashlib.blake2b, payload: str, fixed: Mapping[str, str],
                 varying: Sequence[str]) -> None:
        if set(fixed) & set(varying) or FIELD in fixed or FIELD in varying:
            raise ValueError("a field is fixed or varying, never both, never _gw")
        index = {k: i for i, k in enumerate(varying)}
        names = sorted([*fixed, *varying])
        head = 0  # the fixed fields before the first varying one go into the head
        while head < len(names) and names[head] in fixed:
            head += 1
        h = mac0.copy()
        # '["payload",[["k","v"],...' (a comma, the rest and the closing "]]" per entry)
        pairs = [(k, fixed[k]) for k in names[:head]]
        start = _enc.encode([payload, pairs])[:-2]
        h.update(start)
        self._h0 = h
        self._sep = b"," if pairs else b""
        self._payload = payload
        # Per entry: (name, fixed value or None, index into the values or -1).
        self._tail = [(k, fixed.get(k), index.get(k, -1)) for k in names[head:]]
        # An entry with every varying field (the fan-out's usual one): the rest of the
        # MAC input is this format with each value's JSON put in (a string's JSON is
        # the same alone or in a list), made in one C call instead of a loop of pairs.
        pieces, order = [], []
        for k, v, i in self._tail:
            if i < 0:
                pieces.append(_enc.encode([k, v]).replace(b"%", b"%%"))
            else:
                pieces.append(b"[" + _enc.encode(k).replace(b"%", b"%%") + b",%s]")
                order.append(i)
        self._fmt = self._sep + b",".join(pieces) + b"]]" if pieces else b"]]"
        self._order = tuple(order)

    @property
    def payload(self) -> str:
        """The internal fields' JSON: a ``_gw`` value is ``mac(values) + payload``."""
        return self._payload

    def seal(self, values: Sequence[str | None]) -> str:
        """The ``_gw`` value for the entry whose varying fields are ``values`` (in the
        ``varying`` order; None: the entry has no such field)."""
        return self.mac(values) + self._payload

    def mac(self, values: Sequence[str | None]) -> str:
        """The MAC part of ``seal(values)`` (hex), for a writer that has the payload."""
        h = self._h0.copy()
        if None not in values:
            h.update(self._fmt % tuple([_enc.encode(values[i]) for i in self._order]))
            return h.hexdigest()
        pairs = []
        for k, v, i in self._tail:
            if i >= 0:
                v = values[i]
            if v is not None:
                pairs.append((k, v))
        h.update(self._sep + _enc.encode(pairs)[1:] + b"]" if pairs else b"]]")
        return h.hexdigest()


async def load_seal(redis: Any, keys: Keys) -> Seal:
    """The deployment's seal: its secret from Redis, made there on first use."""
    secret = None
    while secret is None:  # (deleted between the two calls: make it again)
        await redis.set(keys.seal, secrets.token_hex(32), nx=True)
        secret = await redis.get(keys.seal)
    if isinstance(secret, bytes):
        secret = secret.decode()
    return Seal(str(secret))
