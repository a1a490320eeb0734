"""The builtin engine: lip-sync with no downloaded weights (engine, lipsync, motion, warp)."""
