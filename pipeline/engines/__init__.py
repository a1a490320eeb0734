"""Engines: one backend per module or package behind pipeline.engines.base.Engine.

This package is the engine interface the daemon uses: the base types, the errors and the registry.
"""

from __future__ import annotations

from pipeline.engines.base import Engine, JobSpec, ProgressFn, RenderResult, no_progress
from pipeline.engines.registry import NAMES, get_engine
from pipeline.errors import EngineError, EngineUnavailable

__all__ = [
    "NAMES", "Engine", "EngineError", "EngineUnavailable", "JobSpec", "ProgressFn", "RenderResult",
    "get_engine", "no_progress",
]
