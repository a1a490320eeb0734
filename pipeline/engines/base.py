"""The one small interface every engine implements.

An engine takes a JobSpec (audio, video, where to write one MP4, device, options) and writes the MP4.
It reports progress through a callback and fails with EngineError, whose message is written for the
person who dropped the files: what went wrong and what to do. Anything else that escapes render() is
treated by the daemon as an internal error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import EngineError, EngineUnavailable

__all__ = ["Engine", "EngineError", "EngineUnavailable", "JobSpec", "ProgressFn", "RenderResult", "no_progress"]

# progress(stage, fraction): stage is a short word ("audio", "faces", "render", "encode"), fraction 0..1
# of the whole job. Engines call it often; callers must keep it cheap.
ProgressFn = Callable[[str, float], None]


def no_progress(stage: str, fraction: float) -> None:
    """A ProgressFn that ignores progress."""


@dataclass(frozen=True)
class JobSpec:
    audio: Path
    video: Path
    output: Path  # the MP4 to write; its folder exists
    device: str = "cpu"  # resolved: "cpu" or "cuda:N" (see pipeline.devices.resolve)
    workdir: Path | None = None  # a private scratch folder for the job, removed by the caller
    options: Mapping[str, Any] = field(default_factory=dict)  # per-job options from a manifest


@dataclass
class RenderResult:
    """What an engine reports back: per-stage seconds, frame count, anything worth recording."""

    timings: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    fps: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    """One backend. Constructed once per worker with the `pipeline` config section; used for many jobs."""

    name: str = "engine"
    # True when the engine drives an outside service: check() failing may be temporary (the service is
    # restarting), so a worker starts anyway and jobs fail with the same message while it lasts.
    remote: bool = False

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings

    def check(self) -> None:
        """Raise EngineUnavailable when this engine cannot work (called at start-up and by doctor)."""

    @abstractmethod
    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        """Write spec.output; raise EngineError with a plain message on bad input."""

    def close(self) -> None:
        """Release devices, sessions and temp files held between jobs."""
