"""The one small interface every engine implements.

An engine takes a JobSpec (audio, video, where to write one MP4, device, options) and writes the MP4.
It reports progress through a callback and fails with EngineError, whose message is written for the
person who dropped the files: what went wrong and what to do. Anything else that escapes render() is
treated by the daemon as an internal error.
"""

from __future__ import annotations

import math
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import EngineError, EngineUnavailable

__all__ = ["Engine", "EngineError", "EngineUnavailable", "JobSpec", "Option", "ProgressFn", "RenderResult",
           "no_progress"]

# progress(stage, fraction): stage is a short word ("audio", "faces", "render", "encode"), fraction 0..1
# of the whole job. Engines call it often; callers must keep it cheap.
ProgressFn = Callable[[str, float], None]


def no_progress(stage: str, fraction: float) -> None:
    """A ProgressFn that ignores progress."""


@dataclass(frozen=True)
class Option:
    """One per-job option an engine takes from a manifest's `options:`: its type and its allowed range."""

    kind: type  # int (a whole number) or float (any finite number)
    low: float
    high: float
    what: str  # what it does, for the error message

    def problem(self, value: Any) -> str | None:
        """Why *value* cannot be used (None: it can). YAML gives bools, strings, .inf and .nan too."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.kind is int and not isinstance(value, int)):
            return f"must be {self.describe()}, not {reprlib.repr(value)}"
        if (isinstance(value, float) and not math.isfinite(value)) or not self.low <= value <= self.high:
            return f"must be {self.describe()}, not {reprlib.repr(value)}"
        return None

    def describe(self) -> str:
        kind = "a whole number" if self.kind is int else "a number"
        return f"{kind} from {self.low:g} to {self.high:g}"


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
    # True when check() only makes sure the engine's modules import and its files load, which render() does
    # anyway: a one-off `lipsyncd render` then calls check() only when render() fails, to tell a setup
    # problem from bad input, and a cold start does not pay for the imports before the render can begin.
    checked_by_render: bool = False
    # The per-job options a manifest may set (name -> type and range); anything else is the drop's error.
    options: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The job's options if this engine declares every one and each value fits; else EngineError in plain
        words (a manifest is the user's input: a typo or `.inf` is their drop's error, not an internal one)."""
        problems = []
        for key, value in options.items():
            option = cls.options.get(key) if isinstance(key, str) else None
            if option is None:
                problems.append(f"{reprlib.repr(key)} is not an option of the {cls.name} engine")
            else:
                why = option.problem(value)
                if why:
                    problems.append(f"{key} {why} ({option.what})")
        if problems:
            takes = "; ".join(f"{key}: {option.describe()}" for key, option in cls.options.items())
            offer = f"it takes {takes}" if takes else "it takes no options"
            raise EngineError(f"the job's options cannot be used: {'; '.join(problems)}. The {cls.name} engine: "
                              f"{offer}. Fix `options:` in the manifest and drop it again.")
        return dict(options)

    def check(self) -> None:
        """Raise EngineUnavailable when this engine cannot work (called at start-up and by doctor)."""

    @abstractmethod
    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        """Write spec.output; raise EngineError with a plain message on bad input."""

    def close(self) -> None:
        """Release devices, sessions and temp files held between jobs."""
