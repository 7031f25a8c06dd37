"""SMPP 3.4 binds: engine, session, bind, PDUs, deliveries, receipts, MO, status table.

May import: carrier, ops, config, model, errors, smstext.

Of carrier/: api, ids, protocols (what a Link and an Engine are) and reassembly
(multipart MO). Never the other way: carrier/ reaches this package only through engines.py.
"""
