"""Operator control of a running daemon: carrier overrides, config reload.

May import: carrier, policy, ops, config, errors.
"""
