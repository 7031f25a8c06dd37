"""Accounts: tenants, their API keys, limits and usage; consulted by the HTTP intake.

May import: policy, store, config, model, errors.

An account is the unit an API key belongs to: the key names the tenant (never the body),
and the account's limits (rate, daily and monthly quotas, allowed categories, signatures,
senders and destination prefixes) are checked at intake. Accounts live in Redis and are
read through a short-lived in-process cache (gatewayd.accounts.cache), so every daemon
honours a change within a second without a lookup per request.
"""
