"""Everything Redis-shaped: connection, embedded server, key names, fastpipe, lua/.

May import: config, errors.
"""
