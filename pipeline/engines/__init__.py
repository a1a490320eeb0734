"""Engines: one backend per module behind pipeline.engines.base.Engine.

get_engine() imports a backend only when it is asked for, so choosing `command` or `heygem` never
loads torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pipeline.engines.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    JobSpec,
    ProgressFn,
    RenderResult,
    no_progress,
)

_BACKENDS = {
    "builtin": "pipeline.engines.builtin:BuiltinEngine",
    "wav2lip": "pipeline.engines.wav2lip:Wav2LipEngine",
    "heygem": "pipeline.engines.heygem:HeyGemEngine",
    "command": "pipeline.engines.command:CommandEngine",
}

NAMES = tuple(_BACKENDS)


def get_engine(name: str, settings: Mapping[str, Any]) -> Engine:
    """A ready engine *name* configured with the `pipeline` settings section."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise EngineUnavailable(f"unknown engine {name!r}; known engines: {', '.join(NAMES)}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise EngineUnavailable(f"engine {name!r} is not built into this version of lipsyncd") from None
        raise
    engine_class = getattr(module, class_name)
    return engine_class(settings)


__all__ = [
    "NAMES", "Engine", "EngineError", "EngineUnavailable", "JobSpec", "ProgressFn", "RenderResult",
    "get_engine", "no_progress",
]
