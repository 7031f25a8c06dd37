"""gatewayd: an asyncio SMPP/HTTP SMS gateway daemon fed by Redis priority queues."""

__version__ = "0.1.0"
