"""Campaigns: templates, fan-out, short links and clicks, funnel counters, the report page.

May import: policy, store, ops, config, model, errors, smstext.

A campaign is a producer of ordinary queue entries (with ``campaign``, ``variant`` and
``template`` fields), never a second pipeline: the pipeline imports this room (intake
renders templates, the ledger counts the funnel), not the other way round.
"""
