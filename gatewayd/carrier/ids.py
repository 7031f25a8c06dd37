"""Carrier message ids, whatever the protocol: normalisation and the keys receipts meet on.

Ids. The SMSC may answer submit_sm_resp with "0A1B" and send the receipt for it as
"2587" (or the other way round), with or without leading zeros, in any case. A single
canonical form cannot be right for both ("10" is ten in decimal and sixteen in hex), so:

* ``normalise_id(raw)``: the *primary* form: stripped, lower-case, leading zeros removed
  ("0" stays "0"). SubmitOutcome.smsc_ids and Receipt.smsc_id hold this form.
* ``id_candidates(raw)``: every key the id may match under: the primary form, the
  integer value as decimal when the id is all decimal digits, and the integer value of
  the id read as hex (as decimal) when it is all hex digits. The correlator stores the
  submit-side id under all its candidates and looks a receipt up by each of its own:
  "0A1B" -> ["a1b", "2587"]; "2587" -> ["2587", "9607"]: they meet on "2587".
  Non-numeric ids ("msg-7f3a") have one candidate, the primary form. A false match needs
  two live ids of one carrier whose values collide across bases: counted by the
  correlator, accepted as the price of matching carriers that mix bases.
* ``receipt_candidates(raw)``: what the correlator looks a receipt up by, the submit
  side storing ONE key per part, under ``normalise_id`` (one SET instead of two or
  three). The receipt side therefore tries both directions: ``id_candidates`` plus the
  hex form (lower case, no leading zeros) of an all-decimal id. Submit "0A1B" is stored
  as "a1b"; receipt "2587" -> ["2587", "9607", "a1b"]. Submit "2587" is stored as
  "2587"; receipt "0A1B" -> ["a1b", "2587"]. Any value written in hex on one side and
  decimal on the other meets (tests/test_carrier_receipts_ids.py).
* ``receipt_keys(raw, mode)``: what a receipt is looked up by under the carrier's
  ``receipt_ids`` setting (config.ReceiptIds, Kannel's ``msg-id-type``). "auto" is
  ``receipt_candidates``: a guess across bases, which mis-matches when the SMSC hands out
  sequential all-digit hex ids ("300", "768"): a receipt whose own key is not written
  yet (early) or gone falls through to a cross-base form that is ANOTHER live message's
  key. An explicit mode says how the submit_sm_resp id and the receipt id relate, and
  gives exactly one key: "same" (the same base on both sides), "hex-to-decimal" (the
  response in hex, the receipt in decimal), "decimal-to-hex" (the other way round).
  An id that cannot be read in the declared base keeps its primary form.
"""

from __future__ import annotations

from typing import Final

from gatewayd.config import ReceiptIds

_HEX_DIGITS: Final = "0123456789abcdef"


def normalise_id(raw: str) -> str:
    s = raw.strip().strip("\x00").lower()
    if not s:
        return ""
    t = s.lstrip("0")
    return t or "0"


def id_candidates(raw: str) -> list[str]:
    primary = normalise_id(raw)
    if not primary:
        return []
    # An all-decimal primary has no leading zeros: its decimal value is itself. So only
    # the hex reading can add a form. (strip(_HEX_DIGITS) is empty: all hex digits.)
    if len(primary) <= 32 and not primary.strip(_HEX_DIGITS):
        from_hex = str(int(primary, 16))
        if from_hex != primary:
            return [primary, from_hex]
    return [primary]


def receipt_candidates(raw: str) -> list[str]:
    out = id_candidates(raw)
    if out:
        primary = out[0]
        if len(primary) <= 40 and primary.isascii() and primary.isdigit():
            as_hex = format(int(primary), "x")
            if as_hex not in out:
                out.append(as_hex)
    return out


def receipt_keys(raw: str, mode: ReceiptIds) -> list[str]:
    """The keys a receipt id is looked up by under the carrier's ``receipt_ids``."""
    if mode == "auto":
        return receipt_candidates(raw)
    primary = normalise_id(raw)
    if not primary:
        return []
    if mode == "hex-to-decimal":
        # The receipt says decimal; the submit side stored the hex form.
        if len(primary) <= 40 and primary.isascii() and primary.isdigit():
            return [format(int(primary), "x")]
    elif mode == "decimal-to-hex":
        # The receipt says hex; the submit side stored the decimal form.
        if len(primary) <= 32 and not primary.strip(_HEX_DIGITS):
            return [str(int(primary, 16))]
    return [primary]
