"""The HTTP API: aiohttp server, the daemon-side service, OpenAPI.

May import: pipeline, campaigns, policy, consent, store, ops, config, model, errors.
"""
