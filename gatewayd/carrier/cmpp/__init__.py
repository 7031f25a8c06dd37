"""CMPP 2.0/3.0 binds to China Mobile's ISMG: codec, Msg_Id, text, session, bind, deliveries.

May import: carrier, ops, config, model, errors, smstext.

Of carrier/: api and protocols (what a Link and an Engine are), reassembly (multipart MO),
pool only for client.CmppClient (one CMPP carrier on its own, for tools and
tests). Never the other way: carrier/ reaches this package only through engines.py.
"""
