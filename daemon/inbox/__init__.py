"""Watching and pairing: from files in inbox/<user>/ to claimed, queued jobs (watcher, settle, pairing, claim)."""
