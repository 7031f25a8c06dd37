"""The SMPP 3.4 SMSC simulator (start at smsc.py).

May import: sim.wheel, smstext.
"""
