"""What a CMPP carrier needs beyond the protocol-neutral carrier keys.

The neutral keys of ``[[carrier]]`` map as follows (phase B adds ``protocol = "cmpp"`` and
this table as ``[carrier.cmpp]``):

  system_id    -> Source_Addr of CONNECT: the SP's enterprise code (SP_Id, 6 digits) and,
                  unless ``msg_src`` says otherwise, Msg_src of every SUBMIT
  password     -> the shared secret of AuthenticatorSource / AuthenticatorISMG
  source_addr  -> Src_Id: the access number the carrier gave (e.g. 106900001234); a
                  message's own ``source`` extends it (see text.src_id)
  window       -> unanswered SUBMITs per connection (ISMGs usually allow 16)
  tps / binds  -> the per-connection send-rate cap
  enquire_link_s -> idle time before we send CMPP_ACTIVE_TEST
  registered_delivery -> Registered_Delivery (1: ask for status reports)
"""

from __future__ import annotations

from typing import Literal

import msgspec


class CmppSettings(msgspec.Struct, kw_only=True, frozen=True):
    version: Literal["2.0", "3.0"] = "2.0"
    service_id: str = ""  # Service_Id (业务代码), at most 10 characters; given by the carrier
    msg_src: str = ""  # Msg_src (SP_Id); empty: the carrier's system_id
    # Fee defaults for industry SMS: the SP pays (Fee_UserType 2) and the subscriber is
    # not charged (FeeType 01 "free", FeeCode 0 fen). Carriers that bill per message
    # hand out other values.
    fee_user_type: int = 2
    fee_type: str = "01"
    fee_code: str = "000000"
    fee_terminal_id: str = ""
    msg_level: int = 0
    tp_pid: int = 0
    link_id: str = ""  # 3.0 LinkID: only for on-demand services; empty for notifications
    # ValId_Time for a message's life (an OTP's expires_at): "absolute" writes the expiry
    # in the ISMG's time zone (YYMMDDhhmmss032+ at UTC+8), "relative" writes the span
    # (YYMMDDhhmmss000R); SMPP-style time formats, which the CMPP specification adopts.
    validity: Literal["absolute", "relative"] = "absolute"
    utc_offset_h: float = 8.0  # the ISMG's clock: CONNECT timestamps, ValId_Time, reports
    # Non-ASCII text as UCS-2 (Msg_Fmt 8, what handsets get anyway) or as GBK (Msg_Fmt
    # 15, for ISMGs that ask for it; text GBK cannot hold still goes as UCS-2).
    encoding: Literal["ucs2", "gbk"] = "ucs2"
    # Dest_terminal_Id without the country code for mainland numbers (+8613800138000 ->
    # 13800138000), the form China Mobile's ISMGs document; False sends 8613800138000.
    national_destinations: bool = True
    active_test_retries: int = 3  # unanswered ACTIVE_TESTs before the link counts as dead

    def __post_init__(self) -> None:
        if len(self.service_id) > 10 or not self.service_id.isascii():
            raise ValueError("service_id: at most 10 ASCII characters")
        if len(self.msg_src) > 6 or not self.msg_src.isascii():
            raise ValueError("msg_src: at most 6 ASCII characters (the SP_Id)")
        if len(self.fee_type) > 2 or len(self.fee_code) > 6:
            raise ValueError("fee_type: at most 2 characters; fee_code: at most 6")
        if len(self.link_id) > 20:
            raise ValueError("link_id: at most 20 characters")
        for name in ("fee_user_type", "msg_level", "tp_pid"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name}: 0..255")
        if not -12 <= self.utc_offset_h <= 14:
            raise ValueError("utc_offset_h: -12..14")
        if self.active_test_retries < 1:
            raise ValueError("active_test_retries: at least 1")
