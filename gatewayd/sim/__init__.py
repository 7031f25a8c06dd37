"""SMPP 3.4 SMSC simulator used by the demo, the tests and the benchmarks (see smsc.py)."""
