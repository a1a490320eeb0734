"""The engine registry: every backend by name, imported only when it is asked for.

Choosing `command` or `heygem` never loads torch. NAMES is the one list of engine names (config
validation and manifests use it too).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pipeline.engines.base import Engine
from pipeline.errors import EngineUnavailable

_BACKENDS = {
    "builtin": "pipeline.engines.builtin.engine:BuiltinEngine",
    "wav2lip": "pipeline.engines.wav2lip.engine:Wav2LipEngine",
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
