"""`lipsyncd render AUDIO VIDEO -o OUT.mp4`: one job through an engine, no daemon, with a progress bar.

Exit status: 0 done; 1 the inputs could not be rendered (the engine's plain-words reason is printed);
2 bad usage (a missing input, an output that is not .mp4/.mov/.m4v, an unknown device, an engine
that cannot run here). The result appears under its name only when complete: it is written to a
dot-name beside it and renamed.

Heavy modules (torch, the pipeline) are imported inside main(), never at import time. An engine whose
check() only imports and loads what render() needs anyway (Engine.checked_by_render: the builtin engine)
is checked only when the render fails, so a cold start's imports overlap the probe and the audio (the
engine imports torch in a thread meanwhile) instead of coming first.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from daemon.config import Config
from daemon.names import Exit

OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def main(config: Config, audio: Path, video: Path, output: Path, engine: str | None = None,
         device: str | None = None, quiet: bool = False) -> int:
    """Render one job; see the module docstring for the exit status."""
    from pipeline.devices import resolve
    from pipeline.engines import EngineError, EngineUnavailable, JobSpec, get_engine

    name = engine or config.pipeline.engine
    problem = _usage_problem(audio, video, output)
    if problem:
        return _fail(problem, Exit.USAGE)
    try:
        resolved = resolve(device or config.pipeline.devices[0])
    except ValueError as exc:
        return _fail(f"{exc}", Exit.USAGE)
    try:
        backend = get_engine(name, config.pipeline.settings)
        if not backend.checked_by_render:
            backend.check()
    except EngineUnavailable as exc:
        return _fail(f"engine {name!r} cannot run: {exc}", Exit.USAGE)

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.rendering-{os.getpid()}{output.suffix}")
    workdir = Path(tempfile.mkdtemp(prefix="lipsyncd-render-"))
    bar = ProgressBar(enabled=not quiet)
    started = time.perf_counter()
    try:
        try:
            result = backend.render(JobSpec(audio=audio, video=video, output=partial, device=resolved,
                                            workdir=workdir), bar.update)
        except Exception:
            if backend.checked_by_render:
                backend.check()  # a setup problem is reported instead of what it made fail
            raise
        os.replace(partial, output)
    except EngineUnavailable as exc:
        bar.close()
        return _fail(f"engine {name!r} cannot run: {exc}", Exit.USAGE)
    except EngineError as exc:
        bar.close()
        return _fail(str(exc), Exit.FAILED)
    finally:
        bar.close()
        partial.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        backend.close()
    elapsed = time.perf_counter() - started
    length = f"{result.frames / result.fps:.1f} s of video, " if result.fps else ""
    print(f"lipsyncd render: wrote {output} ({length}{result.frames} frames) with engine {name} on {resolved} "
          f"in {elapsed:.1f} s")
    if result.timings:
        stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items())
        print(f"stages: {stages}")
    return Exit.OK


def _usage_problem(audio: Path, video: Path, output: Path) -> str | None:
    for role, path in (("audio", audio), ("video", video)):
        if not path.exists():
            return f"the {role} file {str(path)!r} does not exist"
        if not path.is_file():
            return f"the {role} {str(path)!r} is not a file"
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        return f"the output {str(output)!r} must end in {', '.join(OUTPUT_SUFFIXES)} (the result is an MP4 video)"
    if output.exists() and output.resolve() in (audio.resolve(), video.resolve()):
        return "the output must not be one of the inputs"
    if output.exists() and output.is_dir():
        return f"the output {str(output)!r} is a folder; give a file name such as {str(output / 'result.mp4')!r}"
    return None


def _fail(message: str, code: int) -> int:
    print(f"lipsyncd render: {message}", file=sys.stderr)
    return code


class ProgressBar:
    """tqdm on a terminal (when installed), plain lines every 10% otherwise, nothing when disabled."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar: Any = None
        self.shown = -1  # last 10% step printed as a plain line
        self.stage = ""
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                try:
                    columns, lines = os.get_terminal_size(self.stream.fileno())
                except (OSError, ValueError):
                    columns = lines = 0
                # A terminal that reports no size (some ptys) would make tqdm print nothing.
                self.bar = tqdm(total=100, file=self.stream, ncols=columns or 80, nrows=lines or 24,
                                bar_format="{desc:>7} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        percent = max(0.0, min(100.0, 100.0 * fraction))
        if self.bar is not None:
            if stage != self.stage:
                self.bar.set_description_str(stage)
            self.bar.update(percent - self.bar.n)
        else:
            step = int(percent // 10)
            if step > self.shown or stage != self.stage:
                self.shown = step
                print(f"lipsyncd render: {stage} {percent:.0f}%", file=self.stream, flush=True)
        self.stage = stage

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
