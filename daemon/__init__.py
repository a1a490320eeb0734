"""lipsyncd's service side: config, watcher, pairing, queue, workers, janitor, notify, logging, CLI.

Never imports pipeline internals: only pipeline.engines (the engine interface) and pipeline.syncscore.
"""

__version__ = "0.1.0"
