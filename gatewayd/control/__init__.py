"""Operator control of a running daemon: carrier overrides kept in Redis, config reload.

May import: carrier, policy, store, ops, config, errors.

An operator's overrides (gatewayd carrier ..., /admin/carriers) are written to Redis
(``state``); every daemon's ``CarrierWatch`` reads them each second and applies them to
its carrier pool (CarrierPool.suspend / set_tuning / restart_binds), and publishes its
binds and what it applied, which ``admin.listing`` gathers from every daemon. ``reload``
says what a config reload (SIGHUP, POST /admin/reload) changes and what needs a restart.
"""
