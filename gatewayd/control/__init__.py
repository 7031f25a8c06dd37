"""Live control of carriers: suspend, resume, restart binds, tps and window, kept in Redis.

May import: carrier, store, ops, config, errors.

An operator's overrides (gatewayd carrier ..., /admin/carriers) are written to Redis
(``state``); every daemon's ``CarrierWatch`` reads them each second and applies them to
its carrier pool (CarrierPool.suspend / set_tuning / restart_binds), and publishes its
binds and what it applied, which ``admin.listing`` gathers from every daemon.
"""
