"""Message ids and delivery-receipt text, as real SMSCs shape them."""

from __future__ import annotations

import random
import re
import time
import uuid
from typing import Final, Literal

IdFormat = Literal["hex", "decimal", "uuid"]
ReceiptIdFormat = Literal["same", "decimal", "hex"]

# stat -> (message_state TLV value, dlvrd, err) as SMSCs commonly report them.
STATS: Final = {
    "DELIVRD": (2, "001", "000"),
    "EXPIRED": (3, "000", "003"),
    "DELETED": (4, "000", "004"),
    "UNDELIV": (5, "000", "001"),
    "ACCEPTD": (6, "000", "000"),
    "UNKNOWN": (7, "000", "007"),
    "REJECTD": (8, "000", "008"),
    "ENROUTE": (1, "000", "000"),
}

# Characters that encode identically in ASCII and unpacked GSM-7: the receipt's "text:"
# field is limited to them so a parser reading the receipt as either gets the same text.
_NOT_SAME_IN_GSM_AND_ASCII: Final = re.compile(r"[^ !\"#%&'()*+,\-./0-9:;<=>?A-Za-z]")


class IdGenerator:
    """Unique message ids in the configured format.

    hex/decimal ids count up from a random base so that two simulators (or two runs)
    rarely hand out the same id; hex ids are 10+ lowercase digits, decimal 12+ digits.
    ``first`` > 0 counts up from that value instead, hex unpadded, as small SMSCs do
    (node-smpp servers: "2a1", "2a2", ... "300"): sequential hex ids that are often all
    decimal digits, which a guess across bases cannot tell from decimal ones.
    """

    def __init__(self, fmt: IdFormat, rng: random.Random, first: int = 0) -> None:
        self.fmt = fmt
        self._rng = rng
        self._pad = 0 if first else 10
        self._next = first or rng.randrange(1 << 32, 1 << 38)

    def __call__(self) -> str:
        n = self._next
        self._next = n + 1
        if self.fmt == "hex":
            return f"{n:0{self._pad}x}"
        if self.fmt == "decimal":
            return str(n)
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def receipt_id(message_id: str, id_format: IdFormat, receipt_format: ReceiptIdFormat) -> str:
    """The id as the receipt carries it: the same string, or re-encoded in decimal / hex."""
    if receipt_format == "same":
        return message_id
    if id_format == "uuid":
        value = int(message_id.replace("-", ""), 16)
    elif id_format == "hex":
        value = int(message_id, 16)
    else:
        value = int(message_id)
    return str(value) if receipt_format == "decimal" else f"{value:x}"


class DateCache:
    """YYMMDDhhmm[ss] stamps (UTC), formatted once a second rather than once a receipt."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def stamp(self, t: float, with_seconds: bool) -> str:
        sec = int(t)
        full = self._cache.get(sec)
        if full is None:
            if len(self._cache) > 256:
                self._cache.clear()
            full = self._cache[sec] = time.strftime("%y%m%d%H%M%S", time.gmtime(sec))
        return full if with_seconds else full[:10]


def receipt_text(
    rid: str, stat: str, submit_date: str, done_date: str, text: str
) -> bytes:
    """The standard receipt body (Appendix B of SMPP 3.4), ASCII."""
    _state, dlvrd, err = STATS.get(stat, STATS["UNKNOWN"])
    short = _NOT_SAME_IN_GSM_AND_ASCII.sub("?", text[:20])
    return (
        f"id:{rid} sub:001 dlvrd:{dlvrd} submit date:{submit_date} done date:{done_date} "
        f"stat:{stat} err:{err} text:{short}"
    ).encode("ascii")


def message_state(stat: str) -> int:
    return STATS.get(stat, STATS["UNKNOWN"])[0]
