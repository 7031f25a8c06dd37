"""CMPP 2.0/3.0 binds to China Mobile's ISMG: codec, Msg_Id, text, session, bind, deliveries.

May import: carrier.api, carrier.ids, carrier.smpp, ops, config, model, errors, smstext.

carrier.smpp only for its protocol-neutral Waiter and MO Reassembler, until phase B of
issue 22 moves them up into carrier/.
"""
