"""The HTTP API: aiohttp server, the daemon-side service, OpenAPI, listener limits.

May import: pipeline, campaigns, accounts, webhooks, control, policy, consent, store, ops, config, model, errors.
"""
