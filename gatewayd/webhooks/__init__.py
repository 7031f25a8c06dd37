"""Signed webhooks: state changes and MO pushed to apps' HTTP endpoints, never lost.

May import: store, ops, config, model, errors.

The outbox is the events stream itself (and the MO stream): the scripts that record a
state change append its event in the same call, so a webhook consumer group on those
streams needs no write of its own on the hot path. An event leaves the group's pending
list only once every endpoint that wants it answered 2xx, or it sits durably in that
endpoint's retry queue (a sorted set) or dead-letter stream.
"""
