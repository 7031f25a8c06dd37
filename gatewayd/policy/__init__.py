"""Hot-path policies: content, keywords, opt-out, quiet hours, duplicates, caps, rates.

May import: consent, store, carrier.throttle, ops, config, model, errors, smstext.

Start at gatewayd.policy.engine (the order of the checks and the API); the operator's
side is policies/README.md.
"""
