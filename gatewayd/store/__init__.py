"""Everything Redis-shaped: connection, embedded server, key names, privacy, fastpipe, lua/.

May import: config, model, errors.
"""
