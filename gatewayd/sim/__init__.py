"""Carrier simulators for the demo, tests and benchmarks: smpp/, shared helpers here.

May import: smstext.
"""
