"""Notifications through Apprise: what is said (messages) and sending it (send)."""
