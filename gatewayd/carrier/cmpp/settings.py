"""What a CMPP carrier needs beyond the protocol-neutral carrier keys.

``[[carrier]] protocol = "cmpp"`` with its own keys in ``[carrier.cmpp]`` (config.CmppConfig,
named CmppSettings here); the neutral keys of ``[[carrier]]`` map as follows:

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

from gatewayd.config import CmppConfig

CmppSettings = CmppConfig

__all__ = ["CmppSettings"]
