"""What SREs see: metrics, JSON logs, sd_notify, `gatewayd top`.

May import: config, model, errors.
"""
