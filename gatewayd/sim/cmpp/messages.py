"""What the simulated ISMG received: SUBMITs, and long messages put back together.

Parts are joined the way a handset joins them: by the UDH's reference and sequence
(never by arrival order or Pk_number alone), per destination, decoded by Msg_Fmt.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd import smstext


@dataclass(slots=True)
class Submission:
    sp_id: str
    sequence: int
    msg_id: int  # 0 when refused
    result: int
    destination: str
    src_id: str
    service_id: str
    msg_fmt: int
    pk_total: int
    pk_number: int
    udhi: bool
    content: bytes
    valid_time: str
    registered_delivery: int
    received_at: float
    v3: bool


@dataclass(slots=True)
class Message:
    destination: str
    src_id: str
    text: str
    msg_ids: list[int]  # in part order


def decode(data: bytes, msg_fmt: int) -> str:
    if msg_fmt == 8:
        return data.decode("utf-16-be", "replace")
    if msg_fmt == 15:
        return data.decode("gb18030", "replace")
    return data.decode("latin-1")


def reassemble(subs: list[Submission]) -> list[Message]:
    """Complete messages among the accepted submissions, in the order they completed."""
    out: list[Message] = []
    groups: dict[tuple[str, int, int], dict[int, Submission]] = {}
    for s in subs:
        if s.result != 0:
            continue
        parsed = smstext.parse_udh(s.content) if s.udhi else None
        if parsed is None:
            data = s.content[s.content[0] + 1 :] if s.udhi and s.content else s.content
            out.append(Message(s.destination, s.src_id, decode(data, s.msg_fmt), [s.msg_id]))
            continue
        ref, total, seq, _ = parsed
        group = groups.setdefault((s.destination, ref, total), {})
        group[seq] = s
        if len(group) == total:
            del groups[(s.destination, ref, total)]
            parts = [group[i] for i in range(1, total + 1) if i in group]
            if len(parts) != total:
                continue
            data = b"".join((smstext.parse_udh(p.content) or (0, 0, 0, b""))[3] for p in parts)
            out.append(Message(s.destination, s.src_id, decode(data, parts[0].msg_fmt),
                               [p.msg_id for p in parts]))
    return out
