"""The lip-sync pipeline: audio features, face/mouth tracking, mouth motion, rendering, encoding, engines.

Knows nothing of inboxes, queues or systemd: the daemon reaches it only through pipeline.engines.
"""
