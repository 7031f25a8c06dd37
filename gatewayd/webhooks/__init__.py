"""Signed webhooks: state changes and MO pushed to apps' HTTP endpoints, never lost.

May import: store, ops, config, model, errors.

The outbox is the events stream itself (and the MO stream): the scripts that record a
state change append its event in the same call, so sending webhooks needs no write of its
own on the hot path. One sender at a time (a lease) reads those streams from a saved
cursor, which moves past an event only once every endpoint that wants it answered 2xx, or
the event sits durably in that endpoint's retry queue (a sorted set) or dead-letter
stream (runner.py says more).
"""
