"""Any external lip-sync CLI (MuseTalk, LatentSync, Wav2Lip's own script) run from an argv template.

The template is a list (never a shell string) with {audio} {video} {output} {device} {workdir}
placeholders. The command runs in its own process group so a timeout kills everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
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
from pipeline.media import probe

STDERR_TAIL_LINES = 20
KILL_GRACE_SECONDS = 5.0


class CommandEngine(Engine):
    name = "command"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.options = dict(settings.get("command", {}))

    def check(self) -> None:
        argv = self.options.get("argv") or []
        if not argv:
            raise EngineUnavailable("pipeline.command.argv is empty: set it to the command to run, e.g. "
                                    "[ffmpeg, -i, \"{video}\", -i, \"{audio}\", ..., \"{output}\"]")
        if "{output}" not in " ".join(argv):
            raise EngineUnavailable("pipeline.command.argv never mentions {output}: the command must be told "
                                    "where to write the result")

    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        self.check()
        workdir = spec.workdir or Path(tempfile.mkdtemp(prefix="lipsyncd-cmd-"))
        values = {"audio": str(spec.audio), "video": str(spec.video), "output": str(spec.output),
                  "device": spec.device, "workdir": str(workdir)}
        try:
            argv = [part.format(**values) for part in self.options["argv"]]
        except (KeyError, IndexError, ValueError) as exc:
            raise EngineUnavailable(f"pipeline.command.argv has a bad placeholder ({exc}); "
                                    "use only {audio} {video} {output} {device} {workdir}") from None
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.options.get("env") or {}).items()})
        timeout = float(self.options.get("timeout_seconds") or 3600)
        cwd = self.options.get("cwd") or str(workdir)
        stderr_path = workdir / "command-stderr.log"
        progress("command", 0.0)
        started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                        cwd=cwd, env=env, start_new_session=True)
            except OSError as exc:
                raise EngineUnavailable(f"cannot start {argv[0]!r}: {exc.strerror}; check pipeline.command.argv") \
                    from None
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise EngineError(f"the command {Path(argv[0]).name} did not finish within {timeout:g} s "
                                  "(pipeline.command.timeout_seconds) and was stopped with all its processes"
                                  + _tail(stderr_path)) from None
            except BaseException:
                _kill_group(proc)
                raise
        elapsed = time.monotonic() - started
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise EngineError(f"the command {Path(argv[0]).name} {how}" + _tail(stderr_path))
        if not spec.output.exists() or spec.output.stat().st_size == 0:
            raise EngineError(f"the command {Path(argv[0]).name} finished but wrote no output to {spec.output.name}"
                              + _tail(stderr_path))
        info = probe(spec.output, role="command's output")
        if not info.has_video:
            raise EngineError(f"the command {Path(argv[0]).name} wrote {spec.output.name}, "
                              "but it has no video stream" + _tail(stderr_path))
        progress("command", 1.0)
        return RenderResult(timings={"command": elapsed}, fps=info.fps,
                            frames=round(info.duration * info.fps) if info.fps else 0)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's whole process group, then SIGKILL whatever is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader


def _tail(path: Path) -> str:
    try:
        lines = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    if not lines:
        return ""
    return "\n\nLast lines the command printed:\n" + "\n".join(lines[-STDERR_TAIL_LINES:])
