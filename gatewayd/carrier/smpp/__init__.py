"""SMPP 3.4 binds: session, bind, PDUs, deliveries, receipts, MO, status table.

May import: carrier.api, carrier.batch, carrier.ids, ops, config, model, errors, smstext.
"""
