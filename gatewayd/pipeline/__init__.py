"""The message's path: intake, queue, dispatch, inbound, events (the ledger), status.

May import: accounts, campaigns, policy, carrier, store, ops, config, model, errors, smstext.
"""
