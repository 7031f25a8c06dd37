"""SMPP 3.4 binds: session, bind, PDUs, deliveries, receipts, MO, status table.

May import: carrier.api, carrier.ids, carrier.protocols, ops, config, model, errors, smstext.
"""
