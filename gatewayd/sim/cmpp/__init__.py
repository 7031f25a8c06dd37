"""The CMPP 2.0/3.0 ISMG simulator (start at ismg.py).

May import: sim.wheel, smstext.
"""
