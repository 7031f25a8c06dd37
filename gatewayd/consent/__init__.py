"""Consent records: every opt-in and opt-out with its source, kept for years; export, import.

May import: store, ops, config, model, errors.
"""
